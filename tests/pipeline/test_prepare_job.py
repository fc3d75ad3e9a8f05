"""``prepare`` end to end on synthetic releases in every layout, with a local Ray."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from in21k.errors import StorageError
from in21k.pipeline import prepare
from tests.pipeline.conftest import prep_config, raw_arg, synth_report

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LAYOUT_FILES = ("_info.json", "classes.tsv", "tree.json", "imagenet21k_miil_tree.pth", "report.json", "report.md")


def manifest(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "manifest").glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/in21k-*.tar"))}


@pytest.fixture(scope="module")
def prepared(releases, ray_local, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each layout prepared once (the .tar.gz one staged into its own staging folder)."""
    out = {}
    for layout, raw in releases.items():
        dst = tmp_path_factory.mktemp(f"out-{layout}")
        summary = prepare(prep_config(raw_arg(raw), dst))
        out[layout] = (dst, summary)
    return out


def test_layout_of_the_output(prepared) -> None:
    dst, summary = prepared["class-tars"]
    for name in LAYOUT_FILES:
        assert (dst / name).is_file(), name
    info = json.loads((dst / "_info.json").read_text())
    assert info["name"] == "imagenet-21k-p" and info["schema"] == "in21k.prepared/1"
    for split in ("train", "validation"):
        s = info["splits"][split]
        assert s["name"] == split
        assert s["num_samples"] == sum(s["shard_lengths"]) == summary[f"{split}_samples"] > 0
        for filename in s["filenames"]:
            assert (dst / filename).is_file()
            stem = Path(filename).stem.split("-")[-1]
            assert (dst / "stats" / f"{split}-{stem}.json").is_file()
            assert (dst / "manifest" / f"{split}-{stem}.parquet").is_file()
    assert len(info["splits"]["train"]["filenames"]) >= 3
    lines = (dst / "classes.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["index", "wnid", "name", "level", "train_count", "val_count"]
    assert len(lines) - 1 == info["num_classes"] == summary["classes_kept"]
    assert [int(line.split("\t")[5]) for line in lines[1:]] == [3] * info["num_classes"]


@pytest.mark.parametrize("layout", ["class-tars", "whole-tar", "whole-tar-gz", "folders"])
def test_every_member_is_accounted_for(prepared, releases, layout) -> None:
    dst, summary = prepared[layout]
    report = synth_report(releases[layout])
    rows = manifest(dst)
    assert len(rows) == report["totals"]["members"] == summary["raw_members"]
    status = Counter(r["status"] for r in rows)
    assert status["written"] + status["rejected"] + status["dropped_class"] == report["totals"]["members"]
    assert (status["written"], status["rejected"], status["dropped_class"]) == (
        summary["written"],
        summary["rejected"],
        summary["dropped_class"],
    )
    # Per kept class: written = the synth's readable members, rejected = its unreadable ones.
    kept = {line.split("\t")[1] for line in (dst / "classes.tsv").read_text().splitlines()[1:]}
    for c in report["classes"]:
        written = sum(1 for r in rows if r["wnid"] == c["wnid"] and r["status"] == "written")
        if c["wnid"] in kept:
            assert written == c["readable"], c["wnid"]
        else:
            assert written == 0
            assert all(r["status"] == "dropped_class" for r in rows if r["wnid"] == c["wnid"])
    # Every member of the synth report appears by name, with one row each.
    names = Counter((r["wnid"], r["member"]) for r in rows)
    assert set(names.values()) == {1}
    assert set(names) == {(w, m) for w, members in report["members"].items() for m in members}
    reasons = {r["reason"] for r in rows if r["status"] == "dropped_class"}
    assert {"not_wordnet_noun", "too_few_images"} <= reasons
    rejected = {r["reason"] for r in rows if r["status"] == "rejected"}
    assert rejected <= {"empty", "truncated", "not_an_image"} and rejected
    bad_kinds = {"truncated": "truncated", "empty": "empty", "garbage": "not_an_image"}
    for r in rows:
        kind = report["members"][r["wnid"]][r["member"]]
        if r["status"] == "rejected":
            assert r["reason"] == bad_kinds[kind]
        elif r["status"] == "written":
            assert kind in ("jpeg", "cmyk", "gray", "png") and (r["width"], r["height"]) == (224, 224)


def test_layouts_give_identical_shards(prepared, releases) -> None:
    reference = shard_bytes(prepared["class-tars"][0])
    assert reference
    for layout in ("whole-tar", "whole-tar-gz", "folders"):
        assert shard_bytes(prepared[layout][0]) == reference, layout
    gz_out = prepared["whole-tar-gz"][0]
    assert (gz_out / "_staging" / "_staging_complete.json").is_file()
    report = json.loads((gz_out / "report.json").read_text())
    assert "streamed once" in report["note"]
    # Streamed whole anyway: the report identifies the archive by its MD5 and size.
    archive = Path(raw_arg(releases["whole-tar-gz"])).read_bytes()
    identity = report["release"]
    assert (identity["md5"], identity["outer_size"]) == (hashlib.md5(archive).hexdigest(), len(archive))


def test_train_shards_mix_classes(prepared) -> None:
    dst, summary = prepared["class-tars"]
    rows = [r for r in manifest(dst) if r["split"] == "train" and r["status"] == "written"]
    per_shard: dict[int, set] = {}
    for r in rows:
        per_shard.setdefault(r["shard"], set()).add(r["wnid"])
    kept = summary["classes_kept"]
    # 12-sample shards over 4-5 classes: a class-sorted cut would give 1-2 classes per shard.
    assert min(len(v) for v in per_shard.values()) >= min(3, kept)


def test_read_back_with_webdataset(prepared) -> None:
    import io

    import webdataset as wds
    from PIL import Image

    dst, _ = prepared["class-tars"]
    info = json.loads((dst / "_info.json").read_text())
    keys = []
    for split in ("train", "validation"):
        urls = [str(dst / f) for f in info["splits"][split]["filenames"]]
        n = 0
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"])
            assert int(sample["cls"]) == meta["class"]
            assert sample["__key__"].startswith(meta["wnid"] + "_")
            img = Image.open(io.BytesIO(sample["jpg"]))
            assert img.format == "JPEG" and img.size == (224, 224) and img.mode == "RGB"
            keys.append(sample["__key__"])
            n += 1
        assert n == info["splits"][split]["num_samples"]
    assert len(keys) == len(set(keys))


def test_read_back_with_timm(prepared) -> None:
    from timm.data import create_dataset

    dst, summary = prepared["class-tars"]
    for split, n in (("train", summary["train_samples"]), ("validation", summary["validation_samples"])):
        ds = create_dataset("wds/imagenet-21k-p", root=str(dst), split=split, is_training=False, batch_size=1)
        assert len(ds) == n
        targets = [target for img, target in ds]
        assert len(targets) == n
        assert set(targets) <= set(range(summary["classes_kept"]))
        img, _ = next(iter(ds))
        assert img.size == (224, 224)


def test_rerun_skips_finished_shards_and_refuses_other_options(prepared, releases, ray_local) -> None:
    dst, first = prepared["class-tars"]
    before = shard_bytes(dst)
    again = prepare(prep_config(raw_arg(releases["class-tars"]), dst))
    assert again["shards_run"] == 0 and again["shards_skipped"] == first["shards_run"]
    assert shard_bytes(dst) == before
    assert ray_local.is_initialized()  # prepare leaves alone a Ray it did not start
    with pytest.raises(ValueError, match="other options.*quality"):
        prepare(prep_config(raw_arg(releases["class-tars"]), dst, quality=80))


def test_a_shard_that_keeps_failing_stops_the_job_and_a_rerun_resumes(releases, ray_local, tmp_path) -> None:
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(releases["class-tars"], raw)
    dst = tmp_path / "out"
    prepare(prep_config(str(raw), dst, max_retries=1))
    complete = shard_bytes(dst)
    # Unfinish two shards, then take away a class tar they read: the index is cached, so only those
    # shard tasks see the loss; a missing file is no outage, so the job stops at once, naming the shard.
    for name in ("train-000000", "train-000001"):
        (dst / "stats" / f"{name}.json").unlink()
    missing = pq.read_table(dst / "manifest" / "train-000000.parquet").column("source")[0].as_py()
    Path(missing).rename(missing + ".away")
    with pytest.raises(StorageError, match=r"shard train/in21k-train-00000[01]\.tar failed: .*No such file"):
        prepare(prep_config(str(raw), dst, max_retries=1))
    Path(missing + ".away").rename(missing)
    summary = prepare(prep_config(str(raw), dst, max_retries=1))
    assert summary["shards_run"] <= 2 and shard_bytes(dst) == complete


def test_the_local_ray_has_a_private_token_of_its_own(ray_local) -> None:
    """The session's local Ray, started as ``prepare`` starts one: token authentication on, a fresh 256-bit token in
    a 0600 file of a 0700 folder, named to Ray's processes through their environment and on no command line."""
    import os
    import stat

    from in21k.pipeline.job import TOKEN_FILE_PREFIX

    path = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert path.parent.name.startswith(TOKEN_FILE_PREFIX)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0

    @ray_local.remote(num_cpus=0)
    def seen() -> tuple[str | None, str | None]:
        return os.environ.get("RAY_AUTH_MODE"), os.environ.get("RAY_AUTH_TOKEN_PATH")

    assert ray_local.get(seen.remote()) == ("token", str(path))
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert token.encode() not in cmdline.read_bytes(), cmdline
        except OSError:  # the process ended meanwhile
            continue
