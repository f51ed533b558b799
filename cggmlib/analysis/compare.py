"""Every strategy side by side on one dataset, over several seeds, on the same seeds (CPU-sized).

`compare(["synthetic", "mfeat"], seeds=3)` trains each (dataset, method, seed) once through
`run_experiment` (completed runs are reused), then tabulates the test metric selected on validation
as mean ± std, the paired difference to joint training on the same seeds with its 95% interval, and
the held-out accuracy of each modality's classifier where the method trains them. `cggm compare`
is the command; the README's baseline table comes from it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import Config
from ..data import load_data
from ..errors import CGGMError
from ..experiment import run_experiment
from ..modulation import STRATEGIES
from . import stats

#: the CGGM variants shown beside the baselines: label -> strategy options
CGGM_VARIANTS = {"cggm": {}, "cggm+guard": {"guard": True}, "cggm-paper": {"variant": "paper"},
                 "cggm-paper+guard": {"variant": "paper", "guard": True}}


def methods(modalities: list[str], names=None) -> dict[str, tuple[str, dict]]:
    """label -> (strategy, options): every registered strategy, unimodal once per modality, CGGM variants."""
    names = sorted(STRATEGIES) if names in (None, ["all"], ("all",)) else list(names)
    first = [n for n in ("joint", "unimodal", "cggm") if n in names]  # reference rows, then the method
    names = first + [n for n in names if n not in first]
    out: dict[str, tuple[str, dict]] = {}
    for name in names:
        if name == "unimodal":
            out |= {f"unimodal:{m}": ("unimodal", {"modality": m}) for m in modalities}
        elif name == "cggm":
            out |= {label: ("cggm", kw) for label, kw in CGGM_VARIANTS.items()}
        elif name == "joint":
            out["joint"] = ("joint", {"observe": True})  # passive classifiers: per-modality accuracy
        else:
            out[name] = (name, {})
    return out


def compare(datasets, seeds: int = 3, names=None, epochs: int | None = None, results="results/compare",
            data_root="data", preset="smoke", progress=False, log=print) -> pd.DataFrame:
    """Run (or reuse) the grid and return one row per (dataset, method) with mean ± std and Δ vs joint."""
    rows = []
    for dataset in datasets:
        probe = Config(dataset=dataset, preset=preset, data_root=data_root, epochs=epochs)

        modalities = load_data(dataset, data_root, batch_size=probe.batch_size).modalities
        per_seed: dict[str, dict[int, dict]] = {}
        for label, (strategy, options) in methods(modalities, names).items():
            per_seed[label] = {}
            for seed in range(seeds):
                cfg = Config(dataset=dataset, strategy=strategy, strategy_kwargs=options, seed=seed,
                             epochs=epochs, preset=preset, data_root=data_root)
                out = Path(results) / dataset / label.replace(":", "-") / f"seed{seed}"
                try:
                    result = run_experiment(cfg, out, skip_done=True, progress=progress)
                except CGGMError as err:  # e.g. PMR on regression: the table says why
                    per_seed[label] = {"error": str(err).splitlines()[0]}
                    break
                per_seed[label][seed] = result.metrics
                log(f"{dataset} {label} seed{seed}: {result.metrics.get(result.metrics['selected_on'].split('/')[1])}")
        rows += _rows(dataset, per_seed)
    return pd.DataFrame(rows)


def _rows(dataset: str, per_seed: dict) -> list[dict]:
    joint = per_seed.get("joint", {})
    rows = []
    for label, runs in per_seed.items():
        if "error" in runs:
            rows.append({"dataset": dataset, "method": label, "n/a": runs["error"]})
            continue
        first = next(iter(runs.values()))
        metric = first["selected_on"].split("/", 1)[1]
        values = {s: m.get(metric) for s, m in runs.items()}
        agg = stats.aggregate(values.values())
        row = {"dataset": dataset, "method": label, "metric": metric, "mean": agg["mean"], "std": agg["std"],
               "n": agg["n"], "ours": stats.format_mean_std(agg["mean"], agg["std"], 2, 100),
               "standin": first.get("standin", False)}
        if label != "joint" and joint and "error" not in joint:
            diff = stats.paired_difference(values, {s: m.get(metric) for s, m in joint.items()})
            row |= {"vs_joint": diff["mean"], "vs_joint_ci": (diff["ci_low"], diff["ci_high"])}
        heads = [m.get("classifiers") for m in runs.values() if m.get("classifiers")]
        for modality in (heads[0] if heads else {}):
            key = "acc" if "acc" in heads[0][modality] else "mae"  # classification or regression
            row[f"f_{modality}"] = stats.aggregate([h[modality][key] for h in heads])["mean"]
        rows.append(row)
    return rows


def to_markdown(frame: pd.DataFrame) -> str:
    """The comparison as a Markdown table (percentages for accuracies; intervals in brackets)."""
    lines = []
    for dataset, part in frame.groupby("dataset", sort=False):
        heads = [c for c in part.columns if c.startswith("f_") and part[c].notna().any()]
        kind = "synthetic data" if dataset == "synthetic" else \
            "STAND-IN data: not comparable with the paper" if part["standin"].fillna(False).any() else "real data"
        lines += [f"\n**{dataset}** ({kind}; {part['metric'].dropna().iloc[0]}, test, epoch selected on validation; "
                  "f_m: held-out accuracy of modality m's classifier)\n",
                  "| method | ours (mean ± std) | Δ vs joint [95% CI] | " + " | ".join(heads) + " |",
                  "|---|---|---|" + "---|" * len(heads)]
        for _, r in part.iterrows():
            if isinstance(r.get("n/a"), str):
                lines.append(f"| {r['method']} | n/a: {r['n/a']} | | " + " | ".join("" for _ in heads) + " |")
                continue
            delta = "" if pd.isna(r.get("vs_joint")) else \
                f"{100 * r['vs_joint']:+.2f} [{100 * r['vs_joint_ci'][0]:+.2f}, {100 * r['vs_joint_ci'][1]:+.2f}]"
            cells = " | ".join("" if pd.isna(r[h]) else f"{100 * r[h]:.1f}" for h in heads)
            lines.append(f"| {r['method']} | {r['ours']} | {delta} | {cells} |")
    return "\n".join(lines) + "\n"
