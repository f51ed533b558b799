"""`run_experiment(cfg)`: data → model → strategy → train → run folder, the path every notebook and
`cggm train` take. `cggm reproduce` reuses a completed folder whose configuration matches."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .config import config_diff, stored_key
from .data import load_data
from .errors import ConfigError, ResultsError
from .files import atomic_write_json, ensure_writable
from .models import build_model
from .modulation import make_strategy
from .options import coerce, dataclass_options, unknown_message
from .runs.folder import load_run, save_run, seed_everything
from .runs.lock import move_aside, run_folder_lock
from .train import train
from .training.checkpoint import Checkpointer
from .training.distributed import is_main_process
from .training.protocol import TrainResult, evaluate_classifiers
from .training.trace import Trace


def run_experiment(cfg, out_dir=None, *, resume: bool = False, skip_done: bool = False, overwrite: bool = False,
                   progress: bool = True, on_step=None) -> TrainResult:
    """Train one configuration; with `out_dir`, checkpoint there and write the run folder.

    The folder belongs to one configuration (see `own_folder`) and is locked while this runs.
    `skip_done`: return a completed run of the same configuration instead of training it again.
    `overwrite`: move a run of another configuration aside (to `.superseded/`) instead of refusing.
    `on_step`: an observer called after every optimisation step (see `train`); only without `out_dir`,
    since a run folder records what was trained, not what was observed along the way.
    """
    if out_dir is None:
        return _train(cfg, None, False, progress, on_step)
    if on_step is not None:
        raise ConfigError("run_experiment: on_step observes a run without a folder (out_dir=None)")
    out = ensure_writable(out_dir)  # fail before training, not after it
    if not launched_as_main():  # other torchrun ranks read the folder, never own it or write it
        return _train(cfg, out, resume, progress)
    with run_folder_lock(out):
        if skip_done and (out / "metrics.json").exists() and stored_key(out) == cfg.key():
            done = load_run(out)
            return TrainResult(Trace(done["trace"].to_dict("records")), done["metrics"],
                               done["metrics"].get("best_epoch", -1), 0.0)
        own_folder(out, cfg, resume=resume, overwrite=overwrite)
        return _train(cfg, out, resume, progress)


def own_folder(out: Path, cfg, *, resume: bool, overwrite: bool) -> None:
    """Make `out` this configuration's run folder, or refuse: a folder holds one configuration's run.

    A run (completed, or started: config.json is written first) of another configuration is moved to
    `<parent>/.superseded/<name>-<time>/` with `overwrite`, else refused, naming the fields that differ.
    With `resume`, a longer `epochs` is the same run continued; a missing checkpoint is an error.
    """
    ignore = ("epochs",) if resume else ()
    stored = _read_config(out)
    other = stored is not None and stored_key(out, ignore) != cfg.key(ignore)
    if other:
        done = "a completed" if (out / "metrics.json").exists() else "an unfinished"
        if not overwrite:
            fields = "; ".join(config_diff(stored, cfg.to_dict(), ignore)) or "none shown (the key changed)"
            raise ResultsError(f"{out} holds {done} run of another configuration (fields that differ: {fields}); "
                               "choose another --out folder, or pass --overwrite (overwrite=True) to move it aside")
        aside = move_aside(out, out.parent / ".superseded")
        print(f"moved {done} run of another configuration from {out} to {aside}")
    if resume:
        Checkpointer(out).require()
        if stored is not None and not other:
            # config.json keeps describing what the folder holds (e.g. a completed shorter run) until the
            # resumed run completes and save_run writes it: a resume that fails must not relabel that run
            return
    atomic_write_json(out / "config.json", cfg.to_dict())  # the folder's owner, before any training


def launched_as_main() -> bool:
    """Rank 0 of a torchrun launch (RANK), or no launcher; true before torch.distributed is initialised."""
    return os.environ.get("RANK", "0") == "0" and is_main_process()


def _read_config(out: Path) -> dict | None:
    path = out / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def _train(cfg, out, resume: bool, progress: bool, on_step=None) -> TrainResult:
    seed_everything(cfg.seed)  # the model's initial weights depend on the seed too
    data = load_data(cfg.dataset, cfg.data_root, batch_size=cfg.batch_size, seed=cfg.seed, **cfg.data_kwargs)
    if cfg.task_kwargs:
        data.task = task_with(data.task, cfg.task_kwargs)
    model = build_model(cfg.dataset, data, cfg.preset, **cfg.model_kwargs)
    strategy = make_strategy(cfg.strategy, **cfg.strategy_kwargs)
    result = train(model, strategy, data, cfg, out_dir=out, resume=resume, progress=progress, on_step=on_step)
    if getattr(strategy, "classifiers", None) is not None:
        # what each encoder can do alone: f_m on frozen encoder m, held-out test split (paper Table 5)
        result.metrics["classifiers"] = evaluate_classifiers(model, strategy, data.test, data.task)
    if out is not None and is_main_process():  # under torchrun only rank 0 writes the run folder
        save_run(out, cfg, result, data)
    return result


def task_with(task, options: dict):
    """A copy of `task` with some of its dataclass fields changed, typed as the fields declare (text
    from the command line is parsed: `smooth_numerator=yes`); an unknown name is a ConfigError."""
    known = {name: o for name, o in dataclass_options(type(task)).items()
             if next(f for f in dataclasses.fields(task) if f.name == name).init}
    for name in options:
        if name not in known:
            raise ConfigError(unknown_message(name, known, f"task_kwargs: {type(task).__name__} has no option"))
    return dataclasses.replace(task, **{k: coerce(v, known[k], "task option") for k, v in options.items()})
