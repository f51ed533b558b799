"""CGGM: classifier-guided gradient modulation.

Guo, Jin, Chen & Zhao, "Classifier-guided Gradient Modulation for Enhanced Multimodal Learning",
NeurIPS 2024 (arXiv 2411.01409). Reference code: zrguo/CGGM:src/msatrain.py, src/foodtrain.py,
src/segtrain.py `train()` and src/eval_metrics.py `cal_cos` (commit 21e428c).

Per step, with ε_m the per-batch metric of classifier f_m (fed detached features of modality m):
    Δε_m = ε_m^t − ε_m^{t−1}                                  (ε^0 = 0, never reset)
    B_m  = Σ_{k≠m} Δε_k / Σ_k Δε_k                             (Eq. 7 without ρ)
    ∇θ^{φ_m} L ← ρ · B_m · ∇θ^{φ_m} L                         (Eq. 8: magnitude)
    L_gm = (Σ_m |B_m| − Σ_m B_m · cos_m) / M,  L = L_task + λ · L_gm   (Eqs. 12–13: direction)

Variants (`variant`, `guard`):
- "official": as released. ε is the official per-batch metric (sign accuracy for regression),
  B_m uses Σ Δε + 1e-8 as denominator (no guard: B can be huge or negative, reference §8),
  cos_m compares the output-layer *weights* of the fused head and of f_m, and L_gm built at step t
  enters the loss at step t+1, so its gradient reaches only the fused output layer. Scaling happens
  before clipping (the loop clips after `after_backward`).
- "paper": the paper's equations (reference §9). ρ sits inside B (Eq. 7), so L_gm carries ρ; ε is the
  metric the paper names (−MAE for regression, accuracy or Dice otherwise); cos_m compares the
  output-layer *gradients* ∇_{W_F} L_task and ∇_{W_{f_m}} L_m of the same step, and L_gm is added in
  that step and differentiated through ∇_{W_F} L_task (double backward). Algorithm 1 read literally
  computes a gradient cosine after backward and adds it one step later: a constant that changes no
  gradient. The released code's lagged *weight* cosine is the form of that algorithm that acts.
- guard=True (either variant): B_m from the positive parts of the gains,
  B_m = Σ_{k≠m} Δε_k⁺ / Σ_k Δε_k⁺, and B_m = (M−1)/M (the value equal gains give) when no modality
  improved. B then lies in [0, 1]: finite and never sign-flipping. Chosen over clamping the
  official B because clamping keeps a near-zero denominator's arbitrary ratio, while a modality whose
  metric fell has made no progress and should get no share of the improvement.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.base import fused_output_layer
from .base import Strategy
from .classifiers import ModalityClassifiers

VARIANTS = ("official", "paper")


def balance_coefficients(delta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """B_m = (S − Δε_m) / S with S = Σ_k Δε_k + eps, exactly as the official code (no guard)."""
    total = delta.sum() + eps
    return (total - delta) / total


def guarded_balance_coefficients(delta: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """B_m = Σ_{k≠m} Δε_k⁺ / Σ_k Δε_k⁺ in [0, 1]; (M−1)/M for every m when Σ_k Δε_k⁺ ≤ tol."""
    gain = delta.clamp(min=0)
    total = gain.sum()
    neutral = torch.full_like(delta, (len(delta) - 1) / len(delta))
    return torch.where(total > tol, (total - gain) / total.clamp(min=tol), neutral)


def direction_loss(coeff: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """L_gm = (Σ_m |B_m| − Σ_m B_m · cos_m) / M (Eq. 12); ≥ 0, and 0 when cos_m = sign(B_m)."""
    return (coeff.abs().sum() - (coeff * cos).sum()) / len(coeff)


@dataclass
class CGGM(Strategy):
    rho: float = 1.3
    """ρ: overall scale of the modulated encoder gradients (Eq. 7–8)"""
    lam: float = 0.2
    """λ: weight of the direction term L_gm (Eq. 13); 0 gives magnitude-only CGGM"""
    variant: str = "official"
    """official (the released code) | paper (the paper's equations); see the module docstring"""
    guard: bool = False
    """keep every B_m finite and in [0, 1] (positive-part gains); off reproduces the released code"""
    magnitude: bool = True
    """scale encoder gradients by ρ·B_m; False gives direction-only CGGM (Table 6)"""
    warmup_epochs: int = 0
    """epochs during which the classifiers learn but nothing is modulated (0 as in the released code)"""
    classifiers_override: dict | None = field(default=None, repr=False)
    """your own classifiers f_m {modality: module with `.out_layer`}; default: model.modality_classifier(m)"""

    min_modalities = 2

    def __post_init__(self):
        if not isinstance(self.rho, (int, float)) or self.rho < 0:
            raise ConfigError(f"cggm: rho (ρ) must be a number >= 0, got {self.rho!r}")
        if not isinstance(self.lam, (int, float)) or self.lam < 0:
            raise ConfigError(f"cggm: lam (λ) must be a number >= 0, got {self.lam!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"cggm: variant must be one of {VARIANTS}, got {self.variant!r} "
                              "(add guard=True for the guarded coefficients)")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ConfigError(f"cggm: warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")

    def uses_classifiers(self) -> bool:
        return True

    def setup(self, model, data) -> None:
        super().setup(model, data)
        if self.classifiers_override is not None:
            self.classifiers = ModalityClassifiers.for_strategy(self, model, heads=self.classifiers_override)
        self.fused = fused_output_layer(model)
        self.pending = None  # official: (B, W_fused, W_f_m) of step t, turned into L_gm at step t + 1
        self._paper_stats = None

    def active(self, epoch: int) -> bool:
        return epoch >= self.warmup_epochs

    def _observe(self, out, batch) -> tuple[dict, torch.Tensor]:
        """Train the classifiers on this batch; ε_m, Δε_m and the coefficients B_m (no ρ)."""
        metric = self.task.paper_metric if self.variant == "paper" else self.task.step_metric
        stats = self.classifiers.observe(out.features, batch.target, metric=metric)
        delta = self.classifiers.delta
        coeff = guarded_balance_coefficients(delta) if self.guard else balance_coefficients(delta)
        return stats | {f"balance/{m}": b for m, b in zip(self.modalities, coeff)}, coeff

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        task_loss = self.task.loss(out.logits, batch.target)
        if not self.active(epoch):
            return task_loss
        if self.variant == "official":
            if self.pending is None or self.lam == 0:
                return task_loss
            coeff, fused_then, heads_then = self.pending
            w = self.fused.weight
            # the value of step t with the gradient of W_fused: what the official code's clone() gives
            fused = w + (fused_then - w).detach()
            cos = torch.stack([_cos(fused, h) for h in heads_then])
            self._l_gm = direction_loss(coeff, cos)
            return task_loss + self.lam * self._l_gm
        # paper: classifiers, coefficients and gradient cosines of this very step
        stats, coeff = self._observe(out, batch)
        coeff = self.rho * coeff  # Eq. 7: ρ inside B
        g_fused, = torch.autograd.grad(task_loss, self.fused.weight, create_graph=True)
        cos = torch.stack([_cos(g_fused, self.classifiers.out_weight(m).grad) for m in self.modalities])
        self._l_gm = direction_loss(coeff, cos)
        self._paper_stats = (stats | {f"cos_grad/{m}": c.detach() for m, c in zip(self.modalities, cos)}, coeff)
        return task_loss + self.lam * self._l_gm if self.lam else task_loss

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        active = self.active(epoch)
        if self.variant == "paper" and active:
            stats, scale = self._paper_stats
        else:
            stats, coeff = self._observe(out, batch)
            scale = self.rho * coeff
            stats |= {f"cos_grad/{m}": c for m, c in self.classifiers.grad_cosines(self.fused.weight.grad).items()}
            if active and self.variant == "official" and self.lam:
                self.pending = (coeff.detach(), self.fused.weight.detach().clone(),
                                [self.classifiers.out_weight(m).detach().clone() for m in self.modalities])
        stats |= {f"cos_weight/{m}": c for m, c in self.classifiers.weight_cosines(self.fused.weight).items()}
        if active and self.magnitude:
            for m, k in zip(self.modalities, scale):
                for p in model.encoders[m].parameters():
                    if p.grad is not None:
                        p.grad.mul_(k)
        applied = scale if active and self.magnitude else torch.ones_like(scale)
        stats |= {f"coeff/{m}": k for m, k in zip(self.modalities, applied)}
        if active and self.lam and getattr(self, "_l_gm", None) is not None:
            stats["l_gm"] = self._l_gm.detach()
        self._l_gm = None
        self.classifiers.step()
        return stats

    def state_dict(self) -> dict:
        return super().state_dict() | {"pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pending = state["pending"]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if b is None or a.shape != b.shape:
        raise ConfigError(f"cggm: the direction term compares the fused output layer {tuple(a.shape)} with "
                          f"each classifier's output layer {None if b is None else tuple(b.shape)}; "
                          "they must have the same shape (or set lam=0)")
    return F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0)
