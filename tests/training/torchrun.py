"""Real ``torchrun`` jobs for the tests: launch, kill the whole job like a lost node, wait for it to finish.

Several agents with c10d rendezvous stand for several nodes (``Node``, ``rendezvous_args``); ``run_to_end`` is the
node manager that starts a dead node's agent again with the same command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    args: list[str],
    *,
    nproc: int = 2,
    log: Path | None = None,
    torchrun_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``torchrun --nproc-per-node NPROC ... -m in21k ARGS`` on 127.0.0.1, in a session of its own.

    ``env`` adds to (or overrides) this process's environment, e.g. S3 credentials."""
    if not torchrun_args:
        torchrun_args = (
            "--nproc-per-node",
            str(nproc),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
        )
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, "-m", "in21k", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # A new session: the whole torchrun process group (agent, ranks, loader workers) can be killed at once.
    stdout = subprocess.PIPE if log is None else log.open("w")  # a file: nobody reads while the test polls
    return subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), including those in other sessions."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every process below it, like a lost node. torchrun starts each rank in a
    session of its own, so killing torchrun's process group alone would leave the ranks running."""
    victims = descendants(proc.pid)
    for pid in victims:  # freeze first so nothing writes a checkpoint between the kills
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 150) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(proc)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout}s:\n{out[-4000:]}")
    if out is None:  # stdout went to a log file
        out = ""
    assert proc.returncode == 0, out[-4000:]
    return out


def kill_after_first_checkpoint(proc: subprocess.Popen, run: Path, console: Path, timeout: float = 120) -> int:
    """Wait for the job's first checkpoint, SIGKILL the whole job, and return the step it was killed after."""
    deadline = time.monotonic() + timeout
    while not list(run.glob("checkpoints/ckpt-*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_all(proc)
    assert list(run.glob("checkpoints/ckpt-*.pt")), f"no checkpoint before the kill:\n{console.read_text()[-3000:]}"
    assert not (run / "model.pt").exists(), "the run finished before it could be killed; the test proves nothing"
    return max(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("ckpt-*.pt"))


def final_state(run: Path, which: str = "model") -> dict:
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)[which]


def assert_same_weights(a: Path, b: Path, which: str = "model") -> None:
    x, y = final_state(a, which), final_state(b, which)
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), f"{key} differs after kill + resume"


# ----------------------------------------------------------------------------------------- several nodes
def rendezvous_args(
    port: int,
    rdzv_id: str,
    *,
    nnodes: int = 2,
    nproc: int = 1,
    max_restarts: int = 0,
    rdzv_conf: str = "",
    local_addr: str = "",
) -> tuple[str, ...]:
    """torchrun arguments of one node of an ``nnodes`` job with c10d rendezvous at 127.0.0.1:PORT (no --node-rank).

    ``local_addr`` (any 127.x.y.z) gives the node an address of its own, as on a cluster: torchrun orders the
    nodes by address (then process id) when it hands out the ranks."""
    args = (
        "--nnodes",
        str(nnodes),
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        rdzv_id,
        "--max-restarts",
        str(max_restarts),
    )
    if rdzv_conf:
        args = (*args, "--rdzv-conf", rdzv_conf)
    return (*args, "--local-addr", local_addr) if local_addr else args


@dataclass
class Node:
    """One stand-in node: the torchrun agent (and its workers) of one command, each start in a session of its own.

    ``start`` is what a node manager does when the node comes back: the same command again. ``agents`` holds every
    agent started for this node, the current one last; agent ``i`` logs to ``LOG_DIR/NAME-agentI.log``."""

    name: str
    args: list[str]
    torchrun_args: tuple[str, ...]
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    agents: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> subprocess.Popen:
        log = self.log_dir / f"{self.name}-agent{len(self.agents)}.log"
        self.agents.append(torchrun(self.args, log=log, torchrun_args=self.torchrun_args, env=self.env))
        return self.agents[-1]

    @property
    def agent(self) -> subprocess.Popen:
        return self.agents[-1]

    def console(self, index: int = -1) -> str:
        return (self.log_dir / f"{self.name}-agent{index % len(self.agents)}.log").read_text(errors="replace")

    def stop(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                kill_all(agent)


def describe(nodes: list[Node], tail: int = 3000) -> str:
    """Every node's agents, their exit codes and the end of the current agent's console, for failure messages."""
    parts = []
    for node in nodes:
        codes = [a.poll() for a in node.agents]
        parts.append(f"--- {node.name}: agents' exit codes {codes}\n{node.console()[-tail:]}")
    return "\n".join(parts)


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in run.glob("checkpoints/ckpt-*.pt"))


def wait_for_checkpoint(run: Path, nodes: list[Node], *, after: int = -1, timeout: float = 120) -> int:
    """Wait for a checkpoint of a step above ``after`` and return the newest step; fails (and stops every node)
    when an agent exits first or nothing comes within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = checkpoint_steps(run)
        if steps and steps[-1] > after:
            return steps[-1]
        if any(node.agent.poll() is not None for node in nodes):
            break
        time.sleep(0.02)
    message = describe(nodes)
    for node in nodes:
        node.stop()
    pytest.fail(f"no checkpoint after step {after} in {run} (have {checkpoint_steps(run)}):\n{message}")


def run_to_end(nodes: list[Node], *, timeout: float = 150, max_agents: int = 4) -> None:
    """The node manager: start a node's agent again (same command) whenever it exits with an error, until every
    node's current agent has exited with 0. Fails after ``timeout`` seconds or ``max_agents`` starts of one node."""
    deadline = time.monotonic() + timeout
    problem = ""
    while not problem:
        codes = [node.agent.poll() for node in nodes]
        if all(code == 0 for code in codes):
            return
        for node, code in zip(nodes, codes, strict=True):
            if code not in (None, 0):
                if len(node.agents) >= max_agents:
                    problem = f"{node.name} failed {len(node.agents)} times"
                    break
                node.start()
        if time.monotonic() > deadline:
            problem = f"the job did not finish in {timeout}s"
        time.sleep(0.1)
    message = describe(nodes)
    for node in nodes:
        node.stop()
    pytest.fail(f"{problem}:\n{message}")
