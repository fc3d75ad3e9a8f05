"""``in21k train`` under a real 2-process gloo torchrun on tiny shards: learns, stays in sync, resumes exactly.

Tolerance of the resume check: exact (bit-identical state dicts). On CPU with torchrun's
``OMP_NUM_THREADS=1``, fixed seeds and per-batch loader seeds, the resumed run replays the same
batches with the same optimizer, scaler and RNG states, so nothing can differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.loaders.prepared_data import make_prepared_dataset

pytestmark = [pytest.mark.dist, pytest.mark.slow]

EPOCHS, STEPS_PER_EPOCH = 2, 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    # 2 ranks x 4 per batch x 8 steps = 64 train samples; 4 shards so each rank's worker has its own.
    return make_prepared_dataset(root, num_classes=8, shard_lengths_train=[16, 16, 16, 16],
                                 shard_lengths_val=[8, 8], image_size=32, seed=0)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(data: Path, out: Path, *extra: str, log: Path | None = None) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()), "-m", "in21k", "train", "--data", str(data), "--out", str(out),
        "--model", "resnet10t", "--image-size", "32", "--epochs", str(EPOCHS), "--batch-size", "4",
        "--loader.num-workers", "1", "--loader.transform", "eval", "--lr", "3e-3", "--save-every", "3",
        "--log-every", "2", "--keep-last", "2", "--amp", "none", "--no-plot", *extra,
    ]  # fmt: skip
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
    assert proc.returncode == 0, out[-4000:]
    return out


def final_state(run: Path) -> dict:
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)["model"]


def test_torchrun_learns_syncs_and_resumes_exactly(data, tmp_path):
    # 1. Uninterrupted run.
    full = tmp_path / "full"
    out = finish(launch(data, full))
    result = json.loads(out.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["steps"] == EPOCHS * STEPS_PER_EPOCH
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    train_loss = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(train_loss) == EPOCHS * STEPS_PER_EPOCH // 2
    assert sum(train_loss[-2:]) < 0.7 * sum(train_loss[:2]), train_loss  # it learns
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == EPOCHS and 0 <= val[-1]["semantic_top1"] <= 1 and val[-1]["per_level"]
    # Both ranks log the same final parameter digest (rank 0 also checks it in-process).
    digests = [
        next(
            line for line in (full / "logs" / f"rank-{r}.log").read_text().splitlines() if "parameter digest" in line
        ).rsplit(" ", 1)[1]
        for r in (0, 1)
    ]
    assert digests[0] == digests[1] == result["param_digest"]
    assert (full / "config.yaml").exists()
    # Only rank 0 prints the result line.
    assert sum(1 for line in out.splitlines() if line.startswith('{"run_dir"')) == 1

    # 2. The same run killed (SIGKILL of torchrun and all its processes) right after its first checkpoint, then resumed.
    cut = tmp_path / "cut"
    console = tmp_path / "cut-console.log"
    proc = launch(data, cut, log=console)
    deadline = time.monotonic() + 120
    while not list(cut.glob("checkpoints/ckpt-*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_all(proc)
    assert list(cut.glob("checkpoints/ckpt-*.pt")), f"no checkpoint before the kill:\n{console.read_text()[-3000:]}"
    assert not (cut / "model.pt").exists(), "the run finished before it could be killed; the test proves nothing"
    killed_at = max(int(p.stem.split("-")[1]) for p in (cut / "checkpoints").glob("ckpt-*.pt"))
    assert killed_at < EPOCHS * STEPS_PER_EPOCH
    out = finish(launch(data, cut, "--resume", "auto"))
    log0 = (cut / "logs" / "rank-0.log").read_text()
    assert f"at step {killed_at}" in log0 and "resumed from" in log0
    assert len(list((cut / "checkpoints").glob("ckpt-*.pt"))) == 2  # keep-last 2

    a, b = final_state(full), final_state(cut)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after kill + resume"
