"""Evaluation sets (``--against NAME=URL``): folders, tars and parquet files listed and read; bad ones refused in
one line before any work starts; an image that does not decode is counted, never fatal."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from in21k.errors import ConfigError, DataError
from in21k.pipeline.against import EvalSet, ImageSettings, fingerprint_images, parse_specs, read_chunk


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("eval")
    folder = root / "val"
    (folder / "n01440764").mkdir(parents=True)
    for k in range(3):
        (folder / "n01440764" / f"ILSVRC2012_val_{k:08d}.JPEG").write_bytes(_jpeg(k))
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "LOC_val_solution.csv").write_text("not an image, not listed\n")
    with tarfile.open(root / "val.tar", "w") as tar:
        for k in range(2):
            data = _jpeg(10 + k)
            info = tarfile.TarInfo(f"images/{k}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    images = pa.array(
        [{"bytes": _jpeg(20 + k), "path": f"test/{k}.jpg"} for k in range(2)],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"image": images, "label": [1, 2]}), root / "test.parquet")
    (root / "empty").mkdir()
    return {"folder": folder, "tar": root / "val.tar", "parquet": root / "test.parquet", "empty": root / "empty"}


def test_folder_tar_and_parquet_sets(sets: dict[str, Path]) -> None:
    folder = EvalSet.open("val", str(sets["folder"]))
    assert folder.kind == "folder" and [m for m, _ in folder.members] == [
        "broken.png",
        *[f"n01440764/ILSVRC2012_val_{k:08d}.JPEG" for k in range(3)],
    ]
    cols = fingerprint_images(read_chunk(folder.members, folder.kind, None), ImageSettings())
    assert cols["error"] == ["not_an_image", None, None, None]  # counted with its reason, the others fingerprinted
    assert cols["phash"][0] is None and all(h is not None for h in cols["phash"][1:])

    tar = EvalSet.open("tar", str(sets["tar"]))
    assert tar.kind == "tar" and [m for m, _ in tar.members] == ["0.jpg", "1.jpg"]
    got = read_chunk(tar.members, "tar", None)
    assert [d for _, d in got] == [_jpeg(10), _jpeg(11)]

    parquet = EvalSet.open("pq", str(sets["parquet"]))
    got = read_chunk(parquet.members, "parquet", None)
    assert [(m, d) for m, d in got] == [("test/0.jpg", _jpeg(20)), ("test/1.jpg", _jpeg(21))]


def test_bad_sets_are_one_line_errors(sets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NAME=URL"):
        parse_specs(["imagenet"])
    with pytest.raises(ConfigError, match="twice"):
        parse_specs(["a=/x", "a=/y"])
    with pytest.raises(DataError, match="no such file or folder"):
        EvalSet.open("val", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="holds no images"):
        EvalSet.open("val", str(sets["empty"]))


@pytest.mark.parametrize("which", ["missing", "empty"])
def test_prepare_refuses_a_bad_set_before_any_work(which: str, sets: dict[str, Path], tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "n01440764").mkdir(parents=True)  # a release of class folders
    (raw / "n01440764" / "n01440764_1.JPEG").write_bytes(_jpeg(30))
    url = str(tmp_path / "missing") if which == "missing" else str(sets["empty"])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "in21k", "prepare", "--raw", str(raw), "--out", str(out), "--against", f"val={url}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"in21k prepare: error: --against val={url}: ")
    assert "Traceback" not in proc.stderr and not out.exists()  # nothing written, no Ray started


@pytest.mark.ray
@pytest.mark.slow
def test_an_evaluation_set_changed_under_its_url_is_decided_over_what_the_shards_still_hold(
    tmp_path, ray_local, caplog
):
    """The set loses pictures between two runs into the same output: the duplicate check decides again, over the
    members still in the shards (an earlier rewrite cut the others out), and the manifest stays true to the tars."""
    import pyarrow.parquet as pq

    from in21k.pipeline import prepare
    from in21k.synth.planted import EVAL_DIR
    from tests.pipeline.conftest import prep_config, raw_arg, write_release

    raw, out = tmp_path / "raw", tmp_path / "out"
    write_release(raw, seed=11, plant=1, eval_images=8)
    evaluation = raw / EVAL_DIR
    config = prep_config(raw_arg(raw), out, shard_size=4, against=[f"synth-eval={evaluation}"])
    import json
    import logging
    import re

    def candidates() -> int:
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("looking for copies among")]
        return int(re.search(r"among ([\d,]+) images", said[-1]).group(1).replace(",", ""))

    with caplog.at_level(logging.INFO, logger="in21k.pipeline.job"):
        prepare(config)
        first, removed = candidates(), sum(json.loads((out / "report.json").read_text())["clean"]["removed"].values())
        for picture in sorted(p for p in evaluation.iterdir() if p.is_file())[:-2]:
            picture.unlink()
        prepare(config)
    assert removed > 0 and candidates() == first - removed  # what the first check cut out is not looked at again
    manifest = pq.read_table(out / "manifest", columns=["key", "status"]).to_pylist()
    in_shards = []
    for shard in sorted(out.glob("*/in21k-*.tar")):
        with tarfile.open(shard) as tar:
            in_shards += [m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".jpg")]
    assert len(in_shards) == len(set(in_shards))
    assert sorted(in_shards) == sorted(r["key"] for r in manifest if r["status"] == "written")
