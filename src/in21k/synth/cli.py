"""``in21k synth``: write a synthetic raw ImageNet-21K release."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from in21k.config import add_config_args, config_from_args, print_config_requested, save_config


def _run(args: argparse.Namespace) -> int:
    from in21k.synth import SynthConfig, write_synthetic_release

    cfg = config_from_args(args, SynthConfig)
    if print_config_requested(args, cfg):
        return 0
    report = write_synthetic_release(cfg)
    save_config(cfg, Path(cfg.out) / "synth_config.yaml")
    print(json.dumps({"out": cfg.out, "layout": cfg.layout, "files": len(report["files"]), **report["totals"]}))
    return 0


def register(commands) -> None:
    from in21k.synth.generator import SynthConfig

    parser = commands.add(
        "synth",
        help="write a synthetic raw ImageNet-21K release (real wnids, real layout, bad members included)",
        description="Write a synthetic raw ImageNet-21K release, deterministic by --seed: per-class tars of "
        "nXXXXXXXX_N.JPEG members over real WordNet chains, varied sizes, and a share of the real release's bad "
        "members. OUT/synth_report.json counts what was written, member by member; OUT/class_list.txt lists the "
        "WordNet-noun classes in a seeded order (for prepare --classes).\n\n"
        "--layout processed / processed-tar-gz / parquet make, from those members, the processed ImageNet-21K-P "
        "release as the original's script would (imagenet21k_train/, imagenet21k_val/, imagenet21k_small_classes/; "
        "--size, --min-images, --val-per-class), as folders or one .tar.gz, or its train and validation splits as "
        "hub-layout parquet files (--image-format jpeg or webp).\n\n"
        "--plant N adds N copies of existing members of each kind (exact, re-encoded, rescaled, cropped, framed, "
        "recoloured) inside their class and N into another class, and --eval-images M an evaluation set of M "
        "pictures (OUT/eval_set/), about half of them also planted in the release; synth_report.json lists every "
        "planted pair, for scoring prepare's duplicate finder (in21k bench dedup, the demo).\n\n"
        "--shape fall11 --members N writes fall11's real shape instead, for load tests of `in21k prepare`: "
        "21,841 class tars of real WordNet noun wnids at full size (14,197,122 members), the 11,221 "
        "ImageNet-21K-P classes with 501+ members and the others with fewer than 500, long-tailed class "
        "sizes with fall11's exact totals, every member a tiny valid JPEG (~15 GB at full size). Smaller N "
        "scales classes and members proportionally, so prepare's defaults give the same shape; "
        "OUT/synth_report.json then holds per-class counts and what prepare must plan.\n\n"
        "  in21k synth /data/fall11_1m --shape fall11 --members 1000000",
    )
    add_config_args(parser, SynthConfig, positional=("out",))
    parser.set_defaults(func=_run)
