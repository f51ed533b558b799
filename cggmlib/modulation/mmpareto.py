"""MMPareto: multimodal and unimodal losses on shared encoders, combined Pareto-style per encoder.

Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024.
Reference code: GeWu-Lab/MMPareto_ICML2024@a339db3 code/MMPareto.py:57-209 (`train_epoch`: the
weights 165-174, γ = 1.5 and the magnitude rule 178-207) and code/min_norm_solvers.py:9-24
(`MinNormSolver._min_norm_element_from2`); also GeWu-Lab/BalanceBenchmark@4c1482f
balancemm/trainer/MMPareto_trainer.py:330-406 (`training_step`).

Loss: L = L_mm + Σ_m L_m, with L_m the task loss of a unimodal head on features[m] (not detached:
the unimodal losses train the shared encoders). For encoder m, with g_mm = ∇θ^{φ_m} L_mm and
g_m = ∇θ^{φ_m} L_m (concatenated over the encoder's parameters):
    cos(g_mm, g_m) > 0:  (k_mm, k_m) = (½, ½)
    otherwise:           (k_mm, k_m) = the 2-objective MGDA min-norm weights,
                         γ = (g_m·g_m − g_mm·g_m) / ‖g_mm − g_m‖²  clipped to [0.001, 0.999]
    per parameter tensor: g_new = 2 k_mm g_mm + 2 k_m g_m,
                          ∇ ← γ_s · max(‖g_mm + g_m‖ / ‖g_new‖, 1) · g_new
so a conflict-free step is γ_s times the summed gradient, and a Pareto step never has a smaller
magnitude than the summed one. Heads and the fusion module keep their ordinary gradients of L.

Mapping onto the hooks: `loss` takes g_m with one `torch.autograd.grad(Σ_m L_m, encoder params)`
(L_m reaches only encoder m, so one call gives every g_m) and returns L; the loop's backward gives
g_mm + g_m; `after_backward` recovers g_mm by subtraction and writes the combination (the reference
runs three backward passes, one per loss).

Deviations: one unimodal head per modality from `model.modality_classifier(m)` (the reference's
model has them built in); everything else as the reference, including the per-tensor magnitude
rule and γ_s = 1.5. Any task and any M >= 1: the unimodal loss is the task's own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..models.base import modality_parameters
from .base import Strategy
from .classifiers import unimodal_heads


def min_norm_weight(v11: torch.Tensor, v12: torch.Tensor, v22: torch.Tensor) -> torch.Tensor:
    """γ minimising ‖γ g₁ + (1−γ) g₂‖² from the dot products, as MinNormSolver._min_norm_element_from2."""
    gamma = (v22 - v12) / (v11 + v22 - 2 * v12).clamp(min=1e-20)
    gamma = torch.where(v12 >= v22, torch.full_like(gamma, 0.001), gamma)
    return torch.where(v12 >= v11, torch.full_like(gamma, 0.999), gamma)


def pareto_weights(g_mm: torch.Tensor, g_uni: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k_mm, k_uni, cos): ½/½ when the two gradients agree (cos > 0), the MGDA weights otherwise."""
    v11, v12, v22 = g_mm @ g_mm, g_mm @ g_uni, g_uni @ g_uni
    cos = v12 / (v11.sqrt() * v22.sqrt()).clamp(min=1e-20)
    gamma = torch.where(cos > 0, torch.full_like(cos, 0.5), min_norm_weight(v11, v12, v22))
    return gamma, 1 - gamma, cos


def combine(g_total: torch.Tensor, g_mm: torch.Tensor, g_uni: torch.Tensor, k_mm, k_uni, scale: float):
    """γ_s · max(‖g_total‖/‖g_new‖, 1) · g_new with g_new = 2 k_mm g_mm + 2 k_uni g_uni (one tensor)."""
    new = 2 * k_mm * g_mm + 2 * k_uni * g_uni
    ratio = g_total.norm() / new.norm().clamp(min=1e-20)
    return scale * ratio.clamp(min=1) * new


@dataclass
class MMPareto(Strategy):
    scale: float = 1.5
    """γ_s: overall multiplier of every encoder's combined gradient (reference `gamma = 1.5`)"""
    start_epoch: int = 0
    """first epoch with the Pareto combination; before it, plain L = L_mm + Σ_m L_m"""

    min_modalities = 1

    def __post_init__(self):
        if not isinstance(self.scale, (int, float)) or self.scale <= 0:
            raise ConfigError(f"mmpareto: scale (γ_s) must be a number > 0, got {self.scale!r}")
        if not isinstance(self.start_epoch, int) or self.start_epoch < 0:
            raise ConfigError(f"mmpareto: start_epoch must be an integer >= 0, got {self.start_epoch!r}")

    def setup(self, model, data) -> None:
        super().setup(model, data)
        device = next(model.parameters()).device
        self.heads = nn.ModuleDict(unimodal_heads(model, data, "mmpareto")).to(device)
        self._uni_grads, self._stats = None, {}

    def parameters(self) -> list:
        return list(self.heads.parameters())

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        self.heads.train(model.training)  # not submodules of the model: follow its mode
        uni = {m: self.task.loss(self.heads[m](out.features[m]), batch.target) for m in self.modalities}
        total_uni = torch.stack(list(uni.values())).sum()
        self._stats = {f"loss_head/{m}": l.detach() for m, l in uni.items()}
        self._uni_grads = None
        if epoch >= self.start_epoch:
            params = {m: [p for p in modality_parameters(model, m) if p.requires_grad] for m in self.modalities}
            flat = [p for m in self.modalities for p in params[m]]
            grads = torch.autograd.grad(total_uni, flat, retain_graph=True, allow_unused=True)
            grads = iter(grads)
            self._uni_grads = {m: [next(grads) for _ in params[m]] for m in self.modalities}
            self._params = params
        return self.task.loss(out.logits, batch.target) + total_uni

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        stats = super().after_backward(model, batch, out, epoch) | self._stats
        if self._uni_grads is None:
            return stats | {f"coeff/{m}": torch.ones(()) for m in self.modalities}
        for m in self.modalities:
            pairs = [(p, torch.zeros_like(p) if g is None else g) for p, g in zip(self._params[m], self._uni_grads[m])
                     if p.grad is not None]
            if not pairs:
                continue
            g_uni = [g for _, g in pairs]
            g_mm = [p.grad - g for p, g in pairs]
            k_mm, k_uni, cos = pareto_weights(torch.cat([g.flatten() for g in g_mm]).float(),
                                              torch.cat([g.flatten() for g in g_uni]).float())
            before = torch.stack([p.grad.norm() for p, _ in pairs]).norm()
            for (p, gu), gm in zip(pairs, g_mm):
                p.grad.copy_(combine(p.grad, gm, gu, k_mm, k_uni, self.scale))
            after = torch.stack([p.grad.norm() for p, _ in pairs]).norm()
            stats |= {f"cos/{m}": cos, f"weight/{m}": k_mm, f"conflict/{m}": (cos <= 0).float(),
                      f"coeff/{m}": after / before.clamp(min=1e-20)}
        self._uni_grads = None
        return stats

    def state_dict(self) -> dict:
        return super().state_dict() | {"heads": self.heads.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.heads.load_state_dict(state["heads"])
