"""Figures as pure functions of traces: each takes data (and `ax=None`), draws, returns the Axes or
Figure. They never call plt.show(); `save` owns file formats and atomic writes."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..files import atomic_write_bytes

LABELS = {"acc_head": "ε of f_m (train batch)", "coeff": "gradient scale applied",
          "grad_norm": "‖∇ encoder‖ (before)", "grad_norm_mod": "‖∇ encoder‖ (after)",
          "cos_grad": "cos of out-layer ∇", "cos_weight": "cos of out-layer W",
          "loss_head": "loss of f_m", "balance": "B_m (no ρ)", "delta": "Δε_m"}
#: quantities whose official values can explode (docs/methods.md, edge cases): drawn on a symmetric log scale
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


# --- the paper's figures (Guo et al., NeurIPS 2024) --------------------------

FUSED = ("val/acc2", "val/acc", "val/dice_mean")


def modality_dynamics(trace: pd.DataFrame, title: str = "", note: str | None = None, smooth: int = 10):
    """Figs. 2 and 3: (a) ε of each classifier f_m (train batch) and the fused validation metric,
    (b) ‖∇θ^{φ_m} L‖₂ each encoder received (after any modulation), (c) cos between the output-layer
    gradients of f_m and of the fused head; per-step curves, running mean over `smooth` steps."""
    steps = trace[trace["step"].notna()].reset_index(drop=True)
    epochs = trace[trace["step"].isna()]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    per_modality(steps, "acc_head", ax=axes[0], smooth=smooth, title="(a) performance")
    fused = next((c for c in FUSED if c in epochs and epochs[c].notna().any()), None)
    if fused:
        ends = steps.groupby("epoch")["step"].max()
        vals = epochs.dropna(subset=[fused]).set_index("epoch")[fused]
        x = [ends.get(e, math.nan) for e in vals.index]
        axes[0].plot(x, vals.to_numpy(), "k--o", ms=4, lw=1.2, label=f"fusion ({fused})")
        axes[0].legend(frameon=False, fontsize="small")
    per_modality(steps, "grad_norm_mod", ax=axes[1], smooth=smooth, title="(b) gradient magnitude")
    if modality_columns(steps, "grad_norm_mod"):
        axes[1].set_yscale("log")
    per_modality(steps, "cos_grad", ax=axes[2], smooth=smooth, title="(c) direction: cos to the fused head")
    fig.suptitle(title)
    if note:
        standin_note(fig, note)
    fig.tight_layout()
    return fig


def joint_dynamics(trace: pd.DataFrame, dataset: str = "mosi", note: str | None = None):
    """Paper Figure 2 (file fig2_<dataset>_joint): per-modality dynamics of joint training on `dataset` (the paper: CMU-MOSI)."""
    return modality_dynamics(trace, f"Figure 2: joint training ({dataset})", note)


def cggm_dynamics(trace: pd.DataFrame, dataset: str = "mosi", note: str | None = None):
    """Paper Figure 3 (file fig3_<dataset>_cggm): the same per-modality dynamics with CGGM."""
    return modality_dynamics(trace, f"Figure 3: CGGM ({dataset})", note)


def gradient_tsne(points: pd.DataFrame, ax=None, title: str = ""):
    """Fig. 4 panel: t-SNE points (x, y) coloured by modality, ● classifier gradient, ✕ unimodal gradient."""
    ax = ax or plt.gca()
    colours = dict(zip(sorted(points["modality"].unique()), sns.color_palette("tab10")))
    for (m, source), sub in points.groupby(["modality", "source"]):
        ax.scatter(sub["x"], sub["y"], s=22, c=[colours[m]], marker="o" if source == "classifier" else "x",
                   label=f"{m} · {source}", alpha=0.85, linewidths=1.2)
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(frameon=False, fontsize="x-small", ncol=2)
    return ax


def gradient_tsne_by_dataset(embeddings: dict[str, pd.DataFrame], notes: dict[str, str | None] | None = None):
    """Paper Figure 4 (file fig4_gradient_tsne): one t-SNE panel per dataset of classifier and unimodal gradients
    (one point per batch)."""
    sns.set_theme(style="white", context="notebook")
    fig, axes = plt.subplots(1, max(1, len(embeddings)), figsize=(4.6 * max(1, len(embeddings)), 4.4), squeeze=False)
    for ax, (d, pts) in zip(axes[0], embeddings.items()):
        gradient_tsne(pts, ax=ax, title=d + (" (stand-in)" if (notes or {}).get(d) == STANDIN else ""))
    fig.suptitle("Figure 4: t-SNE of classifier gradients (●) and unimodal gradients (✕)")
    stamp = next((n for n in (notes or {}).values() if n), None)
    if stamp:
        standin_note(fig, stamp)
    fig.tight_layout()
    return fig


def sensitivity(frame: pd.DataFrame, param: str, ax=None, symbol: str = ""):
    """Fig. 5 panel: improvement over joint training (percentage points, mean ± std over seeds) per value."""
    ax = ax or plt.gca()
    sub = frame[frame["param"] == param]
    values = sorted(sub["value"].unique())
    metrics = list(dict.fromkeys(sub["metric"]))
    width = 0.8 / max(1, len(metrics))
    for k, metric in enumerate(metrics):
        rows = sub[sub["metric"] == metric].set_index("value").reindex(values)
        xs = [i + (k - (len(metrics) - 1) / 2) * width for i in range(len(values))]
        ax.bar(xs, 100 * rows["mean"], width, yerr=100 * rows["std"].fillna(0), capsize=3, label=metric.upper())
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
    ax.set(xlabel=symbol or param, ylabel="improvement over joint (pp)")
    if metrics:
        ax.legend(frameon=False)
    return ax


def rho_lambda_sensitivity(frame: pd.DataFrame, dataset: str = "iemocap", note: str | None = None):
    """Paper Figure 5 (file fig5_iemocap_sensitivity): sensitivity to ρ (a) and λ (b) on `dataset` (the paper: IEMOCAP)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    sensitivity(frame, "rho", ax=axes[0], symbol="ρ").set_title("(a) ρ")
    sensitivity(frame, "lam", ax=axes[1], symbol="λ").set_title("(b) λ")
    fig.suptitle(f"Figure 5: improvement of CGGM over joint training ({dataset})")
    if note:
        standin_note(fig, note)
    fig.tight_layout()
    return fig


def modality_losses(traces: dict[str, pd.DataFrame], note: str | None = None, smooth: int = 10):
    """Paper Figure 6 (file fig6_<dataset>_losses): each modality classifier's loss over training, one panel per run
    ((a) joint, (b)–(d) CGGM)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, max(1, len(traces)), figsize=(4.2 * max(1, len(traces)), 3.6), sharey=True, squeeze=False)
    for k, (ax, (label, steps)) in enumerate(zip(axes[0], traces.items())):
        per_modality(steps, "loss_head", ax=ax, smooth=smooth, title=f"({'abcdefgh'[k]}) {label}")
    fig.suptitle("Figure 6: per-modality losses without and with CGGM")
    if note:
        standin_note(fig, note)
    fig.tight_layout()
    return fig


def balance_terms(steps: pd.DataFrame, rho: float, ax=None, smooth: int = 10, title: str = ""):
    """ρ·B_m (Eq. 7, ρ inside) per step and modality, running median, with the line B = 1 where a
    gradient is left unchanged (above: promoted, below: suppressed)."""
    ax = ax or plt.gca()
    scaled = steps[["step"]].copy()
    for col in modality_columns(steps, "balance"):
        scaled[col] = rho * steps[col].astype(float)
    per_modality(scaled, "balance", ax=ax, smooth=smooth, title=title)
    ax.axhline(1.0, color="red", lw=1.2, label="B = 1 (gradient unchanged)")
    ax.set_ylabel("ρ · B_m")
    ax.legend(frameon=False, fontsize="small")
    return ax


def balance_over_training(steps: pd.DataFrame, rho: float, dataset: str = "iemocap", note: str | None = None, smooth: int = 10):
    """Paper Figure 7 (file fig7_<dataset>_balance): the balancing term of each modality over training iterations
    (a CGGM run on `dataset`)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    balance_terms(steps, rho, ax=ax, smooth=smooth, title=f"Figure 7: balancing term ρ·B_m during training ({dataset})")
    if note:
        standin_note(fig, note)
    fig.tight_layout()
    return fig


#: the paper's figure numbers -> the function that draws each (the notebooks save them as fig<N>_*.png)
PAPER_FIGURES = {"fig2": joint_dynamics, "fig3": cggm_dynamics, "fig4": gradient_tsne_by_dataset,
                 "fig5": rho_lambda_sensitivity, "fig6": modality_losses, "fig7": balance_over_training}

__all__ = ["PAPER_FIGURES", "balance_over_training", "balance_terms", "cggm_dynamics", "data_note", "dynamics",
           "gradient_tsne", "gradient_tsne_by_dataset", "joint_dynamics", "modality_columns", "modality_dynamics",
           "modality_losses", "per_modality", "rho_lambda_sensitivity", "save", "sensitivity", "standin_note"]
