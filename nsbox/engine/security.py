"""The security profile of engine containers: secure by default, weakened only on request.

Every container the engine creates gets, unless the user asks otherwise:

- Podman's eleven capabilities (Docker's fourteen less MKNOD, NET_RAW and
  AUDIT_WRITE), none inheritable or ambient;
- a seccomp allowlist (`default_seccomp_profile`) stricter than Docker's:
  no keyring, no io_uring, no bpf or perf_event_open, no mount API, no new
  namespaces (clone/clone3/unshare/setns), no kexec or module loading, no
  open_by_handle_at, only the harmless personalities, no AF_ALG or AF_VSOCK
  sockets, no TIOCSTI; a capability added with --cap-add brings back the
  calls it is meant to grant;
- masked and read-only paths in /proc and /sys;
- no_new_privs, a pids limit of 2048, a 64 MiB /dev/shm, and a device
  cgroup that allows only the standard devices (the runtime's defaults).

Profiles are written in Docker's seccomp JSON format (so `--security-opt
seccomp=FILE` takes Docker's files) and turned into the OCI
`linux.seccomp` section for the container's final capability set by
`oci_seccomp`.  `nsbox.engine.posture` reads a config back and says what is
weaker than the default; `nsbox inspect --security` shows it.
"""

from __future__ import annotations

import os

from nsbox.errors import ConfigError, UnsupportedError

# Podman's default set: Docker's fourteen less MKNOD, NET_RAW and AUDIT_WRITE.
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
                "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
                "CAP_SETUID", "CAP_SYS_CHROOT"]
DEFAULT_PIDS_LIMIT = 2048
PRIVILEGED_WARNING = ("WARNING: --privileged gives the container every capability, the host's "
                      "devices, no seccomp filter and unmasked /proc and /sys: it can take over "
                      "the host")

MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
                "/proc/timer_stats", "/proc/kallsyms", "/proc/kmsg", "/proc/sysrq-trigger",
                "/sys/dev/block", "/sys/devices/virtual/powercap", "/sys/firmware",
                "/sys/kernel/debug", "/sys/kernel/security", "/sys/kernel/tracing"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"]

# ------------------------------------------------------------------- seccomp
_EPERM, _ENOSYS = 1, 38
_AF_ALG = 38  # AF_ALG 38, AF_NFC 39, AF_VSOCK 40 and the newer families above stay out
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NS_FLAGS = 0x7E020000
_SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# Calls any unprivileged program may make; the kernel checks the rest itself.
_ALLOWED = """
accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir chmod
chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod
fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock
fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid getegid32 geteuid
geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid
getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit getrusage
getsid getsockname getsockopt gettid gettimeofday getuid getuid32 getxattr getxattrat
inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy
io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit ioprio_get ioprio_set ipc
kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
lgetxattr link linkat listen listxattr listxattrat llistxattr _llseek lremovexattr lseek
lsetxattr lsm_get_self_attr lsm_list_modules lstat lstat64 madvise map_shadow_stack
membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2
mlockall mmap mmap2 modify_ldt mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget
msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat
_newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc
pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
process_madvise process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall rmdir
rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max
sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto set_robust_list
set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid setuid32 setxattr
setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask
sigreturn socketpair splice stat stat64 statfs statfs64 statmount listmount statx symlink
symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64
utimes vfork vmsplice wait4 waitid waitpid write writev
""".split()

# What a capability grants, given back when it is added.
_BY_CAPABILITY: dict[str, list[str]] = {
    "CAP_SYS_ADMIN": ["mount", "umount", "umount2", "open_tree", "open_tree_attr", "move_mount",
                      "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "pivot_root",
                      "unshare", "setns", "clone3", "quotactl", "quotactl_fd", "fanotify_init",
                      "swapon", "swapoff", "sethostname", "setdomainname", "bpf",
                      "perf_event_open", "lookup_dcookie", "syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
    "CAP_SYS_BOOT": ["reboot", "kexec_load", "kexec_file_load"],
    "CAP_SYS_MODULE": ["init_module", "finit_module", "delete_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": ["ptrace", "kcmp", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
                       "userfaultfd"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node",
                     "migrate_pages", "move_pages"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
    "CAP_SYS_CHROOT": ["chroot"],
}

_ARCHES = {
    "x86_64": ("SCMP_ARCH_X86_64", ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
    "aarch64": ("SCMP_ARCH_AARCH64", ["SCMP_ARCH_ARM"]),
    "ppc64le": ("SCMP_ARCH_PPC64LE", []),
    "s390x": ("SCMP_ARCH_S390X", ["SCMP_ARCH_S390"]),
    "riscv64": ("SCMP_ARCH_RISCV64", []),
}


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def default_seccomp_profile() -> dict:
    """nsbox's default profile, in Docker's seccomp JSON format."""
    allow = "SCMP_ACT_ALLOW"
    syscalls: list[dict] = [{"names": list(_ALLOWED), "action": allow}]
    # Sockets of the usual families only: AF_ALG, AF_VSOCK and newer ones stay out.
    syscalls.append({"names": ["socket"], "action": allow,
                     "args": [_arg(0, _AF_ALG, "SCMP_CMP_LT")]})
    # socketcall multiplexes every socket call behind a pointer: nothing to check.
    syscalls.append({"names": ["socketcall"], "action": "SCMP_ACT_ERRNO",
                     "errnoRet": _ENOSYS})
    # ioctl, except pushing input into a terminal (TIOCSTI) or console tricks (TIOCLINUX).
    syscalls.append({"names": ["ioctl"], "action": allow,
                     "args": [_arg(1, _TIOCSTI, "SCMP_CMP_NE")],
                     "excludes": {"caps": ["CAP_SYS_ADMIN"]}})
    syscalls.append({"names": ["ioctl"], "action": allow,
                     "includes": {"caps": ["CAP_SYS_ADMIN"]}})
    for persona in _SAFE_PERSONALITIES:
        syscalls.append({"names": ["personality"], "action": allow,
                         "args": [_arg(0, persona, "SCMP_CMP_EQ")]})
    # clone without namespace flags; clone3 hides its flags in memory, so it
    # answers ENOSYS and the C library falls back to clone.
    syscalls.append({"names": ["clone"], "action": allow,
                     "args": [_arg(0, _CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ", 0)],
                     "excludes": {"caps": ["CAP_SYS_ADMIN"]}})
    syscalls.append({"names": ["clone"], "action": allow,
                     "includes": {"caps": ["CAP_SYS_ADMIN"]}})
    syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS,
                     "excludes": {"caps": ["CAP_SYS_ADMIN"]}})
    for cap, names in _BY_CAPABILITY.items():
        syscalls.append({"names": list(names), "action": allow, "includes": {"caps": [cap]}})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": _EPERM,
        "archMap": [{"architecture": main, "subArchitectures": subs}
                    for main, subs in _ARCHES.values()],
        "syscalls": syscalls,
    }


def _host_arches() -> list[str]:
    machine = os.uname().machine
    main, subs = _ARCHES.get(machine, ("", []))
    return [main, *subs] if main else []


def oci_seccomp(profile: dict, caps: list[str]) -> dict:
    """PROFILE (Docker's format, or already OCI) as linux.seccomp for a process with CAPS."""
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise ConfigError("seccomp profile: not a JSON object with a defaultAction")
    arches = list(profile.get("architectures") or [])
    if profile.get("archMap"):
        host = set(_host_arches())
        for entry in profile["archMap"]:
            if entry.get("architecture") in host:
                arches = [entry["architecture"], *(entry.get("subArchitectures") or [])]
                break
    have = set(caps)
    arch_names = set(_host_arches())
    out_syscalls = []
    for rule in profile.get("syscalls") or []:
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if includes.get("caps") and not set(includes["caps"]) <= have:
            continue
        if excludes.get("caps") and set(excludes["caps"]) & have:
            continue
        if includes.get("arches") and not _arch_match(includes["arches"], arch_names):
            continue
        if excludes.get("arches") and _arch_match(excludes["arches"], arch_names):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names:
            continue
        entry: dict = {"names": list(names), "action": rule.get("action", "SCMP_ACT_ALLOW")}
        if rule.get("errnoRet") is not None:
            entry["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            entry["args"] = [{k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a}
                             for a in rule["args"]]
        out_syscalls.append(entry)
    section: dict = {"defaultAction": profile["defaultAction"], "syscalls": out_syscalls}
    if profile.get("defaultErrnoRet") is not None:
        section["defaultErrnoRet"] = profile["defaultErrnoRet"]
    if arches:
        section["architectures"] = arches
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if profile.get(key):
            section[key] = profile[key]
    return section


def _arch_match(wanted: list[str], host: set[str]) -> bool:
    # Docker names arches both ways ("amd64" and "SCMP_ARCH_X86_64").
    aliases = {"amd64": "SCMP_ARCH_X86_64", "x86": "SCMP_ARCH_X86", "arm64": "SCMP_ARCH_AARCH64",
               "arm": "SCMP_ARCH_ARM", "x32": "SCMP_ARCH_X32", "s390x": "SCMP_ARCH_S390X",
               "ppc64le": "SCMP_ARCH_PPC64LE", "riscv64": "SCMP_ARCH_RISCV64"}
    return any(aliases.get(a, a) in host for a in wanted)


def load_profile_file(path: str) -> dict:
    from nsbox import _json

    try:
        with open(path, "rb") as f:
            data = _json.loads(f.read())
    except OSError as exc:
        raise ConfigError(f"--security-opt seccomp: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"--security-opt seccomp: {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "defaultAction" not in data:
        raise ConfigError(f"--security-opt seccomp: {path} is not a seccomp profile "
                          "(no defaultAction)")
    return data


# ----------------------------------------------------------------- options
class SecurityOptions:
    """--security-opt values, parsed (Docker's `key=value` and older `key:value` forms)."""

    def __init__(self, opts: list[str]) -> None:
        self.seccomp: str | None = None  # None: default, "unconfined", or a file path
        self.no_new_privileges = True
        self.no_new_privileges_given = False  # set explicitly (it then wins over --privileged)
        self.label: list[str] = []
        self.apparmor: str | None = None
        self.mask: list[str] = []
        self.unmask: list[str] = []
        self.guard: str | None = None  # nsbox/engine/guard: None is the host's default
        self.landlock: list[str] = []  # nsbox/engine/landlock_opt.py
        for opt in opts:
            key, sep, value = opt.partition("=")
            if not sep and ":" in opt:
                key, _, value = opt.partition(":")
            if key == "seccomp":
                if not value:
                    raise ConfigError("--security-opt seccomp needs a profile path or unconfined")
                self.seccomp = value
            elif key == "no-new-privileges":
                if value not in ("", "true", "false", "1", "0"):
                    raise ConfigError(f"invalid --security-opt no-new-privileges value {value!r}")
                self.no_new_privileges = value in ("", "true", "1")
                self.no_new_privileges_given = True
            elif key == "label":
                self.label.append(value)
            elif key == "apparmor":
                self.apparmor = value
            elif key == "mask":
                self.mask += [p for p in value.split(":") if p]
            elif key == "unmask":
                self.unmask += [p for p in value.split(":") if p]
            elif key == "landlock":
                self.landlock.append(value)
            elif key == "guard":
                if not value:
                    raise ConfigError("--security-opt guard needs default, drift, off or a "
                                      "rules file")
                self.guard = value
            else:
                raise ConfigError(f"invalid --security-opt: {opt!r}")


def _norm_cap(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") else "CAP_" + name


def _all_caps() -> list[str]:
    from nsbox.runtime.security import capabilities as caps_mod

    return caps_mod.names_from_mask((1 << (caps_mod.last_cap() + 1)) - 1)


def capability_set(cap_add: list[str], cap_drop: list[str], privileged: bool) -> list[str]:
    """The container's capabilities: the default set (or all), less drops, plus adds."""
    known = _all_caps()
    current = list(known) if privileged else list(DEFAULT_CAPS)
    drops = {_norm_cap(c) for c in cap_drop}
    adds = [_norm_cap(c) for c in cap_add]
    for name in list(drops) + adds:
        if name != "CAP_ALL" and known and name not in known:
            raise ConfigError(f"unknown capability {name!r}")
    if "CAP_ALL" in drops:
        current = []
    else:
        current = [c for c in current if c not in drops]
    for name in adds:
        if name == "CAP_ALL":
            current = sorted(set(current) | set(known))
        elif name not in current:
            current.append(name)
    return current


def _host_devices() -> list[dict]:
    """Every character and block device node under the host's /dev, as linux.devices."""
    import stat as stat_mod

    out = []
    for dirpath, dirnames, filenames in os.walk("/dev"):
        dirnames[:] = [d for d in dirnames if d not in ("pts", "shm", "mqueue", "hugepages")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat_mod.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat_mod.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            if path in ("/dev/console", "/dev/ptmx", "/dev/tty") or path.startswith("/dev/tty") \
                    and path[8:].isdigit():
                continue  # the runtime's own console and terminal setup owns these
            out.append({"path": path, "type": kind, "major": os.major(st.st_rdev),
                        "minor": os.minor(st.st_rdev), "fileMode": st.st_mode & 0o7777,
                        "uid": st.st_uid, "gid": st.st_gid})
    return out


def apply(config: dict, cap_add: list[str], cap_drop: list[str], privileged: bool,
          security_opt: list[str]) -> None:
    """Write the security profile into CONFIG (an OCI config.json).

    The CLI prints PRIVILEGED_WARNING itself, before any work is done."""
    from nsbox.runtime.security import lsm

    opts = SecurityOptions(security_opt)
    process, linux = config["process"], config["linux"]
    caps = capability_set(cap_add, cap_drop, privileged)
    process["capabilities"] = {kind: list(caps) for kind in ("bounding", "effective", "permitted")}
    # --privileged clears no_new_privs, as Docker and Podman do (setuid tools such as sudo
    # work there), unless --security-opt no-new-privileges asks for it.
    process["noNewPrivileges"] = opts.no_new_privileges if opts.no_new_privileges_given or \
        not privileged else False
    masked, readonly = list(MASKED_PATHS), list(READONLY_PATHS)
    if privileged:
        masked, readonly = [], []
        linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
        known_paths = {d.get("path") for d in linux.get("devices") or []}
        linux["devices"] = list(linux.get("devices") or []) + [
            d for d in _host_devices() if d["path"] not in known_paths]
        for mount in config["mounts"]:
            if mount["destination"] in ("/sys", "/sys/fs/cgroup"):
                mount["options"] = [o for o in mount.get("options", []) if o != "ro"]
    if "ALL" in opts.unmask:
        masked, readonly = [], []
    else:
        masked = [p for p in masked if p not in opts.unmask]
        readonly = [p for p in readonly if p not in opts.unmask]
    masked += [p for p in opts.mask if p not in masked]
    linux["maskedPaths"] = masked
    linux["readonlyPaths"] = readonly
    # seccomp: the default unless unconfined, privileged (without a file), or a file given.
    if opts.seccomp == "unconfined" or (privileged and opts.seccomp is None):
        linux.pop("seccomp", None)
    else:
        profile = default_seccomp_profile() if opts.seccomp is None else \
            load_profile_file(opts.seccomp)
        linux["seccomp"] = oci_seccomp(profile, caps)
    # LSMs: applied where the kernel has them, refused clearly where it does not.
    for value in opts.label:
        if value == "disable":
            continue
        if not lsm.selinux_enabled():
            raise UnsupportedError(f"--security-opt label={value}: SELinux is not enabled on "
                                   "this host (use label=disable)")
        kind, _, level = value.partition(":")
        if kind not in ("user", "role", "type", "level", "filetype", "nested"):
            raise ConfigError(f"invalid --security-opt label={value}")
        current = (process.get("selinuxLabel") or "system_u:system_r:container_t:s0").split(":", 3)
        while len(current) < 4:
            current.append("")
        index = {"user": 0, "role": 1, "type": 2, "level": 3}.get(kind)
        if index is not None:
            current[index] = level
            process["selinuxLabel"] = ":".join(current)
    if opts.apparmor is not None and opts.apparmor != "unconfined":
        if not lsm.apparmor_enabled():
            raise UnsupportedError(f"--security-opt apparmor={opts.apparmor}: AppArmor is not "
                                   "enabled on this host (use apparmor=unconfined)")
        process["apparmorProfile"] = opts.apparmor
    if opts.landlock:
        from nsbox import _json
        from nsbox.engine import landlock_opt
        config.setdefault("annotations", {})[landlock_opt.ANNOTATION] = _json.dumps(
            landlock_opt.plan(opts.landlock))
    pids = linux["resources"].get("pids")
    if pids is None:
        linux["resources"]["pids"] = {"limit": DEFAULT_PIDS_LIMIT}
