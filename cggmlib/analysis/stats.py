"""Multi-seed statistics: mean ± std with a Student-t 95% interval, and paired seed-wise comparisons.

The paper reports single numbers with no error bars (its checklist says so); these
helpers let every table of the companion say how much a number moves with the seed. Intervals use
the t distribution with n − 1 degrees of freedom (scipy.stats.t), the usual choice for a handful of
seeds; with n = 1 there is no spread to estimate and std and the interval are NaN, never 0.

    frame = collect("results", profile="paper")          # one row per (run, metric)
    table = summarize(frame, ["dataset", "strategy"])    # mean, std, n, ci_low, ci_high per metric
    paired_difference(seed_values(frame, "iemocap", "cggm", "acc"),
                      seed_values(frame, "iemocap", "joint", "acc"))
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as st

from ..errors import ResultsError
from ..runs.folder import load_run


def aggregate(values, confidence: float = 0.95) -> dict:
    """mean, std (n − 1), n and the Student-t interval mean ± t_{(1+c)/2, n−1} · std/√n of finite values."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": math.nan, "n": 1, "ci_low": math.nan, "ci_high": math.nan}
    std = float(x.std(ddof=1))
    half = float(st.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def paired_difference(a: dict, b: dict, confidence: float = 0.95) -> dict:
    """a − b over the seeds both have: {mean, std, n, ci_low, ci_high, seeds}, a Student-t interval on
    the per-seed differences (the paired design removes the variance that a seed shares across methods)."""
    seeds = sorted(k for k in set(a) & set(b) if _finite(a[k]) and _finite(b[k]))
    if not seeds:
        raise ResultsError(f"no common seed with finite values: first method has seeds {sorted(a)}, "
                           f"second has {sorted(b)}; run both methods on the same seeds")
    return aggregate([a[k] - b[k] for k in seeds], confidence) | {"seeds": seeds}


def format_mean_std(mean: float, std: float, digits: int = 2, scale: float = 1.0) -> str:
    """'mean ± std' (e.g. scale=100 for percentages); a single run prints its value alone."""
    if not _finite(mean):
        return "–"
    if not _finite(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


_SEED = re.compile(r"seed(\d+)$")
_BOOKKEEPING = {"best_epoch", "epochs_run", "skipped_steps"}


def collect(results, profile: str | None = None) -> pd.DataFrame:
    """Every completed run under results/<profile>/<dataset>/<strategy>/seed<k>/, one row per metric.

    Columns: profile, dataset, strategy, seed, metric, value, standin, path. Top-level numeric
    entries of metrics.json (the test metrics of the validation-selected epoch) become metrics,
    `val/<m>` rows hold the validation values and `official/<m>` the number the official script would
    print; bookkeeping (best_epoch, epochs_run, skipped_steps) is left out. Folders without
    metrics.json (unfinished runs) are skipped.
    """
    root = Path(results)
    pattern = f"{profile or '*'}/*/*/seed*/metrics.json"
    rows = []
    for path in sorted(root.glob(pattern)):
        run = path.parent
        match = _SEED.match(run.name)
        if match is None:
            continue
        metrics = load_run(run)["metrics"]
        base = {"profile": run.parents[2].name, "dataset": run.parents[1].name, "strategy": run.parent.name,
                "seed": int(match.group(1)), "standin": bool(metrics.get("standin", False)), "path": str(run)}
        flat = {k: v for k, v in metrics.items() if _number(v) and k not in _BOOKKEEPING}
        flat |= {f"val/{k}": v for k, v in (metrics.get("val") or {}).items() if _number(v)}
        official = metrics.get("official") or {}
        if _number(official.get("value")) and official.get("metric"):
            flat[f"official/{official['metric']}"] = official["value"]
        rows += [base | {"metric": k, "value": float(v)} for k, v in flat.items()]
    columns = ["profile", "dataset", "strategy", "seed", "metric", "value", "standin", "path"]
    return pd.DataFrame(rows, columns=columns)


def summarize(frame: pd.DataFrame, by=("profile", "dataset", "strategy"), confidence: float = 0.95) -> pd.DataFrame:
    """mean, std, n, ci_low, ci_high and a 'mean ± std' column per group of `by` and metric."""
    keys = [*by, "metric"]
    out = []
    for group, sub in frame.groupby(keys, sort=True):
        agg = aggregate(sub["value"], confidence)
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        out.append(row | agg | {"seeds": sorted(sub["seed"].tolist()), "standin": bool(sub["standin"].any()),
                                "mean ± std": format_mean_std(agg["mean"], agg["std"], digits=4)})
    return pd.DataFrame(out, columns=[*keys, "mean", "std", "n", "ci_low", "ci_high", "seeds", "standin",
                                      "mean ± std"])


def seed_values(frame: pd.DataFrame, dataset: str, strategy: str, metric: str, profile: str | None = None) -> dict:
    """{seed: value} of one (dataset, strategy, metric), for `paired_difference`."""
    sel = (frame["dataset"] == dataset) & (frame["strategy"] == strategy) & (frame["metric"] == metric)
    if profile is not None:
        sel &= frame["profile"] == profile
    sub = frame[sel]
    if sub["seed"].duplicated().any():
        raise ResultsError(f"{dataset}/{strategy}/{metric}: several runs share a seed (several profiles?); "
                           "pass profile= to pick one")
    return dict(zip(sub["seed"].astype(int), sub["value"].astype(float)))


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
