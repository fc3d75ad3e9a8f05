"""The processed release's archive and a parquet set of WebP images, with an exact class list, through every
stage, as a user types the commands:

    in21k synth RAW --layout parquet --image-format webp        (and --layout processed-tar-gz: the same images)
    in21k prepare --raw RAW --out DST --classes list.txt        (label index i = line i of the list)
    in21k train --data DST --init model.safetensors --teacher pytorch_model.bin --teacher-model resnet10t
    in21k predict --checkpoint RUN/model.pt IMAGE

Both inputs give the same samples under the same labels and splits (the WebP images decode to other pixels, so
only the JPEG bytes differ); one training run serves both, since the prepared datasets are alike.

``model.safetensors`` and ``pytorch_model.bin`` are weights in timm's layout for a model with this dataset's head
(made here with ``timm.create_model(pretrained=False)``, as published ``*.miil_in21k`` weights are for
``--classes imagenet21k_miil``): they load whole, head included, with no remapping.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from in21k.cli import main
from tests.pipeline.conftest import ray_local  # noqa: F401 - the session's one local Ray

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SYNTH = [
    "--classes", "6",
    "--images", "14:30",
    "--seed", "5",
    "--large-share", "0",
    "--bad-share", "0.05",
    "--size", "48",
    "--min-images", "14",
    "--val-per-class", "2",
]  # fmt: skip
PREPARE = ["--size", "48", "--min-images", "14", "--val-per-class", "2", "--shard-size", "16", "--no-progress"]
TRAIN = [
    "--model", "resnet10t",
    "--image-size", "32",
    "--epochs", "1",
    "--batch-size", "8",
    "--amp", "none",
    "--loader.num-workers", "0",
    "--run.max-steps-per-epoch", "3",
    "--run.val-max-batches", "1",
    "--no-plot",
]  # fmt: skip


def labels(dst: Path) -> dict[str, tuple[str, bytes, str]]:
    """key -> (split, .cls, wnid) of every sample of a prepared dataset."""
    out = {}
    for path in sorted(dst.glob("*/in21k-*.tar")):
        with tarfile.open(path) as tar:
            parts: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                parts.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, p in parts.items():
            out[key] = (path.parent.name, p["cls"], json.loads(p["json"])["wnid"])
    return out


def test_processed_and_parquet_webp_with_a_class_list_train_from_timm_layout_weights(ray_local, tmp_path, capsys):  # noqa: F811
    import safetensors.torch
    import timm
    import torch

    raw, gz, dst, run = tmp_path / "raw", tmp_path / "gz", tmp_path / "dst", tmp_path / "run"
    assert main(["synth", str(raw), *SYNTH, "--layout", "parquet", "--image-format", "webp"]) == 0
    assert main(["synth", str(gz), *SYNTH, "--layout", "processed-tar-gz"]) == 0
    assert sorted(p.name for p in (raw / "data").iterdir())[-1] == "validation-00000-of-00001.parquet"
    listed = (raw / "class_list.txt").read_text().split()
    names = json.loads((raw / "synth_report.json").read_text())["processed"]
    listed = [w for w in listed if any(v["split"] != "small_classes" for v in names.get(w, {}).values())]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    capsys.readouterr()
    classes = ["--classes", str(tmp_path / "list.txt")]
    assert main(["prepare", "--raw", str(raw), "--out", str(dst), *classes, *PREPARE]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes_kept"] == len(listed) and summary["rejected"] == 0
    assert summary["copied_at_size"] == 0  # WebP is decoded and encoded as JPEG
    assert summary["validation_samples"] == 2 * len(listed)  # the set's own validation split
    assert (
        main(
            [
                "prepare",
                "--raw",
                str(gz / "imagenet21k_resized.tar.gz"),
                "--out",
                str(tmp_path / "dst-gz"),
                *classes,
                *PREPARE,
            ]
        )
        == 0
    )
    from_gz = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert from_gz["copied_at_size"] > 0 and from_gz["written"] == summary["written"]
    webp, jpeg = labels(dst), labels(tmp_path / "dst-gz")
    assert webp == jpeg and all(int(cls) == listed.index(wnid) for _, cls, wnid in webp.values())
    with tarfile.open(dst / "validation" / "in21k-validation-000000.tar") as tar:
        image = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg"))

    # Weights in timm's layout for this head: a state dict as model.safetensors and pytorch_model.bin.
    model = timm.create_model("resnet10t", pretrained=False, num_classes=len(listed))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert (
        main(
            [
                "train",
                "--data",
                str(dst),
                "--out",
                str(run),
                *TRAIN,
                "--init",
                str(tmp_path / "model.safetensors"),
                "--teacher",
                str(tmp_path / "pytorch_model.bin"),
                "--teacher-model",
                "resnet10t",
            ]
        )
        == 0
    )
    log = (run / "logs" / "rank-0.log").read_text()
    assert f"loaded {len(state)} tensors, skipped 0, model tensors not in checkpoint: 0" in log
    assert "KD teacher: resnet10t" in log

    (tmp_path / "photo.jpg").write_bytes(image)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "model.pt"), "--json", str(tmp_path / "photo.jpg")]) == 0
    prediction = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert prediction["path"] and all(listed[step["index"]] == step["wnid"] for step in prediction["path"])


def test_a_class_list_that_names_a_missing_class_stops_before_indexing(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    assert main(["synth", str(raw), "--classes", "6", "--images", "2:3", "--layout", "folders"]) == 0
    capsys.readouterr()
    rc = main(["prepare", "--raw", str(raw), "--out", str(tmp_path / "out"), "--classes", "imagenet21k_miil"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len([line for line in err if "error:" in line]) == 1
    assert "the class list imagenet21k_miil has 11,2" in err[-1] and "more. Give the release" in err[-1]
    assert not (tmp_path / "out" / "_work" / "index.json").exists()
