"""A run folder: seeding, `save_run` (config.json, trace.jsonl, run card, metrics.json), `load_run`, its place
under results/, and the epoch progress bar.

A run folder is complete exactly when `metrics.json` exists: it is written last, atomically, so a
killed run never leaves a file that a later step could mistake for a result.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import ResultsError
from ..files import atomic_write_json, describe_os_error, read_json, read_jsonl
from .card import run_card


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); make CPU kernels deterministic where possible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def save_run(out_dir, cfg, result, data=None) -> Path:
    """Write config.json, trace.jsonl, run_card.json, then metrics.json (last: it marks completion)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResultsError(describe_os_error(out, err)) from err
    atomic_write_json(out / "config.json", cfg.to_dict())
    result.trace.save(out / "trace.jsonl")
    atomic_write_json(out / "run_card.json", run_card(cfg, data, result.wall_time_s))
    atomic_write_json(out / "metrics.json", result.metrics)
    return out


def load_run(run_dir) -> dict:
    """{"config", "metrics", "run_card", "trace"} of a completed run folder."""
    d = Path(run_dir)
    if not (d / "metrics.json").exists():
        raise ResultsError(f"{d} holds no completed run (metrics.json is missing)")
    return {"config": read_json(d / "config.json"), "metrics": read_json(d / "metrics.json"),
            "run_card": read_json(d / "run_card.json"),
            "trace": pd.DataFrame(read_jsonl(d / "trace.jsonl")) if (d / "trace.jsonl").exists() else None}


def run_dir(results: str | Path, profile: str, cfg) -> Path:
    """results/<profile>/<dataset>/<strategy>/seed<k>/ (the layout every report reads)."""
    return Path(results) / profile / cfg.dataset / cfg.strategy / f"seed{cfg.seed}"


def progress_bar(iterable, enabled: bool, initial: int = 0):
    """One bar over epochs: a widget in JupyterLab, a few lines in papermill logs, nothing if disabled."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc="epochs", disable=not enabled, initial=initial, mininterval=2.0, leave=True)


