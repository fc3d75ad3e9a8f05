"""A real ``kill -9`` of a running ``in21k prepare`` and a rerun: same bytes as an uninterrupted run.

The release has planted copies and an evaluation set (``--against``), so the job has every stage: the kill lands
while shards are written, or while the duplicate check rewrites them; both reruns end with the same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from in21k.pipeline import prepare
from in21k.pipeline.clean import DECISIONS_FILE, SUMMARY_FILE
from in21k.synth.planted import EVAL_DIR
from tests.pipeline.conftest import PREP, prep_config, raw_arg, write_release

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Files whose bytes must not depend on interruptions (stats and report.json carry timings).
COMPARED = ("_info.json", "classes.tsv", "tree.json", "_work/clean/decisions.parquet")


def command(raw: str, out: Path, eval_set: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "in21k",
        "prepare",
        "--raw",
        raw,
        "--out",
        str(out),
        "--num-cpus",
        "2",
        "--min-images",
        str(PREP["min_images"]),
        "--val-per-class",
        str(PREP["val_per_class"]),
        "--shard-size",
        "4",
        "--no-progress",
        "--against",
        f"synth-eval={eval_set}",
    ]


def outputs(out: Path) -> dict[str, bytes]:
    files = [*out.glob("train/*.tar"), *out.glob("validation/*.tar"), *out.glob("manifest/*.parquet")]
    files += [out / name for name in COMPARED]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(files)}


@pytest.fixture(scope="module")
def job(tmp_path_factory, ray_local) -> dict:
    """The release (planted copies, an evaluation set) and the outputs of an uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    raw = root / "raw"
    write_release(raw, seed=11, plant=1, eval_images=8)
    reference = root / "reference"
    summary = prepare(prep_config(raw_arg(raw), reference, shard_size=4, against=[f"synth-eval={raw / EVAL_DIR}"]))
    report = json.loads((reference / "report.json").read_text())
    assert sum(report["clean"]["removed"].values()) >= 5  # the check removed copies and evaluation matches
    return {"raw": raw, "eval": raw / EVAL_DIR, "summary": summary, "outputs": outputs(reference), "root": root}


def _kill_when(cmd: list[str], log: Path, ready) -> int:
    """Run ``cmd`` in its own session and SIGKILL the whole job as soon as ``ready()``; returns its exit code."""
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                if ready():
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return proc.returncode


def _rerun_and_compare(job: dict, out: Path) -> subprocess.CompletedProcess:
    rerun = subprocess.run(command(raw_arg(job["raw"]), out, job["eval"]), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert outputs(out) == job["outputs"]
    assert not list(out.rglob("*.tmp"))
    return rerun


def test_kill_9_while_shards_are_written_then_rerun_gives_identical_output(job) -> None:
    import webdataset as wds

    summary = job["summary"]
    total_shards = summary["train_shards"] + summary["validation_shards"]
    assert total_shards >= 20
    out = job["root"] / "killed_in_shards"

    def two_shards_done() -> bool:
        return (out / "stats").is_dir() and len(list((out / "stats").glob("*.json"))) >= 2

    log = job["root"] / "killed_in_shards.log"
    assert _kill_when(command(raw_arg(job["raw"]), out, job["eval"]), log, two_shards_done) == -signal.SIGKILL, (
        log.read_text()[-3000:]
    )
    done = len(list((out / "stats").glob("*.json")))
    assert 2 <= done < total_shards, f"kill did not land midway: {done}/{total_shards} shards finished"
    assert not (out / "_info.json").exists()

    rerun = _rerun_and_compare(job, out)
    assert "will not be redone" in rerun.stderr
    assert "reusing its fingerprints" in rerun.stderr  # the evaluation set is fingerprinted once
    keys = [
        s["__key__"]
        for s in wds.WebDataset(
            sorted(str(p) for p in out.glob("*/in21k-*.tar")), shardshuffle=False, empty_check=False
        )
    ]
    assert len(keys) == len(set(keys)) == summary["written"]


def test_kill_9_while_the_duplicate_check_rewrites_shards_then_rerun_gives_identical_output(job) -> None:
    out = job["root"] / "killed_in_clean"
    log = job["root"] / "killed_in_clean.log"
    decided = out / SUMMARY_FILE  # written once the decisions are complete; the shards are rewritten next
    assert _kill_when(command(raw_arg(job["raw"]), out, job["eval"]), log, decided.exists) == -signal.SIGKILL, (
        log.read_text()[-3000:]
    )
    import pyarrow.parquet as pq

    digest = json.loads(decided.read_text())["digest"]
    stats = [json.loads(p.read_text()) for p in (out / "stats").glob("*.json")]
    rewritten = sum(1 for s in stats if s.get("clean") == digest)
    touched = len(set(pq.read_table(out / DECISIONS_FILE, columns=["part"]).column("part").to_pylist()))
    assert rewritten < touched and not (out / "_info.json").exists()  # killed before the rewrite was over

    rerun = _rerun_and_compare(job, out)
    assert "reusing the duplicate decisions" in rerun.stderr and "will not be redone" in rerun.stderr
