"""``in21k bench loader`` end to end on a tiny dataset: every contender runs and the ratios add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from in21k.cli import main


@pytest.mark.slow
def test_bench_loader_json(prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "loader", "--data", str(prepared), "--batch-size", "4", "--max-samples", "40", "--image-size",
            "32", "--epochs", "1", "--rounds", "1", "--warmup-epochs", "0", "--loader.num-workers", "2",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    rates = result["img_per_s"]
    assert set(rates) == {"ours", "ours_no_decode", "imagefolder", "imagefolder_original", "limit"}
    assert all(v > 0 for v in rates.values())
    assert result["ratios"]["ours_vs_limit"] == pytest.approx(rates["ours"] / rates["limit"], rel=1e-2)
    assert result["samples_in_subset"] >= 40 and result["machine"]["nproc"] >= 1
    assert set(result["targets"]) == {
        "ours_vs_imagefolder >= 1.2", "ours_vs_imagefolder_original >= 1.2", "ours_vs_limit >= 0.9"
    }  # fmt: skip


def test_bench_loader_needs_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "loader"]) == 2
    assert "--data is required" in capsys.readouterr().err
