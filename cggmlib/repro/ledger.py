"""The ledger: the CGGM paper's numbers beside ours, with their sources, and the comparison rule.

Guo et al., "Classifier-guided Gradient Modulation for Enhanced Multimodal Learning", NeurIPS 2024.
The paper's tables are images that could not be read; `paper_numbers.csv` (package data) holds every
cell of Tables 1–8 the companion prints, one row per (table, dataset, method, metric). The few known
numbers carry their source; every other cell is present with an **empty value**,
for users to fill in from the PDF. Numbers quoted by one third party only are flagged
`single_source=yes`. No number here is ever presented as reproduced: tables print it as "paper"
beside "ours".

Columns: table, dataset, method (a run label: `joint`, `cggm`, `unimodal.<modality>`, ...), metric
(a key of metrics.json), unit (`%`: paper percent, ours a fraction ×100; `raw`; `count`; `MB`;
`value`), value, source, single_source, tolerance (empty: `TOLERANCE[unit]`), note.

A difference is flagged when |ours − paper| exceeds the tolerance; results on stand-in data are
never compared (the difference reads "stand-in: not comparable").
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import pandas as pd

from ..errors import ConfigError

COLUMNS = ["table", "dataset", "method", "metric", "unit", "value", "source", "single_source", "tolerance", "note"]
UNITS = ("%", "raw", "count", "MB", "value")
#: default tolerance per unit: 1 percentage point, 0.02 for MAE/Corr, 4 MB for memory
TOLERANCE = {"%": 1.0, "raw": 0.02, "count": 0.0, "MB": 4.0, "value": 0.0}
STANDIN_NOTE = "stand-in: not comparable"


def default_path() -> Path:
    return Path(str(resources.files("cggmlib") / "paper_numbers.csv"))


def load(path=None) -> pd.DataFrame:
    """The ledger as a DataFrame (`value` and `tolerance` as floats, NaN where empty); checked on load."""
    path = Path(path) if path else default_path()
    if not path.is_file():
        raise ConfigError(f"ledger file {path} does not exist; omit it to use the packaged {default_path().name}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    problems = check(frame, path)
    if problems:
        raise ConfigError(f"ledger {path} is invalid:\n  " + "\n  ".join(problems))
    frame = frame.copy()
    for col in ("value", "tolerance"):
        frame[col] = pd.to_numeric(frame[col].replace("", math.nan))
    return frame


def check(frame: pd.DataFrame, path="ledger") -> list[str]:
    """Problems of a raw (string) ledger: columns, units, numbers, a source for every value, duplicates."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        return [f"{path}: missing columns {missing}; expected {COLUMNS}"]
    problems = []
    for i, row in frame.iterrows():
        where = f"{path} line {i + 2} ({row['table']}, {row['dataset']}, {row['method']}, {row['metric']})"
        if row["unit"] not in UNITS:
            problems.append(f"{where}: unit {row['unit']!r} is not one of {UNITS}")
        for col in ("value", "tolerance"):
            if str(row[col]).strip() and not _is_number(row[col]):
                problems.append(f"{where}: {col} {row[col]!r} is not a number (leave it empty when unknown)")
        if str(row["value"]).strip() and not str(row["source"]).strip():
            problems.append(f"{where}: a value needs its source (where in the paper, or who quotes it)")
        if str(row["value"]).strip() and row["single_source"] not in ("yes", "no"):
            problems.append(f"{where}: single_source must be yes or no for a known value")
    dup = frame.duplicated(["table", "dataset", "method", "metric"], keep=False)
    problems += [f"{path}: duplicate cell {tuple(r)}" for r in
                 frame.loc[dup, ["table", "dataset", "method", "metric"]].drop_duplicates().itertuples(index=False)]
    return problems


def cell(ledger: pd.DataFrame, table: str, dataset: str, method: str, metric: str) -> dict | None:
    """The ledger row of one cell as a dict, or None when the ledger has no such cell."""
    sel = ledger[(ledger["table"] == table) & (ledger["dataset"] == dataset) & (ledger["method"] == method)
                 & (ledger["metric"] == metric)]
    return None if sel.empty else sel.iloc[0].to_dict()


def scale(unit: str) -> float:
    """Factor from our stored metric to the paper's unit (fractions to percent)."""
    return 100.0 if unit == "%" else 1.0


def compare(paper: dict | None, mean: float, std: float = math.nan, standin: bool = False) -> dict:
    """paper | ours | difference | flag for one cell; `mean`/`std` in our stored unit (fractions)."""
    unit = (paper or {}).get("unit", "raw")
    k = scale(unit)
    value = (paper or {}).get("value", math.nan)
    tol = (paper or {}).get("tolerance", math.nan)
    tol = TOLERANCE.get(unit, 0.0) if not _finite(tol) else float(tol)
    digits = 3 if unit == "raw" else 2
    out = {"paper": _fmt(value), "ours": _fmt_mean_std(mean * k, std * k, digits), "difference": "", "flag": ""}
    if paper and paper.get("single_source") == "yes" and _finite(value):
        out["paper"] += " †"
    if standin:
        out["ours"] += " (stand-in)" if out["ours"] != "–" else ""
        out["difference"] = STANDIN_NOTE if _finite(value) else ""
        return out
    if _finite(value) and _finite(mean):
        diff = mean * k - float(value)
        out["difference"] = f"{diff:+.{digits}f}"
        if abs(diff) > tol:
            out["flag"] = f"beyond ±{tol:g}"
    return out


def _fmt(v) -> str:
    if not _finite(v):
        return "–"
    return f"{float(v):.3f}" if abs(float(v)) < 10 and float(v) != int(float(v)) else f"{float(v):g}"


def _fmt_mean_std(mean: float, std: float, digits: int = 2) -> str:
    if not _finite(mean):
        return "–"
    return f"{mean:.{digits}f}" if not _finite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _is_number(s) -> bool:
    try:
        return math.isfinite(float(s))
    except (TypeError, ValueError):
        return False


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


__all__ = ["COLUMNS", "STANDIN_NOTE", "TOLERANCE", "cell", "check", "compare", "default_path", "load", "scale"]
