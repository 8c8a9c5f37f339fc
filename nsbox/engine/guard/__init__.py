"""nsbox guard: runtime security for containers with eBPF (docs/guard.md).

bpf/guard.bpf.c   the kernel side (CO-RE, compiled by setup.py with clang)
libbpf.py         libbpf.so.1 through ctypes: load, attach, maps, ring buffer
record.py         the kernel's event records, decoded
rules.py          the YAML rules: validation, matching, keys for the kernel
client.py         the engine's side: --security-opt guard=, watch before start
service.py        the host's one guard process (`python -m nsbox.engine.guard.service`)
"""
