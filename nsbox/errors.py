"""The one exception hierarchy of nsbox.

Library code raises these; only the CLI edge turns them into a one-line
message and an exit code.
"""

from __future__ import annotations


class NsboxError(Exception):
    """Base of every error nsbox reports to a user."""

    exit_code = 1


class ConfigError(NsboxError):
    """A config.json (or flag value) that is malformed or invalid."""


class BundleError(NsboxError):
    """The bundle or its rootfs is missing or unusable."""


class ContainerNotFound(NsboxError):
    """No container with that id."""


class ContainerExists(NsboxError):
    """A container with that id already exists."""


class InvalidState(NsboxError):
    """The container is not in a state that allows the operation."""


class HookError(NsboxError):
    """A lifecycle hook failed or timed out."""


class SecurityError(NsboxError):
    """A safety check failed (fake /proc, unsafe path, ...)."""


class UnsupportedError(NsboxError):
    """The host lacks a feature the config asks for."""


class KernelError(NsboxError):
    """A system call failed while building the container."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class ImageNotFound(NsboxError):
    """No image matches that reference or id."""


class ImageError(NsboxError):
    """An image, archive or layer that is malformed, corrupt or truncated."""


class ImageInUse(NsboxError):
    """An image that cannot be removed: a container uses it, or several names share it."""


class CommandError(NsboxError):
    """The container's command cannot be run: 126 (not executable) or 127 (not found)."""

    def __init__(self, message: str, exit_code: int = 127) -> None:
        super().__init__(message)
        self.exit_code = exit_code
