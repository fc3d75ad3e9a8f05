"""Retry policy: which failures of a remote read are worth another try, and how long to keep trying."""

from __future__ import annotations

import errno
import http.client
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from in21k.errors import In21kError
from in21k.storage.errors import IncompleteReadError


@dataclass(frozen=True)
class Retry:
    """How a remote read rides out an outage: exponential backoff with jitter, within a budget.

    An outage is a run of failed attempts with no byte read in between; its budget is ``attempts`` retries
    and ``seconds`` from its first failure, whichever ends first (bytes flowing again start a new budget).
    The wait before retry ``k`` (from 0) is ``base_delay x 2^k``, capped at ``max_delay``, times a random
    factor in [0.5, 1) so that many readers hit by the same outage do not all come back at once.
    """

    attempts: int = 8
    seconds: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delays(self) -> Iterator[float]:
        """The waits before each retry of one outage, in seconds; ends when the budget is spent."""
        jitter = random.Random()  # never the global generator: the loader seeds that one for augmentation
        start = time.monotonic()
        for k in range(self.attempts):
            left = self.seconds - (time.monotonic() - start)
            if left <= 0:
                return
            yield min(left, min(self.max_delay, self.base_delay * 2**k) * jitter.uniform(0.5, 1.0))


# Lower-case fragments of messages that say trying again cannot help (client libraries put the S3/GCS error
# code in the message: pyarrow "AWS Error ACCESS_DENIED", botocore "AccessDenied", GCS "PERMISSION_DENIED").
_PERMANENT = (
    "accessdenied",
    "access_denied",
    "access denied",
    "invalidaccesskeyid",
    "invalid_access_key_id",
    "signaturedoesnotmatch",
    "signature_does_not_match",
    "nosuchbucket",
    "no_such_bucket",
    "nosuchkey",
    "no_such_key",
    "invalidbucketname",
    "forbidden",
    "permission_denied",
    "permissiondenied",
    "unauthenticated",
    "unauthorized",
    "nocredentials",
    "unable to locate credentials",
    "precondition",
    "invalidrange",
)
# Exceptions of these HTTP client libraries are network or server failures unless a marker above says otherwise.
_CLIENT_MODULES = ("aiohttp", "botocore", "urllib3", "requests", "obstore", "gcsfs", "google", "fsspec")


def brief(exc: BaseException) -> str:
    """``Type: first line of the message`` (some clients put a multi-line debug dump in their messages)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:300]}"


_LOCAL_PERMANENT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG})


def is_transient(exc: BaseException) -> bool:
    """Whether a failed remote read may succeed when tried again.

    Yes: reset, aborted or refused connections, timeouts, bodies cut short, HTTP 5xx, SlowDown/throttling,
    whichever client raised them (pyarrow raises ``OSError`` for all of them). No: a missing object, denied
    access, bad credentials, our own errors, and programming errors (``TypeError``...), which must surface.
    """
    if isinstance(exc, IncompleteReadError):
        return True
    if isinstance(exc, (In21kError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, OSError) and exc.errno in _LOCAL_PERMANENT:  # a full or read-only local disk stays so
        return False
    text = f"{type(exc).__name__} {exc}".lower()
    if any(marker in text for marker in _PERMANENT):
        return False
    if isinstance(exc, (OSError, http.client.HTTPException)):  # ConnectionError, TimeoutError, pyarrow's errors
        return True
    return type(exc).__module__.split(".")[0] in _CLIENT_MODULES
