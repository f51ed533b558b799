"""A model built from your own encoders and one of four common fusions, with no `modality_classifier`.

`FusionModel(encoders, feature_dims, num_outputs, fusion=...)` pools each encoder output to (B, D_m)
(`pool_feature`) and fuses them by
- "concat":    out_layer(ReLU(Linear([z_1; …; z_M])))       or out_layer([z_1; …; z_M]) with hidden=None
- "sum":       out_layer(Σ_m z_m)
- "gated":     out_layer(Σ_m g_m · z_m),  g = softmax(Linear([z_1; …; z_M]))      (one gate per modality)
- "attention": out_layer(mean over tokens of TransformerEncoderLayer([z_m + e_m]_m))  (a token per modality)

It is the template of "CGGM on any model": CGGM and the baselines fall back to
`cggmlib.modulation.classifiers.DefaultClassifier`, whose `out_layer` copies this model's shape.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import MultimodalModel, pool_feature

FUSIONS = ("concat", "sum", "gated", "attention")


class FusionModel(MultimodalModel):
    """`encoders[m]` (yours) → pooled (B, D_m) → fusion → `out_layer`."""

    def __init__(self, encoders: dict[str, nn.Module], feature_dims: dict[str, int], num_outputs: int,
                 fusion: str = "concat", hidden: int | None = 64, heads: int = 2, dropout: float = 0.0):
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"FusionModel: fusion must be one of {FUSIONS}, got {fusion!r}")
        missing = [m for m in encoders if m not in feature_dims]
        if missing:
            raise ConfigError(f"FusionModel: feature_dims lacks {missing}; give the width D_m of each encoder's output")
        dims = [int(feature_dims[m]) for m in encoders]
        if fusion != "concat" and len(set(dims)) != 1:
            raise ConfigError(f"FusionModel: fusion={fusion!r} needs encoders of one width, got "
                              f"{dict(zip(encoders, dims))}; use fusion='concat' or project them to one width")
        self.encoders, self.fusion = nn.ModuleDict(encoders), fusion
        width = dims[0]
        if fusion == "concat":
            self.mix = nn.Sequential(nn.Linear(sum(dims), hidden), nn.ReLU(), nn.Dropout(dropout)) if hidden \
                else nn.Identity()
            width = hidden or sum(dims)
        elif fusion == "gated":
            self.mix = nn.Linear(sum(dims), len(dims))
        elif fusion == "attention":
            self.embed = nn.Parameter(torch.zeros(len(dims), width))
            self.mix = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True)
        self.out_layer = nn.Linear(width, num_outputs)

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        z = [pool_feature(features[m]) for m in self.encoders]
        if self.fusion == "concat":
            return self.out_layer(self.mix(torch.cat(z, -1)))
        if self.fusion == "sum":
            return self.out_layer(torch.stack(z).sum(0))
        if self.fusion == "gated":
            gate = self.mix(torch.cat(z, -1)).softmax(-1)  # (B, M)
            return self.out_layer((gate.T[..., None] * torch.stack(z)).sum(0))
        tokens = self.mix(torch.stack(z, 1) + self.embed)  # (B, M, D)
        return self.out_layer(tokens.mean(1))


def mlp_encoders(input_dims: dict[str, int], width: int = 32) -> dict[str, nn.Module]:
    """Linear(d_m, width) → ReLU per modality: encoders for flat (B, d_m) views."""
    return {m: nn.Sequential(nn.Linear(int(d), width), nn.ReLU()) for m, d in input_dims.items()}
