"""Late-fusion MLP for vector modalities (`synthetic`, `mfeat`, and a template for your own model).

Encoder m: Linear(d_m, hidden) → ReLU → Linear(hidden, feature_dim). Fusion: concatenation →
Linear → ReLU → `out_layer` Linear(hidden, C). The CGGM classifier of modality m ends in a layer of
the same shape as `out_layer`, so the direction term can compare them.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import MultimodalModel


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class ModalityClassifier(nn.Module):
    """CGGM classifier f_m on a (B, D) feature: Linear → ReLU → out_layer."""

    def __init__(self, feature_dim: int, hidden: int, num_outputs: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU())
        self.out_layer = nn.Linear(hidden, num_outputs)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.body(feature))


class LateFusionMLP(MultimodalModel):
    """MLP encoders per modality, concatenation fusion, one output layer."""

    def __init__(self, input_dims: dict[str, int], num_outputs: int, hidden: int = 64,
                 feature_dim: int = 32, dropout: float = 0.1):
        super().__init__()
        self.encoders = nn.ModuleDict({m: _mlp(d, hidden, feature_dim, dropout) for m, d in input_dims.items()})
        self.fusion = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim * len(input_dims), hidden), nn.ReLU(),
                                    nn.Dropout(dropout))
        self.out_layer = nn.Linear(hidden, num_outputs)
        self.feature_dim, self.hidden, self.num_outputs = feature_dim, hidden, num_outputs

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.out_layer(self.fusion(torch.cat([features[m] for m in self.encoders], dim=-1)))

    def modality_classifier(self, modality: str) -> nn.Module:
        return ModalityClassifier(self.feature_dim, self.hidden, self.num_outputs)
