"""``in21k bench train`` on CPU at toy scale: writes its own shards, times synthetic and loader-fed training."""

from __future__ import annotations

import json

import pytest

from in21k.cli import main


@pytest.mark.slow
def test_bench_train_makes_data_and_reports_ratio(tmp_path, capsys):
    data = tmp_path / "bench"
    rc = main(
        [
            "bench",
            "train",
            "--make-data",
            str(data),
            "--make-images",
            "32",
            "--make-shards",
            "2",
            "--make-workers",
            "1",
            "--model",
            "resnet10t",
            "--batch-size",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--image-size",
            "32",
            "--loader.num-workers",
            "1",
            "--amp",
            "none",
            "--tree",
            "fall11",
        ]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["num_classes"] == 11221 and r["synthetic_img_s"] > 0 and r["loader_img_s"] > 0
    # Both rates are rounded to 0.1 img/s and the ratio to 0.001 in the report, hence the tolerance.
    assert r["loader_ratio"] == pytest.approx(r["loader_img_s"] / r["synthetic_img_s"], rel=0.05, abs=2e-3)
    info = json.loads((data / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 32 and (data / "tree.json").exists()
