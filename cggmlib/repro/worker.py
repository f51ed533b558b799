"""What the worker notebook (10_train) calls: `train_or_load` a run, then `finish_run` it; and `load_trained`.

- `finish_run` (the worker notebook's last step): completes the run card with the checksums of the
  data files the run read (when the loader recorded none) and writes the extra result files a
  figure or table needs: `gradients.npz` (Fig. 4) and `memory.json` (Table 8). Each is written atomically and only when missing, so a killed
  worker is finished by rerunning it, without training again.
- `load_trained(run_dir)`: data, model and strategy of a completed run with the weights of its
  validation-selected epoch.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..analysis import gradients
from ..bench.memory import classifier_memory
from ..config import Config, stored_key
from ..data import load_data
from ..errors import ResultsError
from ..experiment import run_experiment
from ..files import atomic_write_json
from ..models import build_model
from ..modulation import make_strategy
from ..runs.checksums import data_checksums
from ..runs.folder import load_run, seed_everything
from ..runs.lock import claim
from ..training.checkpoint import Checkpointer, read_checked, to_device
from ..training.protocol import TrainResult
from ..training.trace import Trace
from .pipeline import ARTIFACTS


def train_or_load(cfg, out_dir, progress: bool = True):
    """The worker's run: claim the folder; a completed run of the same configuration is loaded (its
    model is rebuilt only if an extra result file needs it), otherwise training resumes or starts."""

    claim(out_dir)
    out = Path(out_dir)
    if (out / "metrics.json").exists() and stored_key(out) == cfg.key():
        done = load_run(out)
        return TrainResult(Trace(done["trace"].to_dict("records")), done["metrics"],
                           done["metrics"].get("best_epoch", -1), 0.0)
    if (out / "metrics.json").exists():
        raise ResultsError(f"{out} holds a completed run of another configuration; choose another out_dir")
    return run_experiment(cfg, out, resume=(out / "checkpoint.pt").exists(), progress=progress)


def finish_run(out_dir, result, artifacts=(), cache_dir=None, gradient_batches: int = 32) -> dict:
    """Complete the run card and write the missing extra result files; returns {name: path} written."""

    out = Path(out_dir)
    config = json.loads((out / "config.json").read_text())
    card = json.loads((out / "run_card.json").read_text())
    written = {}
    if "data_receipt" not in card:
        files, how = card.get("data_files") or {}, "recorded by the loader"
        if not files:
            files, how = data_checksums(config["dataset"], config["data_root"], cache_dir)
        atomic_write_json(out / "run_card.json", card | {"data_files": files, "data_receipt": how})
        written["run_card"] = out / "run_card.json"
    todo = [a for a in artifacts if not (out / ARTIFACTS[a]).exists()]
    if not todo:
        return written
    run = result if getattr(result, "model", None) is not None else load_trained(out)
    model, strategy, data = run.model, run.strategy, run.data
    if "gradients" in todo:
        written["gradients"] = out / ARTIFACTS["gradients"]
        gradients.save(gradients.collect(model, strategy, data, batches=gradient_batches), written["gradients"])
    if "memory" in todo:
        mem = classifier_memory(model, data, config["strategy_kwargs"] if config["strategy"] == "cggm" else {})
        written["memory"] = atomic_write_json(out / ARTIFACTS["memory"], mem | {"dataset": config["dataset"],
                                                                                "standin": data.standin})
    return written


def load_trained(run_dir, device: str = "auto", data_root=None):
    """A completed run rebuilt: TrainResult with model and strategy at the validation-selected epoch."""

    d = Path(run_dir)
    done = load_run(d)
    cfg = Config.from_dict(done["config"] | {"device": device} | ({"data_root": str(data_root)} if data_root else {}))
    seed_everything(cfg.seed)
    data = load_data(cfg.dataset, cfg.data_root, batch_size=cfg.batch_size, seed=cfg.seed, **cfg.data_kwargs)
    model = build_model(cfg.dataset, data, cfg.preset, **cfg.model_kwargs).to(cfg.device)
    strategy = make_strategy(cfg.strategy, **cfg.strategy_kwargs)
    strategy.setup(model, data)
    ckpt = Checkpointer(d)
    if ckpt.best_path.exists():
        state = ckpt.load_best()
    else:  # no epoch improved on validation: the last state
        last = read_checked(ckpt.path)
        state = {"model": last["model"], "strategy": last["strategy"]}
    model.load_state_dict(state["model"])
    strategy.load_state_dict(to_device(state["strategy"], torch.device(cfg.device)))
    trace = Trace(done["trace"].to_dict("records")) if done["trace"] is not None else Trace()
    return TrainResult(trace, done["metrics"], done["metrics"].get("best_epoch", -1), 0.0, model, strategy, data)


__all__ = ["finish_run", "load_trained", "train_or_load"]
