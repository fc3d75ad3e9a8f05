"""``in21k train`` in one process: the alternative recipe (GPU-decode path on CPU, EMA, accumulation,
AdamW + cosine, single-label), its outputs, config handling and environment errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from in21k.cli import main
from tests.loaders.prepared_data import make_prepared_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared1")
    return make_prepared_dataset(
        root, num_classes=6, shard_lengths_train=[12, 12], shard_lengths_val=[6], image_size=(40, 28), seed=1
    )


def test_alternative_recipe_with_gpu_decode_path_on_cpu(data, tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "optimizer": "adamw",
                "schedule": "cosine",
                "warmup_steps": 1,
                "ema": True,
                "ema_decay": 0.9,
                "accum_steps": 2,
                "loss": "single-label",
            }
        )
    )
    from in21k.training.model import build_model

    in1k = tmp_path / "in1k.pth"  # an ImageNet-1K-shaped checkpoint of the same architecture
    torch.save({"state_dict": build_model(name="mobilenetv3_small_050", num_classes=1000).state_dict()}, in1k)
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            "--config",
            str(cfg),
            "--init",
            str(in1k),
            "--resume",
            "auto",
            "--model",
            "mobilenetv3_small_050",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--loader.num-workers",
            "0",
            "--gpu-decode",
            "--amp",
            "bf16",
            "--channels-last",
            "--run.log-every",
            "1",
            "--run.val-max-batches",
            "1",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 3  # 24 samples / batch 4 = 6 batches, 2 per optimizer step
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optimizer"] == "adamw" and saved["gpu_decode"] is True and saved["epochs"] == 1  # file < flags
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    lrs = [r["lr"] for r in train]
    assert lrs[0] == pytest.approx(3e-4) and lrs[-1] < lrs[0]  # warmup 1 step, then cosine down
    val = [r for r in records if r["kind"] == "val"][0]
    assert "ema" in val and 0 <= val["ema"]["semantic_top1"] <= 1 and val["samples"] > 0
    assert (run / "curves.png").stat().st_size > 1000
    final = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    assert final["model_name"] == "mobilenetv3_small_050" and final["ema"] is not None
    assert len(final["tree"]["classes"]) == 6
    log = (run / "logs" / "rank-0.log").read_text()
    assert log.count("val semantic top-1") == 1
    assert "skipped classifier.weight" in log and "--init" in log  # applied: --resume auto found nothing


def test_print_config_and_unknown_key(tmp_path, capsys):
    assert main(["train", "--data", "D", "--out", "R", "--config", "configs/train/demo.yaml", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"] == "D" and printed["model"] == "resnet10t"
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    assert main(["train", "--data", "D", "--out", "R", "--config", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_half_set_distributed_environment_fails_clearly(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--model", "resnet10t"]) == 2
    assert "LOCAL_RANK, MASTER_ADDR, MASTER_PORT missing" in capsys.readouterr().err


def test_resume_from_mid_run_checkpoint_is_exact_with_ema_accum_and_gpu_decode(data, tmp_path):
    """A copy of a mid-epoch checkpoint resumed in a fresh run dir ends bit-identical (model and EMA)."""
    import shutil

    args = [
        "--data",
        str(data),
        "--model",
        "resnet10t",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--loader.num-workers",
        "1",
        "--gpu-decode",
        "--ema",
        "--ema-decay",
        "0.5",
        "--accum-steps",
        "2",
        "--run.save-every",
        "1",
        "--run.keep-last",
        "20",
        "--amp",
        "none",
        "--no-plot",
        "--run.val-max-batches",
        "1",
    ]
    full = tmp_path / "full"
    assert main(["train", "--out", str(full), *args]) == 0
    mid = full / "checkpoints" / "ckpt-000000004.pt"  # step 4 of 6 per epoch: mid-epoch 0
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(mid, part / "checkpoints" / mid.name)
    assert main(["train", "--out", str(part), "--resume", "auto", *args]) == 0
    assert "resumed from" in (part / "logs" / "rank-0.log").read_text()
    a = torch.load(full / "model.pt", map_location="cpu", weights_only=True)
    b = torch.load(part / "model.pt", map_location="cpu", weights_only=True)
    for which in ("model", "ema"):
        for key in a[which]:
            assert torch.equal(a[which][key], b[which][key]), (which, key)


def test_resume_with_other_loader_workers_trains_the_rest_of_the_epoch(data, tmp_path):
    """A mid-epoch checkpoint of a 1-worker run resumed with 2 workers (another loader configuration): the loader
    state in the checkpoint makes the rest of the epoch its unseen samples, and the run goes on to the end."""
    import shutil

    args = [
        "--data",
        str(data),
        "--model",
        "resnet10t",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--run.save-every",
        "2",
        "--run.keep-last",
        "20",
        "--amp",
        "none",
        "--no-plot",
        "--run.val-max-batches",
        "1",
        "--run.log-every",
        "1",
    ]
    full = tmp_path / "full"
    assert main(["train", "--out", str(full), "--loader.num-workers", "1", *args]) == 0
    mid = full / "checkpoints" / "ckpt-000000002.pt"  # 24 samples / 4 = 6 steps per epoch: step 2 is mid-epoch 0
    state = torch.load(mid, map_location="cpu", weights_only=True)
    assert state["loader"]["segments"] == [[1, 1, 4, 2]] and state["loader"]["samples_seen"] == 8
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(mid, part / "checkpoints" / mid.name)
    assert main(["train", "--out", str(part), "--resume", "auto", "--loader.num-workers", "2", *args]) == 0
    log = (part / "logs" / "rank-0.log").read_text()
    assert "the rest of epoch 0 is its unseen samples" in log
    records = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    loader = [r for r in records if r["kind"] == "loader"]
    # Epoch 0 goes on with the 16 unseen samples (4 steps, a new segment); epoch 1 is whole again (6 steps).
    assert [(r["epoch"], r["segment"], r["batches"]) for r in loader] == [(0, 1, 4), (1, 0, 6)]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(3, 13))  # 2 steps before the checkpoint, then 4 + 6


def test_default_workers_on_a_two_shard_dataset(data, tmp_path, caplog):
    """Two train shards and the default 8 loader workers: the loader uses 2 and says so in one line."""
    with caplog.at_level("INFO"):
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(data),
                    "--out",
                    str(tmp_path / "run"),
                    "--model",
                    "resnet10t",
                    "--image-size",
                    "32",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "4",
                    "--amp",
                    "none",
                    "--no-plot",
                    "--run.max-steps-per-epoch",
                    "2",
                    "--run.val-max-batches",
                    "1",
                ]
            )
            == 0
        )
    lines = [r.getMessage() for r in caplog.records if "loader worker(s) per rank instead of 8" in r.getMessage()]
    assert lines == [
        "split 'train': 2 shard(s) for 1 rank(s): 2 loader worker(s) per rank instead of 8",
        "split 'validation': 1 shard(s) for 1 rank(s): 1 loader worker(s) per rank instead of 8",
    ]
