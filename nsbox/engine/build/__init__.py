"""`nsbox build`: images from a Containerfile/Dockerfile (see docs/engine-build.md).

    parser.py        the syntax: directives, continuations, flags, variables
    context.py       the context directory or tar, ignore files, COPY sources
    instructions.py  the config-only instructions (ENV, CMD, HEALTHCHECK, ...)
    cache.py         the layer cache: step keys and their recorded results
    layers.py        layers from overlay upper dirs, RUN containers, build rootfs
    copysteps.py     COPY and ADD
    executor.py      stages and steps, the final image
"""
