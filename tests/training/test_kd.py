"""Semantic KD: the loss against a per-sample reference (real WordNet), and ``in21k train --teacher`` runs
with a teacher saved by ``in21k train`` (model.pt) and in the original's format (a state dict under
``state_dict``), including an exact resume from a mid-run checkpoint."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from in21k.cli import main
from in21k.training.kd import SemanticKDLoss
from in21k.tree import SemanticTree
from tests.loaders.prepared_data import WNIDS, make_prepared_dataset


def reference_kd(tree: SemanticTree, student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Per sample, per level, in plain Python: the formula of docs/design.md and docs/training.md."""
    total = 0.0
    batch = student.shape[0]
    for level in tree.levels:
        n = len(level)
        if n < 2:
            continue
        k = math.ceil(n / 20)
        level_sum = 0.0
        for b in range(batch):

            def softmax(row):
                m = max(row)
                e = [math.exp(v - m) for v in row]
                return [v / sum(e) for v in e]

            p_s = softmax([float(student[b, c]) for c in level])
            p_t = softmax([float(teacher[b, c]) for c in level])
            confidence = sum(sorted(p_t, reverse=True)[:k])
            level_sum += confidence * sum((s - t) ** 2 for s, t in zip(p_s, p_t, strict=True))
        total += level_sum / batch
    return total


def test_kd_loss_matches_per_sample_reference():
    tree = SemanticTree.build(list(WNIDS))
    assert tree.num_levels >= 3 and max(len(lv) for lv in tree.levels) >= 2
    g = torch.Generator().manual_seed(0)
    student = torch.randn(7, tree.num_classes, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(7, tree.num_classes, generator=g, dtype=torch.float64) * 3
    loss_fn = SemanticKDLoss(tree)
    got = float(loss_fn(student, teacher))
    assert got == pytest.approx(reference_kd(tree, student, teacher), rel=1e-5)
    assert float(loss_fn(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)  # identical distributions
    # The gradient reaches the student only.
    s = student.clone().float().requires_grad_(True)
    t = teacher.clone().float().requires_grad_(True)
    loss_fn(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_kd_top_k_is_five_percent_rounded_up():
    tree = SemanticTree.builtin("fall11")
    loss_fn = SemanticKDLoss(tree)
    assert loss_fn.top_k == [math.ceil(n / 20) for n in loss_fn.levels.level_sizes]
    with pytest.raises(ValueError, match="same tree"):
        loss_fn(torch.zeros(2, tree.num_classes), torch.zeros(2, 10))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kd_data")
    return make_prepared_dataset(
        root, num_classes=8, shard_lengths_train=[32, 32], shard_lengths_val=[8], image_size=32, seed=3
    )


# No augmentation (--loader.transform eval): on 64 images at 32 px the loss trend is then a clean signal.
COMMON = [
    "--image-size", "32",
    "--batch-size", "8",
    "--loader.num-workers", "0",
    "--amp", "none",
    "--no-plot",
    "--run.val-max-batches", "1",
    "--run.log-every", "1",
    "--loader.transform", "eval",
]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("teacher")
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--model",
                "resnet10t",
                "--epochs",
                "2",
                "--lr",
                "0.003",
                *COMMON,
            ]
        )
        == 0
    )
    return run


def _train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.slow
def test_kd_run_with_our_teacher_lowers_its_loss(data, teacher_run, tmp_path):
    run = tmp_path / "student"
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            "--model",
            "resnet10t",
            "--epochs",
            "3",
            "--teacher",
            str(teacher_run / "model.pt"),
            "--kd-weight",
            "2",
            "--lr",
            "0.003",
            *COMMON,
        ]
    )
    assert rc == 0
    train = _train_records(run)
    assert len(train) == 24 and all("kd_loss" in r for r in train)
    first = sum(r["loss"] for r in train[:4]) / 4
    last = sum(r["loss"] for r in train[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    assert "KD teacher: resnet10t" in (run / "logs" / "rank-0.log").read_text()
    # The student's checkpoints hold the student only.
    ckpt = torch.load(sorted((run / "checkpoints").iterdir())[-1], map_location="cpu", weights_only=True)
    assert "teacher" not in ckpt and ckpt["config"]["teacher"] == str(teacher_run / "model.pt")
    assert not any(k.startswith("teacher") for k in ckpt["model"])


@pytest.mark.slow
def test_kd_with_original_format_teacher_and_exact_resume(data, teacher_run, tmp_path, capsys):
    state = torch.load(teacher_run / "model.pt", map_location="cpu", weights_only=True)["model"]
    original = tmp_path / "resnet10t_miil_21k.pth"
    torch.save({"state_dict": state}, original)  # the original's published layout
    base = [
        "--data",
        str(data),
        "--model",
        "resnet10t",
        "--epochs",
        "1",
        "--teacher",
        str(original),
        "--run.save-every",
        "2",
        "--run.keep-last",
        "10",
        *COMMON,
    ]
    args = [*base, "--teacher-model", "resnet10t"]
    full = tmp_path / "full"
    assert main(["train", "--out", str(full), *args]) == 0
    train = _train_records(full)
    assert len(train) == 8 and train[-1]["loss"] < train[0]["loss"]
    assert all(r["kd_loss"] >= 0 for r in train)
    # Resume from the step-4 checkpoint in a fresh run dir: the teacher is reloaded, the result is identical.
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    mid = full / "checkpoints" / "ckpt-000000004.pt"
    shutil.copy(mid, part / "checkpoints" / mid.name)
    assert main(["train", "--out", str(part), "--resume", "auto", *args]) == 0
    a = torch.load(full / "model.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(part / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The original's format without the architecture fails with a message saying what to add.
    assert main(["train", "--out", str(tmp_path / "bad"), *base]) == 2
    assert "--model resnet50 --tree fall11" in capsys.readouterr().err


def test_teacher_for_another_tree_is_refused(teacher_run, tmp_path):
    from in21k.training.kd import build_teacher

    other = SemanticTree.build(sorted(WNIDS[:5]))
    with pytest.raises(ValueError, match="another class list"):
        build_teacher(str(teacher_run / "model.pt"), tree=other, device=torch.device("cpu"))
