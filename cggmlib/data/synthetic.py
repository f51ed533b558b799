"""`synthetic`: an embedded imbalanced multimodal benchmark that trains in seconds on a CPU.

Each sample has a latent class y (or, for regression, a latent score). Modality m observes it through
its own random class prototypes scaled by a signal strength s_m, plus independent Gaussian noise:
x_m = s_m · P_m[y] + noise. The first modality is strong but carries no signal on a fraction
`missing` of the samples (as a dominant modality that is sometimes uninformative, e.g. a silent
audio track); the weaker modalities carry independent evidence on every sample.

With the defaults the strong modality is learned first and dominates the fused prediction; the
weak encoders then learn less under joint training than when trained alone (measured in the
quickstart notebook and tests/test_synthetic.py), which is the imbalance CGGM targets.
"""
from __future__ import annotations

import inspect

import torch

from ..errors import ConfigError
from ..tasks import Classification, Regression
from .base import Data, TensorLoader

DEFAULT_STRENGTHS = (4.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6)

#: named settings (`load(setting=NAME)`, CLI `--data-opt setting=NAME`): option values they fix.
#: `imbalanced`: the weak modalities' signal lives in a 10-dimensional subspace of 512 noisy features, so
#: an encoder must *learn* where it is (a random 512 → 32 encoder keeps little of it), and the strong
#: modality alone separates the classes on every sample (missing 0), so under joint training the fused
#: loss falls before the weak encoders have found their subspace and their gradients fade
#: (data_cards/synthetic.md gives the measured gap and the command).
SETTINGS = {"default": {},
            "imbalanced": {"dim": 512, "strengths": (8.0, 3.5, 3.5), "missing": 0.0}}


def default_strengths(num_modalities: int, strengths=None) -> tuple[float, ...]:
    if strengths is None:
        strengths = DEFAULT_STRENGTHS[:num_modalities] if num_modalities <= len(DEFAULT_STRENGTHS) else \
            DEFAULT_STRENGTHS + (0.5,) * (num_modalities - len(DEFAULT_STRENGTHS))
    return tuple(float(s) for s in strengths)


def apply_setting(setting: str, given: dict) -> dict:
    """The options named setting `setting` fixes; a ConfigError when `given` sets one of them otherwise."""
    if setting not in SETTINGS:
        raise ConfigError(f"synthetic: unknown setting {setting!r}; choose from {sorted(SETTINGS)} "
                          "(data_cards/synthetic.md describes them)")
    fixed = SETTINGS[setting]
    defaults = {k: v.default for k, v in inspect.signature(load).parameters.items()}
    clash = sorted(k for k, v in fixed.items() if given.get(k, defaults[k]) not in (defaults[k], v)
                   and not (k == "strengths" and given[k] is not None and tuple(given[k]) == v))
    if clash:
        raise ConfigError(f"synthetic: setting {setting!r} fixes {clash} to {[fixed[k] for k in clash]}; "
                          "leave them out or drop the setting")
    return dict(fixed)


def make_arrays(num_modalities: int = 3, strengths: tuple | None = None, task: str = "classification",
                num_classes: int = 10, dim: int = 32, num_samples: int = 3000, noise: float = 1.0,
                seed: int = 0, missing: float = 0.3) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Raw arrays: ({"m0": (N, dim), ...}, target (N,)); target is a class index or a score in [−3, 3]."""
    strengths = default_strengths(num_modalities, strengths)
    if len(strengths) != num_modalities:
        raise ConfigError(f"synthetic: got {len(strengths)} strengths for {num_modalities} modalities; "
                          "give one signal strength per modality")
    if num_modalities < 1 or any(s < 0 for s in strengths):
        raise ConfigError("synthetic: need at least one modality and non-negative strengths")
    if not 0 <= missing < 1:
        raise ConfigError(f"synthetic: missing must be in [0, 1), got {missing!r}")
    if task not in ("classification", "regression"):
        raise ConfigError(f"synthetic: task must be 'classification' or 'regression', not {task!r}")
    g = torch.Generator().manual_seed(seed)
    if task == "classification":
        y = torch.randint(0, num_classes, (num_samples,), generator=g)
        code = torch.nn.functional.one_hot(y, num_classes).float()
    else:
        latent = torch.randn(num_samples, 4, generator=g)
        y = (1.5 * latent.sum(1) / 2).clamp(-3, 3)
        code = latent
    inputs = {}
    for m, s in enumerate(strengths):
        prototypes = torch.randn(code.shape[1], dim, generator=g)
        prototypes = prototypes / prototypes.norm(dim=1, keepdim=True) * dim ** 0.5
        x = s * code @ prototypes / dim ** 0.5
        if m == 0 and missing > 0:  # the dominant modality carries no signal on a fraction of samples
            x[torch.rand(num_samples, generator=g) < missing] = 0.0
        x = x + noise * torch.randn(num_samples, dim, generator=g)
        inputs[f"m{m}"] = x
    return inputs, y


def load(root=None, *, batch_size: int = 64, seed: int = 0, num_modalities: int = 3,
         strengths: tuple | None = None, task: str = "classification", num_classes: int = 10,
         dim: int = 32, num_samples: int = 3000, noise: float = 1.0, data_seed: int = 0,
         missing: float = 0.3, shuffle: bool = True, setting: str = "default") -> Data:
    """Build `synthetic` in memory (60/20/20 split); `root` is accepted and unused (nothing on disk).

    Unknown options raise a TypeError naming them (e.g. a misspelt `num_modalites`).

    `data_seed` fixes the data; `seed` only the shuffling order, so seeds vary training, not the data.
    `setting` names a row of `SETTINGS` whose options replace the defaults; giving one of those options
    another value as well is an error.
    """
    given = {"num_modalities": num_modalities, "strengths": strengths, "dim": dim, "num_samples": num_samples,
             "noise": noise, "missing": missing, "num_classes": num_classes}
    given |= apply_setting(setting, given)
    num_modalities, strengths, dim, num_samples, noise, missing, num_classes = given.values()
    inputs, y = make_arrays(num_modalities, strengths, task, num_classes, dim, num_samples, noise, data_seed, missing)
    n_train, n_val = int(0.6 * num_samples), int(0.2 * num_samples)
    cuts = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val),
            "test": slice(n_train + n_val, num_samples)}
    loaders = {split: TensorLoader({m: x[s] for m, x in inputs.items()}, y[s], batch_size,
                                   shuffle=shuffle and split == "train", seed=seed)
               for split, s in cuts.items()}
    the_task = Classification(num_classes) if task == "classification" else Regression()
    strengths_used = default_strengths(num_modalities, strengths)
    return Data("synthetic", loaders["train"], loaders["val"], loaders["test"], the_task,
                {m: dim for m in inputs}, standin=False,
                info={"sizes": {k: s.stop - s.start for k, s in cuts.items()},
                      "strengths": dict(zip(inputs, map(float, strengths_used))), "setting": setting,
                      "source": "generated in memory by cggmlib.data.synthetic"})
