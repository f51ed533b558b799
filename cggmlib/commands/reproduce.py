"""`cggm reproduce --profile smoke|paper|colab`: every figure and table of the CGGM paper, from notebooks.

Executes the notebooks through papermill in dependency order (data preparation, the worker grid,
the reports; see cggmlib/repro/pipeline.py), skipping runs already complete for their configuration, and
writes results/<profile>/ (run folders, notebooks/, figures/, tables/, index.html). Examples:

    cggm reproduce --profile smoke                          # stand-ins, mfeat, synthetic; CPU; minutes
    cggm reproduce --profile paper --data-root data --jobs 4    # real data, paper settings; 4 GPUs
    cggm reproduce --profile paper --only table6 fig5       # one table and one figure (and their runs)
    cggm reproduce --profile paper --render-only            # reviewer mode: no training, re-check receipts
    cggm reproduce --profile dryrun                         # the paper grid, 2 steps a run, on CPU (docs/reproduce.md)
    cggm reproduce --profile paper --executor slurm --slurm-opt partition=gpu   # one Slurm job per run
    cggm reproduce --profile paper --status                 # queued, running, done, failed (with logs)
    cggm reproduce --profile ci --results a --same-as b     # is results folder b the same as a? (exit 1 if not)
"""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--profile", default="smoke", help="smoke (CPU, stand-ins) | paper (GPU, real data) | colab (paper "
                   "settings, results on Google Drive) | ci (the test suite's smallest smoke grid) | dryrun (the paper grid on "
                   "full-size stand-ins, 2 steps a run: check everything before the first GPU hour)")
    p.add_argument("--data-root", default=None, help="folder holding <dataset>/ (smoke default: "
                   "results/smoke/data, where stand-ins are written; paper: ./data)")
    p.add_argument("--results", default=None, help="results root (default ./results; colab: a Google Drive folder)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="notebooks (30_dynamics, 30, dynamics), paper items (fig5, table6), groups (audit, mfeat), "
                        "'data' or 'train'; the runs they need come along")
    p.add_argument("--jobs", type=int, default=None, help="parallel notebook processes (one per GPU where there are "
                   "several; default 1); with --executor slurm, at most this many jobs at a time (default: no limit)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per job (default: 1 for smoke and ci, "
                   "else cores / jobs)")
    p.add_argument("--render-only", action="store_true",
                   help="reviewer mode: rebuild figures and tables from existing runs, verify run cards, re-check the ledger")
    p.add_argument("--ledger", default="", help="your copy of cggmlib/paper_numbers.csv with cells filled in")
    p.add_argument("--notebooks", default=None, help="the notebooks/ folder (default: the clone's)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: processes on this machine (default); slurm: one job per step through submitit "
                        "(pip install -e '.[slurm]'; docs/slurm.md)")
    p.add_argument("--slurm-opt", nargs="+", default=None, metavar="KEY=VALUE",
                   help="sbatch options for every job: partition=gpu account=lab qos=normal time=600 gres=gpu:a100:1 ...")
    p.add_argument("--slurm-cluster", choices=("slurm", "local"), default="slurm",
                   help="local: the same jobs through submitit's LocalExecutor on this machine (a dry run of the "
                        "Slurm path, used by the tests)")
    p.add_argument("--same-as", default=None, metavar="OTHER_RESULTS",
                   help="train nothing: compare every run's metrics.json and configuration key, and every table, "
                        "with another results root of the same profile (e.g. a Slurm run against a local one); "
                        "exit 1 on any difference")
    p.add_argument("--status", action="store_true",
                   help="list the steps' jobs and runs: queued, running, done, failed (with the log), not submitted")


def run(args) -> int:
    from ..repro.jobs import reproduce

    if args.same_as:
        return _same_as(args)
    if args.status:
        from ..repro.slurm import status

        rows = status(args.profile, results=args.results, only=args.only)
        return 1 if any(r["state"] == "failed" for r in rows) else 0
    if args.executor == "local" and (args.slurm_opt or args.slurm_cluster != "slurm"):
        from ..errors import ConfigError

        raise ConfigError("--slurm-opt and --slurm-cluster apply to --executor slurm only")
    summary = reproduce(args.profile, results=args.results, data_root=args.data_root, only=args.only,
                        jobs=args.jobs if args.executor == "slurm" else (args.jobs or 1),
                        render_only=args.render_only, threads=args.threads, ledger=args.ledger,
                        notebooks=args.notebooks, executor=args.executor, slurm_options=args.slurm_opt,
                        slurm_cluster=args.slurm_cluster)
    return 1 if summary["failed"] else 0


def _same_as(args) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from ..repro.pipeline import get_profile
    from ..repro.verify import compare_results

    prof = get_profile(args.profile)
    results = Path(args.results or prof.results)
    for root in (results, Path(args.same_as)):
        if not (root / prof.name).is_dir():
            raise ConfigError(f"--same-as: {root / prof.name} does not exist; pass the results root that holds "
                              f"{prof.name}/ (as given to --results)")
    rows = compare_results(results, args.same_as, prof, only=args.only)
    for row in rows.itertuples():
        if row.status != "same":
            print(f"{row.status:8s} {row.item}  {row.detail}")
    counts = rows.status.value_counts().to_dict()
    print(f"{results} vs {args.same_as} ({prof.name}): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0 if set(counts) <= {"same"} else 1
