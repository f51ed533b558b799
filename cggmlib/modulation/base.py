"""Strategy: the hooks of the one training loop. The base class is plain joint training.

Hooks, in the order the loop calls them (see cggmlib/train.py):
    setup(model, data)                       once: build auxiliary modules, optimizers, state
    on_epoch_start(model, data, epoch)       per epoch: e.g. prototypes, loss weights
    forward(model, batch, epoch) -> Output   per step: the model call (MRD drops inputs here)
    loss(model, batch, out, epoch) -> Tensor the scalar to backpropagate
    after_backward(model, batch, out, epoch) edit gradients between backward() and optimizer.step()
and, at evaluation, `predict(model, inputs)`. Per-step hooks return dicts of scalars for the trace.

With `observe=True` every strategy also trains the per-modality CGGM classifiers passively on
detached features (never applied), so the same figures can compare joint training and CGGM.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..models.base import Output, check_encoders, fused_output_layer
from .classifiers import ModalityClassifiers
from .coefficients import balance_coefficients


@dataclass
class Strategy:
    """Joint training: the task loss, no modulation. Subclasses override only what they change."""

    observe: bool = False
    """train the per-modality CGGM classifiers on detached features and log them, without applying"""
    head_lr: float = 5e-4
    """learning rate of the per-modality classifiers (official `cls_lr`)"""
    head_optimizer: str = "adam"
    """optimizer of the per-modality classifiers: adam | adamw | sgd"""
    head_weight_decay: float = 0.0

    #: smallest number of modalities the strategy is defined for
    min_modalities = 1

    def setup(self, model, data) -> None:
        """Once, before training: build auxiliary modules, optimizers and state.

        `data` is a `Data`, or just its task (e.g. `cg.tasks.Classification(4)`) when the strategy's
        hooks are called from your own training loop.
        """
        self.task = getattr(data, "task", data)
        self.modalities = check_encoders(model, self.min_modalities)
        self.classifiers = None
        if self.uses_classifiers():  # built, and shape-checked on the first training batch, here
            heads = getattr(self, "classifiers_override", None)
            self.classifiers = ModalityClassifiers.for_strategy(self, model, heads=heads, data=data)

    def uses_classifiers(self) -> bool:
        return self.observe

    def on_epoch_start(self, model, data, epoch: int) -> dict:
        return {}

    def forward(self, model, batch, epoch: int) -> Output:
        return model(batch.inputs)

    def loss(self, model, batch, out, epoch: int) -> torch.Tensor:
        return self.task.loss(out.logits, batch.target)

    def after_backward(self, model, batch, out, epoch: int) -> dict:
        """Edit gradients in place; the base class only lets the observing classifiers learn."""
        if self.classifiers is None:
            return {}
        stats = self.classifiers.observe(out.features, batch.target)
        stats |= self.classifiers.direction_stats(fused_output_layer(model))
        # what the official CGGM would apply here (logged, never applied): B_m without ρ
        stats |= {f"balance/{m}": b for m, b in zip(self.modalities, balance_coefficients(self.classifiers.delta))}
        stats |= {f"coeff/{m}": torch.ones(()) for m in self.modalities}
        self.classifiers.step()
        return stats

    def predict(self, model, inputs) -> torch.Tensor:
        """The prediction used at evaluation (the fused output; classifiers are dropped)."""
        return model(inputs).logits

    def parameters(self) -> list:
        """Extra parameters trained by the loop's optimizer (e.g. a unimodal head); none here."""
        return []

    def hparams(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    #: dry runs only (Config.max_steps, set by `train`): batches a strategy's own passes over a split may
    #: take (G-Blending's estimation copies, which also train one epoch instead of super_epoch, and its
    #: loss estimates; MSLR's branch losses); 0: all, as in every real run
    step_limit = 0

    def state_dict(self) -> dict:
        """Everything that crosses steps, for checkpoints; subclasses add their own state."""
        return {"classifiers": self.classifiers.state_dict() if self.classifiers is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.classifiers is not None and state.get("classifiers") is not None:
            self.classifiers.load_state_dict(state["classifiers"])
