"""UME: uni-modal ensemble, averaging the predictions of separately trained unimodal models.

Du, Teng, Wang, Yang, Li, Gao, Chen, Zhao & Wei, "On Uni-Modal Feature Learning in Supervised
Multi-Modal Learning", ICML 2023. Reference code: none found for UME (searched the stored GitHub
index and code search for the paper title, "UME", "uni-modal ensemble"; BalanceBenchmark@4c1482f has no
UME trainer); the teachers follow GeWu-Lab/BalanceBenchmark@4c1482f
balancemm/trainer/UMT_trainer.py (unimodal checkpoints per modality).

Each modality's model is trained alone first (`teachers.py`: `Unimodal` through the same loop,
cached), then frozen; the prediction combines them with weights w_m (Σ w_m = 1):
    classification, segmentation:  log Σ_m w_m softmax(z_m)   (the mean class-probability map, as logits)
    regression:                    Σ_m w_m ŷ_m
No multimodal training happens. What the loop's own epochs do depends on `weights`:
- "uniform" (UME as published): w_m = 1/M and nothing is trained; each step only evaluates the
  ensemble's training loss for the trace (the loss is a detached leaf, so no parameter moves);
- "learned": w = softmax(θ) with θ (one logit per modality, from 0) trained by the loop's optimizer
  on the ensemble's task loss, the unimodal models staying frozen.
The model's own encoders and fusion module are not used by `predict`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..models.base import Output
from .base import Strategy
from .teachers import unimodal_teachers, validate_teacher_fields

WEIGHTS = ("uniform", "learned")


def ensemble_predictions(preds: dict, weights: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ_m w_m ŷ_m for regression; log Σ_m w_m softmax(z_m) over dim 1 otherwise (stable logsumexp)."""
    stacked = torch.stack([p.float() for p in preds.values()])  # (M, B, ...)
    w = weights.float().reshape(-1, *([1] * (stacked.dim() - 1)))
    if kind == "regression":
        return (w * stacked).sum(0)
    return torch.logsumexp(w.log() + stacked.log_softmax(2), dim=0)


@dataclass
class UME(Strategy):
    weights: str = "uniform"
    """uniform (UME: plain average, nothing trained) | learned (softmax weights fitted on the training set)"""
    teacher_epochs: int | None = None
    """epochs of each unimodal run (None: the dataset preset's epochs)"""
    teacher_seed: int = 0
    """seed of the unimodal runs (part of the cache key)"""
    teacher_preset: str = "smoke"
    """training preset of the unimodal runs: smoke | paper (use the preset of your main run)"""
    teacher_dir: str | None = None
    """cache folder for the unimodal models (default results/.cache/teachers, shared with UMT)"""

    min_modalities = 1

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise ConfigError(f"ume: weights must be one of {WEIGHTS}, got {self.weights!r}")
        validate_teacher_fields("ume", self.teacher_epochs, self.teacher_seed, self.teacher_preset, self.teacher_dir)

    def setup(self, model, data) -> None:
        super().setup(model, data)
        self.teachers = unimodal_teachers(model, data, epochs=self.teacher_epochs, seed=self.teacher_seed,
                                          preset=self.teacher_preset, cache_dir=self.teacher_dir,
                                          max_steps=self.step_limit)
        device = next(model.parameters()).device
        self.logits = nn.Parameter(torch.zeros(len(self.modalities), device=device),
                                   requires_grad=self.weights == "learned")

    def parameters(self) -> list:
        return [self.logits] if self.weights == "learned" else []

    def combine(self, inputs: dict) -> Output:
        features = {m: self.teachers[m].features(inputs[m]) for m in self.modalities}
        preds = {m: self.teachers[m].head(features[m]) for m in self.modalities}
        logits = ensemble_predictions(preds, self.logits.softmax(0), self.task.kind)
        return Output(logits, features, preds)

    def forward(self, model, batch, epoch: int) -> Output:
        return self.combine(batch.inputs)

    def predict(self, model, inputs) -> torch.Tensor:
        with torch.no_grad():
            return self.combine(inputs).logits

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        loss = self.task.loss(out.logits, batch.target)
        return loss if loss.requires_grad else loss.detach().requires_grad_()

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        stats = super().after_backward(model, batch, out, epoch)
        return stats | {f"weight/{m}": w for m, w in zip(self.modalities, self.logits.detach().softmax(0))}

    def state_dict(self) -> dict:
        return super().state_dict() | {"logits": self.logits.detach().clone(),
                                       "teachers": {m: t.state_dict() for m, t in self.teachers.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        for m, t in self.teachers.items():
            t.load_state_dict(state["teachers"][m])
