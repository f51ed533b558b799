"""Reviewer mode: `verify(results, profile)` checks every run card against its configuration;
`compare_results` tells whether two results folders of a profile hold the same runs and tables."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..config import stored_key
from ..files import read_json
from ..runs.checksums import recheck
from .pipeline import get_profile, grid, plan

CHECKED_CARD_FIELDS = ("git_commit", "config_key", "seed", "packages", "device", "wall_time_s", "data_files")


def verify(results, profile, data_root=None) -> pd.DataFrame:
    """One row per run of the profile's grid: status and the problems found in its receipts.

    Checks: config.json, metrics.json, run_card.json and the executed worker notebook exist; the
    stored configuration's key equals the run card's and the profile's; the card records commit,
    seed, versions, device, wall time and data checksums; with `data_root`, the checksums are
    recomputed and compared (files absent there are reported as not re-checked).
    """

    rows = []
    for spec in grid(profile):
        d = spec.path(results, profile)
        problems = []
        if not (d / "metrics.json").exists():
            rows.append({"run": f"{spec.dataset}/{spec.label}/seed{spec.seed}", "status": "missing", "problems": ""})
            continue
        card = read_json(d / "run_card.json", lenient=True)
        key = stored_key(d)
        if card is None:
            problems.append("run_card.json missing")
        else:
            problems += [f"run card lacks {f}" for f in CHECKED_CARD_FIELDS if card.get(f) in (None, "", {})
                         and f != "data_files"]
            if "data_receipt" not in card:
                problems.append("run card lacks the data checksums (no data_receipt)")
            elif not card.get("data_files") and not card["data_receipt"].startswith("generated"):
                problems.append("run card lists no data file")
            if card.get("config_key") != key:
                problems.append(f"run card key {card.get('config_key')} != key of config.json {key}")
            if card.get("seed") != spec.seed:
                problems.append(f"run card seed {card.get('seed')} != {spec.seed}")
        if key != spec.config(profile).key():
            problems.append("config.json is not the profile's configuration for this run")
        if not (d / "10_train.ipynb").exists():
            problems.append("executed worker notebook 10_train.ipynb missing")
        if card and data_root and card.get("data_files"):
            problems += recheck(card["data_files"], spec.dataset, data_root)
        rows.append({"run": f"{spec.dataset}/{spec.label}/seed{spec.seed}", "status": "ok" if not problems else "problem",
                     "problems": "; ".join(problems)})
    return pd.DataFrame(rows, columns=["run", "status", "problems"])


def compare_results(results, other, profile, only: list[str] | None = None) -> pd.DataFrame:
    """One row per run of the profile's grid and per report table: is `other` the same results folder?

    For instance a local run against a Slurm run of the same profile. A run is "same" when both folders
    hold it under the same configuration key and their metrics.json are equal (metrics.json holds no
    wall time); a table is "same" when its CSV files are byte for byte equal. Everything else is
    "differs" (with the first differing fields) or "missing" (with the side that lacks it). With `only`
    (as `cggm reproduce --only`), the runs those steps need, and the tables both folders hold.
    """

    prof = get_profile(profile) if isinstance(profile, str) else profile
    sides = [Path(results), Path(other)]
    rows = []
    specs = grid(prof) if not only else [step.spec for step in plan(prof, only) if step.spec is not None]
    for spec in specs:
        run = f"{spec.dataset}/{spec.label}/seed{spec.seed}"
        dirs = [spec.path(side, prof) for side in sides]
        lacking = [str(side) for side, d in zip(sides, dirs) if not (d / "metrics.json").is_file()]
        if lacking:
            rows.append({"item": run, "status": "missing", "detail": "no metrics.json in " + ", ".join(lacking)})
            continue
        keys = [stored_key(d) for d in dirs]
        metrics = [json.loads((d / "metrics.json").read_text()) for d in dirs]
        fields = _differing_fields(*metrics)
        detail = ([f"config key {keys[0]} != {keys[1]}"] if keys[0] != keys[1] else []) + \
            [f"{f}: {a!r} != {b!r}" for f, a, b in fields[:3]]
        rows.append({"item": run, "status": "differs" if detail else "same", "detail": "; ".join(detail)})
    tables = [sorted((side / prof.name / "tables").glob("*.csv")) for side in sides]
    names = {p.name for files in tables for p in files}
    if only:
        names = {p.name for p in tables[0]} & {p.name for p in tables[1]}
    for name in sorted(names):
        paths = [side / prof.name / "tables" / name for side in sides]
        lacking = [str(p.parent) for p in paths if not p.is_file()]
        if lacking:
            rows.append({"item": f"tables/{name}", "status": "missing", "detail": "not in " + ", ".join(lacking)})
        else:
            same = paths[0].read_bytes() == paths[1].read_bytes()
            rows.append({"item": f"tables/{name}", "status": "same" if same else "differs", "detail": ""})
    return pd.DataFrame(rows, columns=["item", "status", "detail"])


def _differing_fields(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """(field path, value in a, value in b) for every leaf where two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differing_fields(a.get(k), b.get(k), f"{prefix}/{k}" if prefix else str(k))]
    return [] if a == b else [(prefix or "/", a, b)]


__all__ = ["CHECKED_CARD_FIELDS", "compare_results", "verify"]
