"""Per-registry TLS material: extra CAs and client certificates (containers-certs.d(5)).

A registry `HOST[:PORT]` may have a directory `HOST[:PORT]` under one of
the certs.d bases; the first that exists is used, as Podman does:

* `$NSBOX_CERTS_D` (a `:`-separated list of bases) when set, else
* `~/.config/containers/certs.d` (not as root), `/etc/containers/certs.d`,
  `/etc/docker/certs.d`.

`--cert-dir DIR` on a command names the directory itself instead.  In it:

* `*.crt`: CA certificates, trusted *in addition to* the system CAs;
* `*.cert` + `*.key` with the same stem: a client certificate and its key,
  offered when the registry asks for one (mutual TLS).  A `.cert` without its
  `.key` (or the other way round) is an error, as in Podman.

The result is one `ssl.SSLContext` per client, handed to urllib3.
"""

from __future__ import annotations

import glob
import os
import ssl

from nsbox.errors import ConfigError

CERTS_D_BASES = ("/etc/containers/certs.d", "/etc/docker/certs.d")


def certs_d_bases() -> list[str]:
    """Where `HOST:PORT` directories are looked for, in order."""
    override = os.environ.get("NSBOX_CERTS_D")
    if override:
        return [p for p in override.split(os.pathsep) if p]
    bases = list(CERTS_D_BASES)
    if os.geteuid() != 0:
        config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        bases.insert(0, os.path.join(config_home, "containers", "certs.d"))
    return bases


def host_cert_dir(host: str, cert_dir: str | None = None) -> str | None:
    """The directory with HOST's certificates: CERT_DIR if given, else the first certs.d match."""
    if cert_dir:
        if not os.path.isdir(cert_dir):
            raise ConfigError(f"--cert-dir {cert_dir}: no such directory")
        return cert_dir
    if not host or "/" in host or host in (".", ".."):
        return None
    for base in certs_d_bases():
        candidate = os.path.join(base, host)
        if os.path.isdir(candidate):
            return candidate
    return None


def tls_context(host: str, verify: bool, cert_dir: str | None = None) -> ssl.SSLContext:
    """The context for HOST: system CAs plus the directory's, its client cert, VERIFY or not."""
    if verify:
        context = ssl.create_default_context()
    else:  # nothing is verified: loading the system CAs (~40 ms) would be wasted
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    directory = host_cert_dir(host, cert_dir)
    if directory is not None:
        try:
            for ca in sorted(glob.glob(os.path.join(directory, "*.crt"))):
                context.load_verify_locations(cafile=ca)
            certs = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(directory, "*.cert"))}
            keys = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(directory, "*.key"))}
            for stem in sorted(certs ^ keys):
                have, missing = (".cert", ".key") if stem in certs else (".key", ".cert")
                raise ConfigError(f"{directory}: missing {stem}{missing} for {stem}{have}")
            for stem in sorted(certs):
                context.load_cert_chain(os.path.join(directory, stem + ".cert"),
                                        os.path.join(directory, stem + ".key"))
        except (ssl.SSLError, OSError) as err:
            raise ConfigError(f"{directory}: cannot load the TLS certificates: "
                              f"{getattr(err, 'strerror', None) or err}") from None
    return context


__all__ = ["certs_d_bases", "host_cert_dir", "tls_context"]
