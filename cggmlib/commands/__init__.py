"""The `cggm` command line (also `python -m cggmlib`). One module per subcommand, each defining
`add_arguments(parser)` and `run(args) -> int`; this registry lists them."""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CGGMError

#: subcommand -> (module inside cggmlib.commands, one-line help)
COMMANDS = {
    "train": ("train", "train one (dataset, strategy, seed) run and write its results folder"),
    "doctor": ("doctor", "check dataset folders: layout, keys, shapes, dtypes, labels, splits"),
    "make-standin": ("standin", "write a small synthetic stand-in of a paper dataset in its real format"),
    "bench": ("bench", "step time and memory of joint training, CGGM and every baseline, side by side"),
    "compare": ("compare", "every strategy on the same seeds: mean ± std and the paired difference to joint"),
    "reproduce": ("reproduce", "run the paper's figures and tables as notebooks (profiles smoke, paper, colab)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cggm", description="CGGM companion: train, check data, reproduce the paper.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, (module, help_) in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(f".{module}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{module}":
                raise
            continue  # a subcommand whose module is not written yet
        modules[name].add_arguments(sub.add_parser(name, help=help_, description=help_))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(modules[args.command], "ACCEPTS_EXTRA", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(modules[args.command].run(args) or 0)
    except CGGMError as err:
        print(f"cggm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cggm {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
