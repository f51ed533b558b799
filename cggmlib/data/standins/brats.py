"""BraTS 2021 stand-in: a few small cases in the challenge layout, as real gzip-compressed NIfTI files
(`BraTS2021_<id>/BraTS2021_<id>_{flair,t1,t1ce,t2,seg}.nii.gz`), read by `cggmlib.data.brats` through
its real path (MONAI, checks, normalisation, cache, slice sampling).

Each case is an ellipsoidal "brain" with one tumour: a necrotic core (label 1) inside an enhancing
shell (4) inside oedema (2). FLAIR shows the whole tumour strongly (the informative modality); T1ce
shows the enhancing shell moderately; T1 and T2 show it weakly. Volumes are `size` x `size` x `depth`
(default 176 x 176 x 16, smaller than the real 240 x 240 x 155). Case ids are chosen so that the
committed split rule gives every split at least one case. NOT the real data: every number computed
from it is a stand-in number. Data card: data_cards/brats2021.md.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ...files import atomic_write_bytes
from . import mark

BASE = {"flair": 300.0, "t1ce": 450.0, "t1": 500.0, "t2": 350.0}
#: intensity factor per modality in (whole tumour, enhancing shell, necrotic core)
CONTRAST = {"flair": (2.2, 2.2, 2.2), "t1ce": (1.0, 1.5, 0.8), "t1": (1.0, 1.0, 0.88), "t2": (1.12, 1.12, 1.12)}
LAYOUT = ("BraTS2021_*/BraTS2021_*_*.nii.gz",)
"""the files this writer creates (`write_standin` recognises a stand-in killed before its marker by them)"""


def case_ids(n: int) -> list[str]:
    """The first n ids BraTS2021_00000, ... taken so each split gets its share (val, test at least 1)."""
    from ..brats import assign, split_manifest

    if n < 3:
        raise ValueError("the BraTS stand-in needs at least 3 cases (one per split)")
    manifest = split_manifest()
    quota = {"val": max(1, round(0.1 * n)), "test": max(1, round(0.2 * n))}
    quota["train"] = n - quota["val"] - quota["test"]
    out, k = [], 0
    while len(out) < n:
        case = f"BraTS2021_{k:05d}"
        split = assign(case, manifest)
        if quota[split] > 0:
            quota[split] -= 1
            out.append(case)
        k += 1
    return sorted(out)


def make_case(rng: np.random.Generator, size: int, depth: int) -> dict[str, np.ndarray]:
    """{modality: int16 volume, "seg": uint8 labels in {0, 1, 2, 4}} of one synthetic case."""
    x, y, z = np.meshgrid(np.arange(size), np.arange(size), np.arange(depth), indexing="ij")
    c = (size - 1) / 2
    brain = ((x - c) / (0.36 * size)) ** 2 + ((y - c) / (0.43 * size)) ** 2 + \
        ((z - depth / 2) / (0.75 * depth)) ** 2 <= 1
    centre = (c + rng.uniform(-0.12, 0.12) * size, c + rng.uniform(-0.15, 0.15) * size,
              rng.uniform(0.35, 0.65) * (depth - 1))
    radii = (rng.uniform(0.10, 0.16) * size, rng.uniform(0.10, 0.16) * size, rng.uniform(0.18, 0.3) * depth)
    d = np.sqrt(sum(((g - m) / r) ** 2 for g, m, r in zip((x, y, z), centre, radii)))
    seg = np.zeros(brain.shape, np.uint8)
    seg[(d <= 1) & brain] = 2
    seg[(d <= 0.6) & brain] = 4
    seg[(d <= 0.35) & brain] = 1
    out = {}
    for m, base in BASE.items():
        whole, shell, core = CONTRAST[m]
        factor = np.where(seg > 0, whole, 1.0) * np.where(seg == 4, shell / whole, 1.0) * \
            np.where(seg == 1, core / whole, 1.0)
        vol = base * factor * (1 + 0.12 * rng.standard_normal(brain.shape)) * brain
        out[m] = np.clip(np.round(vol), 0, 32767).astype(np.int16)
    out["seg"] = seg
    return out


def _save(path: Path, array: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, np.diag([-1.0, -1.0, 1.0, 1.0]))  # 1 mm voxels, LPS-like as the challenge
    atomic_write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1))


def write(path, seed: int = 0, cases: int = 8, size: int = 176, depth: int = 16) -> Path:
    """Write `cases` synthetic cases of `size` x `size` x `depth` into `path` and return it."""
    root = Path(path)
    rng = np.random.default_rng(seed)
    for case in case_ids(cases):
        for m, vol in make_case(rng, size, depth).items():
            _save(root / case / f"{case}_{m}.nii.gz", vol)
    return mark(root, "brats2021", seed, {"cases": cases, "size": size, "depth": depth}).parent
