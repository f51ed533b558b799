"""BraTS 2021 preprocessing cache: read each case's NIfTI files once, normalise, crop, store as `.npy`.

Per case (challenge layout `BraTS2021_<id>/BraTS2021_<id>_{flair,t1ce,t1,t2,seg}.nii.gz`):
1. read with MONAI `LoadImage` (nibabel reader) and `EnsureChannelFirst`; check shapes, finite
   intensities and labels in {0, 1, 2, 4};
2. z-score each modality over its non-zero (brain) voxels: `NormalizeIntensity(nonzero=True,
   channel_wise=True)`; the background stays 0;
3. remap label 4 to 3 and center-crop H and W to 160 (as zrguo/CGGM@21e428c datasets/BratsDataset.py);
4. store `image.npy` (D, 4, 160, 160) float16, slice-major so one axial slice is one contiguous read,
   `label.npy` (D, 160, 160) uint8, and `meta.json` (depth, tumour slices, the source files' sizes,
   mtimes and tail checksums, see `stamp`) written last: a case counts as cached only once its
   meta.json exists and matches.
Data card: data_cards/brats2021.md.

Reference code: zrguo/CGGM@21e428c datasets/BratsDataset.py (label remap, CenterCrop; it reads pre-built h5
files whose intensity normalisation is not published).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import atomic_write_bytes, atomic_write_json
from .base import card

CARD = card("brats2021")
MODALITIES = ("flair", "t1ce", "t1", "t2")  # the official backbone order
FILES = MODALITIES + ("seg",)
LABELS = (0, 1, 2, 4)
CROP = 160
STANDARD_SHAPE = (240, 240, 155)
CASE = re.compile(r"^BraTS2021_\d+$")
SPEC = {"version": 1, "crop": CROP, "norm": "zscore over nonzero voxels, per modality", "dtype": "float16",
        "labels": "4->3", "layout": "(D, 4, H, W)"}


def find_cases(root: Path) -> list[Path]:
    """Case folders `BraTS2021_<id>` in `root`, or in its one subfolder that holds them (archive layouts)."""
    cases = sorted(p for p in root.iterdir() if p.is_dir() and CASE.match(p.name))
    if not cases:
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            cases = sorted(p for p in sub.iterdir() if p.is_dir() and CASE.match(p.name))
            if cases:
                break
    return cases


def case_files(folder: Path) -> dict[str, Path]:
    """{modality or "seg": file} of one case; DataError naming the first missing file."""
    out = {}
    for m in FILES:
        gz, plain = folder / f"{folder.name}_{m}.nii.gz", folder / f"{folder.name}_{m}.nii"
        if not gz.is_file() and not plain.is_file():
            raise DataError(f"BraTS 2021: case {folder.name} has no {m} volume", path=gz, field=m,
                            expected=f"the five files {folder.name}_{{flair,t1,t1ce,t2,seg}}.nii.gz", card=CARD)
        out[m] = gz if gz.is_file() else plain
    return out


def spec_key() -> str:
    return hashlib.sha256(json.dumps(SPEC, sort_keys=True).encode()).hexdigest()[:12]


def stamp(files: dict[str, Path]) -> dict:
    """Size, mtime_ns and the SHA-256 of the last 64 KiB of each of a case's source files: the cache is
    stale when any changes. For .nii.gz that tail holds the gzip trailer, the CRC-32 of the whole
    volume, so a changed voxel changes the stamp without reading the file (~1 ms per case)."""
    out = {}
    for m, p in files.items():
        st = p.stat()
        with open(p, "rb") as f:
            f.seek(max(0, st.st_size - 2**16))
            tail = hashlib.sha256(f.read()).hexdigest()[:16]
        out[m] = [p.name, st.st_size, st.st_mtime_ns, tail]
    return out


def read_case(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image (4, H, W, D) float32 normalised, label (H, W, D) uint8 in {0, 1, 2, 3}) of one case, checked."""
    from monai.transforms import EnsureChannelFirst, LoadImage, NormalizeIntensity

    files = case_files(folder)
    loader, first = LoadImage(image_only=True, reader="NibabelReader"), EnsureChannelFirst(channel_dim="no_channel")
    vols = {}
    for m, path in files.items():
        try:
            vol = loader(str(path))
        except Exception as err:  # gzip, zlib, nibabel and MONAI each raise their own types
            raise DataError(f"BraTS 2021: {path.name} cannot be read ({type(err).__name__}: {err})", path=path,
                            field=m, expected="a complete gzip-compressed NIfTI-1 volume", card=CARD) from None
        if vol.ndim != 3 or min(vol.shape[:2]) < CROP:
            raise DataError(f"BraTS 2021: {path.name} has shape {tuple(vol.shape)}", path=path, field=m,
                            expected=f"a 3-D volume H x W x D with H, W >= {CROP} (the challenge's 240 x 240 x 155)",
                            card=CARD)
        vols[m] = first(vol)
    ref = tuple(vols["flair"].shape[1:])
    for m, vol in vols.items():
        if tuple(vol.shape[1:]) != ref:
            raise DataError(f"BraTS 2021: the modality shapes of case {folder.name} disagree: {m} is "
                            f"{tuple(vol.shape[1:])}, flair is {ref}", path=files[m], field=m,
                            expected="all five volumes of a case co-registered on the same grid", card=CARD)
    image = np.concatenate([np.asarray(vols[m]) for m in MODALITIES]).astype(np.float32)
    for i, m in enumerate(MODALITIES):
        if not np.isfinite(image[i]).all():
            raise DataError(f"BraTS 2021: {files[m].name} contains NaN or infinite intensities", path=files[m],
                            field=m, expected="finite intensities", card=CARD)
    seg = np.asarray(vols["seg"][0])
    bad = [int(v) if float(v).is_integer() else float(v) for v in sorted(set(np.unique(seg).tolist()) - set(LABELS))]
    if bad:
        raise DataError(f"BraTS 2021: {files['seg'].name} has label values {bad[:5]}", path=files["seg"], field="seg",
                        expected="labels 0 (background), 1 (NCR), 2 (ED), 4 (ET)", card=CARD)
    image = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(image), dtype=np.float32)
    label = seg.astype(np.uint8)
    label[label == 4] = 3
    return image, label


def preprocess(folder: Path, out: Path) -> dict:
    """Read, crop and store one case under `out`; returns its meta (also written to out/meta.json)."""
    files = case_files(folder)
    image, label = read_case(folder)
    h, w, depth = label.shape
    top, left = int(round((h - CROP) / 2)), int(round((w - CROP) / 2))
    image = image[:, top:top + CROP, left:left + CROP].transpose(3, 0, 1, 2).astype(np.float16)
    label = np.ascontiguousarray(label[top:top + CROP, left:left + CROP].transpose(2, 0, 1))
    for name, arr in (("image", np.ascontiguousarray(image)), ("label", label)):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write_bytes(out / f"{name}.npy", buf.getvalue())
    meta = {"case": folder.name, "depth": int(depth), "shape": [int(h), int(w), int(depth)],
            "tumour_slices": np.flatnonzero(label.reshape(depth, -1).any(1)).tolist(), "source": stamp(files)}
    atomic_write_json(out / "meta.json", meta)
    return meta


def header(path: Path) -> tuple[tuple | None, str | None]:
    """(shape, None) when the NIfTI header of `path` reads and the file is as long as the header says
    (for .nii.gz: the gzip trailer's stored length, so a truncated download shows without decompressing);
    (None, why) otherwise."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        hdr = img.header
        need = int(img.dataobj.offset) + int(np.prod(img.shape)) * np.dtype(hdr.get_data_dtype()).itemsize
    except Exception as err:  # nibabel, gzip and zlib each raise their own types
        return None, f"has no readable NIfTI header ({type(err).__name__}: {err})"
    size = path.stat().st_size
    if path.name.endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, 2)
            stored = int.from_bytes(f.read(4), "little")
        if stored != need % 2**32:
            return None, (f"is truncated or damaged: its gzip trailer records {stored} bytes, the header needs "
                          f"{need}")
    elif size < need:
        return None, f"is truncated: {size} bytes, the header needs {need}"
    return tuple(int(n) for n in img.shape), None


def cached_meta(folder: Path, out: Path, upgrade: bool = False) -> dict | None:
    """The cached meta of case `folder` in `out` when complete and its source files are unchanged, else None.

    A meta written before stamps held the tail checksum ([name, size, mtime_ns]) counts as fresh when
    those three match; with `upgrade` (the loader, holding the cache lock) its stamp is completed in
    place, so an existing cache is not preprocessed again (hours for the full dataset).
    """
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    now = json.loads(json.dumps(stamp(case_files(folder))))
    before = meta.get("source") or {}
    older = set(before) == set(now) and all(len(before[m]) == 3 and before[m] == now[m][:3] for m in now)
    if not (before == now or older) or not ((out / "image.npy").is_file() and (out / "label.npy").is_file()):
        return None
    if older and upgrade:
        meta["source"] = now
        atomic_write_json(out / "meta.json", meta)
    return meta


def prepare(cases: list[Path], cache: Path, workers: int = 0) -> list[dict]:
    """Metas of all `cases` (in order), preprocessing those missing or stale in `cache` (`workers` processes)."""
    from .base import disk_errors, writer_lock

    with disk_errors(cache), writer_lock(cache / ".lock", f"the BraTS preprocessing cache {cache}"):
        return _prepare(cases, cache, workers)


def _prepare(cases: list[Path], cache: Path, workers: int) -> list[dict]:
    for tmp in cache.glob("*/.*.tmp"):  # left by a killed run (we hold the lock: no writer is active)
        tmp.unlink(missing_ok=True)
    metas = {c.name: cached_meta(c, cache / c.name, upgrade=True) for c in cases}
    todo = [c for c in cases if metas[c.name] is None]
    stale = [c.name for c in todo if (cache / c.name / "meta.json").is_file()]
    if stale:
        print(f"BraTS 2021: {len(stale)} cached case(s) are stale (their source files changed since they were "
              f"preprocessed, e.g. {', '.join(stale[:3])}); preprocessing them again", file=sys.stderr, flush=True)
    if todo and workers > 0:
        from concurrent.futures import ProcessPoolExecutor

        from ..repro.processes import die_with_parent

        with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            for c, meta in zip(todo, pool.map(preprocess, todo, [cache / c.name for c in todo])):
                metas[c.name] = meta
    for c in todo if workers <= 0 else ():
        metas[c.name] = preprocess(c, cache / c.name)
    return [dict(metas[c.name], dir=str(cache / c.name)) for c in cases]
