"""Tasks: the loss, CGGM's per-batch metric ε and the evaluation metrics of each kind of problem.

A `Data` object carries its task, so the loop and every strategy stay task-agnostic: nothing in
cggmlib hard-codes cross-entropy.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import metrics as M


@dataclass
class Classification:
    """Single-label classification with cross-entropy (UPMC-Food101, IEMOCAP, mfeat, synthetic)."""

    num_classes: int
    kind: str = field(default="classification", init=False)
    select: str = field(default="acc", init=False)
    """validation metric used to pick the reported epoch"""
    higher_is_better: bool = field(default=True, init=False)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def loss(self, pred, target):
        return F.cross_entropy(pred, target)

    def per_sample_loss(self, pred, target):
        return F.cross_entropy(pred, target, reduction="none")

    #: dtype in which the released code computes ε and B (scikit-learn's float64 accuracy)
    released_dtype = torch.float64

    def step_metric(self, pred, target, dtype=torch.float32):
        """ε in the official code and in the paper: top-1 accuracy of the batch."""
        return M.accuracy(pred, target, dtype)

    paper_metric = step_metric

    def score(self, pred, target):
        """Per-sample confidence in the true class (used by OGM, PMR, QMF-style baselines)."""
        return pred.softmax(-1).gather(-1, target[:, None]).squeeze(-1)

    def new_meter(self) -> "Meter":
        return Meter(lambda p, t: M.classification_metrics(p, t))


@dataclass
class Regression:
    """Scalar regression with L1 loss, scored with the CMU-MOSI sentiment metrics."""

    kind: str = field(default="regression", init=False)
    select: str = field(default="mae", init=False)
    higher_is_better: bool = field(default=False, init=False)
    num_outputs: int = field(default=1, init=False)

    def loss(self, pred, target):
        return F.l1_loss(pred.flatten(), target.flatten())

    def per_sample_loss(self, pred, target):
        return (pred.flatten() - target.flatten()).abs()

    #: dtype in which the released code computes ε and B (scikit-learn's float64 accuracy)
    released_dtype = torch.float64

    def step_metric(self, pred, target, dtype=torch.float32):
        """ε in the official code: sign accuracy, (pred > 0) vs (target > 0)."""
        return M.sign_accuracy(pred, target, dtype)

    def paper_metric(self, pred, target, dtype=torch.float32):
        """ε in the paper (Sec. 3.3.1): MAE, used as −MAE so that higher is better."""
        return M.negative_mae(pred, target).to(dtype)

    def score(self, pred, target):
        """Per-sample closeness to the target, exp(−|error|), in (0, 1]."""
        return torch.exp(-(pred.flatten() - target.flatten()).abs())

    def new_meter(self) -> "Meter":
        return Meter(lambda p, t: M.regression_metrics(p, t))


@dataclass
class Segmentation:
    """Multi-class 2-D segmentation (BraTS: 4 classes with label 4 remapped to 3).

    Loss: ce_weight · class-weighted CE + dice_weight · (1 − soft Dice), the soft Dice pooled over the
    foreground classes and the whole batch, as zrguo/CGGM@21e428c src/eval_metrics.py:104–126 `SegLoss`:
    soft Dice = 2·I / (P + T + s) with s = 0.01, the smoothing constant in the denominator only.
    `smooth_numerator=True` is our correction, (2·I + s) / (P + T + s), which scores an empty
    prediction of an empty target 1 instead of 0 (docs/methods.md, "Deviations").
    The official code uses 0.5/0.5; the paper (App. B) writes soft Dice + 1·CE.
    """

    num_classes: int = 4
    class_weights: tuple = (0.2, 0.3, 0.25, 0.25)
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    smooth: float = 0.01
    smooth_numerator: bool = False
    """add `smooth` to the soft Dice numerator too (our correction); False is the released loss"""
    kind: str = field(default="segmentation", init=False)
    select: str = field(default="dice_mean", init=False)
    higher_is_better: bool = field(default=True, init=False)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def loss(self, pred, target):
        weight = torch.tensor(self.class_weights, device=pred.device, dtype=pred.dtype)
        ce = F.cross_entropy(pred, target, weight=weight)
        prob = pred.softmax(1)[:, 1:]
        onehot = F.one_hot(target, self.num_classes).movedim(-1, 1)[:, 1:].to(prob.dtype)
        numerator = 2 * (prob * onehot).sum() + (self.smooth if self.smooth_numerator else 0.0)
        dice = numerator / (prob.sum() + onehot.sum() + self.smooth)
        return self.ce_weight * ce + self.dice_weight * (1 - dice)

    def per_sample_loss(self, pred, target):
        return F.cross_entropy(pred, target, reduction="none").flatten(1).mean(1)

    #: dtype in which the released code computes ε and B (its Dice is a float32 tensor)
    released_dtype = torch.float32

    def step_metric(self, pred, target, dtype=torch.float32):
        """ε in the official code and the paper: mean of Dice(ET), Dice(TC), Dice(WT) of the batch."""
        return M.mean_dice(pred, target, dtype=dtype)

    paper_metric = step_metric

    def score(self, pred, target):
        """Per-slice mean pixel probability of the true class."""
        return pred.softmax(1).gather(1, target[:, None]).flatten(1).mean(1)

    def new_meter(self) -> "SegMeter":
        return SegMeter()


class Meter:
    """Collects predictions and targets over an evaluation pass, then computes the task's metrics."""

    def __init__(self, fn):
        self.fn, self.preds, self.targets = fn, [], []

    def update(self, pred, target, meta=None):
        self.preds.append(pred.detach().float().cpu())
        self.targets.append(target.detach().cpu())

    def compute(self) -> dict[str, float]:
        return self.fn(torch.cat(self.preds), torch.cat(self.targets))


class SegMeter:
    """Per-slice and per-volume Dice of WT/TC/ET without keeping the predictions in memory.

    Keys: `dice_{wt,tc,et,mean}` average over slices (the paper's 2-D protocol) and
    `dice_{wt,tc,et,mean}_volume` pool the counts of all slices of a case (needs `meta["case"]`).
    """

    def __init__(self):
        self.slice_dice = defaultdict(list)
        self.volume_counts: dict = defaultdict(lambda: defaultdict(lambda: torch.zeros(2, dtype=torch.float64)))

    def update(self, pred, target, meta=None):
        counts = {r: c.cpu() for r, c in M.dice_counts(pred.argmax(1), target).items()}
        for r, c in counts.items():
            self.slice_dice[r].append(M.dice_from_counts(c))
        cases = (meta or {}).get("case")
        if cases is not None:
            for i, case in enumerate(cases):
                for r, c in counts.items():
                    self.volume_counts[case][r] += c[i]

    def compute(self) -> dict[str, float]:
        out = {f"dice_{r}": float(torch.cat(v).mean()) for r, v in self.slice_dice.items()}
        out["dice_mean"] = sum(out[f"dice_{r}"] for r in M.REGIONS) / len(M.REGIONS)
        if self.volume_counts:
            for r in M.REGIONS:
                out[f"dice_{r}_volume"] = float(torch.stack(
                    [M.dice_from_counts(c[r]) for c in self.volume_counts.values()]).mean())
            out["dice_mean_volume"] = sum(out[f"dice_{r}_volume"] for r in M.REGIONS) / len(M.REGIONS)
        return out
