"""CGGM: classifier-guided gradient modulation.

Guo, Jin, Chen & Zhao, "Classifier-guided Gradient Modulation for Enhanced Multimodal Learning",
NeurIPS 2024 (arXiv 2411.01409). Released code: zrguo/CGGM@21e428c, the `train()` bodies of
src/msatrain.py (MOSI, IEMOCAP), src/foodtrain.py (Food-101) and src/segtrain.py (BraTS), and
src/eval_metrics.py `cal_cos`. docs/methods.md derives the equations and lists every deviation.

Per step, with ε_m the per-batch metric of classifier f_m (fed detached features of modality m):
    Δε_m = ε_m^t − ε_m^{t−1}                                  (ε^0 = 0, never reset)
    B_m  = Σ_{k≠m} Δε_k / Σ_k Δε_k                             (Eq. 7 without ρ)
    ∇θ^{φ_m} L ← ρ · B_m · ∇θ^{φ_m} L                         (Eq. 8: magnitude)
    L_gm = (Σ_m |B_m| − Σ_m B_m · cos_m) / M,  L = L_task + λ · L_gm   (Eqs. 12–13: direction)

Variants (`variant`, `guard`):
- "official": the released method, step for step and in what it touches. ε is the released per-batch
  metric (sign accuracy for regression); B_m uses Σ Δε + 1e-8 as denominator (no guard: B can be
  huge or negative); cos_m compares the output-layer *weights* of the fused head and of f_m, and L_gm
  built at step t enters the loss at step t+1, so its gradient reaches only the fused output layer;
  scaling happens before clipping (the loop clips after `after_backward`). Three further choices
  default to the released code under "official" (each can be switched on its own):
    scaled="released"     rescale what the released code rescales: the transformer encoders of the
                          MOSI/IEMOCAP/Food models but not their input projections (msatrain.py:
                          119–122, foodtrain.py:125–129), and nothing at all on BraTS, whose name
                          filter matches no parameter (segtrain.py:106–110); see the models'
                          `released_scaled_parameters`. "encoder": every parameter of encoders[m].
    classifier_head="released"  the sequence models' f_m apply `proj1` twice (models/msamodel.py:
                          89–94); "two_layer": proj1 → ReLU → proj2 → ReLU. Models without such a
                          choice ignore it.
    precision="released"  ε and B in the released dtype: float64 for accuracies (scikit-learn's
                          `accuracy_score`), float32 for the BraTS Dice; "float32": always float32.
- "paper": the paper's equations, with the three corrections (scaled="encoder",
  classifier_head="two_layer", precision="float32"). ρ sits inside B (Eq. 7), so L_gm carries ρ; ε is
  the metric the paper names (−MAE for regression, accuracy or Dice otherwise); cos_m compares the
  output-layer *gradients* ∇_{W_F} L_task and ∇_{W_{f_m}} L_m of the same step, and L_gm is added in
  that step and differentiated through ∇_{W_F} L_task (double backward). Algorithm 1 read literally
  computes a gradient cosine after backward and adds it one step later: a constant that changes no
  gradient. The released code's lagged *weight* cosine is the form of that algorithm that acts.
- guard=True (either variant): B_m from the positive parts of the gains,
  B_m = Σ_{k≠m} Δε_k⁺ / Σ_k Δε_k⁺, and B_m = (M−1)/M (the value equal gains give) when no modality
  improved. B then lies in [0, 1]: finite and never sign-flipping. Chosen over clamping the
  official B because clamping keeps a near-zero denominator's arbitrary ratio, while a modality whose
  metric fell has made no progress and should get no share of the improvement.

Cost: the classifiers read detached features, so their forward, backward and step do not depend on
the main backward. With `overlap` (official variant; off by default until verified on a GPU, see
docs/performance.md) they run in a worker thread, on a side CUDA stream, while the main backward
runs; the encoders' gradients are scaled once both are done. Results are the same as without overlap
(same operations, same random draws, in the same order). Nothing in a step reads a device value on
the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..models.base import fused_output_layer, modality_parameters
from .base import Strategy
from .classifiers import cosines
from .coefficients import balance_coefficients, direction_loss, guarded_balance_coefficients
from .overlap import VERIFIED as OVERLAP_VERIFIED
from .overlap import Overlap

VARIANTS = ("official", "paper")
#: the three released choices and our corrections; None picks the first under "official", the second under "paper"
CHOICES = {"scaled": ("released", "encoder"), "classifier_head": ("released", "two_layer"),
           "precision": ("released", "float32")}


@dataclass
class CGGM(Strategy):
    rho: float = 1.3
    """ρ: overall scale of the modulated encoder gradients (Eq. 7–8)"""
    lam: float = 0.2
    """λ: weight of the direction term L_gm (Eq. 13); 0 gives magnitude-only CGGM"""
    variant: str = "official"
    """official (the released code) | paper (the paper's equations); see the module docstring"""
    guard: bool = False
    """keep every B_m finite and in [0, 1] (positive-part gains); off reproduces the released code"""
    magnitude: bool = True
    """scale encoder gradients by ρ·B_m; False gives direction-only CGGM (Table 6)"""
    warmup_epochs: int = 0
    """epochs during which the classifiers learn but nothing is modulated (0 as in the released code)"""
    classifiers_override: dict | None = field(default=None, repr=False)
    """your own classifiers f_m {modality: module with `.out_layer`}; default: model.modality_classifier(m),
    else a default head ending in an output layer shaped like the fused one (docs/your_model.md)"""
    scaled: str | None = None
    """which parameters ρ·B_m rescales: released (what the released code rescales; nothing on BraTS) |
    encoder (every parameter of encoders[m]). None: released under official, encoder under paper"""
    classifier_head: str | None = None
    """head of the sequence models' f_m: released (proj1 applied twice) | two_layer. None: per variant"""
    precision: str | None = None
    """dtype of ε and B: released (float64 accuracies, float32 Dice) | float32. None: per variant"""
    overlap: bool | None = None
    """run the classifiers concurrently with the main backward (worker thread; side stream on CUDA);
    None: off until `python -m cggmlib.bench.gpu_check` has verified it on a GPU (docs/performance.md;
    `overlap.VERIFIED`); True on CPU uses a second core. Official variant only"""

    min_modalities = 2

    def __post_init__(self):
        if not isinstance(self.rho, (int, float)) or self.rho < 0:
            raise ConfigError(f"cggm: rho (ρ) must be a number >= 0, got {self.rho!r}")
        if not isinstance(self.lam, (int, float)) or self.lam < 0:
            raise ConfigError(f"cggm: lam (λ) must be a number >= 0, got {self.lam!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"cggm: variant must be one of {VARIANTS}, got {self.variant!r} "
                              "(add guard=True for the guarded coefficients)")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ConfigError(f"cggm: warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")
        if self.overlap not in (None, True, False):
            raise ConfigError(f"cggm: overlap must be true, false or None (auto: on CUDA), got {self.overlap!r}")
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ConfigError(f"cggm: {name} must be one of {choices} (or None: {choices[0]} under the "
                                  f"official variant, {choices[1]} under paper), got {value!r}")
        self.resolved = {name: getattr(self, name) or choices[self.variant == "paper"]
                         for name, choices in CHOICES.items()}

    def uses_classifiers(self) -> bool:
        return True

    def setup(self, model, data) -> None:
        super().setup(model, data)  # builds and checks the classifiers (classifiers_override included)
        self.fused = fused_output_layer(model)
        self.encoder_params = {m: scaled_parameters(model, m, self.resolved["scaled"]) for m in self.modalities}
        released = self.resolved["precision"] == "released"
        self.dtype = getattr(self.task, "released_dtype", torch.float32) if released else torch.float32
        self.pending = None  # official: (B, vec W_fused (K,), W_f_m stacked (M, K)) of step t → L_gm at t + 1
        self._paper_stats, self._l_gm = None, None
        device = self.fused.weight.device
        on = self.overlap if self.overlap is not None else device.type == "cuda" and OVERLAP_VERIFIED
        self._overlap = Overlap(device) if on and self.variant == "official" else None

    def active(self, epoch: int) -> bool:
        return epoch >= self.warmup_epochs

    def _observe(self, features, target) -> tuple[dict, torch.Tensor]:
        """Train the classifiers on this batch; ε_m, Δε_m and the coefficients B_m (no ρ)."""
        metric = self.task.paper_metric if self.variant == "paper" else self.task.step_metric
        stats = self.classifiers.observe(features, target, metric=metric, dtype=self.dtype)
        delta = self.classifiers.delta
        coeff = guarded_balance_coefficients(delta) if self.guard else balance_coefficients(delta)
        return stats | {f"balance/{m}": b for m, b in zip(self.modalities, coeff)}, coeff

    def _classifier_step(self, features, target) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Official: f_m forward, backward and step on detached features; returns the stats, B_m and
        the (M, K) output-layer weights of the classifiers before their step (for cos_m)."""
        stats, coeff = self._observe(features, target)
        weights = self.classifiers.out_weights()
        self.classifiers.step()
        return stats, coeff, weights

    def forward(self, model, batch, epoch: int):
        out = model(batch.inputs)
        if self._overlap is not None:  # start the classifiers now; after_backward collects them
            self._overlap.submit(self._classifier_step, out.features, batch.target)
        return out

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        task_loss = self.task.loss(out.logits, batch.target)
        if not self.active(epoch):
            return task_loss
        if self.variant == "official":
            if self.pending is None or self.lam == 0:
                return task_loss
            coeff, fused_then, heads_then = self.pending
            w = self.fused.weight.flatten()
            # the value of step t with the gradient of W_fused: what the official code's clone() gives
            fused = w + (fused_then.to(w.dtype) - w).detach()
            self._l_gm = direction_loss(coeff, _cosines(fused, heads_then))
            return task_loss + self.lam * self._l_gm
        # paper: classifiers, coefficients and gradient cosines of this very step
        stats, coeff = self._observe(out.features, batch.target)
        coeff = self.rho * coeff  # Eq. 7: ρ inside B
        g_fused, = torch.autograd.grad(task_loss, self.fused.weight, create_graph=True)
        cos = _cosines(g_fused, [self.classifiers.out_weight(m).grad for m in self.modalities])
        self._l_gm = direction_loss(coeff, cos)
        self._paper_stats = (stats | {f"cos_grad/{m}": c.detach() for m, c in zip(self.modalities, cos)}, coeff)
        return task_loss + self.lam * self._l_gm if self.lam else task_loss

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        active = self.active(epoch)
        w = self.fused.weight
        if self.variant == "paper" and active:
            stats, scale = self._paper_stats
            stats |= {f"cos_weight/{m}": c for m, c in self.classifiers.weight_cosines(w).items()}
            self.classifiers.step()
        else:
            if self._overlap is not None:
                stats, coeff, heads = self._overlap.result()
            else:
                stats, coeff, heads = self._classifier_step(out.features, batch.target)
            scale = self.rho * coeff
            fused_now = w.detach().flatten().float().clone()
            stats |= {f"cos_weight/{m}": c for m, c in zip(self.modalities, cosines(fused_now, heads))}
            stats |= {f"cos_grad/{m}": c for m, c in self.classifiers.grad_cosines(w.grad).items()}
            if active and self.variant == "official" and self.lam:
                self.pending = (coeff.detach(), fused_now, heads)
        if active and self.magnitude:
            for m, k in zip(self.modalities, scale):  # Eq. 8: ∇θ^{φ_m} L ← ρ·B_m ∇θ^{φ_m} L
                grads = [p.grad for p in self.encoder_params[m] if p.grad is not None]
                if grads:  # ρ·B_m formed in B's dtype, then rounded to the gradients' (as `grad *= float`)
                    torch._foreach_mul_(grads, k.to(grads[0].dtype))
        applied = scale if active and self.magnitude else torch.ones_like(scale)
        stats |= {f"coeff/{m}": k for m, k in zip(self.modalities, applied)}
        if active and self.lam and self._l_gm is not None:
            stats["l_gm"] = self._l_gm.detach()
        self._l_gm = None
        return stats

    def state_dict(self) -> dict:
        return super().state_dict() | {"pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        pending = state["pending"]
        if pending is not None and isinstance(pending[2], list):  # checkpoints written before the stacked form
            pending = (pending[0], pending[1].flatten().float(), torch.stack([w.flatten().float() for w in pending[2]]))
        self.pending = pending


def _cosines(fused: torch.Tensor, others) -> torch.Tensor:
    """(M,) cos_m between the fused output layer and each classifier's (stacked (M, K) or a list),
    differentiable in `fused`; ConfigError when a classifier's layer has another size (where the logged
    `cosines` would give NaN)."""
    n = fused.numel()
    sizes = [others.shape[1]] * len(others) if torch.is_tensor(others) else [
        None if o is None else o.numel() for o in others]
    bad = next((k for k in sizes if k != n), False)
    if bad is not False:
        raise ConfigError(f"cggm: the direction term compares the fused output layer ({n} weights) with each "
                          f"classifier's output layer (got {bad}); they must have the same shape (or set lam=0)")
    return cosines(fused, others)


def scaled_parameters(model, modality: str, which: str) -> list:
    """The parameters whose gradients CGGM rescales by ρ·B_m for `modality`.

    which="released": `model.released_scaled_parameters(modality)` when the model defines it and it is
    not None (the paper's models: what the released code's name filters select), else as "encoder".
    which="encoder": every parameter of `model.encoders[modality]` that no other encoder shares (a
    projection shared by two modalities, as the released Food-101 model's, belongs to neither).
    """
    if which == "released":
        chosen = getattr(model, "released_scaled_parameters", lambda m: None)(modality)
        if chosen is not None:
            return list(chosen)
    return modality_parameters(model, modality)
