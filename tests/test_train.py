"""The loop: determinism, run folders, the CLI, resume, the protocol, and one epoch of every strategy."""
import json
import subprocess
import sys

import pytest
import torch

import cggmlib as cg
from conftest import cfg

#: these tests train two or three epochs on 600 samples (conftest.cfg: one epoch on 100)
SAMPLES_600 = {"num_samples": 600}


def test_same_seed_same_metrics_on_cpu(tmp_path):
    a = cg.run_experiment(cfg(strategy="cggm", seed=3, epochs=2, data_kwargs=SAMPLES_600), progress=False)
    b = cg.run_experiment(cfg(strategy="cggm", seed=3, epochs=2, data_kwargs=SAMPLES_600), progress=False)
    c = cg.run_experiment(cfg(strategy="cggm", seed=4, epochs=2, data_kwargs=SAMPLES_600), progress=False)
    assert a.metrics == b.metrics
    assert a.trace.frame().equals(b.trace.frame())
    assert a.trace.frame()["loss"].tolist() != c.trace.frame()["loss"].tolist()


def test_run_folder_has_config_metrics_trace_and_card(tmp_path):
    c = cfg(strategy="cggm", epochs=2, data_kwargs=SAMPLES_600)
    cg.run_experiment(c, tmp_path, progress=False)
    for name in ("config.json", "metrics.json", "trace.jsonl", "run_card.json", "checkpoint.pt", "best.pt"):
        assert (tmp_path / name).exists(), name
    run = cg.load_run(tmp_path)
    assert run["config"]["strategy"] == "cggm" and run["run_card"]["config_key"] == c.key()
    metrics = run["metrics"]
    assert metrics["selected_on"] == "val/acc" and 0 <= metrics["best_epoch"] < 2
    # the reported number is the test metric of the epoch selected on validation
    epochs = run["trace"].dropna(subset=["val/acc"])
    row = epochs[epochs["epoch"] == metrics["best_epoch"]].iloc[0]
    assert metrics["acc"] == pytest.approx(row["test/acc"])
    assert metrics["val"]["acc"] == pytest.approx(epochs["val/acc"].max())
    assert "official" in metrics and "not our reported number" in metrics["official"]["what"]
    steps = run["trace"].dropna(subset=["step"])
    for key in ["loss", "acc_head/m0", "delta/m0", "coeff/m0", "grad_norm/m0", "grad_norm_mod/m0",
                "cos_weight/m0", "cos_grad/m0", "l_gm"]:
        assert key in steps.columns, key
    assert steps["loss"].notna().all()


def test_best_weights_are_loaded_after_training():
    c = cfg(strategy="joint", epochs=3, data_kwargs=SAMPLES_600)
    data = cg.load_data(c.dataset, batch_size=c.batch_size, seed=c.seed, **c.data_kwargs)
    model = cg.build_model(c.dataset, data)
    result = cg.train(model, cg.make_strategy("joint"), data, c, progress=False)
    again = cg.evaluate(model, data.test, data.task)
    assert again["acc"] == pytest.approx(result.metrics["acc"])


def test_resume_continues_to_the_same_result(tmp_path):
    full = cg.run_experiment(cfg(strategy="cggm", epochs=3, data_kwargs=SAMPLES_600), tmp_path / "full", progress=False)
    cg.run_experiment(cfg(strategy="cggm", epochs=2, data_kwargs=SAMPLES_600), tmp_path / "part", progress=False)
    resumed = cg.run_experiment(cfg(strategy="cggm", epochs=3, data_kwargs=SAMPLES_600), tmp_path / "part",
                                resume=True, progress=False)
    assert resumed.metrics == full.metrics


def test_cli_train_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "cggmlib", "train", "--dataset", "synthetic", "--strategy", "cggm",
                           "--epochs", "1", "--out", str(out), "--quiet", "--rho", "1.1", "--guard", "true",
                           "--data-opt", "num_samples=300"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["strategy_kwargs"]["rho"] == 1.1 and config["strategy_kwargs"]["guard"] is True
    assert "acc" in json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("args, message", [
    (["--strategy", "nope"], "unknown strategy"),
    (["--strategy", "cggm", "--rhoo", "1"], "unknown option"),
    (["--strategy", "cggm", "--rho", "-1"], "rho"),
])
def test_cli_bad_options_are_clear_errors(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "cggmlib", "train", "--dataset", "synthetic", "--epochs", "1",
                           "--out", str(tmp_path), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", sorted(cg.STRATEGIES))
def test_every_registered_strategy_trains_one_epoch(name, tmp_path):
    options = {"teacher_dir": str(tmp_path)} if name in ("umt", "ume") else {}
    c = cfg(strategy=name, data_kwargs={"num_samples": 300}, strategy_kwargs=options)
    result = cg.run_experiment(c, progress=False)
    steps = result.trace.steps()
    assert len(steps) > 0 and torch.isfinite(torch.tensor(steps["loss"].to_numpy())).all()
    assert 0.0 <= result.metrics["acc"] <= 1.0
