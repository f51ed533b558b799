"""MRD: modality random dropout — during training, zero whole modalities at random, per sample.

The "Modality Random Dropout" baseline named in the CGGM paper (Guo et al., NeurIPS 2024, Sec. 4.3),
in the ModDrop tradition (Neverova, Wolf, Taylor & Nebout, "ModDrop: adaptive multi-modal gesture
recognition", IEEE TPAMI 2016): a fusion module that sometimes misses a modality cannot lean on one
modality alone. No reference code for the CGGM comparison is public.

Per training sample and modality m, independently: drop_m ~ Bernoulli(p); a sample whose every modality
was drawn keeps one of them, chosen uniformly at random, so no sample loses all its modalities. A
dropped modality's input (where="input") or encoder output (where="feature") is replaced by zeros; no
rescaling (unlike unit dropout), and nothing is dropped at evaluation.

Reference code: none found (searched the stored GitHub index for the CGGM authors' repositories,
zrguo/CGGM@21e428c has no MRD code path, and for "modality random dropout"); ModDrop is a different
architecture, so nothing here is transcribed from code.
Choices (no documented default exists for this baseline): p = 0.5 (ModDrop-style); inputs are zeroed by
default (a missing modality is a zero input). With M modalities the
effective per-modality drop rate is below p because of the keep-one rule, e.g. 0.375 for M = 2;
`drop/m` in the trace logs the realised fraction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.base import Output
from .base import Strategy

WHERE = ("input", "feature")


def drop_masks(batch_size: int, num_modalities: int, p: float, device=None) -> torch.Tensor:
    """(B, M) bool, True = dropped: Bernoulli(p) per entry, and never a whole row (one is kept at random)."""
    drop = torch.rand(batch_size, num_modalities, device=device) < p
    rescue = F.one_hot(torch.randint(num_modalities, (batch_size,), device=device), num_modalities).bool()
    return drop & ~(rescue & drop.all(1, keepdim=True))


def zero_rows(x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """x (B, ...) with the samples where `dropped` (B,) is True replaced by zeros (NaN-safe, keeps grad)."""
    return x.masked_fill(dropped.view(-1, *([1] * (x.dim() - 1))), 0)


@dataclass
class MRD(Strategy):
    """Joint training with each modality's input (or features) zeroed per sample with probability p."""

    p: float = 0.5
    """p: probability of dropping each modality of a training sample (never all of them)"""
    where: str = "input"
    """input (zero the modality's input tensor) | feature (zero its encoder output before fusion)"""

    min_modalities = 2

    def __post_init__(self):
        if not isinstance(self.p, (int, float)) or not 0 <= self.p < 1:
            raise ConfigError(f"mrd: p must be a probability in [0, 1), got {self.p!r}")
        if self.where not in WHERE:
            raise ConfigError(f"mrd: where must be one of {WHERE}, got {self.where!r}")

    def forward(self, model, batch, epoch: int) -> Output:
        first = batch.inputs[self.modalities[0]]
        self._drop = drop_masks(len(first), len(self.modalities), self.p, first.device)
        dropped = {m: self._drop[:, i] for i, m in enumerate(self.modalities)}
        if self.where == "input":
            return model({m: zero_rows(x, dropped[m]) if m in dropped else x for m, x in batch.inputs.items()})
        if not hasattr(model, "fuse"):
            raise ConfigError(f"mrd: where='feature' needs model.encode/fuse ({type(model).__name__} has no "
                              "`fuse`); use where='input'")
        features = {m: zero_rows(f, dropped[m]) for m, f in model.encode(batch.inputs).items()}
        return Output(model.fuse(features), features)

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        stats = super().after_backward(model, batch, out, epoch)
        rate = self._drop.float().mean(0)
        return stats | {f"drop/{m}": rate[i] for i, m in enumerate(self.modalities)}
