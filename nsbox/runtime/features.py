"""The OCI features document (`nsbox-runtime features`)."""

from __future__ import annotations

from nsbox.runtime.spec import HOOK_KINDS, NAMESPACE_TYPES, SPEC_VERSION


def features() -> dict:
    from nsbox import __version__
    from nsbox.runtime.rootfs import known_mount_options
    from nsbox.runtime.security import capabilities, lsm, seccomp_compile

    sec = seccomp_compile.features()
    out = {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": SPEC_VERSION,
        "hooks": list(HOOK_KINDS),
        "mountOptions": known_mount_options(),
        "linux": {
            "namespaces": list(NAMESPACE_TYPES),
            "capabilities": capabilities.features(),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False,
                       "rdma": False},
            "seccomp": sec,
            "apparmor": lsm.features()["apparmor"],
            "selinux": lsm.features()["selinux"],
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": True}},
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features.nsbox.version": __version__,
        },
    }
    if sec.get("enabled"):
        out["annotations"]["io.github.seccomp.libseccomp.version"] = seccomp_compile.libseccomp_version()
    return out
