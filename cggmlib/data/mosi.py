"""CMU-MOSI (Zadeh et al., 2016): sentiment regression in [−3, 3] from text, audio and vision.

Data card: data_cards/mosi.md. Reads the MulT pickles (Tsai et al., ACL 2019) that CGGM uses:
`mosi_data.pkl` (word-aligned, option `aligned=True`) or `mosi_data_noalign.pkl` (`aligned=False`),
or any pickle named by option `file`. The pickle is a dict with splits train/valid/test, each a dict
of arrays text (N, T, d_t), audio (N, T, d_a), vision (N, T, d_v), labels (N, 1, 1). The MMSA/Self-MM
layout (`aligned_50.pkl`, `unaligned_50.pkl`: `text` BERT features, `regression_labels`, ...) is read
too. Modalities, in the official order: text, audio, vision; inputs (B, T, d) float32, target (B,).

Reference code: zrguo/CGGM@21e428c datasets/CMUDataset.py (as yaohungt/Multimodal-Transformer:src/dataset.py);
thuiar/MMSA:src/MMSA/data_loader.py for the MMSA layout.

Deviations from the official loader (each also listed in the data card):
- the training split is shuffled with the run seed (`shuffle=True`); the official DataLoader does not
  shuffle (`shuffle=False` restores the file order);
- every non-finite feature value (NaN, ±inf) of every modality becomes 0, and the count per modality
  is reported in `data.info["nonfinite_replaced"]` and warned; the official code replaces only −inf
  in audio;
- labels must be finite and in [−3, 3] (the official code does not check); the target is (B,), not (B, 1).
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..tasks import Regression
from .base import ABSURD, Data, DoctorReport, TensorLoader, absurd_values, card, check_options, limit_text
from .standins import is_standin

CARD = card("mosi")
FILES = {True: "mosi_data.pkl", False: "mosi_data_noalign.pkl"}
MMSA_FILES = ("aligned_50.pkl", "unaligned_50.pkl")
MODALITIES = ("text", "audio", "vision")
SPLITS = {"train": "train", "val": "valid", "test": "test"}
"""our split name -> the pickle's key"""
STANDARD_SIZES = {"train": 1284, "valid": 229, "test": 686}
LABEL_RANGE = (-3.0, 3.0)
MULT_KEYS = ("text", "audio", "vision", "labels")
MMSA_KEYS = ("text", "audio", "vision", "regression_labels")


def resolve_file(path: Path, aligned: bool = True, file=None) -> Path:
    """The pickle to read: `file` (relative to the dataset folder, or absolute) or the MulT default."""
    path = Path(path)
    if file is None and not path.is_dir():
        raise DataError(f"CMU-MOSI folder not found: {path}", path=path,
                        expected=f"a folder holding {FILES[True]} (MulT release) — or write a stand-in with "
                                 f"`cggm make-standin mosi --out {path.parent}`", card=CARD)
    target = Path(file) if file is not None and Path(file).is_absolute() else path / (file or FILES[bool(aligned)])
    if not target.is_file():
        present = sorted(p.name for p in path.glob("*.pkl")) if path.is_dir() else []
        hint = (f"pickles present: {present}; pick one with option file=NAME (CLI: --data-opt file=NAME)"
                + ("" if aligned or FILES[True] not in present else "; or aligned=True")
                + ("" if not aligned or FILES[False] not in present else "; or aligned=False")) if present \
            else "no .pkl file in that folder"
        raise DataError(f"CMU-MOSI pickle not found: {target.name} ({hint})", path=target,
                        expected=f"{FILES[True]} (aligned) or {FILES[False]} (unaligned) from the MulT release",
                        card=CARD)
    return target


def read_pickle(file: Path) -> dict:
    """Unpickle `file` (Python-2 pickles via latin1); a truncated or corrupted file is a DataError."""
    def _load(**kw):
        with open(file, "rb") as f:
            return pickle.load(f, **kw)

    try:
        try:
            obj = _load()
        except UnicodeDecodeError:
            obj = _load(encoding="latin1")
    except OSError as err:
        raise DataError(f"cannot read {file.name}: {err.strerror}", path=file, card=CARD) from err
    except Exception as err:  # any unpickling failure means the file is damaged or not a pickle
        raise DataError(f"{file.name} is truncated or corrupted ({type(err).__name__}: {err}); download it again",
                        path=file, expected="a complete pickle of a dict with train/valid/test", card=CARD) from err
    if not isinstance(obj, dict) or any(s not in obj for s in SPLITS.values()):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{file.name} does not hold the MOSI splits (found {found})", path=file,
                        field="top-level keys", expected=f"a dict with keys {list(SPLITS.values())}", card=CARD)
    return obj


def _layout(d, split: str, file: Path) -> str:
    if not isinstance(d, dict):
        raise DataError(f"split {split!r} of {file.name} is a {type(d).__name__}, not a dict of arrays",
                        path=file, field=split, expected=f"a dict with keys {list(MULT_KEYS)}", card=CARD)
    if all(k in d for k in MULT_KEYS):
        return "mult"
    if all(k in d for k in MMSA_KEYS):
        return "mmsa"
    why = (" (`text_bert` holds BERT token ids, shape (N, 3, L), which need a BERT model; this loader reads "
           "feature arrays)") if "text_bert" in d and "text" not in d else ""
    raise DataError(f"split {split!r} of {file.name} has keys {sorted(map(str, d))}{why}", path=file, field=split,
                    expected=f"MulT keys {list(MULT_KEYS)} (optional id) or MMSA keys {list(MMSA_KEYS)} "
                             "(optional text_bert, raw_text, id, audio_lengths, vision_lengths, classification_labels)",
                    card=CARD)


def _array(value, file: Path, field: str, ndim: int) -> np.ndarray:
    try:
        x = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise DataError(f"{field} of {file.name} is not a numeric array ({err})", path=file, field=field,
                        expected="a float array", card=CARD) from None
    if ndim and x.ndim != ndim:
        raise DataError(f"{field} of {file.name} has shape {x.shape}", path=file, field=field,
                        expected="(N, T, d): samples × time steps × features", card=CARD)
    return x


def split_arrays(d, split: str, file: Path) -> tuple[dict, np.ndarray, dict]:
    """Validated arrays of one split: ({m: (N, T, d) float32 with non-finite → 0}, labels (N,), stats)."""
    layout = _layout(d, split, file)
    label_key = "labels" if layout == "mult" else "regression_labels"
    stats = {"layout": layout, "shapes": {}, "dtypes": {}, "nonfinite": {}, "absurd": {}}
    inputs = {}
    for m in MODALITIES:
        stats["dtypes"][m] = str(getattr(d[m], "dtype", type(d[m]).__name__))
        x = _array(d[m], file, f"{split}/{m}", 3)
        bad = ~np.isfinite(x)
        stats["nonfinite"][m] = int(bad.sum())
        if stats["nonfinite"][m]:
            x = np.where(bad, np.float32(0), x)
        stats["absurd"][m] = absurd_values(x)
        inputs[m], stats["shapes"][m] = x, tuple(x.shape)
    y = _array(d[label_key], file, f"{split}/{label_key}", 0)
    field = f"{split}/{label_key}"
    if y.ndim == 0 or y.size != len(y):
        raise DataError(f"{field} of {file.name} has shape {y.shape}", path=file, field=field,
                        expected="one score per sample: (N, 1, 1), (N, 1) or (N,)", card=CARD)
    y = y.reshape(-1)
    sizes = {m: len(x) for m, x in inputs.items()} | {label_key: len(y)}
    if len(set(sizes.values())) > 1:
        raise DataError(f"split {split!r} of {file.name}: modalities of different lengths {sizes}", path=file,
                        field=split, expected="the same number of samples N in every modality and the labels",
                        card=CARD)
    if len(y) == 0:
        raise DataError(f"split {split!r} of {file.name} is empty", path=file, field=split,
                        expected="at least one sample", card=CARD)
    if not np.isfinite(y).all():
        bad = np.flatnonzero(~np.isfinite(y))
        raise DataError(f"{field} of {file.name} has {len(bad)} NaN/inf label(s), first at sample {bad[0]}",
                        path=file, field=field, expected="finite sentiment scores in [-3, 3]", card=CARD)
    lo, hi = float(y.min()), float(y.max())
    if lo < LABEL_RANGE[0] - 1e-4 or hi > LABEL_RANGE[1] + 1e-4:
        raise DataError(f"{field} of {file.name} ranges over [{lo:g}, {hi:g}]", path=file, field=field,
                        expected="sentiment scores in [-3, 3]", card=CARD)
    stats.update(n=len(y), label_range=(lo, hi), label_shape=tuple(np.shape(d[label_key])))
    return inputs, y, stats


def _check_dims(stats: dict, file: Path) -> None:
    for m in MODALITIES:
        dims = {s: st["shapes"][m][2] for s, st in stats.items()}
        if len(set(dims.values())) > 1:
            raise DataError(f"{m} features of {file.name} have different sizes across splits {dims}", path=file,
                            field=m, expected="the same feature size d in train, valid and test", card=CARD)


def read(file: Path) -> dict[str, tuple[dict, np.ndarray, dict]]:
    """Read and validate every split of `file`: {our split name: (inputs, labels, stats)}."""
    obj = read_pickle(file)
    out = {ours: split_arrays(obj[key], key, file) for ours, key in SPLITS.items()}
    _check_dims({s: v[2] for s, v in out.items()}, file)
    return out


def load(path, *, batch_size: int = 64, seed: int = 0, aligned: bool = True, file=None, shuffle: bool = True,
         drop_last: bool = False, **options) -> Data:
    """CMU-MOSI as `Data`: a `Regression()` task on text, audio, vision sequences (see the module docstring)."""
    check_options("mosi", options, ("aligned", "file", "shuffle", "drop_last"))
    target = resolve_file(Path(path), aligned, file)
    splits = read(target)
    nonfinite = {s: v[2]["nonfinite"] for s, v in splits.items()}
    total = sum(sum(c.values()) for c in nonfinite.values())
    if total:
        warnings.warn(f"CMU-MOSI: {total} non-finite feature values in {target.name} replaced by 0 "
                      f"(per split and modality: {nonfinite}); see {CARD}", stacklevel=2)
    for s, (_, _, st) in splits.items():
        for m, (count, first, largest) in st["absurd"].items():
            if count:
                warnings.warn(_absurd_message(target, SPLITS[s], m, count, first, largest), stacklevel=2)
    loaders = {s: TensorLoader({m: torch.from_numpy(x) for m, x in inputs.items()}, torch.from_numpy(y),
                               batch_size, shuffle=shuffle and s == "train", seed=seed,
                               drop_last=drop_last and s == "train")
               for s, (inputs, y, _) in splits.items()}
    first = splits["train"][2]
    standin = is_standin(target)
    return Data("mosi", loaders["train"], loaders["val"], loaders["test"], Regression(),
                {m: first["shapes"][m][2] for m in MODALITIES}, standin=standin,
                info={"file": str(target), "layout": first["layout"], "standin": standin,
                      "sizes": {s: v[2]["n"] for s, v in splits.items()},
                      "seq_len": {m: first["shapes"][m][1] for m in MODALITIES},
                      "nonfinite_replaced": nonfinite, "shuffle_train": bool(shuffle),
                      "source": "stand-in written by cggm make-standin" if standin else "MulT/MMSA pickle",
                      "card": CARD})


def _absurd_message(file: Path, split: str, m: str, count: int, first: int, largest: float) -> str:
    return (f"CMU-MOSI: {file.name} {split}/{m} holds {count} value(s) with |x| > {limit_text(ABSURD)} (largest {largest:.3g}), "
            f"first at sample {first} of the {split} split: the file is damaged (training on it overflows); "
            f"download it again (see {CARD})")


def check(path, full: bool = False) -> DoctorReport:
    """`cggm doctor`: every MOSI pickle in `path` — keys, shapes, dtypes, labels, non-finite and absurd
    values, splits. A pickle has no header to read alone, so both modes read every pickle in full."""
    path = Path(path)
    report = DoctorReport("mosi", path)
    if not path.is_dir():
        report.add("folder", "missing", False, f"{path} does not exist; put the MulT pickles there "
                                               f"(see {CARD}) or run `cggm make-standin mosi --out {path.parent}`")
        return report
    report.add("stand-in", "yes (synthetic, STANDIN.json)" if is_standin(path) else "no")
    files = [path / f for f in (*FILES.values(), *MMSA_FILES) if (path / f).is_file()]
    if not files:
        present = sorted(p.name for p in path.iterdir())
        report.add("pickle", "none", False, f"{path} holds no MOSI pickle (found {present}); expected "
                                            f"{FILES[True]} and/or {FILES[False]} (see {CARD})")
    for file in files:
        try:
            obj = read_pickle(file)
        except DataError as err:
            report.add(file.name, "unreadable", False, str(err))
            continue
        stats = {}
        for key in SPLITS.values():
            try:
                _, _, st = split_arrays(obj[key], key, file)
            except DataError as err:
                report.add(f"{file.name} {key}", "invalid", False, str(err))
                continue
            stats[key] = st
            shapes = ", ".join(f"{m} {st['shapes'][m][1:]} {st['dtypes'][m]}" for m in MODALITIES)
            standard = "" if st["n"] == STANDARD_SIZES[key] else f" (MulT split has {STANDARD_SIZES[key]})"
            report.add(f"{file.name} {key}", f"N={st['n']}{standard} [{st['layout']}]: {shapes}")
            report.add(f"{file.name} {key} labels",
                       f"{st['label_shape']} in [{st['label_range'][0]:.2f}, {st['label_range'][1]:.2f}]")
            bad = {m: c for m, c in st["nonfinite"].items() if c}
            report.add(f"{file.name} {key} non-finite", f"{bad} -> replaced by 0 on load" if bad else "none")
            huge = {m: v for m, v in st["absurd"].items() if v[0]}
            report.add(f"{file.name} {key} |x| <= {limit_text(ABSURD)}", ", ".join(f"{m}: {v[0]} above" for m, v in huge.items())
                       or "yes", not huge, "; ".join(_absurd_message(file, key, m, *v) for m, v in huge.items()))
        if len(stats) == len(SPLITS):
            try:
                _check_dims(stats, file)
            except DataError as err:
                report.add(f"{file.name} feature sizes", "differ across splits", False, str(err))
    report.add("verified", f"read every key, shape and value of {len(files)}/{len(files)} pickle(s) "
               "(a pickle has no separate header)")
    return report
