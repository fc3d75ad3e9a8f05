"""What can be checked here of the container images and cluster launchers in docker/.

No Docker engine, cloud or SLURM here: the files must parse, every path they copy must exist, and every
``in21k`` command line they contain must be accepted by our CLI with its config files valid. The torchrun launcher
also runs here for real, as two nodes on this machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from in21k.cli import build_parser, main
from tests.loaders.prepared_data import make_prepared_dataset
from tests.training.torchrun import free_port, kill_all

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
            # "$@": the flags a user adds after the script's name.
            tokens = [t for t in shlex.split(match.group(1)) if t not in ("$@", "${@}")]
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


def test_torchrun_launchers_rendezvous_restart_and_resume():
    """Both launchers: c10d rendezvous (no --node-rank), --max-restarts, --resume auto, and an unshared rendezvous
    store, so that a replacement node can join a running job (docs/scaling.md, "Multi-node training")."""
    for path in (DOCKER / "torchrun-multinode.sh", DOCKER / "slurm" / "train.sbatch"):
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        torchrun = next(line for line in text.splitlines() if re.match(r"\s*(srun .*)?torchrun ", line))
        for flag in ("--rdzv-backend c10d", "--rdzv-endpoint", "--rdzv-id", "--max-restarts", "--resume auto"):
            assert flag in torchrun, f"{path.name}: {flag} missing from the torchrun command"
        for flag in ("--node-rank", "--master-addr", "--master-port"):
            assert flag not in torchrun, f"{path.name}: {flag} (static rendezvous) in the torchrun command"
        assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in text, path.name


@pytest.mark.dist
@pytest.mark.cluster
@pytest.mark.slow
def test_torchrun_launcher_trains_on_two_nodes_here(tmp_path):
    """docker/torchrun-multinode.sh as it is, started twice like on two nodes (each in a process session of its own,
    the same environment on both), on a tiny local dataset. Its settings come from the environment; the flags after
    the script's name make it a short CPU run of a small model; the script's own GPU flags (bf16, channels-last,
    --gpu-decode) stay and run on the CPU."""
    data = make_prepared_dataset(
        tmp_path / "data", num_classes=4, shard_lengths_train=[8, 8], shard_lengths_val=[4, 4], image_size=32, seed=0
    )
    run = tmp_path / "run"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # this venv's torchrun
        "NNODES": "2",
        "NPROC_PER_NODE": "1",
        "RDZV_HOST": "127.0.0.1",
        "RDZV_PORT": str(free_port()),
        "RDZV_ID": "deploy-test",
        "MAX_RESTARTS": "0",  # fail at once if anything is wrong
        "DATA": str(data),
        "RUN_DIR": str(run),
        "PYTHONUNBUFFERED": "1",
    }
    small = [
        "--model",
        "resnet10t",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--loader.num-workers",
        "1",
        "--loader.transform",
        "eval",
        "--no-plot",
    ]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    procs = []
    for log in logs:
        with log.open("w") as out:  # the child keeps its own copy of the file descriptor
            procs.append(
                subprocess.Popen(
                    ["bash", str(DOCKER / "torchrun-multinode.sh"), *small],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    deadline = time.monotonic() + 240
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_all(proc)
    consoles = [log.read_text(errors="replace") for log in logs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(c[-3000:] for c in consoles)
    results = [json.loads(line) for c in consoles for line in c.splitlines() if line.startswith('{"run_dir"')]
    assert len(results) == 1 and results[0]["world_size"] == 2 and results[0]["steps"] == 2, results
    assert (run / "model.pt").exists()


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


# ----------------------------------------------------------------------------------------- who can reach the cluster
RAY_RECIPES = [
    DOCKER / "ray-cluster.yaml",
    DOCKER / "k8s" / "rayjob-prepare.yaml",
    DOCKER / "prepare-on-ray.sh",
    ROOT / "docs" / "scaling.md",
]


def _code(path: Path) -> str:
    """What a recipe runs: its bash blocks for a doc page, the whole file otherwise (comments included: they hold
    commands to type too), shell line continuations joined."""
    text = path.read_text()
    if path.suffix == ".md":
        text = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    return re.sub(r"\\\n\s*", " ", text)


def test_every_ray_recipe_runs_with_token_auth_from_a_secret_or_a_file():
    """Token authentication on every node and client, the token never on a command line, and no switch to turn it
    off (docs/security.md)."""
    for path in RAY_RECIPES:
        code = _code(path)
        assert "RAY_AUTH_MODE=disabled" not in code and "RAY_AUTH_MODE: disabled" not in code, path.name
        assert not re.search(r"RAY_AUTH_TOKEN=(?!\$)\S", code), f"{path.name}: a token on a command line"
        assert not re.search(r"--(token|auth-token)[ =]", code), path.name
    scaling = _code(ROOT / "docs" / "scaling.md")
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=" in scaling
    assert scaling.index("RAY_AUTH_TOKEN_PATH=") < scaling.index("ray start --head")
    cluster = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    options = " ".join(cluster["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    token_path = re.search(r"--env RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    assert token_path in cluster["file_mounts"] and any(
        c == f"chmod 600 {token_path}" for c in cluster["setup_commands"]
    ), "the token file must reach every node, readable by its owner only"
    job = yaml.safe_load((DOCKER / "k8s" / "rayjob-prepare.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    script = _code(DOCKER / "prepare-on-ray.sh")
    assert '"${RAY_AUTH_TOKEN_PATH:?' in script and "export RAY_AUTH_MODE=token" in script
    assert re.search(r"^ENV (.*\\\n)*\s*RAY_AUTH_MODE=token", (DOCKER / "Dockerfile.cpu").read_text(), flags=re.M)


def test_job_servers_listen_only_where_their_users_are():
    """No recipe binds the dashboard and job server to every interface: the head's 127.0.0.1 (reached through a
    tunnel), or KubeRay's pod network (no dashboard-host of ours)."""
    for path in RAY_RECIPES:
        assert "0.0.0.0" not in _code(path), f"{path.name} binds something to every interface"
    heads = [line for path in RAY_RECIPES for line in _code(path).splitlines() if "ray start --head" in line]
    assert len(heads) == 2 and all(re.search(r"--dashboard-host[ =]127\.0\.0\.1", line) for line in heads), heads
    job = yaml.safe_load((DOCKER / "k8s" / "rayjob-prepare.yaml").read_text())
    assert "dashboard-host" not in job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]


def test_object_store_credentials_come_from_nodes_not_from_the_job():
    """Credentials reach the nodes (environment, instance profile, Kubernetes Secret); no example puts them in a
    job's runtime environment, which the dashboard and `ray job list` show."""
    from in21k.redact import is_secret_key

    texts = {p.name: p.read_text() for p in [*LAUNCHERS, ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    for name, text in texts.items():
        for match in re.finditer(r"--runtime-env-json[ =]'([^']*)'", text):
            if match.group(1) == '{"env_vars": {...}}':  # the docs' placeholder, in prose
                continue
            env_vars = json.loads(match.group(1)).get("env_vars", {})
            assert not [k for k in env_vars if is_secret_key(k)], f"{name}: credentials in a runtime env"
    job = yaml.safe_load((DOCKER / "k8s" / "rayjob-prepare.yaml").read_text())
    assert "runtimeEnvYAML" not in job["spec"]
    pods = [job["spec"]["rayClusterSpec"]["headGroupSpec"]]
    pods += job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    for pod in pods:
        container = pod["template"]["spec"]["containers"][0]
        assert {"secretRef": {"name": "in21k-s3"}} in container["envFrom"]
        assert not [e for e in container.get("env", []) if is_secret_key(e["name"]) and "value" in e], container
    cluster = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    for node_type in cluster["available_node_types"].values():
        assert "IamInstanceProfile" in node_type["node_config"]
    assert not re.search(r"AWS_SECRET_ACCESS_KEY=(?!\.\.\.|\$)\S", _code(ROOT / "docs" / "scaling.md"))
