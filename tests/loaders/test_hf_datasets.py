"""Hugging Face ``datasets`` reads the demo's shards as they are: ``load_dataset("webdataset", data_files=...)``
gives each sample's image and class index (``.cls``), in a fresh Python that imports ``datasets`` only."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # the session's demo run

pytest.importorskip("datasets")

# What docs/loader.md shows, with the cache in a temporary folder and nothing asked of the network.
READ = r"""
import json, sys
from datasets import load_dataset

root, cache = sys.argv[1], sys.argv[2]
info = json.load(open(f"{root}/_info.json"))
files = {split: [f"{root}/{name}" for name in entry["filenames"]] for split, entry in info["splits"].items()}
ds = load_dataset("webdataset", data_files=files, cache_dir=cache)
out = {split: [(r["__key__"], r["cls"], r["json"]["wnid"], r["jpg"].size) for r in ds[split]] for split in ds}
print(json.dumps(out))
"""


def _ours(prepared: Path, split: str) -> dict[str, tuple[int, str, tuple[int, int]]]:
    """key -> (class index, wnid, image size) as our shards hold them, read with tarfile."""
    from PIL import Image

    info = json.loads((prepared / "_info.json").read_text())
    out: dict[str, tuple[int, str, tuple[int, int]]] = {}
    for name in info["splits"][split]["filenames"]:
        with tarfile.open(prepared / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for member, data in members.items():
            if member.endswith(".cls"):
                key = member[: -len(".cls")]
                meta = json.loads(members[f"{key}.json"])
                size = Image.open(io.BytesIO(members[f"{key}.jpg"])).size
                out[key] = (int(data), meta["wnid"], size)
    return out


def test_load_dataset_webdataset_gives_images_and_class_indices(demo_run, tmp_path: Path) -> None:
    prepared = demo_run.out / "prepared"
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-c", READ, str(prepared), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    tree = json.loads((prepared / "tree.json").read_text())
    wnid_of = {c["index"]: c["wnid"] for c in tree["classes"]}
    for split in ("train", "validation"):
        ours = _ours(prepared, split)
        got = {key: (cls, wnid, tuple(size)) for key, cls, wnid, size in theirs[split]}
        assert got == ours and len(got) == len(theirs[split]) > 0  # every sample once, with its own label
        assert all(wnid_of[cls] == wnid for cls, wnid, _ in got.values())  # the index is the tree's class
