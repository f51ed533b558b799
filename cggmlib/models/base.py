"""The model contract every strategy relies on.

A multimodal model exposes
- `encoders`: an `nn.ModuleDict` keyed by modality; everything modality-specific (input projections
  included) sits inside encoder m, so scaling `encoders[m]`'s gradients scales all of modality m;
- `out_layer`: the fused output layer (its weight is what CGGM's direction term compares);
- `forward(inputs) -> Output` with `features[m]`, the output of encoder m.
Subclasses of `MultimodalModel` also get `encode`/`fuse`, which baselines use to feed the fusion
module a subset of modalities, and `modality_classifier(m)`, the CGGM classifier f_m of modality m.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError


@dataclass
class Output:
    """What a model returns: the fused prediction and each modality's encoder output."""

    logits: torch.Tensor
    """(B, C) class scores, (B, 1) regression scores or (B, C, H, W) segmentation scores"""
    features: dict[str, torch.Tensor]
    """modality -> encoder output, (B, D), (B, T, D) or (B, C, H, W)"""
    unimodal_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    """modality -> its own prediction, where a strategy or model computes one"""


class MultimodalModel(nn.Module):
    """Encoders keyed by modality, a fusion module ending in `out_layer`; subclasses define both."""

    encoders: nn.ModuleDict
    out_layer: nn.Module

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [m for m in self.encoders if m not in inputs]
        if missing:
            raise ConfigError(f"the batch lacks modalities {missing}; the model expects {self.modalities}, "
                              f"the batch has {sorted(inputs)}")
        return {m: self.encoders[m](inputs[m]) for m in self.encoders}

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fusion module Ω: features of every modality -> fused prediction."""
        raise NotImplementedError(f"{type(self).__name__} must define fuse(features)")

    def forward(self, inputs: dict[str, torch.Tensor]) -> Output:
        features = self.encode(inputs)
        return Output(self.fuse(features), features)

    def modality_classifier(self, modality: str) -> nn.Module:
        """A fresh CGGM classifier f_m reading `features[modality]`; it must expose `out_layer`."""
        raise NotImplementedError(f"{type(self).__name__} defines no modality classifier; "
                                  "pass `classifiers=` to the strategy")

    def released_scaled_parameters(self, modality: str) -> list[nn.Parameter] | None:
        """The parameters of modality m that the released CGGM code rescales by ρ·B_m (used by CGGM's
        `scaled="released"`). None, the default, means the released code has no such model: every
        parameter of `encoders[m]` is rescaled. The paper's models override it (docs/methods.md)."""
        return None


def pool_feature(feature: torch.Tensor) -> torch.Tensor:
    """(B, D) as is; (B, T, D) mean over T; (B, C, H, W) mean over H, W: one vector per sample."""
    if feature.dim() not in (2, 3, 4):
        raise ConfigError(f"cannot pool a feature of shape {tuple(feature.shape)}; expected (B, D), (B, T, D) "
                          "or (B, C, H, W)")
    return feature.mean(POOL_DIMS[feature.dim()]) if feature.dim() > 2 else feature


#: feature rank -> the dimensions `pool_feature` averages over
POOL_DIMS = {3: (1,), 4: (2, 3)}


def fused_output_layer(model: nn.Module) -> nn.Module:
    """The model's fused output layer: `model.out_layer` (or `model.classifier`, the STYLE name)."""
    for name in ("out_layer", "classifier"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Module) and getattr(layer, "weight", None) is not None:
            return layer
    raise ConfigError(f"{type(model).__name__} has no fused output layer: expose it as `model.out_layer` "
                      "(an nn.Linear or conv with a `weight`) so that CGGM can compare directions")


def modality_parameters(model: nn.Module, modality: str) -> list[nn.Parameter]:
    """The parameters of `encoders[modality]` that no other encoder shares.

    A module shared by two encoders (the released Food-101 model's one projection for image and text,
    `FoodModel(text_projection="image")`) belongs to no single modality: strategies that scale,
    restore or combine one modality's gradients leave it to the fusion's treatment."""
    owners: dict[int, int] = {}
    for encoder in model.encoders.values():
        for p in encoder.parameters():
            owners[id(p)] = owners.get(id(p), 0) + 1
    return [p for p in model.encoders[modality].parameters() if owners[id(p)] == 1]


def check_encoders(model: nn.Module, min_modalities: int = 1) -> list[str]:
    """Validate `model.encoders` and return the modality names."""
    encoders = getattr(model, "encoders", None)
    if not isinstance(encoders, nn.ModuleDict):
        raise ConfigError(f"{type(model).__name__} must expose `encoders`, an nn.ModuleDict keyed by "
                          f"modality name (got {type(encoders).__name__})")
    if len(encoders) < min_modalities:
        raise ConfigError(f"this strategy needs at least {min_modalities} modalities; the model has "
                          f"{len(encoders)}: {list(encoders)}")
    return list(encoders)
