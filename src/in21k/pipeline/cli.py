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


def _audit(args: argparse.Namespace) -> int:
    from in21k.pipeline.audit import format_result, run_audit
    from in21k.pipeline.options import AuditConfig

    cfg = config_from_args(args, AuditConfig)
    if print_config_requested(args, cfg):
        return 0
    result = run_audit(cfg)
    print(json.dumps(result) if cfg.json else format_result(result))
    return 0


def register(commands) -> None:
    from in21k.pipeline.options import AuditConfig, PrepareConfig

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
    parser = commands.add(
        "audit",
        help="which images of a dataset are pictures of evaluation sets (nothing is rewritten)",
        description="Report the overlap of a dataset with evaluation sets: per set its images, unreadable ones, "
        "matched ones, and every matched pair (dataset key and shard, NAME:member, distances). DST is a dataset "
        "`in21k prepare` wrote (its manifest's fingerprints are used: nothing is decoded) or any WebDataset "
        "(.jpg/.jpeg/.png/.webp members are decoded). Images are compared as prepare compares them "
        "(docs/clean-data.md).\n\n  in21k audit --data s3://bucket/imagenet21k-p --against imagenet1k-val=/data/val",
    )
    add_config_args(parser, AuditConfig)
    parser.set_defaults(func=_audit)
