"""How the prepare job's tasks fail and are retried (``in21k.pipeline.job._completed``), on a local Ray.

A transient storage error is retried on the driver after a backoff, each retry logged; a lost worker process is
Ray's to retry (``max_retries``); anything else, or a spent budget, stops the job with a message that says what to
do. The cluster tests (test_prepare_cluster.py) do the same with real nodes, a real driver and a real S3 outage.
"""

from __future__ import annotations

import logging
import re

import pytest

from in21k.errors import StorageError
from in21k.pipeline import PrepareConfig
from in21k.pipeline import job as job_module
from in21k.pipeline.job import _completed

pytestmark = [pytest.mark.ray]


def config(**overrides) -> PrepareConfig:
    return PrepareConfig(raw="/raw", out="/out", **overrides)


def counting(path: str, i: int) -> int:
    """How many times task ``i`` has started before, counted in a file (tasks run in other processes)."""
    from pathlib import Path

    marker = Path(path) / str(i)
    n = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(n + 1))
    return n


def test_transient_errors_are_retried_with_backoff_and_logged(ray_local, tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(job_module, "RETRY_BASE_DELAY", 0.05)

    def flaky(i: int, path: str) -> int:
        if counting(path, i) < 2:
            raise ConnectionRefusedError(f"connection refused by 127.0.0.1 (task {i})")
        return 10 * i

    names = [f"shard {i}" for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="in21k.pipeline.job"):
        got = dict(_completed(flaky, names, lambda i: (i, str(tmp_path)), config(retries=3), window=lambda: 2))
    assert got == {0: 0, 1: 10, 2: 20, 3: 30}
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 8, retries  # two per task
    first = next(m for m in retries if m.startswith("shard 0 "))  # tasks run two at a time, in either order
    assert re.fullmatch(
        r"shard 0 failed \(ConnectionRefusedError: connection refused by 127\.0\.0\.1 \(task 0\)\); retry 1 of 3 in "
        r"0\.\d s",
        first,
    ), first
    assert sum("shard 3" in m and "retry 2 of 3" in m for m in retries) == 1


def test_a_spent_budget_stops_with_what_to_do(ray_local, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(job_module, "RETRY_BASE_DELAY", 0.01)

    def down(i: int, path: str) -> int:
        counting(path, i)
        raise TimeoutError("timed out connecting to the object store")

    with pytest.raises(StorageError) as info:
        list(_completed(down, ["shard a.tar"], lambda i: (i, str(tmp_path)), config(retries=2), window=lambda: 1))
    message = str(info.value)
    assert message.startswith("shard a.tar failed 3 times over ") and "TimeoutError: timed out" in message
    assert "rerun the same command to resume" in message and "--retries (2)" in message
    assert (tmp_path / "0").read_text() == "3"  # the first try and two retries

    with pytest.raises(StorageError, match=r"retries are off"):
        list(_completed(down, ["shard b.tar"], lambda i: (i, str(tmp_path)), config(retries=0), window=lambda: 1))


def test_other_errors_are_not_retried(ray_local, tmp_path) -> None:
    def buggy(i: int, path: str) -> int:
        counting(path, i)
        raise TypeError("a bug, not an outage")

    with pytest.raises(RuntimeError, match=r"shard c\.tar failed: a bug, not an outage\nFinished shards are kept"):
        list(_completed(buggy, ["shard c.tar"], lambda i: (i, str(tmp_path)), config(), window=lambda: 1))
    assert (tmp_path / "0").read_text() == "1"


def test_a_lost_worker_process_is_rays_to_retry(ray_local, tmp_path) -> None:
    def crashes_once(i: int, path: str) -> int:
        import os

        if counting(path, i) == 0:
            os._exit(1)  # the worker process dies, as when a node is lost or the OOM killer strikes
        return i

    got = dict(
        _completed(crashes_once, ["shard d.tar"], lambda i: (i, str(tmp_path)), config(max_retries=1), window=lambda: 1)
    )
    assert got == {0: 0}
    (tmp_path / "e").mkdir()
    with pytest.raises(RuntimeError, match=r"shard e\.tar: its Ray worker process or node was lost, and Ray's "):
        list(
            _completed(
                crashes_once,
                ["shard e.tar"],
                lambda i: (i, str(tmp_path / "e")),
                config(max_retries=0),
                window=lambda: 1,
            )
        )
