"""Fixtures of the pipeline tests: one local Ray for the session and small synthetic releases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# Small on purpose: 6 classes of 12..30 members, no 2000 px images, a generous share of bad members.
SYNTH = dict(classes=6, images="12:30", seed=3, large_share=0.0, small_share=0.1, bad_share=0.1, odd_share=0.1)
# Prepare options that suit SYNTH: some classes fall under min_images, several shards per split.
PREP = dict(min_images=17, val_per_class=3, shard_size=12, progress=False)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) shared by the session, started as ``prepare`` starts its own (token authentication
    on): ``ray.init`` costs seconds."""
    import ray

    from in21k.pipeline.job import local_ray

    if ray.is_initialized():
        yield ray
        return
    with local_ray(num_cpus=2):
        yield ray


def write_release(out: Path, **overrides: Any) -> dict:
    from in21k.synth import SynthConfig, write_synthetic_release

    return write_synthetic_release(SynthConfig(out=str(out), **{**SYNTH, **overrides}))


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same synthetic release (same seed, same members) in every raw layout."""
    root = tmp_path_factory.mktemp("raw")
    out = {}
    for name, extra in {
        "class-tars": {"layout": "class-tars"},
        "whole-tar": {"layout": "whole-tar", "whole_name": "fall11_whole.tar"},
        "whole-tar-gz": {"layout": "whole-tar", "whole_name": "winter21_whole.tar.gz"},
        "folders": {"layout": "folders"},
    }.items():
        write_release(root / name, **extra)
        out[name] = root / name
    return out


def synth_report(raw: Path) -> dict:
    return json.loads((raw / "synth_report.json").read_text())


def raw_arg(raw: Path) -> str:
    """The ``--raw`` of a synthetic release: the folder, or the outer archive for whole-tar layouts."""
    report = synth_report(raw)
    return str(raw / report["files"][0]) if report["layout"] == "whole-tar" else str(raw)


def prep_config(raw: str, out: Path | str, **overrides: Any):
    from in21k.pipeline import PrepareConfig

    return PrepareConfig(raw=raw, out=str(out), **{**PREP, **overrides})
