"""Making an image available before a container or a build uses it (`--pull`).

The policy of `run --pull`, `create --pull` and `build --pull`: busybox is made
offline, other images are pulled when missing or always, or only looked up.
It lives here, below nsbox.api and the build code, which both call it.
"""

from __future__ import annotations

from nsbox.errors import ConfigError, ImageNotFound, NsboxError

# Images the engine can make offline on first use.
_OFFLINE_IMAGES = ("busybox", "busybox:latest", "docker.io/library/busybox:latest",
                   "localhost/busybox", "localhost/busybox:latest")

PULL_POLICIES = ("always", "missing", "never")


def ensure_image(store, ref: str, progress=None, pull: str = "missing",  # noqa: ANN001
                 pull_image=None) -> None:  # noqa: ANN001
    """Make REF available, as `run --pull POLICY` does.

    busybox is built offline on first use, whatever the policy (it is never
    pulled).  Other images are pulled with PULL_IMAGE(store, ref) (default:
    store.pull) when missing (`missing`, the default) or every time
    (`always`); `never` only looks in the store.
    """
    if pull not in PULL_POLICIES:
        raise ConfigError(f'invalid pull policy "{pull}": want always, missing or never')
    if ref in _OFFLINE_IMAGES:
        if not store.exists(ref):
            from nsbox.engine.images import ensure_busybox

            ensure_busybox(store, progress=progress)
        return
    if pull != "always" and store.exists(ref):
        return
    if pull == "never":
        raise ImageNotFound(f"Unable to find image '{ref}' locally (--pull never)")
    prefix = f"pulling {ref}: " if pull == "always" else \
        f"Unable to find image '{ref}' locally; pulling it: "
    try:
        if pull_image is not None:
            pull_image(store, ref)
        else:
            store.pull(ref)
    except ConfigError as err:  # a short name no registry is configured for
        raise ImageNotFound(prefix + str(err)) from None
    except NsboxError as err:
        raise type(err)(prefix + str(err)) from None
