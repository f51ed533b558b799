"""Executing the steps that cggmlib/repro/pipeline.py plans, on this machine: notebooks through papermill,
atomically, in jobs (the Slurm executor, cggmlib/repro/slurm.py, runs each step through `run_step` too).

- Every executed notebook is written to a hidden `.<name>.<pid>.partial.ipynb` and renamed into place only
  when it ran to the end; a failed one is kept as `<name>.failed.ipynb` with its traceback, so no
  reader can mistake either for a result.
- Worker runs that are complete for their configuration are skipped without starting a kernel; the
  others resume from their checkpoint. Each run folder is claimed with a file lock by the kernel that
  trains it, so a rerun never trains a folder that an orphaned kernel is still writing.
- `--jobs N` runs worker and report notebooks in N processes, each with `threads` CPU threads and,
  on a machine with several GPUs, pinned to one GPU through CUDA_VISIBLE_DEVICES.
- Workers and kernels end when the process that started them dies, however it dies, and a rerun
  reports any process an earlier pipeline left working in its results (cggmlib/repro/processes.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from .. import errors
from ..errors import CGGMError, ConfigError
from ..files import atomic_write_json
from ..runs.checksums import listing_fingerprint
from ..runs.lock import move_aside
from .dryrun import drop_checkpoints, dry_run_parameters, keeps_weights, reuse_shape
from .pipeline import Profile, Step
from .processes import die_with_parent, kernel_manager_class
from .reports import spec_status

#: kernels draw figures into the executed notebooks, whatever MPLBACKEND the caller uses (make sets Agg)
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}
ERRORS = {name: getattr(errors, name) for name in ("ConfigError", "DataError", "ResultsError", "NumericsError")}


def notebooks_folder(notebooks=None) -> Path:
    """The repository's notebooks/ (cggm reproduce runs from a clone: `pip install -e .`)."""
    for candidate in [notebooks, Path(__file__).resolve().parents[2] / "notebooks", Path.cwd() / "notebooks"]:
        if candidate and (Path(candidate) / "10_train.ipynb").is_file():
            return Path(candidate).resolve()
    raise ConfigError("cggm reproduce needs the notebooks/ folder of a clone of the companion: git clone it, "
                      "`pip install -e .` inside it and run from there (or pass --notebooks DIR)")


def execute(notebook, output, parameters: dict, cwd, env: dict | None = None) -> float:
    """Run `notebook` with papermill into `output` (atomically); seconds taken. Failures raise the
    cggmlib error the notebook raised (ConfigError, DataError, ...) naming the failed copy."""
    import papermill as pm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(output.parent)
    tmp = output.with_name(f".{output.stem}.{os.getpid()}.partial.ipynb")  # one per writer: never shared
    started = time.time()
    with environment(env or {}):
        try:
            pm.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name="python3",
                                progress_bar=False, cwd=str(cwd), log_output=False,
                                kernel_manager_class=kernel_manager_class(),  # dies with this process
                                extra_arguments=["--log-level=CRITICAL"])  # no kernel start-up chatter
        except pm.PapermillExecutionError as err:
            failed = output.with_name(output.stem + ".failed.ipynb")
            os.replace(tmp, failed)
            kind = ERRORS.get(err.ename, CGGMError)
            raise kind(f"{Path(notebook).name} failed: {err.ename}: {err.evalue}\n  executed copy with the "
                       f"traceback: {failed}") from None
        except Exception as err:  # the kernel died (out of memory, killed) or could not start
            failed, kept = output.with_name(output.stem + ".failed.ipynb"), tmp.exists()
            if kept:
                os.replace(tmp, failed)
            raise CGGMError(f"{Path(notebook).name} did not run to the end: {type(err).__name__}: {err}"
                            + (f"\n  partial copy: {failed}" if kept else "")) from err
    os.replace(tmp, output)
    output.with_name(output.stem + ".failed.ipynb").unlink(missing_ok=True)
    return time.time() - started


def remove_stale_partials(folder) -> None:
    """Delete `.<name>.<pid>.partial.ipynb` files whose writing process no longer exists."""
    for path in Path(folder).glob(".*.partial.ipynb"):
        pid = path.name.split(".")[-3]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


@contextlib.contextmanager
def environment(env: dict):
    """Set the variables of `env` for the block, then restore the previous values."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Context:
    """Everything a step needs to build its parameters and paths (picklable, for job processes)."""

    def __init__(self, profile: Profile, results, data_root, notebooks, threads: int, ledger: str = ""):
        self.profile, self.results, self.data_root = profile, Path(results), Path(data_root)
        self.notebooks, self.threads, self.ledger = Path(notebooks), threads, ledger
        self.root = self.results / profile.name

    def output(self, step: Step) -> Path:
        if step.kind == "worker":
            return step.spec.path(self.results, self.profile) / "10_train.ipynb"
        return self.root / "notebooks" / f"{step.name}.ipynb"

    def parameters(self, step: Step) -> dict:
        common = {"threads": self.threads}
        if step.kind == "data":
            return common | {"dataset": step.dataset, "data_root": str(self.data_root), "out_dir": str(self.root / "datasets"),
                             "allow_standin": self.profile.allow_standin,
                             "standin_size": self.profile.standin_size.get(step.dataset, {})}
        if step.kind == "worker":
            s = step.spec
            return common | {"dataset": s.dataset, "strategy": s.strategy, "strategy_kwargs": s.strategy_kwargs,
                             "seed": s.seed, "preset": self.profile.preset, "epochs": s.epochs or 0,
                             "data_root": str(self.data_root), "out_dir": str(s.path(self.results, self.profile)),
                             "checkpoint_every": self.profile.checkpoint_every, "artifacts": sorted(s.artifacts),
                             "gradient_batches": self.profile.gradient_batches,
                             "cache_dir": str(self.root / "datasets"), "settings": s.other_settings} | dry_run_parameters(self.profile, s)
        if step.kind == "explainer":
            return common | {"out_dir": str(self.root / step.groups[0]), "figures_dir": str(self.root / "figures")}
        import papermill as pm

        report = {"profile": self.profile.name, "results": str(self.results), "ledger_path": self.ledger}
        if self.profile.max_steps:  # a dry run: its runs train max_steps steps, so probe the retrained ones at each
            report["speed_every"] = 1
        declared = pm.inspect_notebook(str(self.notebooks / step.notebook))  # pass only what it declares
        return common | {k: v for k, v in report.items() if k in declared}


def run_step(ctx: Context, step: Step) -> dict:
    """Execute one step (in this process); {"step", "kind", "status": ran|skipped|failed, "seconds", "error"}."""
    record = {"step": step.name, "kind": step.kind, "status": "ran", "seconds": 0.0, "error": ""}
    try:
        if step.kind == "worker":
            status = spec_status(step.spec, ctx.results, ctx.profile)
            if status == "done":
                return record | {"status": "skipped"}
            if ctx.profile.reuse_shapes and reuse_shape(ctx.results, ctx.profile, step.spec):
                return record | {"status": "skipped", "error": ""}  # a dry run's labelled copy (cggmlib/repro/dryrun.py)
            prepare_run_dir(ctx, step, status)
        if step.kind == "data" and data_prepared(ctx, step):
            return record | {"status": "skipped"}
        if step.kind == "explainer" and ctx.output(step).exists() and (ctx.root / step.groups[0] / step.done).exists():
            return record | {"status": "skipped"}
        record["seconds"] = round(execute(ctx.notebooks / step.notebook, ctx.output(step), ctx.parameters(step),
                                          cwd=ctx.results.parent, env=KERNEL_ENV | {"OMP_NUM_THREADS": ctx.threads}), 2)
        if step.kind == "worker" and ctx.profile.reuse_shapes:
            drop_checkpoints(step.spec.path(ctx.results, ctx.profile), keeps_weights(step.spec))
    except CGGMError as err:
        record |= {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return record


def data_prepared(ctx: Context, step: Step) -> bool:
    """The data step ran to the end before and the dataset's file listing has not changed since."""
    summary = ctx.root / "datasets" / f"{step.dataset}.json"
    if not (summary.exists() and ctx.output(step).exists() and (ctx.data_root / step.dataset).is_dir()):
        return False
    return json.loads(summary.read_text()).get("fingerprint") == listing_fingerprint(step.dataset, ctx.data_root)


def prepare_run_dir(ctx: Context, step: Step, status: str) -> None:
    """Move a folder of another configuration aside (never delete a result), then record the configuration."""
    d = step.spec.path(ctx.results, ctx.profile)
    cfg = step.spec.config(ctx.profile, ctx.data_root)
    if status == "stale" or (status == "partial" and not (d / "config.json").exists()):
        move_aside(d, ctx.root / ".superseded" / d.relative_to(ctx.root).parent)
    if not (d / "metrics.json").exists():
        atomic_write_json(d / "config.json", cfg.to_dict())


def _init_job(slots, gpus: list[str], parent_pid: int | None = None) -> None:
    if parent_pid is not None:  # a pool worker: it ends with the pipeline (cggmlib/repro/processes.py)
        die_with_parent(parent_pid)
    slot = slots.get()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]


def run_steps(ctx: Context, steps: list[Step], jobs: int, log=print) -> list[dict]:
    """Execute `steps` (independent of each other) in `jobs` processes; one record per step."""
    if jobs <= 1 or len(steps) <= 1:
        records = []
        for s in steps:
            records.append(run_step(ctx, s))
            log(record_line(records[-1]))
        return records
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    mpc = mp.get_context("spawn")
    slots = mpc.Queue()
    for i in range(jobs):
        slots.put(i)
    records = []
    init = (slots, visible_gpus(), os.getpid())
    with ProcessPoolExecutor(jobs, mp_context=mpc, initializer=_init_job, initargs=init) as pool:
        futures = [pool.submit(run_step, ctx, s) for s in steps]
        for f in as_completed(futures):
            records.append(f.result())
            log(record_line(records[-1]))
    return records


def visible_gpus() -> list[str]:
    """GPU ids to pin jobs to: CUDA_VISIBLE_DEVICES if set, else 0..n−1 (empty without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def record_line(r: dict) -> str:
    """One log line of a step's record: status, seconds, name, the first line of its error."""
    extra = f"  {r['error'].splitlines()[0]}" if r["error"] else ""
    return f"  {r['status']:7} {r['seconds']:7.1f}s  {r['step']}{extra}"


__all__ = ["Context", "KERNEL_ENV", "environment", "execute", "notebooks_folder", "prepare_run_dir", "record_line", "run_step",
           "run_steps", "visible_gpus"]
