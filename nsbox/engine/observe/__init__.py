"""Seeing isolation: read-only views of running containers (namespaces, cgroups, stats).

Nothing here changes a container: each module reads /proc and /sys/fs/cgroup
and the engine's records, for `nsbox ns`, `nsbox stats`, `nsbox cgroup` and
`nsbox dashboard`.
"""
