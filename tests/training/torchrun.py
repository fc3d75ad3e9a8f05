"""Real ``torchrun`` jobs for the tests: launch, kill the whole job like a lost node, wait for it to finish."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], *, nproc: int = 2, log: Path | None = None, torchrun_args: tuple[str, ...] = ()
             ) -> subprocess.Popen:  # fmt: skip
    """``torchrun --nproc-per-node NPROC ... -m in21k ARGS`` on 127.0.0.1, in a session of its own."""
    if not torchrun_args:
        torchrun_args = ("--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port",
                         str(free_port()))  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, "-m", "in21k", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A new session: the whole torchrun process group (agent, ranks, loader workers) can be killed at once.
    stdout = subprocess.PIPE if log is None else log.open("w")  # a file: nobody reads while the test polls
    return subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # fmt: skip


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
