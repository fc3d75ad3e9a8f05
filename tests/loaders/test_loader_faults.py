"""Object-storage reads survive real faults: cut connections, 5xx answers, a server killed and restarted.

The faults are real TCP events: ``FaultProxy`` forwards bytes between the loader and a SeaweedFS server on
127.0.0.1 and cuts chosen responses mid-body (the client sees a reset) or answers 503 SlowDown itself. The
loader must then yield exactly the batches of an undisturbed epoch, count its retries, and raise a
``DataError`` naming the shard once its retry budget is spent. The proxy also counts the requests per
object, which shows that a shard is read in a few large ranged GETs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from in21k import storage
from in21k.benchmarks.s3local import start_local_s3
from in21k.errors import DataError
from in21k.loaders import create_loader
from tests.loaders.loader_helpers import TRAIN_LENGTHS, FaultProxy, digest
from tests.loaders.prepared_data import make_prepared_dataset


def batches(loader) -> list[tuple[list[str], list[int]]]:
    """One epoch of a ``decode="none"`` loader: each batch's image digests (its exact bytes) and labels."""
    return [([digest(img.numpy().tobytes()) for img in images], labels.tolist()) for images, labels in loader]


def through(proxy: FaultProxy, server) -> dict:
    return {"key": server.key, "secret": server.secret, "client_kwargs": {"endpoint_url": proxy.url}}


# ------------------------------------------------------------------------------------------ no server
def test_retry_delays_grow_with_jitter_within_the_budget() -> None:
    retry = storage.Retry(attempts=6, seconds=1000, base_delay=0.5, max_delay=4.0)
    delays = list(retry.delays())
    assert len(delays) == 6
    for k, d in enumerate(delays):
        cap = min(4.0, 0.5 * 2**k)
        assert cap * 0.5 <= d <= cap
    assert list(storage.Retry(attempts=0).delays()) == []
    assert list(storage.Retry(attempts=5, seconds=0).delays()) == []  # the time budget ends it as well


def test_which_failures_are_transient() -> None:
    transient = [
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 18, Transferred a partial file"),
        OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."),
        storage.IncompleteReadError("the response ended at byte 10 of 20"),
    ]
    permanent = [
        FileNotFoundError("no such key"),
        storage.NotFoundError("s3://b/k: no such object"),
        OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body."),
        TypeError("a bug"),
        ValueError("a bug"),
        OSError(28, "No space left on device"),
        OSError(30, "Read-only file system"),
    ]
    assert all(storage.is_transient(e) for e in transient)
    assert not any(storage.is_transient(e) for e in permanent)


def test_retry_options_are_validated_and_reach_the_policy() -> None:
    from in21k.errors import ConfigError
    from in21k.loaders.options import LoaderOptions

    options = LoaderOptions(read_retries=3, read_retry_seconds=10, read_retry_delay=0.1)
    options.validate()
    assert options.retry_policy() == storage.Retry(attempts=3, seconds=10.0, base_delay=0.1)
    for bad in (
        {"read_retries": -1},
        {"read_retry_seconds": -1.0},
        {"read_retry_delay": "soon"},
        {"read_client": "boto"},
        {"read_client": "obstore", "num_workers": 0},
    ):
        with pytest.raises(ConfigError, match="loader.read_"):
            LoaderOptions(**bad).validate()


# ------------------------------------------------------------------------------------------ faults
@pytest.fixture(scope="module")
def faults_data(prepared: Path, s3_server) -> tuple[Path, str]:
    bucket = s3_server.make_bucket("in21k-loader-faults")
    s3_server.upload_dir(prepared, bucket, prefix="p")
    return prepared, f"s3://{bucket}/p"


KW = dict(split="train", batch_size=4, seed=5, decode="none")


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["cut", "503"])
def test_broken_reads_resume_to_the_same_batches(faults_data, s3_server, fault: str) -> None:
    prepared, url = faults_data
    local = create_loader(data=str(prepared), num_workers=2, **KW)
    local.set_epoch(1)
    expected = batches(local)
    # Every train shard's first two GETs fail: cut after 3,000 bytes (its headers and part of its body; a
    # shard is 8-20 KB, one ranged GET) or answered with 503 SlowDown.
    proxy = FaultProxy(
        s3_server.endpoint_url,
        faults=2,
        cut_after=3000 if fault == "cut" else None,
        status=503 if fault == "503" else None,
        match=lambda p: "/train/" in p,
    )
    try:
        remote = create_loader(
            data=url, num_workers=2, storage_options=through(proxy, s3_server), read_retry_delay=0.05, **KW
        )
        assert storage.stream_client(f"{url}/train/x.tar", through(proxy, s3_server)) == "pyarrow"
        remote.set_epoch(1)
        assert batches(remote) == expected  # the same samples, bytes, labels and order
        stats = remote.epoch_stats()
        assert stats["shard_errors"] == 0 and stats["shards_read"] == local.epoch_stats()["shards_read"]
        # Two retries per train shard (a shard opened again, e.g. to wrap around, is no longer sabotaged).
        assert stats["read_retries"] == proxy.injected == 2 * len(TRAIN_LENGTHS)
    finally:
        proxy.close()


@pytest.mark.s3
@pytest.mark.slow
def test_a_spent_retry_budget_raises_naming_the_shard(faults_data, s3_server) -> None:
    _, url = faults_data
    proxy = FaultProxy(s3_server.endpoint_url, faults=1, cut_after=3000, match=lambda p: "/train/" in p)
    try:
        loader = create_loader(
            data=url,
            num_workers=0,
            storage_options=through(proxy, s3_server),
            read_retries=0,
            shard_errors="raise",
            **KW,
        )
        with pytest.raises(DataError, match=rf"cannot read shard {url}/train/in21k-train-\d+\.tar: .*failed after 0"):
            batches(loader)
        # With a budget, the same cut is ridden out (each shard's one fault is spent by now: cut them again).
        proxy.faults = 2
        loader = create_loader(
            data=url,
            num_workers=0,
            storage_options=through(proxy, s3_server),
            read_retries=2,
            read_retry_delay=0.01,
            shard_errors="raise",
            **KW,
        )
        assert len(batches(loader)) == len(loader) and loader.epoch_stats()["read_retries"] > 0
    finally:
        proxy.close()


# ------------------------------------------------------------------------------------------ restart
TRAIN = [
    "--model", "resnet10t",
    "--image-size", "32",
    "--epochs", "1",
    "--batch-size", "8",
    "--amp", "none",
    "--no-plot",
    "--run.log-every", "1",
    "--loader.num-workers", "1",
    "--loader.transform", "eval",
    "--loader.interleave", "1",
    "--loader.shuffle-block", "8",
    "--loader.read-retry-delay", "0.25",
    "--seed", "3",
]  # fmt: skip


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.s3
@pytest.mark.slow
def test_training_survives_a_server_restart(tmp_path: Path) -> None:
    import torch

    data = make_prepared_dataset(
        tmp_path / "data", num_classes=4, shard_lengths_train=[8] * 24, shard_lengths_val=[8], image_size=32, seed=4
    )
    server = start_local_s3(tmp_path / "weed", key="in21k-restart", secret="in21k-restart-secret")
    try:
        bucket = server.make_bucket("in21k-restart")
        server.upload_dir(data, bucket, "p")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **server.env}
        args = [sys.executable, "-m", "in21k", "train", "--data", f"s3://{bucket}/p", *TRAIN]
        calm = subprocess.run(
            [*args, "--out", str(tmp_path / "calm")], env=env, capture_output=True, text=True, timeout=300
        )
        assert calm.returncode == 0, calm.stderr[-3000:]

        run = tmp_path / "restart"
        with open(tmp_path / "restart.log", "w") as log:
            proc = subprocess.Popen([*args, "--out", str(run)], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Kill the server a few steps into the epoch: one worker reads one 8-sample shard per batch (shuffle
            # blocks of 8, no interleave) and keeps two batches ready, so most of the 24 shards are not opened yet.
            deadline = time.monotonic() + 120
            while sum(r["kind"] == "train" for r in _records(run)) < 3:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "restart.log").read_text()
                time.sleep(0.05)
            server.kill()
            time.sleep(5)
            server.restart()
            assert proc.wait(timeout=240) == 0, (tmp_path / "restart.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        loader = [r for r in _records(run) if r["kind"] == "loader"]
        assert loader and sum(r["read_retries"] for r in loader) > 0 and all(r["shard_errors"] == 0 for r in loader)
        calm_state = torch.load(tmp_path / "calm" / "model.pt", map_location="cpu", weights_only=True)["model"]
        state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)["model"]
        assert calm_state.keys() == state.keys()
        assert all(torch.equal(calm_state[k], state[k]) for k in state)  # bit-identical weights
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ load
def _padded_dataset(root: Path, *, shards: int, samples: int, pad: int) -> Path:
    """A prepared dataset whose samples carry ``pad`` random bytes as an extra member: MB-sized shards, cheaply.

    No ``tree.json``: the loader does not read it.
    """
    from in21k.dataset import DatasetWriter, write_samples
    from tests.loaders.prepared_data import WNIDS, class_colour, jpeg_bytes

    rng = np.random.default_rng(0)
    wnids = sorted(WNIDS[:4])
    writer = DatasetWriter(str(root))
    names = []
    for s in range(shards):
        name = f"train/pad-{s:06d}.tar"
        (root / "train").mkdir(parents=True, exist_ok=True)
        rows = [
            (
                f"{wnids[i % 4]}_{s:03d}{i:03d}",
                {
                    "jpg": jpeg_bytes(rng, class_colour(i % 4), 32, 32),
                    "cls": str(i % 4).encode(),
                    "pad": rng.bytes(pad),
                },
            )
            for i in range(samples)
        ]
        write_samples(str(root / name), iter(rows))
        names.append((name, samples))
    writer.write_info(num_classes=4, splits={"train": names}, name="padded")
    return root


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create 8 worker processes")
def test_eight_workers_read_an_epoch_in_few_large_gets(tmp_path: Path, s3_server) -> None:
    data = _padded_dataset(tmp_path / "data", shards=16, samples=10, pad=500_000)  # ~5 MB shards
    bucket = s3_server.make_bucket("in21k-loader-load")
    s3_server.upload_dir(data, bucket, "p")
    proxy = FaultProxy(s3_server.endpoint_url)  # counts requests, injects nothing
    try:
        loader = create_loader(
            data=f"s3://{bucket}/p",
            split="train",
            batch_size=4,
            num_workers=8,
            decode="none",
            storage_options=through(proxy, s3_server),
        )
        n = sum(len(labels) for _, labels in loader)
        stats = loader.epoch_stats()
        assert n == 160 and stats["shard_errors"] == 0 and stats["shards_read"] == 16
        gets = proxy.gets("/p/train/")
        sizes = {f"/{bucket}/p/{p.relative_to(data).as_posix()}": p.stat().st_size for p in (data / "train").iterdir()}
        print("GET requests per shard:", {k.rsplit("/", 1)[1]: (v, sizes[k]) for k, v in sorted(gets.items())})
        # One ranged GET per 4 MiB block, and one HEAD per shard open: no small reads reach the server.
        assert gets == {k: math.ceil(size / storage.READ_BLOCK) for k, size in sizes.items()}
        assert all(proxy.requests[("HEAD", k)] == 1 for k in sizes)
    finally:
        proxy.close()
