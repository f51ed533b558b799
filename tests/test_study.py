"""cggmlib.repro.study: the linear probe, held-out utilisation against unimodal, and the batch-noise decomposition of B_m."""
import math

import numpy as np
import pytest
import torch

from cggmlib.repro import study
from cggmlib.data import load_data
from cggmlib.errors import ConfigError, ResultsError


def test_probe_reads_a_separable_feature_perfectly_and_noise_at_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    separable = np.eye(4)[y] * 5 + rng.normal(0, 0.1, (400, 4))
    assert study.linear_probe(separable[:300], y[:300], separable[300:], y[300:]) > 0.99
    noise = rng.normal(size=(400, 4))
    assert study.linear_probe(noise[:300], y[:300], noise[300:], y[300:]) < 0.45  # 4 classes: chance 0.25


def test_probe_on_a_frozen_encoder_uses_its_features_not_the_inputs():
    data = load_data("synthetic", num_samples=300, dim=8)
    from cggmlib.models import build_model

    model = build_model("synthetic", data)
    for p in model.encoders["m1"].parameters():
        torch.nn.init.zeros_(p)  # a dead encoder: constant features, nothing to read
    got = study.probe_modalities(model, data)
    assert got["m1"] < 0.2 < got["m0"]  # 10 classes: the dead encoder sits at chance, m0 is strong


def test_batch_noise_at_fixed_weights_has_spread_and_the_noise_fraction_is_a_fraction():
    torch.manual_seed(0)
    y = torch.randint(0, 3, (600,))
    feats = {m: torch.nn.functional.one_hot(y, 3).float() * s + torch.randn(600, 3) for m, s in (("a", 2.0), ("b", 0.7))}
    heads = {m: torch.nn.Linear(3, 3) for m in feats}
    for h in heads.values():
        h.weight.data = torch.eye(3)
        h.bias.data.zero_()
    noise = study.batch_noise(heads, feats, y, batch_size=64, draws=100)
    assert len(noise) == 99
    for m in feats:  # nothing trains, yet ε, Δε and B move from batch to batch
        assert noise[f"eps/{m}"].var() > 0 and noise[f"guarded/{m}"].var() > 0
        assert noise[f"guarded/{m}"].between(0, 1).all()
    assert abs(noise["delta/a"].mean()) < 0.02  # Δε at fixed weights is centred on 0
    # a "training" trace that is the same noise plus a drift: batch noise explains part of its changes
    trace = noise.copy()
    trace["delta/a"] = trace["delta/a"] + np.linspace(0, 0.5, len(trace)) * np.sign(np.sin(np.arange(len(trace))))
    frac = study.noise_fraction(noise, trace, ["a", "b"])
    assert frac["noise_fraction"].between(0, 1).all()
    row = frac.set_index(["quantity", "modality"])["noise_fraction"]
    assert row[("delta", "a")] < 0.9 and row[("delta", "b")] == pytest.approx(1.0)  # b's trace is pure noise


def test_b_and_speed_observes_without_changing_the_run_and_its_speeds_are_probe_differences():
    from cggmlib.config import Config
    from cggmlib.experiment import run_experiment

    cfg = Config(dataset="synthetic", strategy="cggm", preset="smoke", epochs=2, seed=0, batch_size=64)
    speed = study.b_and_speed(cfg, every=4)
    unobserved = run_experiment(cfg, None, progress=False)
    assert speed.attrs["metrics"]["acc"] == unobserved.metrics["acc"]  # the probe left the training alone
    assert speed.attrs["metrics"]["loss"] == unobserved.metrics["loss"]
    assert set(speed["modality"]) == {"m0", "m1", "m2"} and speed["step"].diff().dropna().isin([0, 4]).all()
    for m, part in speed.groupby("modality"):
        gains = np.diff(np.r_[part["heldout"].iloc[0] - 4 * part["speed"].iloc[0], part["heldout"]])
        assert np.allclose(gains / 4, part["speed"])  # speed = the held-out gain per step over its window
    assert speed["guarded"].between(0, 1).all()
    corr = study.speed_correlations(speed)
    assert set(corr["kind"]) == {"across_windows", "within_window"} and corr["rho"].dropna().between(-1, 1).all()
    assert "Within a window" in study.describe_speed(corr)
    with pytest.raises(ConfigError, match="every must be a positive int"):
        study.b_and_speed(cfg, every=0)
    with pytest.raises(ConfigError, match="trains no classifiers"):
        study.b_and_speed(Config(dataset="synthetic", strategy="joint", preset="smoke", epochs=1), every=2)
    with pytest.raises(ConfigError, match="lower `every`"):
        study.b_and_speed(cfg, every=10_000)


def test_imbalanced_setting_fixes_its_options_and_names_a_clash():
    data = load_data("synthetic", setting="imbalanced", num_samples=100)
    assert data.input_dims == {"m0": 512, "m1": 512, "m2": 512} and data.info["strengths"]["m0"] == 8.0
    with pytest.raises(ConfigError, match="fixes"):
        load_data("synthetic", setting="imbalanced", dim=64)
    with pytest.raises(ConfigError, match="unknown setting"):
        load_data("synthetic", setting="sharp")


def test_study_frame_pairs_each_probe_with_the_unimodal_encoder_of_the_same_seed(tmp_path):
    runs = study.runs(["synthetic-imbalanced"], seeds=2, names=["joint"], epochs=1, results=tmp_path,
                      data_options={"num_samples": 300}, log=lambda *a: None)
    assert {r["method"] for r in runs} == {"joint", "unimodal:m0", "unimodal:m1", "unimodal:m2"}
    long = study.frame(runs)
    assert len(long) == 2 * 3 and long["unimodal"].notna().all()
    assert np.allclose(long["gap"], long["probe"] - long["unimodal"])
    table = study.summary(long)
    fused = table[table["modality"] == "fused"]
    assert len(fused) == 1 and 0 <= fused["value"].iloc[0] <= 1
    per = table[table["modality"] != "fused"]
    assert table["n"].eq(2).all() and per["gap_low"].le(per["gap_high"]).all() and fused["gap"].isna().all()
    again = study.runs(["synthetic-imbalanced"], seeds=2, names=["joint"], epochs=1, results=tmp_path,
                       data_options={"num_samples": 300}, log=lambda *a: None)
    assert again == runs  # completed runs are reused


@pytest.mark.notebook
def test_study_notebook_reads_the_pipeline_runs_and_writes_its_table_figure_and_text(tmp_path):
    import json

    import nbformat
    import papermill as pm

    from cggmlib.repro import pipeline
    from cggmlib.experiment import run_experiment
    from conftest import ROOT

    profile = pipeline.get_profile("ci")  # 1 seed, 2 epochs: the study group's synthetic runs, trained directly
    for spec in pipeline.grid(profile):
        if "study" in spec.groups and spec.dataset == "synthetic":
            run_experiment(spec.config(profile), spec.path(tmp_path, profile), skip_done=True, progress=False)
    pm.execute_notebook(ROOT / "notebooks/41_imbalance_study.ipynb", tmp_path / "executed.ipynb",
                        parameters={"profile": "ci", "results": str(tmp_path), "noise_batch_sizes": [32],
                                    "noise_draws": 40}, kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    root = tmp_path / "ci"
    table = __import__("pandas").read_csv(root / "tables" / "imbalance_study.csv")
    assert set(table["dataset"]) == {"synthetic-imbalanced"}  # mfeat's runs were not trained: left out
    assert {"joint", "cggm", "cggm+guard"} <= set(table["method"])
    assert (root / "figures" / "imbalance_study.png").stat().st_size > 10_000
    noise = __import__("pandas").read_csv(root / "tables" / "imbalance_noise.csv")
    assert noise["noise_fraction"].dropna().between(0, 1).all() and set(noise["batch_size"]) == {32}
    assert (root / "figures" / "imbalance_noise.png").stat().st_size > 10_000
    speed = __import__("pandas").read_csv(root / "tables" / "imbalance_speed.csv")
    assert set(speed["method"]) == {"joint", "cggm"} and speed["rho"].between(-1, 1).all()
    assert all((root / "figures" / f"imbalance_speed_{m}.png").stat().st_size > 10_000 for m in ("joint", "cggm"))
    text = json.dumps([c.get("outputs") for c in nbformat.read(tmp_path / "executed.ipynb", 4).cells])
    assert "Under joint training the linear probe" in text and "Batch sampling alone accounts for" in text
    assert "Within a window, B_m and the held-out learning speed" in text


@pytest.mark.notebook
def test_the_worker_notebook_trains_a_study_spec_with_its_data_setting(tmp_path):
    import json

    import papermill as pm

    from cggmlib.repro import pipeline
    from conftest import ROOT

    spec = next(s for s in pipeline.grid(pipeline.get_profile("ci")) if s.label == "study.synthetic-imbalanced.joint")
    assert spec.other_settings == {"data_kwargs": {"setting": "imbalanced"}}
    settings = {"data_kwargs": spec.other_settings["data_kwargs"] | {"num_samples": 200}}
    pm.execute_notebook(ROOT / "notebooks/10_train.ipynb", tmp_path / "executed.ipynb",
                        parameters={"dataset": "synthetic", "strategy": "joint", "epochs": 1, "out_dir": str(tmp_path / "run"),
                                    "settings": settings, "threads": 1}, kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data_kwargs"] == {"setting": "imbalanced", "num_samples": 200}


def _evidence_tables(folder):
    """The three tables `make reproduce` writes for the study, in their CSV columns, with chosen values."""
    import pandas as pd

    folder.mkdir()
    rows = [("joint", "a", -0.05, -0.08, -0.02, None, None, None), ("joint", "b", 0.0, -0.01, 0.01, None, None, None),
            ("joint", "fused", 0.0, 0.0, 0.0, None, None, None),
            ("cggm", "a", -0.03, -0.06, 0.0, 0.02, 0.01, 0.03), ("cggm", "b", 0.0, -0.01, 0.01, 0.0, -0.01, 0.01),
            ("cggm", "fused", 0.0, 0.0, 0.0, -0.004, -0.01, 0.002)]
    pd.DataFrame([{"dataset": "mfeat", "method": m, "modality": mod, "n": 2, "value": 0.9, "gap": g, "gap_low": lo,
                   "gap_high": hi, "vs_joint": v, "vs_joint_low": vl, "vs_joint_high": vh}
                  for m, mod, g, lo, hi, v, vl, vh in rows]).to_csv(folder / "imbalance_study.csv", index=False)
    pd.DataFrame([{"quantity": q, "modality": "a", "sd_fixed_weights": 0.061, "robust_sd_fixed_weights": 0.45,
                   "var_step_fixed": 1.0, "var_step_training": 1.2, "noise_fraction": 0.86, "dataset": "mfeat",
                   "batch_size": 64} for q in ("eps", "delta", "balance", "guarded")]).to_csv(
        folder / "imbalance_noise.csv", index=False)
    pd.DataFrame([{"dataset": "mfeat", "B": b, "kind": "within_window", "modality": "", "n": 450, "rho": r, "p": p,
                   "method": "joint"} for b, r, p in (("balance", 0.014, 0.7666), ("guarded", -0.1005, 0.0))]).to_csv(
        folder / "imbalance_speed.csv", index=False)


def test_evidence_page_blocks_are_written_from_the_tables(tmp_path):
    """docs/evidence.md's numbers come from `python -m cggmlib.repro.study --docs ... --tables ...`."""
    from pathlib import Path

    _evidence_tables(tmp_path / "tables")
    doc = tmp_path / "evidence.md"
    page = (Path(__file__).parents[1] / "docs" / "evidence.md").read_text()
    doc.write_text(page)
    assert study.main(["--docs", str(doc), "--tables", str(tmp_path / "tables")]) == 0
    text = doc.read_text()
    assert "a -5.0 [-8.0, -2.0]" in text and "1 of 2 modalities are below" in text  # the gaps
    assert "cggm vs joint: probe higher on a; fused test accuracy -0.4 points [-1.0, +0.2]" in text
    assert "median 86% of the released B_m" in text  # the noise block
    assert "| joint | mfeat | +0.01 (p = 0.77) | -0.10 (p < 1e-4) | 450 |" in text  # the speed block
    outside = text.split("<!-- evidence-study:begin -->")[0]
    assert outside == page.split("<!-- evidence-study:begin -->")[0]  # the prose is left alone
    with pytest.raises(ResultsError, match="missing"):
        study.evidence_blocks(tmp_path)
