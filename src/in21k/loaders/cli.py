"""``in21k bench loader``: the loader benchmark's command line."""

from __future__ import annotations

import argparse

from in21k.config import add_config_args, config_from_args, print_config_requested


def _bench_loader(args: argparse.Namespace) -> int:
    from in21k.loaders.bench import LoaderBenchConfig, main_bench

    cfg = config_from_args(args, LoaderBenchConfig)
    if print_config_requested(args, cfg):
        return 0
    return main_bench(cfg, as_json=args.json)


def register(commands) -> None:
    from in21k.loaders.bench import LoaderBenchConfig

    parser = commands.add_bench(
        "loader",
        help="images/s of the streaming loader vs ImageFolder and vs the decode+transform limit",
        description="Images/s of in21k's streaming loader against (a) torchvision ImageFolder over the same images "
        "extracted to a temporary folder, same transform and workers, and (b) the per-sample decode+transform work "
        "in a tight loop (the limit). Targets: >= 1.2 x ImageFolder and >= 0.9 x the limit. --s3 also streams "
        "from a SeaweedFS server started on 127.0.0.1 and reports it against local disk.",
    )
    add_config_args(parser, LoaderBenchConfig)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_bench_loader)
