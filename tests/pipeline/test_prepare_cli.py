"""The ``in21k prepare`` and ``in21k bench`` commands: errors before work, config round trip, bench smoke."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from in21k.cli import main


def test_bad_config_and_unreadable_source_fail_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["prepare", "--raw", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "raw").mkdir()
    assert (
        main(
            [
                "prepare",
                "--raw",
                str(tmp_path / "raw"),
                "--out",
                str(out),
                "--min-images",
                "10",
                "--val-per-class",
                "20",
            ]
        )
        == 2
    )
    assert "--val-per-class" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_image: 3\n")
    assert main(["prepare", "--raw", str(tmp_path / "raw"), "--out", str(out), "--config", str(bad)]) == 2
    assert "did you mean 'min_images'" in capsys.readouterr().err
    assert main(["prepare", "--raw", str(tmp_path / "raw"), "--out", str(out), "--exclude-subtree", "n00000001"]) == 2
    assert "not WordNet 3.0 noun synsets: n00000001" in capsys.readouterr().err
    assert main(["prepare", "--out", str(out)]) == 2
    assert "--raw is required" in capsys.readouterr().err
    assert not out.exists()


def test_print_config_merges_yaml_and_flags(tmp_path: Path, capsys) -> None:
    import yaml

    cfg = Path(__file__).parents[2] / "configs" / "prepare" / "demo.yaml"
    assert (
        main(
            [
                "prepare",
                "--raw",
                "r",
                "--out",
                "o",
                "--config",
                str(cfg),
                "--quality",
                "90",
                "--exclude-subtree",
                "n00007846",
                "--storage-options",
                '{"key": "k", "secret": "s"}',
                "--print-config",
            ]
        )
        == 0
    )
    merged = yaml.safe_load(capsys.readouterr().out)
    assert merged["min_images"] == 40 and merged["quality"] == 90 and merged["exclude_subtree"] == ["n00007846"]
    assert merged["storage_options"] == {"key": "<redacted>", "secret": "<redacted>"}


@pytest.mark.parametrize("name", ["fall11.yaml", "winter21.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    from in21k.config import resolve_config
    from in21k.pipeline import PrepareConfig

    cfg = resolve_config(
        PrepareConfig,
        config_file=Path(__file__).parents[2] / "configs" / "prepare" / name,
        overrides={"raw": "r", "out": "o"},
    )
    assert cfg.size == 224


def test_bench_decode_smoke(capsys) -> None:
    pytest.importorskip("cv2")  # the original's path is a contender only where OpenCV is installed
    assert main(["bench", "decode", "--images", "6", "--rounds", "1", "--tail-share", "0.3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bench"] == "decode" and result["images"] == 6 and "absent" not in result
    assert set(result["contenders"]) == {"ours", "original_cv2", "limit_turbo"}
    for figures in result["contenders"].values():
        assert figures["images_per_s_per_core"] > 0 and {"main_300_500px", "tail_800_4000px"} <= set(figures)
    assert result["ratio"] == result["ratio_vs_original"] > 0 and result["ratio_vs_limit"] > 0
    fidelity = result["fidelity"]
    assert fidelity["images"] == 6 and set(fidelity["mean_abs_diff"]) == {"ours", "original_cv2"}
    assert {"zone_plate_450px", "zone_plate_1500px"} == set(fidelity["alias_rms"])
    # INTER_LINEAR without antialiasing folds the zone plate back; ours must not.
    for plate in fidelity["alias_rms"].values():
        assert plate["ours"] < plate["original_cv2"]
    assert {"nproc", "cpu", "pillow_simd", "original_cv2_images_per_s_per_core"} <= set(result)


def test_a_cluster_that_does_not_answer_is_one_line_before_anything_is_written(tmp_path: Path, capsys) -> None:
    """``--ray-address`` naming a cluster that is not running: one ``error:`` line, and no ``DST/_work/``."""
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "raw").mkdir()
    out = tmp_path / "out"
    argv = ["prepare", "--raw", str(tmp_path / "raw"), "--out", str(out), "--ray-address", f"127.0.0.1:{port}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Ray cluster answers at --ray-address" in err and "ray start" in err
    assert not out.exists()
