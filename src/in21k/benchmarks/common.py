"""What every benchmark reports beside its figures: the machine, and the printing of a result."""

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
