"""Bearer-token auth against docker-registry's own token mode.

The module starts a small token service (http.server in a thread) that checks
basic credentials and hands out JWTs signed RS256 with a key made by openssl
(the certificate travels in the token's x5c header and is the registry's
`rootcertbundle`), and Debian's docker-registry with `auth: token` pointing
at it.  The registry verifies every token itself: signature, issuer,
audience, expiry and the granted actions per repository.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from registry_server import REGISTRY, free_port, running_registry
from test_engine_pull import Nsbox, nsbox, one_line_error  # noqa: F401

from nsbox.engine.images import ImageStore, ensure_busybox

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.exists(REGISTRY) or not shutil.which("openssl"),
                                 reason="needs docker-registry and openssl (scripts/apt-packages.txt)")]

USER, PASSWORD = "tok", "en-s3cret"
ISSUER, SERVICE = "nsbox-test-issuer", "nsbox-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, key: Path, cert_der: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.key, self.cert_der = key, cert_der
        self.requests: list[str] = []  # the scope asked for ('' for none)
        self.host = f"127.0.0.1:{self.server_address[1]}"

    def sign(self, access: list[dict]) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "iat": now, "nbf": now - 30,
                  "exp": now + 300, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), capture_output=True,
                                   check=True).stdout
        return f"{signing_input}.{_b64url(signature)}"


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    server: TokenService

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def _send(self, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        scope = (query.get("scope") or [""])[0]
        self.server.requests.append(scope)
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            return self._send(401, {"errors": [{"code": "UNAUTHORIZED",
                                                "message": "token service: bad credentials"}]})
        access = []
        if scope.startswith("repository:"):
            _, name, actions = scope.split(":", 2)
            access.append({"type": "repository", "name": name, "actions": actions.split(",")})
        token = self.server.sign(access)
        return self._send(200, {"token": token, "access_token": token, "expires_in": 300})


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tokreg")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(tmp / "token.key"), "-out", str(tmp / "token.crt"), "-days", "2",
                    "-subj", "/CN=nsbox test token signer"], check=True, capture_output=True,
                   timeout=60)
    der = subprocess.run(["openssl", "x509", "-in", str(tmp / "token.crt"), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    service = TokenService(tmp / "token.key", der)
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    port = free_port()
    config = (f"auth:\n  token:\n    realm: http://{service.host}/token\n    service: {SERVICE}\n"
              f"    issuer: {ISSUER}\n    rootcertbundle: {tmp / 'token.crt'}\n"
              f"http:\n  addr: 127.0.0.1:{port}\n")

    def answers() -> bool:
        # Up when /v2/ asks for a token.
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
        except urllib.error.HTTPError as err:
            return err.code == 401
        except OSError:
            pass
        return False

    try:
        with running_registry(tmp, config, answers):
            yield {"host": f"127.0.0.1:{port}", "service": service, "log": tmp / "registry.log"}
    finally:
        service.shutdown()
        service.server_close()


def test_token_auth_login_push_pull_run(nsbox, token_registry):  # noqa: F811
    host, service = token_registry["host"], token_registry["service"]
    name = f"{host}/test/tok:1"
    ensure_busybox(ImageStore(nsbox.root))
    nsbox("tag", "busybox", name)

    proc = nsbox("push", "--tls-verify=false", name, check=False)  # no credentials
    assert "bad credentials" in one_line_error(proc)
    proc = subprocess.run([*nsbox.prefix, "login", "--tls-verify=false", "-u", USER,
                           "--password-stdin", host], input="wrong\n", capture_output=True,
                          text=True, timeout=60, env=nsbox.env)
    assert "unauthorized" in one_line_error(proc)
    assert not (nsbox.tmp / "xdg" / "containers" / "auth.json").exists()
    nsbox("login", "--tls-verify=false", "-u", USER, "-p", PASSWORD, host)

    service.requests.clear()
    digest = nsbox("push", "-q", "--tls-verify=false", name).stdout.strip()
    # One token for the command, for pull and push on that repository; the registry
    # took it for every HEAD, POST, PUT and the manifest.
    assert service.requests == ["repository:test/tok:pull,push"]
    assert digest == ImageStore(nsbox.root).resolve(name).manifest_digest

    (nsbox.tmp / "fresh").mkdir()
    fresh = Nsbox(nsbox.tmp / "fresh")
    fresh.env["REGISTRY_AUTH_FILE"] = str(nsbox.tmp / "xdg" / "containers" / "auth.json")
    service.requests.clear()
    fresh("pull", "-q", "--tls-verify=false", name)
    assert service.requests == ["repository:test/tok:pull"]
    assert fresh("run", "--rm", name, "echo", "tokened").stdout == "tokened\n"

    # A token for one repository does not open another: the registry says no.
    (nsbox.tmp / "other").mkdir()
    other = Nsbox(nsbox.tmp / "other")
    proc = other("pull", "--tls-verify=false", f"{host}/test/nosuch:1", check=False)
    assert "bad credentials" in one_line_error(proc)
    assert other.blobs() == {} and other.tmp_left() == []
