"""Benchmark rows as text: one machine-readable line per row (`line`) and the Markdown tables of
`cggm bench` and the GPU check (`markdown`)."""
from __future__ import annotations

import os
import statistics

from .suites import fit_line

#: the order of a row's fields in `line`
KEYS = ("suite", "model", "size", "device", "threads", "batch", "modalities", "strategy", "variant", "step_ms",
        "joint_ms", "vs_joint", "exact_ms", "released_ms", "vs_released", "exact_vs_released", "vs_exact", "heads_ms", "overhead_vs_heads", "overhead_vs_heads_min", "peak_mb", "extra_mb", "cached_step_ms",
        "encode_ms", "recompute_step_ms", "speedup", "seed", "metric", "value", "train_s", "reps", "error")


def line(row: dict) -> str:
    """key=value pairs in a fixed order (machine-readable: split on spaces, then on the first '=')."""
    keys = [k for k in KEYS if k in row] + [k for k in row if k not in KEYS]
    return " ".join(f"{k}={_fmt(row[k])}" for k in keys if row[k] not in (None, "") and not isinstance(row[k], dict))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v).replace(" ", "_")


def machine_load() -> str:
    """The load average at the end of a run (the timings of a busy machine are noisy)."""
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg() + f" on {os.cpu_count()} CPUs"
    except (OSError, AttributeError):
        return "load average unknown"


def markdown(rows: list[dict], load: str = "") -> str:
    """The tables: per-strategy ratios, cost against modalities and batch size, Food-101 cache speed-up."""
    out = ["# cggm bench\n\nMedians of alternated steps" + (f"; {load} at the end of the run" if load else "") + ".\n"]
    strat = [r for r in rows if r.get("suite") == "strategies"]
    if strat:
        out.append("| model | device | batch | strategy | variant | step ms | vs_joint | overhead_vs_heads (min-based) "
                   "| peak MB | extra MB |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in strat:
            if "error" in r:
                out.append(f"| {r['model']} | {r['device']} | | {r['strategy']} | {r['variant']} | error: {r['error']} | | | | |")
                continue
            out.append(f"| {r['model']} | {r['device']} | {r['batch']} | {r['strategy']} | {r['variant']} | "
                       f"{r['step_ms']:.1f} | {r['vs_joint']:.2f} | {_overhead(r)} | "
                       f"{_opt(r, 'peak_mb', '.0f')} | {_opt(r, 'extra_mb', '+.1f')} |")
    mods = [r for r in rows if r.get("suite") == "modalities" and "error" not in r]
    if mods:
        out.append("\n| modalities | joint ms | CGGM ms | classifiers ms | CGGM − joint ms | vs_joint | overhead_vs_heads (min-based) |")
        out.append("|---|---|---|---|---|---|---|")
        for r in mods:
            out.append(f"| {r['modalities']} | {r['joint_ms']:.2f} | {r['step_ms']:.2f} | {r['heads_ms']:.2f} | "
                       f"{r['step_ms'] - r['joint_ms']:.2f} | {r['vs_joint']:.2f} | {_overhead(r)} |")
        if len(mods) >= 3:
            slope, icpt, r2 = fit_line([r["modalities"] for r in mods], [r["step_ms"] - r["joint_ms"] for r in mods])
            out.append(f"\nCGGM − joint ≈ {icpt:.2f} + {slope:.2f}·M ms (least squares, R² = {r2:.3f}).")
    sizes = [r for r in rows if r.get("suite") == "batch" and "error" not in r]
    if sizes:
        out.append("\n| batch | joint ms | CGGM ms | classifiers ms | vs_joint | overhead_vs_heads (min-based) |")
        out.append("|---|---|---|---|---|---|")
        for r in sizes:
            out.append(f"| {r['batch']} | {r['joint_ms']:.1f} | {r['step_ms']:.1f} | {r['heads_ms']:.1f} | "
                       f"{r['vs_joint']:.2f} | {_overhead(r)} |")
    rel = [r for r in rows if r.get("suite") == "released" and "error" not in r]
    if rel:
        out.append("\n| model | size | device | threads | batch | part | ours ms | exact ms | released ms | "
                   "ours / released | exact / released | ours / exact |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rel:
            out.append(f"| {r['model']} | {r['size']} | {r['device']} | {r['threads']} | {r['batch']} | {r['variant']} | "
                       f"{r['step_ms']:.1f} | {r['exact_ms']:.1f} | {r['released_ms']:.1f} | {r['vs_released']:.3f} | "
                       f"{r['exact_vs_released']:.3f} | {r['vs_exact']:.3f} |")
    light = [r for r in rows if r.get("suite") == "light" and "error" not in r]
    if light:
        out.append(_light_table(light))
    for r in (r for r in rows if r.get("suite") == "food_cache" and "error" not in r):
        out.append(f"\nFood-101, batch {r['batch']} on {r['device']}: a step on cached tokens {r['cached_step_ms']:.0f} ms; "
                   f"frozen ViT-B/16 + BERT-base on every batch adds {r['encode_ms']:.0f} ms "
                   f"(×{r['speedup']:.1f} per step).")
    return "\n".join(out) + "\n"


def _light_table(rows: list[dict]) -> str:
    """Mean ± std over seeds of the selected metric and of the training time, per (model, classifier)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r.get("size", ""), r["variant"], r["metric"], r["standin"]), []).append(r)
    lines = ["\n| model | preset | classifiers | metric | mean ± std | train s | seeds | data |", "|---|---|---|---|---|---|---|---|"]
    for (model, size, variant, metric, standin), rs in groups.items():
        vals, secs = [r["value"] for r in rs], [r["train_s"] for r in rs]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {model} | {size} | {variant.split('/')[-1]} | {metric} | {statistics.mean(vals):.3f} ± {sd:.3f} | "
                     f"{statistics.mean(secs):.1f} | {len(rs)} | {'stand-in' if standin else 'real'} |")
    return "\n".join(lines)


def _overhead(row: dict) -> str:
    if "overhead_vs_heads" not in row:
        return ""
    low = f" ({row['overhead_vs_heads_min']:.2f})" if "overhead_vs_heads_min" in row else ""
    return f"{row['overhead_vs_heads']:.2f}{low}"


def _opt(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else ""


__all__ = ["KEYS", "line", "machine_load", "markdown"]
