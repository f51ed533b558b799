"""The per-modality classifiers f_m of CGGM, trained on detached encoder features.

They read `out.features[m].detach()`, so their loss never reaches the encoders; they have their own
optimizer and learning rate (official `cls_optimizer`, `cls_lr`). Used by CGGM, and by any strategy
with `observe=True` to measure per-modality learning without changing it.
"""
from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..training.distributed import all_reduce_gradients, mean_across_processes
from ..errors import ConfigError
from ..models.base import POOL_DIMS, fused_output_layer


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


class DefaultClassifier(nn.Module):
    """f_m for a model without `modality_classifier`: pool, project d_m → K_in, ReLU, then an
    `out_layer` of the fused output layer's shape, so cos_m (Eq. 12) is defined for any fusion.

    Features (B, D), (B, T, D) (mean over T) and (B, C, H, W) (mean over H, W) for a Linear fused
    layer; (B, C, H, W) kept spatial, 1×1 convolutions and the fused Conv2d's shape for segmentation
    (the output is resized to the label size by `ModalityClassifiers`).
    """

    def __init__(self, feature_shape: tuple, fused: nn.Module, modality: str = "?"):
        super().__init__()
        hint = (f"define `modality_classifier({modality!r})` on the model (a module reading features[{modality!r}] "
                "and ending in an `out_layer` shaped like the fused one), or pass classifiers_override=")
        rank = len(feature_shape)
        if isinstance(fused, nn.Linear):
            if rank not in (2, 3, 4):
                raise ConfigError(f"modality {modality!r}: features of shape {tuple(feature_shape)}; the default "
                                  f"classifier pools (B, D), (B, T, D) or (B, C, H, W) features only; {hint}")
            width, dim = fused.in_features, feature_shape[1] if rank == 4 else feature_shape[-1]
            self.pool = POOL_DIMS.get(rank)
            self.body = nn.Sequential(nn.Linear(dim, width), nn.ReLU())
            self.out_layer = nn.Linear(width, fused.out_features, bias=fused.bias is not None)
        elif isinstance(fused, nn.Conv2d):
            if rank != 4:
                raise ConfigError(f"modality {modality!r}: the fused output layer is a Conv2d (segmentation) but "
                                  f"the features have shape {tuple(feature_shape)}; the default classifier needs "
                                  f"(B, C, H, W) feature maps; {hint}")
            width, self.pool = fused.in_channels, None
            self.body = nn.Sequential(nn.Conv2d(feature_shape[1], width, 1), nn.ReLU())
            self.out_layer = nn.Conv2d(width, fused.out_channels, fused.kernel_size, fused.stride, fused.padding,
                                       bias=fused.bias is not None)
        else:
            raise ConfigError(f"modality {modality!r}: the fused output layer is a {type(fused).__name__}; the "
                              f"default classifier copies an nn.Linear or nn.Conv2d only; {hint}")

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            feature = feature.mean(self.pool)
        return self.out_layer(self.body(feature))


def template_layer(model: nn.Module) -> nn.Module:
    """The fused output layer the default classifiers copy; a ConfigError naming the fix without one."""
    try:
        return fused_output_layer(model)
    except ConfigError as err:
        raise ConfigError(f"modalities {list(model.encoders)}: the model defines no `modality_classifier(m)`, and "
                          f"the default classifiers copy the fused output layer's shape, which was not found ({err}); "
                          "expose it as `model.out_layer`, or define `modality_classifier(m)`") from None


def default_classifiers(model: nn.Module, features: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    """A `DefaultClassifier` per modality, sized from the feature shapes and the fused output layer."""
    fused = template_layer(model)
    device = fused.weight.device
    return {m: DefaultClassifier(tuple(f.shape), fused, m).to(device) for m, f in features.items()}


def unimodal_heads(model: nn.Module, data, owner: str, modalities=None) -> dict[str, nn.Module]:
    """A fresh head per modality for a baseline: `model.modality_classifier(m)` where the model defines
    one, else a `DefaultClassifier` sized on the first training batch of `data`."""
    modalities = list(modalities or model.encoders)
    if hasattr(model, "modality_classifier"):
        try:
            return {m: model.modality_classifier(m) for m in modalities}
        except NotImplementedError:
            pass
    first = first_batch(model, data)
    if first is None:
        raise ConfigError(f"{owner}: {type(model).__name__} defines no `modality_classifier(m)`; the default heads "
                          f"for {modalities} are sized on the first training batch, so pass the Data (not only "
                          "its task) to setup(model, data), or define `modality_classifier(m)`")
    return {m: h for m, h in default_classifiers(model, first[0]).items() if m in modalities}


def first_batch(model: nn.Module, data) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
    """Encoder features and target of the first training batch (no grad, eval mode, RNG restored);
    None when `data` has no training loader (the hooks called from the user's own loop)."""
    loader = getattr(data, "train", None)
    if loader is None:
        return None
    device = next(model.parameters()).device
    with dry_run(model, device):
        batch = next(iter(loader)).to(device)
        return model(batch.inputs).features, batch.target


@contextlib.contextmanager
def dry_run(module: nn.Module, device: torch.device):
    """No grad, eval mode, and the random state restored afterwards: a forward that changes nothing."""
    modes = {mod: mod.training for mod in module.modules()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        module.eval()
        try:
            yield
        finally:
            for mod, mode in modes.items():
                mod.training = mode


class ModalityClassifiers(nn.Module):
    """f_m for every modality, their optimizer, and the per-batch metric ε_m of each."""

    def __init__(self, heads: dict[str, nn.Module] | None, task, lr: float, optimizer: str = "adam",
                 weight_decay: float = 0.0, model: nn.Module | None = None, compares_directions: bool = True):
        super().__init__()
        self.task, self.lr, self.optimizer_name, self.weight_decay = task, lr, optimizer, weight_decay
        self.heads = nn.ModuleDict(heads or {})
        self._model = [model]  # not a submodule: its parameters belong to the loop's optimizer
        self.compares_directions, self.checked = compares_directions, False
        self.prev_eps = None
        self.optimizer = make_optimizer(optimizer, self.heads.parameters(), lr, weight_decay) if heads else None

    @classmethod
    def for_strategy(cls, strategy, model, heads: dict | None = None, data=None) -> "ModalityClassifiers":
        """The strategy's classifiers: `heads`, else `model.modality_classifier(m)`, else `DefaultClassifier`s.

        With a `data` that has a training loader, the default heads are built and every head is
        shape-checked on its first batch here, before any step; otherwise at the first forward.
        """
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
        else:
            template_layer(model)  # no fused layer to copy: fail at setup, before any batch
        # CGGM's direction term (λ ≠ 0, or the paper variant, whose step always forms cos_m)
        directions = bool(getattr(strategy, "lam", 0)) or getattr(strategy, "variant", None) == "paper"
        classifiers = cls(heads, strategy.task, strategy.head_lr, strategy.head_optimizer,
                          strategy.head_weight_decay, model, compares_directions=directions)
        first = first_batch(model, data) if data is not None else None  # own heads too, also with lam=0
        if first is not None:
            classifiers.check(*first)
        return classifiers

    def _build_defaults(self, features: dict[str, torch.Tensor]) -> None:
        """`DefaultClassifier`s once the feature shapes are known, and their optimizer."""
        self.heads.update(default_classifiers(self._model[0], features))
        self.optimizer = make_optimizer(self.optimizer_name, self.heads.parameters(), self.lr, self.weight_decay)
        if getattr(self, "_pending_state", None) is not None:
            self.load_state_dict(self._pending_state)
            self._pending_state = None

    def check(self, features: dict[str, torch.Tensor], target: torch.Tensor) -> None:
        """Dry shape check of every f_m on one batch (no grad), naming the modality and the fix."""
        if not len(self.heads):
            self._build_defaults(features)
        self.checked = True
        fused = fused_output_layer(self._model[0]) if self.compares_directions else None
        with dry_run(self.heads, target.device):
            preds = self(features, size=self._label_size(target))
        for m, z in preds.items():
            fix = (f"make `modality_classifier({m!r})` (or classifiers_override[{m!r}]) end in an `out_layer` "
                   "shaped like the model's fused `out_layer`")
            layer = getattr(self.heads[m], "out_layer", None)
            if getattr(layer, "weight", None) is None:
                raise ConfigError(f"modality {m!r}: the classifier {type(self.heads[m]).__name__} has no "
                                  f"`out_layer` with a weight; CGGM compares it with the fused output layer; {fix}")
            expected = (len(target), self.task.num_outputs) + (tuple(target.shape[1:]) if self._label_size(target) else ())
            if tuple(z.shape[:len(expected)]) != expected:
                raise ConfigError(f"modality {m!r}: the classifier returns shape {tuple(z.shape)} on a batch of "
                                  f"{len(target)}, the task needs {expected}; {fix}")
            if fused is not None and layer.weight.shape != fused.weight.shape:
                raise ConfigError(f"modality {m!r}: the classifier's out_layer weight is {tuple(layer.weight.shape)}, "
                                  f"the fused output layer's is {tuple(fused.weight.shape)}; the direction term "
                                  f"compares the two, so they must match; {fix}, drop `modality_classifier` to get "
                                  "the default classifier, or set lam=0 (official variant)")

    def _label_size(self, target: torch.Tensor):
        """(H, W) of the labels for segmentation, where default classifiers are resized; else None."""
        return tuple(target.shape[-2:]) if getattr(self.task, "kind", None) == "segmentation" else None

    def forward(self, features: dict[str, torch.Tensor], size: tuple | None = None) -> dict[str, torch.Tensor]:
        """f_m(detached features[m]) for every m; `size`: (H, W) the default segmentation heads are resized to."""
        if not len(self.heads):
            self._build_defaults(features)
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type, enabled=False):  # small heads: full precision, no GradScaler
            preds = {m: self.heads[m](f.detach().float()) for m, f in features.items()}
        return {m: F.interpolate(z, size=size, mode="bilinear", align_corners=False)
                if size is not None and isinstance(self.heads[m], DefaultClassifier) and tuple(z.shape[-2:]) != size
                else z for m, z in preds.items()}

    def observe(self, features, target, metric=None, dtype: torch.dtype = torch.float32) -> dict:
        """Forward every f_m on detached features and backpropagate Σ_m loss_m into the heads only.

        Sets `self.eps` (ε_m, the per-batch metric, averaged over data-parallel ranks) and
        `self.delta` (Δε_m = ε_m^t − ε_m^{t−1}, with ε^0 = 0 and no reset between epochs), both (M,)
        tensors in `self.modalities` order and in `dtype` (float64 reproduces the released code's
        scikit-learn accuracies), and `self.last_preds`. Returns the trace scalars
        `acc_head/m` (the task's official per-batch metric), `loss_head/m`, `eps/m`, `delta/m` as
        device tensors: no host synchronisation.
        """
        if not self.checked:  # no batch at setup (the user's own loop): check before the first update
            self.check(features, target)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        preds = self(features, size=self._label_size(target))
        losses = {m: self.task.loss(z, target) for m, z in preds.items()}
        torch.stack(list(losses.values())).sum().backward()
        metric = metric or self.task.step_metric
        with torch.no_grad():
            official = {m: self.task.step_metric(z, target) for m, z in preds.items()}
            if metric is self.task.step_metric and dtype == torch.float32:
                eps = torch.stack(list(official.values()))  # already computed: no second pass
            else:  # float64 only where asked, so a task whose metric takes no dtype still works
                kwargs = {} if dtype == torch.float32 else {"dtype": dtype}
                eps = torch.stack([metric(z, target, **kwargs) for z in preds.values()])
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
        if not len(self.heads):  # default heads are built on the first batch; restore them then
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
