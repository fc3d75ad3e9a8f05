"""``in21k finetune``: head mapping from the 21K head, class folders and prepared shards, resume, original format."""

from __future__ import annotations

import json

import pytest
import torch

from in21k.cli import main
from in21k.training.finetune import init_head
from in21k.training.pretrained import classifier_layer, read_trained_model
from tests.loaders.prepared_data import WNIDS, make_prepared_dataset
from tests.training.conftest import IN_TREE, NOT_IN_TREE


def test_head_map_initialises_exactly_the_overlapping_rows(pretrained):
    trained = read_trained_model(pretrained)
    old = classifier_layer(trained.model)
    w21, b21 = old.weight.detach().clone(), old.bias.detach().clone()
    classes = sorted(IN_TREE + NOT_IN_TREE)
    torch.manual_seed(0)
    report = init_head(trained.model, tree=trained.tree, class_names=classes, mode="map")
    new = classifier_layer(trained.model)
    assert new.weight.shape == (5, w21.shape[1])
    index = trained.tree.wnid_to_index
    assert report.mapped == {j: index[c] for j, c in enumerate(classes) if c in IN_TREE}
    for j, c in enumerate(classes):
        if c in IN_TREE:
            assert torch.equal(new.weight[j], w21[index[c]]) and torch.equal(new.bias[j], b21[index[c]])
        else:  # random: equal to no 21K row
            assert not any(torch.allclose(new.weight[j], row) for row in w21)
    # random mode maps nothing
    trained = read_trained_model(pretrained)
    assert init_head(trained.model, tree=trained.tree, class_names=classes, mode="random").mapped == {}


FT = [
    "--epochs", "2",
    "--batch-size", "8",
    "--loader.num-workers", "0",
    "--amp", "none",
    "--run.log-every", "1",
    "--warmup-epochs", "0.5",
    "--lr", "0.003",
]  # fmt: skip


@pytest.mark.slow
def test_finetune_class_folders_with_head_map_and_exact_resume(pretrained, folders, tmp_path, capsys):
    full = tmp_path / "full"
    rc = main(
        [
            "finetune",
            "--checkpoint",
            str(pretrained),
            "--data",
            str(folders),
            "--out",
            str(full),
            "--head-init",
            "map",
            *FT,
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["classes"] == 5 and result["head_mapped_rows"] == 3 and result["steps"] == 10  # 40 imgs / 8 x 2
    assert "3 of 5 head rows initialised from the 21K head" in (full / "logs" / "rank-0.log").read_text()
    head = json.loads((full / "head_init.json").read_text())
    assert head["mapped_rows"] == 3 and {m["class"] for m in head["mapped"]} == set(IN_TREE)
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == 2 and val[-1]["samples"] == 10 and "ema" in val[-1] and 0 <= val[-1]["top1"] <= 1
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert max(lrs) == pytest.approx(0.003) and lrs[-1] < lrs[4]  # warmup then cosine
    assert all(0.0 <= r["data_wait"] <= 1.0 for r in records if r["kind"] == "train")
    assert any((full / "tensorboard").glob("events.out.tfevents.*"))  # the same records for TensorBoard
    final = torch.load(full / "model.pt", map_location="cpu", weights_only=True)
    assert final["classes"] == sorted(IN_TREE + NOT_IN_TREE) and final["task"] == "single-label"
    assert final["schema"] == "in21k.model/1" and final["source_checkpoint"] == str(pretrained)
    # Resume: the epoch-1 checkpoint in a fresh run dir continues to the same weights.
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    first = sorted((full / "checkpoints").iterdir())[0]
    (part / "checkpoints" / first.name).write_bytes(first.read_bytes())
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(pretrained),
                "--data",
                str(folders),
                "--out",
                str(part),
                "--head-init",
                "map",
                "--resume",
                "auto",
                *FT,
            ]
        )
        == 0
    )
    again = torch.load(part / "model.pt", map_location="cpu", weights_only=True)
    for which in ("model", "ema"):
        assert all(torch.equal(final[which][k], again[which][k]) for k in final[which]), which
    # A fine-tuned model is not a 21K model: predict says so.
    assert main(["predict", "--checkpoint", str(full / "model.pt"), str(folders / "val")]) == 2
    assert "fine-tuned single-label model" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_prepared_shards_from_original_format_with_sgd(pretrained, tmp_path, capsys):
    data = make_prepared_dataset(
        tmp_path / "in1k", num_classes=5, shard_lengths_train=[16, 16], shard_lengths_val=[8], image_size=32, seed=2
    )
    state = torch.load(pretrained, map_location="cpu", weights_only=True)
    original = tmp_path / "resnet10t_miil_21k.pth"
    torch.save({"state_dict": state["model"]}, original)
    tree21k = tmp_path / "tree21k.json"
    tree21k.write_text(json.dumps(state["tree"]))
    rc = main(
        [
            "finetune",
            "--checkpoint",
            str(original),
            "--model",
            "resnet10t",
            "--tree",
            str(tree21k),
            "--image-size",
            "32",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--head-init",
            "map",
            "--optimizer",
            "sgd",
            "--no-ema",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--loader.num-workers",
            "0",
            "--amp",
            "none",
            "--config",
            "configs/finetune/sgd.yaml",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The 5 classes are the first 5 of the 8 wnids of the 21K tree: every row is mapped.
    head = json.loads((tmp_path / "run" / "head_init.json").read_text())
    assert [m["class"] for m in head["mapped"]] == sorted(WNIDS[:5])
    assert result["head_mapped_rows"] == 5 and result["classes"] == 5 and result["steps"] == 4
    assert result["val"]["samples"] == 8
