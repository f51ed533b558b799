"""The per-modality classifiers f_m of CGGM, trained on detached encoder features.

They read `out.features[m].detach()`, so their loss never reaches the encoders; they have their own
optimizer and learning rate (official `cls_optimizer`, `cls_lr`). Used by CGGM, and by any strategy
with `observe=True` to measure per-modality learning without changing it.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_gradients, mean_across_processes
from ..errors import ConfigError


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """adam | adamw | sgd (momentum 0.9), as the official scripts use them.

    foreach=True: one call per group of tensors instead of one per parameter; the results are
    bit-identical to PyTorch's per-parameter CPU default and the step about 1.5× faster on CPU.
    """
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, foreach=True)
    raise ConfigError(f"unknown optimizer {name!r}; choose adam, adamw or sgd")


class PooledLinear(nn.Module):
    """Fallback classifier for a model without `modality_classifier`: mean-pool, then one Linear."""

    def __init__(self, feature_dim: int, num_outputs: int):
        super().__init__()
        self.out_layer = nn.Linear(feature_dim, num_outputs)

    def forward(self, feature):
        if feature.dim() > 2:  # (B, T, D) -> (B, D)
            feature = feature.flatten(1, -2).mean(1)
        return self.out_layer(feature)


class ModalityClassifiers(nn.Module):
    """f_m for every modality, their optimizer, and the per-batch metric ε_m of each."""

    def __init__(self, heads: dict[str, nn.Module] | None, task, lr: float, optimizer: str = "adam",
                 weight_decay: float = 0.0, model: nn.Module | None = None):
        super().__init__()
        self.task, self.lr, self.optimizer_name, self.weight_decay = task, lr, optimizer, weight_decay
        self.heads = nn.ModuleDict(heads or {})
        self._model = [model]  # not a submodule: its parameters belong to the loop's optimizer
        self.prev_eps = None
        self.optimizer = make_optimizer(optimizer, self.heads.parameters(), lr, weight_decay) if heads else None

    @classmethod
    def for_strategy(cls, strategy, model, heads: dict | None = None) -> "ModalityClassifiers":
        if heads is None and hasattr(model, "modality_classifier"):
            kind = getattr(strategy, "resolved", {}).get("classifier_head")
            takes_head = kind is not None and "head" in inspect.signature(model.modality_classifier).parameters
            try:
                heads = {m: model.modality_classifier(m, head=kind) if takes_head else model.modality_classifier(m)
                         for m in model.encoders}
            except NotImplementedError:
                heads = None
        if heads is not None:
            device = next(model.parameters()).device
            heads = {m: h.to(device) for m, h in heads.items()}
            missing = [m for m in model.encoders if m not in heads]
            if missing:
                raise ConfigError(f"classifiers given for {sorted(heads)} but the model has modalities "
                                  f"{list(model.encoders)}; missing {missing}")
        return cls(heads, strategy.task, strategy.head_lr, strategy.head_optimizer,
                   strategy.head_weight_decay, model)

    def _build_lazily(self, features: dict[str, torch.Tensor]) -> None:
        """Fallback heads (PooledLinear) once the feature shapes are known."""
        out_dim = self.task.num_outputs
        for m, f in features.items():
            self.heads[m] = PooledLinear(f.shape[-1], out_dim).to(f.device)
        self.optimizer = make_optimizer(self.optimizer_name, self.heads.parameters(), self.lr, self.weight_decay)
        if getattr(self, "_pending_state", None) is not None:
            self.load_state_dict(self._pending_state)
            self._pending_state = None

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not len(self.heads):
            self._build_lazily(features)
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type, enabled=False):  # small heads: full precision, no GradScaler
            return {m: self.heads[m](f.detach().float()) for m, f in features.items()}

    def observe(self, features, target, metric=None, dtype: torch.dtype = torch.float32) -> dict:
        """Forward every f_m on detached features and backpropagate Σ_m loss_m into the heads only.

        Sets `self.eps` (ε_m, the per-batch metric, averaged over data-parallel ranks) and
        `self.delta` (Δε_m = ε_m^t − ε_m^{t−1}, with ε^0 = 0 and no reset between epochs), both (M,)
        tensors in `self.modalities` order and in `dtype` (float64 reproduces the released code's
        scikit-learn accuracies), and `self.last_preds`. Returns the trace scalars
        `acc_head/m` (the task's official per-batch metric), `loss_head/m`, `eps/m`, `delta/m` as
        device tensors: no host synchronisation.
        """
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        preds = self(features)
        losses = {m: self.task.loss(z, target) for m, z in preds.items()}
        torch.stack(list(losses.values())).sum().backward()
        metric = metric or self.task.step_metric
        with torch.no_grad():
            official = {m: self.task.step_metric(z, target) for m, z in preds.items()}
            same = metric is self.task.step_metric and dtype == torch.float32
            eps = torch.stack([official[m] if same else metric(z, target, dtype=dtype) if dtype != torch.float32
                               else metric(z, target) for m, z in preds.items()])
            eps = mean_across_processes(eps)
            self.delta = eps - (torch.zeros_like(eps) if self.prev_eps is None else self.prev_eps)
            self.eps = self.prev_eps = eps
        self.modalities, self.last_preds = list(preds), preds
        stats = {f"acc_head/{m}": a for m, a in official.items()}
        stats |= {f"loss_head/{m}": l.detach() for m, l in losses.items()}
        stats |= {f"eps/{m}": e for m, e in zip(preds, eps)}
        stats |= {f"delta/{m}": d for m, d in zip(preds, self.delta)}
        return stats

    def direction_stats(self, fused_layer) -> dict:
        """`cos_weight/m` and `cos_grad/m` between the fused output layer and each f_m's (no grad)."""
        w = fused_layer.weight
        stats = {f"cos_weight/{m}": c for m, c in self.weight_cosines(w).items()}
        return stats | {f"cos_grad/{m}": c for m, c in self.grad_cosines(w.grad).items()}

    def step(self) -> None:
        """The classifiers' own optimizer step (gradients averaged over data-parallel ranks first)."""
        all_reduce_gradients(list(self.heads.parameters()))
        self.optimizer.step()

    def out_weight(self, m: str) -> torch.Tensor:
        return self.heads[m].out_layer.weight

    def out_weights(self) -> torch.Tensor | list:
        """A float32 copy of every f_m's output-layer weight, flattened and stacked (M, K) in heads order;
        a list of flattened copies when their shapes differ."""
        with torch.no_grad():
            flat = [self.out_weight(m).flatten().float() for m in self.heads]
            return torch.stack(flat) if len({f.shape for f in flat}) == 1 else [f.clone() for f in flat]

    def weight_cosines(self, fused_weight: torch.Tensor, weights=None) -> dict[str, torch.Tensor]:
        """cos(vec W_fused, vec W_m) of the output-layer weights (official `cal_cos`), detached.

        `weights`: the (M, K) copies from `out_weights()` to compare instead of the current weights."""
        with torch.no_grad():
            weights = self.out_weights() if weights is None else weights
            return dict(zip(self.heads, cosines(fused_weight, weights)))

    def grad_cosines(self, fused_grad: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """cos(vec ∇W_fused L, vec ∇W_m L_m) of the output-layer gradients (the paper's sim), detached."""
        grads = [self.out_weight(m).grad for m in self.heads]
        if fused_grad is None or any(g is None for g in grads):
            return {m: torch.tensor(float("nan")) for m in self.heads}
        with torch.no_grad():
            return dict(zip(self.heads, cosines(fused_grad, grads)))

    def state_dict(self, *args, **kwargs):
        return {"heads": self.heads.state_dict(), "prev_eps": self.prev_eps,
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def load_state_dict(self, state, strict: bool = True):
        if not len(self.heads):  # fallback heads are built on the first batch; restore them then
            self._pending_state = state
            return
        self.heads.load_state_dict(state["heads"])
        self.prev_eps = state.get("prev_eps")
        if state.get("optimizer") is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])


def cosines(fused: torch.Tensor, others) -> torch.Tensor:
    """(M,) cos(vec fused, vec other_m), in one batched call when shapes agree; NaN where they do not.

    `others`: a list of tensors, or an (M, K) stack of flattened ones."""
    vec = fused.flatten().float()
    if torch.is_tensor(others) and others.dim() == 2 and others.shape[1] == vec.numel():
        return F.cosine_similarity(others.float(), vec[None], dim=1)
    if not torch.is_tensor(others) and all(o.numel() == vec.numel() for o in others):
        return F.cosine_similarity(torch.stack([o.flatten().float() for o in others]), vec[None], dim=1)
    return torch.stack([F.cosine_similarity(o.flatten().float(), vec, dim=0) if o.numel() == vec.numel()
                        else torch.tensor(float("nan"), device=vec.device) for o in others])
