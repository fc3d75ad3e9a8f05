"""The Ray orchestration of ``in21k prepare`` (the only module that imports ray).

Order of work: check the config, the output and the raw source (errors before any work); connect to
Ray; stage a .tar.gz if needed; index the class tars (parallel tasks, headers only, cached in
``_work/index.parquet``); plan on the driver; run one task per unfinished shard (retried by Ray, a
bounded number in flight); write the dataset-level files. A shard whose stats file exists is never
redone, so a rerun after a crash (even ``kill -9``) finishes the job with the same bytes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import time
from typing import Any

from in21k import storage
from in21k.dataset import stats_name
from in21k.errors import ConfigError, DataError, StorageError
from in21k.pipeline import sources
from in21k.pipeline.options import PrepareConfig
from in21k.pipeline.plan import Plan, make_plan
from in21k.pipeline.report import finalize, write_unsharded_manifest
from in21k.pipeline.shard import ShardSettings, write_shard
from in21k.storage import Store

log = logging.getLogger(__name__)

JOB_FILE = "_work/job.json"
INDEX_FILE = "_work/index.parquet"
CONTAINERS_PER_INDEX_TASK = 16


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


LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _connect(cfg: PrepareConfig) -> bool:
    """Connect to Ray; returns whether we started it (only then do we shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=True)
    else:
        # A Ray started for this one job: no auth token, loopback only, no usage reporting. Set before the
        # node processes start (they read these from the environment); a user's own values win.
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False)
    return True


def _index_batch(containers: list[sources.Container], storage_options: dict[str, Any] | None) -> list[dict]:
    return [sources.index_container(c, storage_options) for c in containers]


def _build_index(source: sources.RawSource, cfg: PrepareConfig) -> tuple[dict[str, list], list[dict[str, str]]]:
    """Index every container in Ray tasks; returns index columns and the damaged containers."""
    import ray
    from tqdm import tqdm

    task = ray.remote(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=True)(_index_batch)
    tars = [c for c in source.containers if c.kind == "tar"]
    columns: dict[str, list] = {k: [] for k in sources.INDEX_COLUMNS}
    errors: list[dict[str, str]] = []
    results: list[tuple[sources.Container, dict]] = []
    # Folder listings are already complete; only tars need their headers read.
    for c in source.containers:
        if c.kind == "files":
            results.append((c, sources.index_container(c)))
    batches = [tars[i : i + CONTAINERS_PER_INDEX_TASK] for i in range(0, len(tars), CONTAINERS_PER_INDEX_TASK)]
    pending = {task.remote(b, cfg.storage_options): b for b in batches}
    with tqdm(total=len(tars), unit="tar", desc="indexing class tars", disable=not cfg.progress or not tars) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                batch = pending.pop(ref)
                results.extend(zip(batch, ray.get(ref), strict=True))
                bar.update(len(batch))
    for c, rows in results:
        if rows["error"]:
            errors.append({"container": f"{c.url}@{c.start}" if c.start else c.url, "error": rows["error"]})
        for k in sources.INDEX_COLUMNS:
            columns[k].extend(rows[k])
    return columns, errors


def _index_bytes(columns: dict[str, list], errors: list[dict[str, str]], layout: str, note: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    meta = {"errors": errors, "layout": layout, "note": note}
    table = table.replace_schema_metadata({"in21k": json.dumps(meta)})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _load_index(data: bytes) -> tuple[dict[str, list], list[dict[str, str]], str, str]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    meta = json.loads(table.schema.metadata[b"in21k"])
    return table.to_pydict(), meta["errors"], meta["layout"], meta["note"]


def _run_shards(plan: Plan, store: Store, cfg: PrepareConfig) -> dict[str, int]:
    import ray
    from tqdm import tqdm

    settings = ShardSettings(
        out=cfg.out,
        storage_options=cfg.storage_options,
        resize=cfg.resize,
        size=cfg.size,
        quality=cfg.quality,
        max_image_pixels=cfg.max_image_pixels,
    )
    store.invalidate_cache()  # object-store listings are cached by fsspec; we need the current one
    finished = store.listdir("stats")  # one listing, not one request per shard (10^4 shards on S3)
    todo = [s for s in plan.shards if posixpath.basename(stats_name(s.split, s.shard)) not in finished]
    done_samples = sum(len(s.rows) for s in plan.shards) - sum(len(s.rows) for s in todo)
    if len(todo) < len(plan.shards):
        log.info(
            "resuming: %d of %d shards are finished and will not be redone",
            len(plan.shards) - len(todo),
            len(plan.shards),
        )
    task = ray.remote(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=True)(write_shard)
    # A bounded window of submitted shards keeps the driver's and object store's memory flat for 10^4 shards.
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    queue = list(reversed(todo))
    pending: dict[Any, Any] = {}
    written = rejected = 0
    total = sum(len(s.rows) for s in plan.shards)
    with tqdm(
        total=total, initial=done_samples, unit="img", desc="writing shards", smoothing=0.1, disable=not cfg.progress
    ) as bar:
        while queue or pending:
            while queue and len(pending) < window:
                spec = queue.pop()
                pending[task.remote(spec, settings)] = spec
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    stats = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    for other in pending:  # a shard is written whole or not at all, so cancelling is safe
                        ray.cancel(other)
                    raise RuntimeError(
                        f"shard {spec.filename} failed after {cfg.max_retries} retries: {exc}\nFinished shards are "
                        "kept: fix the cause and rerun the same command to resume."
                    ) from exc
                written += stats["num_samples"]
                rejected += stats["rejected"]
                bar.update(len(spec.rows))
                bar.set_postfix(
                    shards=f"{len(plan.shards) - len(queue) - len(pending)}/{len(plan.shards)}", refresh=False
                )
    return {
        "shards_run": len(todo),
        "shards_skipped": len(plan.shards) - len(todo),
        "written_now": written,
        "rejected_now": rejected,
    }


def preflight(cfg: PrepareConfig) -> tuple[Store, str]:
    """All checks that need no Ray and do no work: config, output, raw source. Returns store and layout."""
    cfg.validate()
    if cfg.exclude_subtree:
        from in21k.tree.wordnet import noun_synset

        unknown = [w for w in cfg.exclude_subtree if noun_synset(w) is None]
        if unknown:
            raise ConfigError(
                f"--exclude-subtree: not WordNet 3.0 noun synsets: {', '.join(unknown)} (a typo would "
                "exclude nothing); e.g. n00007846 is person.n.01"
            )
    layout, _, _ = sources.describe(cfg.raw, cfg.storage_options)
    store = Store(cfg.out, cfg.storage_options)
    try:
        check_output(store, cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreachable bucket, bad credentials, ...
        raise StorageError(f"cannot use the output {cfg.out!r}: {type(exc).__name__}: {exc}") from None
    if layout == "whole-tar-gz" and cfg.staging is None:
        cfg.staging = storage.join(cfg.out, "_staging")
    return store, layout


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run the whole job; returns the report's summary (totals, timings, shard counts)."""
    import ray

    t0 = time.perf_counter()
    store, _ = preflight(cfg)
    started = _connect(cfg)
    timings: dict[str, float] = {}
    try:
        store.makedirs()
        removed = store.remove_temp_files()
        if removed:
            log.info("removed %d unfinished temp files of an earlier run", removed)
        if not store.exists(JOB_FILE):
            store.write_json(JOB_FILE, cfg.output_fingerprint())
        t = time.perf_counter()
        if store.exists(INDEX_FILE):
            columns, errors, layout, note = _load_index(store.read_bytes(INDEX_FILE))
            log.info("reusing the index of an earlier run (%d members)", len(columns["wnid"]))
        else:
            source = sources.open_source(cfg.raw, staging=cfg.staging, storage_options=cfg.storage_options)
            layout, note = source.layout, source.note
            log.info("raw release %s: layout %s, %d classes", cfg.raw, layout, len(source.containers))
            columns, errors = _build_index(source, cfg)
            store.write_bytes(INDEX_FILE, _index_bytes(columns, errors, layout, note))
        timings["index"] = time.perf_counter() - t
        for e in errors:
            log.warning("damaged class tar %s: %s", e["container"], e["error"])

        t = time.perf_counter()
        plan = make_plan(columns, cfg)
        if not plan.kept_wnids:
            reasons = sorted({c.reason for c in plan.classes})
            raise DataError(
                f"no class is left after pruning ({len(plan.classes)} seen; reasons: {', '.join(reasons)}). "
                f"Lower --min-images (now {cfg.min_images}) or check --exclude-subtree."
            )
        from in21k.tree import SemanticTree

        tree = SemanticTree.build(plan.kept_wnids)
        write_unsharded_manifest(store, plan)
        timings["plan"] = time.perf_counter() - t
        log.info(
            "plan: %d of %d classes kept, %d train + %d validation samples in %d shards",
            len(plan.kept_wnids),
            len(plan.classes),
            plan.num_samples("train"),
            plan.num_samples("validation"),
            len(plan.shards),
        )

        t = time.perf_counter()
        run = _run_shards(plan, store, cfg)
        timings["shards"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        report = finalize(store, plan, cfg, tree, layout=layout, note=note, timings=timings, index_errors=errors)
    finally:
        if started:
            ray.shutdown()
    return {"out": cfg.out, **report["totals"], **run, "timings": report["timings"]}
