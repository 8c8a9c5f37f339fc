"""Container networking beyond a bare network namespace.

- `slirp4netns`: user-mode networking (the slirp4netns program) for a
  container's own network namespace, the default in rootless mode.
"""
