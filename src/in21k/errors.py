"""The error family for problems a user can fix.

Every error that a bad option, a bad input or a missing piece of the environment causes is an
``In21kError`` whose message says what to do. The command line prints those as one line and exits 2;
anything else (a bug, or an error inside torch) keeps its traceback, so a report can be acted on.

The subclasses also derive from the built-in type a caller would expect (``ValueError`` for a bad value,
``OSError`` for storage), so ``except ValueError`` around library calls keeps working.
"""

from __future__ import annotations


class In21kError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(In21kError, ValueError):
    """A bad option: unknown key, wrong type, out of range, or options that contradict each other."""


class DataError(In21kError, ValueError):
    """Input data that cannot be used as given: not a prepared dataset, a malformed file, a corrupt shard."""


class StorageError(In21kError, OSError):
    """A local path or object-store URL that cannot be reached, read or written."""


class SetupError(In21kError, RuntimeError):
    """Something missing from the environment: a binary, a package, a device."""
