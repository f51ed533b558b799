"""Batches of 2-D axial BraTS slices read from the preprocessing cache, with seeded sampling.

Sampling (which slices make up one pass):
- "official": one random slice containing tumour per case, drawn among slices [0, slice_limit) as
  zrguo/CGGM@21e428c datasets/BratsDataset.py does (it draws `np.random.randint(0, 128)` until the label slice
  is non-empty). Robust to small volumes: the draw is over the tumour slices below
  min(slice_limit, D); if none, over all tumour slices; a case without tumour gives a random slice.
  For training the draw changes every epoch (seeded by seed, epoch); for evaluation it is fixed by
  `sample_seed` (the official code redraws at every evaluation, so its scores are stochastic);
- "tumour": every slice containing tumour, of every case;
- "all": every slice of every case (evaluation with per-volume Dice from `meta["case"]`).

Augmentation (training, optional) as the official code: `RandomRotFlip` (rot90 by k in {0, 1, 2},
then a flip of H or W) and, with probability 0.1, Gaussian noise with std ~ U(0, 0.1). Random draws
come from generators seeded by (seed, epoch, position), so runs and resumed runs are reproducible
with any number of DataLoader workers.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .base import collate
from .brats_cache import MODALITIES


def draw_slices(metas: list[dict], rng: np.random.Generator, slice_limit: int | None) -> list[tuple[int, int]]:
    """One (case index, slice) per case: a random tumour slice below the limit (see the module docstring)."""
    out = []
    for c, meta in enumerate(metas):
        tumour = meta["tumour_slices"]
        limit = min(slice_limit or meta["depth"], meta["depth"])
        candidates = [z for z in tumour if z < limit] or tumour or list(range(meta["depth"]))
        out.append((c, int(candidates[rng.integers(len(candidates))])))
    return out


def rot_flip_noise(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The official training augmentation on one (C, H, W) slice and its (H, W) labels."""
    k = int(rng.integers(0, 3))
    image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k)
    axis = int(rng.integers(1, 3))
    image, label = np.flip(image, axis=axis), np.flip(label, axis=axis - 1)
    if rng.uniform() < 0.1:
        image = image + rng.normal(0.0, rng.uniform(0.0, 0.1), size=image.shape)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)


class SliceSet(torch.utils.data.Dataset):
    """Sample k of the current pass: ({modality: (1, H, W)}, labels (H, W) int64, {"case", "slice"})."""

    def __init__(self, metas: list[dict], samples: list[tuple[int, int]], augment: bool, seed: tuple):
        self.metas, self.samples, self.augment, self.seed = metas, samples, augment, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, k: int):
        c, z = self.samples[k]
        folder = Path(self.metas[c]["dir"])
        # opened per read: thousands of open memory maps would exhaust file descriptors
        image = np.asarray(np.load(folder / "image.npy", mmap_mode="r")[z], dtype=np.float32)
        label = np.asarray(np.load(folder / "label.npy", mmap_mode="r")[z])
        if self.augment:
            image, label = rot_flip_noise(image, label, np.random.default_rng([*self.seed, k]))
        image = torch.from_numpy(image)  # views per modality; collate's stack copies them once
        inputs = {m: image[i:i + 1] for i, m in enumerate(MODALITIES)}
        return inputs, torch.from_numpy(label.astype(np.int64)), {"case": self.metas[c]["case"], "slice": z}


class SliceLoader:
    """Iterable of `Batch` over cached cases; `set_epoch(e)` before iterating, `shard(rank, world)` for DDP."""

    def __init__(self, metas: list[dict], *, slices: str, batch_size: int, seed: int = 0, train: bool = False,
                 shuffle: bool = False, augment: bool = False, sample_seed: int = 0, slice_limit: int | None = 128,
                 num_workers: int = 0):
        self.metas, self.slices, self.batch_size, self.seed = metas, slices, batch_size, seed
        self.train, self.shuffle, self.augment, self.sample_seed = train, shuffle, augment, sample_seed
        self.slice_limit, self.num_workers = slice_limit, num_workers
        self.epoch, self.rank, self.world_size = 0, 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> "SliceLoader":
        self.rank, self.world_size = rank, world_size
        return self

    def samples(self) -> list[tuple[int, int]]:
        """The (case index, slice) pairs of the current pass, in order (sharded)."""
        if self.slices == "official":
            seed = [self.seed, self.epoch, 0] if self.train else [self.sample_seed, 0, 0]
            out = draw_slices(self.metas, np.random.default_rng(seed), self.slice_limit)
        else:
            key = "tumour_slices" if self.slices == "tumour" else None
            out = [(c, z) for c, m in enumerate(self.metas) for z in (m[key] if key else range(m["depth"]))]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 1]).permutation(len(out))
            out = [out[i] for i in order]
        if self.world_size > 1:
            out = out[:len(out) - len(out) % self.world_size][self.rank::self.world_size]
        return out

    @property
    def num_samples(self) -> int:
        return len(self.samples())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self):
        data = SliceSet(self.metas, self.samples(), self.augment, (self.seed, self.epoch))
        yield from torch.utils.data.DataLoader(data, batch_size=self.batch_size, num_workers=self.num_workers,
                                               collate_fn=collate)
