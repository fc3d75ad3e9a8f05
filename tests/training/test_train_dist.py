"""``in21k train`` under a real 2-process gloo torchrun on tiny shards: learns, stays in sync, resumes exactly.

Tolerance of the resume check: exact (bit-identical state dicts). On CPU with torchrun's
``OMP_NUM_THREADS=1``, fixed seeds and per-batch loader seeds, the resumed run replays the same
batches with the same optimizer, scaler and RNG states, so nothing can differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.loaders.prepared_data import make_prepared_dataset
from tests.training.torchrun import assert_same_weights, finish, kill_after_first_checkpoint, torchrun

pytestmark = [pytest.mark.dist, pytest.mark.slow]

EPOCHS, STEPS_PER_EPOCH = 2, 8
TRAIN = [
    "--model", "resnet10t",
    "--image-size", "32",
    "--epochs", str(EPOCHS),
    "--batch-size", "4",
    "--loader.num-workers", "1",
    "--loader.transform", "eval",
    "--lr", "3e-3",
    "--run.save-every", "3",
    "--run.log-every", "2",
    "--run.keep-last", "2",
    "--amp", "none",
    "--no-plot",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    # 2 ranks x 4 per batch x 8 steps = 64 train samples; 4 shards so each rank's worker has its own.
    return make_prepared_dataset(
        root, num_classes=8, shard_lengths_train=[16, 16, 16, 16], shard_lengths_val=[8, 8], image_size=32, seed=0
    )


def launch(data: Path, out: Path, *extra: str, log: Path | None = None):
    return torchrun(["train", "--data", str(data), "--out", str(out), *TRAIN, *extra], log=log)


def test_torchrun_learns_syncs_and_resumes_exactly(data, tmp_path):
    # 1. Uninterrupted run.
    full = tmp_path / "full"
    out = finish(launch(data, full))
    result = json.loads(out.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["steps"] == EPOCHS * STEPS_PER_EPOCH
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    train_loss = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(train_loss) == EPOCHS * STEPS_PER_EPOCH // 2
    assert sum(train_loss[-2:]) < 0.7 * sum(train_loss[:2]), train_loss  # it learns
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == EPOCHS and 0 <= val[-1]["semantic_top1"] <= 1 and val[-1]["per_level"]
    # Both ranks log the same final parameter digest (rank 0 also checks it in-process).
    digests = [
        next(
            line for line in (full / "logs" / f"rank-{r}.log").read_text().splitlines() if "parameter digest" in line
        ).rsplit(" ", 1)[1]
        for r in (0, 1)
    ]
    assert digests[0] == digests[1] == result["param_digest"]
    assert (full / "config.yaml").exists()
    # Only rank 0 prints the result line.
    assert sum(1 for line in out.splitlines() if line.startswith('{"run_dir"')) == 1

    # 2. The same run killed (SIGKILL of torchrun and all its processes) right after its first checkpoint, then resumed.
    cut = tmp_path / "cut"
    console = tmp_path / "cut-console.log"
    killed_at = kill_after_first_checkpoint(launch(data, cut, log=console), cut, console)
    assert killed_at < EPOCHS * STEPS_PER_EPOCH
    out = finish(launch(data, cut, "--resume", "auto"))
    log0 = (cut / "logs" / "rank-0.log").read_text()
    assert f"at step {killed_at}" in log0 and "resumed from" in log0
    assert len(list((cut / "checkpoints").glob("ckpt-*.pt"))) == 2  # keep-last 2

    assert_same_weights(full, cut)


def test_finetune_under_torchrun_resumes_exactly(pretrained, folders, tmp_path):
    """``in21k finetune`` is the same engine: 2 ranks on class folders, killed after its first checkpoint, resumed
    with --resume auto, ends with the weights (and EMA) of the uninterrupted run, bit for bit."""
    args = [
        "finetune",
        "--checkpoint",
        str(pretrained),
        "--data",
        str(folders),
        "--head-init",
        "map",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--loader.num-workers",
        "1",
        "--amp",
        "none",
        "--run.log-every",
        "1",
        "--run.save-every",
        "2",
        "--run.keep-last",
        "2",
    ]
    full = tmp_path / "full"
    # 40 training images: 20 per rank, 5 batches of 4 per epoch; the 10 validation images split over ranks and summed.
    out = finish(torchrun([*args, "--out", str(full)]))
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(results) == 1  # rank 0 prints
    result = results[0]
    assert result["world_size"] == 2 and result["steps"] == 10 and result["val"]["samples"] == 10
    assert result["head_mapped_rows"] == 3
    for rank in (0, 1):  # every rank logged the same final weights (check_replicas_agree raises otherwise)
        assert result["param_digest"] in (full / "logs" / f"rank-{rank}.log").read_text()
    assert (full / "model.pt").exists() and len(list((full / "checkpoints").iterdir())) == 2  # keep-last 2
    cut = tmp_path / "cut"
    console = tmp_path / "cut-console.log"
    killed_at = kill_after_first_checkpoint(torchrun([*args, "--out", str(cut)], log=console), cut, console)
    assert killed_at < 10
    finish(torchrun([*args, "--out", str(cut), "--resume", "auto"]))
    assert f"at step {killed_at}" in (cut / "logs" / "rank-0.log").read_text()
    assert_same_weights(full, cut, "model")
    assert_same_weights(full, cut, "ema")
