"""``in21k bench tar``: the per-sample cost of reading shards into samples, ours against webdataset's.

Both read the same local shard files (from the page cache after the first round) and group members into
samples by the same key rule; neither decodes anything:

- ``ours``: ``in21k.loaders.pipeline.tar_samples`` (a direct tar header parser, one buffered read per member);
- ``webdataset``: ``webdataset.tariterators.tar_file_expander`` + ``group_by_keys`` (Python ``tarfile``
  underneath), the format's reference library, when installed (the ``bench`` and ``test`` extras);
- ``limit_read``: reading the same bytes with no parsing at all.

Timed in this process, contenders interleaved round by round; CPU time per sample is reported as well.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from in21k.benchmarks.common import machine
from in21k.benchmarks.options import TarBenchConfig


def _ours(shards: list[Any]) -> int:
    from in21k.loaders.pipeline import ReadOptions, StreamStats, tar_samples

    opts, stats = ReadOptions(policy="raise"), StreamStats()
    return sum(1 for shard in shards for _ in tar_samples(shard, skip=0, opts=opts, stats=stats))


def _webdataset(shards: list[Any]) -> int:
    from webdataset import tariterators

    n = 0
    for shard in shards:
        with open(shard.url, "rb") as f:
            files = tariterators.tar_file_expander([{"url": shard.url, "stream": f}])
            n += sum(1 for _ in tariterators.group_by_keys(files))
    return n


def _read(shards: list[Any]) -> int:
    for shard in shards:
        with open(shard.url, "rb") as f:
            while f.read(1 << 22):
                pass
    return sum(s.length for s in shards)


def run_tar_bench(cfg: TarBenchConfig) -> dict[str, Any]:
    from in21k.dataset import PreparedDataset
    from in21k.storage import is_local

    if not is_local(cfg.data):
        from in21k.errors import ConfigError

        raise ConfigError("bench tar reads local shards: give a local --data")
    shards = PreparedDataset.open(cfg.data).shards(cfg.split)[: cfg.max_shards]
    contenders = {"ours": _ours, "limit_read": _read}
    try:
        import webdataset  # noqa: F401

        contenders["webdataset"] = _webdataset
    except ImportError:
        pass
    samples = sum(s.length for s in shards)
    for fn in contenders.values():  # warm the page cache and the imports
        fn(shards[:1])
    us: dict[str, list[float]] = {k: [] for k in contenders}
    cpu_us: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(cfg.rounds):
        for name, fn in contenders.items():
            w0, c0 = time.perf_counter(), time.process_time()
            n = fn(shards)
            if n != samples:
                raise RuntimeError(f"{name} read {n} samples, _info.json says {samples}: a bug")
            us[name].append(1e6 * (time.perf_counter() - w0) / n)
            cpu_us[name].append(1e6 * (time.process_time() - c0) / n)
    med = {k: round(statistics.median(v), 2) for k, v in us.items()}
    result: dict[str, Any] = {
        "bench": "tar",
        "samples": samples,
        "shards": len(shards),
        "us_per_sample": med,
        "cpu_us_per_sample": {k: round(statistics.median(v), 2) for k, v in cpu_us.items()},
    }
    if "webdataset" in med:
        result["ratio_vs_webdataset"] = round(med["webdataset"] / med["ours"], 3)  # > 1: ours is faster
    result["ratio_vs_limit_read"] = round(med["limit_read"] / med["ours"], 3)
    result["machine"] = machine()
    return result
