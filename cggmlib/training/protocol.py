"""The evaluation protocol: pick the epoch on validation, report its test metrics, and record,
clearly labelled, the number the official code would have printed; after training, what each
modality's encoder learned on its own (`evaluate_classifiers`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from ..presets import REGISTRY
from .trace import Trace



@dataclass
class TrainResult:
    """What `train` returns: the trace, the reported metrics (test at the validation-selected epoch)."""

    trace: Trace
    metrics: dict
    best_epoch: int
    wall_time_s: float
    model: object = None
    """the trained model (best epoch's weights), when trained in this process"""
    strategy: object = None
    data: object = None


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
    # the (split, metric) the released script prints (cggmlib/presets.py REGISTRY; docs/methods.md)
    split, metric = REGISTRY[data.name].official_number if data.name in REGISTRY else ("val", task.select)
    col = f"{split}/{metric}"
    if col in rows:
        series = rows[col].astype(float)
        best = series.max() if (metric != "mae") else series.min()
        out["official"] = {"value": _num(best), "metric": metric,
                           "what": f"best {split} {metric} over {len(rows)} epochs, as the official script "
                                   "prints it (selection on that same split); not our reported number"}
    return out


@torch.no_grad()
def evaluate(model, loader, task, device=None, strategy=None, max_batches: int = 0) -> dict[str, float]:
    """The task's metrics and mean loss of the fused prediction over `loader` (its first `max_batches`
    batches when > 0: dry runs only, Config.max_eval_batches)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    meter, total, n = task.new_meter(), 0.0, 0
    for k, batch in enumerate(loader):
        if max_batches and k >= max_batches:
            break
        batch = batch.to(device)
        pred = strategy.predict(model, batch.inputs) if strategy is not None else model(batch.inputs).logits
        total = total + task.loss(pred.float(), batch.target) * len(batch)
        n += len(batch)
        meter.update(pred, batch.target, batch.meta)
    model.train(was_training)
    return meter.compute() | {"loss": float(total) / max(n, 1)}


@torch.no_grad()
def evaluate_classifiers(model, strategy, loader, task, device=None) -> dict[str, dict[str, float]]:
    """Metrics of each per-modality classifier f_m on held-out data: {modality: {metric: value}}.

    f_m reads the frozen encoder m, so this measures what encoder m can do on its own (Table 5 of
    the paper reports it for IEMOCAP under unimodal, joint and CGGM training).
    """
    if getattr(strategy, "classifiers", None) is None:
        raise ValueError("this strategy trained no per-modality classifiers; use observe=True (joint) or cggm")
    device = device or next(model.parameters()).device
    model.eval()
    strategy.classifiers.eval()
    meters = {m: task.new_meter() for m in strategy.classifiers.heads}
    for batch in loader:
        batch = batch.to(device)
        preds = strategy.classifiers(model(batch.inputs).features)
        for m, z in preds.items():
            meters[m].update(z, batch.target, batch.meta)
    strategy.classifiers.train()
    return {m: meter.compute() for m, meter in meters.items()}


def improved(value, best, higher_is_better: bool) -> bool:
    """Whether a validation value beats the best so far (non-finite values never do)."""
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value > best if higher_is_better else value < best)


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None
