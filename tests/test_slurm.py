"""`cggm reproduce --executor slurm` (cggmlib/repro/slurm.py) through submitit's LocalExecutor: the same jobs, job
records and status as on a Slurm cluster, on this machine. A real single-node Slurm: `make slurm-test`."""
import json
import os
import signal
import time

import pytest

from cggmlib.repro import jobs, pipeline, slurm, steps
from cggmlib.commands import main
from cggmlib.errors import ConfigError

submitit = pytest.importorskip("submitit", reason="pinned in requirements.lock (make install); pip install -e '.[slurm]'")


def test_slurm_options_become_submitit_parameters():
    params = slurm.slurm_parameters(["partition=gpu", "account=my_lab", "qos=normal", "time=600",
                                     "cpus-per-task=4", "requeue=yes", "--reservation=paper"])
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "my_lab" and params["slurm_qos"] == "normal"
    assert params["slurm_time"] == 600 and params["slurm_cpus_per_task"] == 4
    assert params["slurm_additional_parameters"] == {"requeue": "yes", "reservation": "paper"}
    for bad in ("partition", "=gpu", "two words=x"):
        with pytest.raises(ConfigError, match="--slurm-opt .*KEY=VALUE"):
            slurm.slurm_parameters([bad])


def test_resources_come_from_the_profile_and_the_dataset():
    paper, ci = pipeline.get_profile("paper"), pipeline.get_profile("ci")
    steps = {s.name: s for s in pipeline.plan(paper)}
    food = slurm.resources(paper, steps["10_train:food101/cggm/seed0"])
    assert food["gpus_per_node"] == 1 and food == slurm.RESOURCES["food101"]
    assert slurm.resources(paper, steps["10_train:mfeat/cggm/seed0"])["gpus_per_node"] == 0
    assert slurm.resources(paper, steps["20_main_results"]) == slurm.REPORT_JOB
    assert slurm.resources(paper, steps["01_data_food101"]) == slurm.DATA_JOB
    assert all(slurm.resources(ci, s) == slurm.CPU_JOB for s in pipeline.plan(ci))
    assert "| worker run, food101 | 1 |" in slurm.resource_table()


def test_cli_rejects_slurm_options_without_the_slurm_executor(tmp_path, capsys):
    assert main(["reproduce", "--profile", "ci", "--results", str(tmp_path), "--slurm-opt", "partition=gpu"]) == 2
    assert "--executor slurm only" in capsys.readouterr().err
    assert main(["reproduce", "--profile", "ci", "--results", str(tmp_path), "--executor", "slurm",
                 "--slurm-opt", "partition"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


#: the ci profile's mfeat slice (`--only mfeat`): five runs and the 70_mfeat_imbalance report
CI = pipeline.get_profile("ci")


def _wait_gone(pid, timeout=60):
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:  # ended; submitit reaps it later
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.2)
    raise AssertionError(f"job {pid} still running")


@pytest.mark.notebook
def test_local_submitit_jobs_run_resubmit_a_cancelled_job_attach_to_a_running_one_and_report(tmp_path):
    results, lines = tmp_path / "results", []
    ctx = steps.Context(CI, results, results / CI.name / "data", steps.notebooks_folder(), 1)
    runner = slurm.SlurmRunner(ctx, ["partition=ignored_by_the_local_executor"], cluster="local", poll_s=0.5,
                               log=lines.append)
    planned = {s.name: s for s in pipeline.plan(CI, ["mfeat"])}
    fou, cggm = planned["10_train:mfeat/unimodal.fou/seed0"], planned["10_train:mfeat/cggm/seed0"]

    # a job cancelled while it runs (submitit's LocalJob.cancel: SIGINT to the job) leaves no result.
    # A suite started in the background (`make test &`) inherits SIGINT ignored, and so would the job:
    # a Python-level handler here makes the job's process start with the default one
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        [(_, killed)] = runner.submit([fou], slurm.CPU_JOB, "worker")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert json.loads(slurm.record_path(ctx.root, fou).read_text())["job_id"] == killed["job_id"]
    assert slurm.job_state(killed)[0] == "running"
    time.sleep(3)
    os.kill(int(killed["job_id"]), signal.SIGINT)
    _wait_gone(int(killed["job_id"]))
    state, detail = slurm.job_state(killed)
    assert state == "failed" and str(slurm.log_path(killed)) in detail
    rows = {r["step"]: r for r in slurm.status(CI.name, results, ["mfeat"], log=lines.append)}
    assert rows[fou.name]["state"] == "failed" and str(slurm.log_path(killed)) in rows[fou.name]["detail"]
    assert rows[cggm.name]["state"] == "not submitted" and rows["70_mfeat_imbalance"]["state"] == "not submitted"

    # a job still running when `reproduce` runs again is waited for, not submitted twice
    [(_, running)] = runner.submit([cggm], slurm.CPU_JOB, "worker")
    summary = jobs.reproduce(CI.name, results=results, only=["mfeat"], executor="slurm", slurm_cluster="local",
                             log=lines.append)
    assert summary["failed"] == [] and summary["executor"] == "slurm"
    by_step = {s["step"]: s for s in summary["steps"]}
    assert by_step[cggm.name]["job_id"] == running["job_id"] and by_step[cggm.name]["status"] == "ran"
    assert by_step[fou.name]["job_id"] != killed["job_id"] and by_step[fou.name]["status"] == "ran"
    assert any(f"attached {running['job_id']:>10}  {cggm.name}" in line for line in lines)
    assert (ctx.root / "notebooks" / "70_mfeat_imbalance.ipynb").exists()
    for step in (fou, cggm):
        assert (step.spec.path(results, CI) / "10_train.ipynb").exists()
    rows = slurm.status(CI.name, results, ["mfeat"], log=lines.append)
    assert [r["state"] for r in rows] == ["done"] * 6
    assert not list(results.rglob("*.partial.ipynb"))


def _fake_run(root, prof, spec, metrics: dict) -> None:
    d = spec.path(root, prof)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(spec.config(prof).to_dict()))
    (d / "metrics.json").write_text(json.dumps(metrics))


def test_same_as_compares_keys_metrics_and_tables_of_two_results_folders(tmp_path, capsys):
    """What `make slurm-test` checks after the Slurm run: the Slurm results folder equals the local one."""
    from cggmlib.repro.verify import compare_results

    ci = pipeline.get_profile("ci")
    specs = [s.spec for s in pipeline.plan(ci, ["mfeat"]) if s.spec is not None]
    a, b = tmp_path / "local", tmp_path / "slurm"
    for root in (a, b):
        for i, spec in enumerate(specs):
            _fake_run(root, ci, spec, {"acc": 0.5 + i / 100, "val": {"acc": 0.4}})
        (root / "ci" / "tables").mkdir()
        (root / "ci" / "tables" / "mfeat_methods.csv").write_text("method,acc\njoint,0.5\n")
    argv = ["reproduce", "--profile", "ci", "--results", str(a), "--same-as", str(b), "--only", "mfeat"]
    assert main(argv) == 0 and f"{len(specs) + 1} same" in capsys.readouterr().out

    first = specs[0].path(b, ci) / "metrics.json"
    first.write_text(json.dumps({"acc": 0.5, "val": {"acc": 0.41}}))
    (b / "ci" / "tables" / "mfeat_methods.csv").write_text("method,acc\njoint,0.6\n")
    rows = compare_results(a, b, ci, only=["mfeat"]).set_index("item")
    run = f"mfeat/{specs[0].label}/seed{specs[0].seed}"
    assert rows.loc[run, "status"] == "differs" and rows.loc[run, "detail"] == "val/acc: 0.4 != 0.41"
    assert rows.loc["tables/mfeat_methods.csv", "status"] == "differs"
    assert (rows.drop([run, "tables/mfeat_methods.csv"]).status == "same").all()

    cfg = json.loads((specs[1].path(b, ci) / "config.json").read_text())
    (specs[1].path(b, ci) / "config.json").write_text(json.dumps(cfg | {"lr": 0.5}))
    (specs[2].path(b, ci) / "metrics.json").unlink()
    rows = compare_results(a, b, ci, only=["mfeat"]).set_index("item")
    assert rows.loc[f"mfeat/{specs[1].label}/seed0", "detail"].startswith("config key ")
    assert rows.loc[f"mfeat/{specs[2].label}/seed0", "status"] == "missing"
    assert main(argv) == 1 and "differs" in capsys.readouterr().out
    assert main(argv[:5] + ["--same-as", str(tmp_path / "nowhere")]) == 2 and "--same-as" in capsys.readouterr().err
