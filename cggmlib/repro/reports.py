"""What the report notebooks read: the status and results of every run of a profile's grid, dataset
summaries, configurations, traces and the extra result files, straight from results/<profile>/."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import stored_key
from ..errors import ResultsError
from ..files import read_json
from ..training.trace import Trace
from .pipeline import ARTIFACTS, Profile, RunSpec, get_profile, grid


def spec_status(spec: RunSpec, results, profile: Profile) -> str:
    """done (complete, same configuration, every artifact and receipt present) | partial | missing | stale."""
    d = spec.path(results, profile)
    if not (d / "config.json").exists():
        return "partial" if (d / "checkpoint.pt").exists() else "missing"
    if stored_key(d) != spec.config(profile).key():
        return "stale"
    if not (d / "metrics.json").exists():
        return "partial"
    card = read_json(d / "run_card.json", lenient=True) or {}
    missing = [a for a in spec.artifacts if not (d / ARTIFACTS[a]).exists()]
    return "done" if not missing and "data_receipt" in card and (d / "10_train.ipynb").exists() else "partial"


def results_root(results, profile: str) -> Path:
    """results/<profile>/, which a report reads; ResultsError (never a new empty folder) if it does not exist."""
    root = Path(results) / profile
    if not root.is_dir():
        raise ResultsError(f"the results folder {root} does not exist; run `cggm reproduce --profile {profile}` "
                           f"first, or pass the folder holding your runs with -p results <folder> -p profile <name>")
    return root


def collect(results, profile: Profile | str, groups=None) -> pd.DataFrame:
    """One row per run of the profile's grid (optionally only `groups`): spec, status and results.

    Columns: dataset, label, strategy, seed, kwargs, groups, path, status, done, standin, metrics (dict of
    metrics.json), classifiers (held-out metrics of each f_m, metrics.json "classifiers", or None), card
    (path of run_card.json relative to results/<profile>).
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    groups = {groups} if isinstance(groups, str) else set(groups or ())
    root = Path(results) / profile.name
    rows = []
    for s in grid(profile):
        if groups and not s.groups & groups:
            continue
        d = s.path(results, profile)
        status = spec_status(s, results, profile)
        done = (d / "metrics.json").exists() and status != "stale"
        metrics = read_json(d / "metrics.json", lenient=True) if done else None
        rows.append({"dataset": s.dataset, "label": s.label, "strategy": s.strategy, "seed": s.seed,
                     "kwargs": s.strategy_kwargs, "groups": sorted(s.groups), "path": str(d), "status": status,
                     "done": done, "standin": bool((metrics or {}).get("standin", False)), "metrics": metrics,
                     "classifiers": (metrics or {}).get("classifiers"),
                     "card": str((d / "run_card.json").relative_to(root)) if done else None})
    return pd.DataFrame(rows, columns=["dataset", "label", "strategy", "seed", "kwargs", "groups", "path", "status",
                                       "done", "standin", "metrics", "classifiers", "card"])


def dataset_summaries(results, profile: str) -> dict:
    """{dataset: summary} written by the data-preparation notebooks (results/<profile>/datasets/<d>.json)."""
    folder = Path(results) / profile / "datasets"
    return {p.stem: read_json(p, lenient=True) for p in sorted(folder.glob("*.json")) if not p.name.endswith(".checksums.json")}


def configs(runs: pd.DataFrame, label: str = "cggm") -> dict:
    """{dataset: config.json} of the first completed seed of `label` on each dataset."""
    out = {}
    for r in runs[(runs["label"] == label) & runs["done"]].sort_values("seed").itertuples():
        out.setdefault(r.dataset, read_json(Path(r.path) / "config.json", lenient=True))
    return out


def artifact(runs: pd.DataFrame, name: str, label: str = "cggm") -> dict:
    """{dataset: content} of an extra result file of `label`'s first seed (memory.json's content;
    the path of gradients.npz)."""
    out = {}
    for r in runs[(runs["label"] == label) & runs["done"]].sort_values("seed").itertuples():
        path = Path(r.path) / ARTIFACTS[name]
        if path.exists() and r.dataset not in out:
            out[r.dataset] = read_json(path, lenient=True) if path.suffix == ".json" else path
    return out


def trace(runs: pd.DataFrame, dataset: str, label: str, seed: int | None = None) -> pd.DataFrame:
    """The trace (every row) of one completed run, the first seed unless given; ResultsError if not run."""
    sel = runs[(runs["dataset"] == dataset) & (runs["label"] == label) & runs["done"]]
    if seed is not None:
        sel = sel[sel["seed"] == seed]
    if sel.empty:
        raise ResultsError(f"the run {dataset}/{label}{'' if seed is None else f'/seed{seed}'} has not completed in "
                           "this profile; run `cggm reproduce --profile <profile>` (or --only the notebook) first")
    return Trace.load(Path(sel.sort_values("seed").iloc[0]["path"]) / "trace.jsonl").frame()


def steps(runs: pd.DataFrame, dataset: str, label: str, seed: int | None = None) -> pd.DataFrame:
    """Only the per-step rows of `trace`."""
    frame = trace(runs, dataset, label, seed)
    return frame[frame["step"].notna()].reset_index(drop=True)


def standin(runs: pd.DataFrame) -> dict:
    """{dataset: True if any completed run on it used stand-in data}."""
    return {d: bool(sub["standin"].any()) for d, sub in runs[runs["done"]].groupby("dataset")}


__all__ = ["artifact", "collect", "configs", "dataset_summaries", "spec_status", "standin", "steps", "stored_key",
           "trace"]
