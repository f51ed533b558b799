"""The evaluation protocol: pick the epoch on validation, report its test metrics, and record,
clearly labelled, the number the official code would have printed."""
from __future__ import annotations

import math

import pandas as pd

#: dataset -> (split, metric) whose best value over epochs the official scripts print (reference D5):
#: best validation Acc-2 (MOSI), accuracy (IEMOCAP), Dice (BraTS, intended; the script prints 0),
#: and for Food101 the best *test* accuracy (its "valid" loader is the test split).
OFFICIAL_NUMBER = {"mosi": ("val", "acc2"), "iemocap": ("val", "acc"), "food101": ("test", "acc"),
                   "brats2021": ("val", "dice_mean")}


def summarize(epochs: pd.DataFrame, data, best_epoch: int) -> dict:
    """metrics.json: test metrics of the selected epoch at top level, plus `val`, `official`, provenance."""
    task = data.task
    rows = epochs[[c for c in epochs.columns if c.startswith(("val/", "test/")) or c == "epoch"]]
    rows = rows.dropna(subset=[f"val/{task.select}"]) if f"val/{task.select}" in rows else rows.iloc[0:0]
    out: dict = {"best_epoch": int(best_epoch), "selected_on": f"val/{task.select}",
                 "higher_is_better": task.higher_is_better, "standin": bool(data.standin),
                 "dataset": data.name, "epochs_run": int(len(rows))}
    if best_epoch < 0 or rows.empty:
        return out
    row = rows[rows["epoch"] == best_epoch].iloc[-1]
    out |= {c.removeprefix("test/"): _num(row[c]) for c in rows.columns if c.startswith("test/")}
    out["val"] = {c.removeprefix("val/"): _num(row[c]) for c in rows.columns if c.startswith("val/")}
    split, metric = OFFICIAL_NUMBER.get(data.name, ("val", task.select))
    col = f"{split}/{metric}"
    if col in rows:
        series = rows[col].astype(float)
        best = series.max() if (metric != "mae") else series.min()
        out["official"] = {"value": _num(best), "metric": metric,
                           "what": f"best {split} {metric} over {len(rows)} epochs, as the official script "
                                   "prints it (selection on that same split); not our reported number"}
    return out


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None
