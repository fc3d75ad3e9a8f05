"""The Ray orchestration of ``in21k prepare`` (the only module that imports ray).

Order of work: check the config, the output and the raw source (errors before any work); stage a .tar.gz
if needed; index the class tars (parallel tasks, headers only, each writing its part of the index under
``_work/index/``; ``_work/index.json``, written last, lists the parts and marks the index complete); load
the index into columns and plan on the driver; with ``--plan-only``, print the plan and stop; otherwise
fingerprint the evaluation sets (``--against``, tasks, cached under ``_work/against/``), run one task per
unfinished shard (retried as below, a bounded number in flight, each given only its own rows), run the clean
stage (``in21k.pipeline.clean``: the duplicate join as tasks, the decisions on the driver, one rewrite task per
shard with removed members), and write the dataset-level files. A shard whose stats file exists is never
redone, nor a shard the clean stage rewrote, so a rerun after a crash (even ``kill -9``) finishes the job with
the same bytes. Ray is started only when there is work for it: a ``--plan-only`` rerun over a cached index
needs none.

Failed tasks (``_completed``, for the index tasks and the shard tasks alike): Ray itself runs a task again when its
worker process or node was lost (``max_retries``, system failures only). A task that raised is handled here, on
the driver: after a transient storage error (``storage.is_transient``: the object store unreachable, throttling,
5xx) it is submitted again after an exponential backoff with jitter, each retry logged with the task, the attempt
and the error, within the budget ``retries``/``retry_seconds``; anything else, or a spent budget, cancels the
tasks in flight and stops the job (finished shards are kept for the rerun). Why here: Ray's own retry of a raised
exception comes back at once, with no backoff; a task that retried inside itself would hold a CPU while it
waits; and a task waiting here for its retry keeps its place in the window of submitted tasks, so an outage does
not start new shards that would fail too.

The driver holds the index and the plan as columns (``sources.Index``, ``plan.Plan``): about 50 bytes per
member at the peak (fall11: 1.2 GB in all, docs/scaling.md); it never gathers index rows or manifest rows
as Python objects.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from in21k import storage
from in21k.dataset import shard_name, stats_name
from in21k.errors import ConfigError, DataError, In21kError, SetupError, StorageError
from in21k.pipeline import parquet_source, processed, release, sources
from in21k.pipeline.options import PrepareConfig
from in21k.pipeline.plan import GIVEN_NONE, GIVEN_OTHER, Plan, check_class_list, make_plan
from in21k.pipeline.report import finalize, plan_summary, write_unsharded_manifest
from in21k.pipeline.shard import ShardSettings, write_shard
from in21k.progress import progress
from in21k.redact import redact
from in21k.storage import Store

log = logging.getLogger(__name__)

JOB_FILE = "_work/job.json"
INDEX_DIR = "_work/index"
INDEX_FILE = "_work/index.json"  # lists the index parts; written last, so it marks a complete index
INDEX_SCHEMA = "in21k.index/1"
PLAN_FILE = "_work/plan.json"  # what --plan-only printed
CONTAINERS_PER_INDEX_TASK = 16
INDEX_PARTS_PER_READ = 64
RETRY_BASE_DELAY = 1.0  # seconds before a task's first retry after a storage error; doubled each time
RETRY_MAX_DELAY = 60.0
WINDOW_REFRESH = 10.0  # seconds between looks at the cluster's CPUs (nodes join and leave while shards run)
SCAN_TABLES_PER_TASK = 30  # join tables per Ray task: each task partitions the hashes once for its tables


def check_output(store: Store, cfg: PrepareConfig) -> None:
    """Refuse to mix two jobs in one output: an existing job there must have the same output options."""
    if not store.exists(JOB_FILE):
        return
    previous = json.loads(store.read_bytes(JOB_FILE))
    mine = cfg.output_fingerprint()
    diff = sorted(k for k in set(previous) | set(mine) if previous.get(k) != mine.get(k))
    if diff:
        changes = ", ".join(f"{k}: {previous.get(k)!r} -> {mine.get(k)!r}" for k in diff)
        raise ConfigError(
            f"{cfg.out} holds a job prepared with other options ({changes}). Rerun with the same options to "
            "finish it, or choose a new --out (or delete the old one)."
        )


# The embedded Ray: loopback only, no usage reporting, and token authentication on (Ray's own default for a
# local cluster from 2.59 on): any process of this machine can reach its ports, so only a holder of the
# token may run code in it. A user's own values of these variables win.
LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Where Ray takes its auth token from, first found first: the token itself, or a file that holds it.
TOKEN_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
TOKEN_FILE_PREFIX = "in21k-ray-auth-"  # the private folder of a local Ray's token file (under the temp folder)
GCS_PROBE_SECONDS = 10.0  # how long the check of a cluster's auth waits for an answer


def cluster_address(cfg: PrepareConfig) -> str | None:
    """The Ray cluster to run on: ``--ray-address``, else ``RAY_ADDRESS`` (``ray job submit`` sets it for the job's
    entrypoint), else None: a local Ray started for this job (also for ``--ray-address local``)."""
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


class _Env:
    """Environment variables set for as long as a Ray connection lasts, then put back as they were."""

    def __init__(self) -> None:
        self.saved: dict[str, str | None] = {}

    def set(self, key: str, value: str) -> None:
        self.saved.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def restore(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved.clear()


def _reload_auth_settings() -> None:
    """Make this process see the current ``RAY_AUTH_*`` variables: Ray reads its settings and its token once per
    process and keeps them (Ray's own ``ray.init`` reloads them the same way when it turns token auth on)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _token_file() -> str:
    """A fresh random token (256 bits, as ``ray get-auth-token --generate`` makes) in a new file that only this
    user can read, in a folder of its own; returns the file's path."""
    folder = tempfile.mkdtemp(prefix=TOKEN_FILE_PREFIX)  # mode 0700
    path = os.path.join(folder, "token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[None]:
    """A new Ray instance in this process for the length of the block (``prepare`` without a cluster, the prepare
    benchmark, the tests), with ``LOCAL_RAY_ENV`` set while it runs.

    With token authentication on and no token given (``TOKEN_ENV``), the instance gets a fresh random token in a
    0600 file of a 0700 folder, named to Ray's processes by ``RAY_AUTH_TOKEN_PATH`` in the environment they
    inherit: it is never on a command line, never in the home folder, and deleted with the instance (a process
    killed with SIGKILL leaves the folder behind, readable by its owner only). ``address="local"``: always a new
    instance; without it Ray would attach to any cluster already running on this machine, whose workers may lack
    this process's environment (credentials).
    """
    import ray

    env = _Env()
    token_folder = None
    try:
        for key, value in LOCAL_RAY_ENV.items():
            if key not in os.environ:
                env.set(key, value)
        if os.environ["RAY_AUTH_MODE"].lower() == "token" and not any(os.environ.get(k) for k in TOKEN_ENV):
            path = _token_file()
            token_folder = os.path.dirname(path)
            env.set("RAY_AUTH_TOKEN_PATH", path)
        _reload_auth_settings()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        env.restore()
        if token_folder:
            shutil.rmtree(token_folder, ignore_errors=True)
        _reload_auth_settings()


def _auth_advice(address: str, given: list[str]) -> str:
    """The one-line error for a cluster that refused this driver's token, or the lack of one."""
    if not given:
        return (
            f"the Ray cluster at {address} requires an auth token and none was given: set RAY_AUTH_TOKEN_PATH to a "
            "file holding the cluster's token (or RAY_AUTH_TOKEN to the token; `ray get-auth-token` prints it on a "
            "node), then rerun. See docs/security.md."
        )
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return (
            f"the Ray cluster at {address} requires an auth token, and RAY_AUTH_MODE="
            f"{os.environ['RAY_AUTH_MODE']} keeps the one in {given[0]} from being sent: unset RAY_AUTH_MODE (or set "
            "it to token) and rerun."
        )
    return (
        f"the Ray cluster at {address} refused the auth token from {given[0]}: it is not the token the cluster was "
        "started with. Set RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) to the cluster's token and rerun."
    )


def _gcs_address(address: str) -> str | None:
    """The GCS address (``host:port``) that ``address`` names, if it names one directly or through ``RAY_ADDRESS``
    (``auto``, as in a job's entrypoint); None for other forms (``ray://``), which are not probed."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    return address if re.fullmatch(r"[\w.-]+:\d+|\[[0-9a-fA-F:.]+\]:\d+", address) else None


def _has_token() -> bool:
    """Whether Ray finds a token to send (the environment, or its default token file in the home folder)."""
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    try:
        return bool(AuthenticationTokenLoader.instance().has_token())
    except AuthenticationError:
        return False


def _gcs_refuses(address: str) -> bool:
    """Whether the cluster's GCS at ``address`` answers one request of this driver, with the token Ray would send,
    as unauthenticated. One plain gRPC call, so that a refusal is an error at once: ``ray.init`` itself retries a
    refused connection for 20 s, logging a warning a second, then raises a ``ConnectionError`` that does not say
    why. Anything else (unreachable, an older Ray) is left to ``ray.init``."""
    import grpc
    from ray._raylet import AuthenticationTokenLoader
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    from ray.exceptions import AuthenticationError

    loader = AuthenticationTokenLoader.instance()
    try:
        metadata = tuple(loader.get_token_for_http_header().items()) if loader.has_token() else ()
    except AuthenticationError:  # token mode without a token: nothing to send
        metadata = ()
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), metadata=metadata, timeout=GCS_PROBE_SECONDS)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


@contextlib.contextmanager
def cluster_driver(address: str) -> Iterator[None]:
    """This process connected to the cluster at ``address`` as a driver for the length of the block; at its end
    ``ray.shutdown()`` only disconnects: the cluster and its nodes stay up.

    A token given in the environment (``TOKEN_ENV``) turns token authentication on for this driver unless
    ``RAY_AUTH_MODE`` says otherwise (Ray itself sends a token only with ``RAY_AUTH_MODE=token``). A cluster that
    refuses the driver's token, or the lack of one, is a ``SetupError`` naming the variables to set.
    """
    import ray
    from ray.exceptions import AuthenticationError

    env = _Env()
    given = [k for k in TOKEN_ENV if os.environ.get(k)]
    if given and "RAY_AUTH_MODE" not in os.environ:
        env.set("RAY_AUTH_MODE", "token")
    try:
        _reload_auth_settings()
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and not _has_token():
            raise SetupError(_auth_advice(address, given))  # Ray would refuse to connect at all: say why at once
        try:
            _probe(address)
        except (OSError, TimeoutError) as exc:
            raise _no_cluster(address, exc) from None
        gcs = _gcs_address(address)
        if gcs is not None and _gcs_refuses(gcs):
            raise SetupError(_auth_advice(address, given))
        try:
            ray.init(address=address, log_to_driver=True)
        except (AuthenticationError, ConnectionError) as exc:
            # AuthenticationError: token mode but no token here. A ConnectionError that an InvalidAuthToken caused:
            # a refusal the check above could not see (a ray:// address).
            if isinstance(exc, AuthenticationError) or "InvalidAuthToken" in "".join(traceback.format_exception(exc)):
                raise SetupError(_auth_advice(address, given)) from None
            raise _no_cluster(address, exc) from None
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        env.restore()
        _reload_auth_settings()


def _connect(cfg: PrepareConfig) -> Callable[[], None] | None:
    """Start or join Ray in this process (``local_ray``, ``cluster_driver``); returns what ends what it began (None
    if Ray was already running)."""
    import ray

    if ray.is_initialized():
        return None
    address = cluster_address(cfg)
    with contextlib.ExitStack() as stack:  # closed here only if what follows the start fails
        if address:
            if cfg.num_cpus is not None:
                log.warning("--num-cpus applies to a local Ray only: ignored on the cluster at %s", address)
            # Nothing of LOCAL_RAY_ENV here: a cluster has its own settings (its nodes' addresses, its token).
            stack.enter_context(cluster_driver(address))
            cpus = int(ray.cluster_resources().get("CPU", 0))
            log.info("joined the Ray cluster at %s: %d CPUs", ray.get_runtime_context().gcs_address, cpus)
        else:
            stack.enter_context(local_ray(cfg.num_cpus))
        return stack.pop_all().close


def _probe(address: str) -> None:
    """Fail in seconds where nothing listens at a named ``host:port`` (Ray itself retries such an address for
    minutes); ``auto`` is left to Ray, which fails at once when it finds no cluster on this machine."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if host and port.isdigit():
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10):  # [::1]:6379 too
            pass


def _no_cluster(address: str, exc: BaseException) -> SetupError:
    return SetupError(
        f"no Ray cluster answers at --ray-address {address} ({_brief(exc)}): start the cluster first "
        "(`ray start --head`, docs/scaling.md), or leave --ray-address out to run on a local Ray"
    )


def _brief(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _completed(
    fn: Callable[..., Any],
    names: list[str],
    args: Callable[[int], tuple],
    cfg: PrepareConfig,
    *,
    window: Callable[[], int],
) -> Iterator[tuple[int, Any]]:
    """Run task ``i`` = ``fn(*args(i))`` for each of ``names`` (what messages call the tasks) as Ray tasks, and
    yield ``(i, result)`` as each finishes. ``args(i)`` is called at each submission, so arguments exist only for
    the tasks in flight.

    At most ``window()`` tasks are submitted or waiting for a retry at a time. Ray retries a task whose worker or
    node was lost (``cfg.max_retries``); a task that raised a transient storage error is submitted again after an
    exponential backoff (``cfg.retries``, ``cfg.retry_seconds``), each retry logged as a warning. Anything else
    raises, after cancelling the tasks in flight (a task's output lands whole or not at all, so that is safe).
    """
    import ray

    remote = ray.remote(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=False)(fn)
    policy = storage.Retry(
        attempts=cfg.retries, seconds=cfg.retry_seconds, base_delay=RETRY_BASE_DELAY, max_delay=RETRY_MAX_DELAY
    )
    queue = list(range(len(names) - 1, -1, -1))  # popped from the end: tasks in order
    pending: dict[Any, int] = {}
    waiting: list[tuple[float, int]] = []  # heap of (when to submit again, task): tasks backing off
    backoff: dict[int, tuple[Iterator[float], float, int]] = {}  # task -> (its delays, first failure, retries)
    limit, looked = window(), time.monotonic()
    try:
        while queue or pending or waiting:
            now = time.monotonic()
            if now - looked > WINDOW_REFRESH:
                limit, looked = window(), now
            while waiting and waiting[0][0] <= now:
                i = heapq.heappop(waiting)[1]
                pending[remote.remote(*args(i))] = i
            while queue and len(pending) + len(waiting) < limit:
                i = queue.pop()
                pending[remote.remote(*args(i))] = i
            timeout = max(0.0, waiting[0][0] - now) if waiting else None
            if not pending:
                time.sleep(timeout or 0.0)
                continue
            done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            for ref in done:
                i = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task itself raised
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    delays, began, retries = backoff.get(i) or (policy.delays(), time.monotonic(), 0)
                    wait = next(delays, None) if storage.is_transient(cause) else None
                    if wait is None:
                        raise _failure(names[i], cause, retries, time.monotonic() - began, cfg) from exc
                    backoff[i] = (delays, began, retries + 1)
                    log.warning(
                        "%s failed (%s); retry %d of %d in %.1f s",
                        names[i],
                        _brief(cause),
                        retries + 1,
                        cfg.retries,
                        wait,
                    )
                    heapq.heappush(waiting, (time.monotonic() + wait, i))
                    continue
                except ray.exceptions.RayError as exc:  # its worker or node was lost more than max_retries times
                    raise RuntimeError(
                        f"{names[i]}: its Ray worker process or node was lost, and Ray's --max-retries "
                        f"({cfg.max_retries}) are used up: {_brief(exc)}\nFinished shards are kept: rerun the same "
                        "command to resume."
                    ) from exc
                if i in backoff:
                    log.info("%s succeeded after %d retries", names[i], backoff.pop(i)[2])
                yield i, result
    finally:
        for ref in pending:  # only when stopping early: an error, or the driver interrupted
            ray.cancel(ref)


def _failure(name: str, cause: BaseException, retries: int, seconds: float, cfg: PrepareConfig) -> Exception:
    """The error that stops the job when task ``name`` raised ``cause`` and is not retried (again)."""
    rerun = "Finished shards are kept: rerun the same command to resume."
    if storage.is_transient(cause):
        if not retries:  # --retries 0 or --retry-seconds 0
            return StorageError(f"{name} failed with {_brief(cause)} (retries are off). {rerun}")
        return StorageError(
            f"{name} failed {retries + 1} times over {seconds:.0f} s, the last time with {_brief(cause)}: the "
            f"storage is unreachable or overloaded. {rerun} --retries ({cfg.retries}) and --retry-seconds "
            f"({cfg.retry_seconds:g}) set how long an outage is ridden out."
        )
    message = f"{name} failed: {cause}\n{rerun}"
    if isinstance(cause, In21kError):
        # Keep the family (the command line prints these without a traceback) and the built-in base class.
        return StorageError(message) if isinstance(cause, OSError) else DataError(message)
    return RuntimeError(message)


def _index_part(part: int, containers: list[sources.Container], out: str, storage_options: Any) -> dict[str, Any]:
    """Index a batch of containers into one parquet part of the index; returns its name, size and damage."""
    import pyarrow.parquet as pq

    table, errors = sources.index_table(containers, storage_options)
    name = f"{INDEX_DIR}/part-{part:06d}.parquet"
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    Store(out, storage_options).write_bytes(name, buf.getvalue())
    return {"name": name, "rows": table.num_rows, "member_bytes": sources.member_bytes(table), "errors": errors}


def _build_index(source: sources.RawSource, cfg: PrepareConfig, connect: Callable[[], None]) -> dict[str, Any]:
    """Index every container (tars and parquet files in Ray tasks; folder listings here) into parts; returns the
    index's list."""
    containers = source.containers
    # A parquet file is converted whole by its task: one file per task (class tars: 16, their headers only).
    step = 1 if source.layout == "parquet" else CONTAINERS_PER_INDEX_TASK
    batches = [containers[i : i + step] for i in range(0, len(containers), step)]
    parts: list[dict[str, Any] | None] = [None] * len(batches)
    # Folder listings are already complete: no task needed to read headers.
    remote = [i for i, b in enumerate(batches) if any(c.kind in ("tar", "parquet") for c in b)]
    for i in sorted(set(range(len(batches))) - set(remote)):
        parts[i] = _index_part(i, batches[i], cfg.out, cfg.storage_options)
    if remote:
        connect()
        names = [
            f"index part {i} ({posixpath.basename(batches[i][0].url)})"
            if batches[i][0].kind == "parquet"
            else f"index part {i} ({batches[i][0].wnid}..{batches[i][-1].wnid})"
            for i in remote
        ]

        def task_args(k: int) -> tuple:
            return remote[k], batches[remote[k]], cfg.out, cfg.storage_options

        n_tars = sum(len(batches[i]) for i in remote)
        unit, desc = ("file", "converting parquet files") if step == 1 else ("tar", "indexing class tars")
        with progress(total=n_tars, unit=unit, desc=desc, enabled=cfg.progress) as bar:
            for k, part in _completed(_index_part, names, task_args, cfg, window=lambda: len(names)):
                parts[remote[k]] = part
                bar.update(len(batches[remote[k]]))
    listed = [p for p in parts if p is not None]
    return {
        "schema": INDEX_SCHEMA,
        "raw": redact(cfg.raw),  # no password of a URL in what we write (compared redacted too)
        "layout": source.layout,
        "note": source.note,
        "rows": sum(p["rows"] for p in listed),
        "member_bytes": sum(p["member_bytes"] for p in listed),
        "parts": [{k: p[k] for k in ("name", "rows", "member_bytes")} for p in listed],
        "errors": [e for p in listed for e in p["errors"]],
        "release": source.release,
        "parquet": cfg.parquet.fingerprint(),
    }


def _cached_index(store: Store, cfg: PrepareConfig) -> dict[str, Any] | None:
    """The list of a complete index of the same raw release from an earlier run, if there is one."""
    if not store.exists(INDEX_FILE):
        return None
    meta = json.loads(store.read_bytes(INDEX_FILE))
    if meta.get("schema") != INDEX_SCHEMA or meta.get("raw") != redact(cfg.raw):
        log.info("the cached index under _work/ is of %r, not %r: indexing again", meta.get("raw"), redact(cfg.raw))
        return None
    if meta.get("layout") == "parquet" and meta.get("parquet") != cfg.parquet.fingerprint():
        log.info("the cached index under _work/ read the parquet files with other --parquet options: indexing again")
        return None
    return meta


def _load_index(store: Store, meta: dict[str, Any]) -> sources.Index:
    """The index's parts read back into columns, a few dozen parts at a time."""
    import pyarrow.parquet as pq

    names = [p["name"] for p in meta["parts"]]

    def tables() -> Iterator[Any]:
        for a in range(0, len(names), INDEX_PARTS_PER_READ):
            for blob in store.read_many(names[a : a + INDEX_PARTS_PER_READ]):
                yield pq.read_table(io.BytesIO(blob))

    return sources.Index.from_parts(tables(), rows=meta["rows"], names_bytes=meta["member_bytes"])


def _shard_window() -> int:
    """How many shards to keep submitted: twice the cluster's CPUs, which bounds the driver's and object store's
    memory for 10^4 shards; looked at again while shards run, as nodes join (an autoscaler) or leave."""
    import ray

    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def _run_shards(plan: Plan, store: Store, cfg: PrepareConfig) -> dict[str, int]:
    settings = ShardSettings(
        out=cfg.out,
        storage_options=cfg.storage_options,
        resize=cfg.resize,
        size=cfg.size,
        quality=cfg.quality,
        max_image_pixels=cfg.max_image_pixels,
        copy_at_size=not cfg.reencode_at_size,
    )
    store.invalidate_cache()  # object-store listings are cached by fsspec; we need the current one
    finished = store.listdir("stats")  # one listing, not one request per shard (10^4 shards on S3)
    todo = [s for s in plan.shards if posixpath.basename(stats_name(s.split, s.shard)) not in finished]
    total = sum(s.num_rows for s in plan.shards)
    done_samples = total - sum(s.num_rows for s in todo)
    if len(todo) < len(plan.shards):
        log.info(
            "resuming: %d of %d shards are finished and will not be redone",
            len(plan.shards) - len(todo),
            len(plan.shards),
        )
    names = [f"shard {spec.filename}" for spec in todo]
    written = rejected = 0
    shards_done = len(plan.shards) - len(todo)
    with progress(
        total=total, initial=done_samples, unit="img", desc="writing shards", smoothing=0.1, enabled=cfg.progress
    ) as bar:
        # Each task gets its own rows only, built when it is submitted: a small Arrow table, not the whole plan.
        for i, stats in _completed(
            write_shard, names, lambda i: (plan.shard_spec(todo[i]), settings), cfg, window=_shard_window
        ):
            written += stats["num_samples"]
            rejected += stats["rejected"]
            shards_done += 1
            bar.update(todo[i].num_rows)
            bar.set_postfix(shards=f"{shards_done}/{len(plan.shards)}", refresh=False)
    return {
        "shards_run": len(todo),
        "shards_skipped": len(plan.shards) - len(todo),
        "written_now": written,
        "rejected_now": rejected,
    }


def preflight(cfg: PrepareConfig) -> tuple[Store, str, list[Any]]:
    """All checks that need no Ray and do no work: config, output, raw source, evaluation sets (listed: a missing
    or empty one is an error before any work). Returns store, layout and the evaluation sets."""
    cfg.validate()
    if cfg.exclude_subtree:
        from in21k.tree.wordnet import noun_synset

        unknown = [w for w in cfg.exclude_subtree if noun_synset(w) is None]
        if unknown:
            raise ConfigError(
                f"--exclude-subtree: not WordNet 3.0 noun synsets: {', '.join(unknown)} (a typo would "
                "exclude nothing); e.g. n00007846 is person.n.01"
            )
    layout, fs, path = sources.describe(cfg.raw, cfg.storage_options)
    storage.check_access(cfg.out, cfg.storage_options, what="folder")  # a wrong output address: seconds, one line
    store = Store(cfg.out, cfg.storage_options)
    try:
        check_output(store, cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreachable bucket, bad credentials, ...
        raise StorageError(f"cannot use the output {cfg.out!r}: {type(exc).__name__}: {exc}") from None
    if layout in ("whole-tar-gz", "processed-tar-gz", "parquet") and cfg.staging is None:
        cfg.staging = storage.join(cfg.out, "_staging")
    if layout == "parquet":  # the columns and the class names: one footer read, so a bad set fails here
        files = parquet_source.find_files(fs, path)
        if not files:
            raise DataError(f"no parquet files found in {cfg.raw!r}")
        parquet_source.inspect(cfg.raw, files, fs, cfg.parquet, cfg.storage_options)
    eval_sets = []
    if cfg.against:
        from in21k.pipeline.against import EvalSet, parse_specs

        eval_sets = [EvalSet.open(name, url, cfg.storage_options) for name, url in parse_specs(cfg.against)]
    for es in eval_sets:
        log.info("evaluation set %s: %s (%s), %d images", es.name, es.url, es.kind, len(es.members))
    return store, layout, eval_sets


def _image_settings(cfg: PrepareConfig) -> Any:
    from in21k.pipeline.against import ImageSettings

    return ImageSettings(resize=cfg.resize, size=cfg.size, quality=cfg.quality, max_image_pixels=cfg.max_image_pixels)


def _fingerprint_eval_sets(eval_sets: list[Any], store: Store, cfg: PrepareConfig, connect: Callable[[], None]) -> None:
    """Fingerprint each evaluation set once (Ray tasks of ``against.CHUNK`` images), cached under
    ``_work/against/``; a rerun reuses a cache of the same set, listing and settings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from in21k.pipeline import against

    settings = _image_settings(cfg)
    for es in eval_sets:
        data_name, meta_name = against.cache_names(es.name)
        if store.exists(meta_name) and against.cache_matches(json.loads(store.read_bytes(meta_name)), es, settings):
            log.info("evaluation set %s: reusing its fingerprints from an earlier run", es.name)
            continue
        connect()
        chunks = es.chunks()
        parts: list[bytes | None] = [None] * len(chunks)
        names = [f"evaluation set {es.name}, images {k * against.CHUNK}..." for k in range(len(chunks))]

        def task_args(k: int, chunks: list = chunks, kind: str = es.kind) -> tuple:
            return chunks[k], kind, settings, cfg.storage_options

        with progress(total=len(es.members), unit="img", desc=f"fingerprinting {es.name}", enabled=cfg.progress) as bar:
            for k, blob in _completed(against.fingerprint_chunk, names, task_args, cfg, window=_shard_window):
                parts[k] = blob
                bar.update(len(chunks[k]))
        table = pa.concat_tables([pq.read_table(io.BytesIO(b)) for b in parts if b is not None])
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        store.write_bytes(data_name, buf.getvalue())
        meta = against.describe(es, settings, table)
        store.write_json(meta_name, meta)  # last: marks the cache complete
        if meta["unreadable"]:
            log.warning(
                "evaluation set %s: %d of %d images do not decode (listed in the report)",
                es.name,
                meta["unreadable"],
                meta["images"],
            )


def join_in_ray(
    store: Store, parts: list[str], release: Any, reps: Any, evals: Any, policy: Any, cfg: PrepareConfig
) -> dict[str, Any]:
    """The join (``dedup.scan_tables``) over the release members ``reps`` and the evaluation images, as Ray tasks:
    one task reads the colour grids of ``reps`` from the manifest into the object store, then the tables run in
    tasks grouped by their first key block, each verifying its pairs against those colours. The driver holds the
    hashes and the verified pairs only (fall11: ~0.1 GB and a few MB; the colours are ~0.6 GB)."""
    import numpy as np
    import ray

    from in21k.pipeline import clean, dedup

    refs = [ray.put(np.ascontiguousarray(a)) for a in (release.part[reps], release.position[reps])]
    colors_task = ray.remote(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=True)(clean.colors_of)
    colors = colors_task.remote(cfg.out, cfg.storage_options, parts, *refs, evals.colors)
    try:
        ray.get(colors)  # a view of the object store's copy: nothing is read into this process
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        raise _failure("reading the colour grids", cause, cfg.retries, 0.0, cfg) from exc
    hashes = ray.put(np.concatenate([release.phash[reps], evals.phash]))
    combos = dedup.tables()
    units: list[list[int]] = []
    for first in sorted({c[0] for c in combos}):
        ids = [t for t, c in enumerate(combos) if c[0] == first]
        units += [ids[a : a + SCAN_TABLES_PER_TASK] for a in range(0, len(ids), SCAN_TABLES_PER_TASK)]
    names = [f"join tables {u[0]}..{u[-1]}" for u in units]
    results = []

    def task_args(k: int) -> tuple:
        return hashes, units[k], policy.max_distance, colors, policy.max_color_distance

    with progress(total=len(combos), unit="table", desc="finding copies", enabled=cfg.progress) as bar:
        for k, result in _completed(dedup.scan_tables, names, task_args, cfg, window=_shard_window):
            results.append(result)
            bar.update(len(units[k]))
    return dedup.merge_scans(results)


def _clean(plan: Plan, store: Store, cfg: PrepareConfig, tree: Any, eval_sets: list[Any]) -> dict[str, Any]:
    """The clean-data stage (``in21k.pipeline.clean``): decisions (reused from an earlier run if complete), then
    the rewrite of every shard they touch (Ray tasks; a shard already rewritten is skipped). Returns the summary."""
    import numpy as np

    from in21k.pipeline import clean

    policy = clean.Policy(
        dedup=cfg.dedup,
        max_distance=cfg.dedup_distance,
        max_color_distance=cfg.dedup_color_distance,
        in_class=cfg.duplicates_in_class,
        across_classes=cfg.duplicates_across_classes,
    )
    shards = [(s.split, s.shard) for s in plan.shards]
    parts = clean.manifest_parts(shards)
    store.invalidate_cache()
    listings = {es.name: es.digest for es in eval_sets}
    done = clean.read_decisions(store, policy, listings)
    if done is not None:
        table, summary = done
        log.info("reusing the duplicate decisions of an earlier run (%d members)", table.num_rows)
    else:
        t = time.perf_counter()
        class_of = {c.wnid: c.index for c in plan.classes if c.kept}
        release = clean.load_release(store, parts, class_of, rows=sum(s.num_rows for s in plan.shards))
        evals = clean.load_evals(store, [es.name for es in eval_sets])
        depth = np.asarray(tree.depths, np.int64)
        log.info(
            "looking for copies among %d images%s",
            len(release),
            f" and {len(evals.member)} evaluation images" if eval_sets else "",
        )
        table, summary = clean.decide(
            release,
            lambda rows, columns: clean.load_details(store, parts, release, rows, columns),
            evals,
            policy,
            depth,
            lambda release, reps, evals, policy: join_in_ray(store, parts, release, reps, evals, policy, cfg),
        )
        summary["timings"]["load"] = round(time.perf_counter() - t - summary["timings"]["decide"], 2)
        from in21k.pipeline import against

        for entry in summary["eval_sets"]:
            meta = json.loads(store.read_bytes(against.cache_names(entry["name"])[1]))
            entry.update(url=meta["url"], images=meta["images"], unreadable=meta["unreadable"])
        picture = _pairs_picture(summary["samples"], eval_sets, cfg)
        if picture is not None:
            store.write_bytes(clean.PAIRS_PICTURE, picture)
        summary["picture"] = clean.PAIRS_PICTURE if picture is not None else None
        summary["eval_listings"] = listings  # decisions are reused only for the same evaluation sets
        del release
        summary["digest"] = clean.write_decisions(store, table, summary)
    digest = summary["digest"]
    part_column = table.column("part").to_numpy()
    touched = np.unique(part_column).tolist()
    stats = store.read_many([stats_name(*shards[k]) for k in touched])  # one call: 10^4 shards on S3
    finished = {k for k, blob in zip(touched, stats, strict=True) if json.loads(blob).get("clean") == digest}
    todo = [k for k in touched if k not in finished]
    if len(todo) < len(touched):
        log.info(
            "resuming: %d of %d shards with removed or grouped members are rewritten already",
            len(touched) - len(todo),
            len(touched),
        )
    names = [f"rewrite {shard_name(*shards[k])}" for k in todo]
    with progress(total=len(todo), unit="shard", desc="rewriting shards", enabled=cfg.progress) as bar:
        for _ in _completed(
            clean.rewrite_shard,
            names,
            lambda i: (
                *shards[todo[i]],
                clean.shard_rows(table, todo[i], part_column),
                digest,
                cfg.out,
                cfg.storage_options,
            ),
            cfg,
            window=_shard_window,
        ):
            bar.update()
    store.invalidate_cache()
    return summary


def _pairs_picture(samples: dict[str, list], eval_sets: list[Any], cfg: PrepareConfig) -> bytes | None:
    """The report's picture of matched pairs, read from the raw release and the evaluation sets."""
    from in21k.pipeline import against, clean

    reader = storage.RangeReader(cfg.storage_options)

    def read_release(sides: list[dict]) -> list[bytes]:
        got = reader.fetch([(s["source"], s["offset"], s["size"]) for s in sides])
        return [g if isinstance(g, bytes) else b"" for g in got]

    by_name = {es.name: es for es in eval_sets}

    def read_eval(sides: list[dict]) -> list[bytes]:
        out = []
        for s in sides:
            es = by_name[s["eval"]]
            loc = dict(es.members).get(s["member"])
            if loc is None:  # a parquet member named by its file's name column
                out.append(b"")
                continue
            data = against.read_chunk([(s["member"], loc)], es.kind, cfg.storage_options)[0][1]
            out.append(data if isinstance(data, bytes) else b"")
        return out

    try:
        return clean.pairs_picture(samples, read_release, read_eval)
    except Exception as exc:  # noqa: BLE001 - the picture illustrates the report; its absence must not stop the job
        log.warning("could not draw the report's picture of matched pairs: %s", _brief(exc))
        return None


def load_classes(cfg: PrepareConfig) -> tuple[Any, Any]:
    """``--classes``: the class list and its semantic tree in the list's order (``(None, None)`` without one).
    An unknown list name, a bad file or a wnid that is no WordNet 3.0 noun fails here, before any work."""
    if cfg.classes is None:
        return None, None
    from in21k.tree import SemanticTree, load_class_list

    class_list = load_class_list(cfg.classes, storage_options=cfg.storage_options)
    return class_list, SemanticTree.build(class_list.wnids, keep_order=True)


def given_splits(layout: str, index: sources.Index, cfg: PrepareConfig) -> Any:
    """Per index source, the split an input that comes split gives its rows (``None`` for the raw release's
    layouts); with ``--resplit`` only "another split" (never read) is left of it."""
    import numpy as np

    if layout in ("processed", "processed-tar-gz"):
        given = processed.given_splits(index.sources)
    elif layout == "parquet":
        given = parquet_source.given_splits(index.sources)
    else:
        return None
    if cfg.resplit:
        given = np.where(given == GIVEN_OTHER, GIVEN_OTHER, GIVEN_NONE).astype(np.int8)
    return given


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run the whole job; returns the report's summary (totals, timings, shard counts).

    With ``cfg.plan_only``: index and plan, write only ``_work/`` (index and ``plan.json``), and return
    the plan's summary (``report.plan_summary``).
    """
    t0 = time.perf_counter()
    store, _, eval_sets = preflight(cfg)
    class_list, class_tree = load_classes(cfg)
    closers: list[Callable[[], None]] = []

    def connect() -> None:
        close = _connect(cfg)
        if close is not None:
            closers.append(close)

    timings: dict[str, float] = {}
    try:
        if cluster_address(cfg):
            connect()  # a named cluster that does not answer fails here, before anything is written
        store.makedirs()
        removed = store.remove_temp_files()
        if removed:
            log.info("removed %d unfinished temp files of an earlier run", removed)
        t = time.perf_counter()
        meta = _cached_index(store, cfg)
        if meta is not None:
            log.info("reusing the index of an earlier run (%d members)", meta["rows"])
        else:
            source = sources.open_source(
                cfg.raw,
                staging=cfg.staging,
                storage_options=cfg.storage_options,
                show_progress=cfg.progress,
                parquet=cfg.parquet,
            )
            log.info("raw release %s: layout %s, %d containers", cfg.raw, source.layout, len(source.containers))
            if class_list is not None and source.classes is not None:  # before indexing (a cached one: make_plan)
                check_class_list(class_list.wnids, source.classes, class_list.name)
            meta = _build_index(source, cfg, connect)
            store.write_json(INDEX_FILE, meta, compact=True)
        t_load, c_load = time.perf_counter(), time.process_time()
        index = _load_index(store, meta)
        timings["index_load"] = time.perf_counter() - t_load
        timings["index_load_cpu"] = time.process_time() - c_load
        timings["index"] = time.perf_counter() - t
        errors, layout, note = meta["errors"], meta["layout"], meta["note"]
        for e in errors:
            log.warning("damaged class tar %s: %s", e["container"], e["error"])

        t, c = time.perf_counter(), time.process_time()
        given = given_splits(layout, index, cfg)
        plan = make_plan(index, cfg, class_list=class_list.wnids if class_list else None, given=given)
        del index, given
        if not plan.kept_wnids:
            reasons = sorted({c.reason for c in plan.classes})
            raise DataError(
                f"no class is left after pruning ({len(plan.classes)} seen; reasons: {', '.join(reasons)}). "
                f"Lower --min-images (now {cfg.min_images}) or check --exclude-subtree."
            )
        from in21k.tree import SemanticTree

        # Class index order: the class list's, else sorted wnids (plan.kept_wnids is in class-index order).
        tree = class_tree if class_tree is not None else SemanticTree.build(plan.kept_wnids, keep_order=True)
        identity = release.identify(
            layout,
            meta.get("release") or {},
            plan.counts,
            classes_seen=len(plan.classes),
            split_classes=plan.counts.get("split_classes"),
        )
        log.info("release %s: %s", cfg.raw, release.summary_line(identity))
        timings["plan"] = time.perf_counter() - t
        timings["plan_cpu"] = time.process_time() - c  # the driver's own CPU time: what a shared machine can't slow
        log.info(
            "plan: %d of %d classes kept, %d train + %d validation samples in %d shards",
            len(plan.kept_wnids),
            len(plan.classes),
            plan.num_samples("train"),
            plan.num_samples("validation"),
            len(plan.shards),
        )
        if cfg.plan_only:
            summary = plan_summary(plan, cfg, tree, layout=layout, index_errors=errors, release=identity)
            summary["against"] = [
                {"name": es.name, "url": es.url, "kind": es.kind, "images": len(es.members)} for es in eval_sets
            ]
            summary["timings"] = {k: round(v, 2) for k, v in timings.items()}
            store.write_json(PLAN_FILE, summary)
            return summary

        # Written once the options have proved sound (class list, input, plan): a run that failed its checks
        # leaves no job whose options a corrected rerun would have to match.
        if not store.exists(JOB_FILE):
            store.write_json(JOB_FILE, cfg.output_fingerprint())
        if eval_sets:
            t = time.perf_counter()
            _fingerprint_eval_sets(eval_sets, store, cfg, connect)
            timings["eval_sets"] = time.perf_counter() - t
        t = time.perf_counter()
        write_unsharded_manifest(store, plan)
        timings["unsharded_manifest"] = time.perf_counter() - t
        t = time.perf_counter()
        connect()
        run = _run_shards(plan, store, cfg)
        timings["shards"] = time.perf_counter() - t
        plan.release_index()  # the report needs only the shard list and the class decisions
        cleaned = None
        if cfg.dedup or eval_sets:
            t = time.perf_counter()
            cleaned = _clean(plan, store, cfg, tree, eval_sets)
            timings["clean"] = time.perf_counter() - t
        # The tasks wrote files that this process's cached listings (fsspec's, of stats/ when resuming) do not
        # hold: an object store would answer "not found" from the stale listing.
        store.invalidate_cache()
        timings["total"] = time.perf_counter() - t0
        report = finalize(
            store,
            plan,
            cfg,
            tree,
            layout=layout,
            note=note,
            timings=timings,
            index_errors=errors,
            release=identity,
            class_list=class_list,
            clean=cleaned,
        )
    finally:
        for close in closers:
            close()
    return {"out": cfg.out, **report["totals"], **run, "timings": report["timings"]}
