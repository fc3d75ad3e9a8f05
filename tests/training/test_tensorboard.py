"""``in21k train`` writes TensorBoard event files next to metrics.jsonl, read back here with tensorboard's own
reader: loss, learning rate, images/s, the data-wait share and per-level validation accuracy (device memory only on
GPUs). The data-wait share is near 1 when the data comes through a throttled link (a slow proxy in front of the S3
server) and near 0 when it is on local disk, in the page cache, decoded faster than the model steps."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loaders.loader_helpers import FaultProxy
from tests.loaders.prepared_data import make_prepared_dataset

pytestmark = [pytest.mark.slow, pytest.mark.s3]

TRAIN = [
    "--model", "resnet10t",
    "--image-size", "32",
    "--epochs", "1",
    "--batch-size", "8",
    "--amp", "none",
    "--no-plot",
    "--device", "cpu",
    "--run.log-every", "1",
    "--run.max-steps-per-epoch", "3",
    "--run.val-max-batches", "1",
    "--loader.num-workers", "0",
    "--loader.interleave", "1",
    "--loader.shuffle-block", "8",
]  # fmt: skip


def _scalars(run: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_event_files_hold_every_scalar_and_the_data_wait_share(tmp_path: Path, s3_server) -> None:
    data = make_prepared_dataset(
        tmp_path / "data", num_classes=6, shard_lengths_train=[8] * 3, shard_lengths_val=[8], image_size=32, seed=3
    )
    bucket = s3_server.make_bucket("in21k-tensorboard")
    s3_server.upload_dir(data, bucket, "p")
    # Every response crawls: each chunk of each object waits 0.75 s in the proxy (one shard per batch here).
    proxy = FaultProxy(s3_server.endpoint_url, delay=0.75)
    options = {"key": s3_server.key, "secret": s3_server.secret, "client_kwargs": {"endpoint_url": proxy.url}}
    # One thread each: the two runs share the machine, and a tiny model gains nothing from more.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_DEFAULT_REGION": "us-east-1",
        "OMP_NUM_THREADS": "1",
    }
    try:
        runs = {
            "local": subprocess.Popen(
                [sys.executable, "-m", "in21k", "train", "--data", str(data), "--out", str(tmp_path / "local"), *TRAIN],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            ),
            "slow": subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "in21k",
                    "train",
                    "--data",
                    f"s3://{bucket}/p",
                    "--out",
                    str(tmp_path / "slow"),
                    *TRAIN,
                    "--loader.storage-options",
                    json.dumps(options),
                ],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            ),
        }
        for name, proc in runs.items():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{name}: {err[-3000:]}"
    finally:
        proxy.close()

    local, slow = _scalars(tmp_path / "local"), _scalars(tmp_path / "slow")
    for scalars in (local, slow):
        for tag in ("train/loss", "train/lr", "train/img_per_s", "train/data_wait"):
            assert len(scalars[tag]) == 3, tag  # one per optimizer step (--run.log-every 1)
        assert {"val/semantic_top1", "val/top1", "val/loss", "val/level_0", "val/level_1"} <= set(scalars)
        assert "train/device_mem_gib" not in scalars  # CPU: no device memory to report
        assert all(0.0 <= v <= 1.0 for v in scalars["train/data_wait"])
    # The metrics file holds the same records.
    records = [json.loads(line) for line in (tmp_path / "slow" / "metrics.jsonl").read_text().splitlines()]
    assert [r["data_wait"] for r in records if r["kind"] == "train"] == pytest.approx(slow["train/data_wait"], abs=1e-6)
    assert statistics.median(slow["train/data_wait"]) > 0.75  # the model waits for the link
    assert statistics.median(local["train/data_wait"]) < 0.2  # the data is there before the model asks
