"""What can be checked here of the container images and cluster launchers in docker/.

No Docker engine, cloud or SLURM here: the files must parse, every path they copy must exist, and every
``in21k`` command line they contain must be accepted by our CLI with its config files valid.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from in21k.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
LAUNCHERS = sorted(p for p in DOCKER.rglob("*") if p.suffix in {".sh", ".sbatch", ".yaml"})


def in21k_commands(text: str) -> list[list[str]]:
    """Every ``in21k ...`` / ``-m in21k ...`` command line in a shell script or YAML string, as argv."""
    text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    text = re.sub(r">-?\n\s*", " ", text)  # YAML folded scalars start on the next line
    commands = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0]
        for match in re.finditer(r"(?:^|\s|-m\s)in21k\s+([a-z].*)$", line):
            tokens = shlex.split(match.group(1))
            # Shell variables stand for user-chosen values: give them a concrete one.
            tokens = [re.sub(r"\$\{?\w+(:-[^}]*)?\}?", "x", t) for t in tokens]
            commands.append(tokens)
    return commands


def test_yaml_files_parse():
    for path in (DOCKER / "ray-cluster.yaml", DOCKER / "k8s" / "rayjob-prepare.yaml"):
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict) and data, path
    job = yaml.safe_load((DOCKER / "k8s" / "rayjob-prepare.yaml").read_text())
    assert job["kind"] == "RayJob" and "in21k prepare" in job["spec"]["entrypoint"]
    cluster = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    assert cluster["head_node_type"] in cluster["available_node_types"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles_copy_existing_paths(dockerfile):
    copies = 0
    for line in (DOCKER / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _dest = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} does not exist"
                copies += 1
    assert copies >= 4
    text = (DOCKER / dockerfile).read_text()
    assert "make install" in text  # the same install recipe, hence the same pins, as make test


def test_launchers_use_only_accepted_flags_and_valid_configs(tmp_path):
    parser = build_parser()
    seen = 0
    for path in LAUNCHERS:
        for argv in in21k_commands(path.read_text()):
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{path.relative_to(ROOT)}: `in21k {' '.join(argv)}` is rejected by the CLI")
            config = argv[argv.index("--config") + 1] if "--config" in argv else None
            if config:
                config = config.replace("/opt/in21k/", "")
                assert (ROOT / config).exists(), f"{path.name}: config {config} is missing"
                # --print-config merges and validates the config and flags without running anything.
                fixed = [a if a != argv[argv.index("--config") + 1] else str(ROOT / config) for a in argv]
                with contextlib.redirect_stdout(io.StringIO()):
                    assert main([*fixed, "--print-config"]) == 0, f"{path.name}: {' '.join(argv)}"
            seen += 1
    assert seen >= 4  # prepare (ray, kuberay), train (torchrun, slurm)


def _doc_commands() -> list[tuple[str, list[str]]]:
    """``in21k`` command lines inside fenced code blocks of README.md and docs/*.md."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", path.read_text(), flags=re.S)
        for block in blocks:
            for argv in in21k_commands(block):
                # Placeholders (`...`, `[--opt]` synopses) are not commands to run.
                if any(t in ("...", "|") or t.startswith("[") or t.endswith("...") for t in argv):
                    continue
                found.append((path.name, argv))
    return found


def test_doc_commands_are_accepted_by_the_cli():
    parser = build_parser()
    commands = _doc_commands()
    assert len(commands) >= 10
    for name, argv in commands:
        argv = [a for a in argv if not a.startswith("#")]
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):  # --help exits with 0
                pytest.fail(f"{name}: `in21k {' '.join(argv)}` is rejected by the CLI")
