"""Executing the pipeline that cggmlib/pipeline.py plans: notebooks through papermill, atomically, in jobs.

- Every executed notebook is written to a hidden `.<name>.<pid>.partial.ipynb` and renamed into place only
  when it ran to the end; a failed one is kept as `<name>.failed.ipynb` with its traceback, so no
  reader can mistake either for a result.
- Worker runs that are complete for their configuration are skipped without starting a kernel; the
  others resume from their checkpoint. Each run folder is claimed with a file lock by the kernel that
  trains it, so a rerun never trains a folder that an orphaned kernel is still writing.
- `--jobs N` runs worker and report notebooks in N processes, each with `threads` CPU threads and,
  on a machine with several GPUs, pinned to one GPU through CUDA_VISIBLE_DEVICES.
- Workers and kernels end when the process that started them dies, however it dies, and a rerun
  reports any process an earlier pipeline left working in its results (cggmlib/processes.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from . import errors
from .dryrun import drop_checkpoints, dry_run_parameters, reuse_shape
from .errors import CGGMError, ConfigError
from .pipeline import Profile, Step, get_profile, plan
from .processes import die_with_parent, kernel_manager_class, pipeline_environment, report_stale
from .reports import spec_status
from .runs import atomic_write_json, move_aside

#: kernels draw figures into the executed notebooks, whatever MPLBACKEND the caller uses (make sets Agg)
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}
ERRORS = {name: getattr(errors, name) for name in ("ConfigError", "DataError", "ResultsError", "NumericsError")}


def notebooks_folder(notebooks=None) -> Path:
    """The repository's notebooks/ (cggm reproduce runs from a clone: `pip install -e .`)."""
    for candidate in [notebooks, Path(__file__).resolve().parents[1] / "notebooks", Path.cwd() / "notebooks"]:
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
    with _environment(env or {}):
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
def _environment(env: dict):
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
                return record | {"status": "skipped", "error": ""}  # a dry run's labelled copy (cggmlib/dryrun.py)
            prepare_run_dir(ctx, step, status)
        if step.kind == "data" and data_prepared(ctx, step):
            return record | {"status": "skipped"}
        if step.kind == "explainer" and ctx.output(step).exists() and (ctx.root / step.groups[0] / step.done).exists():
            return record | {"status": "skipped"}
        record["seconds"] = round(execute(ctx.notebooks / step.notebook, ctx.output(step), ctx.parameters(step),
                                          cwd=ctx.results.parent, env=KERNEL_ENV | {"OMP_NUM_THREADS": ctx.threads}), 2)
        if step.kind == "worker" and ctx.profile.reuse_shapes:
            drop_checkpoints(step.spec.path(ctx.results, ctx.profile))
    except CGGMError as err:
        record |= {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return record


def data_prepared(ctx: Context, step: Step) -> bool:
    """The data step ran to the end before and the dataset's file listing has not changed since."""
    from .receipts import listing_fingerprint

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
    if parent_pid is not None:  # a pool worker: it ends with the pipeline (cggmlib/processes.py)
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
            log(_line(records[-1]))
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
            log(_line(records[-1]))
    return records


def visible_gpus() -> list[str]:
    """GPU ids to pin jobs to: CUDA_VISIBLE_DEVICES if set, else 0..n−1 (empty without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _line(r: dict) -> str:
    extra = f"  {r['error'].splitlines()[0]}" if r["error"] else ""
    return f"  {r['status']:7} {r['seconds']:7.1f}s  {r['step']}{extra}"


def reproduce(profile: str, results=None, data_root=None, only=None, jobs: int | None = 1, render_only: bool = False,
              threads: int | None = None, ledger: str = "", notebooks=None, log=print, executor: str = "local",
              slurm_options: list[str] | None = None, slurm_cluster: str = "slurm") -> dict:
    """Plan and execute the profile; write pipeline.json, verification.csv and the index page.

    executor "local": `jobs` processes on this machine; "slurm": one submitit job per step, at most `jobs`
    (None: no limit) at a time (cggmlib/slurm.py)."""
    if executor not in ("local", "slurm"):
        raise ConfigError(f"--executor {executor!r}: choose local or slurm")
    from .index import write_index
    from .receipts import verify

    prof = get_profile(profile)
    results = Path(results or prof.results).resolve()
    if prof.name == "colab" and str(results).startswith("/content/drive") and not Path("/content/drive").is_dir():
        raise ConfigError("the colab profile keeps results on Google Drive: mount it first "
                          "(from google.colab import drive; drive.mount('/content/drive')) or pass --results DIR")
    data_root = Path(data_root or prof.data_root or results / prof.name / "data").resolve()
    slurm_jobs, given_threads = jobs, threads
    jobs = max(1, int(jobs or 1))
    threads = threads or prof.threads or max(1, (os.cpu_count() or 1) // jobs)
    ctx = Context(prof, results, data_root, notebooks_folder(notebooks), threads, ledger)
    if executor == "slurm":
        from .slurm import SlurmRunner

        runner = SlurmRunner(ctx, slurm_options, slurm_cluster, slurm_jobs, given_threads, log=log)
        run_group = lambda group, kind, parallel: runner.run(group, kind)  # noqa: E731
    else:
        run_group = lambda group, kind, parallel: run_steps(ctx, group, jobs if parallel else 1, log)  # noqa: E731
    steps = plan(prof, only, render_only)
    started = time.time()
    log(f"cggm reproduce: profile {prof.name} ({prof.description}); {len(steps)} steps; results {ctx.root}; "
        f"data {data_root}; " + (f"jobs {jobs} x {threads} threads" if executor == "local" else
                                 f"executor slurm ({slurm_cluster})") + ("; render only" if render_only else ""))
    report_stale(ctx.root, log)
    records = []
    with _environment(pipeline_environment(ctx.root)):  # marks every process it starts (see `report_stale`)
        for kind, parallel in (("data", False), ("worker", True), ("report", True)):
            group = [s for s in steps if s.kind == kind or (kind == "report" and s.kind == "explainer")]
            if group:
                log(f"{kind} steps ({len(group)}):")
                records += run_group(group, kind, parallel)
    verification = verify(results, prof, data_root if data_root.is_dir() else None)
    atomic_write_json(ctx.root / "verification.json", verification.to_dict("records"))
    ledger_check = check_ledger(ledger, ctx.root)
    summary = {"profile": prof.name, "render_only": render_only, "only": only or [], "executor": executor,
               "jobs": jobs if executor == "local" else slurm_jobs, "threads": threads,
               "cpu_count": os.cpu_count(), "gpus": visible_gpus(), "wall_s": round(time.time() - started, 1),
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ledger": ledger_check, "steps": records,
               "failed": [r["step"] for r in records if r["status"] == "failed"]}
    atomic_write_json(ctx.root / ("render.json" if render_only else "pipeline.json"), summary)
    write_index(results, prof, summary, verification)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ran", "skipped", "failed")}
    problems = int((verification["status"] == "problem").sum())
    log(f"done in {summary['wall_s']:.0f}s: {counts}; run cards with problems: {problems}; index: {ctx.root / 'index.html'}")
    return summary


def check_ledger(path: str, root: Path) -> dict:
    """The ledger's own check (a source for every number, numbers only) and the flags of the last comparison."""
    import pandas as pd

    from .ledger import check, default_path

    path = Path(path) if path else default_path()
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    comparison = root / "tables" / "ledger_comparison.csv"
    flagged = pd.read_csv(comparison, dtype=str, keep_default_na=False) if comparison.exists() else None
    return {"path": str(path), "problems": check(raw, path), "known_cells": int((raw["value"] != "").sum()),
            "flagged": None if flagged is None else int((flagged["flag"] != "").sum())}


def read_summary(results, profile: str) -> dict | None:
    path = Path(results) / profile / "pipeline.json"
    return json.loads(path.read_text()) if path.exists() else None


__all__ = ["Context", "execute", "notebooks_folder", "reproduce", "run_step", "run_steps", "visible_gpus"]
