"""PMR: prototypical modal rebalance.

Fan, Xu, Wei, Hu, Chen & Wen, "PMR: Prototypical Modal Rebalance for Multimodal Learning", CVPR 2023.
Reference code: fanyunfeng-bit/Modal-Imbalance-PMR@3615e48 main_Prototype_grad.py (`train_epoch`
91-290: prototype scores 158-160, coefficients 169-178; `calculate_prototype` 383-442, EMA 435-441;
epoch loop 532-557). GeWu-Lab/BalanceBenchmark@4c1482f balancemm/trainer/PMR_trainer.py:166-175 gives
the same coefficients (its commit 59c3446 replaced an earlier clipped form by the full α).

Each epoch, class prototypes c_{m,k} = mean feature of modality m over the samples of class k, on the
first `proto_fraction` of the training batches, EMA-smoothed: c ← (1−μ) c_new + μ c_old. Per step:
    p_m(k | x) = softmax_k(−‖z_m − c_{m,k}‖₂)          (prototype logits)
    s_m = mean_i p_m(y_i | x_i),   ρ_m = max_j s_j / s_m  (imbalance ratio; M = 2: s_a / s_v)
    β_m = α if ρ_m > 1 else 0                             (only lagging modalities get a weight; a tie: none)
    L = L_task + Σ_m β_m · CE(−‖z_m − c_m‖, y) − μ_PER · max_m(β_m/α) · H(p_lead)   (PER: early epochs)

Schedule as released: the prototypes used in epoch 0 are computed before training, those of epoch e ≥ 1
after epoch e − 1, and the released loop passes that finished epoch's index to `calculate_prototype`,
which smooths only when it is > 0 (main_Prototype_grad.py:435, 557). So epochs 0 and 1 use unsmoothed
prototypes and the EMA starts in epoch 2.

Options that differ from the released code (off by default):
- `clip_weight`: β_m = α·clip(ρ_m − 1, 0, 1), the form BalanceBenchmark's trainer had before 59c3446;
- `ema_from_epoch_1`: smooth the prototypes already in epoch 1.

Deviations:
- M > 2: ρ_m against the leading modality, which reduces to the reference rule for M = 2
  (BalanceBenchmark switches to OGM-style gradient scaling for M > 2, a different method);
- a class absent from the prototype subset keeps its previous prototype (the reference divides by
  zero and gets NaN);
- PER is the entropy of the *leading* modality's own prototype distribution (BalanceBenchmark before
  59c3446 scored one modality's features against every modality's prototypes); off by default
  (μ_PER = 0) as in the released main_Prototype_grad.py;
- segmentation (natural extension): pixels are the samples, so prototypes are per-class mean
  feature vectors over pixels (targets resized to the feature map by nearest neighbour);
  sequence features (B, T, D) are mean-pooled. Regression has no classes: a ConfigError says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Strategy


def prototype_logits(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """−‖z_i − c_k‖₂ for every sample i and class k: (N, D), (K, D) -> (N, K)."""
    return -torch.cdist(z.float(), prototypes.float())


def lag_coefficients(score: torch.Tensor, alpha: float, clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(β, ρ): ρ_m = max_j s_j / s_m; β_m = α where ρ_m > 1, else 0 (`clip`: α · clip(ρ_m − 1, 0, 1))."""
    ratio = score.max() / score.clamp(min=1e-12)
    if clip:
        return alpha * (ratio - 1).clamp(0, 1), ratio
    return torch.where(ratio > 1, torch.full_like(ratio, alpha), torch.zeros_like(ratio)), ratio


def samples(feature: torch.Tensor, target: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, y) with one row per sample: (B, D) as is, (B, T, D) mean-pooled, pixels for segmentation."""
    if kind == "segmentation":
        if target.shape[1:] != feature.shape[2:]:
            target = F.interpolate(target[:, None].float(), size=feature.shape[2:], mode="nearest")[:, 0].long()
        return feature.movedim(1, -1).reshape(-1, feature.shape[1]), target.reshape(-1)
    if feature.dim() > 2:
        feature = feature.flatten(1, -2).mean(1)
    return feature, target


@dataclass
class PMR(Strategy):
    alpha: float = 1.0
    """α: weight of the prototype cross-entropy of a lagging modality (official `--alpha` 1.0)"""
    momentum: float = 0.2
    """μ: EMA weight of the previous prototypes (official `--momentum_coef` 0.2)"""
    proto_fraction: float = 0.1
    """share of the training batches used to estimate prototypes (official: len(loader) // 10)"""
    per_weight: float = 0.0
    """μ_PER: weight of the prototypical entropy regulariser on the leading modality (0: off, as released)"""
    per_epochs: int = 10
    """PER is applied while epoch < start_epoch + per_epochs (not given in the released code; our choice)"""
    start_epoch: int = 0
    """first epoch with the prototype terms (official `--modulation_starts` 0)"""
    end_epoch: int = 100
    """last epoch with the prototype terms, inclusive (official `--modulation_ends` 100)"""
    clip_weight: bool = False
    """β_m = α·clip(ρ_m − 1, 0, 1) instead of the released full α for every lagging modality (the form
    BalanceBenchmark's PMR trainer had before its commit 59c3446)"""
    ema_from_epoch_1: bool = False
    """EMA-smooth the prototypes from epoch 1 on; off: from epoch 2, as the released loop (it passes the
    finished epoch's index, 0 after epoch 0, and smooths only when that index is > 0)"""

    min_modalities = 2

    def __post_init__(self):
        for name in ("alpha", "per_weight"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ConfigError(f"pmr: {name} must be a number >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise ConfigError(f"pmr: momentum (μ) must be in [0, 1), got {self.momentum!r}")
        if not isinstance(self.proto_fraction, (int, float)) or not 0 < self.proto_fraction <= 1:
            raise ConfigError(f"pmr: proto_fraction must be in (0, 1], got {self.proto_fraction!r}")
        for name in ("per_epochs", "start_epoch", "end_epoch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"pmr: {name} must be an integer >= 0, got {getattr(self, name)!r}")

    def setup(self, model, data) -> None:
        super().setup(model, data)
        if self.task.kind not in ("classification", "segmentation"):
            raise ConfigError(f"pmr needs class labels: its prototypes are per-class mean features, and a "
                              f"{self.task.kind} task has no classes; use agm, mmpareto or cggm instead")
        self.prototypes = None  # {m: (K, D)}, EMA over epochs
        self._stats = {}

    @torch.no_grad()
    def on_epoch_start(self, model, data, epoch: int) -> dict:
        device = next(model.parameters()).device
        num_classes, kind = self.task.num_classes, self.task.kind
        sums, counts = {}, {}
        limit = max(1, int(len(data.train) * self.proto_fraction))
        was_training = model.training
        model.eval()
        for i, batch in enumerate(data.train):
            if i >= limit:
                break
            batch = batch.to(device)
            features = model(batch.inputs).features
            for m in self.modalities:
                z, y = samples(features[m].float(), batch.target, kind)
                sums.setdefault(m, torch.zeros(num_classes, z.shape[1], device=device)).index_add_(0, y, z)
                counts[m] = counts.get(m, 0) + torch.bincount(y, minlength=num_classes).float()
        model.train(was_training)
        seen = {m: (c > 0)[:, None] for m, c in counts.items()}
        new = {m: s / counts[m].clamp(min=1)[:, None] for m, s in sums.items()}
        smooth = self.prototypes is not None and epoch >= (1 if self.ema_from_epoch_1 else 2)
        if self.prototypes is None:
            self.prototypes = new
        else:  # a class missing from this subset keeps its previous prototype
            if smooth:
                new = {m: (1 - self.momentum) * new[m] + self.momentum * self.prototypes[m] for m in new}
            self.prototypes = {m: torch.where(seen[m], new[m], self.prototypes[m]) for m in new}
        stats = {f"proto_classes_seen/{m}": s.float().mean() for m, s in seen.items()}
        return stats | {"proto_ema": float(smooth)}

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        loss = self.task.loss(out.logits, batch.target)
        logits, targets = {}, {}
        for m in self.modalities:
            z, y = samples(out.features[m], batch.target, self.task.kind)
            logits[m], targets[m] = prototype_logits(z, self.prototypes[m]), y
        with torch.no_grad():
            score = torch.stack([logits[m].softmax(-1).gather(1, targets[m][:, None]).mean() for m in self.modalities])
            beta, ratio = lag_coefficients(score, self.alpha, self.clip_weight)
        active = self.start_epoch <= epoch <= self.end_epoch
        weight = beta if active else torch.zeros_like(beta)
        proto_loss = {m: F.cross_entropy(logits[m], targets[m]) for m in self.modalities}
        loss = loss + sum(w * proto_loss[m] for m, w in zip(self.modalities, weight))
        self._stats = {f"score/{m}": score[i] for i, m in enumerate(self.modalities)}
        self._stats |= {f"ratio/{m}": ratio[i] for i, m in enumerate(self.modalities)}
        self._stats |= {f"weight/{m}": weight[i] for i, m in enumerate(self.modalities)}
        self._stats |= {f"loss_proto/{m}": l.detach() for m, l in proto_loss.items()}
        if active and self.per_weight and epoch < self.start_epoch + self.per_epochs:
            lead = self.modalities[int(score.argmax())]
            p = logits[lead].log_softmax(-1)
            entropy = -(p.exp() * p).sum(-1).mean()
            loss = loss - self.per_weight * (beta.max() / max(self.alpha, 1e-12)) * entropy
            self._stats["per"] = entropy.detach()
        return loss

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        return super().after_backward(model, batch, out, epoch) | self._stats

    def state_dict(self) -> dict:
        return super().state_dict() | {"prototypes": self.prototypes}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.prototypes = state["prototypes"]
