"""``in21k tree build`` and ``in21k tree info``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from in21k.config import add_config_args, config_from_args, print_config_requested, save_config
from in21k.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TreeBuildConfig:
    synsets: str = field(
        default="fall11",
        metadata={
            "help": "class list: a file of wnids (one per line), or the name of one of timm's synset lists "
            "(imagenet21k_miil, imagenet21k_miil_w21, imagenet12k, imagenet22k, ...; fall11 and winter21 are the "
            "two ImageNet-21K-P lists)",
            "metavar": "FILE|NAME",
        },
    )
    order: Literal["sorted", "given"] = field(
        default="sorted",
        metadata={"help": "class indices in sorted wnid order, or in the list's own order (as published weights)"},
    )
    out: str = field(default="tree.json", metadata={"help": "where to write tree.json", "metavar": "PATH"})
    miil_pth: str | None = field(
        default=None, metadata={"help": "also write the original's imagenet21k_miil_tree.pth here", "metavar": "PATH"}
    )


@dataclass
class TreeInfoConfig:
    tree: str = field(
        default="",
        metadata={
            "help": "tree.json, imagenet21k_miil_tree.pth, or a built-in name: fall11, winter21",
            "metavar": "TREE",
        },
    )
    json: bool = field(default=False, metadata={"help": "print one JSON object"})

    def validate(self) -> None:
        if not self.tree:
            raise ConfigError("tree is required: a tree.json, an imagenet21k_miil_tree.pth, or fall11 / winter21")


def _build(args: argparse.Namespace) -> int:
    from in21k.tree import SemanticTree, load_class_list

    cfg = config_from_args(args, TreeBuildConfig)
    if print_config_requested(args, cfg):
        return 0
    wnids = load_class_list(cfg.synsets).wnids
    start = time.perf_counter()
    tree = SemanticTree.build(wnids, keep_order=cfg.order == "given")
    seconds = time.perf_counter() - start
    out = tree.save(cfg.out)
    save_config(cfg, out.with_name(out.stem + ".config.yaml"))
    if cfg.miil_pth:
        tree.to_miil_pth(cfg.miil_pth)
    summary = {**tree.summary(), "build_seconds": round(seconds, 2), "out": str(out), "miil_pth": cfg.miil_pth}
    print(json.dumps(summary))
    return 0


def _info(args: argparse.Namespace) -> int:
    from in21k.tree import SemanticTree

    cfg = config_from_args(args, TreeInfoConfig)
    if print_config_requested(args, cfg):
        return 0
    tree = SemanticTree.load(cfg.tree)
    summary = tree.summary()
    if cfg.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['num_classes']} classes, {summary['num_levels']} levels, {summary['num_roots']} roots")
    for k, n in enumerate(summary["classes_per_level"]):
        examples = ", ".join(tree.wnids[i] + " " + tree.names[i].split(",")[0] for i in tree.levels[k][:3])
        print(f"  level {k:2d}: {n:6d} classes  e.g. {examples}")
    return 0


def register(commands) -> None:
    parser = commands.add("tree", help="build and inspect the semantic tree (WordNet 3.0)")
    sub = parser.add_subparsers(dest="tree_command", metavar="ACTION", required=True)
    build = sub.add_parser(
        "build",
        help="build tree.json for a class list",
        description="Build the semantic tree of a class list from WordNet 3.0 and save tree.json "
        "(and optionally the original's imagenet21k_miil_tree.pth).",
    )
    add_config_args(build, TreeBuildConfig)
    build.set_defaults(func=_build)
    info = sub.add_parser("info", help="print levels and classes per level of a tree")
    add_config_args(info, TreeInfoConfig, positional=("tree",))
    info.set_defaults(func=_info)
