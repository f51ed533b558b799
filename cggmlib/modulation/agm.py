"""AGM: adaptive gradient modulation from Shapley-style mono-modal responses.

Li, Li, Chen & Wang, "Boosting Multi-modal Model Performance with Adaptive Gradient Modulation",
ICCV 2023. Reference code: Lingy12/AGM_ICCV2023@a24f2ce (a copy of the first author's repository)
run/MOSEI_main.py:14-164 (`train`: ratios 101-110, window 115, epochs counted from 1 at 324/336),
run/CREMAD_main.py:145-159 (the capped exponent), utils/config.py:74-76 (defaults); and
GeWu-Lab/BalanceBenchmark@4c1482f balancemm/trainer/AGM_trainer.py (`newGrad`,
`AGMTrainer.training_step`), the re-implementation for M modalities.

Schedule: the released window `modulation_starts <= epoch <= modulation_ends` with defaults [0, 20]
runs over epochs counted from 1, so it covers epochs 1..20, twenty epochs. Our loop counts from 0:
the same twenty epochs are 0..19, hence end_epoch = 19.

Per step, with f(S) the fused output when only the modalities in S are fed (the others' features
zeroed through `model.fuse`) and f(∅) := 0:
    φ_m = Σ_{S ⊆ M∖{m}} |S|!(M−|S|−1)!/M! · [f(S ∪ {m}) − f(S)]   (mono-modal response; Σ_m φ_m = f(M))
    s_m = mean_i ℓ(φ_m(x_i), y_i)                  (−log p_y, clipped at p = 1e-8, for classification)
    r_m = exp(M/(M−1) · (mean_k s_k − s_m))         (current competition ratio)
    r̂_m = the same with ŝ_m, the running mean of s_m over all previous steps (0 at the start)
    k_m = exp(α · min(r̂_m − r_m, cap)),   ∇θ^{φ_m} L ← k_m · ∇θ^{φ_m} L

Deviations (each marked where it happens):
- masking zeroes encoder *features* and reruns only the fusion module (the reference zeroes the
  *inputs* and reruns the whole network): cheaper, and a zero feature is what "absent" means to Ω;
- the sign of r_m follows the official two-modality code, exp(s_other − s_m) = exp(2(mean s − s_m)).
  BalanceBenchmark's M-modality trainer writes exp(M/(M−1)(s_m − mean s)), which for M = 2 flips the
  rule (it would suppress a modality whose loss rises);
- f(∅) := 0 as in the official 2- and 3-modality `Modality_*` modules (BalanceBenchmark drops the
  empty-set term); ℓ is the task's per-sample loss, so regression (L1) and segmentation (pixel CE)
  get the natural analogue of −log p_y;
- k_m scales every parameter gradient of encoder m in `after_backward` (the official code scales
  the gradient through φ_m with backward hooks; BalanceBenchmark scales encoder weights but not
  biases), so the loop's `grad_norm_mod/m` shows the modulation; the official extra clipping (when
  the fused layer's gradient exceeds ±1) is replaced by the loop's `grad_clip`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models.base import modality_parameters
from .base import Strategy

#: −log(1e-8): the official score clips p_y at 1e-8
MAX_SCORE = -math.log(1e-8)


def shapley_values(value, modalities: list[str]) -> dict[str, torch.Tensor]:
    """φ_m = Σ_{S⊆M∖{m}} |S|!(M−|S|−1)!/M! [v(S∪{m}) − v(S)] for a set function v (v(∅) := 0)."""
    n = len(modalities)
    cache: dict[frozenset, torch.Tensor | float] = {frozenset(): 0.0}

    def v(subset: frozenset):
        if subset not in cache:
            cache[subset] = value(subset)
        return cache[subset]

    phi = {}
    for m in modalities:
        others = [k for k in modalities if k != m]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for combo in itertools.combinations(others, size):
                s = frozenset(combo)
                total = total + weight * (v(s | {m}) - v(s))
        phi[m] = total
    return phi


def competition_ratio(score: torch.Tensor) -> torch.Tensor:
    """r_m = exp(M/(M−1) · (mean_k s_k − s_m)): above 1 for a modality whose loss is below average."""
    n = len(score)
    return torch.exp(n / (n - 1) * (score.mean() - score))


def agm_coefficients(score: torch.Tensor, ref_score: torch.Tensor, alpha: float, cap: float):
    """(k, r, r̂): k_m = exp(α · min(r̂_m − r_m, cap)) with r from `score`, r̂ from the running `ref_score`."""
    ratio, ref = competition_ratio(score), competition_ratio(ref_score)
    return torch.exp(alpha * (ref - ratio).clamp(max=cap)), ratio, ref


@dataclass
class AGM(Strategy):
    alpha: float = 1.0
    """α: strength of the modulation (official `--alpha`, default 1.0; BalanceBenchmark uses 0.1)"""
    cap: float = 10.0
    """upper bound of r̂_m − r_m in the exponent: min(·, 10) of the official CREMA-D step as quoted in
    BalanceBenchmark's AGM_trainer (its active code uses 7; the official MOSEI script has no cap)"""
    start_epoch: int = 0
    """first epoch with modulation, counted from 0 (official `--modulation_starts` 0 over epochs from 1:
    the first epoch)"""
    end_epoch: int = 19
    """last epoch with modulation, inclusive, counted from 0 (official `--modulation_ends` 20 over epochs
    counted from 1: twenty epochs, 0..19 here)"""

    min_modalities = 2

    def __post_init__(self):
        if not isinstance(self.alpha, (int, float)) or self.alpha < 0:
            raise ConfigError(f"agm: alpha (α) must be a number >= 0, got {self.alpha!r}")
        if not isinstance(self.cap, (int, float)) or self.cap <= 0:
            raise ConfigError(f"agm: cap must be a number > 0, got {self.cap!r}")
        if not (isinstance(self.start_epoch, int) and isinstance(self.end_epoch, int)) or self.start_epoch < 0:
            raise ConfigError(f"agm: start_epoch and end_epoch must be integers >= 0, "
                              f"got {self.start_epoch!r}, {self.end_epoch!r}")

    def setup(self, model, data) -> None:
        super().setup(model, data)
        if not hasattr(model, "fuse"):
            raise ConfigError(f"agm needs model.fuse(features) to mask modalities; {type(model).__name__} has "
                              "none (subclass cggmlib.models.MultimodalModel)")
        self.ref_score = None  # ŝ_m: running mean of s_m over all previous steps (zeros before the first)
        self.steps_seen = 0
        self._coeff = None

    def mono_responses(self, model, features: dict, fused: torch.Tensor) -> dict[str, torch.Tensor]:
        """φ_m for every modality; masked passes in eval mode without gradients, as the reference."""
        full = frozenset(self.modalities)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                feats = {m: f.detach() for m, f in features.items()}

                def value(subset):
                    if subset == full:
                        return fused.detach()
                    return model.fuse({m: f if m in subset else torch.zeros_like(f) for m, f in feats.items()})

                return shapley_values(value, self.modalities)
        finally:
            model.train(was_training)

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        phi = self.mono_responses(model, out.features, out.logits)
        with torch.no_grad():
            score = torch.stack([self.task.per_sample_loss(phi[m].float(), batch.target).clamp(max=MAX_SCORE).mean()
                                 for m in self.modalities])
            ref = torch.zeros_like(score) if self.ref_score is None else self.ref_score
            coeff, ratio, ref_ratio = agm_coefficients(score, ref, self.alpha, self.cap)
            self.steps_seen += 1  # ŝ ← ŝ·(n−1)/n + s/n, after the coefficient used the old ŝ (official order)
            self.ref_score = ref + (score - ref) / self.steps_seen
        self._coeff = (coeff, score, ratio, ref_ratio)
        return self.task.loss(out.logits, batch.target)

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        stats = super().after_backward(model, batch, out, epoch)
        coeff, score, ratio, ref_ratio = self._coeff
        active = self.start_epoch <= epoch <= self.end_epoch
        applied = coeff if active else torch.ones_like(coeff)
        if active:
            for m, k in zip(self.modalities, coeff):
                for p in modality_parameters(model, m):
                    if p.grad is not None:
                        p.grad.mul_(k.to(p.grad.dtype))
        for i, m in enumerate(self.modalities):
            stats |= {f"coeff/{m}": applied[i], f"score/{m}": score[i], f"ratio/{m}": ratio[i],
                      f"ratio_ref/{m}": ref_ratio[i]}
        return stats

    def state_dict(self) -> dict:
        return super().state_dict() | {"ref_score": self.ref_score, "steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ref_score, self.steps_seen = state["ref_score"], state["steps_seen"]
