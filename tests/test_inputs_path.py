"""A parquet set of WebP images and an exact class list, through every stage, as a user types the commands:

    in21k synth RAW --layout parquet --image-format webp
    in21k prepare --raw RAW --out DST --classes RAW/class_list.txt      (label index i = line i of the list)
    in21k train --data DST --init model.safetensors --teacher pytorch_model.bin --teacher-model resnet10t
    in21k predict --checkpoint RUN/model.pt IMAGE

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
    "--classes",
    "6",
    "--images",
    "14:30",
    "--seed",
    "5",
    "--large-share",
    "0",
    "--bad-share",
    "0.05",
    "--size",
    "48",
    "--min-images",
    "14",
    "--val-per-class",
    "2",
    "--layout",
    "parquet",
    "--image-format",
    "webp",
]
TRAIN = ["--model", "resnet10t", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--amp", "none",
         "--loader.num-workers", "0", "--max-steps-per-epoch", "3", "--val-max-batches", "1", "--no-plot"]  # fmt: skip


def test_parquet_webp_with_a_class_list_trains_from_timm_layout_weights(ray_local, tmp_path, capsys):  # noqa: F811
    import safetensors.torch
    import timm
    import torch

    raw, dst, run = tmp_path / "raw", tmp_path / "dst", tmp_path / "run"
    assert main(["synth", str(raw), *SYNTH]) == 0
    assert sorted(p.name for p in (raw / "data").iterdir())[-1] == "validation-00000-of-00001.parquet"
    listed = (raw / "class_list.txt").read_text().split()
    names = json.loads((raw / "synth_report.json").read_text())["processed"]
    listed = [w for w in listed if any(v["split"] != "small_classes" for v in names.get(w, {}).values())]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    capsys.readouterr()
    assert main(["prepare", "--raw", str(raw), "--out", str(dst), "--classes", str(tmp_path / "list.txt"),
                 "--size", "48", "--min-images", "14", "--val-per-class", "2", "--shard-size", "16",
                 "--no-progress"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes_kept"] == len(listed) and summary["rejected"] == 0
    assert summary["copied_at_size"] == 0  # WebP is decoded and encoded as JPEG
    assert summary["validation_samples"] == 2 * len(listed)  # the set's own validation split
    with tarfile.open(dst / "validation" / "in21k-validation-000000.tar") as tar:
        got = {m.name.split(".")[0]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".cls")}
        meta = {m.name.split(".")[0]: json.loads(tar.extractfile(m).read()) for m in tar.getmembers()
                if m.name.endswith(".json")}  # fmt: skip
        image = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg"))
    assert all(int(got[k]) == listed.index(meta[k]["wnid"]) for k in got)

    # Weights in timm's layout for this head: a state dict as model.safetensors and pytorch_model.bin.
    model = timm.create_model("resnet10t", pretrained=False, num_classes=len(listed))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert main(["train", "--data", str(dst), "--out", str(run), *TRAIN, "--init", str(tmp_path / "model.safetensors"),
                 "--teacher", str(tmp_path / "pytorch_model.bin"), "--teacher-model", "resnet10t"]) == 0  # fmt: skip
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
