"""Unimodal teachers for UMT and UME: one `unimodal` run per modality, trained once and cached.

Du, Teng, Wang, Yang, Li, Gao, Chen, Zhao & Wei, "On Uni-Modal Feature Learning in Supervised
Multi-Modal Learning", ICML 2023. Reference code: GeWu-Lab/BalanceBenchmark@4c1482f
balancemm/trainer/UMT_trainer.py (loads the newest `unimodalTrainer_<m>` checkpoint per modality).

Teacher m is a deep copy of the multimodal model trained with `Unimodal(modality=m)` through the one
loop (`cggmlib.train`), keeping encoder m and the head of the validation-selected epoch. Its file is
`<cache>/<dataset>-<key>/<m>.pt` (default cache `results/.cache/teachers`), written atomically; `key`
hashes what the teacher depends on: the model's architecture (repr and parameter shapes), the data
(name, input sizes, task, info, number of training batches, a fingerprint of the first validation
batch) and the teacher settings (epochs, seed, preset). The initial weights are not in the key:
every run of the same configuration reuses the same teachers, whatever its seed (as the reference
reuses its unimodal checkpoints); set `teacher_seed` or `teacher_dir` to keep them apart.

Data whose name is not a registered dataset is trained with the `custom` settings of `Config`.
Training a teacher saves and restores the global random state, so a run that trains its teachers
and one that loads them from the cache continue identically.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ..config import CUSTOM, Config
from ..data import DATASETS
from ..errors import ConfigError
from ..files import atomic_torch_save
from ..presets import PRESETS
from ..train import train
from ..training.checkpoint import rng_state, set_rng_state
from .classifiers import unimodal_heads
from .unimodal import Unimodal

DEFAULT_CACHE = Path("results") / ".cache" / "teachers"

#: modality -> number of teachers trained (not loaded) in this process; tests use it to see cache hits
TRAINED: Counter = Counter()


class Teacher(nn.Module):
    """A frozen unimodal model: `encoder` (a copy of encoder m) and `head`; ŷ = head(encoder(x^m))."""

    def __init__(self, modality: str, encoder: nn.Module, head: nn.Module, metrics: dict | None = None):
        super().__init__()
        self.modality, self.encoder, self.head, self.metrics = modality, encoder, head, metrics or {}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # always in eval mode: dropout off, batch-norm statistics frozen

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class _TeacherRun(Unimodal):
    """Unimodal training that also keeps the head at the end of every epoch: the loop restores the
    model's weights of the validation-selected epoch, not the strategy's, so the matching head is
    picked from these snapshots (`on_epoch_start(e)` sees the head as epoch e − 1 left it)."""

    def on_epoch_start(self, model, data, epoch: int) -> dict:
        if epoch > 0:
            self.snapshots[epoch - 1] = copy.deepcopy(self.head.state_dict())
        return super().on_epoch_start(model, data, epoch)

    def setup(self, model, data) -> None:
        super().setup(model, data)
        self.snapshots = {}


def teacher_key(model, data, **settings) -> str:
    """12 hex digits of SHA-256 over the model architecture, the data and the teacher settings."""
    h = hashlib.sha256()
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    info = {k: v for k, v in (getattr(data, "info", None) or {}).items()}
    h.update(json.dumps({"model": [type(model).__name__, repr(model), shapes], "data": data.name,
                         "input_dims": data.input_dims, "task": repr(data.task), "info": info,
                         "train_batches": len(data.train), "settings": settings},
                        sort_keys=True, default=str).encode())
    first = next(iter(data.val))
    for m in sorted(first.inputs):
        h.update(first.inputs[m].detach().cpu().contiguous().numpy().tobytes())
    h.update(first.target.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def teacher_folder(model, data, cache_dir, **settings) -> Path:
    return Path(cache_dir or DEFAULT_CACHE) / f"{data.name}-{teacher_key(model, data, **settings)}"


def train_teacher(model, data, modality: str, *, epochs: int | None, seed: int, preset: str,
                  max_steps: int = 0) -> dict:
    """Train a copy of `model` on `modality` alone; return {encoder, head, metrics, best_epoch} states.
    `max_steps` > 0 (a dry run): one epoch of that many steps, one evaluation batch per split."""
    device = str(next(model.parameters()).device)
    overrides = {"epochs": epochs} if epochs is not None else {}
    if max_steps:
        overrides = {"epochs": 1, "max_steps": max_steps, "max_eval_batches": 1}
    dataset = data.name if data.name in DATASETS else CUSTOM  # your own data: the `custom` training settings
    cfg = Config(dataset=dataset, strategy="unimodal", preset=preset, seed=seed, device=device, **overrides)
    state = rng_state()
    try:
        copy_ = copy.deepcopy(model)
        run = _TeacherRun(modality=modality)
        result = train(copy_, run, data, cfg, progress=False)
    finally:
        set_rng_state(state)
    TRAINED[modality] += 1
    best = result.best_epoch if result.best_epoch >= 0 else cfg.epochs - 1
    head = run.snapshots.get(best, run.head.state_dict())
    return {"encoder": copy_.encoders[modality].state_dict(), "head": head, "metrics": result.metrics,
            "best_epoch": best, "settings": {"epochs": cfg.epochs, "seed": seed, "preset": preset}}


def unimodal_teachers(model, data, *, epochs: int | None = None, seed: int = 0, preset: str = "smoke",
                      cache_dir=None, max_steps: int = 0) -> dict[str, Teacher]:
    """{m: Teacher} for every modality of `model`, loaded from the cache or trained and cached.
    `max_steps` > 0 (a dry run, the strategy's `step_limit`): teachers of a few steps, cached apart."""
    if not hasattr(data, "train"):
        raise ConfigError("umt/ume need the Data in setup(model, data): their unimodal teachers are trained on "
                          "data.train and selected on data.val")
    dry = {"max_steps": max_steps} if max_steps else {}  # real runs keep their cache keys
    folder = teacher_folder(model, data, cache_dir, epochs=epochs, seed=seed, preset=preset, **dry)
    device = next(model.parameters()).device
    teachers = {}
    for m in model.encoders:
        path = folder / f"{m}.pt"
        if path.exists():
            state = torch.load(path, map_location=device, weights_only=False)
        else:
            state = train_teacher(model, data, m, epochs=epochs, seed=seed, preset=preset, max_steps=max_steps)
            atomic_torch_save(state, path)
        encoder, head = copy.deepcopy(model.encoders[m]), unimodal_heads(model, data, "teachers", [m])[m]
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        teachers[m] = Teacher(m, encoder, head, state.get("metrics")).to(device)
    return teachers


def validate_teacher_fields(name: str, epochs, seed, preset, cache_dir) -> None:
    """ConfigError naming the field to change, for the teacher options UMT and UME share."""
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"{name}: teacher_epochs must be an integer >= 1 or None (the preset's), got {epochs!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{name}: teacher_seed must be an integer, got {seed!r}")
    if preset not in PRESETS:
        raise ConfigError(f"{name}: teacher_preset must be one of {list(PRESETS)}, got {preset!r}")
    if cache_dir is not None and not isinstance(cache_dir, (str, Path)):
        raise ConfigError(f"{name}: teacher_dir must be a folder path or None, got {cache_dir!r}")
