"""CMU-MOSI stand-in: synthetic pickles in the exact MulT layout (`mosi_data.pkl`, `mosi_data_noalign.pkl`).

Each split is a dict of numpy arrays text (N, 50, 300) float32 (GloVe-sized), audio (N, T_a, 5)
(COVAREP-sized, with a few −inf values as in the real release), vision (N, T_v, 20) (Facet-sized),
labels (N, 1, 1) float32 in [−3, 3] on a 1/3 grid (averages of three integer ratings, so some are 0),
and id (N,). Aligned: T_a = T_v = 50; unaligned: T_a = 375, T_v = 500 (MMSA's unaligned lengths).

A latent sentiment score drives every modality through a fixed random direction, scaled by a signal
strength (text strong, audio and vision weak) plus a per-segment nuisance and per-step noise, so text
dominates joint training as on the real data. Each segment has a random length; steps past it are 0.
Default sizes (240/60/100) keep one epoch of the MOSI transformer to seconds on a CPU.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from . import mark
from ...files import atomic_write_bytes

DIMS = {"text": 300, "audio": 5, "vision": 20}
STRENGTH = {"text": 3.0, "audio": 0.8, "vision": 0.6}
"""signal per unit of sentiment along each modality's direction, in units of the per-segment nuisance"""
UNALIGNED_LEN = {"text": 50, "audio": 375, "vision": 500}
LAYOUT = ("mosi_data.pkl", "mosi_data_noalign.pkl")
"""the files this writer creates (`write_standin` recognises a stand-in killed before its marker by them)"""


def _modality(rng, score, direction, strength: float, steps: int, dim: int) -> np.ndarray:
    n = len(score)
    # along the unit direction: strength · score against a per-segment nuisance of std 1
    signal = strength * score[:, None] * direction[None, :] / np.sqrt(dim)
    nuisance = rng.standard_normal((n, dim))
    x = (signal + nuisance)[:, None, :] + 0.5 * rng.standard_normal((n, steps, dim))
    lengths = rng.integers(max(2, steps // 5), steps + 1, size=n)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x.astype(np.float32)


def _split(rng, score: np.ndarray, directions: dict, lens: dict, prefix: str) -> dict:
    n = len(score)
    d = {m: _modality(rng, score, directions[m], STRENGTH[m], lens[m], DIMS[m]) for m in DIMS}
    hit = rng.random(d["audio"].shape) < 0.002  # the real COVAREP features hold a few −inf
    d["audio"][hit] = -np.inf
    d["labels"] = score.astype(np.float32).reshape(n, 1, 1)
    d["id"] = np.array([f"{prefix}_{i:04d}" for i in range(n)])
    return d


def write(path: Path, seed: int = 0, train: int = 240, valid: int = 60, test: int = 100, seq_len: int = 50,
          noalign: bool = True) -> Path:
    """Write the stand-in into folder `path`; `noalign=False` skips `mosi_data_noalign.pkl`."""
    path = Path(path)
    sizes = {"train": int(train), "valid": int(valid), "test": int(test)}
    variants = {"mosi_data.pkl": dict.fromkeys(DIMS, int(seq_len))}
    if noalign:
        variants["mosi_data_noalign.pkl"] = UNALIGNED_LEN | {"text": int(seq_len)}
    rng = np.random.default_rng([seed, 0])
    # the aligned and unaligned files hold the same segments: same scores, same directions
    scores = {s: np.clip(np.round(rng.normal(0.0, 1.4, size=n) * 3) / 3, -3, 3) for s, n in sizes.items()}
    directions = {m: rng.standard_normal(d) for m, d in DIMS.items()}
    for k, (name, lens) in enumerate(variants.items(), start=1):
        rng = np.random.default_rng([seed, k])
        data = {s: _split(rng, scores[s], directions, lens, f"standin_{s}") for s in sizes}
        atomic_write_bytes(path / name, pickle.dumps(data, protocol=4))
    mark(path, "mosi", seed, sizes | {"seq_len": int(seq_len), "noalign": bool(noalign)}, writer=__name__)
    return path
