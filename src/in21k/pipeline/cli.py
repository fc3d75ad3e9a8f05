"""``in21k prepare`` and ``in21k bench decode|prepare``."""

from __future__ import annotations

import argparse
import json
import logging

from in21k.config import add_config_args, config_from_args, config_to_dict, print_config_requested

log = logging.getLogger(__name__)

SECRET_WORDS = ("secret", "key", "token", "password", "credential")


def _redacted(cfg) -> dict:
    """The merged config with secret-looking storage options blanked, safe to save next to the data."""
    data = config_to_dict(cfg)
    so = data.get("storage_options")
    if isinstance(so, dict):
        data["storage_options"] = {
            k: ("<redacted>" if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in so.items()
        }
    return data


def _prepare(args: argparse.Namespace) -> int:
    import yaml

    from in21k.pipeline import PrepareConfig, prepare
    from in21k.pipeline.writer import Store

    cfg = config_from_args(args, PrepareConfig)
    if print_config_requested(args, cfg, as_dict=_redacted):
        return 0
    summary = prepare(cfg)
    Store(cfg.out, cfg.storage_options).write_bytes(
        "prepare_config.yaml", yaml.safe_dump(_redacted(cfg), sort_keys=False).encode()
    )
    print(json.dumps(summary))
    return 0


def _bench_decode(args: argparse.Namespace) -> int:
    from in21k.pipeline.bench import DecodeBenchConfig, print_result, run_decode_bench

    cfg = config_from_args(args, DecodeBenchConfig)
    return print_result(run_decode_bench(cfg), as_json=args.json)


def _bench_prepare(args: argparse.Namespace) -> int:
    from in21k.pipeline.bench import PrepareBenchConfig, print_result, run_prepare_bench

    cfg = config_from_args(args, PrepareBenchConfig)
    return print_result(run_prepare_bench(cfg), as_json=args.json)


def register(commands) -> None:
    from in21k.pipeline.bench import DecodeBenchConfig, PrepareBenchConfig
    from in21k.pipeline.options import PrepareConfig

    parser = commands.add(
        "prepare",
        help="the Ray job: raw ImageNet-21K release -> class-mixed WebDataset shards, manifest, tree",
        description="Read the raw release where it lies (class tars, fall11_whole.tar, a .tar.gz, or class "
        "folders; local or s3:// / gs://), prune classes, split validation, and write class-mixed WebDataset "
        "shards plus _info.json, classes.tsv, tree.json, imagenet21k_miil_tree.pth, manifest/ and report.* into "
        "DST. Rerunning into the same DST resumes: finished shards are never redone. See docs/pipeline.md.",
    )
    add_config_args(parser, PrepareConfig)
    parser.set_defaults(func=_prepare)

    decode = commands.add_bench(
        "decode",
        help="images/s per core of prepare's decode+resize+encode path vs the original's way",
        description="Decode, resize to 224 and encode at quality 95 a generated corpus with the real size mix, "
        "once with prepare's path (JPEG draft) and once the original's way (full decode; PIL BILINEAR stands in "
        "for cv2, which is not installed), in this one process. ratio = ours / baseline.",
    )
    add_config_args(decode, DecodeBenchConfig)
    decode.add_argument("--json", action="store_true", help="print one JSON object")
    decode.set_defaults(func=_bench_decode)

    bench_prepare = commands.add_bench(
        "prepare",
        help="end-to-end images/s of the Ray prepare job on N cores vs N x the single-core decode rate",
        description="Write a raw release of the bench corpus, measure the single-core decode rate on it, run "
        "prepare on a local Ray with N CPUs, and report ratio = job images/s / (N x single-core rate).",
    )
    add_config_args(bench_prepare, PrepareBenchConfig)
    bench_prepare.add_argument("--json", action="store_true", help="print one JSON object")
    bench_prepare.set_defaults(func=_bench_prepare)
