"""Images through a registry both ways between nsbox, podman and skopeo.

podman lives in a private world (tests/clients.py: its own config, storage and
runtime state under /tmp, the nsbox runtime as its OCI runtime, no network,
/var/lib hidden behind a tmpfs when it copies images); the registry is
test_engine_pull's docker-registry on 127.0.0.1.

* podman pushes its busybox; nsbox pulls it, runs it, and has the digest
  skopeo sees.
* nsbox pushes (OCI as stored, and --format v2s2); podman pulls and runs it;
  skopeo inspect and podman report the digest nsbox printed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from clients import IMAGE_REF, Podman, missing_binaries, podman_world, runtime_under_test
from test_engine_pull import (  # noqa: F401 - fixtures
    REGISTRY,
    ImageStore,
    nsbox,
    registry,
    skopeo,
)

from nsbox.engine.images import ensure_busybox

_missing = missing_binaries("podman", "conmon", "skopeo")
pytestmark = [
    pytest.mark.clients,
    pytest.mark.timeout(300),
    pytest.mark.skipif(bool(_missing) or not os.path.exists(REGISTRY),
                       reason=f"not installed: {', '.join(_missing) or 'docker-registry'}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="rootful podman needs root"),
]


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    with podman_world(runtime_under_test()) as world:
        yield world


def copy_image(podman: Podman, *args: str) -> None:
    """podman push/pull: in the host's network namespace (the registry is on its loopback;
    copying images sets up no network), /var/lib hidden as run_with_private_var_lib does."""
    from clients import _enter_private_var_lib
    argv = ["podman", "--runtime", str(podman.runtime_wrapper), *args]
    proc = subprocess.run(argv, env=podman.env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, cwd=podman.tree,
                          preexec_fn=_enter_private_var_lib)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"


def _skopeo_digest(ref: str) -> str:
    return json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))["Digest"]


def test_podman_pushes_nsbox_pulls_and_runs(nsbox, registry, podman):  # noqa: F811
    ref = f"{registry['host']}/interop/frompodman:1"
    copy_image(podman, "push", "--tls-verify=false", IMAGE_REF, f"docker://{ref}")
    digest = _skopeo_digest(ref)
    out = nsbox("pull", "--tls-verify=false", ref)
    assert "Copying blob" in out.stderr
    image = ImageStore(nsbox.root).resolve(ref)
    assert image.manifest_digest == digest
    assert nsbox("run", "--rm", ref, "echo", "from-podman").stdout == "from-podman\n"
    inspect = json.loads(nsbox("inspect", ref).stdout)[0]
    assert inspect["RepoDigests"] == [f"{registry['host']}/interop/frompodman@{digest}"]
    rows = nsbox("images", "--digests", "--format", "{{.Repository}} {{.Digest}}").stdout
    assert f"{registry['host']}/interop/frompodman {digest}" in rows.splitlines()


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_nsbox_pushes_podman_pulls_and_runs(nsbox, registry, podman, fmt):  # noqa: F811
    ensure_busybox(ImageStore(nsbox.root))
    ref = f"{registry['host']}/interop/fromnsbox-{fmt}:1"
    digest = nsbox("push", "-q", "--tls-verify=false", "--format", fmt, "busybox",
                   f"docker://{ref}").stdout.strip()
    assert digest.startswith("sha256:")
    assert _skopeo_digest(ref) == digest
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    expected_type = {"oci": "application/vnd.oci.image.manifest.v1+json",
                     "v2s2": "application/vnd.docker.distribution.manifest.v2+json"}[fmt]
    assert raw["mediaType"] == expected_type
    copy_image(podman, "pull", "--tls-verify=false", ref)
    seen = json.loads(podman.run("image", "inspect", ref).stdout)[0]
    assert seen["Digest"] == digest
    out = podman.run("run", "--rm", *podman.container_args(), ref, "echo", "from-nsbox")
    assert out.stdout == "from-nsbox\n"
    podman.run("rmi", ref)
