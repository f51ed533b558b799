"""Data preparation and inspection for the 01_data_* notebooks: doctor, stand-in when allowed, sizes,
label distributions and example inputs (feature sequences, a food image with its text, an MRI slice
with its tumour mask). Figures are pure (return a Figure); the summary feeds Table 1."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import DATASETS
from ..data.base import card
from ..data.standins import STANDINS, check_size, folder_state, write_standin
from ..errors import DataError
from ..files import atomic_write_json
from ..runs.checksums import listing_fingerprint


def prepare(dataset: str, data_root, allow_standin: bool = False, standin_size: dict | None = None,
            full: bool = False):
    """Check `data_root/<dataset>` with its doctor (`full`: decode every file); write a stand-in there
    first (of `standin_size`) when the folder is absent, or holds nothing but empty folders and
    temporary files of a failed write, and `allow_standin`. Returns the DoctorReport; raises DataError
    listing the problems.

    The stand-in is written into a temporary sibling folder and renamed into place, under a lock: a
    second `reproduce` on the same data root waits for the first and then uses its stand-in.
    """
    folder = Path(data_root) / dataset
    state = folder_state(folder, dataset) if dataset in STANDINS else ("present" if folder.is_dir() else "absent")
    if state in ("absent", "empty"):
        if not allow_standin:
            raise DataError(f"{dataset} is not in {folder}: put the real data there, point --data-root at it, or "
                            f"run the smoke profile (it writes a stand-in)", path=folder, card=card(dataset))
        write_standin(dataset, data_root, reuse=True, **(standin_size or {}))
    elif state == "standin" and allow_standin:
        check_size(dataset, folder, standin_size)
    report = importlib.import_module(f"..data.{DATASETS[dataset]}", __package__).check(folder, full=full)
    if not report.ok:
        raise DataError(f"cggm doctor found {len(report.problems)} problem(s) in {folder}:\n    "
                        + "\n    ".join(report.problems), path=folder, card=card(dataset))
    return report


def doctor_table(report) -> pd.DataFrame:
    return pd.DataFrame(report.rows, columns=["check", "value", "ok"])


def split_sizes(data) -> dict:
    """Samples per split, counted from the loaders."""
    return {s: int(sum(len(b) for b in getattr(data, s))) for s in ("train", "val", "test")}


def label_table(data) -> pd.DataFrame:
    """Per split: class counts (classification), counts of the rounded score (regression, −3..3), or the
    fraction of pixels per class (segmentation: 0 background, 1 NCR, 2 ED, 3 ET)."""
    kind = data.task.kind
    columns = {}
    for split in ("train", "val", "test"):
        counts: dict = {}
        for batch in getattr(data, split):
            t = batch.target.detach().cpu()
            values = t.flatten().clamp(-3, 3).round().long() if kind == "regression" else t.flatten().long()
            uniq, n = np.unique(values.numpy(), return_counts=True)
            for u, c in zip(uniq.tolist(), n.tolist()):
                counts[u] = counts.get(u, 0) + c
        total = sum(counts.values()) or 1
        columns[split] = {k: (v / total if kind == "segmentation" else v) for k, v in sorted(counts.items())}
    frame = pd.DataFrame(columns).fillna(0)
    frame.index.name = {"regression": "rounded score", "segmentation": "pixel class"}.get(kind, "class")
    return frame


def summary(data, report=None, data_root=None) -> dict:
    """What Table 1 and the index need: task, modalities, input shapes, sizes, stand-in or real, checks,
    and (with `data_root`) the fingerprint of the file listing, so an unchanged dataset is not re-prepared."""
    return {"fingerprint": listing_fingerprint(data.name, data_root) if data_root is not None else None,"dataset": data.name, "task": data.task.kind, "modalities": list(data.input_dims),
            "input_dims": {m: list(d) if isinstance(d, (tuple, list)) else d for m, d in data.input_dims.items()},
            "sizes": split_sizes(data), "standin": bool(data.standin),
            "doctor": None if report is None else {"ok": report.ok, "checks": len(report.rows)},
            "source": data.info.get("source"), "card": card(data.name)}


def save_summary(info: dict, out_dir) -> Path:
    return atomic_write_json(Path(out_dir) / f"{info['dataset']}.json", info)


def plot_labels(table: pd.DataFrame, ax=None, title: str = "", note: str | None = None):
    """Bars of `label_table`, as fractions of each split; stamped with `note` (stand-in data)."""
    import matplotlib.pyplot as plt

    from .figures import standin_note

    ax = ax or plt.gca()
    norm = table / table.sum()
    norm.plot.bar(ax=ax, rot=0)
    ax.set(ylabel="fraction of the split", title=title or "label distribution")
    if note:
        standin_note(ax.figure, note)
    return ax


def plot_sequences(batch, index: int = 0, note: str | None = None):
    """One sample's feature sequence per modality (time × feature heatmaps) and its target."""
    import matplotlib.pyplot as plt

    from .figures import standin_note

    mods = list(batch.inputs)
    fig, axes = plt.subplots(1, len(mods), figsize=(4.5 * len(mods), 3.2), squeeze=False)
    for ax, m in zip(axes[0], mods):
        x = batch.inputs[m][index].float().cpu().numpy()
        x = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x[None]
        im = ax.imshow(x.T, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(title=f"{m}: {tuple(batch.inputs[m][index].shape)}", xlabel="time step", ylabel="feature")
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(f"sample {index}, target {batch.target[index].tolist()}")
    if note:
        standin_note(fig, note)
    fig.tight_layout()
    return fig


def plot_mri(batch, index: int = 0, note: str | None = None):
    """One axial slice per MRI modality and the tumour mask (1 NCR, 2 ED, 3 ET) over FLAIR."""
    import matplotlib.pyplot as plt

    from .figures import standin_note

    mods = list(batch.inputs)
    fig, axes = plt.subplots(1, len(mods) + 1, figsize=(3.2 * (len(mods) + 1), 3.4))
    for ax, m in zip(axes, mods):
        ax.imshow(batch.inputs[m][index, 0].float().cpu().numpy(), cmap="gray")
        ax.set(title=m, xticks=[], yticks=[])
    mask = batch.target[index].cpu().numpy().astype(float)
    axes[-1].imshow(batch.inputs[mods[0]][index, 0].float().cpu().numpy(), cmap="gray")
    axes[-1].imshow(np.ma.masked_where(mask == 0, mask), cmap="autumn", alpha=0.6, vmin=1, vmax=3)
    case = (batch.meta.get("case") or ["?"] * (index + 1))[index]
    axes[-1].set(title=f"tumour mask over {mods[0]}", xticks=[], yticks=[])
    fig.suptitle(f"case {case}: one axial slice")
    if note:
        standin_note(fig, note)
    fig.tight_layout()
    return fig


def plot_food(folder, count: int = 4, split: str = "train", note: str | None = None):
    """`count` recipes of train.json: the image, its class and the first words of its text."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from .figures import standin_note

    folder = Path(folder)
    rows = json.loads((folder / f"{split}.json").read_text())[:count]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows), 4.0), squeeze=False)
    for ax, row in zip(axes[0], rows):
        path = Path(row["img_path"]) if Path(row["img_path"]).is_absolute() else folder / row["img_path"]
        ax.imshow(Image.open(path).convert("RGB"))
        words = " ".join(row["text_tokens"][:12])
        ax.set(title=row["label"], xticks=[], yticks=[])
        ax.set_xlabel("\n".join(words[i:i + 34] for i in range(0, len(words), 34)), fontsize=8)
    if note:
        standin_note(fig, note)
    fig.tight_layout()
    return fig


__all__ = ["doctor_table", "label_table", "plot_food", "plot_labels", "plot_mri", "plot_sequences", "prepare",
           "save_summary", "split_sizes", "summary"]
