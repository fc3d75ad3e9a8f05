"""A real ``kill -9`` of a running ``in21k prepare`` and a rerun: same bytes as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from in21k.pipeline import prepare
from tests.pipeline.conftest import PREP, prep_config, raw_arg, write_release

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Files whose bytes must not depend on interruptions (stats and report.json carry timings).
COMPARED = ("_info.json", "classes.tsv", "tree.json")


def command(raw: str, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "in21k", "prepare", "--raw", raw, "--out", str(out), "--num-cpus", "2",
        "--min-images", str(PREP["min_images"]), "--val-per-class", str(PREP["val_per_class"]),
        "--shard-size", "4", "--no-progress",
    ]  # fmt: skip


def outputs(out: Path) -> dict[str, bytes]:
    files = [*out.glob("train/*.tar"), *out.glob("validation/*.tar"), *out.glob("manifest/*.parquet")]
    files += [out / name for name in COMPARED]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(files)}


def test_kill_9_midway_then_rerun_gives_identical_output(tmp_path, ray_local) -> None:
    import webdataset as wds

    raw = tmp_path / "raw"
    write_release(raw, seed=11)
    reference = tmp_path / "reference"
    summary = prepare(prep_config(raw_arg(raw), reference, shard_size=4))
    total_shards = summary["train_shards"] + summary["validation_shards"]
    assert total_shards >= 20

    out = tmp_path / "out"
    log = (tmp_path / "killed.log").open("wb")
    # Its own session, so the kill takes the whole job: driver, the Ray it started and its workers.
    proc = subprocess.Popen(command(raw_arg(raw), out), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finished_at_kill = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            finished_at_kill = len(list((out / "stats").glob("*.json"))) if (out / "stats").is_dir() else 0
            if finished_at_kill >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    done = len(list((out / "stats").glob("*.json")))
    assert 2 <= done < total_shards, f"kill did not land midway: {done}/{total_shards} shards finished"
    assert not (out / "_info.json").exists()

    rerun = subprocess.run(command(raw_arg(raw), out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "will not be redone" in rerun.stderr

    assert outputs(out) == outputs(reference)
    assert not list(out.rglob("*.tmp"))
    keys = [
        s["__key__"]
        for s in wds.WebDataset(
            sorted(str(p) for p in out.glob("*/in21k-*.tar")), shardshuffle=False, empty_check=False
        )
    ]
    assert len(keys) == len(set(keys)) == summary["written"]
