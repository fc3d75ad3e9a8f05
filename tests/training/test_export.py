"""``in21k export``: the demo's model in timm's hub layout, loaded by a Python that imports timm and not in21k.

The fresh interpreter builds the model with ``timm.create_model("local-dir:DIR", pretrained=True)``, preprocesses
with timm's own data config and gives the logits ``in21k predict`` reads (the test images have the model's input
size, so that both preprocessings are the identity: the pixels and the weights are the same, and so must be the
per-level probabilities). The original's format (a bare state dict) exports and loads the same way; predict, the
``--init`` and KD-teacher readers take the folder; nothing secret reaches it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from in21k.cli import main
from in21k.dataset import PreparedDataset
from in21k.training.export import clean_lines
from in21k.training.hub import label_names
from in21k.tree import SemanticTree

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # the session's demo run

# A fresh Python with timm only (no in21k on its path or in its modules): what a user of the exported folder has.
TIMM_ONLY = r"""
import json, sys
import timm, torch
from PIL import Image

folder, original, images = sys.argv[1], sys.argv[2], sys.argv[3:]
model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
from_pth = timm.create_model("local-dir:" + original, pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
x = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
levels = json.load(open(folder + "/tree.json"))["levels"]
with torch.no_grad():
    logits, logits_pth = model(x), from_pth(x)
out = {"labels": list(model.pretrained_cfg["label_names"]),
       "descriptions": model.pretrained_cfg["label_descriptions"],
       "same_as_original": float((logits - logits_pth).abs().max()),
       "levels": [[torch.softmax(logits[i, lv], 0).tolist() for lv in levels] for i in range(len(images))],
       "in21k_imported": any(m == "in21k" or m.startswith("in21k.") for m in sys.modules)}
print(json.dumps(out))
"""


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)


def _in21k(*args: str) -> subprocess.CompletedProcess:
    return _run("-m", "in21k", *args)


def test_timm_loads_the_export_and_gives_the_logits_in21k_predicts(demo_run, tmp_path: Path, capsys) -> None:
    model_pt = demo_run.out / "run" / "model.pt"
    prepared = demo_run.out / "prepared"
    folder = tmp_path / "export"
    done = _in21k("export", "--checkpoint", str(model_pt), "--out", str(folder), "--tree-head")
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "tree.json", "README.md"}

    # The original's published format: a bare state dict, with the architecture and the tree given.
    state = torch.load(model_pt, map_location="cpu", weights_only=True)
    original = tmp_path / "resnet10t_miil_21k.pth"
    torch.save({"state_dict": state["model"]}, original)
    from_pth = tmp_path / "export-pth"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(original),
                "--model",
                "resnet10t",
                "--tree",
                str(prepared / "tree.json"),
                "--image-size",
                "64",
                "--out",
                str(from_pth),
            ]
        )
        == 0
    )

    # Held-out images at the model's input size (64 px, lossless), and a text file among them.
    images = []
    for path in sorted((demo_run.out / "heldout").glob("*.jpg"))[:4]:
        images.append(tmp_path / f"{path.stem}.png")
        Image.open(path).convert("RGB").resize((64, 64), Image.BILINEAR).save(images[-1])
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # timm's install only, not in21k's sources
    theirs = _run("-c", TIMM_ONLY, str(folder), str(from_pth), *map(str, images), env=env)
    assert theirs.returncode == 0, theirs.stderr[-3000:]
    timm_out = json.loads(theirs.stdout.strip().splitlines()[-1])
    assert not timm_out["in21k_imported"]
    assert timm_out["same_as_original"] == 0.0  # the state-dict export is the same model

    tree = SemanticTree.from_dict(PreparedDataset.open(str(prepared)).tree_data())
    assert timm_out["labels"] == label_names(tree)  # head row i is class i of the prepared dataset
    assert all(name.split(" (n")[0] == tree.names[i] for i, name in enumerate(timm_out["labels"]))
    assert set(timm_out["descriptions"]) == set(timm_out["labels"]) and all(timm_out["descriptions"].values())

    predict = ["predict", "--json", "--top-k", "50", "--device", "cpu", *map(str, images), str(notes)]
    pred = _in21k(*predict, "--checkpoint", str(model_pt))  # the source model, as a user runs predict
    assert pred.returncode == 1, pred.stderr[-3000:]  # one input is not an image
    assert "BytesIO" not in pred.stdout + pred.stderr
    capsys.readouterr()
    assert main([*predict, "--checkpoint", str(folder)]) == 1  # the export, read back by in21k (in this process)
    outputs = [pred.stdout, capsys.readouterr().out]
    for stdout in outputs:
        rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert rows[-1]["input"] == str(notes) and rows[-1]["error"].startswith(f"{notes}: cannot decode image")
        for row, probs in zip(rows[:-1], timm_out["levels"], strict=True):
            assert len(row["levels"]) == len(tree.levels) == len(probs)
            for level in row["levels"]:
                k = level["level"]
                for top in level["top"]:
                    position = tree.levels[k].index(top["index"])
                    assert top["prob"] == pytest.approx(probs[k][position], abs=2e-6)

    card = (folder / "README.md").read_text()
    report = json.loads((prepared / "report.json").read_text())
    t = report["totals"]
    assert f"{t['classes_kept']:,} kept" in card and f"{t['train_samples']:,} train" in card
    assert report["clean"]["removed"] and all(line in card for line in clean_lines(report))  # the demo removes copies
    assert "semantic_top1" in card and "| level | classes | accuracy |" in card
    assert f'timm.create_model("local-dir:{folder}", pretrained=True)' in card
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["crop_mode"] == "squash" and config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert config["in21k"]["head"] == "semantic-softmax" and "levels" in json.loads((folder / "tree.json").read_text())


def test_the_export_feeds_init_teacher_and_a_flat_head_and_publishes_no_secret(demo_run, tmp_path: Path) -> None:
    from in21k.training.kd import build_teacher
    from in21k.training.model import build_model, load_init_checkpoint
    from in21k.training.pretrained import read_trained_model

    # A model file whose config still holds credentials (as one written before they were redacted would).
    state = torch.load(demo_run.out / "run" / "model.pt", map_location="cpu", weights_only=True)
    secret = "in21k-export-secret-value"
    state["config"]["loader"]["storage_options"] = {"key": "AKIAEXPORTTEST", "secret": secret}
    state["config"]["teacher"] = f"https://user:{secret}@example.com/t.pt"
    leaky = tmp_path / "model.pt"
    torch.save(state, leaky)
    flat = tmp_path / "flat"
    assert main(["export", "--checkpoint", str(leaky), "--out", str(flat)]) == 0
    for path in flat.iterdir():
        data = path.read_bytes()
        assert secret.encode() not in data and b"AKIAEXPORTTEST" not in data, path.name
    assert "levels" not in json.loads((flat / "tree.json").read_text())  # one softmax: no levels kept

    trained = read_trained_model(flat)
    assert trained.kind == "export" and trained.tree.num_levels == 1  # predict answers over the whole head
    tree = SemanticTree.from_dict(state["tree"])
    teacher = build_teacher(str(flat), tree=tree, device=torch.device("cpu"))  # the student's tree, per level
    x = torch.rand(2, 3, 64, 64)
    source = read_trained_model(demo_run.out / "run" / "model.pt").model
    with torch.no_grad():
        assert torch.equal(teacher(x), source(x))
    model = build_model(name="resnet10t", num_classes=tree.num_classes, image_size=64)
    report = load_init_checkpoint(model, flat)  # --init: every tensor, by name and shape
    assert not report.skipped and not report.missing
