"""Greedy: balanced multimodal learning against the greedy learner, by re-balancing steps.

Wu, Jastrzębski, Cho & Geras, "Characterizing and Overcoming the Greedy Nature of Learning in
Multi-modal Deep Neural Networks", ICML 2022 (arXiv 2202.05306). Reference code:
nyukat/greedy_multimodal_learning@a190e03 src/callbacks.py:174-267 (`Bias_Mitigation_Strong`: the
decision 240-263, the unlock 265-267), src/framework.py:293 (epochs counted from 1),
configs/training_guided.gin:14-16 (defaults), src/balanced_mmtm.py;
GeWu-Lab/BalanceBenchmark@4c1482f balancemm/trainer/Greedy_trainer.py.

The original measures the *conditional learning speed* of each modality, the accumulated
Σ‖∇W‖²/‖W‖² of its cross-modal MMTM "bypass" parameters over its own branch, and when the two
modalities' log-ratios differ by more than α it runs `window` re-balancing steps in which the MMTM
input of the slower ("caring") modality is its running average, so that branch learns without
cross-modal help. Our models have no MMTM bypass, so both parts take their natural extension:
- imbalance: the paper's *conditional utilisation rate* (its Eq. 2), measured directly by removing a
  modality in the fusion module (its features set to zero), with `task.score` in place of accuracy:
      u_m = (S(all) − S(all but m)) / S(all),   ū_m = mean of u_m over the measured steps so far,
      d = max_m ū_m − min_m ū_m,   caring modality c = argmin_m ū_m (the least used one);
  S is the batch mean score, computed in eval mode without gradient on the step's detached features;
  for M = 2, d = |u(m_1|m_0) − u(m_0|m_1)|, the paper's d_util;
- re-balancing step for c: the fusion module sees every other modality's features replaced by their
  detached batch mean, so the prediction's sample-specific information comes from c alone and the loss
  trains encoder c (and the fusion module) to carry it; the other encoders get no gradient in it.
Schedule as the reference callback: measure and decide only in normal steps from `start_epoch` on; if
d > α, the next `window` steps re-balance for c, then one normal step measures again. Before
`start_epoch` ū is accumulated but nothing is re-balanced. ū accumulates from the first step, as the
reference accumulates its speeds.

Defaults: α = 0.01 (reference `epsilon`), window = 5 (`curation_windowsize`), from
configs/training_guided.gin; start_epoch = 1: the reference's `starting_epoch = 2` counts epochs from 1
(framework.py:293, `range(1, epochs+1)`), so re-balancing unlocks in the second epoch, which is epoch 1
in our loop's numbering from 0. α thresholds a difference of utilisation rates here, a difference of
log10 speed ratios there: tune it per dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models.base import Output
from .base import Strategy


@torch.no_grad()
def utilisation_rates(model, features: dict[str, torch.Tensor], target, task) -> torch.Tensor:
    """u_m = (S(all) − S(all but m)) / S(all) for every modality, S the mean `task.score`; (M,)."""
    was_training = model.training
    model.eval()
    try:
        full = task.score(model.fuse(features).float(), target).mean()
        without = [task.score(model.fuse({k: torch.zeros_like(f) if k == m else f for k, f in features.items()})
                              .float(), target).mean() for m in features]
    finally:
        model.train(was_training)
    return (full - torch.stack(without)) / full.clamp(min=1e-12)


def caring_modality(mean_util: torch.Tensor, alpha: float) -> int | None:
    """Index of the least utilised modality when max ū − min ū > α, else None."""
    return int(mean_util.argmin()) if float(mean_util.max() - mean_util.min()) > alpha else None


def mean_replaced(features: dict[str, torch.Tensor], keep: str) -> dict[str, torch.Tensor]:
    """Every modality except `keep` replaced by its detached batch mean (same shape)."""
    return {m: f if m == keep else f.detach().mean(0, keepdim=True).expand_as(f) for m, f in features.items()}


@dataclass
class Greedy(Strategy):
    """Re-balancing steps for the least utilised modality whenever the utilisation gap exceeds α."""

    alpha: float = 0.01
    """α (reference `epsilon`): the utilisation gap max ū − min ū that triggers re-balancing"""
    window: int = 5
    """re-balancing steps per trigger (reference `curation_windowsize`)"""
    start_epoch: int = 1
    """first epoch (counted from 0, as the loop) in which re-balancing may start; 1 is the reference's
    `starting_epoch = 2` over epochs counted from 1, i.e. the second epoch"""

    min_modalities = 2

    def __post_init__(self):
        if not isinstance(self.alpha, (int, float)) or self.alpha < 0:
            raise ConfigError(f"greedy: alpha (α) must be a number >= 0, got {self.alpha!r}")
        for f in ("window", "start_epoch"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < (1 if f == "window" else 0):
                raise ConfigError(f"greedy: {f} must be an integer >= {1 if f == 'window' else 0}, got {v!r}")

    def setup(self, model, data) -> None:
        super().setup(model, data)
        if not hasattr(model, "fuse"):
            raise ConfigError(f"greedy: {type(model).__name__} has no `fuse(features)`; the utilisation rates and "
                              "re-balancing steps feed the fusion module (subclass cggmlib.models.MultimodalModel)")
        self.util_sum = torch.zeros(len(self.modalities))  # Σ u_m over the measured steps
        self.measured = 0
        self.caring = None  # modality being re-balanced, or None for normal steps
        self.steps_left = 0

    def forward(self, model, batch, epoch: int) -> Output:
        features = model.encode(batch.inputs)
        if self.caring is None:
            return Output(model.fuse(features), features)
        return Output(model.fuse(mean_replaced(features, self.caring)), features)

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        stats = super().after_backward(model, batch, out, epoch)
        stats |= {f"caring/{m}": float(m == self.caring) for m in self.modalities}
        stats["rebalancing"] = float(self.caring is not None)
        if self.caring is not None:  # a re-balancing step: count it down, measure nothing
            self.steps_left -= 1
            if self.steps_left == 0:
                self.caring = None
        else:
            features = {m: f.detach().float() for m, f in out.features.items()}
            util = utilisation_rates(model, features, batch.target, self.task)
            self.util_sum = self.util_sum.to(util.device) + util
            self.measured += 1
            stats |= {f"util_step/{m}": u for m, u in zip(self.modalities, util)}
            index = caring_modality(self.util_sum / self.measured, self.alpha) if epoch >= self.start_epoch else None
            if index is not None:
                self.caring, self.steps_left = self.modalities[index], self.window
        mean_util = self.util_sum / max(self.measured, 1)
        stats["d_util"] = mean_util.max() - mean_util.min()
        return stats | {f"util/{m}": u for m, u in zip(self.modalities, mean_util)}

    def state_dict(self) -> dict:
        return super().state_dict() | {"util_sum": self.util_sum, "measured": self.measured,
                                       "caring": self.caring, "steps_left": self.steps_left}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.util_sum, self.measured = state["util_sum"], state["measured"]
        self.caring, self.steps_left = state["caring"], state["steps_left"]
