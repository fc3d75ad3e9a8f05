"""The ``in21k`` command line: one entry point, one subcommand per working feature.

Each feature module exposes ``register(commands)`` and adds its own subcommand; heavy imports
(torch, ray, nltk) happen inside the command functions so ``in21k --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from in21k import __version__
from in21k.config import CommandParser, report_error
from in21k.errors import In21kError
from in21k.redact import install_log_filter

# Feature modules in the order their commands appear in --help. A command is listed only once it works.
COMMAND_MODULES: tuple[str, ...] = (
    "in21k.synth.cli",
    "in21k.tree.cli",
    "in21k.pipeline.cli",
    "in21k.training.cli",
    "in21k.predict.cli",
    "in21k.benchmarks.cli",
    "in21k.demo",
)


class Commands:
    """What a feature module gets to register its subcommands with."""

    def __init__(self, subparsers: argparse._SubParsersAction) -> None:
        self._sub = subparsers
        self._bench: argparse._SubParsersAction | None = None

    def add(self, name: str, *, help: str, description: str | None = None) -> argparse.ArgumentParser:  # noqa: A002
        return self._sub.add_parser(
            name, help=help, description=description or help, formatter_class=argparse.RawDescriptionHelpFormatter
        )

    def add_bench(self, name: str, *, help: str, description: str | None = None) -> argparse.ArgumentParser:  # noqa: A002
        """A subcommand of ``in21k bench``."""
        if self._bench is None:
            bench = self._sub.add_parser("bench", help="benchmarks that print ratios against a baseline run")
            self._bench = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
        return self._bench.add_parser(
            name, help=help, description=description or help, formatter_class=argparse.RawDescriptionHelpFormatter
        )


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="in21k",
        description="ImageNet-21K pretraining toolkit: semantic tree, Ray preprocessing, loaders, training.",
    )
    parser.add_argument("--version", action="version", version=f"in21k {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = Commands(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    install_log_filter(logging.getLogger().handlers)  # no credential in what is logged
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        status = int(func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that went away is noticed where it can be handled
        return status
    except In21kError as exc:
        # Problems the user can fix end with the message alone (it says what to do); everything else, bugs
        # and errors inside torch included, keeps its traceback. -v shows the traceback of these too.
        if args.verbose:
            raise
        return report_error(f"in21k {args.command}", exc)
    except BrokenPipeError:
        # The reader of our output closed it (`in21k tree info fall11 | head`): stop quietly, as a command killed
        # by SIGPIPE does, and point stdout at /dev/null so that the exit's own flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
