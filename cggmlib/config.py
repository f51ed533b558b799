"""Config: one frozen record of everything a training run depends on.

Fields left as None are filled from the dataset's preset (cggmlib.presets) when the Config is built,
so a displayed or saved Config always shows the values actually used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import DATASETS
from .errors import ConfigError
from .models import model_options
from .modulation import STRATEGIES, strategy_class, strategy_defaults
from .options import check_options, data_options, dataclass_options
from .presets import PRESETS, train_kwargs

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "plateau", "cosine")
AMP_MODES = ("off", "auto", "bf16", "fp16")
NONFINITE = ("raise", "skip")
LR_WARMUPS = ("linspace", "exclusive")  # cggmlib.training.optim.CosineWarmup
#: dataset name for your own data: cg.train(model, strategy, my_data, Config(dataset="custom", ...))
CUSTOM = "custom"
CUSTOM_TRAIN = dict(batch_size=64, epochs=10, optimizer="adam", lr=1e-3, weight_decay=0.0, grad_clip=0.8,
                    scheduler="none")


@dataclass(frozen=True)
class Config:
    dataset: str = "synthetic"
    """key in cggmlib.data.DATASETS: synthetic | mfeat | mosi | iemocap | food101 | brats2021"""
    strategy: str = "joint"
    """key in cggmlib.modulation.STRATEGIES, e.g. joint | cggm | ogm"""
    strategy_kwargs: dict = field(default_factory=dict)
    """strategy hyperparameters, e.g. {"rho": 1.3, "lam": 0.2}; the preset fills the rest"""
    preset: str = "smoke"
    """hyperparameter preset: smoke (small, CPU) | paper (Table 7 as in the official code)"""
    data_root: str = "data"
    """folder holding <dataset>/ in its publishers' layout"""
    data_kwargs: dict = field(default_factory=dict)
    """dataset options, e.g. {"fold": 3} for IEMOCAP or {"num_modalities": 4} for synthetic"""
    model_kwargs: dict = field(default_factory=dict)
    """overrides of the preset's model size and options, e.g. {"text_projection": "own"} for Food-101"""
    task_kwargs: dict = field(default_factory=dict)
    """options of the dataset's task, e.g. {"smooth_numerator": True} for the BraTS soft Dice"""
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    """adam | adamw | sgd (momentum 0.9) for the model; the strategy owns its classifiers' optimizer"""
    lr: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    """max global gradient norm, applied after modulation as in the official code; 0 turns it off"""
    scheduler: str | None = None
    """none | plateau (ReduceLROnPlateau on val loss, x0.1, patience 10) | cosine (per step, warm-up)"""
    warmup_epochs: int | None = None
    """linear learning-rate warm-up of the cosine schedule (BraTS); not a CGGM warm-up"""
    lr_warmup: str = "linspace"
    """how that warm-up ends: linspace (released: base rate at the last warm-up step) | exclusive (one step later)"""
    seed: int = 0
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda | cuda:N"""
    amp: str = "off"
    """mixed precision: off | auto (bf16 where supported, else fp16) | bf16 | fp16 (with GradScaler)"""
    nonfinite: str = "raise"
    """a non-finite loss or gradient: raise (stop with a message) | skip (drop that step, count it)"""
    checkpoint_every: int = 0
    """also checkpoint every N steps (0: only at the end of each epoch)"""
    max_steps: int = 0
    """dry runs only (`cggm reproduce --profile dryrun`): stop each epoch after this many optimisation
    steps; 0 (every real run): the whole epoch. Part of the configuration key, so a dry-run folder is never
    taken for a real run"""
    max_eval_batches: int = 0
    """dry runs only: evaluate validation and test on this many batches; 0 (every real run): all of them"""

    def __post_init__(self):
        if self.dataset not in DATASETS and self.dataset != CUSTOM:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose from {sorted(DATASETS)}, or "
                              f"{CUSTOM!r} for your own data passed to cg.train")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose from {sorted(STRATEGIES)}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose from {list(PRESETS)}")
        for name in ("strategy_kwargs", "data_kwargs", "model_kwargs", "task_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        self._check_options()
        preset = CUSTOM_TRAIN if self.dataset == CUSTOM else train_kwargs(self.dataset, self.preset)
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                object.__setattr__(self, f.name, preset.get(f.name, 0 if f.name == "warmup_epochs" else None))
        defaults = strategy_defaults(self.strategy, self.dataset, self.preset)
        if "teacher_seed" in {f.name for f in dataclasses.fields(strategy_class(self.strategy))}:
            defaults["teacher_seed"] = self.seed  # UMT/UME: each seed its own teachers, so seeds vary
        object.__setattr__(self, "strategy_kwargs", defaults | dict(self.strategy_kwargs))
        object.__setattr__(self, "device", resolve_device(self.device))
        self._validate()

    def _check_options(self):
        """Strategy, data and model options: known names, declared types (cggmlib/options.py)."""
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("strategy_kwargs", check_options(self.strategy_kwargs, dataclass_options(strategy_class(self.strategy)),
                                              f"strategy {self.strategy!r} option"))
        if self.dataset != CUSTOM:
            set_("data_kwargs", check_options(self.data_kwargs, data_options(self.dataset),
                                              f"{self.dataset} data option", sizes=True))
            set_("model_kwargs", check_options(self.model_kwargs, model_options(self.dataset),
                                               f"{self.dataset} model option", sizes=True))

    def _validate(self):
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)

        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        need(isinstance(self.lr, (int, float)) and self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        need(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0,
             f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0,
             f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip!r}")
        need(self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        need(isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0,
             f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")
        need(self.lr_warmup in LR_WARMUPS, f"lr_warmup must be one of {LR_WARMUPS}, got {self.lr_warmup!r}")
        need(isinstance(self.seed, int) and not isinstance(self.seed, bool), f"seed must be an integer, got {self.seed!r}")
        need(self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        need(self.nonfinite in NONFINITE, f"nonfinite must be one of {NONFINITE}, got {self.nonfinite!r}")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
             f"checkpoint_every must be an integer >= 0, got {self.checkpoint_every!r}")
        for name in ("max_steps", "max_eval_batches"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                 f"{name} must be an integer >= 0 (0: no limit, as in every real run), got {value!r}")

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (presets are re-applied only to fields set to None)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self, ignore: tuple = ()) -> str:
        """A short hash of the settings that change results (not the device or data root).

        `ignore`: further fields left out, e.g. ("epochs",) when a resumed run may train longer.
        `max_steps` and `max_eval_batches` count only when set (dry runs), so every real run keeps the
        key it had before they existed.
        """
        d = keyed(self.to_dict(), ignore)
        for k in ("max_steps", "max_eval_batches"):
            if not d.get(k):
                d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown Config fields {unknown}; known: {sorted(known)}")
        return cls(**d)


#: fields that do not change results, so not part of Config.key()
UNKEYED = ("device", "data_root", "checkpoint_every")


def keyed(d: dict, ignore: tuple = ()) -> dict:
    return {k: v for k, v in d.items() if k not in UNKEYED + tuple(ignore)}


def config_diff(old: dict, new: dict, ignore: tuple = ()) -> list[str]:
    """The keyed fields where two configurations (as dicts) differ, e.g. ["strategy: 'cggm' -> 'joint'"]."""
    def pairs(a: dict, b: dict, prefix: str = ""):
        for k in sorted(set(a) | set(b)):
            x, y = a.get(k, "(unset)"), b.get(k, "(unset)")
            if isinstance(x, dict) and isinstance(y, dict):
                yield from pairs(x, y, f"{prefix}{k}.")
            elif json.dumps(x, sort_keys=True, default=str) != json.dumps(y, sort_keys=True, default=str):
                yield f"{prefix}{k}: {x!r} -> {y!r}"  # compared as JSON: a tuple equals its list

    return list(pairs(keyed(old, ignore), keyed(new, ignore)))


def stored_key(run_dir, ignore: tuple = ()) -> str | None:
    """Config.key() of the configuration stored in run_dir/config.json (None when unreadable)."""
    try:
        d = json.loads((Path(run_dir) / "config.json").read_text())
        return Config.from_dict(d | {"device": "cpu"}).key(ignore)  # a CUDA run must verify on a CPU-only laptop
    except (OSError, ValueError, TypeError):  # ConfigError is a ValueError
        return None


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; other values are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for but no CUDA GPU is visible; use device='auto' or 'cpu'")
        return device
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
