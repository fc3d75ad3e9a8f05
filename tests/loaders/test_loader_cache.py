"""The shard cache under the loader, from a real S3 server: two epochs with a cache smaller than the dataset
(the limit is never exceeded, hits and misses are counted, the batches are those of an uncached loader), and a
worker killed mid-download whose partial shard is never read."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from in21k.loaders import create_loader
from tests.loaders.loader_helpers import FaultProxy, batch_keys, key_by_digest
from tests.loaders.prepared_data import make_prepared_dataset

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def cache_bytes(root: Path) -> int:
    """Entries plus reserved partial downloads, counted under the cache's own lock."""
    with open(root / ".lock", "a+b") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            files = [p for sub in (root, root / ".partial") for p in sub.iterdir()]
            return sum(p.stat().st_size for p in files if p.is_file() and not p.name.startswith("."))
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def remote(s3_server, tmp_path_factory) -> tuple[Path, str, int]:
    local = make_prepared_dataset(
        tmp_path_factory.mktemp("cached"),
        num_classes=6,
        shard_lengths_train=[10] * 8,
        shard_lengths_val=[6],
        image_size=48,
        seed=4,
    )
    bucket = s3_server.make_bucket("in21k-cache")
    s3_server.upload_dir(local, bucket, "p")
    size = sum(p.stat().st_size for p in (local / "train").iterdir())
    return local, f"s3://{bucket}/p", size


def test_two_epochs_within_a_limit_below_the_dataset(remote, s3_server, tmp_path) -> None:
    local, url, size = remote
    table = key_by_digest(local, "train")
    limit = int(size * 0.6)
    kw = dict(
        split="train", batch_size=4, num_workers=2, seed=3, decode="none", storage_options=s3_server.storage_options
    )
    plain = create_loader(data=url, **kw)
    cached = create_loader(data=url, cache_dir=str(tmp_path / "cache"), cache_limit=limit, **kw)
    peak, stop = [0], threading.Event()
    stats = []
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        expected = batch_keys(plain, table)
        it = iter(cached)
        first = next(it)  # the workers exist now: watch the folder from here on
        if epoch == 0:

            def watch() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], cache_bytes(tmp_path / "cache"))
                    time.sleep(0.002)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        got = [[table[k] for k in _digests(first)]] + [[table[k] for k in _digests(b)] for b in it]
        assert got == expected, epoch  # the cache changes where bytes come from, never what is read
        stats.append(cached.epoch_stats())
    stop.set()
    watcher.join()
    assert 0 < peak[0] <= limit  # never above the limit, while workers were downloading and evicting
    assert stats[0]["cache_misses"] > 0 and stats[0]["cache_hits"] + stats[0]["cache_misses"] == stats[0]["shards_read"]
    assert stats[1]["cache_hits"] > 0  # the second epoch reads some shards from local disk
    assert not list((tmp_path / "cache" / ".partial").iterdir())


def _digests(batch) -> list[str]:
    from tests.loaders.loader_helpers import digest

    return [digest(img.numpy().tobytes()) for img in batch[0]]


SLOW_EPOCH = """
import sys
from in21k.loaders import create_loader
url, cache, endpoint, key, secret = sys.argv[1:6]
options = {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint}}
loader = create_loader(data=url, split="train", batch_size=4, num_workers=1, decode="none", cache_dir=cache,
                       cache_limit="1G", storage_options=options, read_client="fsspec")
for _ in loader:
    pass
"""


def test_a_worker_killed_mid_download_leaves_nothing_readable(remote, s3_server, tmp_path) -> None:
    local, url, _ = remote
    table = key_by_digest(local, "train")
    cache = tmp_path / "cache"
    # A slow network (a throttling proxy in front of the server): the kill lands inside a download.
    proxy = FaultProxy(s3_server.endpoint_url, delay=0.05)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_EPOCH, url, str(cache), proxy.url, s3_server.key, s3_server.secret],
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and not (cache / ".partial").is_dir()
            or not list((cache / ".partial").iterdir())
        ):
            assert proc.poll() is None, "the epoch ended before a download could be caught"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the loader and its worker, mid-download
        proc.wait()
    finally:
        proxy.close()
    partials = list((cache / ".partial").iterdir())
    assert partials  # the killed download left its partial file...
    entries = [p for p in cache.iterdir() if p.is_file() and not p.name.startswith(".")]
    killed = partials[0].name.rsplit(".", 1)[0]
    assert killed not in {p.name for p in entries}  # ...and no entry of that shard
    # A new run over the same cache: the right batches, the stale partial gone, every shard complete.
    loader = create_loader(
        data=url,
        split="train",
        batch_size=4,
        num_workers=1,
        decode="none",
        seed=1,
        cache_dir=str(cache),
        cache_limit="1G",
        storage_options=s3_server.storage_options,
    )
    reference = create_loader(data=str(local), split="train", batch_size=4, num_workers=1, decode="none", seed=1)
    assert batch_keys(loader, table) == batch_keys(reference, table)
    assert not list((cache / ".partial").iterdir())
    for entry in (p for p in cache.iterdir() if p.is_file() and not p.name.startswith(".")):
        name = entry.name.split("-", 1)[1]
        assert entry.read_bytes() == (local / "train" / name).read_bytes()
