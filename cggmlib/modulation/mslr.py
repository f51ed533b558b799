"""MSLR: modality-specific learning rates for each encoder branch.

Yao & Mihalcea, "Modality-specific Learning Rates for Effective Multimodal Additive Late-fusion",
Findings of ACL 2022. No official code is public; the variants follow the paper's three strategies,
with our reading where the paper leaves a detail open (marked "reading").

Encoder m is trained with learning rate η_m = s_m · η, η the loop's learning rate:
- keep:    s_m = lr_scale[m] throughout (the paper sets η_m to the best unimodal learning rate; find it
           with `Unimodal(modality=m)` over a grid and pass lr_scale={m: η_m / η});
- smooth:  starts at lr_scale[m]; after every epoch whose validation loss of branch m did not improve on
           its best, s_m ← decay · s_m (a per-branch plateau decay; reading);
- dynamic: every epoch, s_m = lr_scale[m] · L_m / mean_k L_k with L_m branch m's validation loss, so a
           branch that generalises worse learns faster (reading).
Branch m's prediction is `unimodal_responses` (the fusion module fed modality m alone, others zeroed),
its exact share for additive late fusion up to the bias.

How η_m is applied without touching the loop's optimizer: `after_backward` stores encoder m's
parameters θ_m before `optimizer.step()`; the next hook call (the next step's `forward`, `predict` at
evaluation, or `on_epoch_start`) rescales the step just taken, θ_m ← θ_before + s_m · (θ_m − θ_before).
For SGD (with momentum), Adam and AdamW alike this equals giving encoder m the learning rate s_m · η,
exactly: their step is proportional to the learning rate and their state evolves the same way (tested).
Scaling the gradient instead would be nearly a no-op under Adam (scale invariant up to its ε).
Cost: one copy of the scaled encoders' parameters per step. `coeff/m` is not logged (no gradient is
scaled); `lr_scale/m` is.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models.base import Output, modality_parameters
from .base import Strategy
from .unimodal import unimodal_responses

VARIANTS = ("keep", "smooth", "dynamic")


def dynamic_scales(val_loss: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """s_m = base_m · L_m / mean_k L_k: the branch with the higher validation loss learns faster."""
    mean = sum(val_loss.values()) / len(val_loss)
    return {m: base[m] * (val_loss[m] / mean if mean > 0 else 1.0) for m in val_loss}


def smooth_scales(val_loss, best, scale, decay: float, min_scale: float) -> tuple[dict, dict]:
    """(new scales, new best): s_m ← max(decay · s_m, min_scale) where L_m ≥ best_m, else best_m ← L_m."""
    new_scale, new_best = dict(scale), dict(best)
    for m, loss in val_loss.items():
        if loss < best[m]:
            new_best[m] = loss
        else:
            new_scale[m] = max(decay * scale[m], min_scale)
    return new_scale, new_best


@torch.no_grad()
def branch_val_losses(model, loader, task, limit: int = 0) -> dict[str, float]:
    """Mean task loss of every branch's unimodal response over `loader` (its first `limit` batches if > 0: dry runs), eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, n = {}, 0
    for batch in itertools.islice(loader, limit or None):
        batch = batch.to(device)
        for m, z in unimodal_responses(model, model.encode(batch.inputs)).items():
            total[m] = total.get(m, 0.0) + task.loss(z.float(), batch.target) * len(batch)
        n += len(batch)
    model.train(was_training)
    return {m: float(t) / max(n, 1) for m, t in total.items()}


@dataclass
class MSLR(Strategy):
    """Encoder m learns with rate s_m · η (keep | smooth | dynamic), applied to the optimizer's step."""

    variant: str = "keep"
    """keep (fixed s_m) | smooth (per-branch decay on validation plateaus) | dynamic (s_m ∝ branch val loss)"""
    lr_scale: dict | None = None
    """{modality: s_m}, encoder m's learning rate over the loop's (the paper: best unimodal lr / lr); None: all 1"""
    decay: float = 0.5
    """smooth: factor applied to s_m when branch m's validation loss did not improve"""
    min_scale: float = 1e-3
    """smooth: lower bound of s_m"""

    min_modalities = 2

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"mslr: variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.lr_scale is not None and (not isinstance(self.lr_scale, dict) or any(
                not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in self.lr_scale.values())):
            raise ConfigError(f"mslr: lr_scale must be a dict {{modality: number >= 0}}, got {self.lr_scale!r}")
        if not isinstance(self.decay, (int, float)) or not 0 < self.decay <= 1:
            raise ConfigError(f"mslr: decay must be in (0, 1], got {self.decay!r}")
        if not isinstance(self.min_scale, (int, float)) or self.min_scale < 0:
            raise ConfigError(f"mslr: min_scale must be >= 0, got {self.min_scale!r}")

    def setup(self, model, data) -> None:
        super().setup(model, data)
        given = dict(self.lr_scale or {})
        unknown = sorted(set(given) - set(self.modalities))
        if unknown:
            raise ConfigError(f"mslr: lr_scale names unknown modalities {unknown}; the model's are {self.modalities}")
        self.base = {m: float(given.get(m, 1.0)) for m in self.modalities}
        self.scale = dict(self.base)  # s_m in force
        self.best = {m: math.inf for m in self.modalities}  # smooth: best branch validation loss so far
        self.pending = None  # {m: parameters of encoder m before the last optimizer step}

    def _rescale_last_step(self, model) -> None:
        """θ_m ← θ_before + s_m · (θ_m − θ_before) for the step taken since `after_backward`."""
        if self.pending is None:
            return
        with torch.no_grad():
            for m, before in self.pending.items():
                for p, b in zip(modality_parameters(model, m), before):
                    p.lerp_(b.to(p.dtype), 1.0 - self.scale[m])
        self.pending = None

    def on_epoch_start(self, model, data, epoch: int) -> dict:
        self._rescale_last_step(model)
        stats = {}
        if self.variant != "keep" and epoch > 0:
            val = branch_val_losses(model, data.val, self.task, self.step_limit)
            if self.variant == "smooth":
                self.scale, self.best = smooth_scales(val, self.best, self.scale, self.decay, self.min_scale)
            else:
                self.scale = dynamic_scales(val, self.base)
            stats = {f"branch_val_loss/{m}": v for m, v in val.items()}
        return stats | {f"lr_scale/{m}": s for m, s in self.scale.items()}

    def forward(self, model, batch, epoch: int) -> Output:
        self._rescale_last_step(model)
        return model(batch.inputs)

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        stats = super().after_backward(model, batch, out, epoch)
        self.pending = {m: [p.detach().clone() for p in modality_parameters(model, m)]
                        for m, s in self.scale.items() if s != 1.0}
        return stats | {f"lr_scale/{m}": s for m, s in self.scale.items()}

    def predict(self, model, inputs) -> torch.Tensor:
        self._rescale_last_step(model)
        return model(inputs).logits

    def state_dict(self) -> dict:
        return super().state_dict() | {"scale": self.scale, "best": self.best, "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scale, self.best, self.pending = dict(state["scale"]), dict(state["best"]), state["pending"]
