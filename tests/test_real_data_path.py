"""The README's path for real data, exactly as a user types it, on every storage a user has.

    in21k prepare --raw <local release> --out URL --against synth-eval=EVAL   (local Ray)
    in21k audit --data URL --against synth-eval=EVAL --json
    in21k train --data URL --out RUN ...                    (no --tree: the dataset's own tree, read from URL)
    in21k predict --checkpoint RUN/model.pt IMAGE...
    in21k finetune --checkpoint RUN/model.pt --data URL ...

with URL on a local S3-compatible server (SeaweedFS), on a local GCS emulator (fake-gcs-server), and, for the
training reads, on a local static HTTP server. The release holds planted copies and the pictures of an
evaluation set (EVAL: on the S3 server for the S3 run, on the GCS emulator for the GCS run). Every command runs as
its own process with credentials and endpoints from the environment, as on a user's machine. The same prepare
writes the same bytes everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from in21k import storage
from in21k.dataset import INFO_FILE, TREE_FILE
from tests.http_static import static_server

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.gcs, pytest.mark.slow]

PREPARE = ["--min-images", "12", "--val-per-class", "3", "--shard-size", "16", "--no-progress"]
TRAIN = [
    "--model", "resnet10t",
    "--image-size", "32",
    "--epochs", "1",
    "--batch-size", "8",
    "--amp", "none",
    "--loader.num-workers", "1",
    "--run.max-steps-per-epoch", "4",
    "--run.val-max-batches", "2",
    "--no-plot",
]  # fmt: skip
FINETUNE = [
    "--epochs", "1",
    "--batch-size", "8",
    "--amp", "none",
    "--loader.num-workers", "1",
    "--head-init", "map",
    "--run.max-steps-per-epoch", "3",
    "--run.val-max-batches", "2",
    "--image-size", "32",
]  # fmt: skip


def in21k(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run ``in21k ARGS`` as a user would; its stdout, or a failure that shows what it printed."""
    proc = subprocess.run(
        [sys.executable, "-m", "in21k", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"in21k {' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    in21k(
        "synth",
        str(out),
        "--classes",
        "6",
        "--images",
        "22:30",
        "--seed",
        "5",
        "--large-share",
        "0",
        "--plant",
        "1",
        "--eval-images",
        "6",
    )
    return out


@pytest.fixture(scope="module")
def images(raw: Path, tmp_path_factory) -> list[str]:
    """A few real JPEG members of the raw release, as files a user would predict."""
    import tarfile

    out = tmp_path_factory.mktemp("photos")
    files = []
    for tar_path in sorted(raw.glob("n*.tar"))[:2]:
        with tarfile.open(tar_path) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".JPEG") and m.size > 1000)
            path = out / Path(member.name).name
            path.write_bytes(tar.extractfile(member).read())
            files.append(str(path))
    return files


def shards_of(url: str, server) -> dict[str, bytes]:
    """Every shard's bytes of the prepared dataset at ``url``, read with the server's credentials."""
    from in21k import storage
    from in21k.dataset import PreparedDataset

    with server.activate():
        ds = PreparedDataset.open(url)
        return {s.url[len(url) + 1 :]: storage.read_bytes(s.url) for split in ds.splits for s in ds.shards(split)}


def the_real_data_path(url: str, server, raw: Path, images: list[str], tmp: Path, eval_set: str) -> dict[str, bytes]:
    env = server.env
    against = ["--against", f"synth-eval={eval_set}"]
    summary = last_json(in21k("prepare", "--raw", str(raw), "--out", url, *PREPARE, *against, env=env))
    assert summary["written"] > 0 and summary["train_shards"] >= 2 and summary["validation_samples"] > 0
    with server.activate():
        report = json.loads(storage.read_bytes(f"{url}/report.json"))
    assert report["clean"]["removed"]["eval_match"] == 3 and report["rejection_reasons"]["eval_match"] == 3
    # The audit of what was written finds no picture of the evaluation set left; the unreadable one is counted.
    audit = json.loads(in21k("audit", "--data", url, *against, "--json", "--no-progress", env=env))
    assert audit["pairs"] == [] and audit["fingerprints_from"] == "manifest"
    assert audit["dataset_images"] == summary["written"] and audit["eval_sets"][0]["unreadable"] == 1

    run = tmp / "run"
    result = last_json(in21k("train", "--data", url, "--out", str(run), *TRAIN, env=env))
    assert result["steps"] == 4 and result["val"]["samples"] > 0
    assert (run / "model.pt").exists()

    out = in21k("predict", "--checkpoint", str(run / "model.pt"), "--json", *images, env=env)
    predictions = [json.loads(line) for line in out.strip().splitlines()]
    assert len(predictions) == len(images) and all(p["levels"] and p.get("error") is None for p in predictions)

    ft = last_json(
        in21k(
            "finetune",
            "--checkpoint",
            str(run / "model.pt"),
            "--data",
            url,
            "--out",
            str(tmp / "ft"),
            *FINETUNE,
            env=env,
        )
    )
    # The same dataset's classes: every row of the new head comes from the 21K head.
    assert ft["steps"] == 3 and ft["head_mapped_rows"] == ft["classes"] == summary["classes_kept"]
    return shards_of(url, server)


def test_s3_gcs_and_http(raw, images, s3_server, gcs_server, tmp_path) -> None:
    from in21k.synth.planted import EVAL_DIR

    bucket = s3_server.make_bucket("in21k-real-path")
    s3_server.upload_dir(raw / EVAL_DIR, bucket, "eval/val")
    s3_url = f"s3://{bucket}/imagenet21k-p"
    s3_shards = the_real_data_path(s3_url, s3_server, raw, images, tmp_path / "s3", f"s3://{bucket}/eval/val")
    gcs_server.make_bucket("in21k-real-path")
    with gcs_server.activate():
        evaluation = storage.Store("gs://in21k-real-path/eval/val")
        for path in sorted(p for p in (raw / EVAL_DIR).rglob("*") if p.is_file()):
            evaluation.write_bytes(path.relative_to(raw / EVAL_DIR).as_posix(), path.read_bytes())
    gs_shards = the_real_data_path(
        "gs://in21k-real-path/p", gcs_server, raw, images, tmp_path / "gs", "gs://in21k-real-path/eval/val"
    )
    assert s3_shards == gs_shards and len(s3_shards) >= 3

    # http(s):// for training reads: the same dataset served by a static web server (a copy on local disk).
    local = tmp_path / "served"
    for name, data in s3_shards.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    with s3_server.activate():
        for name in (INFO_FILE, TREE_FILE):
            (local / name).write_bytes(storage.read_bytes(f"{s3_url}/{name}"))
    with static_server(local, ranges=True) as http_url:
        result = last_json(in21k("train", "--data", http_url, "--out", str(tmp_path / "http-run"), *TRAIN))
    assert result["steps"] == 4 and result["val"]["samples"] > 0
