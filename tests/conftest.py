"""Shared test setup: a local-only Ray environment, and real S3-compatible and GCS servers on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator

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
    """SeaweedFS (``weed mini``) on 127.0.0.1 with S3 credentials, stopped at the end of the session."""
    server = start_local_s3(tmp_path_factory.mktemp("seaweedfs"), key="in21k-test", secret="in21k-test-secret")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGCS]:
    """fake-gcs-server on 127.0.0.1 (``STORAGE_EMULATOR_HOST`` via ``.env``), stopped at the end of the session."""
    server = start_local_gcs(tmp_path_factory.mktemp("fake-gcs"))
    try:
        yield server
    finally:
        server.stop()
