"""``in21k predict`` on synthetic JPEGs with a model trained by ``in21k train``: our model.pt and checkpoints,
the original's published format (with our tree and with the built-in fall11 tree), URLs from a local HTTP
server, ``--json`` and ``--plot``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from in21k.cli import main
from in21k.tree import SemanticTree
from tests.http_static import static_server
from tests.loaders.prepared_data import class_colour, jpeg_bytes, make_prepared_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(prepared dataset, run dir) of a short resnet10t run at 32 px."""
    root = tmp_path_factory.mktemp("predict")
    data = make_prepared_dataset(
        root / "data", num_classes=8, shard_lengths_train=[16, 16], shard_lengths_val=[8], image_size=32, seed=5
    )
    run = root / "run"
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
                "--image-size",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--loader.num-workers",
                "0",
                "--amp",
                "none",
                "--no-plot",
                "--run.val-max-batches",
                "1",
                "--loader.transform",
                "eval",
            ]
        )
        == 0
    )
    return data, run


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Synthetic JPEGs of several sizes in a folder with a subfolder (and a non-image file that is ignored)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir()
    for i, (w, h) in enumerate([(48, 40), (32, 32), (100, 60)]):
        (folder / ("sub" if i == 2 else ".") / f"img{i}.jpg").write_bytes(jpeg_bytes(rng, class_colour(i), w, h))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _check_path(result: dict, tree: SemanticTree, threshold: float) -> None:
    path = result["path"]
    if path:
        assert path[0]["level"] == 0 and tree.classes[path[0]["index"]].parent == -1
    for above, below in zip(path, path[1:], strict=False):
        assert tree.classes[below["index"]].parent == above["index"]  # each kept class is the next one's parent
        assert below["level"] == above["level"] + 1
    for p in path:
        c = tree.classes[p["index"]]
        assert p["wnid"] == c.wnid and p["name"] == c.name and c.depth == p["level"]
        assert threshold < p["prob"] <= 1.0
    for level in result["levels"]:
        probs = [t["prob"] for t in level["top"]]
        assert probs == sorted(probs, reverse=True) and all(0 <= q <= 1 for q in probs)


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_predict_our_model_json_text_and_checkpoint(trained, images, capsys):
    data, run = trained
    tree = SemanticTree.load(data / "tree.json")
    assert main(["predict", "--checkpoint", str(run / "model.pt"), "--json", "--threshold", "0", str(images)]) == 0
    results = _json_lines(capsys.readouterr().out)
    assert [Path(r["input"]).name for r in results] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    for r in results:
        _check_path(r, tree, 0.0)
        # Threshold 0: the walk goes down to a class without children.
        leaf = r["path"][-1]["index"]
        assert not any(c.parent == leaf for c in tree.classes)
    # Text output with the default threshold, from a training checkpoint (tree found through its config).
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    assert main(["predict", "--checkpoint", str(ckpt), str(images / "img0.jpg")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(images / "img0.jpg")) and ("level  0" in out or "no level above 0.5" in out)
    # The same checkpoint with --json and threshold 0 gives the same path as model.pt (same final weights).
    assert main(["predict", "--checkpoint", str(ckpt), "--json", "--threshold", "0", str(images / "img0.jpg")]) == 0
    again = _json_lines(capsys.readouterr().out)[0]
    assert [p["index"] for p in again["path"]] == [p["index"] for p in results[0]["path"]]


def test_predict_original_format_with_our_tree_and_fall11(trained, images, tmp_path, capsys):
    data, run = trained
    final = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    original = tmp_path / "resnet10t_miil_21k.pth"
    torch.save({"state_dict": final["model"]}, original)
    # Without the architecture and tree: a clear error.
    assert main(["predict", "--checkpoint", str(original), str(images)]) == 2
    assert "--model resnet50 --tree fall11" in capsys.readouterr().err
    args = ["--json", "--threshold", "0", "--image-size", "32", str(images / "img1.jpg")]
    assert (
        main(
            ["predict", "--checkpoint", str(original), "--model", "resnet10t", "--tree", str(data / "tree.json"), *args]
        )
        == 0
    )
    a = _json_lines(capsys.readouterr().out)[0]
    assert main(["predict", "--checkpoint", str(run / "model.pt"), *args]) == 0
    b = _json_lines(capsys.readouterr().out)[0]
    assert [(p["index"], round(p["prob"], 4)) for p in a["path"]] == [
        (p["index"], round(p["prob"], 4)) for p in b["path"]
    ]
    # The built-in fall11 tree (11,221 classes): an untrained model in the original's plain layout.
    from in21k.training.model import build_model

    fall11 = SemanticTree.load("fall11")
    torch.manual_seed(0)
    plain = tmp_path / "plain.pth"
    torch.save(build_model(name="resnet10t", num_classes=fall11.num_classes).state_dict(), plain)
    assert main(["predict", "--checkpoint", str(plain), "--model", "resnet10t", "--tree", "fall11", *args]) == 0
    r = _json_lines(capsys.readouterr().out)[0]
    _check_path(r, fall11, 0.0)
    assert len(r["path"]) >= 2 and len(r["levels"]) == fall11.num_levels


def test_predict_urls_and_plot(trained, images, tmp_path, capsys):
    _, run = trained
    tree = SemanticTree.load(trained[0] / "tree.json")
    png = tmp_path / "out" / "pred.png"
    with static_server(images) as base:
        rc = main(
            [
                "predict",
                "--checkpoint",
                str(run / "model.pt"),
                "--json",
                "--threshold",
                "0.2",
                "--plot",
                str(png),
                f"{base}/img0.jpg",
                f"{base}/sub/img2.jpg",
                f"{base}/missing.jpg",
                str(images / "img1.jpg"),
            ]
        )
    assert rc == 1  # one input could not be fetched
    results = _json_lines(capsys.readouterr().out)
    assert [r["input"].rsplit("/", 1)[-1] for r in results] == ["img0.jpg", "img2.jpg", "missing.jpg", "img1.jpg"]
    assert "404" in results[2]["error"]
    for r in (results[0], results[1], results[3]):
        _check_path(r, tree, 0.2)
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 4 * 200  # four rows


def test_corrupt_image_is_reported(trained, tmp_path, capsys):
    _, run = trained
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(["predict", "--checkpoint", str(run / "model.pt"), "--json", str(bad)]) == 1
    assert "cannot decode image" in _json_lines(capsys.readouterr().out)[0]["error"]
