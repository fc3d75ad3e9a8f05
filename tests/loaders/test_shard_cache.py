"""The shard cache on its own: atomic entries, a limit never exceeded by several processes at once, LRU eviction,
and a download killed mid-way that leaves nothing readable behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from in21k.loaders.cache import ShardCache


def cache_bytes(root: Path) -> int:
    """Entries plus reserved partial downloads: what the limit bounds (measured under the cache's own lock, so
    that no eviction or reservation happens half-way through the count)."""
    import fcntl

    with open(root / ".lock", "a+b") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            return _count(root)
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def _count(root: Path) -> int:
    total = 0
    for sub in (root, root / ".partial"):
        for p in sub.iterdir() if sub.exists() else ():
            if p.is_file() and not p.name.startswith("."):
                try:
                    total += p.stat().st_size
                except FileNotFoundError:
                    pass
    return total


def make_shards(tmp_path: Path, sizes: list[int]) -> list[Path]:
    out = []
    for i, n in enumerate(sizes):
        p = tmp_path / "store" / f"shard-{i}.tar"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(n))
        out.append(p)
    return out


def read_through(cache: ShardCache, path: Path) -> bytes:
    f = cache.open(f"s3://bucket/{path.name}", size=lambda: path.stat().st_size, download=lambda: open(path, "rb"))
    if f is None:
        return path.read_bytes()  # what the loader does: read from storage
    with f:
        return f.read()


def test_hits_misses_lru_and_bypass(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, [1000, 1000, 1000, 5000])
    cache = ShardCache(tmp_path / "cache", limit=2500)
    assert read_through(cache, shards[0]) == shards[0].read_bytes()
    assert read_through(cache, shards[1]) == shards[1].read_bytes()
    assert (cache.stats.misses, cache.stats.hits) == (2, 0)
    assert read_through(cache, shards[0]) == shards[0].read_bytes()  # a hit, and now the most recently used
    assert cache.stats.hits == 1
    assert read_through(cache, shards[2]) == shards[2].read_bytes()  # evicts shard 1, the least recently used
    names = sorted(p.name.split("-", 1)[1] for p in cache.root.iterdir() if p.is_file() and p.name[0] != ".")
    assert names == ["shard-0.tar", "shard-2.tar"] and cache_bytes(cache.root) <= 2500
    assert read_through(cache, shards[3]) == shards[3].read_bytes()  # larger than the whole cache: not cached
    assert cache.stats.bypassed == 1 and cache_bytes(cache.root) <= 2500


def _worker(root: str, paths: list[str], limit: int, rounds: int) -> None:
    cache = ShardCache(root, limit=limit)
    for _ in range(rounds):
        for p in paths:
            data = read_through(cache, Path(p))
            if data != Path(p).read_bytes():
                raise SystemExit(f"wrong bytes for {p}")


def test_several_processes_share_one_cache_within_its_limit(tmp_path: Path) -> None:
    import multiprocessing

    shards = make_shards(tmp_path, [300_000] * 8)
    root, limit = tmp_path / "cache", 1_000_000  # room for 3 of the 8 shards
    ShardCache(root, limit=limit)
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], cache_bytes(root))
            time.sleep(0.001)

    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_worker, args=(str(root), [str(p) for p in shards[i::2] + shards], limit, 3))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for p in procs:
        p.join(120)
    stop.set()
    watcher.join()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert 0 < peak[0] <= limit
    assert not list((root / ".partial").iterdir())  # every download finished and was renamed


SLOW_SOURCE = """
import sys, time
data = open(sys.argv[1], "rb").read()
for i in range(0, len(data), 4096):
    sys.stdout.buffer.write(data[i:i + 4096]); sys.stdout.buffer.flush(); time.sleep(0.01)
"""

DOWNLOADER = """
import subprocess, sys
from pathlib import Path
from in21k.loaders.cache import ShardCache
shard, root = Path(sys.argv[1]), sys.argv[2]
cache = ShardCache(root, limit=10_000_000)
slow = lambda: subprocess.Popen([sys.executable, "-c", sys.argv[3], str(shard)], stdout=subprocess.PIPE).stdout
with cache.open("s3://bucket/" + shard.name, size=lambda: shard.stat().st_size, download=slow) as f:
    f.read()
"""


@pytest.mark.slow
def test_a_download_killed_midway_is_never_read(tmp_path: Path) -> None:
    shard = make_shards(tmp_path, [400_000])[0]
    root = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", DOWNLOADER, str(shard), str(root), SLOW_SOURCE], start_new_session=True
    )
    deadline = time.monotonic() + 60
    partial = root / ".partial"
    while time.monotonic() < deadline and not (partial.exists() and list(partial.iterdir())):
        time.sleep(0.02)
    time.sleep(0.3)  # mid-download
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cache = ShardCache(root, limit=10_000_000)
    entry = cache.entry("s3://bucket/" + shard.name)
    assert not entry.exists()  # no entry: the half-written data is only a partial file, which no reader opens
    assert list(partial.iterdir())  # the killed download's partial is still there...
    assert read_through(cache, shard) == shard.read_bytes()  # ...until the next download, which also removes it
    assert cache.stats.misses == 1 and not list(partial.iterdir())
