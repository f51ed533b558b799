"""Task metrics as pure functions of predictions and targets (tensors in, floats or tensors out).

Reference code: zrguo/CGGM@21e428c src/eval_metrics.py (itself MulT's), re-written; the tests check each
function against scikit-learn or hand-computed values.
"""
from __future__ import annotations

import torch

# --------------------------------------------------------------------------- classification


def accuracy(logits: torch.Tensor, target: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Top-1 accuracy of (B, C) logits against (B,) class indices, as a 0-d tensor on their device.

    `dtype=torch.float64` gives count / B exactly as scikit-learn's `accuracy_score` (float64)."""
    return (logits.argmax(dim=-1) == target).to(dtype).mean()


def f1_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Weighted and macro F1 of (N,) predicted and true class indices (scikit-learn's definitions).

    Weighted F1 averages per-class F1 weighted by the class's support in `target`; macro F1 is the
    unweighted mean over the classes that occur in `target` or `pred` (as scikit-learn does).
    """
    pred, target = pred.long().flatten().cpu(), target.long().flatten().cpu()
    conf = torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = conf.diag().double()
    support = conf.sum(1).double()
    predicted = conf.sum(0).double()
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    present = denom > 0
    weighted = float((f1 * support).sum() / support.sum()) if support.sum() > 0 else 0.0
    macro = float(f1[present].mean()) if present.any() else 0.0
    return {"f1": weighted, "f1_macro": macro}


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """`acc`, weighted `f1` and `f1_macro` of (N, C) logits against (N,) class indices."""
    pred = logits.argmax(dim=-1)
    return {"acc": float((pred == target).float().mean())} | f1_scores(pred, target, logits.shape[-1])


# --------------------------------------------------------------------------- regression (CMU-MOSI)


def sign_accuracy(pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Binary accuracy of (pred > 0) against (target > 0): the official per-batch MOSI metric ε.

    The two classes are positive (> 0) and non-positive (≤ 0): a score of exactly 0 falls on the
    negative side, as zrguo/CGGM@21e428c src/eval_metrics.py `train_eval_senti` (MulT's `> 0`). This is not
    the "negative/non-negative" split (≥ 0) of MMSA-style tables (`acc2_nonneg` of regression_metrics).
    """
    return ((pred.flatten() > 0) == (target.flatten() > 0)).to(dtype).mean()


def negative_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−MAE: the paper's regression metric for ε (Sec. 3.3.1), negated so that higher is better.

    The balance coefficients B are unchanged by the sign flip (they are ratios of gains).
    """
    return -(pred.flatten() - target.flatten()).abs().mean()


def regression_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The CMU-MOSI metrics of MulT / CGGM's `eval_senti` on (N,) scores in [−3, 3].

    - `acc2`, `f1`: positive (> 0) vs non-positive (≤ 0, zero included) over all samples, F1 weighted
      — what the official code computes (`eval_senti`, exclude_zero=False);
    - `acc2_nonzero`, `f1_nonzero`: the same binarisation on samples whose target is not exactly 0
      (MMSA's "Non0", negative/positive);
    - `acc2_nonneg`, `f1_nonneg`: non-negative (≥ 0) vs negative over all samples (MMSA's "Has0",
      negative/non-negative);
    - `acc7` / `acc5`: equality after rounding (half to even, as numpy) clip(·, −3, 3) / clip(·, −2, 2);
    - `mae`, `corr` (Pearson; NaN when either side is constant).
    """
    p, t = pred.double().flatten().cpu(), target.double().flatten().cpu()
    out = _binary(p > 0, t > 0, "")
    nz = t != 0
    out |= _binary(p[nz] > 0, t[nz] > 0, "_nonzero") if nz.any() else {"acc2_nonzero": float("nan"),
                                                                         "f1_nonzero": float("nan")}
    out |= _binary(p >= 0, t >= 0, "_nonneg")
    out["acc7"] = float((p.clamp(-3, 3).round() == t.clamp(-3, 3).round()).double().mean())
    out["acc5"] = float((p.clamp(-2, 2).round() == t.clamp(-2, 2).round()).double().mean())
    out["mae"] = float((p - t).abs().mean())
    if len(p) > 1 and p.std() > 0 and t.std() > 0:
        out["corr"] = float(torch.corrcoef(torch.stack([p, t]))[0, 1])
    else:
        out["corr"] = float("nan")
    return out


def _binary(pred: torch.Tensor, target: torch.Tensor, suffix: str) -> dict[str, float]:
    return {f"acc2{suffix}": float((pred == target).double().mean()),
            f"f1{suffix}": f1_scores(pred.long(), target.long(), 2)["f1"]}


# --------------------------------------------------------------------------- segmentation (BraTS)

#: BraTS regions after the official remap of label 4 to 3: class indices that make up each region.
REGIONS = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}


def region_masks(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean masks of the WT/TC/ET regions of a label map with classes 0..3 (4 remapped to 3)."""
    return {r: torch.isin(labels, torch.tensor(cls, device=labels.device)) for r, cls in REGIONS.items()}


def dice_counts(pred_labels: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-slice intersection and size sums for each region: {region: (B, 2)} of (2·|P∩T|, |P|+|T|).

    pred_labels and target are (B, H, W) class maps. Summing these counts over the slices of a volume
    gives the per-volume Dice; dividing per slice gives the per-slice Dice.
    """
    p, t = region_masks(pred_labels), region_masks(target)
    dims = tuple(range(1, target.dim()))
    return {r: torch.stack([2 * (p[r] & t[r]).sum(dims), p[r].sum(dims) + t[r].sum(dims)], dim=-1).double()
            for r in REGIONS}


def dice_from_counts(counts: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Dice = (2|P∩T| + 2ε) / (|P| + |T| + 2ε), as the official `Dice` (ε added to the intersection and
    twice to the union); an empty prediction of an empty target scores 1."""
    return (counts[..., 0] + 2 * eps) / (counts[..., 1] + 2 * eps)


def mean_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-3,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean of Dice(ET), Dice(TC), Dice(WT) over the slices of a batch, as the released `train_eval_seg`.

    logits: (B, C, H, W); target: (B, H, W) class indices. Returns a 0-d tensor on their device.
    Computed in `dtype`, operation for operation as zrguo/CGGM@21e428c src/eval_metrics.py:129–142
    (per slice 2·(|P∩T| + ε) / (|P| + |T| + 2ε), averaged over slices, then (ET + TC + WT) / 3), so
    that CGGM's official ε rounds as the released float32 one does.
    """
    p, t = region_masks(logits.argmax(dim=1)), region_masks(target)
    dims = tuple(range(1, target.dim()))

    def dice(region: str) -> torch.Tensor:
        o, g = p[region].to(dtype), t[region].to(dtype)
        return (2 * ((o * g).sum(dims) + eps) / (o.sum(dims) + g.sum(dims) + eps * 2)).mean()

    return (dice("et") + dice("tc") + dice("wt")) / 3
