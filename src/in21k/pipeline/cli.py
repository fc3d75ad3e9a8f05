"""``in21k prepare``."""

from __future__ import annotations

import argparse
import json
import logging

from in21k.config import add_config_args, config_from_args, print_config_requested, saved_config
from in21k.redact import redact

log = logging.getLogger(__name__)


def _prepare(args: argparse.Namespace) -> int:
    import yaml

    from in21k.pipeline import PrepareConfig, prepare
    from in21k.storage import Store

    cfg = config_from_args(args, PrepareConfig)
    if print_config_requested(args, cfg):
        return 0
    summary = prepare(cfg)
    if cfg.plan_only:  # nothing goes into DST but _work/ (the summary is also in _work/plan.json)
        from in21k.pipeline.report import plan_text

        print(plan_text(summary), end="")
        return 0
    Store(cfg.out, cfg.storage_options).write_bytes(
        "prepare_config.yaml", yaml.safe_dump(saved_config(cfg), sort_keys=False).encode()
    )
    print(json.dumps(redact(summary)))
    return 0


def register(commands) -> None:
    from in21k.pipeline.options import PrepareConfig

    parser = commands.add(
        "prepare",
        help="the Ray job: raw ImageNet-21K release -> class-mixed WebDataset shards, manifest, tree",
        description="Read the release where it lies (class tars, fall11_whole.tar, a .tar.gz, class folders, the "
        "processed ImageNet-21K-P release as folders or .tar.gz, or parquet image files; local or s3:// / gs://), "
        "prune classes (or take exactly --classes LIST, in its order), split validation (or keep the input's own "
        "split), and write class-mixed WebDataset shards plus _info.json, classes.tsv, tree.json, "
        "imagenet21k_miil_tree.pth, manifest/ and report.* (which also identifies the release) into DST. "
        "Rerunning into the same DST resumes: finished shards are never redone. --plan-only stops after "
        "planning and prints what a run would keep, drop, read and write. See docs/pipeline.md.",
    )
    add_config_args(parser, PrepareConfig)
    parser.set_defaults(func=_prepare)
