"""``in21k prepare`` as a Ray job on a cluster of three nodes on this machine, from and to a real S3 server.

The cluster is started as one is on real machines (``tests/pipeline/raycluster.py``): a head that runs no work
(``ray start --head --num-cpus 0``, dashboard and job server) and two worker nodes of one CPU (``ray start
--address``), each its own raylet in its own process session, all with token authentication (the token in a 0600
file named by ``RAY_AUTH_TOKEN_PATH``) and the S3 settings in their environment, as docs/scaling.md starts them.
Jobs go in through ``ray job submit`` with the entrypoint of ``docker/k8s/rayjob-prepare.yaml`` and the cluster's
token; no runtime environment. Without the token, or with another one, the cluster refuses ``ray job submit``, the
job server's HTTP API and ``in21k prepare --ray-address``.
Every finished job must leave output byte-identical to a single-node local run of the same options: every shard,
``_info.json``, ``classes.tsv``, ``tree.json`` and every manifest part, and no other shard. Disturbances, each while
shards are being written (the count of ``stats/`` files picks the moment):

- a worker node killed (SIGKILL to its raylet, agents and workers): Ray retries its tasks on the other node;
- the job's driver killed (SIGKILL): the job fails; the same ``ray job submit`` again resumes and finishes;
- the S3 server stopped for 10 s and started again on the same data and ports: the tasks retry with backoff.

docs/scaling.md ("Ray cluster") has the commands and what each disturbance does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.error
from collections import Counter
from pathlib import Path

import pytest
import yaml

from in21k.pipeline import prepare
from tests.pipeline.conftest import prep_config, synth_report, write_release
from tests.pipeline.raycluster import BIN, LocalRayCluster, loopback_name, node_processes

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
RAYJOB = ROOT / "docker" / "k8s" / "rayjob-prepare.yaml"
BUCKET = "my-bucket"  # the launcher's own URLs, served by the local S3 server
# ~300 members in 10 classes, fall11_whole.tar layout (class tars read in place inside the outer tar), small shards:
# ~70 shard tasks, so that a disturbance lands while shards are being written.
RELEASE = dict(classes=10, images="20:40", seed=21, layout="whole-tar", whole_name="fall11_whole.tar")
SMALL = {"min_images": 17, "val_per_class": 3, "shard_size": 4}  # on top of the launcher's fall11.yaml
# Files whose bytes must not depend on where or how the job ran (stats and report carry timings and host names).
COMPARED = ("_info.json", "classes.tsv", "tree.json")


def launcher_entrypoint(out: str) -> list[str]:
    """The RayJob's entrypoint as a user submits it: its --config from this checkout (the image has it under
    /opt/in21k), ``--out`` set per test, and the options that suit a tiny release added at the end."""
    words = shlex.split(yaml.safe_load(RAYJOB.read_text())["spec"]["entrypoint"])
    words = [w.replace("/opt/in21k/", f"{ROOT}/") for w in words]
    words[words.index("--out") + 1] = out
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    return [*words, *extra]


def raw_url() -> str:
    words = shlex.split(yaml.safe_load(RAYJOB.read_text())["spec"]["entrypoint"])
    return words[words.index("--raw") + 1]


@pytest.fixture(scope="module")
def cluster(s3_server):
    if loopback_name() is None:
        pytest.skip("worker nodes need a host name other than localhost for 127.0.0.1 (tests/pipeline/raycluster.py)")
    started = time.monotonic()
    cluster = LocalRayCluster(workers=2, cpus=1, node_vars=s3_server.env).start()
    print(f"cluster of {len(cluster.nodes)} nodes up in {time.monotonic() - started:.0f} s")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def live_cluster(cluster):
    """The module's cluster with every node alive (a test before may have killed one)."""
    for name in cluster.workers:
        cluster.restart_node(name)
    return cluster


@pytest.fixture(scope="module")
def raw(s3_server, tmp_path_factory) -> str:
    """The synthetic release at the launcher's --raw URL on the local S3 server."""
    local = tmp_path_factory.mktemp("cluster-raw")
    write_release(local, **RELEASE)
    url = raw_url()
    assert url.startswith(f"s3://{BUCKET}/") and url.endswith(synth_report(local)["files"][0])
    s3_server.make_bucket(BUCKET)
    s3_server.client().upload_file(str(local / RELEASE["whole_name"]), BUCKET, url.split("/", 3)[3])
    return url


@pytest.fixture(scope="module")
def reference(raw, s3_server, ray_local, tmp_path_factory) -> dict[str, bytes]:
    """The outputs of a single-node local run (in this process, local Ray) of the same release and options."""
    out = tmp_path_factory.mktemp("cluster-reference")
    summary = prepare(prep_config(raw, out, storage_options=s3_server.storage_options, **SMALL))
    assert summary["train_shards"] + summary["validation_shards"] >= 40
    files = [*out.glob("train/*.tar"), *out.glob("validation/*.tar"), *out.glob("manifest/*.parquet")]
    files += [out / name for name in COMPARED]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(files)}


def outputs(s3_server, out: str) -> dict[str, bytes]:
    """The same files of a job's output on S3; every shard there, so a duplicate or a stray one shows."""
    client = s3_server.client()
    prefix = out.split("/", 3)[3] + "/"
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
    wanted = [k for k in keys if re.fullmatch(r"(train|validation)/.*\.tar|manifest/.*\.parquet", k)]
    wanted += [k for k in COMPARED if k in keys]
    assert not [k for k in keys if k.endswith(".tmp")]
    return {k: client.get_object(Bucket=BUCKET, Key=prefix + k)["Body"].read() for k in sorted(wanted)}


def stats_count(s3_server, out: str) -> int:
    found = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=out.split("/", 3)[3] + "/stats/")
    return found.get("KeyCount", 0)


def running_nodes(cluster: LocalRayCluster, submission_id: str) -> list[str]:
    """The worker nodes that run one of the job's shard tasks now (state API, about a second behind)."""
    tasks = cluster.tasks(submission_id, "write_shard")
    return sorted({t["node"] for t in tasks if t["state"] == "RUNNING" and t["node"] in cluster.workers})


class Submission:
    """``ray job submit`` (waiting for the job, as a user runs it) in the background, its output in a file."""

    def __init__(self, cluster: LocalRayCluster, entrypoint: list[str], log: Path) -> None:
        self.cluster, self.log = cluster, log
        self.cmd = cluster.submit_command(entrypoint)
        with log.open("w") as f:
            self.proc = subprocess.Popen(
                self.cmd, stdout=f, stderr=subprocess.STDOUT, env=cluster.client_env(), start_new_session=True
            )
        self.started = time.monotonic()

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def job_id(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not (found := re.search(r"Job '([^']+)' submitted successfully", self.text)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no job id in the submit output:\n{self.text[-3000:]}")
            time.sleep(0.2)
        return found.group(1)

    def wait_for_stats(self, s3_server, out: str, count: int, timeout: float = 120) -> int:
        """Poll the output until ``count`` shards are finished; returns how many were."""
        deadline = time.monotonic() + timeout
        while (done := stats_count(s3_server, out)) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the job ended or stalled with {done} shards finished:\n{self.text[-3000:]}")
            time.sleep(0.05)
        return done

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"ray job submit did not return in {timeout} s:\n{self.text[-3000:]}") from None

    def logs(self) -> str:
        """The job's whole log from the job server (the driver's output, with the tasks' lines)."""
        return self.cluster.job_logs(self.job_id())


def test_job_on_the_cluster_equals_a_local_run(live_cluster, s3_server, raw, reference, tmp_path) -> None:
    out = f"s3://{BUCKET}/imagenet21k-p/fall11"
    job = Submission(live_cluster, launcher_entrypoint(out), tmp_path / "submit.log")
    assert job.wait() == 0, job.text[-4000:]
    print(f"job finished in {time.monotonic() - job.started:.0f} s")
    logs = job.logs()
    # The driver joined the cluster (2 CPUs, the head has none) rather than starting a Ray of its own.
    assert f"joined the Ray cluster at 127.0.0.1:{live_cluster.port}: 2 CPUs" in logs, logs[-3000:]
    assert re.search(r"writing shards: [\d,]+/[\d,]+ img \(100%\)", logs), "no progress line in the job log"
    assert outputs(s3_server, out) == reference
    # The cluster outlives the job: the driver only disconnected from it.
    assert live_cluster.alive_workers() == 2 and all(node.alive for node in live_cluster.nodes.values())


def test_a_worker_node_killed_midway(live_cluster, s3_server, raw, reference, tmp_path) -> None:
    out = f"s3://{BUCKET}/node-killed"
    job = Submission(live_cluster, launcher_entrypoint(out), tmp_path / "submit.log")
    total = len([k for k in reference if k.endswith(".tar")])
    job.wait_for_stats(s3_server, out, 3)
    # The node to kill is one that is writing a shard now (Ray may well keep a small job on one node).
    deadline = time.monotonic() + 30
    while not (busy := running_nodes(live_cluster, job.job_id())):
        assert time.monotonic() < deadline and job.proc.poll() is None, "no shard task seen running"
        time.sleep(0.1)
    victim, survivor = busy[0], next(w for w in live_cluster.workers if w != busy[0])
    at_kill = stats_count(s3_server, out)
    killed_at = time.monotonic()
    live_cluster.kill_node(victim)
    assert job.wait() == 0, job.text[-4000:]
    print(
        f"{victim} killed while writing a shard, {at_kill}/{total} shards finished; the job finished "
        f"{time.monotonic() - killed_at:.0f} s later on {survivor} alone"
    )
    assert at_kill < total - 5, f"the kill came too late: {at_kill}/{total} shards were finished"
    tasks = live_cluster.tasks(job.job_id(), "write_shard")
    attempts = Counter((t["node"], t["attempt_number"], t["state"]) for t in tasks)
    print(f"shard task attempts by (node, attempt, state): {dict(attempts)}")
    # Ray ran again on the survivor the shard task the lost node was writing.
    assert any(n == survivor and a >= 1 and state == "FINISHED" for n, a, state in attempts), attempts
    assert outputs(s3_server, out) == reference


def test_the_driver_killed_midway_then_the_same_submit_again(live_cluster, s3_server, raw, reference, tmp_path) -> None:
    out = f"s3://{BUCKET}/driver-killed"
    entrypoint = launcher_entrypoint(out)
    first = Submission(live_cluster, entrypoint, tmp_path / "first.log")
    total = len([k for k in reference if k.endswith(".tar")])
    at_kill = first.wait_for_stats(s3_server, out, 3)
    driver = int(live_cluster.job(first.job_id())["driver_info"]["pid"])
    os.kill(driver, signal.SIGKILL)
    assert first.wait() != 0
    info = live_cluster.job(first.job_id())
    assert info["status"] == "FAILED", info
    time.sleep(2)  # let Ray end the dead driver's tasks (anything they still write is the same bytes anyway)
    finished = stats_count(s3_server, out)
    assert finished < total, f"the driver was killed too late: {finished}/{total} shards were finished"

    again = Submission(live_cluster, entrypoint, tmp_path / "again.log")
    assert again.cmd == first.cmd  # the very same command line
    assert again.wait() == 0, again.text[-4000:]
    logs = again.logs()
    resumed = re.search(r"resuming: (\d+) of (\d+) shards are finished and will not be redone", logs)
    assert resumed and int(resumed.group(1)) >= at_kill, logs[-3000:]
    print(
        f"driver killed with {at_kill}/{total} shards finished ({finished} when the job had failed); the rerun "
        f"skipped {resumed.group(1)} and finished in {time.monotonic() - again.started:.0f} s"
    )
    assert outputs(s3_server, out) == reference


def test_an_object_store_outage_midway(live_cluster, s3_server, raw, reference, tmp_path) -> None:
    out = f"s3://{BUCKET}/outage"
    job = Submission(live_cluster, launcher_entrypoint(out), tmp_path / "submit.log")
    total = len([k for k in reference if k.endswith(".tar")])
    at_stop = job.wait_for_stats(s3_server, out, 3)
    stopped = time.monotonic()
    s3_server.stop()
    try:
        time.sleep(10)
    finally:
        s3_server.restart()
    back = time.monotonic()
    assert job.wait() == 0, job.text[-4000:]
    logs = job.logs()
    shard_retries = re.findall(r"shard \S+ failed \(.*\); retry (\d+) of \d+ in", logs)
    read_retries = re.findall(r"byte ranges failed .*; retrying in", logs)
    print(
        f"S3 down {back - stopped:.0f} s from {at_stop}/{total} shards finished; job done "
        f"{time.monotonic() - back:.0f} s after it came back; {len(shard_retries)} shard retries (at most attempt "
        f"{max(map(int, shard_retries), default=0)}), {len(read_retries)} read retries inside tasks"
    )
    for line in logs.splitlines():
        if "WARNING" in line or "retry" in line or "retrying" in line:
            print("   ", line[:300])
    assert shard_retries or read_retries, "the outage did not touch the job"
    assert outputs(s3_server, out) == reference


def test_the_cluster_refuses_whoever_lacks_its_token(cluster, tmp_path) -> None:
    """No token, or another one: the job server answers 401/403 and ``ray job submit`` fails without starting a
    job. Every node got the token from a file: it is on no command line of theirs."""
    for token, status in ((None, 401), ("0" * 64, 403)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            cluster.jobs(token=token)
        assert refused.value.code == status
    marker = f"refused-{tmp_path.name}"
    for token, answer in ((None, "Missing authentication token"), ("0" * 64, "Invalid authentication token")):
        done = subprocess.run(
            cluster.submit_command(["echo", marker]),
            env=cluster.client_env(token),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0 and answer in done.stderr, done.stderr[-2000:]
    assert not [j for j in cluster.jobs() if marker in j.get("entrypoint", "")]  # with the token: no such job
    for name, node in cluster.nodes.items():
        for pid in node_processes(node.proc.pid):
            with contextlib.suppress(OSError):
                assert cluster.token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), (name, pid)


def test_prepare_joins_a_protected_cluster_only_with_its_token(cluster, raw, s3_server, tmp_path) -> None:
    """``in21k prepare --ray-address HOST:PORT`` from outside the cluster (``--plan-only``: the index tasks run on
    the cluster): with the token file in ``RAY_AUTH_TOKEN_PATH`` it joins; without a token, or with another one, it
    stops at once with one ``error:`` line that names the variables to set."""
    out = f"s3://{BUCKET}/plan-from-outside"
    small = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    argv = [
        str(BIN / "python"),
        "-m",
        "in21k",
        "prepare",
        "--raw",
        raw,
        "--out",
        out,
        "--ray-address",
        cluster.gcs_address,
        "--plan-only",
        "--no-progress",
        *small,
    ]
    for token, says in ((None, "requires an auth token and none was given"), ("0" * 64, "refused the auth token")):
        env = cluster.client_env(token, extra=s3_server.env)
        env.pop("RAY_AUTH_MODE", None)  # what a user sets: the token alone
        started = time.monotonic()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
        assert errors[0].startswith("in21k prepare: error: ") and says in errors[0], errors
        assert "RAY_AUTH_TOKEN_PATH" in errors[0] and re.search(r"RAY_AUTH_TOKEN(?!_)", errors[0]), errors
        assert time.monotonic() - started < 30  # not Ray's own 20 s of retries
    env = cluster.client_env("cluster", extra=s3_server.env)
    env.pop("RAY_AUTH_MODE")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"joined the Ray cluster at 127.0.0.1:{cluster.port}: 2 CPUs" in done.stderr
