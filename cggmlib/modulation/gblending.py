"""G-Blending: gradient blending of per-modality heads and the fused head, weighted by their
overfitting-to-generalisation ratio.

Wang, Tran & Feiszli, "What Makes Training Multi-modal Classification Networks Hard?", CVPR 2020
(arXiv 1905.12681). No official code is public. Reference code: GeWu-Lab/BalanceBenchmark@4c1482f
balancemm/trainer/GBlending_trainer.py:292-304 (`training_step`) and 306-376 (`super_epoch_origin`,
online variant; |ΔG| / ΔO² at 366).

Heads k ∈ {m_1, …, m_M, fused}: g_m = `model.modality_classifier(m)` on features[m] (owned by the
strategy, trained end to end with encoder m by the loop's optimizer) and the model's fused output.
    L = Σ_k w_k · L_task(head_k, y)
Online G-Blend: every `super_epoch` epochs (n), at the start of the epoch, for every head k:
    ΔG_k = L^V_k(start) − L^V_k(end)                        generalisation gained
    ΔO_k = O_k(end) − O_k(start),  O_k = L^V_k − L^T_k       overfitting gained
    w_k  = ΔG_k / ΔO_k²,  normalised to Σ_k w_k = 1
where start/end are n epochs apart and L^T, L^V are mean losses over `data.train` and `data.val`
(eval mode). Before the first estimate the weights are uniform, 1/(M+1).

Two ways to get "end" (`estimate`):
- "copy" (the paper's GB estimation, as BalanceBenchmark): from the current weights, a temporary deep
  copy of the model and heads trains head k alone on L_task(head_k) for n epochs (own optimizer,
  `estimate_optimizer` at `estimate_lr`, no clipping); start is the current model. Costs (M+1)·n extra
  epochs per super-epoch; the copies are discarded.
- "trajectory" (cheap, no copy): start and end are the current run's heads at two successive
  super-epoch boundaries, trained with the blended loss; the first super-epoch keeps uniform weights.

Deviations: losses are means over samples (BalanceBenchmark sums train and validation batch losses,
which differ in number); the start point is the checkpoint itself (BalanceBenchmark measures after the
copy's first epoch); ΔG_k ≤ 0 gives w_k = 0 (BalanceBenchmark takes |ΔG|; the paper's ratio assumes
ΔG > 0), and if every w_k is 0 the weights stay uniform; ε = 1e-8 is added to ΔO².
Any task: L_task is `task.loss` (cross-entropy in the paper).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .base import Strategy
from .classifiers import make_optimizer, unimodal_heads

ESTIMATES = ("copy", "trajectory")
FUSED = "fused"


def blend_weights(start: dict, end: dict, eps: float = 1e-8) -> tuple[dict, dict, dict]:
    """(w, ΔG, ΔO) from {head: (train_loss, val_loss)} at the start and end of a super-epoch."""
    d_g = {k: start[k][1] - end[k][1] for k in start}
    d_o = {k: (end[k][1] - end[k][0]) - (start[k][1] - start[k][0]) for k in start}
    raw = {k: max(d_g[k], 0.0) / (d_o[k] ** 2 + eps) for k in start}
    total = sum(raw.values())
    w = {k: r / total for k, r in raw.items()} if total > 0 else {k: 1 / len(raw) for k in raw}
    return w, d_g, d_o


def head_outputs(model, heads, inputs) -> dict[str, torch.Tensor]:
    """{m: g_m(features[m]), "fused": fused output} for one batch."""
    out = model(inputs)
    return {m: heads[m](f) for m, f in out.features.items()} | {FUSED: out.logits}


@torch.no_grad()
def head_losses(model, heads, data, limit: int = 0) -> dict[str, tuple[float, float]]:
    """{head: (mean train loss, mean validation loss)} in eval mode; over the first `limit` batches of each split if > 0 (dry runs)."""
    device = next(model.parameters()).device
    modes = model.training, heads.training
    model.eval()
    heads.eval()
    means = []
    for loader in (data.train, data.val):
        total, n = {}, 0
        for batch in itertools.islice(loader, limit or None):
            batch = batch.to(device)
            for k, z in head_outputs(model, heads, batch.inputs).items():
                total[k] = total.get(k, 0.0) + data.task.loss(z.float(), batch.target) * len(batch)
            n += len(batch)
        means.append({k: float(t) / max(n, 1) for k, t in total.items()})
    model.train(modes[0])
    heads.train(modes[1])
    return {k: (means[0][k], means[1][k]) for k in means[0]}


@dataclass
class GBlending(Strategy):
    """Blend the losses of per-modality heads and the fused head with w_k ∝ ΔG_k / ΔO_k²."""

    super_epoch: int = 10
    """n: epochs per super-epoch; weights re-estimated every n epochs (BalanceBenchmark default 10)"""
    estimate: str = "copy"
    """copy (temporary copies train each head n epochs, the paper's estimate) | trajectory (no copies)"""
    estimate_optimizer: str = "adam"
    """copy: optimizer of the temporary copies (use the run's optimizer)"""
    estimate_lr: float = 1e-3
    """copy: learning rate of the temporary copies (use the run's learning rate)"""

    min_modalities = 2

    def __post_init__(self):
        if not isinstance(self.super_epoch, int) or self.super_epoch < 1:
            raise ConfigError(f"gblending: super_epoch must be an integer >= 1, got {self.super_epoch!r}")
        if self.estimate not in ESTIMATES:
            raise ConfigError(f"gblending: estimate must be one of {ESTIMATES}, got {self.estimate!r}")
        if not isinstance(self.estimate_lr, (int, float)) or self.estimate_lr <= 0:
            raise ConfigError(f"gblending: estimate_lr must be > 0, got {self.estimate_lr!r}")
        make_optimizer(self.estimate_optimizer, [torch.zeros(1, requires_grad=True)], 1.0)  # validates the name

    def setup(self, model, data) -> None:
        super().setup(model, data)
        heads = unimodal_heads(model, data, "gblending")
        self.heads = nn.ModuleDict(heads).to(next(model.parameters()).device)
        self.weights = {k: 1 / (len(self.modalities) + 1) for k in [*self.modalities, FUSED]}
        self.previous = None  # trajectory: head losses at the last super-epoch boundary

    def parameters(self) -> list:
        return list(self.heads.parameters())

    def _train_copy(self, model, head: str, data, epoch: int) -> dict[str, tuple[float, float]]:
        """Train a deep copy of (model, heads) on head `head` alone for n epochs; its losses after."""
        model_k, heads_k = copy.deepcopy(model), copy.deepcopy(self.heads)
        params = model_k.parameters() if head == FUSED else [*model_k.encoders[head].parameters(),
                                                             *heads_k[head].parameters()]
        optimizer = make_optimizer(self.estimate_optimizer, params, self.estimate_lr)
        device = next(model.parameters()).device
        model_k.train()
        heads_k.train()
        set_epoch = getattr(data.train, "set_epoch", lambda e: None)
        for i in range(1 if self.step_limit else self.super_epoch):  # a dry run: one short epoch per copy
            set_epoch(epoch + i)  # the copy sees the batches the run itself will see next
            for batch in itertools.islice(data.train, self.step_limit or None):  # a dry run stops early
                batch = batch.to(device)
                if head == FUSED:
                    pred = model_k(batch.inputs).logits
                else:
                    pred = heads_k[head](model_k.encoders[head](batch.inputs[head]))
                optimizer.zero_grad(set_to_none=True)
                self.task.loss(pred, batch.target).backward()
                optimizer.step()
        set_epoch(epoch)
        return head_losses(model_k, heads_k, data, self.step_limit)

    def on_epoch_start(self, model, data, epoch: int) -> dict:
        stats = {}
        if epoch % self.super_epoch == 0:
            now = head_losses(model, self.heads, data, self.step_limit)
            if self.estimate == "copy":
                start, end = now, {k: self._train_copy(model, k, data, epoch)[k] for k in self.weights}
            else:
                start, end, self.previous = self.previous, now, now
            if start is not None:
                self.weights, d_g, d_o = blend_weights(start, end)
                stats = {f"delta_g/{k}": v for k, v in d_g.items()} | {f"delta_o/{k}": v for k, v in d_o.items()}
        return stats | {f"weight/{k}": w for k, w in self.weights.items()}

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        self.heads.train(model.training)
        self._head_loss = {m: self.task.loss(self.heads[m](out.features[m]), batch.target) for m in self.modalities}
        fused = self.task.loss(out.logits, batch.target)
        return self.weights[FUSED] * fused + sum(self.weights[m] * l for m, l in self._head_loss.items())

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        stats = super().after_backward(model, batch, out, epoch)
        return stats | {f"loss_uni/{m}": l.detach() for m, l in self._head_loss.items()}

    def state_dict(self) -> dict:
        return super().state_dict() | {"heads": self.heads.state_dict(), "weights": self.weights,
                                       "previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.heads.load_state_dict(state["heads"])
        self.weights, self.previous = dict(state["weights"]), state["previous"]
