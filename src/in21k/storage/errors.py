"""The errors the storage layer raises besides ``StorageError`` itself."""

from __future__ import annotations

from in21k.errors import ConfigError, StorageError


class NotFoundError(StorageError, FileNotFoundError):
    """The file or object does not exist (or is not visible with the given credentials)."""


class PipeNotAllowedError(ConfigError):
    """A ``pipe:`` URL was met without ``allow_pipe=True``."""


class IncompleteReadError(StorageError):
    """A response ended before the bytes the object holds: transient, the read resumes where it stopped."""
