"""``in21k bench loader`` end to end on a tiny dataset: every contender runs and the ratios add up."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from in21k.cli import main


@pytest.mark.slow
def test_bench_loader_json(prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "loader",
        "--data",
        str(prepared),
        "--batch-size",
        "4",
        "--max-samples",
        "40",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--rounds",
        "1",
        "--warmup-epochs",
        "0",
        "--loader.num-workers",
        "2",
        "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    rates = result["img_per_s"]
    assert set(rates) == {
        "ours",
        "ours_no_decode",
        "imagefolder",
        "imagefolder_original",
        "limit",
        "limit_turbo",
        "limit_turbo_fast",
        "limit_turbo_batches",
    }
    assert all(v > 0 for v in rates.values())
    assert result["ratios"]["ours_vs_limit"] == pytest.approx(rates["ours"] / rates["limit"], rel=1e-2, abs=1e-3)
    # Ratios are rounded to 3 decimals: at 32 px the decode-only limit is far faster than a whole loader.
    turbo = rates["ours"] / rates["limit_turbo"]
    assert result["ratios"]["ours_vs_turbo_limit"] == pytest.approx(turbo, rel=1e-2, abs=1e-3)
    cpu = result["cpu_ms_per_img"]
    turbo_cpu = cpu["limit_turbo"] / cpu["ours"]
    assert result["cpu_ratios"]["ours_vs_turbo_limit"] == pytest.approx(turbo_cpu, rel=2e-2, abs=1e-3)
    assert result["samples_in_subset"] >= 40 and result["machine"]["nproc"] >= 1
    # Peers decode and squash only: with the default miil transform they are left out, and said so.
    assert "eval" in result["peers_left_out"] and "ours_vs_best_peer" not in result["ratios"]
    assert set(result["targets"]) == {
        "ours_vs_imagefolder >= 1.2",
        "ours_vs_imagefolder_original >= 1.2",
        "ours_vs_limit >= 0.9",
    }


@pytest.mark.slow
def test_bench_loader_eval_with_peers(prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "loader",
        "--data",
        str(prepared),
        "--batch-size",
        "4",
        "--max-samples",
        "40",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--rounds",
        "1",
        "--warmup-epochs",
        "0",
        "--loader.num-workers",
        "2",
        "--loader.transform",
        "eval",
        "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)  # LitData's progress output must not get into the JSON
    rates = result["img_per_s"]
    installed = {
        p
        for p, module in (("webdataset", "webdataset"), ("timm_wds", "webdataset"), ("litdata", "litdata"))
        if importlib.util.find_spec(module) is not None
    }
    assert {"ours", "limit", "limit_turbo", "limit_turbo_fast", "limit_turbo_batches"} | installed <= set(rates)
    ours_and_limits = {
        "ours",
        "ours_no_decode",
        "imagefolder",
        "imagefolder_original",
        "limit",
        "limit_turbo",
        "limit_turbo_fast",
        "limit_turbo_batches",
    }
    assert set(rates) - ours_and_limits == installed
    assert all(v > 0 for v in rates.values())
    assert "ours_vs_turbo_limit >= 0.85" in result["targets"]
    if installed:
        best = result["best_peer"]
        assert rates[best] == max(rates[p] for p in installed)
        assert result["ratios"]["ours_vs_best_peer"] == pytest.approx(rates["ours"] / rates[best], rel=1e-2, abs=1e-3)
        assert "ours_vs_best_peer >= 1.5" in result["targets"] and "ours_vs_best_peer" in result["cpu_ratios"]


def test_bench_loader_needs_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "loader"]) == 2
    assert "--data is required" in capsys.readouterr().err
