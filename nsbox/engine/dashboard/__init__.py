"""`nsbox dashboard`: a local web page showing containers, their isolation and usage live.

app.py is the Starlette application and the server (uvicorn); views.py
gathers what the pages show from the engine; templates/ and static/ are
package data (Jinja2 templates, the page's script and style, and the
vendored uPlot chart library with its licence).  Starlette, uvicorn and
Jinja2 are the optional extra `nsbox[dashboard]`, imported only by this
package, so the rest of nsbox never needs them.
"""
