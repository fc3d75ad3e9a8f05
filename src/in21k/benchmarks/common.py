"""What every benchmark reports beside its figures: the machine, and this process's memory."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """CPU count and model, Python, Pillow (and whether it is pillow-simd), torch: the figures' context."""
    import PIL

    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    out: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "pillow_simd": ".post" in PIL.__version__,
    }
    with contextlib.suppress(ImportError):
        import torch

        out["torch"] = torch.__version__
    return out


def process_memory_mb() -> dict[str, int]:
    """VmHWM (peak resident memory), VmRSS, RssAnon, RssFile and RssShmem of this process, in MB, from
    ``/proc/self/status`` (Linux); empty elsewhere."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) // 1024
    return out
