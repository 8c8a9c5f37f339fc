"""Registries over TLS with a private CA, client certificates and htpasswd basic auth.

The module makes a CA, a server certificate for 127.0.0.1 and a client
certificate with openssl, and starts Debian's docker-registry on 127.0.0.1
with TLS, `clientcas` (a client certificate is required) and htpasswd basic
auth (bcrypt).  nsbox finds the CA and the client certificate in a certs.d
tree that NSBOX_CERTS_D points at (the host's /etc/containers/certs.d is
never touched), or in --cert-dir.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest
from registry_server import REGISTRY, free_port, running_registry
from test_engine_pull import Nsbox, nsbox, one_line_error  # noqa: F401

from nsbox.engine.images import ImageStore, ensure_busybox

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.exists(REGISTRY) or not shutil.which("openssl"),
                                 reason="needs docker-registry and openssl (scripts/apt-packages.txt)")]

USER, PASSWORD = "alice", "s3cret"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(tmp: Path) -> None:
    """ca.{key,crt}; server.{key,crt} for 127.0.0.1/localhost; client.{key,crt}; all EC P-256."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=nsbox test CA", cwd=tmp)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (tmp / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=nsbox test {name}", cwd=tmp)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=tmp)


def bcrypt_hash(password: str) -> str:
    """docker-registry's htpasswd takes bcrypt only: libcrypt's through the crypt module
    (Python 3.11), else apache2-utils' htpasswd."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
        if hashed and hashed.startswith("$2"):
            return hashed
    except (ImportError, OSError):
        pass
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", "u", password], capture_output=True, text=True,
                             check=True).stdout
        return out.strip().split(":", 1)[1]
    pytest.skip("no bcrypt: neither the crypt module nor htpasswd")


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tlsreg")
    make_pki(tmp)
    (tmp / "htpasswd").write_text(f"{USER}:{bcrypt_hash(PASSWORD)}\n")
    port = free_port()
    host = f"127.0.0.1:{port}"
    config = (f"auth:\n  htpasswd:\n    realm: nsbox-test\n    path: {tmp / 'htpasswd'}\n"
              f"http:\n  addr: {host}\n  tls:\n    certificate: {tmp / 'server.crt'}\n"
              f"    key: {tmp / 'server.key'}\n    clientcas:\n      - {tmp / 'ca.crt'}\n")
    context = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    context.load_cert_chain(str(tmp / "client.crt"), str(tmp / "client.key"))

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock, \
                    context.wrap_socket(sock, server_hostname="127.0.0.1"):
                return True
        except OSError:
            return False

    with running_registry(tmp, config, answers):
        # The certs.d tree: <base>/127.0.0.1:PORT/{ca.crt, client.cert, client.key}.
        certs_d = tmp / "certs.d"
        (certs_d / host).mkdir(parents=True)
        shutil.copy(tmp / "ca.crt", certs_d / host / "ca.crt")
        only_ca = tmp / "only-ca"
        only_ca.mkdir()
        shutil.copy(tmp / "ca.crt", only_ca / "ca.crt")
        yield {"host": host, "tmp": tmp, "certs_d": certs_d, "only_ca": only_ca}


def _with_client_cert(directory: Path, tls: dict) -> None:
    shutil.copy(tls["tmp"] / "client.crt", directory / "client.cert")
    shutil.copy(tls["tmp"] / "client.key", directory / "client.key")


def _login(box: Nsbox, host: str, password: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*box.prefix, "login", "--username", USER, "--password-stdin", *extra,
                           host], input=password + "\n", capture_output=True, text=True,
                          timeout=60, env=box.env)


def _cert_dir_login(box: Nsbox, tls: dict, tmp_path: Path) -> tuple[Path, Path]:
    """A --cert-dir with the CA and the client certificate, and an authfile that BOX
    logged into the registry through it: (cert dir, authfile)."""
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    shutil.copy(tls["tmp"] / "ca.crt", cert_dir / "ca.crt")
    _with_client_cert(cert_dir, tls)
    auth = tmp_path / "auth.json"
    proc = _login(box, tls["host"], PASSWORD, "--cert-dir", str(cert_dir), "--authfile", str(auth))
    assert proc.returncode == 0, proc.stderr
    return cert_dir, auth


def test_tls_registry_with_ca_client_cert_and_htpasswd(nsbox, tls_registry):  # noqa: F811
    host, certs_d = tls_registry["host"], tls_registry["certs_d"]
    ensure_busybox(ImageStore(nsbox.root))
    name = f"{host}/test/tls:1"
    nsbox("tag", "busybox", name)

    # Without the CA: the system CAs do not know the registry's certificate.
    proc = nsbox("pull", name, check=False)
    assert "certificate verify failed" in one_line_error(proc)
    assert nsbox.tmp_left() == []

    # The CA in certs.d, but no client certificate: the registry refuses the handshake.
    nsbox.env["NSBOX_CERTS_D"] = str(certs_d)
    proc = _login(nsbox, host, PASSWORD)
    assert "client certificate" in one_line_error(proc)
    auth = nsbox.tmp / "xdg" / "containers" / "auth.json"
    assert not auth.exists()

    # A client certificate without its key is a configuration error, said in one line.
    shutil.copy(tls_registry["tmp"] / "client.crt", certs_d / host / "client.cert")
    assert "missing client.key" in one_line_error(_login(nsbox, host, PASSWORD))
    _with_client_cert(certs_d / host, tls_registry)

    # Wrong password: htpasswd says no, nothing is saved.
    assert "unauthorized" in one_line_error(_login(nsbox, host, "wrong"))
    assert not auth.exists()
    proc = nsbox("push", "busybox", name, check=False)  # not logged in yet
    assert "authentication required" in one_line_error(proc)

    proc = _login(nsbox, host, PASSWORD)
    assert proc.returncode == 0 and "Login Succeeded" in proc.stdout, proc.stderr
    digest = nsbox("push", "-q", name).stdout.strip()
    assert digest == ImageStore(nsbox.root).resolve(name).manifest_digest

    # A fresh store pulls it back over TLS, verified, and runs it.
    (nsbox.tmp / "fresh").mkdir()
    fresh = Nsbox(nsbox.tmp / "fresh")
    fresh.env["NSBOX_CERTS_D"] = str(certs_d)
    fresh.env["REGISTRY_AUTH_FILE"] = str(auth)
    fresh("pull", "-q", name)
    assert ImageStore(fresh.root).resolve(name).manifest_digest == digest
    assert fresh("run", "--rm", name, "echo", "over-tls").stdout == "over-tls\n"

    # A wrong password in auth.json: one line, exit 125, nothing stored.
    bad = nsbox.tmp / "bad-auth.json"
    import base64
    bad.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(
        f"{USER}:nope".encode()).decode()}}}))
    (nsbox.tmp / "other").mkdir()
    other = Nsbox(nsbox.tmp / "other")
    other.env["NSBOX_CERTS_D"] = str(certs_d)
    proc = other("pull", "--authfile", str(bad), name, check=False)
    assert "authentication required" in one_line_error(proc)
    assert other.blobs() == {} and other.tmp_left() == []


def test_cert_dir_flag_and_tls_verify_false(nsbox, tls_registry, tmp_path):  # noqa: F811
    host = tls_registry["host"]
    cert_dir, auth = _cert_dir_login(nsbox, tls_registry, tmp_path)
    ensure_busybox(ImageStore(nsbox.root))
    name = f"{host}/test/certdir:1"
    nsbox("push", "-q", "--cert-dir", str(cert_dir), "--authfile", str(auth), "busybox", name)
    nsbox("rmi", name, check=False)
    nsbox("pull", "-q", "--cert-dir", str(cert_dir), "--authfile", str(auth), name)
    # --tls-verify=false accepts the unknown CA, but the client certificate is still needed
    # (the registry demands one): a directory with only the CA fails the handshake.
    only_client = tmp_path / "client-only"
    only_client.mkdir()
    _with_client_cert(only_client, tls_registry)
    nsbox("rmi", name)
    nsbox("pull", "-q", "--tls-verify=false", "--cert-dir", str(only_client), "--authfile",
          str(auth), name)
    proc = nsbox("pull", "--cert-dir", str(tls_registry["only_ca"]), "--authfile", str(auth),
                 name + "x", check=False)
    assert "client certificate" in one_line_error(proc)
    proc = nsbox("pull", "--cert-dir", str(tmp_path / "nosuch"), name, check=False)
    assert "no such directory" in one_line_error(proc)


def test_run_and_create_pull_with_cert_dir(nsbox, tls_registry, tmp_path):  # noqa: F811
    """`run/create --cert-dir D` hand D to their implicit pull, as `pull --cert-dir` does."""
    host = tls_registry["host"]
    cert_dir, auth = _cert_dir_login(nsbox, tls_registry, tmp_path)
    ensure_busybox(ImageStore(nsbox.root))
    name = f"{host}/test/runcertdir:1"
    nsbox("push", "-q", "--cert-dir", str(cert_dir), "--authfile", str(auth), "busybox", name)
    assert not ImageStore(nsbox.root).exists(name)  # push NAME does not tag it here

    # Without --cert-dir the implicit pull cannot verify the registry: one line, nothing made.
    proc = nsbox("run", "--rm", "--authfile", str(auth), name, "true", check=False)
    assert proc.returncode == 125 and "certificate verify failed" in one_line_error(proc)
    assert nsbox("ps", "-aq").stdout == ""

    proc = nsbox("run", "--cert-dir", str(cert_dir), "--authfile", str(auth), "--rm", name,
                 "echo", "pulled-by-run")
    assert proc.stdout == "pulled-by-run\n"
    assert ImageStore(nsbox.root).exists(name)

    nsbox("rmi", name)
    cid = nsbox("create", "--pull", "always", "--cert-dir", str(cert_dir), "--authfile",
                str(auth), name, "true").stdout.strip()
    assert ImageStore(nsbox.root).exists(name)
    nsbox("rm", cid)
    proc = nsbox("run", "--rm", "--pull", "always", "--cert-dir", str(tmp_path / "nosuch"),
                 name, "true", check=False)
    assert proc.returncode == 125 and "no such directory" in one_line_error(proc)


def test_python_api_push_and_pull_with_cert_dir(tls_registry, tmp_path):
    import nsbox as api
    host = tls_registry["host"]
    cert_dir, auth = _cert_dir_login(Nsbox(tmp_path), tls_registry, tmp_path)
    engine = api.Engine(root=str(tmp_path / "a" / "lib"), run_root=str(tmp_path / "a" / "run"))
    image = ensure_busybox(engine.images)
    ref = f"{host}/test/apicert:1"
    digest = api.push("busybox", ref, authfile=str(auth), cert_dir=str(cert_dir), engine=engine)
    assert digest == image.manifest_digest
    other = api.Engine(root=str(tmp_path / "b" / "lib"), run_root=str(tmp_path / "b" / "run"))
    got = api.pull(ref, authfile=str(auth), cert_dir=str(cert_dir), engine=other)
    assert got.manifest_digest == digest
