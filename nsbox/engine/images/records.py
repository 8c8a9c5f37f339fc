"""The records of the image store: Layer, Image (with its config's fields) and
the ImageSummary `images` lists, and OCI chain ids.  Plain data: the store
(store.py) makes them, the engine and the API read them.
"""

from __future__ import annotations

from nsbox._record import record

from .reference import familiar_name, parse_reference


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI ChainIDs: chain[0] = diff[0], chain[n] = sha256(chain[n-1] + " " + diff[n])."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            import hashlib
            chains.append("sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
    return chains


@record
class Layer:
    """One layer of an image, unpacked at `path` (an overlay lower directory)."""

    diff_id: str        # digest of the uncompressed tar
    chain_id: str       # names the unpacked directory
    digest: str         # the blob in the store (compressed or not)
    media_type: str
    blob_size: int
    path: str
    size: int           # bytes of file content once unpacked


@record
class Image:
    """An image in the store.  `config` is the full OCI image config document."""

    id: str                     # sha256:<hex of the config blob>
    manifest_digest: str
    config: dict
    names: list[str]            # full names: docker.io/library/busybox:latest
    layers: list[Layer]         # bottom first
    # repository -> digest of the manifest `push --format` last put there, when it is
    # not manifest_digest (the registry holds other bytes than the store's)
    pushed: dict = dict

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def repo_tags(self) -> list[str]:
        return [familiar_name(name) for name in self.names]

    @property
    def repo_digests(self) -> list[str]:
        repos = sorted({parse_reference(name).repository for name in self.names})
        return [f"{familiar_name(repo)}@{self.pushed.get(repo, self.manifest_digest)}"
                for repo in repos]

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def created(self) -> str:
        return self.config.get("created") or ""

    @property
    def section(self) -> dict:
        """The runtime part of the config: Env, Cmd, Entrypoint, ... (Docker key names)."""
        return self.config.get("config") or {}

    @property
    def entrypoint(self) -> list[str] | None:
        return self.section.get("Entrypoint")

    @property
    def cmd(self) -> list[str] | None:
        return self.section.get("Cmd")

    @property
    def env(self) -> list[str]:
        return list(self.section.get("Env") or [])

    @property
    def working_dir(self) -> str:
        return self.section.get("WorkingDir") or ""

    @property
    def user(self) -> str:
        return self.section.get("User") or ""

    @property
    def stop_signal(self) -> str:
        return self.section.get("StopSignal") or ""

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.section.get("Labels") or {})

    @property
    def exposed_ports(self) -> list[str]:
        return sorted(self.section.get("ExposedPorts") or {})

    @property
    def volumes(self) -> list[str]:
        return sorted(self.section.get("Volumes") or {})

    @property
    def lower_dirs(self) -> list[str]:
        """The unpacked layer directories top-most first: overlay's lowerdir order."""
        return [layer.path for layer in reversed(self.layers)]


@record
class ImageSummary:
    """One row of `images`: what `docker images` / GET /images/json show."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    created: int                # seconds since the epoch
    size: int
    labels: dict[str, str] = dict

    @property
    def dangling(self) -> bool:
        return not self.repo_tags
