"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

`checkpoint.pt` holds model, optimizer, scheduler, GradScaler, strategy state (CGGM classifiers and
their optimizer, previous metrics, the pending L_gm), RNG states, the trace so far and the position
(epoch, batch). `best.pt` holds the model weights (a plain state_dict, loadable with
`model.load_state_dict(torch.load(path))`) of the epoch selected on validation, and
`best_strategy.pt` the strategy's state of that epoch (its own heads, for strategies that have them).
"""
from __future__ import annotations

import copy

import random
from pathlib import Path

import numpy as np
import torch

from .runs import atomic_torch_save


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and restores the loop's state in `folder` (checkpoint.pt, best.pt)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path, self.best_path = self.folder / "checkpoint.pt", self.folder / "best.pt"
        self.best_strategy_path = self.folder / "best_strategy.pt"

    def remove_stale_temporaries(self) -> None:
        """Delete `.<name>.*.tmp` files that a killed atomic write left behind (never a real file)."""
        if self.folder.is_dir():
            for tmp in self.folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, model, optimizer, scheduler, scaler, strategy, loop_state: dict, trace) -> None:
        atomic_torch_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "strategy": strategy.state_dict(), "rng": rng_state(), "loop": dict(loop_state),
            "trace": trace.state_dict(),
        }, self.path)

    def restore(self, model, optimizer, scheduler, scaler, strategy, trace) -> dict:
        """Load checkpoint.pt into the given objects; returns the loop state (epoch, batch, best...)."""
        ckpt = torch.load(self.path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        device = next(model.parameters()).device
        strategy.load_state_dict(_to_device(ckpt["strategy"], device))
        trace.load_state_dict(ckpt["trace"])
        set_rng_state(ckpt["rng"])
        return ckpt["loop"]

    def save_best(self, best: dict) -> None:
        atomic_torch_save(best["strategy"], self.best_strategy_path)
        atomic_torch_save(best["model"], self.best_path)

    def load_best(self) -> dict:
        return {"model": torch.load(self.best_path, map_location="cpu", weights_only=True),
                "strategy": torch.load(self.best_strategy_path, map_location="cpu", weights_only=False)}


def snapshot(model, strategy) -> dict:
    """A CPU copy of the model's *and* the strategy's state (its own heads, e.g. unimodal, QMF): the best epoch."""
    return {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "strategy": copy.deepcopy(strategy.state_dict())}


def _to_device(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
