"""`cggm reproduce --executor slurm`: the pipeline's steps as Slurm jobs, through submitit.

What a run is does not change: each job executes one step with `steps.run_step`, exactly as a local
`--jobs N` process does (same configuration keys, skipped complete runs, atomic notebooks, the run
folder's lock taken by the kernel that trains it). Only where the step runs changes:

- Data steps, then worker runs, then the report notebooks, each phase submitted as job arrays (one array
  per resource group, e.g. per dataset; `executor.batch()`), one job per step; the command waits for a
  phase to end before submitting the next, so reports run once their runs are complete.
- Resources come from `RESOURCES` (per dataset, for the GPU profiles) and `CPU_JOB` (smoke and ci);
  `--slurm-opt KEY=VALUE` adds partition, account, qos or any sbatch flag.
- Every submitted job id is recorded in `results/<profile>/slurm/steps/<step>.json`, next to submitit's
  own job folders (`results/<profile>/slurm/jobs/<job id>/`: the pickled call, the result, the logs). A
  rerun asks Slurm (squeue, then sacct through submitit) about each recorded job and submits a step again
  only when its job is no longer queued or running; the run-folder lock covers the rest.
- Preemption and time-outs: the job's callable is checkpointable (`StepJob.checkpoint`), so submitit
  requeues it and the requeued job runs the same step, which resumes training from the run folder's
  `checkpoint.pt` (cggmlib/training/checkpoint.py). A cancelled or failed job is resubmitted by the next
  `cggm reproduce`, which resumes the same way.
- `cggm reproduce --status` reads those job folders and the run folders: queued, running, done, failed
  (with the failed job's log), not submitted.

submitit is an optional dependency: `pip install -e ".[slurm]"`. `slurm_cluster="local"` (CLI
`--slurm-cluster local`) runs the same jobs through submitit's LocalExecutor on this machine, which is how
the test suite covers this module; `make slurm-test` runs them through a real single-node Slurm
(tools/slurm_single_node.sh).
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write_json
from .pipeline import Profile, Step, get_profile, plan
from .processes import pipeline_environment
from .reports import spec_status
from .steps import environment, record_line, run_step

#: one worker run on `dataset` with the GPU profiles (paper, colab): gpus_per_node, cpus_per_task,
#: mem_gb, timeout_min. Defaults sized for one run of the paper preset on one data-centre GPU, with room
#: to spare; --slurm-opt time=/mem=/gpus_per_node= override them for every job.
RESOURCES = {
    "food101": {"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64, "timeout_min": 24 * 60},
    "brats2021": {"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64, "timeout_min": 24 * 60},
    "mosi": {"gpus_per_node": 1, "cpus_per_task": 4, "mem_gb": 32, "timeout_min": 4 * 60},
    "iemocap": {"gpus_per_node": 1, "cpus_per_task": 4, "mem_gb": 32, "timeout_min": 4 * 60},
    "synthetic": {"gpus_per_node": 0, "cpus_per_task": 2, "mem_gb": 8, "timeout_min": 60},
    "mfeat": {"gpus_per_node": 0, "cpus_per_task": 2, "mem_gb": 8, "timeout_min": 60},
}
#: every job of the CPU profiles (smoke, ci), and each data step of the GPU profiles (downloads, feature files)
CPU_JOB = {"gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 4, "timeout_min": 60}
DATA_JOB = {"gpus_per_node": 0, "cpus_per_task": 8, "mem_gb": 64, "timeout_min": 8 * 60}
#: a report notebook (reads results/, reloads a few trained models for Fig. 4 and Table 8)
REPORT_JOB = {"gpus_per_node": 0, "cpus_per_task": 4, "mem_gb": 32, "timeout_min": 2 * 60}
GPU_PRESETS = ("paper",)

#: Slurm states of a job that is still to run or running (squeue's %T, sacct's State)
LIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
        "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"}
CLUSTERS = ("slurm", "local")


def resources(profile: Profile, step: Step) -> dict:
    """submitit's generic parameters (gpus_per_node, cpus_per_task, mem_gb, timeout_min) of one step's job."""
    if profile.preset not in GPU_PRESETS:
        return dict(CPU_JOB)
    if step.kind == "worker":
        return dict(RESOURCES.get(step.dataset, RESOURCES["mosi"]))
    return dict(DATA_JOB if step.kind == "data" else REPORT_JOB)


def resource_table() -> str:
    """The resource defaults as a Markdown table (docs/slurm.md prints it: `python -m cggmlib.repro.slurm`)."""
    rows = [("worker run, " + d, r) for d, r in RESOURCES.items()]
    rows += [("data step (paper, colab)", DATA_JOB), ("report notebook (paper, colab)", REPORT_JOB),
             ("any job of smoke, ci", CPU_JOB)]
    lines = ["| job | GPUs | CPUs | memory (GB) | time limit (h) |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['gpus_per_node']} | {r['cpus_per_task']} | {r['mem_gb']} | {r['timeout_min'] / 60:g} |"
              for name, r in rows]
    return "\n".join(lines)


def slurm_parameters(options: list[str] | None) -> dict:
    """`--slurm-opt KEY=VALUE` pairs as submitit parameters: submitit's named Slurm parameters (partition,
    account, qos, time, mem, gres, constraint, ...; dashes read as underscores) as `slurm_<name>`, any other
    sbatch long option in `slurm_additional_parameters`."""
    from submitit.slurm.slurm import SlurmExecutor

    named = SlurmExecutor._valid_parameters() - {"additional_parameters", "setup", "teardown", "srun_args"}
    out: dict = {}
    extra: dict = {}
    for option in options or []:
        key, sep, value = option.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise ConfigError(f"--slurm-opt {option!r}: expected KEY=VALUE with an sbatch option name as KEY, "
                              "e.g. --slurm-opt partition=gpu account=my_lab qos=normal")
        value = int(value) if re.fullmatch(r"\d+", value) else value
        if key.replace("-", "_") in named:
            out[f"slurm_{key.replace('-', '_')}"] = value
        else:
            extra[key] = value
    if extra:
        out["slurm_additional_parameters"] = extra
    return out


class StepJob:
    """The callable a job runs: one pipeline step, in this job's process (`steps.run_step`).

    Checkpointable in submitit's sense: on preemption or time-out submitit calls `checkpoint`, pickles the
    returned submission and requeues the job, which then runs the same step again; training resumes from
    the run folder's own checkpoint (the notebook's `train_or_load`), so nothing is kept in this object.
    """

    def __init__(self, ctx, step: Step):
        self.ctx, self.step = ctx, step

    def __call__(self) -> dict:
        import signal

        # Slurm signals every process of a preempted job with SIGTERM before it kills and requeues it; ignored
        # here (submitit only logs it) and so in the notebook's kernel, which inherits the setting, so the kernel
        # keeps training instead of dying and ending the step as failed. Cancel and requeue end both with SIGKILL
        # (the kernel also dies with this process, cggmlib/repro/processes.py).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with environment(pipeline_environment(self.ctx.root)):
            return run_step(self.ctx, self.step)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(StepJob(self.ctx, self.step))


def slurm_folder(root) -> Path:
    return Path(root) / "slurm"


def record_path(root, step: Step) -> Path:
    """Where the id of the job submitted for `step` is kept: results/<profile>/slurm/steps/<step>.json."""
    return slurm_folder(root) / "steps" / (step.name.replace(":", "/") + ".json")


def read_record(root, step: Step) -> dict | None:
    path = record_path(root, step)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_result(record: dict):
    """What the recorded job returned (`steps.run_step`'s record), None while it has no result, or
    ("error", traceback text) when the job raised."""
    from submitit.core.utils import JobPaths, pickle_load

    paths = JobPaths(record["folder"], job_id=record["job_id"], task_id=0)
    if not paths.result_pickle.exists():
        return None
    try:
        outcome, result = pickle_load(paths.result_pickle)
    except Exception:  # noqa: BLE001 - being written right now: no result yet
        return None
    return result if outcome == "success" else ("error", str(result))


def log_path(record: dict) -> Path:
    from submitit.core.utils import JobPaths

    return JobPaths(record["folder"], job_id=record["job_id"], task_id=0).stderr


def job_state(record: dict, queue: dict | None = None) -> tuple[str, str]:
    """(state, detail) of a recorded job: queued | running | done | failed, from submitit's job folder
    (the result pickle) and the scheduler (`queue`: `squeue_states()`, then sacct); detail names the log
    of a failed job."""
    result = job_result(record)
    if isinstance(result, dict) and result.get("status") != "failed":
        return "done", ""
    if result is not None:
        why = (" ".join(x.strip() for x in result["error"].splitlines()) if isinstance(result, dict)
               else result[1].strip().splitlines()[-1])
        return "failed", f"{why}; log {log_path(record)}"
    scheduler = _scheduler_state(record, queue)
    if scheduler in LIVE:
        return ("queued" if scheduler in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED") else "running"), scheduler
    return "failed", f"job {record['job_id']} ended without a result ({scheduler}); log {log_path(record)}"


def squeue_states() -> dict | None:
    """{job id: state} of every job the Slurm controller knows (array tasks one by one); None without squeue."""
    if not shutil.which("squeue"):
        return None
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)


def _scheduler_state(record: dict, queue: dict | None = None) -> str:
    if record.get("cluster") == "local":  # submitit's LocalExecutor: the job id is its controller's pid
        try:
            import psutil

            p = psutil.Process(int(record["job_id"]))
            alive = p.status() != psutil.STATUS_ZOMBIE and "submitit" in " ".join(p.cmdline())
        except (ImportError, ValueError, OSError, Exception):  # psutil.Error: gone
            alive = False
        return "RUNNING" if alive else "GONE"
    queue = squeue_states() if queue is None else queue
    if queue and record["job_id"] in queue:
        return queue[record["job_id"]]
    try:  # no longer in the controller's memory: accounting (sacct), where the cluster keeps it
        from submitit import SlurmJob

        return SlurmJob(record["folder"], record["job_id"]).state.split()[0]
    except Exception:  # noqa: BLE001 - no sacct / no accounting: the job is simply gone
        return "UNKNOWN"


class SlurmRunner:
    """Runs the pipeline's step groups as submitit jobs (see the module doc)."""

    def __init__(self, ctx, options: list[str] | None = None, cluster: str = "slurm", jobs: int | None = None,
                 threads: int | None = None, poll_s: float = 5.0, log=print):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError("--executor slurm needs submitit: pip install -e \".[slurm]\" (or pip install "
                              "submitit)") from None
        if cluster not in CLUSTERS:
            raise ConfigError(f"--slurm-cluster {cluster!r}: choose from {list(CLUSTERS)}")
        if cluster == "slurm" and not shutil.which("sbatch"):
            raise ConfigError("--executor slurm: sbatch is not on PATH; run on a Slurm login node, or use "
                              "--slurm-cluster local to try the jobs on this machine")
        self.ctx, self.cluster, self.jobs, self.threads, self.poll_s, self.log = ctx, cluster, jobs, threads, poll_s, log
        self.options = slurm_parameters(options)
        if cluster == "local" and jobs:
            log(f"note: --jobs {jobs} is not applied by submitit's LocalExecutor: every submitted job starts at once")

    def executor(self, params: dict, kind: str):
        """submitit's executor for one array: the resource table's `params`, then --jobs, then --slurm-opt."""
        import submitit

        ex = submitit.AutoExecutor(folder=slurm_folder(self.ctx.root) / "jobs" / "%j", cluster=self.cluster)
        parallel = 1 if kind == "data" else self.jobs  # data steps one at a time, as with the local executor
        ex.update_parameters(**({"name": f"cggm-{self.ctx.profile.name}-{kind}"} | params
                                | ({"slurm_array_parallelism": parallel} if parallel else {}) | self.options))
        return ex

    def run(self, steps: list[Step], kind: str) -> list[dict]:
        """Submit the steps without a queued or running job, wait for every step's job, one record per step."""
        waiting: dict[str, tuple[Step, dict]] = {}
        todo: list[Step] = []
        queue = self.queue()
        for step in steps:
            record = read_record(self.ctx.root, step)
            if record is not None and job_state(record, queue)[0] in ("queued", "running"):
                self.log(f"  attached {record['job_id']:>10}  {step.name} (submitted {record['submitted']})")
                waiting[step.name] = (step, record)
            elif kind == "worker" and self._done(step):
                waiting[step.name] = (step, {})
            else:
                todo.append(step)
        groups: dict[str, list[Step]] = {}
        for step in todo:
            groups.setdefault(json.dumps(resources(self.ctx.profile, step), sort_keys=True), []).append(step)
        if kind == "data" and self.cluster == "local":  # the LocalExecutor has no array limit: one after another
            records = self.wait(list(waiting.values()))
            for step in todo:
                records += self.wait(self.submit([step], resources(self.ctx.profile, step), kind))
            return records
        for key, group in groups.items():
            for step, record in self.submit(group, json.loads(key), kind):
                waiting[step.name] = (step, record)
        return self.wait(list(waiting.values()))

    def queue(self) -> dict:
        return (squeue_states() or {}) if self.cluster == "slurm" else {}

    def _done(self, step: Step) -> bool:

        return spec_status(step.spec, self.ctx.results, self.ctx.profile) == "done"

    def submit(self, group: list[Step], params: dict, kind: str) -> list[tuple[Step, dict]]:
        ctx = copy.copy(self.ctx)
        ctx.threads = self.threads or self.ctx.profile.threads or params["cpus_per_task"]
        ex = self.executor(params, kind)
        with ex.batch():
            submitted = [ex.submit(StepJob(ctx, s)) for s in group]
        out = []
        for step, job in zip(group, submitted):
            record = {"step": step.name, "job_id": str(job.job_id), "cluster": self.cluster,
                      "folder": str(job.paths.folder), "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "resources": params}
            atomic_write_json(record_path(self.ctx.root, step), record)
            self.log(f"  submitted {record['job_id']:>10}  {step.name}")
            out.append((step, record))
        return out

    def wait(self, pending: list[tuple[Step, dict]]) -> list[dict]:
        """Poll until no job is queued or running; the step records (`steps.run_step`'s) of all of them."""

        records, left = [], list(pending)
        while left:
            still, queue = [], self.queue()
            for step, record in left:
                base = {"step": step.name, "kind": step.kind, "status": "skipped", "seconds": 0.0, "error": ""}
                if not record:  # complete before this command: nothing submitted
                    records.append(base)
                else:
                    state, detail = job_state(record, queue)
                    if state in ("queued", "running"):
                        still.append((step, record))
                        continue
                    result = job_result(record)
                    records.append((result if isinstance(result, dict) else
                                    base | {"status": "failed", "error": f"SlurmJobError: {detail}"})
                                   | {"job_id": record["job_id"]})
                self.log(record_line(records[-1]))
            left = still
            if left:
                time.sleep(self.poll_s)
        return records


def status(profile: str, results=None, only=None, log=print) -> list[dict]:
    """`cggm reproduce --status`: one row per planned step, from submitit's job folders and the run folders."""

    prof = get_profile(profile)
    root = Path(results or prof.results).resolve() / prof.name
    rows, queue = [], squeue_states() or {}
    for step in plan(prof, only):
        record = read_record(root, step)
        run = spec_status(step.spec, root.parent, prof) if step.kind == "worker" else None
        if run == "done":
            state, detail = "done", ""
        elif record is not None:
            state, detail = job_state(record, queue)
            if state == "done" and step.kind == "worker":
                state, detail = "failed", f"the job ended but the run is {run}; log {log_path(record)}"
        elif step.kind != "worker" and (root / "notebooks" / f"{step.name}.ipynb").exists():
            state, detail = "done", "(ran without a recorded job)"
        else:
            state, detail = "not submitted", run or ""
        rows.append({"step": step.name, "state": state, "job_id": (record or {}).get("job_id", ""), "detail": detail})
    counts = {s: sum(r["state"] == s for r in rows) for s in ("queued", "running", "done", "failed", "not submitted")}
    log(f"cggm reproduce --status: profile {prof.name}, results {root}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for r in rows:
        log(f"  {r['state']:13} {r['job_id']:>10}  {r['step']}" + (f"  {r['detail']}" if r["detail"] else ""))
    return rows


if __name__ == "__main__":  # the resource defaults, as docs/slurm.md prints them
    print(resource_table())


__all__ = ["CPU_JOB", "DATA_JOB", "REPORT_JOB", "RESOURCES", "SlurmRunner", "StepJob", "job_state", "resource_table",
           "resources", "slurm_parameters", "status"]
