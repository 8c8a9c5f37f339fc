"""Usage:  nsbox login [OPTIONS] REGISTRY

Log in to a registry: the credentials are checked against it (GET /v2/,
basic or bearer token authentication) and only then saved in auth.json
(--authfile, $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json,
else /run/containers/<uid>/auth.json), mode 0600.
"""

from __future__ import annotations

import sys

FLAGS = {"username": "str", "password": "str", "password-stdin": "bool", "authfile": "str",
         "tls-verify": "bool", "cert-dir": "str"}
ALIASES = {"u": "username", "p": "password"}
HELP = {
    "username": ("string", "Username for the registry"),
    "password": ("string", "Password for the registry (visible in ps; prefer --password-stdin)"),
    "password-stdin": "Read the password from stdin",
    "authfile": ("path", "The auth.json to write (default: Podman's per-user file)"),
    "tls-verify": "Require HTTPS with a verified certificate (default true; false also allows plain HTTP)",
    "cert-dir": ("path", "CA certificates (*.crt) and a client certificate (*.cert, *.key) for the "
                         "registry (default: its certs.d directory)"),
}


def _credentials(args) -> tuple[str, str]:  # noqa: ANN001
    from nsbox.errors import ConfigError

    user, password = args["username"], args["password"]
    if args["password-stdin"]:
        if password is not None:
            raise ConfigError("--password and --password-stdin are mutually exclusive")
        if not user:
            raise ConfigError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    interactive = sys.stdin.isatty()
    if not user:
        if not interactive:
            raise ConfigError("no username given (use --username)")
        user = input("Username: ").strip()
    if password is None:
        if not interactive:
            raise ConfigError("no password given (use --password-stdin or --password)")
        import getpass
        password = getpass.getpass("Password: ")
    if not user or not password:
        raise ConfigError("the username and the password must not be empty")
    if ":" in user:
        raise ConfigError("the username must not contain ':'")
    return user, password


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.images.registries import load_registries_conf, login_key, save_credentials
    from nsbox.engine.images.registry import RegistryClient

    (registry,) = need_args(args, "login", 1, 1)
    key = login_key(registry)
    user, password = _credentials(args)
    host = key.split("/", 1)[0]
    conf = load_registries_conf()
    entry = conf.registry_for(key)
    verify = args.flags.get("tls-verify")
    if verify is None:
        verify = not (entry and entry["insecure"])
    client = RegistryClient(host, key.partition("/")[2], tls_verify=verify,
                            credentials=(user, password), cert_dir=args["cert-dir"] or None)
    try:
        client.check_login()
    finally:
        client.close()
    save_credentials(key, user, password, args["authfile"] or None)
    sys.stdout.write("Login Succeeded!\n")
    return 0
