"""``in21k bench dedup``: a planted synthetic release through ``prepare --against``, scored against its plan."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from in21k.cli import main


@pytest.mark.ray
@pytest.mark.slow
def test_bench_dedup_scores_the_planted_copies_as_a_user_runs_it(tmp_path) -> None:
    args = ["--classes", "6", "--images", "20:30", "--plant", "2", "--eval-images", "8", "--num-cpus", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "in21k", "bench", "dedup", *args, "--workdir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert all(result["recall"][kind] == 1.0 for kind in ("exact", "reencode", "rescale")), result["recall"]
    assert result["precision"] == 1.0 and result["eval_false_matches"] == 0
    # The colour check flags no more of the release's own images than the hash alone.
    assert result["with_colour_check"]["flagged_own_images"] <= result["hash_only"]["flagged_own_images"]
    exhaustive = result["exhaustive"]
    assert 0 < exhaustive["found_by_the_join"] <= exhaustive["pairs_verified"] <= exhaustive["pairs_within_distance"]
    assert result["release"]["written"] < result["release"]["members"] and result["nproc"] >= 1


def test_bench_dedup_refuses_a_release_too_small_to_plant_in(capsys) -> None:
    assert main(["bench", "dedup", "--classes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--classes >= 4" in err[0]
