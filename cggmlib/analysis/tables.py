"""The CGGM paper's Tables 1–8 as DataFrames built from run folders, and their CSV/Markdown/LaTeX files.

Guo et al., NeurIPS 2024. Every results table prints, per metric, the paper's number
(from the ledger, cggmlib/paper_numbers.csv; † = quoted by one third party only), ours as mean ± std
over seeds, and the difference, flagged when beyond the ledger's tolerance. Stand-in results are
marked and never compared. A `run cards` column cites the run_card.json files behind each row
(relative to results/<profile>/). Rows a profile did not train read "not run"; methods undefined on
a task read "n/a" with the reason.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..files import atomic_write_text
from ..modulation import strategy_class
from ..presets import REGISTRY, model_kwargs
from ..repro import ledger as L
from ..repro.pipeline import not_applicable
from .stats import aggregate, paired_difference

METHOD_NAMES = {"joint": "Baseline (joint training)", "mrd": "MRD", "mslr": "MSLR", "gblending": "G-Blending",
                "greedy": "Greedy", "ogm": "OGM", "ogm_ge": "OGM-GE", "agm": "AGM", "pmr": "PMR", "umt": "UMT",
                "ume": "UME", "qmf": "QMF", "reconboost": "ReconBoost", "mmpareto": "MMPareto", "cggm": "CGGM",
                "cggm.magnitude": "CGGM, magnitude only", "cggm.direction": "CGGM, direction only",
                "cggm.both": "CGGM, magnitude + direction"}
METRIC_NAMES = {"acc": "Acc", "f1": "F1", "acc2": "Acc-2", "acc7": "Acc-7", "mae": "MAE↓", "corr": "Corr",
                "dice_wt": "WT", "dice_tc": "TC", "dice_et": "ET", "dice_mean": "Avg"}
#: results tables: table -> [(dataset, metrics)], from the dataset registry (cggmlib/presets.py)
RESULTS: dict[str, list] = {}
for _facts in REGISTRY.values():
    if _facts.table:
        RESULTS.setdefault(_facts.table, []).append((_facts.name, _facts.reported))


def unit(metric: str) -> str:
    """How a metric is printed: percent, except regression errors and correlations."""
    return "raw" if metric.split("/")[0] in ("mae", "corr", "loss") else "%"


def method_name(label: str) -> str:
    if label.startswith("unimodal."):
        return f"{label.split('.', 1)[1]} only"
    return METHOD_NAMES.get(label, label)


def _cells(runs: pd.DataFrame, dataset: str, label: str, value) -> dict:
    """Seeds' values of `value(row)` for one (dataset, label): mean, std, n, stand-in, run cards."""
    sub = runs[(runs["dataset"] == dataset) & (runs["label"] == label) & runs["done"]]
    values = [value(r) for r in sub.itertuples()]
    agg = aggregate([v for v in values if v is not None])
    return agg | {"standin": bool(sub["standin"].any()), "cards": "; ".join(sub["card"].dropna()),
                  "planned": bool(((runs["dataset"] == dataset) & (runs["label"] == label)).any())}


def _metric(name):
    return lambda r: _num((r.metrics or {}).get(name))


def results_table(runs: pd.DataFrame, ledger: pd.DataFrame | None, table: str, dataset: str, metrics,
                  labels=None) -> pd.DataFrame:
    """One of Tables 2–4 (or any dataset): a row per method, paper | ours | Δ per metric (only ours
    without a ledger)."""
    labels = labels or [f"unimodal.{m}" for m in REGISTRY[dataset].modalities] + [
        "joint", "mrd", "mslr", "gblending", "greedy", "ogm", "agm", "pmr", "umt", "ume", "qmf", "reconboost", "cggm"]
    rows = []
    for label in labels:
        row, flags, cards, n = {"Method": method_name(label)}, [], "", 0
        reason = not_applicable(label, dataset)
        for metric in metrics:
            c = _cells(runs, dataset, label, _metric(metric))
            paper = L.cell(ledger, table, dataset, label, metric) if ledger is not None else None
            cmp = L.compare(paper or {"unit": unit(metric)}, c["mean"], c["std"], c["standin"])
            if reason:
                cmp["ours"] = "n/a"
            elif c["n"] == 0:
                cmp["ours"] = "missing" if c["planned"] else "not run"
            name = METRIC_NAMES.get(metric, metric)
            row |= ({f"{name} paper": cmp["paper"], f"{name} ours": cmp["ours"], f"{name} Δ": cmp["difference"]}
                    if ledger is not None else {name: cmp["ours"]})
            flags += [f"{name} {cmp['flag']}"] if cmp["flag"] else []
            cards, n = c["cards"] or cards, max(n, c["n"])
        extra = {"flags": "; ".join(flags)} if ledger is not None else {}
        rows.append(row | {"seeds": n} | extra | {"note": reason or "", "run cards": cards})
    return pd.DataFrame(rows)


def comparisons(runs: pd.DataFrame, ledger: pd.DataFrame, tables=("table2", "table3", "table4")) -> pd.DataFrame:
    """Long form of the ledger comparison: one row per paper cell of the given tables."""
    rows = []
    for _, cell in ledger[ledger["table"].isin(tables)].iterrows():
        c = _cells(runs, cell["dataset"], cell["method"], _metric(cell["metric"]))
        cmp = L.compare(cell.to_dict(), c["mean"], c["std"], c["standin"])
        rows.append({k: cell[k] for k in ("table", "dataset", "method", "metric")}
                    | {"paper": cmp["paper"], "source": cell["source"], "ours": cmp["ours"] if c["n"] else "not run",
                       "seeds": c["n"], "difference": cmp["difference"], "flag": cmp["flag"], "run cards": c["cards"]})
    return pd.DataFrame(rows)


def table1(summaries: dict, ledger: pd.DataFrame) -> pd.DataFrame:
    """Table 1: dataset, task, modalities (paper and ours), split sizes, real or stand-in."""
    rows = []
    for d in ("food101", "mosi", "iemocap", "brats2021"):
        s = summaries.get(d) or {}
        paper = L.cell(ledger, "table1", d, "-", "modalities") or {}
        sizes = s.get("sizes") or {}
        rows.append({"Dataset": d, "Task": REGISTRY[d].task, "Modalities": ", ".join(s.get("modalities") or REGISTRY[d].modalities),
                     "M paper": L.compare(paper, math.nan)["paper"], "M ours": len(s.get("modalities") or REGISTRY[d].modalities),
                     "train / val / test": " / ".join(str(sizes.get(k, "–")) for k in ("train", "val", "test")),
                     "data": ("stand-in" if s.get("standin") else "real") if s else "not prepared"})
    return pd.DataFrame(rows)


def classifier_accuracy(runs: pd.DataFrame, dataset: str, metric: str = "acc") -> pd.DataFrame:
    """Mean `metric` per modality (rows) under unimodal training and of f_m after joint and CGGM (columns)."""
    out = {}
    for group, label in (("unimodal", "unimodal.{m}"), ("joint", "joint"), ("cggm", "cggm")):
        out[group] = {m: _cells(runs, dataset, label.format(m=m), _metric(metric) if group == "unimodal"
                                else _classifier(m, metric))["mean"] for m in REGISTRY[dataset].modalities}
    return pd.DataFrame(out)


def table5(runs: pd.DataFrame, ledger: pd.DataFrame | None, dataset: str = "iemocap", metric: str = "acc") -> pd.DataFrame:
    """Table 5: accuracy of each modality under unimodal training, and of its classifier f_m on the frozen
    encoder (held-out test split) after joint training and after CGGM."""
    names = {"audio": "f1 (audio)", "vision": "f2 (video)", "text": "f3 (text)"}
    order = [m for m in ("audio", "vision", "text") if m in REGISTRY[dataset].modalities] or list(REGISTRY[dataset].modalities)
    rows = []
    for m in order:
        row = {"Classifier": names.get(m, m) if dataset == "iemocap" else m}
        for group, label, get in (("Unimodal", f"unimodal.{m}", _metric(metric)),
                                  ("Joint", "joint", _classifier(m, metric)), ("CGGM", "cggm", _classifier(m, metric))):
            c = _cells(runs, dataset, label, get)
            paper = L.cell(ledger, "table5", dataset, group.lower(), f"{metric}/{m}") if ledger is not None else None
            cmp = L.compare(paper or {"unit": unit(metric)}, c["mean"], c["std"], c["standin"])
            ours = cmp["ours"] if c["n"] else ("missing" if c["planned"] else "not run")
            row |= ({f"{group} paper": cmp["paper"], f"{group} ours": ours, f"{group} Δ": cmp["difference"]}
                    if ledger is not None else {group: ours})
        rows.append(row)
    return pd.DataFrame(rows)


def _classifier(m: str, metric: str):
    return lambda r: _num(((r.classifiers or {}).get(m) or {}).get(metric))


def table6(runs: pd.DataFrame, ledger: pd.DataFrame, dataset: str = "iemocap") -> pd.DataFrame:
    """Table 6: joint training, magnitude only, direction only, both (ρ, λ as run)."""
    settings = {"joint": ("–", "–"), "cggm.magnitude": ("1.0", "0"), "cggm.direction": ("none", "0.1"),
                "cggm.both": ("1.0", "0.1")}
    table = results_table(runs, ledger, "table6", dataset, ("acc", "f1"), labels=list(settings))
    table.insert(1, "ρ", [v[0] for v in settings.values()])
    table.insert(2, "λ", [v[1] for v in settings.values()])
    return table


def sweep(runs: pd.DataFrame, specs: dict, metrics=("acc", "f1")) -> pd.DataFrame:
    """Fig. 5: improvement over joint training, paired by seed: {param: {value: label}} -> long frame."""
    base = runs[(runs["label"] == "joint") & runs["done"]]
    rows = []
    for param, values in specs.items():
        for value, (dataset, label) in sorted(values.items()):
            sub = runs[(runs["dataset"] == dataset) & (runs["label"] == label) & runs["done"]]
            ref = base[base["dataset"] == dataset]
            for metric in metrics:
                a = {r.seed: _num(r.metrics.get(metric)) for r in sub.itertuples()}
                b = {r.seed: _num(r.metrics.get(metric)) for r in ref.itertuples()}
                if not set(a) & set(b):
                    continue
                d = paired_difference(a, b)
                rows.append({"param": param, "value": value, "metric": metric, "mean": d["mean"], "std": d["std"],
                             "n": d["n"], "standin": bool(sub["standin"].any())})
    return pd.DataFrame(rows, columns=["param", "value", "metric", "mean", "std", "n", "standin"])


def table7(configs: dict, ledger: pd.DataFrame) -> pd.DataFrame:
    """Table 7: the hyperparameters actually used (config.json of each dataset's CGGM run, with the
    strategy's and the model preset's defaults spelled out) beside the paper's cells."""
    import dataclasses

    rows = [("batch size", "batch_size"), ("optimizer", "optimizer"), ("learning rate", "lr"),
            ("classifier lr", "head_lr"), ("classifier optimizer", "head_optimizer"), ("weight decay", "weight_decay"),
            ("gradient clip", "grad_clip"), ("scheduler", "scheduler"), ("ρ", "rho"), ("λ", "lam"),
            ("CGGM warm-up epochs", "warmup_epochs"), ("LR warm-up epochs", "lr_warmup"), ("epochs", "epochs"),
            ("variant", "variant"), ("guard", "guard"), ("model", "model"), ("preset", "preset")]
    used = {}
    for d, cfg in configs.items():
        fields = {f.name: f.default for f in dataclasses.fields(strategy_class(cfg["strategy"]))
                  if f.default is not dataclasses.MISSING}
        model = model_kwargs(d, cfg["preset"]) | cfg.get("model_kwargs", {})
        model = {"arch": model["arch"]} | model[model["arch"]] if "arch" in model else model
        used[d] = cfg | fields | cfg.get("strategy_kwargs", {}) | {"lr_warmup": cfg.get("warmup_epochs"), "model": model}
    out = []
    for name, key in rows:
        row = {"Hyperparameter": name}
        for d, values in used.items():
            paper = L.cell(ledger, "table7", d, "cggm", key)
            row |= {f"{d} used": _short(values.get(key)), f"{d} paper": L.compare(paper, math.nan)["paper"]}
        out.append(row)
    return pd.DataFrame(out)


def table8(memory: dict, ledger: pd.DataFrame) -> pd.DataFrame:
    """Table 8: extra memory of the CGGM classifiers per dataset (exact parameter and optimizer bytes;
    peak allocation on CUDA only)."""
    rows = []
    for d, mem in memory.items():
        peak = mem.get("extra_peak_mb")
        cmp = L.compare(L.cell(ledger, "table8", d, "cggm", "extra_memory"),
                        peak if isinstance(peak, (int, float)) else math.nan, standin=bool(mem.get("standin")))
        rows.append({"Dataset": d, "classifier parameters": mem.get("classifier_params"),
                     "parameters (MB)": _round(mem.get("param_mb")), "optimizer state (MB)": _round(mem.get("optimizer_state_mb")),
                     "extra peak (MB)": _round(peak) if isinstance(peak, (int, float)) else peak,
                     "paper (MB)": cmp["paper"], "Δ": cmp["difference"], "device": mem.get("device"),
                     "data": "stand-in" if mem.get("standin") else "real"})
    return pd.DataFrame(rows)


def save(frame: pd.DataFrame, stem, caption: str = "", notes=()) -> list[Path]:
    """Write stem.csv, stem.md and stem.tex atomically (caption and notes in the Markdown and LaTeX)."""
    stem = Path(stem)
    frame = frame.astype(object).where(frame.notna(), "")
    md = (f"**{caption}**\n\n" if caption else "") + to_markdown(frame) + "\n" + "".join(f"\n{n}\n" for n in notes)
    return [atomic_write_text(stem.with_suffix(".csv"), frame.to_csv(index=False)),
            atomic_write_text(stem.with_suffix(".md"), md),
            atomic_write_text(stem.with_suffix(".tex"), to_latex(frame, caption, notes))]


def to_markdown(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
        "ρ": r"$\rho$", "λ": r"$\lambda$", "↓": r"$\downarrow$", "†": r"$^\dagger$", "–": "--", "−": "$-$"}


def tex_escape(text) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(frame: pd.DataFrame, caption: str = "", notes=()) -> str:
    """A booktabs table (\\usepackage{booktabs}); UTF-8 symbols mapped to math mode."""
    head = " & ".join(tex_escape(c) for c in frame.columns) + r" \\"
    body = "\n".join(" & ".join(tex_escape(v) for v in row) + r" \\" for row in frame.itertuples(index=False))
    foot = "".join(f"\n\\par\\footnotesize {tex_escape(n)}" for n in notes)
    cap = f"\\caption{{{tex_escape(caption)}}}\n" if caption else ""
    return (f"\\begin{{table}}[t]\n\\centering\n{cap}\\resizebox{{\\linewidth}}{{!}}{{%\n"
            f"\\begin{{tabular}}{{{'l' * len(frame.columns)}}}\n\\toprule\n{head}\n\\midrule\n{body}\n"
            f"\\bottomrule\n\\end{{tabular}}}}{foot}\n\\end{{table}}\n")


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _round(v, digits: int = 3):
    return round(float(v), digits) if isinstance(v, (int, float)) else v


def _short(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_short(x)}" for k, x in v.items() if not isinstance(x, dict))
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_short(x) for x in v) + ")"
    return "–" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


NOTES = ("paper: cggmlib/paper_numbers.csv (– unknown; † quoted by one third party only); ours: mean ± std over "
         "seeds, test split at the epoch selected on validation, in percent except MAE and Corr; Δ = ours − paper, "
         "flagged beyond the ledger tolerance (1 pp; 0.02 for MAE and Corr); stand-in results are never compared; "
         "run cards: run_card.json of each seed, relative to results/<profile>/.",)

__all__ = ["METHOD_NAMES", "NOTES", "classifier_accuracy", "comparisons", "method_name", "results_table", "save", "sweep", "table1", "table5",
           "table6", "table7", "table8", "to_latex", "to_markdown"]
