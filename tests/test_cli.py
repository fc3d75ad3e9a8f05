"""The ``in21k`` entry point as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys

from in21k.tree import SemanticTree


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "in21k", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"in21k {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_working_commands():
    out = run("--help").stdout
    for command in ("synth", "tree"):
        assert command in out


def test_synth_then_tree_build_with_config_and_overrides(tmp_path):
    cfg = tmp_path / "synth.yaml"
    cfg.write_text("classes: 8\nimages: '3:5'\nseed: 7\n")
    summary = json.loads(run("synth", str(tmp_path / "raw"), "--config", str(cfg), "--seed", "8").stdout)
    assert summary["classes"] == 8
    saved = (tmp_path / "raw" / "synth_config.yaml").read_text()
    assert "seed: 8" in saved and "classes: 8" in saved
    out = tmp_path / "tree.json"
    pth = tmp_path / "imagenet21k_miil_tree.pth"
    built = json.loads(
        run(
            "tree",
            "build",
            "--synsets",
            str(tmp_path / "raw" / "synsets.txt"),
            "--out",
            str(out),
            "--miil-pth",
            str(pth),
        ).stdout
    )
    tree = SemanticTree.load(out)
    assert built["num_classes"] == tree.num_classes == 7
    assert SemanticTree.load(pth).to_dict() == tree.to_dict()
    assert (tmp_path / "tree.config.yaml").exists()
    info = json.loads(run("tree", "info", str(out), "--json").stdout)
    assert info["classes_per_level"] == [len(level) for level in tree.levels]


def test_bad_input_gives_a_clear_error_not_a_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("clases: 8\n")
    proc = run("synth", str(tmp_path / "raw"), "--config", str(cfg), check=False)
    assert proc.returncode == 2
    assert "unknown config key" in proc.stderr and "did you mean 'classes'" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad = tmp_path / "bad_synsets.txt"
    bad.write_text("n01440764\nn00000001\n")
    proc = run("tree", "build", "--synsets", str(bad), "--out", str(tmp_path / "t.json"), check=False)
    assert proc.returncode == 2 and "n00000001" in proc.stderr


def test_builtin_tree_info_needs_no_wordnet():
    info = json.loads(run("tree", "info", "fall11", "--json").stdout)
    assert info["num_classes"] == 11221


def test_only_problems_a_user_can_fix_end_in_one_line(monkeypatch, capsys):
    """An ``In21kError`` prints one line and exits 2; any other error (a bug, an error inside torch) keeps its
    traceback, even a ValueError or RuntimeError, which the CLI used to swallow into one line."""
    import pytest

    from in21k.cli import main
    from in21k.errors import DataError
    from in21k.tree import cli as tree_cli

    def fails_with(exc):
        def command(args):
            raise exc

        return command

    monkeypatch.setattr(tree_cli, "_info", fails_with(DataError("the tree file is damaged: rebuild it")))
    assert main(["tree", "info", "fall11"]) == 2
    assert capsys.readouterr().err.strip() == "in21k tree: error: the tree file is damaged: rebuild it"
    monkeypatch.setattr(tree_cli, "_info", fails_with(RuntimeError("a bug: shapes [3] and [4] do not match")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["tree", "info", "fall11"])
    monkeypatch.setattr(tree_cli, "_info", fails_with(ValueError("not ours")))
    with pytest.raises(ValueError, match="not ours"):
        main(["tree", "info", "fall11"])
