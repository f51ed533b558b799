"""CGGM's coefficients B_m and direction term L_gm, shared by the CGGM strategy and the observers.

Eq. numbers are the paper's (Guo et al., NeurIPS 2024); docs/methods.md derives them. The unguarded
form is the released code's (zrguo/CGGM@21e428c src/msatrain.py:107–113): B_m = (S − Δε_m) / S with
S = Σ_k Δε_k + 1e-8. Computed in the dtype of `delta`: float64 reproduces the released arithmetic,
where the 1e-8 survives; in float32 it vanishes once |S| > ~1e-1 and, when the gains cancel exactly
(S = 1e-8 in float64), the released and a float32 B differ in sign and size (docs/methods.md).
"""
from __future__ import annotations

import torch


def balance_coefficients(delta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """B_m = (S − Δε_m) / S with S = Σ_k Δε_k + eps, exactly as the released code (no guard)."""
    total = delta.sum() + eps
    return (total - delta) / total


def guarded_balance_coefficients(delta: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """B_m = Σ_{k≠m} Δε_k⁺ / Σ_k Δε_k⁺ in [0, 1]; (M−1)/M for every m when Σ_k Δε_k⁺ ≤ tol."""
    gain = delta.clamp(min=0)
    total = gain.sum()
    neutral = torch.full_like(delta, (len(delta) - 1) / len(delta))
    return torch.where(total > tol, (total - gain) / total.clamp(min=tol), neutral)


def direction_loss(coeff: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """L_gm = (Σ_m |B_m| − Σ_m B_m · cos_m) / M (Eq. 12), in the dtype of `cos`; ≥ 0, 0 when cos_m = sign(B_m).

    The released code multiplies float64 B_m by float32 cosines, which rounds B_m to float32 first."""
    coeff = coeff.to(cos.dtype)
    return (coeff.abs().sum() - (coeff * cos).sum()) / len(coeff)
