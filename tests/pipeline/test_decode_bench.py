"""``in21k bench decode`` without OpenCV: the original's path is reported absent, never stood in for."""

from __future__ import annotations

import sys

import pytest

from in21k.benchmarks.options import DecodeBenchConfig
from in21k.benchmarks.prepare import run_decode_bench
from in21k.errors import ConfigError


def test_without_cv2_the_original_is_absent(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes ``import cv2`` raise ImportError
    result = run_decode_bench(DecodeBenchConfig(images=3, rounds=1, tail_share=0.0))
    assert set(result["contenders"]) == {"ours", "limit_turbo"}
    assert result["fingerprint_cost"] == result["fingerprint"]["ratio"]  # the CPU fingerprints add to the image step
    assert "cv2 not importable" in result["absent"]["original_cv2"]
    assert result["ratio"] is None and result["ratio_vs_original"] is None and result["ratio_vs_limit"] > 0
    assert set(result["fidelity"]["mean_abs_diff"]) == {"ours"}
    assert "ours_at_least_as_good_as_original" not in result["fidelity"]


@pytest.mark.parametrize("bad", [{"images": 0}, {"rounds": 0}, {"tail_share": 1.5}])
def test_bad_options_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        DecodeBenchConfig(**bad).validate()
