"""Datasets: `load_data(name, root=DATA_ROOT)` reads `DATA_ROOT/<name>/` in its publishers' layout.

The registry maps each name to a loader `load(path, *, batch_size, seed, **options) -> Data`; each
loader's module docstring names its data card in data_cards/.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from ..errors import ConfigError
from .base import Batch, Data, DoctorReport, TensorLoader, checksums, collate, split_indices

#: dataset name -> module (inside cggmlib.data) whose `load` builds it; imported on first use
DATASETS: dict[str, str] = {
    "synthetic": "synthetic",
    "mfeat": "mfeat",
    "mosi": "mosi",
    "iemocap": "iemocap",
    "food101": "food101",
    "brats2021": "brats",
}

DEFAULT_ROOT = "data"


def load_data(name: str, root: str | Path = DEFAULT_ROOT, *, batch_size: int = 64, seed: int = 0,
              **options) -> Data:
    """Load dataset `name` from `root/<name>/` (the embedded ones need no files) as a `Data`."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    module = importlib.import_module(f".{DATASETS[name]}", __name__)
    params = inspect.signature(module.load).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = sorted(k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in ("batch_size", "seed"))
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(f"dataset {name!r} has no option(s) {unknown}; its options are {accepted}")
    return module.load(Path(root) / name, batch_size=batch_size, seed=seed, **options)


__all__ = ["Batch", "Data", "DoctorReport", "checksums", "DATASETS", "TensorLoader", "collate", "load_data", "split_indices"]
