"""Post-training analysis: how much each modality's encoder learned, measured on held-out data."""
from __future__ import annotations

import torch


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
