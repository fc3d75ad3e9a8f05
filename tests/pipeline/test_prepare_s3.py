"""``prepare`` reading the raw release from, and writing to, a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from in21k.pipeline import prepare
from tests.pipeline.conftest import PREP, prep_config, raw_arg, synth_report

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]


def local_shards(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/in21k-*.tar"))}


@pytest.fixture(scope="module")
def reference(releases, ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s3-reference")
    prepare(prep_config(raw_arg(releases["class-tars"]), out))
    return out


def test_s3_to_s3_with_storage_options(s3_server, releases, reference, ray_local) -> None:
    import fsspec

    bucket = s3_server.make_bucket("in21k-prepare-so")
    # The outer fall11_whole.tar on S3: nested members are read in place by byte range.
    s3_server.upload_dir(releases["whole-tar"], bucket, "raw")
    raw = f"s3://{bucket}/raw/{synth_report(releases['whole-tar'])['files'][0]}"
    summary = prepare(prep_config(raw, f"s3://{bucket}/out", storage_options=s3_server.storage_options))
    assert summary["written"] > 0 and summary["shards_run"] > 0
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    info = json.loads(fs.cat_file(f"{bucket}/out/_info.json"))
    remote = {f: fs.cat_file(f"{bucket}/out/{f}") for s in info["splits"].values() for f in s["filenames"]}
    assert remote == local_shards(reference)
    for name in (
        "classes.tsv",
        "tree.json",
        "imagenet21k_miil_tree.pth",
        "report.json",
        "report.md",
        "manifest/unsharded.parquet",
    ):
        assert fs.exists(f"{bucket}/out/{name}"), name
    assert not [p for p in fs.find(f"{bucket}/out") if p.endswith(".tmp")]


def test_a_resumed_job_on_s3_finishes(s3_server, releases, reference, ray_local) -> None:
    """A rerun over finished shards on S3: the listing of stats/ that decides what to redo must not hide, later, the
    stats files the rerun's tasks write (fsspec caches listings)."""
    import fsspec

    bucket = s3_server.make_bucket("in21k-prepare-resume")
    s3_server.upload_dir(releases["class-tars"], bucket, "raw")
    cfg = dict(storage_options=s3_server.storage_options)
    summary = prepare(prep_config(f"s3://{bucket}/raw", f"s3://{bucket}/out", **cfg))
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    stats = sorted(fs.ls(f"{bucket}/out/stats"))
    for path in stats[1:]:  # one shard finished, the others to redo
        fs.rm(path)
    again = prepare(prep_config(f"s3://{bucket}/raw", f"s3://{bucket}/out", **cfg))
    assert (again["shards_skipped"], again["shards_run"]) == (1, len(stats) - 1)
    assert again["written"] == summary["written"]
    info = json.loads(fs.cat_file(f"{bucket}/out/_info.json"))
    remote = {f: fs.cat_file(f"{bucket}/out/{f}") for s in info["splits"].values() for f in s["filenames"]}
    assert remote == local_shards(reference)


def test_cli_reads_s3_with_credentials_from_the_environment(s3_server, releases, reference, tmp_path) -> None:
    bucket = s3_server.make_bucket("in21k-prepare-env")
    s3_server.upload_dir(releases["class-tars"], bucket, "raw")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "in21k",
        "prepare",
        "--raw",
        f"s3://{bucket}/raw",
        "--out",
        str(out),
        "--num-cpus",
        "2",
        "--no-progress",
        "--min-images",
        str(PREP["min_images"]),
        "--val-per-class",
        str(PREP["val_per_class"]),
        "--shard-size",
        str(PREP["shard_size"]),
    ]
    env = {**os.environ, **s3_server.env}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["written"] > 0
    assert local_shards(out) == local_shards(reference)
    assert (out / "prepare_config.yaml").is_file()


def test_unreadable_source_fails_before_any_work(s3_server, tmp_path) -> None:
    from in21k.pipeline import PrepareConfig

    cfg = PrepareConfig(
        raw="s3://no-such-bucket-in21k/raw", out=str(tmp_path / "out"), storage_options=s3_server.storage_options
    )
    with pytest.raises(OSError, match="the bucket 'no-such-bucket-in21k' does not exist"):  # a StorageError
        prepare(cfg)
    assert not (tmp_path / "out").exists()
