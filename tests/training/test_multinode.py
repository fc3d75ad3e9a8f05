"""Two torchrun "nodes" on this machine (c10d rendezvous, gloo) train from a local S3 server; nodes are lost
mid-epoch and the job still ends with the weights of an undisturbed run, bit for bit (model and EMA).

A node is a torchrun agent in a process session of its own, started with the same command as the other
(``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT --rdzv-id ID --max-restarts 3``, no
``--node-rank``; docs/scaling.md, "Multi-node training"). Two settings stand in for separate machines: each node
has an address of its own (``--local-addr``), and node 1 never hosts the rendezvous store (``is_host=false``; on a
cluster only the endpoint's host does). torchrun orders the nodes by address when it hands out ranks, so node 1
(127.0.0.1) has rank 0 and writes the checkpoints, and node 0 (127.0.0.2) hosts the rendezvous: the test loses each
of them once. Losing a node is a SIGKILL of its agent and every process below it. ``RUN_DIR`` on this machine's file
system stands in for the cluster's shared file system. ``run_to_end`` is the node manager (what SLURM, Kubernetes or
systemd does): it starts a node's agent again, with the same command, when the agent dies.

Tolerance: exact. Same reasoning as tests/training/test_train_dist.py: gloo on CPU, fixed seeds, per-batch loader
seeds and every rank's RNG state in the checkpoint, so the resumed ranks replay the same batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.loaders.prepared_data import make_prepared_dataset
from tests.training.torchrun import (
    Node,
    assert_same_weights,
    free_port,
    kill_all,
    rendezvous_args,
    run_to_end,
    wait_for_checkpoint,
)

pytestmark = [pytest.mark.dist, pytest.mark.s3, pytest.mark.slow, pytest.mark.cluster]

EPOCHS, STEPS_PER_EPOCH = 2, 4
TRAIN = [
    "--model", "resnet10t",
    "--image-size", "32",
    "--epochs", str(EPOCHS),
    "--batch-size", "4",
    "--loader.num-workers", "1",
    "--loader.transform", "eval",
    "--lr", "3e-3",
    "--ema",
    "--run.save-every", "2",
    "--run.log-every", "2",
    "--run.keep-last", "2",
    "--amp", "none",
    "--no-plot",
    "--resume", "auto",
]  # fmt: skip
MAX_RESTARTS = 3
# torch >= 2.4 shares the agent's rendezvous store with the workers by default; then an agent that joins a later
# rendezvous round (the replacement of a lost node) waits for keys the others published only in round 0, and both
# time out (torch 2.14.1). With the variable set, every round publishes the workers' store address afresh.
# LOGLEVEL=INFO: the agents log when they restart their workers.
AGENT_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "LOGLEVEL": "INFO"}
# The agents drop a dead node from the rendezvous after keep_alive_interval * keep_alive_max_attempt seconds
# (5 * 3 by default): 3 s here, only to keep the test short.
RDZV_CONF = "keep_alive_interval=1,keep_alive_max_attempt=3"
# (name, --local-addr, --rdzv-conf) of each node.
NODES = (("node0", "127.0.0.2", RDZV_CONF), ("node1", "127.0.0.1", f"{RDZV_CONF},is_host=false"))


@pytest.fixture(scope="module")
def data_url(s3_server, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("prepared")
    # 2 ranks x 4 per batch x 4 steps = 32 train samples; 4 shards, so each rank's loader worker reads its own.
    make_prepared_dataset(
        root, num_classes=8, shard_lengths_train=[8, 8, 8, 8], shard_lengths_val=[8, 8], image_size=32, seed=0
    )
    bucket = s3_server.make_bucket("in21k-multinode")
    s3_server.upload_dir(root, bucket, "p")
    return f"s3://{bucket}/p"


def start_job(data_url: str, run: Path, env: dict[str, str], logs: Path) -> tuple[Node, Node]:
    """Both nodes of a job: node 0 hosts the rendezvous, node 1 (the lower address) has rank 0."""
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["train", "--data", data_url, "--out", str(run), *TRAIN]
    node0, node1 = (
        Node(
            name,
            args,
            rendezvous_args(port, run.name, max_restarts=MAX_RESTARTS, rdzv_conf=conf, local_addr=addr),
            logs,
            env={**env, **AGENT_ENV},
        )
        for name, addr, conf in NODES
    )
    node0.start()
    node1.start()  # a client of node 0's rendezvous store: it waits for it
    return node0, node1


def results(node: Node) -> list[dict]:
    """The result lines (rank 0 prints one at the end) on the console of the node's current agent."""
    return [json.loads(line) for line in node.console().splitlines() if line.startswith('{"run_dir"')]


@pytest.fixture(scope="module")
def full(data_url, s3_server, tmp_path_factory) -> tuple[Path, tuple[Node, Node]]:
    """The undisturbed 2-node run."""
    root = tmp_path_factory.mktemp("multinode-full")
    nodes = start_job(data_url, root / "full", s3_server.env, root / "console")
    run_to_end(list(nodes))
    return root / "full", nodes


def test_two_nodes_train_one_model(full):
    run, (node0, node1) = full
    assert len(node0.agents) == len(node1.agents) == 1
    assert results(node0) == [] and len(results(node1)) == 1  # only rank 0 prints: node 1, the lower address
    result = results(node1)[0]
    assert result["world_size"] == 2 and result["steps"] == EPOCHS * STEPS_PER_EPOCH
    for rank in (0, 1):  # each node's rank logged the same final weights
        assert result["param_digest"] in (run / "logs" / f"rank-{rank}.log").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["batches"] for r in records if r["kind"] == "loader"] == [STEPS_PER_EPOCH] * EPOCHS


def test_lost_nodes_end_with_the_undisturbed_weights(data_url, s3_server, full, tmp_path):
    full_run, _ = full
    run = tmp_path / "cut"
    node0, node1 = nodes = start_job(data_url, run, s3_server.env, tmp_path / "console")
    try:
        # 1. Node 1, rank 0, which writes the checkpoints, is lost mid-epoch 0 and comes back (same command).
        #    Node 0's agent does not exit: its worker fails on the dead peer (or is stopped when node 1 is back),
        #    torchrun (--max-restarts) re-rendezvouses with the new agent, and both new workers resume from the
        #    newest checkpoint (--resume auto).
        first = wait_for_checkpoint(run, list(nodes))
        kill_all(node1.agent)
        assert first < STEPS_PER_EPOCH, f"killed at step {first}, not mid-epoch 0"
        node1.start()
        second = wait_for_checkpoint(run, list(nodes), after=STEPS_PER_EPOCH)  # written by the restarted workers
        assert len(node0.agents) == 1 and node0.agent.poll() is None
        assert "will restart worker group" in node0.console()
        log0 = (run / "logs" / "rank-0.log").read_text()
        assert f"ckpt-{first:09d}.pt at step {first}" in log0, log0[-3000:]

        # 2. Node 0, the rendezvous host, is lost mid-epoch 1. Node 1's agent loses the rendezvous store with it
        #    and exits; the node manager starts both again: a rerun with the same command, which resumes from the
        #    newest checkpoint too.
        kill_all(node0.agent)
        assert second < EPOCHS * STEPS_PER_EPOCH and not (run / "model.pt").exists(), "finished before the kill"
        node0.start()
        run_to_end(list(nodes))
    finally:
        for node in nodes:
            node.stop()
    assert len(node0.agents) == 2
    assert len(node1.agents) == 3 and node1.agents[1].returncode != 0  # it exited with its rendezvous host
    log0 = (run / "logs" / "rank-0.log").read_text()
    assert f"ckpt-{second:09d}.pt at step {second}" in log0, log0[-3000:]
    assert len(results(node1)) == 1
    assert_same_weights(full_run, run, "model")
    assert_same_weights(full_run, run, "ema")
