"""`cggm reproduce`: plan a profile (cggmlib/repro/pipeline.py), execute its steps on this machine
(cggmlib/repro/steps.py) or on Slurm (cggmlib/repro/slurm.py), then write pipeline.json, verification.json
and the index page.

Workers and kernels end when the process that started them dies, however it dies, and a rerun reports
any process an earlier pipeline left working in its results (cggmlib/repro/processes.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..files import atomic_write_json, ensure_writable, read_json
from ..runs.lock import run_folder_lock
from .dryrun import shape_phases
from .index import write_index
from .ledger import check, default_path
from .pipeline import get_profile, plan
from .processes import pipeline_environment, report_stale
from .slurm import SlurmRunner
from .steps import Context, environment, notebooks_folder, run_steps, visible_gpus
from .verify import verify

def reproduce(profile: str, results=None, data_root=None, only=None, jobs: int | None = 1, render_only: bool = False,
              threads: int | None = None, ledger: str = "", notebooks=None, log=print, executor: str = "local",
              slurm_options: list[str] | None = None, slurm_cluster: str = "slurm") -> dict:
    """Plan and execute the profile; write pipeline.json, verification.csv and the index page.

    executor "local": `jobs` processes on this machine; "slurm": one submitit job per step, at most `jobs`
    (None: no limit) at a time (cggmlib/repro/slurm.py)."""
    if executor not in ("local", "slurm"):
        raise ConfigError(f"--executor {executor!r}: choose local or slurm")
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
        runner = SlurmRunner(ctx, slurm_options, slurm_cluster, slurm_jobs, given_threads, log=log)
        run_group = lambda group, kind, parallel: runner.run(group, kind)  # noqa: E731
    else:
        run_group = lambda group, kind, parallel: run_steps(ctx, group, jobs if parallel else 1, log)  # noqa: E731
    # one pipeline per results folder: a second one would interleave its steps and overwrite pipeline.json
    with run_folder_lock(ensure_writable(ctx.root), other="give this one another --results folder"):
        steps = plan(prof, only, render_only)
        started = time.time()
        log(f"cggm reproduce: profile {prof.name} ({prof.description}); {len(steps)} steps; results {ctx.root}; "
            f"data {data_root}; " + (f"jobs {jobs} x {threads} threads" if executor == "local" else
                                     f"executor slurm ({slurm_cluster})") + ("; render only" if render_only else ""))
        report_stale(ctx.root, log)
        records = []
        with environment(pipeline_environment(ctx.root)):  # marks every process it starts (see `report_stale`)
            for kind, parallel in (("data", False), ("worker", True), ("report", True)):
                group = [s for s in steps if s.kind == kind or (kind == "report" and s.kind == "explainer")]
                if group:
                    log(f"{kind} steps ({len(group)}):")
                    phases = shape_phases(group) if kind == "worker" and prof.reuse_shapes else [group]
                    for phase in phases:  # a dry run: one run per shape first, its copies after
                        records += run_group(phase, kind, parallel)
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
    path = Path(path) if path else default_path()
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    comparison = root / "tables" / "ledger_comparison.csv"
    flagged = pd.read_csv(comparison, dtype=str, keep_default_na=False) if comparison.exists() else None
    return {"path": str(path), "problems": check(raw, path), "known_cells": int((raw["value"] != "").sum()),
            "flagged": None if flagged is None else int((flagged["flag"] != "").sum())}


def read_summary(results, profile: str) -> dict | None:
    return read_json(Path(results) / profile / "pipeline.json")


__all__ = ["check_ledger", "read_summary", "reproduce"]
