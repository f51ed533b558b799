"""Optimizer, learning-rate schedule and mixed precision for the loop, as the official scripts set them,
and `StepTools`, everything a training step uses besides the model and the strategy."""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.nn.utils import get_total_norm

from .distributed import Distributed
from .finite import FiniteCheck, lazy_on
from ..models.base import modality_parameters
from ..modulation.classifiers import make_optimizer


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    return make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)


@dataclass
class StepTools:
    """What `train_step` needs besides the model and the strategy; built once by `step_tools`."""

    optimizer: torch.optim.Optimizer
    params: list
    """the model's parameters and the strategy's extra ones (clipped and averaged together)"""
    autocast: Callable[[], Any]
    scaler: Any
    grad_clip: float
    finite: FiniteCheck
    world: Distributed = field(default_factory=Distributed)
    grad_norms: bool = True
    """log per-encoder gradient norms before and after modulation"""
    encoder_params: dict = field(default_factory=dict)
    """{m: parameters of encoder m}, listed once"""


def step_tools(cfg, model, strategy, device: torch.device, world: Distributed | None = None,
               grad_norms: bool = True) -> StepTools:
    """Optimizer over model and strategy parameters, mixed precision, clipping and the finite check."""
    params = [*model.parameters(), *strategy.parameters()]  # strategy-owned heads are clipped too
    autocast, scaler = amp_setup(cfg.amp, device)
    finite = FiniteCheck(cfg.nonfinite, lazy_on(device, cfg.nonfinite), scaler is not None)
    return StepTools(build_optimizer(cfg, params), params, autocast, scaler, cfg.grad_clip, finite,
                     world or Distributed(), grad_norms,
                     {m: modality_parameters(model, m) for m in model.encoders})


class CosineWarmup:
    """Per-step LR: linear warm-up from 4e-4 over `warmup_epochs`, then cosine from base to base/10.

    As zrguo/CGGM@21e428c src/eval_metrics.py:136–148 `cosine_scheduler` drives BraTS (0.01 → 0.001,
    10 warm-up epochs). `warmup="linspace"` is the released `np.linspace(start, base, W)` over the W
    warm-up steps: the base rate is reached at the last warm-up step, W − 1. `warmup="exclusive"`
    (our correction) spaces the ramp over W intervals, so the base rate is first used at step W.
    """

    def __init__(self, optimizer, base_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: int,
                 final_lr: float | None = None, warmup_start: float = 4e-4, warmup: str = "linspace"):
        self.optimizer, self.base, self.final = optimizer, base_lr, base_lr / 10 if final_lr is None else final_lr
        self.total, self.warm = max(1, epochs * steps_per_epoch), warmup_epochs * steps_per_epoch
        self.start, self.step_count = min(warmup_start, base_lr), 0
        self.intervals = max(1, self.warm - 1) if warmup == "linspace" else self.warm
        self._apply()

    def lr_at(self, step: int) -> float:
        if step < self.warm:
            return self.start + (self.base - self.start) * step / self.intervals
        progress = (step - self.warm) / max(1, self.total - self.warm)
        return self.final + 0.5 * (self.base - self.final) * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _apply(self):
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count)

    def step(self):
        self.step_count += 1
        self._apply()

    def state_dict(self):
        return {"step_count": self.step_count}

    def load_state_dict(self, state):
        self.step_count = state["step_count"]
        self._apply()


def build_scheduler(cfg, optimizer, steps_per_epoch: int):
    """(scheduler, when): when is "step", "epoch" (stepped with the validation loss) or None."""
    if cfg.scheduler == "plateau":  # official: ReduceLROnPlateau(val loss), factor 0.1, patience `when`=10
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=10), "epoch"
    if cfg.scheduler == "cosine":
        return CosineWarmup(optimizer, cfg.lr, cfg.epochs, steps_per_epoch, cfg.warmup_epochs,
                            warmup=cfg.lr_warmup), "step"
    return None, None


def amp_setup(amp: str, device: torch.device):
    """(autocast context factory, GradScaler or None) for amp = off | auto | bf16 | fp16.

    auto: bf16 on a GPU that supports it, else fp16; off on a CPU (CPU autocast only when asked for
    by name). bf16 needs no scaler. fp16 uses a GradScaler; the loop unscales before
    modulation and clipping, so CGGM always edits true gradients. The CGGM classifiers always run in
    float32 (cggmlib/modulation/classifiers.py).
    """
    if amp == "off" or device.type == "cpu" and amp == "auto":
        return nullcontext, None
    if amp == "auto":
        amp = "bf16" if device.type != "cuda" or torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def encoder_grad_norms(encoder_params, prefix: str) -> dict[str, torch.Tensor]:
    """‖∇θ^{φ_m} L‖₂ of every encoder, as device tensors (no host sync).

    `encoder_params`: {m: parameters of encoder m} (a model with `encoders` is accepted too)."""
    if hasattr(encoder_params, "encoders"):
        encoder_params = {m: list(enc.parameters()) for m, enc in encoder_params.encoders.items()}
    out = {}
    for m, params in encoder_params.items():
        grads = [p.grad for p in params if p.grad is not None]
        out[f"{prefix}/{m}"] = get_total_norm(grads) if grads else torch.zeros(())
    return out
