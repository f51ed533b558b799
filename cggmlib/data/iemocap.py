"""IEMOCAP (Busso et al., 2008), 4-class emotion recognition, from the MMIN feature release.

Data card: data_cards/iemocap.md. Reads the features of Zhao et al., "Missing Modality Imagination
Network", ACL 2021 (AIM3-RUC/MMIN), as CGGM does, from the dataset folder:
`A/comparE.h5` (130-d ComParE frames per utterance id) with `A/comparE_mean_std.h5` (per-fold mean/std),
`V/denseface.h5` (342-d), `L/bert_large.h5` (1024-d) and `target/<fold>/{trn,val,tst}_{label,int2name}.npy`
(one-hot labels (N, 4), argmaxed; int2name rows whose [0] is the bytes utterance id).
Modalities in the official order: text (L), audio (A), vision (V); one 4-way head (`Classification(4)`).

Reference code: zrguo/CGGM@21e428c datasets/IEMODataset.py (a trimmed AIM3-RUC/MMIN:data/multimodal_dataset.py).

Deviations from the official loader (each also in the data card):
- every modality is zero-padded at the end to the longest utterance *of the batch*; the official collate
  pads audio to exactly 350 frames and crashes on longer utterances. `audio_pad=350` pads audio to at
  least 350 frames as the official code does (without the crash); `max_len` (int, or {modality: int})
  truncates longer sequences to their first `max_len` frames. Nothing is truncated by default;
- the training split is shuffled with the run seed (`shuffle=True`); the official loader does not;
- non-finite feature values become 0 (counted, warned); zero std in the fold's audio statistics is
  replaced by 1 (counted) instead of dividing by zero;
- `fold` selects any of the 10 MMIN folds (default 1, the only one the official code uses).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..tasks import Classification
from .base import (ABSURD, Data, DoctorReport, Ragged, TensorLoader, absurd_values, card, check_options, limit_text,
                   scan_bar)
from .standins import is_standin

CARD = card("iemocap")
MODALITIES = ("text", "audio", "vision")
FILES = {"text": "L/bert_large.h5", "audio": "A/comparE.h5", "vision": "V/denseface.h5"}
MEAN_STD = "A/comparE_mean_std.h5"
DIMS = {"text": 1024, "audio": 130, "vision": 342}
OFFICIAL_PAD = {"text": 22, "audio": 350, "vision": 50}
"""lengths the official code assumes (get_seq_len); only audio's 350 is enforced there (by crashing)"""
SPLITS = {"train": "trn", "val": "val", "test": "tst"}
LIMITS = {"text": ABSURD, "vision": ABSURD, "audio": 1e15}
"""|x| above this is damaged data (doctor); raw ComParE audio frames keep their own scales (the loader
standardises them with the fold statistics), so they get a wider bound than the fed-as-is features"""
NUM_CLASSES, NUM_FOLDS = 4, 10


def _file(root: Path, rel: str) -> Path:
    f = root / rel
    if not f.is_file():
        raise DataError(f"IEMOCAP file missing: {rel}", path=f,
                        expected=f"the MMIN feature release layout {sorted(FILES.values()) + [MEAN_STD]} + target/<fold>/",
                        card=CARD)
    return f


def open_h5(f: Path) -> h5py.File:
    try:
        return h5py.File(f, "r")
    except OSError as err:
        raise DataError(f"{f.name} is truncated, corrupted or not HDF5 ({err}); download it again", path=f,
                        expected="an HDF5 file with one (T, d) dataset per utterance id", card=CARD) from err


def _npy(f: Path) -> np.ndarray:
    if not f.is_file():
        raise DataError(f"IEMOCAP target file missing: {f.name}", path=f,
                        expected="target/<fold>/{trn,val,tst}_{label,int2name}.npy", card=CARD)
    try:
        try:
            return np.load(f)
        except ValueError as err:
            if "allow_pickle" not in str(err):
                raise
            return np.load(f, allow_pickle=True)  # an object array of ids (trusted release files only)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{f.name} is truncated or not a .npy file ({err})", path=f, card=CARD) from err


def _names(raw: np.ndarray, f: Path) -> list[str]:
    try:
        rows = [r[0] if np.ndim(r) >= 1 else r for r in raw]
        return [r.decode() if isinstance(r, bytes) else str(r) for r in rows]
    except (TypeError, IndexError, UnicodeDecodeError) as err:
        raise DataError(f"{f.name} does not hold utterance ids ({err})", path=f, field="int2name",
                        expected="rows whose [0] is a bytes utterance id, e.g. b'Ses01F_impro01_F000'",
                        card=CARD) from None


def _labels(raw: np.ndarray, f: Path) -> np.ndarray:
    y = np.asarray(raw)
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        bad = (y < 0) | (y >= NUM_CLASSES)
        if bad.any():
            raise DataError(f"{f.name}: {int(bad.sum())} label(s) out of range", path=f, field="label",
                            expected=f"class indices 0..{NUM_CLASSES - 1}", card=CARD)
        return y.astype(np.int64)
    if y.ndim != 2 or y.shape[1] != NUM_CLASSES or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{f.name} has labels of shape {y.shape} and dtype {y.dtype}", path=f, field="label",
                        expected=f"one-hot rows (N, {NUM_CLASSES}) (or class indices (N,))", card=CARD)
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        raise DataError(f"{f.name}: {int((~np.isfinite(y)).sum())} NaN/inf label value(s)", path=f, field="label",
                        expected=f"one-hot rows (N, {NUM_CLASSES}) of 0/1", card=CARD)
    bad = ((y != 0) & (y != 1)).any(1) | (y.sum(1) != 1)
    if bad.any():
        raise DataError(f"{f.name}: {int(bad.sum())} label row(s) are not one-hot (first: row {np.flatnonzero(bad)[0]})",
                        path=f, field="label", expected=f"exactly one 1 per row among {NUM_CLASSES} classes", card=CARD)
    return y.argmax(1)


def read_target(root: Path, fold: int, split: str) -> tuple[list[str], np.ndarray]:
    """(utterance ids, class indices) of split 'trn' | 'val' | 'tst' of a fold, validated."""
    folder = root / "target" / str(fold)
    if not folder.is_dir():
        found = sorted((p.name for p in (root / "target").iterdir()), key=lambda n: (len(n), n)) \
            if (root / "target").is_dir() else []
        raise DataError(f"IEMOCAP fold {fold} not found (folds present: {found})", path=folder,
                        expected=f"target/<fold>/ for fold in 1..{NUM_FOLDS}", card=CARD)
    fn, fl = folder / f"{split}_int2name.npy", folder / f"{split}_label.npy"
    names, y = _names(_npy(fn), fn), _labels(_npy(fl), fl)
    if len(names) != len(y):
        raise DataError(f"{fn.name} lists {len(names)} utterances but {fl.name} has {len(y)} labels", path=fl,
                        field="label", expected="one label per utterance id", card=CARD)
    if not names:
        raise DataError(f"split {split!r} of fold {fold} is empty", path=fn, expected="at least one utterance",
                        card=CARD)
    return names, y


def read_sequences(h5: h5py.File, f: Path, names: list[str], modality: str, where: str) -> tuple[list, int]:
    """One float32 tensor (T, d) per utterance id (non-finite → 0) and the number of values replaced."""
    out, replaced = [], 0
    for name in names:
        if name not in h5:
            raise DataError(f"utterance {name!r} of {where} is missing from {f.name}: modalities of different "
                            f"lengths", path=f, field=name, expected="every listed utterance in A, V and L", card=CARD)
        ds = h5[name]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[1] != DIMS[modality]:
            shape = getattr(ds, "shape", "a group")
            raise DataError(f"{f.name}[{name!r}] is {shape}", path=f, field=name,
                            expected=f"a (T, {DIMS[modality]}) {modality} feature array", card=CARD)
        try:
            x = np.asarray(ds[()], dtype=np.float32)
        except (OSError, ValueError) as err:
            raise DataError(f"{f.name}[{name!r}] cannot be read ({err}); the file is corrupted", path=f,
                            field=name, card=CARD) from err
        bad = ~np.isfinite(x)
        if bad.any():
            replaced += int(bad.sum())
            x = np.where(bad, np.float32(0), x)
        out.append(torch.from_numpy(x))
    return out, replaced


def fold_stats(root: Path, fold: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The fold's audio (mean, std) from comparE_mean_std.h5; zero std → 1 (returned count)."""
    f = _file(root, MEAN_STD)
    with open_h5(f) as h5:
        if str(fold) not in h5:
            raise DataError(f"{f.name} has no group {str(fold)!r} (groups: {sorted(h5)})", path=f, field=str(fold),
                            expected=f"groups '1'..'{NUM_FOLDS}' with datasets mean and std", card=CARD)
        g = h5[str(fold)]
        try:
            mean, std = (np.asarray(g[k][()], np.float32).reshape(-1) for k in ("mean", "std"))
        except (KeyError, OSError, ValueError) as err:
            raise DataError(f"{f.name}[{str(fold)!r}] lacks a readable mean/std ({err})", path=f, field=str(fold),
                            expected=f"datasets mean and std of shape ({DIMS['audio']},)", card=CARD) from None
    for name, v in (("mean", mean), ("std", std)):
        if v.shape != (DIMS["audio"],) or not np.isfinite(v).all():
            raise DataError(f"{f.name}[{str(fold)!r}/{name}] has shape {v.shape} or non-finite values", path=f,
                            field=f"{fold}/{name}", expected=f"({DIMS['audio']},) finite values", card=CARD)
    zero = std <= 0
    return mean, np.where(zero, np.float32(1), std), int(zero.sum())


def _max_len(max_len, m: str):
    return max_len.get(m) if isinstance(max_len, dict) else max_len


def load(path, *, batch_size: int = 64, seed: int = 0, fold: int = 1, max_len=None, audio_pad: int | None = None,
         norm: str = "trn", shuffle: bool = True, drop_last: bool = False, **options) -> Data:
    """IEMOCAP (MMIN features) as `Data`: `Classification(4)` on text, audio, vision; see the module docstring."""
    check_options("iemocap", options, ("fold", "max_len", "audio_pad", "norm", "shuffle", "drop_last"))
    if fold not in range(1, NUM_FOLDS + 1):
        raise ConfigError(f"iemocap: fold must be 1..{NUM_FOLDS}, got {fold!r}")
    if norm not in ("trn", "utt", "none"):
        raise ConfigError(f"iemocap: norm must be 'trn' (fold statistics, official), 'utt' or 'none', not {norm!r}")
    cuts = max_len.values() if isinstance(max_len, dict) else [max_len]
    if any(c is not None and (not isinstance(c, int) or c < 1) for c in [*cuts, audio_pad]) or \
            (isinstance(max_len, dict) and set(max_len) - set(MODALITIES)):
        raise ConfigError(f"iemocap: max_len must be a positive int or {{modality: int}} over {list(MODALITIES)}, "
                          f"and audio_pad a positive int; got max_len={max_len!r}, audio_pad={audio_pad!r}")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"IEMOCAP folder not found: {root}", path=root,
                        expected=f"the MMIN feature release (A/, V/, L/, target/) — or a stand-in from "
                                 f"`cggm make-standin iemocap --out {root.parent}`", card=CARD)
    files = {m: _file(root, rel) for m, rel in FILES.items()}
    targets = {s: read_target(root, fold, key) for s, key in SPLITS.items()}
    mean, std, zero_std = fold_stats(root, fold) if norm == "trn" else (0.0, 1.0, 0)
    seqs = {s: {} for s in SPLITS}
    replaced = {s: {} for s in SPLITS}
    for m, f in files.items():
        with open_h5(f) as h5:
            for s, (names, _) in targets.items():
                seqs[s][m], replaced[s][m] = read_sequences(h5, f, names, m, f"target/{fold}/{SPLITS[s]}_int2name.npy")
    longer = {s: int(sum(len(x) > OFFICIAL_PAD["audio"] for x in seqs[s]["audio"])) for s in SPLITS}
    for s in SPLITS:
        if norm == "trn":
            seqs[s]["audio"] = [(x - torch.from_numpy(mean)) / torch.from_numpy(std) for x in seqs[s]["audio"]]
        elif norm == "utt":  # MMIN normalize_on_utt: each utterance by its own frames
            seqs[s]["audio"] = [(x - x.mean(0)) / torch.where(x.std(0) > 0, x.std(0), 1) if len(x) > 1 else x
                                for x in seqs[s]["audio"]]
        for m in MODALITIES:
            cut = _max_len(max_len, m)
            if cut is not None:
                seqs[s][m] = [x[:cut] for x in seqs[s][m]]
    total = sum(sum(c.values()) for c in replaced.values())
    if total:
        warnings.warn(f"IEMOCAP: {total} non-finite feature values replaced by 0 ({replaced}); see {CARD}", stacklevel=2)
    loaders = {}
    for s, (names, y) in targets.items():
        inputs = {m: Ragged(seqs[s][m], min_len=(audio_pad or 0) if m == "audio" else 0) for m in MODALITIES}
        loaders[s] = TensorLoader(inputs, torch.from_numpy(y), batch_size, shuffle=shuffle and s == "train",
                                  seed=seed, drop_last=drop_last and s == "train", meta={"id": names})
    standin = is_standin(root)
    lengths = {m: [len(x) for x in seqs["train"][m]] for m in MODALITIES}
    return Data("iemocap", loaders["train"], loaders["val"], loaders["test"], Classification(NUM_CLASSES),
                dict(DIMS), standin=standin,
                info={"fold": fold, "norm": norm, "standin": standin, "root": str(root),
                      "sizes": {s: len(t[0]) for s, t in targets.items()},
                      "class_counts": {s: np.bincount(t[1], minlength=NUM_CLASSES).tolist() for s, t in targets.items()},
                      "train_seq_len": {m: {"max": max(v), "mean": float(np.mean(v))} for m, v in lengths.items()},
                      "audio_longer_than_350": longer, "nonfinite_replaced": replaced, "zero_std_columns": zero_std,
                      "padding": f"per batch to the longest utterance; audio_pad={audio_pad}, max_len={max_len}",
                      "shuffle_train": bool(shuffle), "card": CARD,
                      "source": "stand-in written by cggm make-standin" if standin else "MMIN feature release"})


def _scan(h5: h5py.File, f: Path, m: str, bar: bool = False) -> tuple[dict, list[str]]:
    """Lengths, non-finite count and absurd values (|x| > LIMITS[m]: count, first utterance, largest) of
    every utterance in one feature file, and its malformed entries."""
    lengths, bad, nonfinite, absurd = [], [], 0, [0, None, 0.0]
    for name, ds in scan_bar(h5.items(), f.name, bar):
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[1] != DIMS[m]:
            bad.append(f"{name} {getattr(ds, 'shape', 'group')}")
            continue
        lengths.append(ds.shape[0])
        try:
            x = ds[()]
        except (OSError, ValueError):
            bad.append(f"{name} (unreadable)")
            continue
        nonfinite += int((~np.isfinite(x)).sum())
        count, _, largest = absurd_values(x, LIMITS[m])
        if count:
            absurd = [absurd[0] + count, absurd[1] or name, max(absurd[2], largest)]
    return {"n": len(h5), "lengths": lengths, "nonfinite": nonfinite, "absurd": absurd}, bad


def check(path, full: bool = False) -> DoctorReport:
    """`cggm doctor`: files, per-utterance shapes, non-finite and absurd values, fold statistics, folds,
    labels and ids. HDF5 values are read in both modes (`full` adds progress bars)."""
    root = Path(path)
    report = DoctorReport("iemocap", root)
    if not root.is_dir():
        report.add("folder", "missing", False, f"{root} does not exist; put the MMIN IEMOCAP features there "
                                               f"(see {CARD}) or run `cggm make-standin iemocap --out {root.parent}`")
        return report
    report.add("stand-in", "yes (synthetic, STANDIN.json)" if is_standin(root) else "no")
    keys = {}
    for m, rel in FILES.items():
        try:
            f = _file(root, rel)
            with open_h5(f) as h5:
                st, bad = _scan(h5, f, m, full)
                keys[m] = set(h5)
        except DataError as err:
            report.add(rel, "missing or unreadable", False, str(err))
            continue
        span = f"T {min(st['lengths'])}..{max(st['lengths'])}" if st["lengths"] else "no valid entry"
        report.add(rel, f"{st['n']} utterances of (T, {DIMS[m]}), {span}", not bad,
                   f"{rel}: {len(bad)} entries are not (T, {DIMS[m]}) arrays, e.g. {bad[:3]} (see {CARD})")
        report.add(f"{rel} non-finite", f"{st['nonfinite']} -> replaced by 0 on load" if st["nonfinite"] else "none")
        count, first, largest = st["absurd"]
        report.add(f"{rel} |x| <= {limit_text(LIMITS[m])}", f"{count} above (largest {largest:.3g})" if count else "yes",
                   not count, f"{rel}: {count} value(s) with |x| > {limit_text(LIMITS[m])} (largest {largest:.3g}), first in "
                   f"utterance {first!r}: the file is damaged (training on it overflows); download it again "
                   f"(see {CARD})")
        if m == "audio":
            longer = sum(t > OFFICIAL_PAD["audio"] for t in st["lengths"])
            report.add("audio longer than 350 frames", f"{longer} (the official collate crashes on these; "
                                                       "cggmlib pads per batch)")
    folds = sorted(int(p.name) for p in (root / "target").glob("*") if p.is_dir() and p.name.isdigit())
    report.add("folds in target/", folds or "none", bool(folds),
               f"{root / 'target'} holds no fold folder 1..{NUM_FOLDS} (see {CARD})")
    for fold in folds:
        parts, errors = [], []
        try:
            _, _, zero = fold_stats(root, fold)
            parts.append(f"audio mean/std ok{f' ({zero} zero std -> 1)' if zero else ''}")
        except DataError as err:
            errors.append(str(err))
        for key in SPLITS.values():
            try:
                names, y = read_target(root, fold, key)
            except DataError as err:
                errors.append(str(err))
                continue
            parts.append(f"{key} {len(names)} {np.bincount(y, minlength=NUM_CLASSES).tolist()}")
            missing = {FILES[m]: [n for n in names if n not in k][:3] for m, k in keys.items()}
            missing = {rel: ids for rel, ids in missing.items() if ids}
            if missing:
                errors.append(f"fold {fold} {key}: utterances missing from {missing} — modalities of different "
                              f"lengths; re-download the features (see {CARD})")
        report.add(f"fold {fold}: N [class counts]", "; ".join(parts), not errors)
        report.problems.extend(errors)
    npy = len(list((root / "target").glob("*/*.npy")))
    report.add("verified", f"read every key, shape and value of {len(keys)}/{len(FILES)} feature file(s), "
               f"the fold statistics and {npy} target file(s)")
    return report
