"""Progress in a log file: a status line at an interval and at the end, not a redrawn bar."""

from __future__ import annotations

import logging
import sys

from in21k.progress import LogProgress, progress


def test_log_progress_lines(monkeypatch, caplog):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="in21k.progress"):
        bar = progress(total=200, desc="writing shards", unit="img", interval=0.0)
        assert isinstance(bar, LogProgress)
        with bar:
            bar.update(50)
            bar.set_postfix(shards="1/4")
            bar.update(150)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("writing shards: 50/200 img (25%), ") and "eta" in lines[0]
    assert lines[-1].startswith("writing shards: 200/200 img (100%), ") and lines[-1].endswith("shards=1/4")
    assert "eta" not in lines[-1]


def test_off_and_forced_modes(monkeypatch, caplog):
    monkeypatch.setenv("IN21K_PROGRESS", "off")
    with caplog.at_level(logging.INFO, logger="in21k.progress"), progress(total=3, desc="x", interval=0) as bar:
        bar.update(3)
    assert not caplog.records
    monkeypatch.setenv("IN21K_PROGRESS", "bar")
    from tqdm import tqdm

    bar = progress(total=3, desc="x")
    assert isinstance(bar, tqdm)
    bar.close()
