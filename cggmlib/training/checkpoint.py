"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically, and the
loop's position (`LoopState`) and best epoch, which they carry.

`checkpoint.pt` holds model, optimizer, scheduler, GradScaler, strategy state (CGGM classifiers and
their optimizer, previous metrics, the pending L_gm), RNG states, the trace so far and the position
(epoch, batch), and the run's configuration; a first line holds the SHA-256 of the rest, so a damaged
file is refused by name instead of loaded (`read_checked`). `best.pt` holds the model weights (a plain
state_dict, loadable with `model.load_state_dict(torch.load(path))`) of the epoch selected on
validation, and `best_strategy.pt` the strategy's state of that epoch (its own heads, for strategies
that have them).
"""
from __future__ import annotations

import copy
import hashlib
import io
import pickle
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, config_diff
from ..errors import ResultsError
from ..files import atomic_torch_save, atomic_write_bytes


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


@dataclass
class LoopState:
    """Where the loop stands. It is checkpointed, so a resumed run continues at the same batch."""

    epoch: int = 0
    batch: int = 0
    """batches of `epoch` already trained (0: the epoch has not started)"""
    step: int = 0
    """optimisation steps taken so far"""
    best_epoch: int = -1
    """the epoch selected on validation so far (-1: none yet)"""
    best_value: float | None = None
    """its validation value of the task's selection metric"""
    skipped: int = 0
    """non-finite steps skipped so far"""


@dataclass
class Parts:
    """The objects a checkpoint saves and restores."""

    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    strategy: Any
    trace: Any
    cfg: Any = None


class Checkpointer:
    """Saves and restores a run's state in `folder` (checkpoint.pt, best.pt, best_strategy.pt).

    `folder=None`, or `writes=False` (a data-parallel rank other than 0), writes nothing; the best
    epoch's snapshot is still kept in memory, so the trained model is the selected one either way.
    """

    def __init__(self, folder, parts: Parts | None = None, writes: bool = True):
        self.folder = Path(folder) if folder is not None else None
        self.parts, self.writes = parts, writes and folder is not None
        if self.folder is not None:
            self.path, self.best_path = self.folder / "checkpoint.pt", self.folder / "best.pt"
            self.best_strategy_path = self.folder / "best_strategy.pt"
        self.best: dict | None = None  # the selected epoch's snapshot (`snapshot`)

    def start(self, resume: bool) -> LoopState:
        """The loop's state to start from: a fresh one, or (`resume`) checkpoint.pt restored into the parts
        together with the best epoch's snapshot. Removes temporaries a killed write left behind."""
        if self.writes:
            self.remove_stale_temporaries()
        if not resume or self.folder is None:
            return LoopState()
        self.require()
        state = self.restore(**vars(self.parts))
        if self.best_path.exists():
            self.best = self.load_best()
        return state

    def checkpoint(self, state: LoopState) -> None:
        """Write checkpoint.pt for `state` (nothing when this process writes nothing)."""
        if self.writes:
            self.save(**vars(self.parts), loop_state=state)

    def keep_best(self, state: LoopState, epoch: int, value: float) -> None:
        """Epoch `epoch` (validation `value`) is the best so far: record it and snapshot model and strategy."""
        state.best_epoch, state.best_value = epoch, value
        self.best = snapshot(self.parts.model, self.parts.strategy)
        if self.writes:
            self.save_best(self.best)

    def load_selected(self) -> None:
        """Load the best epoch's snapshot into the model and strategy (the run's result); no-op if none."""
        if self.best is not None:
            self.parts.model.load_state_dict(self.best["model"])
            self.parts.strategy.load_state_dict(self.best["strategy"])

    def remove_stale_temporaries(self) -> None:
        """Delete `.<name>.*.tmp` files that a killed atomic write left behind (never a real file)."""
        if self.folder is not None and self.folder.is_dir():
            for tmp in self.folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def exists(self) -> bool:
        return self.path.exists()

    def require(self) -> None:
        """Raise ResultsError unless checkpoint.pt exists (asked to resume, there must be something to resume)."""
        if not self.exists():
            raise ResultsError(f"--resume: {self.folder} holds no checkpoint.pt, so there is nothing to resume; "
                               "rerun without --resume to start this run from scratch")

    def save(self, model, optimizer, scheduler, scaler, strategy, trace, cfg=None, *, loop_state: LoopState) -> None:
        write_checked(self.path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "strategy": strategy.state_dict(), "rng": rng_state(), "loop": asdict(loop_state),
            "trace": trace.state_dict(), "config": cfg.to_dict() if cfg is not None else None,
        })

    def restore(self, model, optimizer, scheduler, scaler, strategy, trace, cfg=None) -> LoopState:
        """Load checkpoint.pt into the given objects; returns the loop's state (epoch, batch, best...).

        Refuses a damaged file (checksum) and, given `cfg`, a checkpoint of another configuration
        (a longer `epochs` continues the same run).
        """
        ckpt = read_checked(self.path)
        if cfg is not None and ckpt.get("config") is not None:
            stored = Config.from_dict(ckpt["config"] | {"device": cfg.device})
            if stored.key(("epochs",)) != cfg.key(("epochs",)):
                fields = "; ".join(config_diff(stored.to_dict(), cfg.to_dict(), ("epochs",))) or "the key changed"
                raise ResultsError(f"--resume: {self.path} was written by another configuration (fields that "
                                   f"differ: {fields}); resume with that configuration, or rerun without --resume")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        device = next(model.parameters()).device
        strategy.load_state_dict(to_device(ckpt["strategy"], device))
        trace.load_state_dict(ckpt["trace"])
        set_rng_state(ckpt["rng"])
        return LoopState(**ckpt["loop"])

    def save_best(self, best: dict) -> None:
        atomic_torch_save(best["strategy"], self.best_strategy_path)
        atomic_torch_save(best["model"], self.best_path)

    def load_best(self) -> dict:
        return {"model": _load_plain(self.best_path, weights_only=True),
                "strategy": _load_plain(self.best_strategy_path, weights_only=False)}


#: first line of a checkpoint file: a format tag and the SHA-256 of the torch.save payload after it
MAGIC = b"CGGMLIB-CHECKPOINT-1 sha256="


def write_checked(path, obj) -> Path:
    """torch.save `obj` behind a header line holding the payload's SHA-256, atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    return atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def read_checked(path) -> dict:
    """The object `write_checked` stored at `path`; ResultsError if the file is empty, cut short or altered."""
    path = Path(path)
    todo = "delete it (or the whole run folder) and rerun without --resume to train from scratch"
    data = path.read_bytes()
    if not data:
        raise ResultsError(f"checkpoint {path} is empty (a disk full or a copy that failed?); {todo}")
    head, _, payload = data.partition(b"\n")
    if not head.startswith(MAGIC):
        raise ResultsError(f"checkpoint {path} has no checksum header: it is damaged, or was written by an older "
                           f"cggmlib; {todo}")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(MAGIC):]:
        raise ResultsError(f"checkpoint {path} is damaged: its content does not match its SHA-256 checksum "
                           f"(cut short, or altered on disk); {todo}")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def _load_plain(path, weights_only: bool):
    """torch.load of a file kept loadable by plain torch (best.pt); a damaged one is named, not a torch traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise ResultsError(f"{path} cannot be read ({type(err).__name__}: {str(err)[:120]}); delete the run folder's "
                           f"checkpoints and rerun without --resume") from err


def snapshot(model, strategy) -> dict:
    """A CPU copy of the model's *and* the strategy's state (its own heads, e.g. unimodal, QMF): the best epoch."""
    return {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "strategy": copy.deepcopy(strategy.state_dict())}


def to_device(obj, device):
    """`obj` (tensors nested in dicts, lists, tuples) with every tensor moved to `device`."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
