"""ReconBoost: boosting-like alternation of unimodal learners with a reconcilement term.

Hua, Xu, Bao, Jiang, Wang, Huang & Yang, "ReconBoost: Boosting Can Achieve Modality Reconcilement",
ICML 2024. Reference code: huacong/ReconBoost@14ab57a train.py:156-380 (`main`: defaults 57-77,
boosting phase 304-351 with the GA term at 349, rectification 371-372), models/dynamic_net.py
(`DynamicNet`), schedule.py (fixed round-robin); also GeWu-Lab/BalanceBenchmark@4c1482f
balancemm/trainer/ReconBoost_trainer.py.

Learner m is encoder m plus its own head: f_m(x) = head_m(φ_m(x_m)). The ensemble is
F(x) = β · Σ_{m ∈ added} f_m(x) with a learnable boost rate β. Training alternates stages; stage t
picks modality m = modalities[t mod M] (the reference's fixed schedule) and runs
1. boosting (`stage_epochs`): only f_m learns, with, per sample,
       L = (w₁ − w₂ · q(F_{−m}(x), y)) · ℓ(f_m(x), y) + α · ‖σ(f_m(x)) − σ(f_prev(x))‖²
   where F_{−m} is the ensemble without m (no gradient), q the task's confidence in the truth
   (softmax p_y for classification) and f_prev the previous stage's learner (the "GA" term);
   samples the rest of the ensemble already fits get less weight: the reconcilement. Then m joins
   (or stays in) the ensemble;
2. rectification (`rectify_epochs`): every learner and β learn from ℓ(F(x), y).
Stages are mapped onto the loop's steps: boosting takes round(stage_epochs · batches per epoch)
steps, rectification round(rectify_epochs · batches per epoch); the loop's optimizer steps whatever
received a gradient. `predict` is F over the added learners (all learners before any was added).

Schedule as released: 4 boosting + 4 rectification epochs per stage (`--epochs_per_stage`,
`--correct_epoch`); with a 10–30-epoch budget that visits each of two modalities only once or twice,
so short runs may set stage_epochs = rectify_epochs = 1 (our earlier default).

Options that differ from the released code (off by default):
- `ga_gradient`: let the GA term's gradient flow through f_m (the paper's intent). The released code
  detaches both sides of its MSE (train.py:349), so the term is logged but adds no gradient.

Deviations:
- one head per modality (the reference's `common_space=False` option; its default shares one head,
  which needs equal feature sizes) and the loop's optimizer for both phases (the reference builds
  a fresh SGD per phase, so momentum restarts each stage);
- ℓ is the task's per-sample loss and q its per-sample `score` (regression: exp(−|error|);
  segmentation: mean pixel probability of the true class); the reference's CE is averaged over the
  class dimension (a constant 1/C scale we drop);
- the empty ensemble predicts 0 (the reference uses a random constant c₀ broadcast to one column);
- β starts at 1 (reference) for classification/segmentation and at 1/M for regression, so that
  the sum of M unimodal regressors starts as their mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..models.base import Output
from .base import Strategy
from .classifiers import unimodal_heads


def reconcile_weights(ensemble_confidence: torch.Tensor, w1: float, w2: float) -> torch.Tensor:
    """Per-sample weight of the boosting loss: w₁ − w₂ · q, q the rest-of-ensemble's confidence in y."""
    return w1 - w2 * ensemble_confidence


def stage_at(step: int, boost_steps: int, rectify_steps: int, num_modalities: int) -> tuple[int, int, bool]:
    """(stage, modality index, boosting?) of global training step `step` (0-based)."""
    stage, offset = divmod(step, boost_steps + rectify_steps)
    return stage, stage % num_modalities, offset < boost_steps


def encode(model, inputs: dict) -> dict:
    return model.encode(inputs) if hasattr(model, "encode") else model(inputs).features


@dataclass
class ReconBoost(Strategy):
    w1: float = 5.0
    """w₁: weight of the learner's own task loss (reference `--weight1` 5.0)"""
    w2: float = 1.0
    """w₂: weight of the reconcilement with the rest of the ensemble (reference `--weight2` 1.0)"""
    alpha: float = 0.5
    """α: weight of the GA term towards the previous stage's learner (reference `--alpha` 0.5)"""
    stage_epochs: float = 4.0
    """length of each boosting phase in epochs (reference `--epochs_per_stage` 4)"""
    rectify_epochs: float = 4.0
    """length of each global rectification phase in epochs (reference `--correct_epoch` 4)"""
    ga_gradient: bool = False
    """let the GA term's gradient reach f_m; off: it is computed on detached predictions and adds no
    gradient, as the released code (train.py:349 detaches both sides)"""

    min_modalities = 2

    def __post_init__(self):
        for name in ("w1", "w2", "alpha"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ConfigError(f"reconboost: {name} must be a number >= 0, got {getattr(self, name)!r}")
        if self.w1 < self.w2:
            raise ConfigError(f"reconboost: w1 ({self.w1}) must be >= w2 ({self.w2}), or a sample the rest of the "
                              "ensemble fits would get a negative loss weight")
        if not isinstance(self.stage_epochs, (int, float)) or self.stage_epochs <= 0:
            raise ConfigError(f"reconboost: stage_epochs must be > 0, got {self.stage_epochs!r}")
        if not isinstance(self.rectify_epochs, (int, float)) or self.rectify_epochs < 0:
            raise ConfigError(f"reconboost: rectify_epochs must be >= 0, got {self.rectify_epochs!r}")

    def setup(self, model, data) -> None:
        super().setup(model, data)
        device = next(model.parameters()).device
        self.heads = nn.ModuleDict(unimodal_heads(model, data, "reconboost")).to(device)
        init = 1.0 / len(self.modalities) if self.task.kind == "regression" else 1.0
        self.boost_rate = nn.Parameter(torch.tensor(init, device=device))
        if not hasattr(data, "train"):
            raise ConfigError("reconboost needs the Data in setup(model, data): its stage lengths are counted in "
                              "epochs of data.train")
        per_epoch = max(1, len(data.train))
        self.boost_steps = max(1, round(self.stage_epochs * per_epoch))
        self.rectify_steps = round(self.rectify_epochs * per_epoch)
        self.step = 0          # global step: it fixes the stage, the modality and the phase
        self.added = []        # modalities whose learner has finished a boosting phase, in order
        self._stats = {}

    def parameters(self) -> list:
        return [*self.heads.parameters(), self.boost_rate]

    def ensemble(self, preds: dict, members) -> torch.Tensor:
        members = list(members)
        if not members:
            return torch.zeros_like(next(iter(preds.values())))
        return self.boost_rate * sum(preds[m] for m in members)

    def _members(self):
        return self.added or self.modalities

    def forward(self, model, batch, epoch: int) -> Output:
        self.heads.train(model.training)  # not submodules of the model: follow its mode
        features = encode(model, batch.inputs)
        preds = {m: self.heads[m](features[m]) for m in self.modalities}
        return Output(self.ensemble(preds, self._members()), features, preds)

    def predict(self, model, inputs) -> torch.Tensor:
        self.heads.train(model.training)
        features = encode(model, inputs)
        return self.ensemble({m: self.heads[m](features[m]) for m in self._members()}, self._members())

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        stage, index, boosting = stage_at(self.step, self.boost_steps, self.rectify_steps, len(self.modalities))
        m = self.modalities[index]
        preds = out.unimodal_logits
        self._stats = {"stage": torch.tensor(float(stage)), "boosting": torch.tensor(float(boosting)),
                       "boost_rate": self.boost_rate.detach().clone()}
        self._stats |= {f"coeff/{k}": torch.tensor(float(k == m or not boosting)) for k in self.modalities}
        if not boosting:  # m joined the ensemble at the end of its boosting phase
            return self.task.loss(self.ensemble(preds, self.added), batch.target)
        with torch.no_grad():
            rest = self.ensemble({k: p.detach() for k, p in preds.items()}, [k for k in self.added if k != m])
            weight = reconcile_weights(self.task.score(rest.float(), batch.target), self.w1, self.w2)
        own = self.task.per_sample_loss(preds[m].float(), batch.target)
        loss = (weight * own).mean()
        self._stats |= {f"weight/{m}": weight.mean(), f"loss_head/{m}": own.detach().mean()}
        if stage > 0 and self.alpha:
            prev = self.modalities[(index - 1) % len(self.modalities)]
            own_pred = preds[m] if self.ga_gradient else preds[m].detach()
            ga = (_probabilities(own_pred, self.task) - _probabilities(preds[prev].detach(), self.task)).pow(2).mean()
            loss = loss + self.alpha * ga
            self._stats["loss_ga"] = ga.detach()
        return loss

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        stats = super().after_backward(model, batch, out, epoch) | self._stats
        stage, index, boosting = stage_at(self.step, self.boost_steps, self.rectify_steps, len(self.modalities))
        self.step += 1
        next_stage, _, next_boosting = stage_at(self.step, self.boost_steps, self.rectify_steps, len(self.modalities))
        if boosting and (not next_boosting or next_stage != stage):  # end of a boosting phase: m joins F
            m = self.modalities[index]
            self.added = [k for k in self.added if k != m] + [m]
        return stats

    def state_dict(self) -> dict:
        return super().state_dict() | {"heads": self.heads.state_dict(), "boost_rate": self.boost_rate.detach().clone(),
                                       "step": self.step, "added": list(self.added)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.heads.load_state_dict(state["heads"])
        with torch.no_grad():
            self.boost_rate.copy_(state["boost_rate"])
        self.step, self.added = state["step"], list(state["added"])


def _probabilities(pred: torch.Tensor, task) -> torch.Tensor:
    """σ(f) of the GA term: class probabilities, or the prediction itself for regression."""
    return pred.float() if task.kind == "regression" else pred.float().softmax(1)
