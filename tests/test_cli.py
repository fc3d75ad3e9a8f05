"""The ``in21k`` entry point as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from in21k.cli import build_parser, main
from in21k.tree import SemanticTree

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


def commands(parser=None, prefix=()) -> list[tuple[str, ...]]:
    """Every runnable command of the CLI (``("bench", "tar")``, ...), found in the parser itself."""
    parser = parser or build_parser()
    if not parser._subparsers:
        return [prefix]
    sub = next(a for a in parser._subparsers._group_actions if hasattr(a, "choices"))
    return [c for name, p in sub.choices.items() for c in commands(p, (*prefix, name))]


@pytest.mark.parametrize("command", commands(), ids=" ".join)
def test_print_config_works_alone_on_every_command(command, capsys):
    """No required flag is needed to look at a command's config: required options print empty."""
    assert main([*command, "--print-config"]) == 0
    assert isinstance(yaml.safe_load(capsys.readouterr().out), dict)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_print_config_works_alone_on_every_config_file(path, capsys):
    assert main([path.parent.name, "--config", str(path), "--print-config"]) == 0
    merged = yaml.safe_load(capsys.readouterr().out)
    file = yaml.safe_load(path.read_text())
    assert {k: merged[k] for k in file if not isinstance(file[k], dict)} == {
        k: v for k, v in file.items() if not isinstance(v, dict)
    }


def test_print_config_still_checks_everything_but_the_required_options(capsys):
    assert main(["prepare", "--min-images", "10", "--val-per-class", "20", "--print-config"]) == 2
    assert "--val-per-class" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["train", "--num-workers", "8"], "unknown flag --num-workers (did you mean --loader.num-workers?)"),
        (["prepare", "--raw-dir", "x"], "unknown flag --raw-dir (did you mean --raw?)"),
        (["bench", "tar", "--bogus"], "unknown flag --bogus (in21k bench tar --help lists the flags)"),
        (["train", "--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
    ],
)
def test_a_bad_flag_is_one_line_naming_the_closest_known_flag(argv, hint, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and hint in err and "usage" not in err


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["synth", "OUT", "--images", "9:3"], "need 1 <= MIN <= MAX"),
        (["synth", "OUT", "--classes", "1"], "--classes must be at least 2"),
        (["demo", "--heldout-classes", "0"], "--heldout-classes"),
        (["demo", "--configs-dir", "MISSING"], "--configs-dir"),
        (["bench", "prepare", "--workdir", "MISSING"], "--workdir"),
    ],
)
def test_bad_values_are_config_errors(argv, hint, tmp_path, capsys):
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and hint in err
    assert not (tmp_path / "OUT").exists()


def test_a_closed_pipe_ends_quietly():
    """``in21k tree info fall11 | head``: the reader goes away before we write; no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "in21k", "tree", "info", "fall11"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the command prints anything: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""
