"""``in21k bench storage``: local disk and every client read the same subset; figures and ratios are there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from in21k.cli import main


@pytest.mark.s3
def test_bench_storage_json(prepared: Path, capfd) -> None:
    args = [
        "bench",
        "storage",
        "--data",
        str(prepared),
        "--clients",
        "fsspec,pyarrow",
        "--max-samples",
        "52",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--rounds",
        "1",
        "--warmup-epochs",
        "0",
        "--loader.num-workers",
        "1",
        "--json",
    ]
    assert main(args) == 0
    out, err = capfd.readouterr()  # the loader workers' stderr too: no s3fs session finalised on a foreign loop
    assert "attached to a different loop" not in err and "Traceback" not in err
    result = json.loads(out)
    assert result["samples_in_subset"] == 52 and result["shards_in_subset"] == 8
    assert set(result["img_per_s"]) == {"local", "fsspec", "pyarrow"}
    assert all(v > 0 for v in result["cpu_ms_per_img"].values())
    assert set(result["cpu_ratio_vs_local"]) == set(result["ratio_vs_local"]) == {"fsspec", "pyarrow"}
    assert result["best_client"] in ("fsspec", "pyarrow")


def test_bench_storage_refuses_unknown_clients(prepared: Path, capsys) -> None:
    assert main(["bench", "storage", "--data", str(prepared), "--clients", "pyarrow,boto"]) == 2
    assert "boto" in capsys.readouterr().err
