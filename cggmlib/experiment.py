"""`run_experiment(cfg)`: data → model → strategy → train → run folder, the path every notebook and
`cggm train` take. `cggm reproduce` reuses a completed folder whose configuration matches."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .analysis import evaluate_classifiers
from .config import Config
from .data import load_data
from .errors import ConfigError, ResultsError
from .models import build_model
from .modulation import make_strategy
from .distributed import is_main_process
from .runs import ensure_writable, load_run, save_run, seed_everything
from .protocol import TrainResult
from .train import train
from .trace import Trace


def run_experiment(cfg, out_dir=None, *, resume: bool = False, skip_done: bool = False,
                   progress: bool = True) -> TrainResult:
    """Train one configuration; with `out_dir`, checkpoint there and write the run folder."""
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and skip_done and (out / "metrics.json").exists():
        done = load_run(out)
        if Config.from_dict(done["config"] | {"device": "cpu"}).key() == cfg.key():  # device, data root: free
            return TrainResult(Trace(done["trace"].to_dict("records")), done["metrics"],
                               done["metrics"].get("best_epoch", -1), 0.0)
        raise ResultsError(f"{out} holds a completed run of a different configuration; "
                           "choose another --out folder or delete that one")
    if out is not None:
        ensure_writable(out)  # fail before training, not after it
    seed_everything(cfg.seed)  # the model's initial weights depend on the seed too
    data = load_data(cfg.dataset, cfg.data_root, batch_size=cfg.batch_size, seed=cfg.seed, **cfg.data_kwargs)
    if cfg.task_kwargs:
        data.task = task_with(data.task, cfg.task_kwargs)
    model = build_model(cfg.dataset, data, cfg.preset, **cfg.model_kwargs)
    strategy = make_strategy(cfg.strategy, **cfg.strategy_kwargs)
    result = train(model, strategy, data, cfg, out_dir=out, resume=resume, progress=progress)
    if getattr(strategy, "classifiers", None) is not None:
        # what each encoder can do alone: f_m on frozen encoder m, held-out test split (paper Table 5)
        result.metrics["classifiers"] = evaluate_classifiers(model, strategy, data.test, data.task)
    if out is not None and is_main_process():  # under torchrun only rank 0 writes the run folder
        save_run(out, cfg, result, data)
    return result


def task_with(task, options: dict):
    """A copy of `task` with some of its dataclass fields changed; unknown names are a ConfigError."""
    known = {f.name for f in dataclasses.fields(task) if f.init}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"task_kwargs: {type(task).__name__} has no option {unknown}; it has {sorted(known)}")
    return dataclasses.replace(task, **options)
