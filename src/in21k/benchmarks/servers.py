"""What the local storage servers of the tests and benchmarks share: a process group of their own, and the
environment variables that point clients at them (``s3local``: SeaweedFS; ``gcslocal``: fake-gcs-server)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from in21k.errors import SetupError


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

    def wait_until_answers(self, url: str, *, name: str, deadline: float, log_path: object, poll: float) -> None:
        """Return once ``url`` gives any HTTP answer (an error status too: the server listens); ``SetupError``
        if the process exits first or ``deadline`` (``time.monotonic()``) passes. The caller stops the server."""
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise SetupError(f"{name} exited with {self.proc.returncode}; see {log_path}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SetupError(f"{name} did not answer on {url} in time; see {log_path}") from None
                time.sleep(poll)

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
