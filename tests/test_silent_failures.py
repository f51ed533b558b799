"""Failures that used to pass silently: option words read as strings, a run folder overwritten by another
configuration, a resume onto another configuration, damaged checkpoints loaded, a report notebook
inventing its results folder. Each test fails on the code before these checks existed."""
import json
import os
import subprocess
import sys

import papermill as pm
import pytest

import cggmlib as cg
from cggmlib.commands.train import _pairs, strategy_options
from conftest import ROOT, cfg

ENV = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli(out, *args):
    """`cggm train` on a tiny synthetic run into `out`; the finished process."""
    return subprocess.run([sys.executable, "-m", "cggmlib", "train", "--dataset", "synthetic", "--epochs", "1",
                           "--quiet", "--data-opt", "num_samples=100", "--out", str(out), *args],
                          capture_output=True, text=True, env=ENV, timeout=300)


# --- options are typed ------------------------------------------------------------------------------

@pytest.mark.parametrize("word, value", [("no", False), ("off", False), ("FALSE", False), ("0", False),
                                         ("yes", True), ("On", True), ("true", True), ("1", True)])
def test_bool_words_on_the_command_line_become_bools(word, value):
    c = cfg(strategy="cggm", strategy_kwargs=strategy_options("cggm", ["--guard", word]),
            data_kwargs=_pairs(["shuffle=" + word, "num_samples=100"], "--data-opt"))
    assert c.strategy_kwargs["guard"] is value and c.data_kwargs["shuffle"] is value


def test_cli_guard_no_trains_without_the_guard(tmp_path):
    proc = cli(tmp_path / "run", "--strategy", "cggm", "--guard", "no")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run/config.json").read_text())["strategy_kwargs"]["guard"] is False


def test_mosi_aligned_no_is_false():
    assert cfg(dataset="mosi", data_kwargs=_pairs(["aligned=no"], "--data-opt")).data_kwargs["aligned"] is False


@pytest.mark.parametrize("kwargs, fragment", [
    ({"strategy": "cggm", "strategy_kwargs": {"guard": "maybe"}}, "'guard' must be a bool"),
    ({"strategy": "cggm", "strategy_kwargs": {"rho": "fast"}}, "'rho' must be float"),
    ({"strategy": "cggm", "strategy_kwargs": {"gaurd": True}}, "did you mean 'guard'"),
    ({"data_kwargs": {"num_samples": -5}}, "'num_samples' must be >= 1, got -5"),
    ({"data_kwargs": {"num_sampels": 50}}, "did you mean 'num_samples'"),
    ({"model_kwargs": {"hidden": -3}}, "'hidden' must be >= 1, got -3"),
    ({"model_kwargs": {"hiden": 32}}, "did you mean 'hidden'"),
    ({"model_kwargs": {"dropout": "high"}}, "'dropout' must be float"),
])
def test_wrong_option_types_and_names_are_clear_errors(kwargs, fragment):
    with pytest.raises(cg.ConfigError) as err:
        cfg(**kwargs)
    assert fragment in str(err.value)


@pytest.mark.parametrize("args, fragment", [
    (["--strategy", "joint", "--data-opt", "num_samples=-5"], "'num_samples' must be >= 1"),
    (["--strategy", "joint", "--model-opt", "hidden=-3"], "'hidden' must be >= 1"),
    (["--strategy", "joint", "--model-opt", "hiden=32"], "did you mean 'hidden'"),
    (["--strategy", "cggm", "--gaurd", "no"], "did you mean '--guard'"),
])
def test_cli_bad_options_end_in_one_clear_line(tmp_path, args, fragment):
    proc = cli(tmp_path / "run", *args)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def run_notebook(name, tmp_path, **parameters):
    try:
        pm.execute_notebook(ROOT / "notebooks" / name, tmp_path / "executed.ipynb", parameters=parameters,
                            kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    except pm.PapermillExecutionError as err:
        return err
    return None


@pytest.mark.notebook
def test_papermill_guard_false_runs_without_the_guard(tmp_path):
    """The worker notebook's -y 'strategy_kwargs: {guard: "false"}' arrives as text and must mean False."""
    err = run_notebook("10_train.ipynb", tmp_path, dataset="synthetic", strategy="cggm", strategy_kwargs={"guard": "false"},
                       epochs=1, threads=1, out_dir=str(tmp_path / "q"))
    assert err is None, err
    assert json.loads((tmp_path / "q/config.json").read_text())["strategy_kwargs"]["guard"] is False


@pytest.mark.notebook
@pytest.mark.parametrize("notebook, parameters, ename, fragment", [
    ("00_quickstart.ipynb", {"nonexistent": 1}, "ConfigError", "unknown notebook parameter 'nonexistent'"),
    ("00_quickstart.ipynb", {"epoch": 1}, "ConfigError", "did you mean 'epochs'"),
    ("10_train.ipynb", {"strategy": "cggm", "strategy_kwargs": {"guard": "maybe"}}, "ConfigError", "'guard' must be a bool"),
    ("00_quickstart.ipynb", {"epochs": "many"}, "ConfigError", "'epochs'"),
])
def test_papermill_unknown_or_mistyped_parameters_fail(tmp_path, notebook, parameters, ename, fragment):
    err = run_notebook(notebook, tmp_path, out_dir=str(tmp_path / "q"), **parameters)
    assert err is not None and err.ename == ename and fragment in err.evalue, err
    assert not (tmp_path / "q").exists()  # it failed before training anything


@pytest.mark.notebook
def test_report_notebook_refuses_a_results_folder_that_does_not_exist(tmp_path):
    err = run_notebook("20_main_results.ipynb", tmp_path, results=str(tmp_path / "nowhere"))
    assert err is not None and err.ename == "ResultsError" and "does not exist" in err.evalue, err
    assert not (tmp_path / "nowhere").exists()


def test_check_parameters_coerces_in_place_and_ignores_kernel_names():
    namespace = {"__annotations__": {"guard": bool, "epochs": int, "name": str | None}, "guard": "off",
                 "epochs": 3, "name": "none", "In": [], "_oh": {}, "pd": cg}
    cg.check_parameters(namespace)
    assert namespace["guard"] is False and namespace["epochs"] == 3 and namespace["name"] is None


# --- a run folder belongs to one configuration ----------------------------------------------------------

def test_another_configuration_does_not_overwrite_a_completed_run(tmp_path):
    run = tmp_path / "run"
    cg.run_experiment(cfg(strategy="joint"), run, progress=False)
    joint_metrics = (run / "metrics.json").read_text()
    with pytest.raises(cg.ResultsError) as err:
        cg.run_experiment(cfg(strategy="cggm"), run, progress=False)
    assert "strategy: 'joint' -> 'cggm'" in str(err.value) and "--overwrite" in str(err.value)
    assert (run / "metrics.json").read_text() == joint_metrics
    cg.run_experiment(cfg(strategy="cggm"), run, overwrite=True, progress=False)
    [aside] = (tmp_path / ".superseded").iterdir()
    assert aside.name.startswith("run-") and (aside / "metrics.json").read_text() == joint_metrics
    assert json.loads((run / "config.json").read_text())["strategy"] == "cggm"


def test_cli_refuses_another_configuration_without_overwrite(tmp_path):
    assert cli(tmp_path / "run", "--strategy", "joint").returncode == 0
    proc = cli(tmp_path / "run", "--strategy", "cggm")
    assert proc.returncode == 2 and "another configuration" in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "run/config.json").read_text())["strategy"] == "joint"


def test_a_second_writer_of_one_folder_fails_naming_the_holder(tmp_path):
    from cggmlib.runs import lock_run_folder, unlock_run_folder

    run = tmp_path / "run"
    lock_run_folder(run)  # this process holds the folder, as a training run would
    try:
        proc = cli(run, "--strategy", "joint")
    finally:
        unlock_run_folder(run)
    assert proc.returncode == 2, proc.stderr
    assert str(run) in proc.stderr and f"process {os.getpid()}" in proc.stderr
    assert not (run / "metrics.json").exists()


def test_a_second_reproduce_on_one_results_folder_is_refused_naming_the_first(tmp_path):
    """Two `cggm reproduce` into one results folder: the second stops before any step (both wrote
    pipeline.json, and the last one erased the other's failure record)."""
    from cggmlib.runs import lock_run_folder, unlock_run_folder

    root = tmp_path / "results" / "ci"
    lock_run_folder(root)  # this process stands for the first pipeline
    try:
        code = ("import sys; from cggmlib.repro.jobs import reproduce; "
                f"reproduce('ci', results={str(tmp_path / 'results')!r}, only=['data'])")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    finally:
        unlock_run_folder(root)
    assert proc.returncode != 0 and f"process {os.getpid()}" in proc.stderr, proc.stderr
    assert "another --results folder" in proc.stderr and not (root / "pipeline.json").exists()


def test_resume_onto_another_configuration_is_refused_naming_the_fields(tmp_path):
    assert cli(tmp_path / "run", "--strategy", "cggm").returncode == 0
    proc = cli(tmp_path / "run", "--strategy", "joint", "--epochs", "2", "--resume")
    assert proc.returncode == 2 and "strategy: 'cggm' -> 'joint'" in proc.stderr, proc.stderr


def test_a_checkpoint_of_another_configuration_is_refused_by_train(tmp_path):
    cg.run_experiment(cfg(strategy="cggm"), tmp_path, progress=False)
    other = cfg(strategy="joint", epochs=2)
    data = cg.load_data("synthetic", batch_size=other.batch_size, **other.data_kwargs)
    with pytest.raises(cg.ResultsError, match="written by another configuration"):
        cg.train(cg.build_model("synthetic", data), cg.make_strategy("joint"), data, other, out_dir=tmp_path,
                 resume=True, progress=False)


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(cg.ResultsError, match="holds no checkpoint.pt"):
        cg.run_experiment(cfg(), tmp_path / "fresh", resume=True, progress=False)


def test_resume_may_train_a_run_longer(tmp_path):
    cg.run_experiment(cfg(), tmp_path, progress=False)
    longer = cg.run_experiment(cfg(epochs=2), tmp_path, resume=True, progress=False)
    assert longer.trace.epochs()["epoch"].max() == 1


# --- damaged checkpoints ------------------------------------------------------------------------------

def flip(position):
    def edit(data: bytes) -> bytes:
        b = bytearray(data)
        b[position(len(b))] ^= 1  # one low bit
        return bytes(b)
    return edit


@pytest.mark.parametrize("damage", {
    "empty": lambda d: b"",
    "truncated": lambda d: d[: len(d) // 2],
    "one bit in the middle": flip(lambda n: n // 2),
    "one bit in the last byte": flip(lambda n: n - 1),
    "no header": lambda d: d.split(b"\n", 1)[1],
}.items(), ids=lambda item: item[0])
def test_a_damaged_checkpoint_is_named_never_loaded(tmp_path, damage):
    cg.run_experiment(cfg(), tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(damage[1](path.read_bytes()))
    with pytest.raises(cg.ResultsError) as err:
        cg.run_experiment(cfg(epochs=2), tmp_path, resume=True, progress=False)
    assert str(path) in str(err.value) and "rerun without --resume" in str(err.value)


def test_a_failed_longer_resume_leaves_the_completed_run_described_as_it_was(tmp_path):
    """config.json describes what the folder holds until a resumed run completes: a `--resume --epochs 2`
    that fails (here on a damaged checkpoint) used to rewrite it to epochs 2 beside the 1-epoch
    metrics.json, so a plain `--epochs 2` then overwrote the completed run without a word, and a
    `skip_done` run of 2 epochs returned the 1-epoch metrics as its own."""
    cg.run_experiment(cfg(), tmp_path, progress=False)
    config, metrics = (tmp_path / "config.json").read_text(), (tmp_path / "metrics.json").read_text()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(cg.ResultsError, match="is damaged"):
        cg.run_experiment(cfg(epochs=2), tmp_path, resume=True, progress=False)
    assert (tmp_path / "config.json").read_text() == config
    for skip_done in (False, True):
        with pytest.raises(cg.ResultsError, match="epochs: 1 -> 2"):
            cg.run_experiment(cfg(epochs=2), tmp_path, skip_done=skip_done, progress=False)
    assert (tmp_path / "metrics.json").read_text() == metrics


def test_the_catalogue_counts_the_silent_failure_cases(tmp_path):
    """A session that runs cases of this file (or tests/test_data_recovery.py) says how many it tried, as
    the bad-input catalogue does, so a report of the suite counts them."""
    env = ENV | {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                           "check_parameters_coerces or bool_words_on_the_command_line",
                           str(ROOT / "tests/test_silent_failures.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "silent-failure catalogue: 9 cases tried, 9 ended in correct behaviour or a " \
        "clear error" in done.stdout, done.stdout[-3000:]
