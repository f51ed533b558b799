"""Unimodal training: one modality's encoder plus its own head, trained alone.

The single-modality rows of the CGGM paper's tables and the "unimodal training" column of its Table 5
(Guo et al., NeurIPS 2024, Sec. 4.3–4.4: "three separate models", one per modality). The UMT/UME
baselines (Du et al., ICML 2023) pretrain their teachers with it.
Reference code: zrguo/CGGM@21e428c models/segmodel.py:330 `Unimodal` (one backbone plus its decoder,
never called there); GeWu-Lab/BalanceBenchmark@4c1482f balancemm/trainer/unimodal_trainer.py:90-102
(`training_step`).

The model is modality m's encoder φ_m followed by a head g_m = `model.modality_classifier(m)` (the same
architecture as CGGM's classifier f_m, but trained end to end with the encoder, not on detached
features): ŷ = g_m(φ_m(x^m)), loss = L_task(ŷ, y). The other encoders are never run.

Deviations:
- the unimodal model reuses the multimodal model's encoder m (same architecture and initialisation as in
  joint training) instead of a separately defined network;
- the head is owned by the strategy and trained (and clipped) by the loop's optimizer through
  `parameters()`; the loop restores it from the validation-selected epoch with the model's weights.

Also home of `unimodal_responses`, the natural extension of a modality's "share" of the fused
prediction to any fusion module, which OGM, MSLR and Greedy use.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..models.base import Output
from .base import Strategy
from .classifiers import unimodal_heads


def keep_only(features: dict[str, torch.Tensor], keep: str) -> dict[str, torch.Tensor]:
    """`features` with every modality except `keep` replaced by zeros of the same shape."""
    return {m: f if m == keep else torch.zeros_like(f) for m, f in features.items()}


@torch.no_grad()
def unimodal_responses(model, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Modality m's response: `model.fuse` fed features[m] with every other modality set to zero.

    For late fusion with a linear head this is W_m f_m + b, OGM's share up to the bias split (b vs
    b/M). Runs in eval mode (dropout off, batch-norm statistics untouched) and without gradient.
    """
    if not hasattr(model, "fuse"):
        raise ConfigError(f"{type(model).__name__} has no `fuse(features)`; unimodal responses feed the fusion "
                          "module one modality at a time (subclass cggmlib.models.MultimodalModel)")
    was_training = model.training
    model.eval()
    try:
        return {m: model.fuse(keep_only(features, m)) for m in features}
    finally:
        model.train(was_training)


def shares_or_responses(model, out: Output) -> dict[str, torch.Tensor]:
    """The model's exact unimodal shares when it returns them, else `unimodal_responses`."""
    if out.unimodal_logits and set(out.unimodal_logits) == set(out.features):
        return {m: z.detach().float() for m, z in out.unimodal_logits.items()}
    # float(): after_backward runs outside autocast, where the model's weights are float32
    return unimodal_responses(model, {m: f.detach().float() for m, f in out.features.items()})


@dataclass
class Unimodal(Strategy):
    """Train modality `modality` alone: encoder φ_m and head g_m, ŷ = g_m(φ_m(x^m))."""

    modality: str | None = None
    """the modality to train (a key of model.encoders); None: the first modality"""
    head_override: nn.Module | None = field(default=None, repr=False)
    """your own head g_m reading features[m]; default: model.modality_classifier(m)"""

    min_modalities = 1

    def __post_init__(self):
        if self.modality is not None and not isinstance(self.modality, str):
            raise ConfigError(f"unimodal: modality must be a modality name (str) or None, got {self.modality!r}")
        if self.head_override is not None and not isinstance(self.head_override, nn.Module):
            raise ConfigError("unimodal: head_override must be a torch.nn.Module reading features[modality]")

    def setup(self, model, data) -> None:
        super().setup(model, data)
        if self.modality is not None and self.modality not in self.modalities:
            raise ConfigError(f"unimodal: unknown modality {self.modality!r}; the model's modalities are "
                              f"{self.modalities} (set modality= to one of them)")
        self.m = self.modality or self.modalities[0]
        if self.head_override is not None:
            head = self.head_override
        else:
            head = unimodal_heads(model, data, "unimodal", [self.m])[self.m]
        self.head = head.to(next(model.parameters()).device)

    def forward(self, model, batch, epoch: int) -> Output:
        self.head.train(model.training)  # the head is not a submodule: follow the model's mode
        feature = model.encoders[self.m](batch.inputs[self.m])
        logits = self.head(feature)
        return Output(logits, {self.m: feature}, {self.m: logits})

    def predict(self, model, inputs) -> torch.Tensor:
        self.head.train(model.training)  # evaluate() put the model in eval mode: dropout/batch norm off
        return self.head(model.encoders[self.m](inputs[self.m]))

    def parameters(self) -> list:
        return list(self.head.parameters())

    def state_dict(self) -> dict:
        return super().state_dict() | {"head": self.head.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.head.load_state_dict(state["head"])
