"""Tables 1–8: aggregation over seeds, the paper | ours | Δ columns, n/a and missing rows, stand-in
marking, run-card citations, and the CSV / Markdown / LaTeX writers. Inputs are small frames in the
layout `cggmlib.repro.reports.collect` returns."""
import math

import pandas as pd
import pytest

from cggmlib.repro import ledger as L
from cggmlib.analysis import tables


def run(dataset, label, seed, metrics, standin=False, classifiers=None, done=True):
    return {"dataset": dataset, "label": label, "strategy": label.split(".")[0], "seed": seed, "kwargs": {},
            "groups": [], "path": f"/r/{dataset}/{label}/seed{seed}", "status": "done" if done else "missing",
            "done": done, "standin": standin, "metrics": metrics if done else None,
            "classifiers": classifiers, "card": f"{dataset}/{label}/seed{seed}/run_card.json" if done else None}


@pytest.fixture(scope="module")
def ledger():
    return L.load()


def test_results_table_mean_std_difference_flag_and_cards(ledger):
    runs = pd.DataFrame([run("iemocap", "cggm", s, {"acc": a, "f1": f}) for s, a, f in
                         [(0, 0.74, 0.73), (1, 0.76, 0.75), (2, 0.75, 0.74)]]
                        + [run("iemocap", "pmr", 0, {}, done=False)])
    t = tables.results_table(runs, ledger, "table4", "iemocap", ("acc", "f1"))
    cggm = t[t["Method"] == "CGGM"].iloc[0]
    assert cggm["Acc paper"] == "75.38" and cggm["Acc ours"] == "75.00 ± 1.00"
    assert cggm["Acc Δ"] == "-0.38" and cggm["flags"] == ""        # within 1 pp
    assert cggm["seeds"] == 3 and cggm["run cards"].count("run_card.json") == 3
    assert t[t["Method"] == "PMR"].iloc[0]["Acc ours"] == "missing"  # planned, not completed
    assert t[t["Method"] == "MRD"].iloc[0]["Acc ours"] == "not run"  # not in this profile's grid
    runs.loc[runs["label"] == "cggm", "metrics"] = [{"acc": 0.70, "f1": 0.7}] * 3
    flagged = tables.results_table(runs, ledger, "table4", "iemocap", ("acc",))
    assert "Acc beyond ±1" in flagged[flagged["Method"] == "CGGM"].iloc[0]["flags"]


def test_pmr_on_regression_is_na_with_its_reason(ledger):
    t = tables.results_table(pd.DataFrame([run("mosi", "joint", 0, {"mae": 0.8})]), ledger, "table4", "mosi", ("mae",))
    pmr = t[t["Method"] == "PMR"].iloc[0]
    assert pmr["MAE↓ ours"] == "n/a" and "regression" in pmr["note"]
    assert t[t["Method"] == "Baseline (joint training)"].iloc[0]["MAE↓ ours"] == "0.800"


def test_standin_results_are_marked_and_never_compared(ledger):
    runs = pd.DataFrame([run("food101", "cggm", 0, {"acc": 0.2, "f1": 0.1}, standin=True)])
    row = tables.results_table(runs, ledger, "table2", "food101", ("acc", "f1"))
    row = row[row["Method"] == "CGGM"].iloc[0]
    assert row["Acc ours"] == "20.00 (stand-in)" and row["Acc Δ"] == L.STANDIN_NOTE and row["flags"] == ""
    cmp = tables.comparisons(runs, ledger, ("table2",))
    known = cmp[cmp["paper"] != "–"]
    assert set(known["method"]) == {"cggm", "unimodal.text", "unimodal.image"}
    assert (known[known["method"] == "cggm"]["difference"] == L.STANDIN_NOTE).all()
    assert (known[known["method"] != "cggm"]["ours"] == "not run").all()


def test_table5_reads_the_classifiers_of_joint_and_cggm_and_the_unimodal_runs(ledger):
    cls = lambda a: {"audio": {"acc": a}, "vision": {"acc": a + 0.1}, "text": {"acc": a + 0.2}}  # noqa: E731
    runs = pd.DataFrame([run("iemocap", "unimodal.audio", 0, {"acc": 0.5}), run("iemocap", "unimodal.text", 0, {"acc": 0.6}),
                         run("iemocap", "joint", 0, {"acc": 0.7}, classifiers=cls(0.3)),
                         run("iemocap", "cggm", 0, {"acc": 0.7}, classifiers=cls(0.4))])
    t = tables.table5(runs, ledger).set_index("Classifier")
    assert list(t.index) == ["f1 (audio)", "f2 (video)", "f3 (text)"]
    assert t.loc["f1 (audio)", "Unimodal ours"] == "50.00" and t.loc["f2 (video)", "Unimodal ours"] == "not run"
    assert t.loc["f3 (text)", "Joint ours"] == "50.00" and t.loc["f3 (text)", "CGGM ours"] == "60.00"
    numbers = tables.classifier_accuracy(runs, "iemocap")
    assert numbers.loc["vision", "cggm"] == pytest.approx(0.5) and math.isnan(numbers.loc["vision", "unimodal"])


def test_table6_rows_and_settings(ledger):
    labels = ["joint", "cggm.magnitude", "cggm.direction", "cggm.both"]
    runs = pd.DataFrame([run("iemocap", lab, 0, {"acc": 0.6 + 0.01 * k, "f1": 0.5}) for k, lab in enumerate(labels)])
    t = tables.table6(runs, ledger)
    assert list(t["ρ"]) == ["–", "1.0", "none", "1.0"] and list(t["λ"]) == ["–", "0", "0.1", "0.1"]
    assert list(t["Acc ours"]) == ["60.00", "61.00", "62.00", "63.00"]


def test_sweep_is_paired_by_seed():
    rows = [run("iemocap", "joint", s, {"acc": 0.60 + 0.01 * s, "f1": 0.5}) for s in range(3)]
    rows += [run("iemocap", "cggm.rho1.2", s, {"acc": 0.62 + 0.01 * s, "f1": 0.5}) for s in range(3)]
    out = tables.sweep(pd.DataFrame(rows), {"rho": {1.2: ("iemocap", "cggm.rho1.2")}})
    acc = out[out["metric"] == "acc"].iloc[0]
    assert acc["mean"] == pytest.approx(0.02) and acc["std"] == pytest.approx(0.0, abs=1e-12) and acc["n"] == 3


def test_table1_table7_table8(ledger):
    t1 = tables.table1({"mosi": {"modalities": ["text", "audio", "vision"], "sizes": {"train": 5, "val": 2, "test": 3},
                                 "standin": True}}, ledger).set_index("Dataset")
    assert t1.loc["mosi", "M paper"] == "3" and t1.loc["mosi", "train / val / test"] == "5 / 2 / 3"
    assert t1.loc["mosi", "data"] == "stand-in" and t1.loc["food101", "data"] == "not prepared"
    cfg = {"dataset": "mosi", "strategy": "cggm", "preset": "paper", "batch_size": 64, "optimizer": "adam", "lr": 0.001,
           "weight_decay": 0.0, "grad_clip": 0.8, "scheduler": "plateau", "warmup_epochs": 0, "epochs": 30,
           "model_kwargs": {}, "strategy_kwargs": {"rho": 1.3, "lam": 0.2, "head_lr": 0.0005}}
    t7 = tables.table7({"mosi": cfg}, ledger).set_index("Hyperparameter")
    assert t7.loc["ρ", "mosi used"] == "1.3" and t7.loc["variant", "mosi used"] == "official"
    assert t7.loc["ρ", "mosi paper"] == "–" and "layers=5" in t7.loc["model", "mosi used"]
    t8 = tables.table8({"mosi": {"classifier_params": 10, "param_mb": 0.1, "optimizer_state_mb": 0.2,
                                 "extra_peak_mb": "not measured on CPU", "device": "cpu", "standin": False}}, ledger)
    assert t8.iloc[0]["extra peak (MB)"] == "not measured on CPU" and t8.iloc[0]["paper (MB)"] == "–"


def test_writers_are_atomic_and_escape_latex(tmp_path):
    frame = pd.DataFrame({"Method": ["a_b & c"], "Acc ours": ["50.00 ± 1.00"], "ρ": [math.nan]})
    paths = tables.save(frame, tmp_path / "table9_demo", "Caption 100%", ["note: x_y"])
    assert [p.name for p in paths] == ["table9_demo.csv", "table9_demo.md", "table9_demo.tex"]
    tex = paths[2].read_text()
    assert r"a\_b \& c" in tex and r"$\pm$" in tex and r"$\rho$" in tex and r"Caption 100\%" in tex
    md = paths[1].read_text()
    assert "| a_b & c | 50.00 ± 1.00 |  |" in md and md.rstrip().endswith("note: x_y")
    assert pd.read_csv(paths[0]).shape == (1, 3)
    assert not list(tmp_path.glob(".*.tmp"))
