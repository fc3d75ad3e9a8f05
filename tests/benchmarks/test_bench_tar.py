"""``in21k bench tar``: ours and webdataset read the same samples; the per-sample figures and ratios are there."""

from __future__ import annotations

import json
from pathlib import Path

from in21k.cli import main


def test_bench_tar_json(prepared: Path, capsys) -> None:
    assert main(["bench", "tar", "--data", str(prepared), "--rounds", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 52 and result["shards"] == 8  # every sample of the 8 train shards, by both readers
    assert set(result["us_per_sample"]) == {"ours", "webdataset", "limit_read"}
    assert result["ratio_vs_webdataset"] > 0 and all(v > 0 for v in result["cpu_us_per_sample"].values())


def test_bench_tar_needs_a_local_dataset(capsys) -> None:
    assert main(["bench", "tar", "--data", "s3://bucket/p"]) == 2
    assert "local --data" in capsys.readouterr().err
