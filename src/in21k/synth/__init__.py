"""Synthetic raw ImageNet-21K releases for tests, demos and benchmarks."""

from in21k.synth.generator import (
    CLASS_LIST_NAME,
    KINDS,
    READABLE_KINDS,
    REPORT_NAME,
    SYNSETS_NAME,
    UNREADABLE_KINDS,
    SynthConfig,
    drawing_paths,
    render,
    write_synthetic_release,
)

__all__ = [
    "CLASS_LIST_NAME",
    "KINDS",
    "READABLE_KINDS",
    "REPORT_NAME",
    "SYNSETS_NAME",
    "UNREADABLE_KINDS",
    "SynthConfig",
    "drawing_paths",
    "render",
    "write_synthetic_release",
]
