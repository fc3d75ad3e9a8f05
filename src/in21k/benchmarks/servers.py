"""What the local storage servers of the tests and benchmarks share: a process group of their own, and the
environment variables that point clients at them (``s3local``: SeaweedFS; ``gcslocal``: fake-gcs-server)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator


class ServerProcess:
    """A server started in its own session (``proc``), with the variables ``env`` that point clients at it."""

    proc: subprocess.Popen | None

    @property
    def env(self) -> dict[str, str]:
        raise NotImplementedError

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Export ``env`` in ``os.environ`` for the duration."""
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

    def kill(self) -> None:
        """End the server at once (SIGKILL to its process group), as a crash would."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """End the server (SIGTERM to its process group, SIGKILL after 30 s)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None
