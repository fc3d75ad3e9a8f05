"""Shared test setup: a local-only Ray environment, real S3-compatible and GCS servers on 127.0.0.1, and one run of
``in21k demo`` that the tests of its outputs share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from in21k.benchmarks.gcslocal import LocalGCS, start_local_gcs
from in21k.benchmarks.s3local import LocalS3, start_local_s3

# The embedded Ray must bind and talk on 127.0.0.1 only, without usage reporting. RAY_AUTH_MODE stays unset, as on
# a user's machine: every local Ray the tests start gets token authentication and a token of its own from
# in21k.pipeline.job.local_ray, the way `in21k prepare` starts one.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# torch.distributed (gloo) tests talk over loopback only, whatever the host name resolves to.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """SeaweedFS (``weed mini``) on 127.0.0.1 with S3 credentials, killed at the end of the session: its data is
    thrown away, and a graceful stop after a whole session's buckets took 12 s."""
    server = start_local_s3(tmp_path_factory.mktemp("seaweedfs"), key="in21k-test", secret="in21k-test-secret")
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGCS]:
    """fake-gcs-server on 127.0.0.1 (``STORAGE_EMULATOR_HOST`` via ``.env``), stopped at the end of the session."""
    server = start_local_gcs(tmp_path_factory.mktemp("fake-gcs"))
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class DemoRun:
    """One finished ``in21k demo --out OUT --epochs 2``: its folder, its output, its summary (the last stdout line)."""

    out: Path
    stdout: str
    stderr: str
    summary: dict[str, Any]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``in21k demo`` as ``make demo`` runs it (two training epochs to keep the suite short), once per session: the
    demo's own test checks it, and the tests of what users do with its outputs (export its model, read its shards
    with other tools) start from it. Tests that use it are ``slow`` and ``ray``."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "in21k", "demo", "--out", str(out), "--epochs", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return DemoRun(out, proc.stdout, proc.stderr, json.loads(proc.stdout.strip().splitlines()[-1]))
