"""QMF: quality-aware multimodal fusion with confidence ranked by each sample's loss history.

Zhang, Wu, Hu, Zhang, Fu, Zhou & Peng, "Provable Dynamic Fusion for Low-Quality Multimodal Data",
ICML 2023. Reference code: QingyangZhang/QMF@fe6c4c6 RGBD-scene-recognition/models/QMF.py:53-76
(`forward`), train_QMF_nyud2.py:57-77 (`rank_loss`), 79-109 (`model_forward_train`), 42 (`--lamb`) and
utils/crl_utils.py:17-70 (`History`).

Each modality m has its own head f_m on encoder features (the model's fusion module is not used):
    z_m = f_m(h_m),   w_m(x) = −0.1 · E_m(x) = 0.1 · logsumexp_k z_{m,k}   (energy confidence, per sample)
    ŷ = Σ_m w_m(x) · z_m                                                   (dynamic late fusion)
    L = ℓ(ŷ, y) + Σ_m ℓ(z_m, y) + λ Σ_m L_rank(w_m)
L_rank pairs each sample i with its neighbour i+1 in the batch (torch.roll) and penalises the
sample with the larger loss history for being the more confident one:
    L_rank = mean_i max(0, t_i · (w_i − w_{i+1}) − |h̃_i − h̃_{i+1}|),   t_i = sign(h̃_i − h̃_{i+1})
(h̃: history min-max normalised). This is the released code's `MarginRankingLoss` with target −t:
the history gap acts as a tolerance, where CRL (Moon et al., ICML 2020), from which it is adapted,
enforces it as a margin; we follow the code.

Deviations and extensions:
- loss history: the sum of each sample's detached per-sample unimodal losses over training, keyed by
  `batch.meta["index"]` when the loader provides it (normalised over the samples seen so far; the
  reference pre-allocates the whole dataset with zeros). Loaders without sample ids (`synthetic`
  today) rank by the current batch's per-sample losses instead: the same pairwise target, without
  memory of earlier epochs. The trace column `history` says which was used (1 = history);
- regression has no logits to take an energy of: each modality gets a second head g_m and
  w_m = softplus(g_m(h_m)), trained by the same ranking term, and ŷ = Σ_m w_m ŷ_m / Σ_m w_m (a
  weighted mean: a weighted sum of scalar predictions would change their scale);
- segmentation: the energy is taken per pixel, ŷ = Σ_m w_m ⊙ z_m per pixel, and the per-sample
  confidence ranked against the history is the mean over pixels;
- one optimizer for encoders and heads (the loop's), as the reference; no gradient accumulation;
- order: the released step ranks against the history *before* adding this batch's losses
  (train_QMF_nyud2.py:100-105); ours adds them first, so the batch's own losses are in the ranking
  and the very first step has a defined, non-empty history (the released one is all zeros then, and
  its min-max normalisation divides 0 by 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.base import Output
from .base import Strategy
from .classifiers import unimodal_heads


def energy_confidence(logits: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """w = −T · E(z) = T · logsumexp_k z_k over the class dimension (dim 1), kept as a size-1 dim."""
    return temperature * torch.logsumexp(logits, dim=1, keepdim=True)


def rank_loss(confidence: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """mean_i max(0, t_i (w_i − w_{i+1}) − |h_i − h_{i+1}|), t_i = sign(h_i − h_{i+1}); neighbours by roll.

    confidence, history: (B,); history min-max normalised. Pairs with equal history add nothing.
    """
    conf2, hist2 = torch.roll(confidence, -1), torch.roll(history, -1)
    target = torch.sign(history - hist2)  # +1: sample i has the larger loss, so it should be less confident
    return F.relu(target * (confidence - conf2) - (history - hist2).abs()).mean()


def normalise(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return (values - low) / (high - low).clamp(min=1e-12)


def encode(model, inputs: dict) -> dict:
    return model.encode(inputs) if hasattr(model, "encode") else model(inputs).features


@dataclass
class QMF(Strategy):
    rank_weight: float = 0.1
    """λ: weight of the ranking regulariser (reference `--lamb` 0.1 for RGB-D; its text-image script uses 1)"""
    temperature: float = 0.1
    """T in w = −T · energy (the reference hard-codes 0.1)"""

    min_modalities = 2

    def __post_init__(self):
        for name in ("rank_weight", "temperature"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ConfigError(f"qmf: {name} must be a number >= 0, got {getattr(self, name)!r}")

    def setup(self, model, data) -> None:
        super().setup(model, data)
        device = next(model.parameters()).device
        self.heads = nn.ModuleDict(unimodal_heads(model, data, "qmf")).to(device)
        self.conf_heads = nn.ModuleDict(unimodal_heads(model, data, "qmf")).to(device) \
            if self.task.kind == "regression" else None
        self.history = {m: torch.zeros(0, device=device) for m in self.modalities}  # Σ loss per sample id
        self._stats = {}

    def parameters(self) -> list:
        return [*self.heads.parameters(), *(self.conf_heads.parameters() if self.conf_heads is not None else [])]

    def confidences(self, features: dict, preds: dict) -> dict:
        if self.conf_heads is not None:
            return {m: F.softplus(self.conf_heads[m](features[m])) for m in self.modalities}
        return {m: energy_confidence(z, self.temperature) for m, z in preds.items()}

    def fused(self, features: dict) -> Output:
        preds = {m: self.heads[m](features[m]) for m in self.modalities}
        conf = self.confidences(features, preds)
        fused = sum(conf[m] * preds[m] for m in self.modalities)
        if self.conf_heads is not None:
            fused = fused / sum(conf.values()).clamp(min=1e-6)
        self._conf = conf
        return Output(fused, features, preds)

    def forward(self, model, batch, epoch: int) -> Output:
        self._follow(model)
        return self.fused(encode(model, batch.inputs))

    def predict(self, model, inputs) -> torch.Tensor:
        self._follow(model)
        return self.fused(encode(model, inputs)).logits

    def _follow(self, model) -> None:
        """The heads are not submodules of the model: follow its train/eval mode (dropout, batch norm)."""
        for heads in (self.heads, self.conf_heads):
            if heads is not None:
                heads.train(model.training)

    def _history(self, m: str, index, losses: torch.Tensor) -> torch.Tensor:
        """Add this batch's losses to the history of its samples; return their normalised histories."""
        top = int(index.max()) if torch.is_tensor(index) else max(int(i) for i in index)  # host-side ids: no sync
        idx = torch.as_tensor(index, device=losses.device).long()
        hist = self.history[m]
        if len(hist) <= top:
            hist = torch.cat([hist, hist.new_full((top + 1 - len(hist),), float("nan"))])
        hist[idx] = torch.nan_to_num(hist[idx]) + losses
        self.history[m] = hist
        seen = hist[~hist.isnan()]
        return normalise(hist[idx], seen.min(), seen.max())

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        loss = self.task.loss(out.logits, batch.target)
        index = batch.meta.get("index") if isinstance(batch.meta, dict) else None
        stats = {"history": torch.tensor(float(index is not None))}
        for m in self.modalities:
            z = out.unimodal_logits[m]
            head_loss = self.task.loss(z, batch.target)
            per_sample = self.task.per_sample_loss(z.detach().float(), batch.target)
            if index is not None:
                hist = self._history(m, index, per_sample)
            else:
                hist = normalise(per_sample, per_sample.min(), per_sample.max())
            conf = self._conf[m].flatten(1).mean(1)  # per-sample confidence (mean over pixels if any)
            rank = rank_loss(conf.float(), hist)
            loss = loss + head_loss + self.rank_weight * rank
            stats |= {f"weight/{m}": conf.detach().mean(), f"loss_head/{m}": head_loss.detach(),
                      f"rank/{m}": rank.detach()}
        self._stats = stats
        return loss

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        return super().after_backward(model, batch, out, epoch) | self._stats

    def state_dict(self) -> dict:
        return super().state_dict() | {"heads": self.heads.state_dict(), "history": self.history,
                                       "conf_heads": self.conf_heads.state_dict() if self.conf_heads else None}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.heads.load_state_dict(state["heads"])
        if self.conf_heads is not None:
            self.conf_heads.load_state_dict(state["conf_heads"])
        self.history = state["history"]
