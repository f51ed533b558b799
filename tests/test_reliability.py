"""Reliability: a run killed with SIGKILL and resumed ends exactly as an uninterrupted one; failed
writes damage nothing; non-finite numbers stop the run with a clear message or are skipped."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import cggmlib as cg
from cggmlib.runs import atomic_write_json

TRAIN = [sys.executable, "-m", "cggmlib", "train", "--dataset", "synthetic", "--strategy", "cggm", "--epochs", "12",
         "--checkpoint-every", "7", "--quiet", "--data-opt", "num_samples=2000"]


def test_sigkill_at_a_random_moment_then_resume_gives_identical_results(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    ref = subprocess.run(TRAIN + ["--out", str(tmp_path / "ref")], capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen(TRAIN + ["--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 300
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 0.5))  # a random moment, possibly inside a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert not (run / "metrics.json").exists()
    resumed = subprocess.run(TRAIN + ["--out", str(run), "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text()) == json.loads((tmp_path / "ref/metrics.json").read_text())
    a, b = torch.load(run / "best.pt"), torch.load(tmp_path / "ref/best.pt")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    trace_a = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
    trace_b = [json.loads(line) for line in (tmp_path / "ref/trace.jsonl").read_text().splitlines()]
    assert trace_a == trace_b
    assert not list(run.glob(".*.tmp")), "no temporary files left behind"


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"acc": 0.5})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(cg.ResultsError, match="disk holding .* is full"):
        atomic_write_json(target, {"acc": 0.9})
    assert json.loads(target.read_text()) == {"acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_results_folder_that_cannot_be_created_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = cg.Config(dataset="synthetic", epochs=1, data_kwargs={"num_samples": 300})
    with pytest.raises(cg.ResultsError, match="a_file"):
        cg.run_experiment(cfg, blocker / "run", progress=False)
    assert blocker.read_text() == "not a folder"


def nan_data(tmp=None):
    data = cg.load_data("synthetic", num_samples=300, batch_size=32)
    data.train.inputs["m1"][40:50] = float("nan")  # poisons the second batch of the first epoch (no shuffle)
    data.train.shuffle = False
    return data


def test_non_finite_loss_stops_with_step_modality_and_coefficients():
    data = nan_data()
    model = cg.build_model("synthetic", data)
    cfg = cg.Config(dataset="synthetic", strategy="cggm", epochs=1)
    with pytest.raises(cg.NumericsError) as err:
        cg.train(model, cg.make_strategy("cggm"), data, cfg, progress=False)
    message = str(err.value)
    assert "step 1" in message and "m1" in message and "coefficients" in message and "nonfinite='skip'" in message


def test_non_finite_steps_can_be_skipped_and_are_counted():
    data = nan_data()
    model = cg.build_model("synthetic", data)
    cfg = cg.Config(dataset="synthetic", strategy="joint", epochs=1, nonfinite="skip")
    result = cg.train(model, cg.make_strategy("joint"), data, cfg, progress=False)
    assert result.metrics["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
