"""`cggm make-standin NAME --out DATA_ROOT`: write a small synthetic stand-in of a paper dataset.

The stand-in lands in `DATA_ROOT/<NAME>/` in the dataset's real on-disk format (MOSI: MulT pickles;
IEMOCAP: MMIN h5 + npy; ...), marked with STANDIN.json, and is checked with the dataset's doctor
right away. Every run on it is labelled stand-in. The writer fills a temporary sibling folder and
renames it into place when complete, so a kill or a full disk leaves nothing half-written; a second
writer of the same dataset waits for the first. Example:

    cggm make-standin mosi --out data --size train=120 --size noalign=False
    cggm train --dataset mosi --data-root data
"""
from __future__ import annotations

import ast
import importlib

from ..errors import ConfigError


def add_arguments(p) -> None:
    p.add_argument("names", nargs="+", metavar="NAME", help="dataset(s) to write (e.g. mosi iemocap), or 'all'")
    p.add_argument("--out", required=True, help="data root: the stand-in is written to OUT/<NAME>/")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    p.add_argument("--size", action="append", default=[], metavar="KEY=VALUE",
                   help="writer size option, e.g. train=120 or utterances=200 (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing stand-in; an unmarked folder holding only the stand-in's files (a "
                        "killed earlier write) is moved aside, not deleted; other files (real data?) are refused")


def _size(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--size must look like KEY=VALUE, got {item!r}")
        key, value = (x.strip() for x in item.split("=", 1))
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def run(args) -> int:
    from ..data import DATASETS
    from ..data.standins import STANDINS, available, write_standin

    names = available() if args.names == ["all"] else args.names
    size = _size(args.size)
    if size and len(names) > 1:
        raise ConfigError("--size options belong to one writer; give a single NAME with --size")
    status = 0
    for name in names:
        if name not in STANDINS:
            raise ConfigError(f"no stand-in for {name!r}; choose from {sorted(STANDINS)} or 'all'")
        folder = write_standin(name, args.out, seed=args.seed, overwrite=args.force, **size)
        files = [p for p in folder.rglob("*") if p.is_file()]
        mib = sum(p.stat().st_size for p in files) / 2**20
        print(f"wrote stand-in {name}: {folder} ({len(files)} files, {mib:.1f} MiB; synthetic, marked STANDIN.json)")
        report = importlib.import_module(f"cggmlib.data.{DATASETS[name]}").check(folder)
        if report.ok:
            print(f"  doctor: ok ({len(report.rows)} checks)")
        else:
            status = 1
            print("  doctor found problems in the stand-in (a bug in its writer):\n    " + "\n    ".join(report.problems))
        print(f"  next: cggm train --dataset {name} --data-root {args.out}")
    return status
