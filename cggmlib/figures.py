"""Figures as pure functions of traces: each takes data (and `ax=None`), draws, returns the Axes or
Figure. They never call plt.show(); `save` owns file formats and atomic writes."""
from __future__ import annotations

from pathlib import Path


import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .runs import atomic_write_bytes

LABELS = {"acc_head": "ε of f_m (train batch)", "coeff": "gradient scale applied",
          "grad_norm": "‖∇ encoder‖ (before)", "grad_norm_mod": "‖∇ encoder‖ (after)",
          "cos_grad": "cos of out-layer ∇", "cos_weight": "cos of out-layer W",
          "loss_head": "loss of f_m", "balance": "B_m (no ρ)", "delta": "Δε_m"}
#: quantities whose official values can explode (reference §8): drawn on a symmetric log scale
HEAVY_TAILED = ("coeff", "balance", "l_gm")


def modality_columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(prefix + "/")]


def per_modality(steps: pd.DataFrame, prefix: str, ax=None, smooth: int = 20, title: str | None = None):
    """Each modality's `prefix/m` over training steps: running mean over `smooth` steps, or running
    median for heavy-tailed quantities (coefficients), whose rare ±1e6 values would swamp a mean."""
    ax = ax or plt.gca()
    cols = modality_columns(steps, prefix)
    for col in cols:
        window = steps[col].astype(float).rolling(smooth, min_periods=1)
        series = window.median() if prefix in HEAVY_TAILED else window.mean()
        ax.plot(steps["step"].to_numpy(), series.to_numpy(), label=col.split("/", 1)[1], lw=1.4)
    ax.set(xlabel="step", ylabel=LABELS.get(prefix, prefix), title=title or "")
    if prefix in HEAVY_TAILED and cols and steps[cols].abs().max().max() > 10:
        ax.set_yscale("symlog", linthresh=1.0)  # official B_m reaches ±1e6 when gains cancel
    if cols:
        ax.legend(frameon=False, fontsize="small")
    return ax


def dynamics(traces: dict[str, pd.DataFrame], quantities=("acc_head", "coeff", "grad_norm", "cos_grad"),
             smooth: int = 20, note: str | None = None):
    """A grid: one row per quantity, one column per run (e.g. {"joint": steps, "CGGM": steps})."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(len(quantities), len(traces), figsize=(4.6 * len(traces), 2.8 * len(quantities)),
                             sharex="col", sharey="row", squeeze=False)
    for j, (label, steps) in enumerate(traces.items()):
        for i, q in enumerate(quantities):
            per_modality(steps, q, ax=axes[i, j], smooth=smooth, title=label if i == 0 else None)
            if j:
                axes[i, j].set_ylabel("")
    if note:
        standin_note(fig, note)
    fig.tight_layout()
    return fig


STANDIN = "STAND-IN DATA: not the paper's dataset"
SYNTHETIC = "SYNTHETIC DATA: not a paper dataset"


def data_note(data_or_name, standin: bool = False) -> str | None:
    """The stamp a figure needs: SYNTHETIC for the toy benchmark, STAND-IN for stand-in files, else None."""
    name = getattr(data_or_name, "name", data_or_name)
    if name == "synthetic":
        return SYNTHETIC
    return STANDIN if standin or getattr(data_or_name, "standin", False) else None


def standin_note(fig, text: str = STANDIN) -> None:
    """Stamp a figure made from stand-in or synthetic data so it is never mistaken for a result."""
    fig.text(0.5, 0.5, text, fontsize=22, color="red", alpha=0.18, ha="center", va="center", rotation=20,
             transform=fig.transFigure, zorder=10)


def save(fig, stem, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write `stem`.png and `stem`.pdf atomically; returns the paths."""
    import io

    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(atomic_write_bytes(Path(f"{stem}.{fmt}"), buf.getvalue()))
    return paths


__all__ = ["data_note", "dynamics", "modality_columns", "per_modality", "save", "standin_note"]
