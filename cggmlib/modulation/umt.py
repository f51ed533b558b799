"""UMT: uni-modal teacher, distilling each encoder's features towards a frozen unimodal model's.

Du, Teng, Wang, Yang, Li, Gao, Chen, Zhao & Wei, "On Uni-Modal Feature Learning in Supervised
Multi-Modal Learning", ICML 2023. Reference code: no release by the authors found (searched the stored
GitHub index and code search for the paper title, "UMT", "uni-modal teacher"); the re-implementation
GeWu-Lab/BalanceBenchmark@4c1482f balancemm/trainer/UMT_trainer.py:130-148 (`training_step`) with
configs/trainer_config.yaml:62-66.

    L = L_task(ŷ, y) + α · Σ_m MSE(φ_m(x^m), φ̂_m(x^m))
where φ̂_m is the encoder of a unimodal model of modality m, trained first with `unimodal` and
frozen (see `teachers.py`: trained through the same loop, cached under `teacher_dir`).

Deviations: the teachers are copies of this model's own encoders trained by `Unimodal` for
`teacher_epochs` epochs of this dataset's `teacher_preset` (the reference loads the newest checkpoint
of its own `unimodalTrainer` runs); α defaults to 1, where BalanceBenchmark weights the MSE by its
`scaling` = 10 (its `alpha: 1` is read by nothing in the UMT trainer); distillation is active in every
epoch, where BalanceBenchmark applies it in epochs 0..80 (`modulation_starts`/`modulation_ends`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Strategy
from .teachers import unimodal_teachers, validate_teacher_fields


@dataclass
class UMT(Strategy):
    alpha: float = 1.0
    """α: weight of the feature-distillation MSE (BalanceBenchmark `alpha`)"""
    teacher_epochs: int | None = None
    """epochs of each unimodal teacher run (None: the dataset preset's epochs)"""
    teacher_seed: int = 0
    """seed of the teacher runs (part of the cache key)"""
    teacher_preset: str = "smoke"
    """training preset of the teacher runs: smoke | paper (use the preset of your main run)"""
    teacher_dir: str | None = None
    """cache folder for the teachers (default results/.cache/teachers)"""

    min_modalities = 1

    def __post_init__(self):
        if not isinstance(self.alpha, (int, float)) or self.alpha < 0:
            raise ConfigError(f"umt: alpha (α) must be a number >= 0, got {self.alpha!r}")
        validate_teacher_fields("umt", self.teacher_epochs, self.teacher_seed, self.teacher_preset, self.teacher_dir)

    def setup(self, model, data) -> None:
        super().setup(model, data)
        self.teachers = unimodal_teachers(model, data, epochs=self.teacher_epochs, seed=self.teacher_seed,
                                          preset=self.teacher_preset, cache_dir=self.teacher_dir,
                                          max_steps=self.step_limit)
        self._stats = {}

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        loss = self.task.loss(out.logits, batch.target)
        distill = {}
        for m in self.modalities:
            target = self.teachers[m].features(batch.inputs[m])
            distill[m] = F.mse_loss(out.features[m].float(), target.float())
        self._stats = {f"distill/{m}": d.detach() for m, d in distill.items()}
        return loss + self.alpha * torch.stack(list(distill.values())).sum()

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        return super().after_backward(model, batch, out, epoch) | self._stats

    def state_dict(self) -> dict:
        return super().state_dict() | {"teachers": {m: t.state_dict() for m, t in self.teachers.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for m, t in self.teachers.items():
            t.load_state_dict(state["teachers"][m])
