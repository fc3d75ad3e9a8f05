"""The ``in21k prepare`` and ``in21k bench`` commands: errors before work, config round trip, bench smoke."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
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


@pytest.mark.ray
def test_joining_a_cluster_without_a_token_is_one_error_line(tmp_path: Path) -> None:
    """With token authentication on and no token anywhere (a fresh HOME: no ~/.ray/auth_token), ``--ray-address``
    stops where the connection is made with one line that names the variables to set; the cluster side of this
    (a protected cluster that refuses a driver) is in test_prepare_cluster.py."""
    import socket
    import subprocess
    import sys
    import tarfile

    raw = tmp_path / "raw"
    raw.mkdir()
    with tarfile.open(raw / "n01440764.tar", "w") as tar:
        member = tarfile.TarInfo("n01440764_1.JPEG")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"\xff\xd8\xff"))
    with socket.socket() as s:  # a port where nothing listens: the token check comes first
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(RAY_AUTH_MODE="token", HOME=str(tmp_path))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "in21k",
            "prepare",
            "--raw",
            str(raw),
            "--out",
            str(tmp_path / "out"),
            "--min-images",
            "1",
            "--val-per-class",
            "0",
            "--ray-address",
            address,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"in21k prepare: error: the Ray cluster at {address} requires an auth token")
    assert "RAY_AUTH_TOKEN_PATH" in errors[0] and "RAY_AUTH_TOKEN to the token" in errors[0]


def test_the_auth_error_says_which_variable_to_set(monkeypatch) -> None:
    """The three ways a cluster refuses a driver, each with its own advice (the first two run against a real
    protected cluster in test_prepare_cluster.py)."""
    from in21k.pipeline.job import _auth_advice

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert "none was given: set RAY_AUTH_TOKEN_PATH" in _auth_advice("h:1", [])
    assert "refused the auth token from RAY_AUTH_TOKEN_PATH" in _auth_advice("h:1", ["RAY_AUTH_TOKEN_PATH"])
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert "RAY_AUTH_MODE=disabled keeps the one in RAY_AUTH_TOKEN from being sent" in _auth_advice(
        "h:1", ["RAY_AUTH_TOKEN"]
    )


def test_a_cluster_that_does_not_answer_is_one_line_before_anything_is_written(tmp_path: Path, capsys) -> None:
    """``--ray-address`` naming a cluster that is not running: one ``error:`` line, and no ``DST/_work/``."""
    import socket

    (tmp_path / "raw").mkdir()
    out = tmp_path / "out"
    # A port held bound but not listening: connections are refused, and no other process (a local Ray of another
    # test) can take it while the command runs.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        argv = ["prepare", "--raw", str(tmp_path / "raw"), "--out", str(out), "--ray-address", f"127.0.0.1:{port}"]
        # A fresh process: a Ray that another test of this session left initialised here must not answer for it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        done = subprocess.run([sys.executable, "-m", "in21k", *argv], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    err = done.stderr
    assert err.count("\n") == 1 and "no Ray cluster answers at --ray-address" in err and "ray start" in err
    assert not out.exists()
