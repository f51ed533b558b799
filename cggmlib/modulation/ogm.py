"""OGM and OGM-GE: on-the-fly gradient modulation (with generalisation enhancement).

Peng, Wei, Deng, Wang & Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
CVPR 2022 (arXiv 2203.15332). Reference code: GeWu-Lab/OGM-GE_CVPR2022@343dc1d main.py:57-148
(`train_epoch`: scores 105-106, coefficients 119-124, window and scaling 132-148);
GeWu-Lab/BalanceBenchmark@4c1482f balancemm/trainer/OGM_trainer.py (its M-modality variant).

Per step, after backward, with s_m = Σ_batch score(unimodal prediction of m, y):
    ρ_m = s_m / s_other                                   (Eq. 9; M > 2: s_m / mean_{k≠m} s_k)
    k_m = 1 − tanh(α · ρ_m)  if ρ_m > 1,  else 1            (Eq. 10)
    exact tie (no ρ_m > 1): k = 1 − tanh(α · ρ_first) for the first modality, 1 for the others
    ∇θ^{φ_m} L ← k_m · ∇θ^{φ_m} L                          (OGM)
    ∇θ^{φ_m} L ← k_m · ∇θ^{φ_m} L + N(0, std(∇θ^{φ_m} L)²)  (OGM-GE, every encoder, std of the unscaled
                                                            gradient, per tensor)
only for epochs modulation_starts ≤ epoch ≤ modulation_ends (both inclusive, as the reference).

The official formula is `1 - tanh(alpha * relu(ratio))` inside `if ratio > 1`, i.e. tanh(α·ρ), not
tanh(α·(ρ − 1)): the coefficient jumps from 1 to 1 − tanh(α) as ρ crosses 1. We keep it.
Ties follow the released `if ratio_v > 1: ... else:` (main.py:119-124): when the two scores are equal
the `else` branch still slows the audio encoder (the model's first modality) by 1 − tanh(α), e.g.
0.336 at α = 0.8. `skip_ties=True` (off by default) leaves every encoder unscaled at a tie instead.

Deviations (natural extensions, each marked where it happens):
- unimodal predictions: the model's exact shares when it returns `out.unimodal_logits` (late fusion with
  a linear head, as the reference's W_a a + b/2); otherwise `unimodal_responses`, the fusion module fed
  one modality with the others' features set to zero, in eval mode and without gradient;
- score: `task.score` (softmax probability of the true class for classification, as the reference;
  exp(−|error|) for regression; per-slice mean true-class probability for segmentation);
- M > 2: ρ_m against the mean score of the other modalities, so M = 2 is exactly Eq. 9; every modality
  with ρ_m > 1 is slowed down (BalanceBenchmark divides by the minimum score and changes the score);
- parameters: every parameter of encoder m (the reference scales only 4-D conv kernels, BalanceBenchmark
  every non-bias tensor); a one-element tensor gets no noise (its std is undefined);
- the loop clips the global gradient norm after this hook (the reference does not clip).
Trace, per step and modality: `coeff/m` (k_m applied, 1 outside the window), `ratio/m` (ρ_m), `score/m`
(the batch *mean* score; ρ uses the sums, as the reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models.base import modality_parameters
from .base import Strategy
from .unimodal import shares_or_responses


def discrepancy_ratios(scores: torch.Tensor) -> torch.Tensor:
    """ρ_m = s_m / mean_{k≠m} s_k (for two modalities s_a / s_v and its inverse, Eq. 9); scores (M,)."""
    others = (scores.sum() - scores) / (len(scores) - 1)
    return scores / others.clamp(min=1e-12)


def ogm_coefficients(ratios: torch.Tensor, alpha: float, skip_ties: bool = False) -> torch.Tensor:
    """k_m = 1 − tanh(α·ρ_m) where ρ_m > 1, else 1 (Eq. 10, as `1 - tanh(alpha * relu(ratio))`).

    When no ρ_m exceeds 1 (an exact tie) the first modality gets 1 − tanh(α·ρ_first), as the released
    `else` branch does for audio, unless `skip_ties`.
    """
    lead = ratios > 1
    if not skip_ties and not bool(lead.any()):
        lead = torch.zeros_like(lead)
        lead[0] = True
    return torch.where(lead, 1 - torch.tanh(alpha * ratios), torch.ones_like(ratios))


@dataclass
class OGM(Strategy):
    """Slow down the leading modality's encoder by k_m = 1 − tanh(α·ρ_m) (Peng et al., CVPR 2022)."""

    alpha: float = 0.1
    """α in Eq. 10 (official README default 0.1; it recommends 0.1 for VGGSound, 0.8 for CREMA-D)"""
    modulation_starts: int = 0
    """first epoch with modulation (official `--modulation_starts`, default 0)"""
    modulation_ends: int = 50
    """last epoch with modulation, inclusive (official `--modulation_ends`, default 50)"""
    skip_ties: bool = False
    """at an exact score tie leave every encoder unscaled (k = 1); off: the released code's `else` branch
    slows the first modality by 1 − tanh(α) (main.py:119-124)"""

    min_modalities = 2
    #: add the generalisation-enhancement noise (OGM-GE); a class constant, set by the subclass
    noise = False

    def __post_init__(self):
        name = "ogm_ge" if self.noise else "ogm"
        if not isinstance(self.alpha, (int, float)) or self.alpha < 0:
            raise ConfigError(f"{name}: alpha (α) must be a number >= 0, got {self.alpha!r}")
        for f in ("modulation_starts", "modulation_ends"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 0:
                raise ConfigError(f"{name}: {f} must be an integer epoch >= 0, got {getattr(self, f)!r}")
        if self.modulation_ends < self.modulation_starts:
            raise ConfigError(f"{name}: modulation_ends ({self.modulation_ends}) is before modulation_starts "
                              f"({self.modulation_starts}); the window is inclusive, set ends >= starts")

    def active(self, epoch: int) -> bool:
        return self.modulation_starts <= epoch <= self.modulation_ends

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        stats = super().after_backward(model, batch, out, epoch)
        pred = shares_or_responses(model, out)
        scores = torch.stack([self.task.score(pred[m], batch.target).sum() for m in self.modalities])
        ratios = discrepancy_ratios(scores)
        coeff = ogm_coefficients(ratios, self.alpha, self.skip_ties)
        active = self.active(epoch)
        if active:
            for m, k in zip(self.modalities, coeff):
                for p in modality_parameters(model, m):
                    if p.grad is None:
                        continue
                    if self.noise:
                        # the std of the *unscaled* gradient, as the reference's right-hand side reads it
                        std = p.grad.std() if p.grad.numel() > 1 else p.grad.new_zeros(())
                        p.grad = p.grad * k + torch.randn_like(p.grad) * (std + 1e-8)
                    else:
                        p.grad.mul_(k)
        applied = coeff if active else torch.ones_like(coeff)
        for i, m in enumerate(self.modalities):
            stats |= {f"coeff/{m}": applied[i], f"ratio/{m}": ratios[i], f"score/{m}": scores[i] / len(batch)}
        return stats


@dataclass
class OGMGE(OGM):
    """OGM plus Gaussian noise with each gradient tensor's own std on every encoder (the "GE")."""

    noise = True
