"""LSM detection and label checks against this host's real kernel."""

from __future__ import annotations

import os

import pytest

from nsbox.errors import KernelError, UnsupportedError
from nsbox.runtime import syscalls
from nsbox.runtime.security import lsm


@pytest.fixture(autouse=True)
def _fresh_lsm_cache():
    lsm._enabled_lsms.cache_clear()
    yield
    lsm._enabled_lsms.cache_clear()


def test_enabled_lsms_is_a_list_of_names() -> None:
    names = lsm.enabled_lsms()
    assert isinstance(names, list)
    assert all(isinstance(name, str) and name for name in names)
    try:
        with open("/sys/kernel/security/lsm") as f:
            assert names == f.read().strip().split(",")
    except FileNotFoundError:
        pass
    names.append("mutating the copy")
    assert "mutating the copy" not in lsm.enabled_lsms()


def test_fallback_to_syscall_without_securityfs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lsm, "_SECURITYFS_LSM", "/nonexistent/lsm")
    try:
        ids = syscalls.lsm_list_modules()
    except OSError:
        assert lsm.enabled_lsms() == []
        return
    names = lsm.enabled_lsms()
    assert len(names) == len(ids)
    # The capability module is always registered when LSMs are listed at all.
    assert "capability" in names


def test_enabled_checks_agree_with_lsm_list() -> None:
    names = lsm.enabled_lsms()
    if names and not os.path.exists("/sys/module/apparmor/parameters/enabled"):
        assert lsm.apparmor_enabled() == ("apparmor" in names)
    if "selinux" in names:
        assert lsm.selinux_enabled()
    assert lsm.features() == {"apparmor": {"enabled": lsm.apparmor_enabled()},
                              "selinux": {"enabled": lsm.selinux_enabled()}}


def test_apparmor_profile_refused_when_apparmor_is_off() -> None:
    if lsm.apparmor_enabled():
        pytest.skip("AppArmor is enabled on this host")
    with pytest.raises(UnsupportedError, match="apparmor profile 'x'.*AppArmor is not enabled"):
        lsm.validate_labels("x", "", "")
    with pytest.raises(UnsupportedError):
        lsm.apply_process_labels("x", "")


def test_selinux_labels_refused_when_selinux_is_off() -> None:
    if lsm.selinux_enabled():
        pytest.skip("SELinux is enabled on this host")
    label = "system_u:system_r:container_t:s0"
    with pytest.raises(UnsupportedError, match="SELinux is not enabled"):
        lsm.validate_labels("", label, "")
    with pytest.raises(UnsupportedError, match="mount label"):
        lsm.validate_labels("", "", label)
    with pytest.raises(UnsupportedError):
        lsm.apply_process_labels("", label)


def test_no_labels_is_always_fine() -> None:
    lsm.validate_labels("", "", "")
    lsm.apply_process_labels("", "")


def test_write_attr_uses_first_existing_file(tmp_path) -> None:
    target = tmp_path / "exec"
    target.write_text("")
    lsm._write_attr([str(tmp_path / "missing"), str(target)], "exec profile")
    assert target.read_text() == "exec profile"
    with pytest.raises(KernelError, match="is /proc mounted"):
        lsm._write_attr([str(tmp_path / "missing")], "x")
