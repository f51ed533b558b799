"""IEMOCAP stand-in: synthetic features in the exact MMIN release layout.

Writes `A/comparE.h5` (one (T, 130) float32 dataset per utterance id, raw scale),
`A/comparE_mean_std.h5` (groups '1'..'10', each with `mean` and `std` (130,) of that fold's training
frames), `V/denseface.h5` ((T, 342)), `L/bert_large.h5` ((T, 1024)) and
`target/<fold>/{trn,val,tst}_label.npy` (one-hot (N, 4) float32) with `{trn,val,tst}_int2name.npy`
((N, 1) bytes ids, e.g. b'Ses01F_impro01_F000'), for 10 speaker-independent folds: fold k tests on
speaker k and validates on the other speaker of the same session.

Lengths vary: text 5–22 tokens, vision 10–50 frames, audio 20–300 frames (median 80) plus
`long_audio` utterances of 360–420 frames (longer than the official 350-frame pad). Each modality sees
the class through fixed random prototypes with a per-utterance nuisance: text is strong, audio
weaker, vision weakest (class order arbitrary). Class frequencies follow the 4-class IEMOCAP subset.
"""
from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np

from ...files import atomic_write_bytes
from . import mark, save_npy

DIMS = {"text": 1024, "audio": 130, "vision": 342}
FILES = {"text": "L/bert_large.h5", "audio": "A/comparE.h5", "vision": "V/denseface.h5"}
STRENGTH = {"text": 8.0, "audio": 2.5, "vision": 2.0}
"""norm of each class prototype, in units of the per-coordinate, per-utterance nuisance"""
CLASS_FREQ = np.array([1708, 1636, 1103, 1084]) / 5531
SPEAKERS = [f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"]
LAYOUT = (*FILES.values(), "A/comparE_mean_std.h5", "target/*/*_label.npy", "target/*/*_int2name.npy")
"""the files this writer creates (`write_standin` recognises a stand-in killed before its marker by them)"""


def _lengths(rng, n: int, long_audio: int) -> dict:
    audio = np.clip(rng.lognormal(np.log(80), 0.5, size=n), 20, 300).astype(int)
    audio[rng.choice(n, size=min(long_audio, n), replace=False)] = rng.integers(360, 421, size=min(long_audio, n))
    return {"text": rng.integers(5, 23, size=n), "audio": audio, "vision": rng.integers(10, 51, size=n)}


def _features(rng, y: np.ndarray, lengths: dict) -> dict:
    out = {}
    for m, d in DIMS.items():
        protos = rng.standard_normal((4, d)) * STRENGTH[m] / np.sqrt(d)
        utts = protos[y] + rng.standard_normal((len(y), d))
        out[m] = [(u[None, :] + 0.5 * rng.standard_normal((t, d))).astype(np.float32) for u, t in zip(utts, lengths[m])]
    # ComParE values are on raw, very different scales: the fold statistics must matter
    scale, offset = np.exp(rng.normal(0, 1.5, DIMS["audio"])), rng.normal(0, 5, DIMS["audio"])
    out["audio"] = [(x * scale + offset).astype(np.float32) for x in out["audio"]]
    return out


def _write_h5(path: Path, tree: dict) -> None:
    """Write {name: array, or {name: array}} as HDF5 datasets (groups), built in memory and then written
    atomically: h5py crashes the process (a segmentation fault) when the disk fills up under it, while
    our writer reports "disk full" cleanly."""
    def fill(group, items):
        for key, value in items.items():
            if isinstance(value, dict):
                fill(group.create_group(key), value)
            else:
                group.create_dataset(key, data=value)

    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        fill(h5, tree)
    atomic_write_bytes(path, buf.getvalue())


def write(path: Path, seed: int = 0, utterances: int = 300, long_audio: int = 2, folds: int = 10) -> Path:
    """Write the stand-in into folder `path` (`folds` ≤ 10 target folders; mean/std for each)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    n = int(utterances)
    speaker = rng.permutation(np.arange(n) % len(SPEAKERS))
    names = [f"{SPEAKERS[s]}_{'impro' if i % 2 else 'script'}0{1 + i % 6}_{SPEAKERS[s][-1]}{i:03d}"
             for i, s in enumerate(speaker)]
    y = rng.choice(4, size=n, p=CLASS_FREQ)
    lengths = _lengths(rng, n, int(long_audio))
    feats = _features(rng, y, lengths)
    for m, rel in FILES.items():
        _write_h5(path / rel, dict(zip(names, feats[m])))
    onehot = np.eye(4, dtype=np.float32)[y]
    ids = np.array([[name.encode()] for name in names])
    stats = {}
    for fold in range(1, int(folds) + 1):
        test_spk = fold - 1
        val_spk = test_spk + 1 if test_spk % 2 == 0 else test_spk - 1  # the session's other speaker
        parts = {"tst": speaker == test_spk, "val": speaker == val_spk}
        parts["trn"] = ~(parts["tst"] | parts["val"])
        for split, mask in parts.items():
            idx = np.flatnonzero(mask)
            save_npy(path / "target" / str(fold) / f"{split}_label.npy", onehot[idx])
            save_npy(path / "target" / str(fold) / f"{split}_int2name.npy", ids[idx])
        frames = np.concatenate([feats["audio"][i] for i in np.flatnonzero(parts["trn"])])
        stats[str(fold)] = {"mean": frames.mean(0).astype(np.float32), "std": frames.std(0).astype(np.float32)}
    _write_h5(path / "A/comparE_mean_std.h5", stats)
    mark(path, "iemocap", seed, {"utterances": n, "long_audio": int(long_audio), "folds": int(folds)},
         writer=__name__)
    return path
