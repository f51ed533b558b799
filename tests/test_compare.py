"""`cggm compare`: the same seeds for every method, paired differences, reuse of completed runs."""
import subprocess
import sys

import pandas as pd
import pytest

from cggmlib.analysis.compare import compare, methods, to_markdown


def test_methods_expand_unimodal_and_cggm_variants():
    labels = methods(["a", "b"], ["joint", "unimodal", "cggm"])
    assert set(labels) == {"joint", "unimodal:a", "unimodal:b", "cggm", "cggm+guard", "cggm-paper",
                           "cggm-paper+guard"}
    assert labels["joint"] == ("joint", {"observe": True})


def test_compare_pairs_seeds_and_reuses_completed_runs(tmp_path):
    kw = dict(datasets=["synthetic"], seeds=2, names=["joint", "ogm"], epochs=1, results=tmp_path, log=lambda *_: None)
    first = compare(**kw)
    mtime = (tmp_path / "synthetic/ogm/seed1/metrics.json").stat().st_mtime_ns
    again = compare(**kw)
    assert (tmp_path / "synthetic/ogm/seed1/metrics.json").stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(first, again)
    ogm = first.set_index("method").loc["ogm"]
    joint = first.set_index("method").loc["joint"]
    assert ogm["n"] == 2 and ogm["metric"] == "acc"
    assert ogm["vs_joint"] == pytest.approx(ogm["mean"] - joint["mean"])
    assert 0 <= joint["f_m1"] <= 1  # joint observes its classifiers: per-modality accuracy
    assert "| ogm |" in to_markdown(first) and "synthetic data" in to_markdown(first)


def test_a_method_undefined_for_the_task_gets_an_na_row_with_the_reason():
    from cggmlib.analysis.compare import _rows

    rows = _rows("mosi", {"pmr": {"error": "pmr: prototypes need class labels"}})
    assert rows == [{"dataset": "mosi", "method": "pmr", "n/a": "pmr: prototypes need class labels"}]


def test_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cggmlib", "compare", "--datasets", "synthetic", "--strategies",
                           "joint", "--seeds", "1", "--epochs", "1", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "compare.csv").exists() and "| joint |" in (tmp_path / "compare.md").read_text()


def test_cli_imbalance_study_writes_the_utilisation_table_and_figure(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cggmlib", "compare", "--study", "imbalance", "--datasets",
                           "synthetic-imbalanced", "--strategies", "joint", "--seeds", "1", "--epochs", "1",
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "imbalance_study.md").read_text()
    assert "| synthetic-imbalanced | joint | m1 |" in table and "synthetic data" in table
    assert (tmp_path / "imbalance_study.png").stat().st_size > 10_000
    assert "Under joint training the linear probe" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "cggmlib", "compare", "--study", "imbalance", "--datasets", "synthetic",
                          "--results", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "choose from ['mfeat', 'synthetic-imbalanced']" in bad.stderr + bad.stdout
