"""`--security-opt landlock=RULE[,RULE...]`: a Landlock ruleset for the container's processes.

A MAC layer that needs neither AppArmor nor SELinux (Landlock, Linux >= 5.13):
the container's processes may only do, on files and TCP ports, what a rule
grants (nsbox/runtime/security/landlock.py enforces it; docs/guard.md).

Rules (the option may be repeated; its rules add up):

    ro:PATH[:PATH...]    read files and list directories below PATH
    rx:PATH[:PATH...]    ro, and execute
    rw:PATH[:PATH...]    ro, and write, create, remove, rename, truncate
    rwx:PATH[:PATH...]   everything
    x:PATH[:PATH...]     execute only
    bind:PORT[:PORT...]     TCP bind (Landlock ABI >= 4)
    connect:PORT[:PORT...]  TCP connect (Landlock ABI >= 4)

Every file right the kernel's Landlock ABI knows is handled, so what no
rule grants is refused (EACCES); TCP is restricted only when a bind: or
connect: rule is given.  Paths are the container's; one that does not
exist when the process starts grants nothing.
"""

from __future__ import annotations

from nsbox.errors import ConfigError, UnsupportedError

ANNOTATION = "org.nsbox.landlock.opt"
READ = ["read_file", "read_dir"]
WRITE = ["write_file", "truncate", "remove_dir", "remove_file", "make_char", "make_dir",
         "make_reg", "make_sock", "make_fifo", "make_block", "make_sym", "refer"]
ACCESS = {"ro": READ, "rx": READ + ["execute"], "rw": READ + WRITE,
          "rwx": READ + WRITE + ["execute"], "x": ["execute"]}
NET = {"bind": "bind_tcp", "connect": "connect_tcp"}
ALL_FS = sorted({r for rights in ACCESS.values() for r in rights})


def plan(values: list[str]) -> dict | None:
    """The runtime's plan for the landlock= values; ConfigError/UnsupportedError when bad."""
    if not values:
        return None
    from nsbox.runtime.security.landlock import abi
    version = abi()
    if version < 1:
        raise UnsupportedError("--security-opt landlock: this kernel has no Landlock (or it is "
                               "disabled)")
    grants: list = []
    ports: list = []
    for value in values:
        for rule in value.split(","):
            kind, sep, rest = rule.strip().partition(":")
            items = [x for x in rest.split(":") if x]
            if not sep or not items:
                raise ConfigError(f"invalid --security-opt landlock rule {rule!r}: "
                                  "ACCESS:PATH or bind|connect:PORT")
            if kind in ACCESS:
                for path in items:
                    if not path.startswith("/"):
                        raise ConfigError(f"--security-opt landlock: {path!r} is not an "
                                          "absolute path")
                    grants.append([path, ACCESS[kind]])
            elif kind in NET:
                if version < 4:
                    raise UnsupportedError(f"--security-opt landlock {kind}: TCP rules need "
                                           f"Landlock ABI 4 (this kernel has {version})")
                for port in items:
                    if not port.isdigit() or int(port) > 65535:
                        raise ConfigError(f"--security-opt landlock: {port!r} is not a port")
                    ports.append([int(port), [NET[kind]]])
            else:
                raise ConfigError(f"invalid --security-opt landlock access {kind!r}: "
                                  f"{', '.join([*ACCESS, *NET])}")
    # Only the TCP rights some rule names are handled: bind rules leave connect free.
    handled_net = sorted({r for _, rights in ports for r in rights})
    return {"handled": ALL_FS, "grant": grants, "handled_net": handled_net, "ports": ports}
