"""Progress of long work, readable both on a terminal and in a log file.

On a terminal, a tqdm bar. Elsewhere (a Ray job log, a SLURM output file, a CI log) a bar redrawn in place
becomes either one unreadable line or thousands of them, so there a one-line status is logged every
``interval`` seconds (and at the end): ``indexing class tars: 8,000/21,841 tar (37%), 412 tar/s, eta 0:00:34``.
``IN21K_PROGRESS=bar|log|off`` overrides the choice (read when a progress starts, not at import).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("in21k.progress")


def progress(
    *,
    total: int | None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    interval: float = 30.0,
    **tqdm_kwargs: Any,
) -> Any:
    """A progress object with tqdm's ``update``, ``set_postfix``, ``close`` and context manager."""
    mode = os.environ.get("IN21K_PROGRESS", "").lower()
    if not enabled or mode == "off":
        return LogProgress(total=total, desc=desc, unit=unit, initial=initial, interval=float("inf"), silent=True)
    if mode == "bar" or (mode != "log" and sys.stderr.isatty()):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, **tqdm_kwargs)
    return LogProgress(total=total, desc=desc, unit=unit, initial=initial, interval=interval)


class LogProgress:
    """tqdm's interface, reported as a log line every ``interval`` seconds and at ``close``."""

    def __init__(
        self, *, total: int | None, desc: str, unit: str, initial: int = 0, interval: float = 30.0, silent: bool = False
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval, self.silent = interval, silent
        self.start = self.last = time.monotonic()
        self.initial = initial
        self.postfix = ""
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._report()

    def set_postfix(self, refresh: bool = True, **kwargs: Any) -> None:
        del refresh
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def _report(self) -> None:
        if self.silent:
            return
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        parts = [f"{self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:,.1f} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            eta = int((self.total - self.n) / rate)
            parts.append(f"eta {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")
        if self.postfix:
            parts.append(self.postfix)
        log.info("%s: %s", self.desc, ", ".join(parts))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._report()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
