"""What a credential looks like, and the one function that takes credentials out of what we write or print.

Every file in21k writes (configs, checkpoints, ``model.pt``, ``_info.json``, reports, bench results) and every
line it logs may end up in a shared bucket, a bug report or a published model. Credentials reach the code in
three ways, and ``redact`` handles each:

- **options under a secret-looking key**, anywhere inside nested mappings and lists (``storage_options``,
  ``loader.storage_options``, ``client_kwargs``, ``headers``): the value is replaced by ``REDACTED``. A key is
  secret when its name, lower-cased with ``-`` read as ``_``, is one of ``SECRET_NAMES`` or contains one of
  ``SECRET_PARTS`` (so ``key``, ``secret``, ``token``, ``password``, ``credentials``, ``session_token``,
  ``aws_secret_access_key``, ``aws_access_key_id``, ``account_key``, ``sas_token``, ``connection_string``,
  ``Authorization``, ``X-Amz-Signature`` are all secret). ``None``, booleans, numbers and gcsfs's token modes
  (``anon``, ``google_default``, ...) say how to authenticate, not with what, and are kept.
- **credentials inside a URL**: the password of ``scheme://user:password@host/`` and the values of
  secret-looking query parameters (a presigned URL's ``X-Amz-Signature``, ``X-Amz-Credential``, ``sig``).
- **secrets of the environment** that libraries read by themselves (``SECRET_ENV``: ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``RAY_AUTH_TOKEN``, the private key inside the ``GOOGLE_APPLICATION_CREDENTIALS`` file,
  the token in the ``RAY_AUTH_TOKEN_PATH`` file, ...), and the secret values of the storage options this
  process was given (``remember``): wherever such a value shows up inside a string (an error message, a log
  line), it is replaced.

``redact`` returns a copy and never changes its argument; the objects it returns are plain data again, so a
redacted config still loads with ``torch.load(weights_only=True)``. ``RedactingFilter`` applies the same to
log records (the command line and every training log file install it). ``strip_redacted`` is the way back:
a saved config read again (``--config RUN/config.yaml``) has ``REDACTED`` where a credential was; those
entries are dropped, so the credential comes from where it is given again (flags, YAML, environment, an
instance role), never from a file we wrote.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDACTED = "<redacted>"

# Key names that are secret as a whole (after lower-casing and '-' -> '_').
SECRET_NAMES: tuple[str, ...] = (
    "key",  # s3fs: the access key id; other fsspec backends: the key itself
    "secret",
    "token",  # s3fs session token, gcsfs credentials (a dict or a file), adlfs
    "password",
    "passwd",
    "pwd",
    "pkey",  # paramiko (sftp://) private key
    "sig",  # Azure SAS signature (a query parameter)
    "auth",
    "credential",
    "credentials",
)
# Parts of key names that make a key secret wherever they appear in it.
SECRET_PARTS: tuple[str, ...] = (
    "secret",  # client_secret, aws_secret_access_key
    "token",  # session_token, security_token, sas_token, refresh_token, aws_session_token, x_amz_security_token
    "password",
    "passwd",
    "credential",  # x_amz_credential, x_goog_credential
    "signature",  # x_amz_signature, x_goog_signature
    "private_key",  # private_key, private_key_id
    "access_key",  # aws_access_key_id, access_key
    "account_key",  # adlfs
    "api_key",
    "apikey",
    "authorization",  # HTTP headers
    "connection_string",  # Azure: holds the account key
)
# gcsfs's `token` modes name a way to authenticate, not a secret: kept so that a saved config still says how.
TOKEN_MODES = ("anon", "google_default", "cache", "cloud", "browser")
# Environment variables whose values are secrets (read by boto3, gcsfs, adlfs and Ray by themselves).
SECRET_ENV: tuple[str, ...] = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "RAY_AUTH_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
    "HF_TOKEN",
)
# Environment variables naming a file whose secret fields (JSON) or whole text (RAY_AUTH_TOKEN_PATH) are secrets.
SECRET_FILE_ENV: tuple[str, ...] = ("GOOGLE_APPLICATION_CREDENTIALS", "RAY_AUTH_TOKEN_PATH")
MIN_SECRET_CHARS = 6  # shorter values are not searched for inside text (they would match ordinary words)
_MAX_SECRET_FILE_BYTES = 1 << 16

_remembered: set[str] = set()
_lock = threading.Lock()
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+)")


def is_secret_key(name: Any) -> bool:
    """Whether a mapping key (or URL query parameter) names a credential (module docstring)."""
    if not isinstance(name, str):
        return False
    norm = name.strip().lower().replace("-", "_")
    return norm in SECRET_NAMES or any(part in norm for part in SECRET_PARTS)


def _keeps(name: str, value: Any) -> bool:
    """Values under a secret key that are no secret: unset, flags, numbers, gcsfs token modes."""
    if value is None or isinstance(value, (bool, int, float)) or value == "" or value == REDACTED:
        return True
    return name.lower() == "token" and value in TOKEN_MODES


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (mappings, lists, tuples, strings, plain values) with every credential replaced by
    ``REDACTED``: values under secret keys, credentials inside URLs, known secret values inside strings."""
    secrets = known_secrets()
    return _redact(obj, secrets)


def _redact(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, dict):
        return {
            k: (v if _keeps(str(k), v) else REDACTED) if is_secret_key(k) else _redact(v, secrets)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        out = [_redact(v, secrets) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    if isinstance(obj, str):
        return _scrub(obj, secrets)
    return obj


def redact_url(url: str) -> str:
    """``url`` without a password in its user part and without the values of secret-looking query parameters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name, colon, _password = user.partition(":")
        netloc = f"{name}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_key(k) for k, _ in pairs):
            query = "&".join(f"{k}={REDACTED if is_secret_key(k) else v}" for k, v in pairs)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def scrub_text(text: str) -> str:
    """``text`` (a message, a log line) with URL credentials and every known secret value replaced."""
    return _scrub(text, known_secrets())


def _scrub(text: str, secrets: list[str]) -> str:
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(1)), text)
    return text


def remember(options: Any) -> None:
    """Note the secret values inside ``options`` (a user's storage options), so that ``scrub_text`` and the log
    filter also find them where they appear as bare text (an error message quoting a request)."""
    found = _secret_values(options)
    if found:
        with _lock:
            _remembered.update(found)


def _secret_values(obj: Any, secret: bool = False) -> set[str]:
    if isinstance(obj, dict):
        out: set[str] = set()
        for k, v in obj.items():
            if not (is_secret_key(k) and _keeps(str(k), v)):
                out |= _secret_values(v, secret or is_secret_key(k))
        return out
    if isinstance(obj, (list, tuple)):
        return set().union(*(_secret_values(v, secret) for v in obj)) if obj else set()
    if secret and isinstance(obj, str) and len(obj) >= MIN_SECRET_CHARS and obj != REDACTED:
        return {obj}
    return set()


def known_secrets() -> list[str]:
    """Secret values to look for inside text: the environment's (``SECRET_ENV``, the secret fields of the files
    named by ``SECRET_FILE_ENV``) and those ``remember``-ed; longest first, so a secret that contains another is
    replaced whole."""
    found = {os.environ.get(name, "").strip() for name in SECRET_ENV}
    for name in SECRET_FILE_ENV:
        found |= _file_secrets(os.environ.get(name))
    with _lock:
        found |= _remembered
    return sorted((s for s in found if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True)


_file_cache: dict[tuple[str, float], frozenset[str]] = {}


def _file_secrets(path: str | None) -> frozenset[str]:
    """The secret fields of a JSON credentials file (a service account key), or the whole text of a token file."""
    if not path:
        return frozenset()
    try:
        st = os.stat(path)
        if st.st_size > _MAX_SECRET_FILE_BYTES:
            return frozenset()
        cached = _file_cache.get((path, st.st_mtime))
        if cached is not None:
            return cached
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return frozenset()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    found = frozenset(_secret_values(data)) if isinstance(data, dict) else frozenset({text.strip()})
    _file_cache[(path, st.st_mtime)] = found
    return found


def strip_redacted(options: Any) -> tuple[Any, list[str]]:
    """``options`` without the entries whose value is ``REDACTED`` (at any depth), and their dotted names."""
    dropped: list[str] = []

    def strip(obj: Any, where: str) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if v == REDACTED:
                    dropped.append(f"{where}{k}")
                else:
                    out[k] = strip(v, f"{where}{k}.")
            return out
        if isinstance(obj, list):
            return [strip(v, where) for v in obj]
        return obj

    return strip(options, ""), dropped


class RedactingFilter(logging.Filter):
    """A handler filter that passes every record with its message scrubbed (``scrub_text``): a logged mapping
    of options, an exception that quotes a credential or a URL with a password comes out without them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's own business; leave the record alone
            return True
        clean = scrub_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = scrub_text(text)
        return True


def install_log_filter(handlers: Iterable[logging.Handler]) -> None:
    """Add one ``RedactingFilter`` to each handler that has none yet."""
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
