"""One output shard, start to finish: read its members by byte range, process them, write the tar,
its manifest part and, last, its stats file. Knows nothing of how it is distributed (no Ray here).

Memory is bounded by ``read_batch`` raw members plus one encoded sample, whatever the class or shard
size: members are fetched in small batches (sorted by file and offset, many class tars per batch, one
``cat_ranges`` call so object stores fetch them concurrently) and written in plan order as they come.
The shard's rows arrive as a small Arrow table (``ShardSpec.rows``); each sample's key is derived here with
``in21k.dataset.sample_key``, the same rule the plan used.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from in21k.dataset import ShardTarWriter, manifest_name, sample_key, stats_name
from in21k.pipeline.imaging import ImageResult, ResizeMode, process_image
from in21k.pipeline.plan import ShardSpec
from in21k.storage import RangeReader, Store

MAX_ERRORS_KEPT = 20
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


def write_shard(spec: ShardSpec, settings: ShardSettings) -> dict[str, Any]:
    """Write ``spec``'s tar, manifest part and stats; returns the stats. Raises only for I/O failures."""
    start, cpu_start = time.perf_counter(), time.process_time()
    store = Store(settings.out, settings.storage_options)
    reader = RangeReader(settings.storage_options)
    tmp = store.temp_file(spec.filename)
    writer = ShardTarWriter(tmp)
    manifest: list[dict[str, Any]] = []
    reasons: Counter = Counter()
    errors: list[dict[str, str]] = []
    bytes_read = 0
    rows = spec.rows.to_pylist()
    for row in rows:
        row["key"] = sample_key(row["wnid"], row["member"])
    try:
        for b in range(0, len(rows), settings.read_batch):
            batch = rows[b : b + settings.read_batch]
            ranges = [(r["source"], r["offset"], r["size"]) for r in batch]
            for row, data in zip(batch, reader.fetch(ranges), strict=True):
                if isinstance(data, Exception):
                    # A member the storage would not give back: an infrastructure failure, so the shard
                    # fails and Ray retries it rather than recording good data as bad.
                    raise OSError(f"reading {row['source']} at {row['offset']} ({row['key']}): {data}") from data
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
                    )
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
                    record.update(status="written", reason=None, width=result.width, height=result.height)
                else:
                    reasons[result.reason] += 1
                    if len(errors) < MAX_ERRORS_KEPT:
                        errors.append({"key": row["key"], "reason": result.reason, "detail": result.detail})
                    record.update(status="rejected", reason=result.reason, width=None, height=None)
                manifest.append(record)
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
    store.write_json(stats_name(spec.split, spec.shard), stats)
    return stats
