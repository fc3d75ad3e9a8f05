"""A Ray cluster of several nodes on this machine, started the way a cluster is: ``ray start --head`` once and
``ray start --address`` per worker node, for the cluster tests of ``in21k prepare``.

Each node is one ``ray start --block`` in a process session of its own, with its own temp folder and ports, so that
a node can be killed whole (raylet, agents and the workers it started, which the raylet puts in process groups of
their own but not in other sessions: SIGKILL to every process of the session) and started again with the same
command line, as a node manager would.

Every node runs with token authentication, as docs/scaling.md starts a cluster: ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` naming a 0600 file that holds a fresh random token, both in the node's environment (the
token is on no command line). Clients of the cluster (``ray job submit``, the tests' own requests to the job
server) carry the same token; ``client_env`` gives the environment of one with the token, a wrong one or none.

Everything binds to 127.0.0.1. Two Ray rules shape how (Ray 2.60):

- ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, our local-Ray setting, keeps a node on loopback but makes
  ``ray start --address`` refuse to join a cluster ("Multi-node Ray clusters are not supported"). The head keeps it
  (it joins nothing); the worker nodes run with 1, Ray's default on Linux.
- With 1, Ray rewrites ``--address 127.0.0.1:P`` and ``--node-ip-address 127.0.0.1`` (and ``localhost``) to the
  machine's outward address, where the head does not listen. A worker node therefore joins through another host
  name that resolves to 127.0.0.1 (``loopback_name``); Ray then takes the node's own address "from the
  perspective" of the head's, 127.0.0.1, and binds its servers there. On real machines none of this applies: each
  node has its own address.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # this venv's ray and in21k
RAY = str(BIN / "ray")
# Variables our test processes carry that a cluster node must not inherit: object-store settings (a node gets those
# it is given, as a real node has its own), a RAY_ADDRESS (it would point a node at another cluster), and any Ray
# auth settings (the cluster has its own token).
NOT_INHERITED = ("RAY_ADDRESS", "RAY_AUTH_", "AWS_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_name() -> str | None:
    """A host name other than ``localhost`` that resolves to 127.0.0.1 only, or None (see the module docstring)."""
    for name in (socket.gethostname(), "localhost4", "localhost.localdomain", "localhost4.localdomain4"):
        try:
            found = {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)}
        except OSError:
            continue
        if found == {"127.0.0.1"} and name.lower() != "localhost":
            return name
    return None


def node_env(*, joins: bool, token_file: Path | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A node's (or a client's) environment: this one minus ``NOT_INHERITED``, plus ``extra``, this venv first on
    PATH, Ray kept local, and token authentication with the token in ``token_file`` (None: no token, auth mode
    left unset, as on a machine where nobody set it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
    env.update(extra or {})
    if token_file is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1" if joins else "0",
        # Task states reach the state API within ~0.1 s rather than ~1 s: the tests pick a busy node by them.
        RAY_task_events_report_interval_ms="100",
    )
    return env


@dataclass
class RayNode:
    """One node: its ``ray start --block`` command line, environment and log; ``start``/``kill`` it."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log.open("ab") as out:  # appended: a restarted node keeps the earlier log
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to every process of the node, as if the machine had died: its session (raylet, agents, and the
        workers, which the raylet puts in process groups of their own) and anything below it in another session
        (a job's driver)."""
        if self.proc is None:
            return
        for pid in node_processes(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None


def node_processes(leader: int) -> list[int]:
    """The processes of the session ``leader`` leads, and all their descendants (from /proc)."""
    session: list[int] = []
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid, sid = int(stat.parent.name), int(fields[1]), int(fields[3])
        children.setdefault(ppid, []).append(pid)
        if sid == leader:
            session.append(pid)
    found, todo = set(session), list(session)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


class LocalRayCluster:
    """A head that runs no work (``--num-cpus 0``, dashboard and job server on 127.0.0.1) and ``workers`` worker
    nodes of ``cpus`` CPUs each, all with the token in ``token_file`` and the variables ``node_vars`` (object-store
    settings, as a real node has them from its machine or pod). ``start()``, then
    ``submit_command``/``kill_node``/``restart_node``; ``stop()`` ends all."""

    def __init__(
        self,
        *,
        workers: int = 2,
        cpus: int = 1,
        object_store_bytes: int = 256 << 20,
        node_vars: dict[str, str] | None = None,
    ) -> None:
        alias = loopback_name()
        if alias is None:
            raise RuntimeError(
                "no host name other than localhost resolves to 127.0.0.1 here; worker nodes need one to join a "
                "loopback head (see tests/pipeline/raycluster.py)"
            )
        self.root = Path(tempfile.mkdtemp(prefix="in21k-ray-", dir="/tmp"))  # short: Ray's socket paths live here
        self.token = secrets.token_hex(32)  # as `ray get-auth-token --generate` makes one
        self.token_file = self.root / "auth_token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        self.node_vars = dict(node_vars or {})
        self.port, self.dashboard_port = free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        common = ["--block", "--disable-usage-stats", f"--object-store-memory={object_store_bytes}"]
        head = [
            RAY,
            "start",
            "--head",
            "--num-cpus=0",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            *self._node_ports(),
            f"--temp-dir={self.root / 'head'}",
            *common,
        ]
        env = {"joins": False, "token_file": self.token_file, "extra": self.node_vars}
        self.nodes = {"head": RayNode("head", head, node_env(**env), self.root / "head.log")}
        for i in range(1, workers + 1):
            cmd = [
                RAY,
                "start",
                f"--address={alias}:{self.port}",
                f"--num-cpus={cpus}",
                *self._node_ports(),
                f"--resources={json.dumps({f'worker{i}': 1})}",  # names the node in the state API's answers
                f"--temp-dir={self.root / f'worker{i}'}",
                *common,
            ]
            self.nodes[f"worker{i}"] = RayNode(
                f"worker{i}", cmd, node_env(**{**env, "joins": True}), self.root / f"worker{i}.log"
            )

    @staticmethod
    def _node_ports() -> list[str]:
        """Ports of one node's own servers: several nodes on one machine must not share any."""
        names = (
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        )
        return [f"--{name}={free_port()}" for name in names]

    @property
    def workers(self) -> list[str]:
        return [name for name in self.nodes if name != "head"]

    # ------------------------------------------------------------------ life cycle
    def start(self, timeout: float = 120.0) -> LocalRayCluster:
        deadline = time.monotonic() + timeout
        self.nodes["head"].start()
        while not self._job_server_up():
            self._check("head", deadline)
            time.sleep(0.5)
        for name in self.workers:
            self.nodes[name].start()
        self.wait_for_workers(len(self.workers), deadline - time.monotonic())
        return self

    def stop(self) -> None:
        """Kill every node and delete the nodes' temp folders (their logs too)."""
        for node in reversed(list(self.nodes.values())):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def kill_node(self, name: str) -> None:
        self.nodes[name].kill()

    def restart_node(self, name: str, timeout: float = 90.0) -> None:
        """Start a killed node again with the same command line; returns once it is alive in the cluster."""
        if self.nodes[name].alive:
            return
        self.nodes[name].start()
        self.wait_for_workers(sum(self.nodes[w].alive for w in self.workers), timeout)

    def wait_for_workers(self, count: int, timeout: float) -> None:
        """Wait until ``count`` worker nodes (nodes with CPUs) are alive in the cluster."""
        deadline = time.monotonic() + timeout
        while self.alive_workers() < count:
            for name in self.workers:
                if self.nodes[name].proc is not None:
                    self._check(name, deadline)
            time.sleep(0.5)

    def alive_workers(self) -> int:
        try:
            nodes = self._get("/api/v0/nodes?limit=100&detail=true")["data"]["result"]["result"]
        except (OSError, KeyError, ValueError):
            return 0
        return sum(1 for n in nodes if n.get("state") == "ALIVE" and n.get("resources_total", {}).get("CPU", 0) > 0)

    def node_names(self) -> dict[str, str]:
        """Ray node id -> our node name (``worker1``...; the head has no such resource), alive or dead."""
        nodes = self._get("/api/v0/nodes?limit=100&detail=true")["data"]["result"]["result"]
        names = {}
        for n in nodes:
            tags = [r for r in n.get("resources_total", {}) if r in self.nodes]
            names[n["node_id"]] = tags[0] if tags else "head"
        return names

    def _check(self, name: str, deadline: float) -> None:
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is not None:
            raise RuntimeError(f"ray node {name} exited with {node.proc.returncode}:\n{self.log_tail(name)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"ray node {name} did not come up in time:\n{self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.nodes[name].log
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # ------------------------------------------------------------------ jobs
    def _get(self, path: str, token: str | None = "cluster") -> Any:
        """GET a job-server or state-API path; ``token``: the cluster's (default), another one, or None."""
        headers = {} if token is None else {"Authorization": f"Bearer {self.token if token == 'cluster' else token}"}
        request = urllib.request.Request(self.dashboard_url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())

    def _job_server_up(self) -> bool:
        try:
            self._get("/api/jobs/")
            return True
        except (OSError, ValueError):
            return False

    def submit_command(self, entrypoint: list[str]) -> list[str]:
        """The ``ray job submit`` command line of ``entrypoint`` (the words a user types after ``--``); it waits for
        the job and prints its id and log. No runtime environment: the nodes have what the job needs."""
        return [RAY, "job", "submit", f"--address={self.dashboard_url}", "--", *entrypoint]

    def client_env(self, token: str | None = "cluster", extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a client of the cluster (``ray job submit``, ``in21k prepare --ray-address``) on this
        machine: with the cluster's token file (``token="cluster"``), with ``RAY_AUTH_TOKEN`` set to another token,
        or with no token and no auth mode (None)."""
        if token == "cluster":
            return node_env(joins=False, token_file=self.token_file, extra=extra)
        env = node_env(joins=False, token_file=None, extra=extra)
        if token is not None:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        return env

    def jobs(self, token: str | None = "cluster") -> list[dict[str, Any]]:
        """Every job's record (``GET /api/jobs/``), asked with the cluster's token, another one or none."""
        return self._get("/api/jobs/", token=token)

    def job(self, submission_id: str) -> dict[str, Any]:
        """The job's record from the job server: ``status``, ``driver_info`` (with the driver's ``pid``), ..."""
        return self._get(f"/api/jobs/{submission_id}")

    def tasks(self, submission_id: str, name: str) -> list[dict[str, Any]]:
        """The job's task attempts named ``name`` (state API): ``attempt_number``, ``state``, ``node`` (our name)."""
        job_id = self.job(submission_id)["job_id"]
        query = f"limit=10000&detail=true&filter_keys=job_id&filter_predicates=%3D&filter_values={job_id}"
        found = self._get(f"/api/v0/tasks?{query}")["data"]["result"]["result"]
        names = self.node_names()
        return [
            {"attempt_number": t.get("attempt_number"), "state": t.get("state"), "node": names.get(t.get("node_id"))}
            for t in found
            if t.get("name") == name
        ]

    def job_logs(self, submission_id: str) -> str:
        try:
            return self._get(f"/api/jobs/{submission_id}/logs")["logs"]
        except (OSError, KeyError, ValueError, urllib.error.HTTPError):
            return ""
