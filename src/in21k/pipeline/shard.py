"""One output shard, start to finish: read its members by byte range, process them, write the tar,
its manifest part and, last, its stats file. Knows nothing of how it is distributed (no Ray here).

Memory is bounded by ``read_batch`` raw members plus one encoded sample, whatever the class or shard
size: members are fetched in small batches (sorted by file and offset, many class tars per batch, one
``cat_ranges`` call so object stores fetch them concurrently) and written in plan order as they come.
The shard's rows arrive as a small Arrow table (``ShardSpec.rows``); each sample's key is derived here with
``in21k.dataset.sample_key``, the same rule the plan used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from in21k.dataset import DatasetWriter, ShardTarWriter, manifest_name, sample_key
from in21k.errors import StorageError
from in21k.pipeline.fingerprint import exact_hash, fingerprints
from in21k.pipeline.imaging import ImageResult, ResizeMode, process_image
from in21k.pipeline.plan import ShardSpec
from in21k.storage import RangeReader, Retry, Store, is_transient

MAX_ERRORS_KEPT = 20
# Reads ride out a blip (a reset connection, a short 503) in place, without redoing the shard. Anything longer fails
# the shard, and the job's backoff takes over: its budget is the user's (--retries, --retry-seconds), its log lines
# name the shard and the attempt, and a shard waiting for its retry holds no CPU.
READ_RETRY = Retry(attempts=3, seconds=15.0)
MANIFEST_FIELDS = (
    ("wnid", "string"),
    ("member", "string"),
    ("source", "string"),
    ("offset", "int64"),
    ("split", "string"),
    ("shard", "int32"),
    ("key", "string"),
    ("status", "string"),
    ("reason", "string"),
    ("src_bytes", "int64"),
    ("src_width", "int32"),
    ("src_height", "int32"),
    ("width", "int32"),
    ("height", "int32"),
    ("sha1", "string"),
    # Fingerprints of the written pixels (in21k.pipeline.fingerprint), for every member that decoded.
    ("phash", "uint64"),
    ("colors", "binary"),
    ("pixel_hash", "uint64"),
    # Set by the duplicate and evaluation-set check (in21k.pipeline.clean) once every shard is written: the key
    # (or NAME:member of an evaluation set) of the image a removed member matched, the Hamming distance of
    # their phashes, and the key that names the duplicate group every member of one belongs to.
    ("match", "string"),
    ("match_distance", "int16"),
    ("dup_group", "string"),
)


def manifest_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in MANIFEST_FIELDS])


def manifest_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Manifest rows as parquet bytes (same rows -> same bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = manifest_schema()
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


@dataclass
class ShardSettings:
    out: str
    storage_options: dict[str, Any] | None = None
    resize: ResizeMode = "squash"
    size: int = 224
    quality: int = 95
    max_image_pixels: int = 89_478_485
    read_batch: int = 32
    copy_at_size: bool = True  # a clean JPEG already at the output size is written as it is (imaging.process_image)


class _ShardName(logging.Filter):
    """Prefixes the storage layer's log lines (read retries) with the shard they happen for."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.prefix = name.replace("%", "%%") + ": "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


@contextlib.contextmanager
def _storage_logs_name(name: str) -> Iterator[None]:
    storage_log = logging.getLogger("in21k.storage")
    named = _ShardName(name)
    storage_log.addFilter(named)
    try:
        yield
    finally:
        storage_log.removeFilter(named)


def write_shard(spec: ShardSpec, settings: ShardSettings) -> dict[str, Any]:
    """Write ``spec``'s tar, manifest part and stats; returns the stats. Raises only for I/O failures.

    Nothing is retried here beyond a short ``READ_RETRY`` of reads: a storage error fails the shard, and the caller
    runs it again (in21k.pipeline.job: after a backoff, within the job's budget), which gives the same bytes.
    """
    with _storage_logs_name(f"shard {spec.filename}"):
        return _write_shard(spec, settings)


def _write_shard(spec: ShardSpec, settings: ShardSettings) -> dict[str, Any]:
    start, cpu_start = time.perf_counter(), time.process_time()
    store = Store(settings.out, settings.storage_options)
    reader = RangeReader(settings.storage_options, retry=READ_RETRY)
    tmp = store.temp_file(spec.filename)
    writer = ShardTarWriter(tmp)
    manifest: list[dict[str, Any]] = []
    reasons: Counter = Counter()
    errors: list[dict[str, str]] = []
    bytes_read = copied = 0
    rows = spec.rows.to_pylist()
    for row in rows:
        row["key"] = sample_key(row["wnid"], row["member"])
    try:
        for b in range(0, len(rows), settings.read_batch):
            batch = rows[b : b + settings.read_batch]
            decoded: list[tuple[dict[str, Any], bytes]] = []  # (manifest record, thumbnail): fingerprinted together
            ranges = [(r["source"], r["offset"], r["size"]) for r in batch]
            for row, data in zip(batch, reader.fetch(ranges), strict=True):
                if isinstance(data, Exception):
                    # A member the storage would not give back (``reader`` has already ridden out what it could):
                    # the shard fails rather than recording good data as bad. A transient error stays an OSError,
                    # which the job retries after a backoff; a missing file or denied access is not retried.
                    where = f"reading {row['source']} at {row['offset']} ({row['key']}): {type(data).__name__}: {data}"
                    raise (OSError(where) if is_transient(data) else StorageError(where)) from data
                bytes_read += len(data)
                if len(data) != row["size"]:
                    # The tar header promised more bytes than the file holds (a tar cut short).
                    result = ImageResult(None, "short_read", detail=f"{len(data)} of {row['size']} bytes")
                else:
                    result = process_image(
                        data,
                        resize=settings.resize,
                        size=settings.size,
                        quality=settings.quality,
                        max_image_pixels=settings.max_image_pixels,
                        copy_at_size=settings.copy_at_size,
                        fingerprint=True,
                    )
                    copied += result.copied
                record = {
                    "wnid": row["wnid"],
                    "member": row["member"],
                    "source": row["source"],
                    "offset": row["offset"],
                    "split": spec.split,
                    "shard": spec.shard,
                    "key": row["key"],
                    "src_bytes": len(data),
                    "src_width": result.src_width or None,
                    "src_height": result.src_height or None,
                    "sha1": hashlib.sha1(data).hexdigest() if data else None,
                }
                if result.ok:
                    meta = {
                        "wnid": row["wnid"],
                        "class": row["class"],
                        "source": row["member"],
                        "orig_size": [result.src_width, result.src_height],
                    }
                    writer.write(row["key"], result.jpeg, row["class"], meta)
                    record.update(
                        status="written",
                        reason=None,
                        width=result.width,
                        height=result.height,
                        pixel_hash=exact_hash(result.jpeg),
                    )
                    decoded.append((record, result.thumbnail))
                else:
                    reasons[result.reason] += 1
                    if len(errors) < MAX_ERRORS_KEPT:
                        errors.append({"key": row["key"], "reason": result.reason, "detail": result.detail})
                    record.update(status="rejected", reason=result.reason, width=None, height=None)
                manifest.append(record)
            phash, colors = fingerprints([thumb for _, thumb in decoded])
            for (record, _), h, c in zip(decoded, phash.tolist(), colors, strict=True):
                record.update(phash=h, colors=c.tobytes())
        writer.close()
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    store.put_file(tmp, spec.filename)
    store.write_bytes(manifest_name(spec.split, spec.shard), manifest_parquet(manifest))
    seconds = time.perf_counter() - start
    stats = {
        "split": spec.split,
        "shard": spec.shard,
        "filename": spec.filename,
        "planned": len(rows),
        "num_samples": writer.count,
        "rejected": sum(reasons.values()),
        "copied": copied,  # written byte for byte: already at the output size
        "reasons": dict(sorted(reasons.items())),
        "errors": errors,
        "bytes_read": bytes_read,
        "bytes_written": writer.bytes,
        # Byte offset of each sample in the tar: a loader whose sample range starts inside this shard opens it there.
        "offsets": writer.offsets,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "images_per_s": round(len(rows) / seconds, 1) if seconds > 0 else None,
        "host": socket.gethostname(),
    }
    # Written last and atomically: its existence is what marks the shard finished.
    DatasetWriter(store).write_stats(spec.split, spec.shard, stats)
    return stats
