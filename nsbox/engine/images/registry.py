"""A client for the OCI distribution API (Docker Registry HTTP API v2), on urllib3.

urllib3 gives connection pooling (the parallel blob downloads reuse a few
connections to one registry), TLS verified against the system's CAs by
default, redirects (blob downloads often redirect to a CDN; urllib3 drops the
Authorization header when a redirect leaves the host) and retries of failed
connects.  Nothing here speaks HTTP by hand.

Scheme, as Podman does it: HTTPS with a verified certificate.  Only when TLS
verification is off (`--tls-verify=false`, or `insecure = true` for the
registry in registries.conf) is an unverified certificate accepted, and
plain HTTP tried when HTTPS fails.  A registry on 127.0.0.1 or localhost gets
no exception (unlike Docker, which treats 127.0.0.0/8 as insecure).

Authentication: the `/v2/` ping answers 200 (anonymous) or 401 with a
`WWW-Authenticate` challenge.  `Bearer realm=...,service=...,scope=...`:
a token is fetched from the realm for `repository:<path>:pull` (`pull,push`
for a push; with the auth.json credentials as basic auth, if any) and cached
per (realm, service, scope) for the command.  `Basic`: the auth.json
credentials are sent.  `check_login` does the same dance for `nsbox login`
(a token without a scope) and fails with "unauthorized" on wrong credentials.
"""

from __future__ import annotations

import base64
import hashlib
import json

import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, SSLError

from nsbox.errors import ImageError

from .layout import INDEX_TYPES, MANIFEST_TYPES, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST

MANIFEST_ACCEPT = ", ".join([MEDIA_OCI_INDEX, *INDEX_TYPES[1:], MEDIA_OCI_MANIFEST, *MANIFEST_TYPES[1:]])
MAX_MANIFEST_SIZE = 4 << 20
# The API host behind a registry name.
API_HOSTS = {"docker.io": "registry-1.docker.io"}


class RegistryError(ImageError):
    """A registry refused a request, or could not be reached."""


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://a/token",service="reg"` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            value, i = [], i + 1
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            params[key] = "".join(value)
            i += 1
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


def _error_message(response: urllib3.BaseHTTPResponse) -> str:
    """The registry's error text: the `errors` list of its JSON body, else the HTTP reason."""
    try:
        doc = json.loads(response.data[:65536] or b"{}")
        errors = doc.get("errors") or []
        texts = [str(e.get("message") or e.get("code") or "").strip() for e in errors]
        texts = [t for t in texts if t]
        if texts:
            return "; ".join(dict.fromkeys(texts))
    except (ValueError, AttributeError, TypeError):
        pass
    if response.status == 401:
        return "unauthorized: authentication required"
    return f"HTTP {response.status} {response.reason or ''}".strip()


class RegistryClient:
    """One registry host, one repository on it; reuse it for all of that image's requests."""

    def __init__(self, host: str, repository: str, *, tls_verify: bool = True,
                 credentials: tuple[str, str] | None = None,
                 tokens: dict[tuple[str, str, str], str] | None = None,
                 actions: str = "pull", cert_dir: str | None = None) -> None:
        from .certs import tls_context
        self.host = host
        self.actions = actions
        self.api_host = API_HOSTS.get(host, host)
        self.repository = repository
        self.tls_verify = tls_verify
        self.credentials = credentials
        self.tokens = tokens if tokens is not None else {}
        self.base: str | None = None
        self.challenge: tuple[str, dict[str, str]] | None = None
        retries = urllib3.Retry(total=3, connect=1, read=1, status=0, redirect=5, backoff_factor=0.2,
                                raise_on_redirect=True, raise_on_status=False)
        timeout = urllib3.Timeout(connect=15, read=60)
        # System CAs plus the registry's certs.d directory (extra CAs, client cert).
        self.http = urllib3.PoolManager(num_pools=4, maxsize=4, retries=retries, timeout=timeout,
                                        headers={"User-Agent": "nsbox"},
                                        ssl_context=tls_context(host, tls_verify, cert_dir))
        if not tls_verify:
            import warnings
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)

    def close(self) -> None:
        self.http.clear()

    # ---------------------------------------------------------------- transport
    def _send(self, method: str, url: str, headers: dict[str, str],
              preload: bool = True, body=None) -> urllib3.BaseHTTPResponse:  # noqa: ANN001
        # A body is sent once: a failed read is not retried with a half-read file.
        extra = {} if body is None else {"body": body, "retries": urllib3.Retry(
            total=1, connect=1, read=0, status=0, redirect=0, raise_on_status=False)}
        try:
            return self.http.request(method, url, headers=headers, preload_content=preload,
                                     redirect=body is None, **extra)
        except MaxRetryError as err:
            raise RegistryError(f"{self.host}: {_reason(err.reason)}") from None
        except HTTPError as err:
            raise RegistryError(f"{self.host}: {_reason(err)}") from None

    def ping(self) -> None:
        """Find the scheme and the authentication the registry wants (GET /v2/)."""
        if self.base is not None:
            return
        schemes = ["https"] if self.tls_verify else ["https", "http"]
        failure = None
        for scheme in schemes:
            base = f"{scheme}://{self.api_host}"
            try:
                response = self.http.request("GET", base + "/v2/", retries=urllib3.Retry(
                    total=1, connect=1, read=0, redirect=3, status=0, raise_on_status=False))
            except (MaxRetryError, HTTPError) as err:
                failure = err.reason if isinstance(err, MaxRetryError) else err
                continue
            if response.status == 401:
                header = response.headers.get("WWW-Authenticate", "")
                self.challenge = parse_challenge(header) if header else None
            elif response.status != 200 and response.status != 404:
                failure_text = _error_message(response)
                raise RegistryError(f"pinging container registry {self.host}: {failure_text}")
            self.base = base
            return
        hint, reason = "", _reason(failure)
        if self.tls_verify and isinstance(failure, SSLError) and "client certificate" not in reason:
            hint = (" (for a registry without TLS use --tls-verify=false, or insecure = true "
                    "for it in registries.conf; a private CA goes in its certs.d directory)")
        raise RegistryError(f"pinging container registry {self.host}: {reason}{hint}")

    # ---------------------------------------------------------------- auth
    def _auth_header(self) -> dict[str, str]:
        if self.challenge is None:
            return {}
        scheme, params = self.challenge
        if scheme == "basic":
            return self._basic() or {}
        if scheme == "bearer":
            scope = f"repository:{self.repository}:{self.actions}"
            key = (params.get("realm", ""), params.get("service", ""), scope)
            token = self.tokens.get(key)
            if token is None:
                token = self._fetch_token(params, scope)
                self.tokens[key] = token
            return {"Authorization": f"Bearer {token}"}
        raise RegistryError(f"{self.host}: unsupported authentication scheme {scheme!r}")

    def _basic(self) -> dict[str, str] | None:
        if self.credentials is None:
            return None
        user, password = self.credentials
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}

    def _fetch_token(self, params: dict[str, str], scope: str | None) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryError(f"{self.host}: bearer challenge without a realm")
        fields = {"scope": scope} if scope else {}
        if params.get("service"):
            fields["service"] = params["service"]
        from urllib.parse import urlencode
        url = realm + ("&" if "?" in realm else "?") + urlencode(fields)
        if url.startswith("http://") and self.tls_verify and not _is_loopback_url(realm):
            raise RegistryError(f"{self.host}: refusing to send credentials to the plain-HTTP "
                                f"token realm {realm}")
        response = self._send("GET", url, self._basic() or {})
        if response.status in (401, 403) and scope is None:
            raise RegistryError(f"logging in to {self.host}: {_unauthorized(response)}")
        if response.status != 200:
            raise RegistryError(f"{self.host}: getting a token: {_error_message(response)}")
        try:
            doc = json.loads(response.data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.host}: the token server answered without a token")
        return token

    def get(self, path: str, accept: str | None = None, preload: bool = True) -> urllib3.BaseHTTPResponse:
        """GET /v2/<repository>/<path> with authentication; one retry on a new challenge."""
        headers = {"Accept": accept} if accept else {}
        return self.request("GET", path, headers, preload=preload)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body=None, preload: bool = True) -> urllib3.BaseHTTPResponse:  # noqa: ANN001
        """METHOD /v2/<repository>/<path> (or an absolute upload URL) with authentication.

        A 401 with a new challenge (another scope, an expired token) is
        answered once more; a BODY that is a file is rewound for it.
        """
        self.ping()
        url = path if "://" in path else f"{self.base}/v2/{self.repository}/{path}"
        headers = headers or {}
        for attempt in range(2):
            if body is not None and hasattr(body, "seek"):
                body.seek(0)
            response = self._send(method, url, {**headers, **self._auth_header()}, preload, body)
            if response.status != 401 or attempt:
                return response
            header = response.headers.get("WWW-Authenticate", "")
            if not header:
                return response
            if not preload:
                response.drain_conn()
            challenge = parse_challenge(header)
            if challenge == self.challenge and challenge[0] != "bearer":
                return response
            if challenge[0] == "bearer":  # a new scope or an expired token: ask again
                key = (challenge[1].get("realm", ""), challenge[1].get("service", ""),
                       f"repository:{self.repository}:{self.actions}")
                self.tokens.pop(key, None)
            self.challenge = challenge
        return response

    def check_login(self) -> None:
        """Check the credentials against the registry (`nsbox login`); "unauthorized" if wrong."""
        self.ping()
        if self.challenge is None:
            return  # the registry lets anyone in
        scheme, params = self.challenge
        if scheme == "basic":
            headers = self._basic() or {}
        elif scheme == "bearer":
            headers = {"Authorization": f"Bearer {self._fetch_token(params, None)}"}
        else:
            raise RegistryError(f"{self.host}: unsupported authentication scheme {scheme!r}")
        response = self._send("GET", f"{self.base}/v2/", headers)
        if response.status in (401, 403):
            raise RegistryError(f"logging in to {self.host}: {_unauthorized(response)}")
        if response.status != 200:
            raise RegistryError(f"logging in to {self.host}: {_error_message(response)}")

    # ---------------------------------------------------------------- push
    def has_blob(self, digest: str) -> bool:
        """HEAD /v2/<repository>/blobs/<digest>: is the blob already there?"""
        response = self.request("HEAD", f"blobs/{digest}")
        if response.status == 200:
            return True
        if response.status == 404:
            return False
        raise RegistryError(f"checking blob {digest} in {self.host}/{self.repository}: "
                            f"{_error_message(response)}")

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        """PUT the manifest bytes as they are under REFERENCE (a tag or digest); its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response = self.request("PUT", f"manifests/{reference}", {"Content-Type": media_type},
                                body=data)
        if response.status not in (200, 201):
            raise RegistryError(f"writing manifest {reference} to {self.host}/{self.repository}: "
                                f"{_error_message(response)}")
        return digest

    # ---------------------------------------------------------------- content
    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the manifest or index REFERENCE (a tag or digest)."""
        response = self.get(f"manifests/{reference}", accept=MANIFEST_ACCEPT)
        if response.status != 200:
            raise RegistryError(f"reading manifest {reference} in {self.host}/{self.repository}: "
                                f"{_error_message(response)}")
        data = response.data
        if len(data) > MAX_MANIFEST_SIZE:
            raise RegistryError(f"manifest {reference} in {self.host}/{self.repository} is too large")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"manifest {reference} in {self.host}/{self.repository}: digest "
                                f"mismatch (got {digest})")
        header_digest = response.headers.get("Docker-Content-Digest")
        if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
            raise RegistryError(f"manifest {reference} in {self.host}/{self.repository}: digest "
                                f"mismatch (registry says {header_digest}, content is {digest})")
        media_type = (response.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            doc = json.loads(data)
        except ValueError:
            raise RegistryError(f"manifest {reference} in {self.host}/{self.repository} is not "
                                "JSON") from None
        if isinstance(doc, dict) and doc.get("mediaType"):
            media_type = doc["mediaType"]
        elif isinstance(doc, dict) and "manifests" in doc:
            media_type = MEDIA_OCI_INDEX
        return data, media_type, digest

    def blob_bytes(self, digest: str, size: int, limit: int = MAX_MANIFEST_SIZE) -> bytes:
        """A small blob (an image config) in memory, checked against DIGEST and SIZE."""
        if size > limit:
            raise RegistryError(f"blob {digest} is too large ({size} bytes)")
        response = self.get(f"blobs/{digest}")
        if response.status != 200:
            raise RegistryError(f"fetching blob {digest}: {_error_message(response)}")
        data = response.data
        check_blob(digest, size, hashlib.sha256(data).hexdigest(), len(data))
        return data


def _unauthorized(response: urllib3.BaseHTTPResponse) -> str:
    """"unauthorized: <the registry's reason>" for a refused login."""
    text = _error_message(response)
    if text.lower().startswith("unauthorized"):
        return text
    return f"unauthorized: {text}"


def check_blob(digest: str, size: int, actual_hex: str, actual_size: int) -> None:
    if actual_size != size:
        raise RegistryError(f"blob {digest}: size mismatch: expected {size} bytes, got "
                            f"{actual_size if actual_size <= size else 'more'}")
    if "sha256:" + actual_hex != digest:
        raise RegistryError(f"blob {digest}: digest mismatch: content is sha256:{actual_hex}")


def _is_loopback_url(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "127.0.0.1", "::1")


def _reason(err: object) -> str:
    """A one-line reason for a urllib3 failure: `connection refused`, `certificate verify failed`."""
    if isinstance(err, NewConnectionError):
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        text = str(err)
        return "connection refused" if "refused" in text.lower() else text.split(": ", 1)[-1]
    if isinstance(err, SSLError):
        text = str(err)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "tls: certificate verify failed"
        if "ALERT_BAD_CERTIFICATE" in text or "CERTIFICATE_REQUIRED" in text:
            return ("tls: the registry refused the client certificate or wants one (a "
                    "client.cert and client.key in its certs.d directory or --cert-dir)")
        if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
            return "tls: the server does not speak TLS (a plain-HTTP registry?)"
        return f"tls: {text.splitlines()[0]}"
    text = str(err) if err is not None else "unreachable"
    return text.splitlines()[0] if text else type(err).__name__


__all__ = ["RegistryClient", "RegistryError", "check_blob", "parse_challenge"]
