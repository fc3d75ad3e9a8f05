"""First contact: whether a storage address is right, checked in seconds before anything is read from it.

A mistyped endpoint, bucket or object, and missing or refused credentials, are not outages: no retry can fix
them, and riding them out with the backoff of ``retry`` (minutes, for an object store that is down for a while)
only delays the error. So the commands check an address once, before their first read of it
(``check_access``: ``PreparedDataset.open``, hence the loader and ``train``/``finetune``; ``prepare``'s checks of
its input and output; the model file and the image URLs of ``predict``), and fail within seconds with one line
that names the URL and the cause. Once an address has answered, a failure is treated as transient where
``retry.is_transient`` says so, and read again within the loader's or the job's retry budget, as before.

The check, per process and (endpoint, bucket, options), the first time only:

1. a TCP connection to the endpoint (skipped when a proxy is configured for it): an unknown host, a refused
   connection or no answer within ``CONNECT_SECONDS`` is a wrong endpoint;
2. one request through the same client library that reads the data, with its own retries off and short timeouts
   (s3fs: a one-byte ranged GET of the object, or a one-key listing of a folder; gcsfs: the object's metadata, or
   a one-object listing; http(s): the object's HEAD), classified by ``classify``: no such bucket, no such object,
   no credentials, credentials refused, access denied. A service that answers, but not within ``CHECK_SECONDS``,
   is not refused here (it may be slow, not wrong): the read goes on with its usual retries.

``classify`` is the one place that reads a client library's exception as one of these causes; the read paths use
it too (``streams``), so an error that gets past the check (credentials that expire mid-run) still ends in one
line rather than a library traceback.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

from in21k.errors import StorageError
from in21k.storage.errors import NotFoundError
from in21k.storage.filesystems import filesystem, fsspec_options
from in21k.storage.urls import display, is_remote, protocol

log = logging.getLogger("in21k.storage")  # one logger for the package (see in21k.storage)

CONNECT_SECONDS = 5.0  # a TCP connection to a reachable endpoint takes milliseconds, even across an ocean
CHECK_SECONDS = 8.0  # the classified request; with the connection, well within 10 s
_checked: set[str] = set()  # addresses that answered in this process (inherited by forked loader workers)

What = Literal["object", "folder", "any"]


class AccessError(StorageError):
    """An address that cannot work as given: wrong endpoint, no such bucket, missing or refused credentials."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests for a URL go: ``scheme://host:port``, and how messages name it."""

    scheme: str
    host: str
    port: int
    what: str  # "the S3 endpoint", "the GCS endpoint", "the server"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def endpoint_of(url: str, storage_options: dict[str, Any] | None = None) -> Endpoint:
    """The endpoint requests for ``url`` go to: the configured one (options, then environment), else the cloud's."""
    from urllib.parse import urlsplit

    proto = protocol(url)
    options = fsspec_options(url, storage_options)
    if proto == "s3":
        given = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
        target, what = given or "https://s3.amazonaws.com", "the S3 endpoint"
    elif proto in ("gs", "gcs"):
        target, what = options.get("endpoint_url") or "https://storage.googleapis.com", "the GCS endpoint"
    else:
        target, what = url, "the server"
    parts = urlsplit(target if "://" in target else f"https://{target}")
    scheme = parts.scheme or "https"
    return Endpoint(scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80), what)


# ----------------------------------------------------------------------------------------- classification
@dataclass(frozen=True)
class Cause:
    """What a failed request says about the address: ``kind`` (``endpoint``, ``bucket``, ``object``,
    ``no_credentials``, ``credentials``, ``denied``) and the service's own words."""

    kind: str
    detail: str


_S3_CODES = {
    "NoSuchBucket": "bucket",
    "NoSuchKey": "object",
    "InvalidAccessKeyId": "credentials",
    "SignatureDoesNotMatch": "credentials",
    "InvalidToken": "credentials",
    "ExpiredToken": "credentials",
    "TokenRefreshRequired": "credentials",
    "AuthorizationHeaderMalformed": "credentials",
    "AccessDenied": "denied",
    "AllAccessDisabled": "denied",
    "AccountProblem": "denied",
    "InvalidBucketName": "bucket",
    "PermanentRedirect": "endpoint",
    "NoSuchBucketPolicy": "denied",
}


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 8:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def classify(exc: BaseException) -> Cause | None:
    """The cause of a failed storage request when it is one no retry can fix, else ``None`` (an outage, a bug).

    Reads the exception and the ones it was raised from: botocore's error codes (through s3fs), its missing
    credentials and unreachable endpoints, gcsfs's HTTP errors, aiohttp's connection errors.
    """
    for e in _chain(exc):
        name = type(e).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return Cause("no_credentials", str(e))
        if name in (
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ClientConnectorError",
            "ClientConnectorDNSError",
            "InvalidEndpointURL",
        ):
            return Cause("endpoint", str(e).splitlines()[0] if str(e) else name)
        error = (getattr(e, "response", None) or {}).get("Error") if hasattr(e, "response") else None
        if isinstance(error, dict) and error.get("Code"):
            code = str(error["Code"])
            kind = _S3_CODES.get(code)
            if kind is None and code in ("403", "401"):
                kind = "denied" if code == "403" else "credentials"
            if kind is not None:
                return Cause(kind, f"{code}: {error.get('Message') or ''}".rstrip(": "))
        code = getattr(e, "code", None)  # gcsfs HttpError
        if name == "HttpError" and code in (401, 403):
            return Cause("credentials" if code == 401 else "denied", f"HTTP {code}: {getattr(e, 'message', e)}")
    return None


def _hint(proto: str, kind: str) -> str:
    """What to do about a cause, in the terms of the protocol's own configuration."""
    s3, gcs = proto == "s3", proto in ("gs", "gcs")
    if kind == "endpoint":
        if s3:
            return "check the endpoint: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, or endpoint_url in the storage options"
        return "check STORAGE_EMULATOR_HOST, or endpoint_url in the storage options" if gcs else "check the URL"
    if kind == "bucket":
        return "check the bucket's name" + (" and the endpoint or region it lives at" if s3 else "")
    if kind == "object":
        return "check the path"
    if kind == "no_credentials" and s3:
        return (
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), give key and secret in the storage "
            'options, or {"anon": true} for a public bucket'
        )
    if kind in ("no_credentials", "credentials"):
        if s3:
            return "check the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or key and secret in the options"
        return "check the credentials (GOOGLE_APPLICATION_CREDENTIALS, or token in the storage options)"
    return "the credentials are valid but may not read this; check the bucket's permissions"


def explain(url: str, cause: Cause) -> str:
    """One line for ``cause`` of a request for ``url``: the URL, what is wrong, what to do."""
    proto = protocol(url)
    what = {
        "endpoint": "cannot reach the endpoint",
        "bucket": f"the bucket {_bucket_of(url)!r} does not exist",
        "object": "no such object",
        "no_credentials": "no credentials were found",
        "credentials": "the credentials were refused",
        "denied": "access denied",
    }[cause.kind]
    return f"{display(url)}: {what} ({cause.detail}); {_hint(proto, cause.kind)}"


def _bucket_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def _raise(url: str, cause: Cause) -> None:
    if cause.kind == "object":
        raise NotFoundError(explain(url, cause))
    raise AccessError(explain(url, cause))


# ----------------------------------------------------------------------------------------- the check
def _proxied(endpoint: Endpoint) -> bool:
    """Whether requests to ``endpoint`` go through a proxy (then a direct connection proves nothing)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(endpoint.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(endpoint.host)


def _connect(url: str, endpoint: Endpoint) -> None:
    """A TCP connection to ``endpoint``; an ``AccessError`` naming the cause if there is none."""
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        socket.create_connection((endpoint.host, endpoint.port), timeout=CONNECT_SECONDS).close()
        return
    except socket.gaierror:
        cause = f"the host {endpoint.host!r} is unknown: its DNS lookup failed"
    except ConnectionRefusedError:
        cause = f"nothing listens at {where}: connection refused"
    except TimeoutError:
        cause = f"no answer from {where} within {CONNECT_SECONDS:g} s"
    except OSError as exc:
        cause = f"cannot connect to {where}: {exc.strerror or exc}"
    raise AccessError(
        f"{display(url)}: cannot reach {endpoint.what} {endpoint.url} ({cause}); {_hint(protocol(url), 'endpoint')}"
    )


def _key(url: str, storage_options: dict[str, Any] | None) -> str:
    options = json.dumps(fsspec_options(url, storage_options), sort_keys=True, default=str)
    bucket = "" if protocol(url) in ("http", "https") else _bucket_of(url)
    return f"{endpoint_of(url, storage_options).url}|{bucket}|{hashlib.sha256(options.encode()).hexdigest()[:16]}"


def check_access(url: str, storage_options: dict[str, Any] | None = None, *, what: What = "object") -> None:
    """Fail within seconds, with one line naming the URL and the cause, if ``url`` cannot be read as given.

    ``what``: ``object`` (a file that will be read: missing is a ``NotFoundError``), ``folder`` (a prefix that
    will be listed or written: only endpoint, bucket and credentials are checked) or ``any`` (either; missing is
    left to the caller). Local paths are not checked; an address that answered once in this process is not
    checked again (module docstring).
    """
    if not is_remote(url):
        return
    key = _key(url, storage_options)
    if key in _checked:
        return
    start = time.monotonic()
    endpoint = endpoint_of(url, storage_options)
    if not _proxied(endpoint):
        _connect(url, endpoint)
    box: dict[str, BaseException | None] = {}

    def request() -> None:
        try:
            _request(url, storage_options, what)
            box["error"] = None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=request, name="in21k-storage-check", daemon=True)
    thread.start()
    thread.join(CHECK_SECONDS)
    if "error" not in box:
        log.warning(
            "%s: %s %s did not answer a first request within %g s; reading with the usual retries",
            display(url),
            endpoint.what,
            endpoint.url,
            CHECK_SECONDS,
        )
        return
    error = box["error"]
    if error is not None:
        if isinstance(error, (AccessError, NotFoundError)):
            raise error
        cause = classify(error)
        if cause is not None:
            _raise(url, cause)
        if isinstance(error, FileNotFoundError) and what == "object":
            raise NotFoundError(f"{display(url)}: no such object") from None
        if isinstance(error, PermissionError):
            _raise(url, Cause("denied", str(error) or "forbidden"))
        # Anything else (a 5xx, a reset): not the address's fault; the read rides it out with its retries.
        log.info(
            "%s: first request failed (%s: %s); reading with the usual retries",
            display(url),
            type(error).__name__,
            error,
        )
        return
    _checked.add(key)
    log.debug("%s: %s %s answered in %.2f s", display(url), endpoint.what, endpoint.url, time.monotonic() - start)


def _request(url: str, storage_options: dict[str, Any] | None, what: What) -> None:
    """One classified request through the client library that reads ``url``, its own retries off."""
    proto = protocol(url)
    try:
        if proto == "s3":
            _request_s3(url, storage_options, what)
        elif proto in ("gs", "gcs"):
            _request_gcs(url, storage_options, what)
        elif what == "object":
            fs, path = filesystem(url, storage_options, fresh=True)
            fs.info(path)
    finally:
        gc.collect()  # the throwaway async filesystem goes here, not in a forked loader worker (see files.py)


def _request_s3(url: str, storage_options: dict[str, Any] | None, what: What) -> None:
    options = dict(storage_options or {})
    options["config_kwargs"] = {
        **(options.get("config_kwargs") or {}),
        "connect_timeout": CONNECT_SECONDS,
        "read_timeout": CHECK_SECONDS,
        "retries": {"mode": "standard", "total_max_attempts": 1},
    }
    fs, _ = filesystem(url, options, fresh=True)
    fs.retries = 1  # s3fs's own retries (a class attribute): off for this one request
    bucket, _, key = url.split("://", 1)[1].partition("/")
    if key and not key.endswith("/") and what != "folder":
        try:
            response = fs.call_s3("get_object", Bucket=bucket, Key=key, Range="bytes=0-0")
        except Exception as exc:  # noqa: BLE001 - classified below
            cause = classify(exc)
            code = cause.detail.split(":")[0] if cause else ""
            if code == "InvalidRange":  # an empty object: it exists
                return
            if cause is None or cause.kind != "object":
                raise
            if what == "object":
                _raise(url, cause)
        else:
            from fsspec.asyn import sync

            body = response["Body"]
            sync(fs.loop, body.read)
            body.close()
            return
    prefix = key.rstrip("/") + "/" if key else ""
    fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)


def _request_gcs(url: str, storage_options: dict[str, Any] | None, what: What) -> None:
    fs, _ = filesystem(url, storage_options, fresh=True)
    bucket, _, key = url.split("://", 1)[1].partition("/")
    if key and not key.endswith("/") and what != "folder":
        try:
            fs.call("GET", "b/{}/o/{}", bucket, key, json_out=True)
            return
        except FileNotFoundError:
            pass
    try:
        fs.call("GET", "b/{}/o", bucket, prefix=key.rstrip("/") + "/" if key else "", maxResults=1, json_out=True)
    except FileNotFoundError:
        _raise(url, Cause("bucket", "404 from the bucket's listing"))
    if key and not key.endswith("/") and what == "object":
        _raise(url, Cause("object", "404"))
