"""Notebooks: committed clean (no outputs, one typed `parameters` cell, no def/class) and executed
through papermill with tiny parameters, asserting on the files they write."""
import ast
import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    assert code[0] is tagged[0] or (code[1] is tagged[0] and "google.colab" in code[0].source), \
        "the parameters cell is the first code cell (after the Colab-only install cell)"
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.AnnAssign), f"parameters must be `name: type = literal`, got {ast.unparse(node)}"
        ast.literal_eval(node.value)
    for cell in code:
        tree = ast.parse(cell.source)
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))], \
            "notebooks narrate; functions and classes belong in cggmlib"
    assert len(code) <= 25
    assert "colab.research.google.com" in nb.cells[0].source, "an Open in Colab badge in the first cell"


@pytest.mark.notebook
def test_quickstart_runs_and_writes_runs_summary_and_figures(tmp_path):
    out = tmp_path / "quickstart"
    pm.execute_notebook(ROOT / "notebooks/00_quickstart.ipynb", tmp_path / "executed.ipynb",
                        parameters={"epochs": 2, "seeds": 1, "out_dir": str(out), "threads": 1},
                        kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    for run in ("joint", "cggm", "cggm+guard", "unimodal-m1"):
        metrics = json.loads((out / "synthetic-imbalanced" / run / "seed0" / "metrics.json").read_text())
        assert 0.0 <= metrics["acc"] <= 1.0 and metrics["dataset"] == "synthetic"
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["method"]) == {"joint", "cggm", "cggm+guard"}
    probes = summary[summary["modality"] != "fused"]
    assert probes["value"].between(0, 1).all() and probes["gap"].notna().all()  # every probe has its unimodal reference
    text = json.dumps([c.get("outputs") for c in nbformat.read(tmp_path / "executed.ipynb", 4).cells])
    assert "Under joint training the linear probe" in text
    for ext in ("png", "pdf"):
        assert (out / "figures" / f"quickstart_dynamics.{ext}").stat().st_size > 10_000


@pytest.mark.notebook
def test_your_model_notebook_runs_joint_cggm_and_a_baseline_and_writes_its_summary(tmp_path):
    out = tmp_path / "your_model"
    pm.execute_notebook(ROOT / "notebooks/80_your_model.ipynb", tmp_path / "executed.ipynb",
                        parameters={"epochs": 2, "seeds": [0], "knob_grid": {"lam": [0.0]}, "out_dir": str(out),
                                    "threads": 1}, kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test_acc"]) == {"joint", "cggm", "ogm_ge"}
    assert all(0.5 < acc <= 1.0 for acc in summary["test_acc"].values())  # 10 classes: far above chance
    assert {summary["weak"], summary["strong"]} == {"fac", "mor"}
    factors = [v for k, v in summary["changed"].items() if k.startswith("mean gradient factor")]
    assert len(factors) == 2 and all(0.0 <= f <= 1.3 for f in factors)  # guarded: ρ·B_m with B_m in [0, 1]
    assert [k["knob"] for k in summary["knobs"]] == ["(section 3)", "lam"]
    for run in ("joint", "cggm", "ogm_ge"):
        assert (out / run / "seed0" / "checkpoint.pt").exists()
    assert (out / "figures" / "your_model_dynamics.png").stat().st_size > 10_000


# --- cggm reproduce end to end (profile `ci`: the smoke profile's smallest grid) --------------------------
# One session-scoped fixture runs the pipeline three times into a temporary results folder: a run killed
# with SIGKILL once three runs are complete, the rerun that finishes its data and training steps (two
# parallel jobs), and reviewer mode (--render-only: every report, run-card verification, the ledger).
# Four to six minutes on two cores; every test below asserts on the files written.
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


from cggmlib.repro import pipeline, steps  # noqa: E402
from cggmlib.repro.pipeline import DATA_STEPS, REPORTS  # noqa: E402
from cggmlib.errors import ConfigError  # noqa: E402

ENV = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}


def _completed(root):
    return sorted(root.glob("*/*/seed*/metrics.json")) if root.is_dir() else []


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory, worker_id):
    """Built once per test session, also under xdist: the first worker to need it builds it under a file
    lock in the session's shared temporary folder, the others wait and read its summary. (`xdist_group`
    cannot keep these tests on one worker: pytest-xdist 3.8 does not group under pytest 9.2.)"""
    from filelock import FileLock

    if worker_id == "master":
        return _reproduce(tmp_path_factory.mktemp("reproduce"))
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/: one per session, shared by its workers
    summary = shared / "reproduce.json"
    with FileLock(str(shared / "reproduce.lock")):
        if not summary.exists():
            made = _reproduce(shared / "reproduce")
            summary.write_text(json.dumps({"root": str(made["root"]), "finished": sorted(map(str, made["finished"])),
                                           "killed": {str(p): t for p, t in made["killed"].items()}}))
    stored = json.loads(summary.read_text())
    return {"root": Path(stored["root"]), "finished": {Path(p) for p in stored["finished"]},
            "killed": {Path(p): t for p, t in stored["killed"].items()}}


def _reproduce(base):
    base.mkdir(parents=True, exist_ok=True)
    root = base / "results" / "ci"
    cmd = [sys.executable, "-m", "cggmlib", "reproduce", "--profile", "ci", "--results", str(base / "results")]
    with open(base / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd + ["--jobs", "2"], env=ENV, cwd=base, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while len(_completed(root)) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, "the pipeline ended before it could be killed: see killed.log"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(1)  # its workers and kernels go with it within a fraction of a second (tests/test_no_orphans.py)
    killed = {p: p.stat().st_mtime_ns for p in _completed(root)}
    # trained, but killed while the notebook wrote its receipts: the rerun finishes these without training
    finished = {p for p in killed if (p.parent / "10_train.ipynb").exists()}
    # the rerun trains what is left; the reports then run once, in reviewer mode (the same report steps a
    # full `cggm reproduce` ends with), which also verifies every run card
    for args, name in ((["--jobs", "2", "--only", "data", "train"], "rerun"), (["--render-only", "--jobs", "2"], "render")):
        done = subprocess.run(cmd + args, env=ENV, cwd=base, capture_output=True, text=True, timeout=1200)
        (base / f"{name}.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"root": root, "killed": killed, "finished": finished}


@pytest.mark.notebook
def test_reproduce_writes_every_paper_figure_and_table(reproduced):
    root = reproduced["root"]
    for k in range(2, 8):
        for ext in ("png", "pdf"):
            files = list((root / "figures").glob(f"fig{k}_*.{ext}"))
            assert files and all(f.stat().st_size > 10_000 for f in files), (k, ext)
    for k in range(1, 9):
        for ext in ("csv", "md", "tex"):
            assert list((root / "tables").glob(f"table{k}_*.{ext}")), (k, ext)
    index = (root / "index.html").read_text()
    for f in [*(root / "figures").glob("*.png"), *(root / "tables").glob("*.csv")]:
        assert f.name in index, f.name
    assert (root / "index.md").exists() and "Stand-in and synthetic data" in index


@pytest.mark.notebook
def test_every_notebook_and_run_leaves_its_executed_copy(reproduced):
    root = reproduced["root"]
    names = {p.stem for p in (root / "notebooks").glob("*.ipynb")}
    assert names == {s.name for s in (*DATA_STEPS, *REPORTS)}
    runs = [p.parent for p in _completed(root)]
    assert len(runs) == len(pipeline.grid(pipeline.get_profile("ci")))
    for run in runs:
        nb = nbformat.read(run / "10_train.ipynb", as_version=4)
        assert nb.metadata.papermill.parameters["dataset"] == run.parents[1].name
        assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    leftovers = [p for p in root.rglob("*") if p.name.endswith((".partial.ipynb", ".failed.ipynb", ".tmp"))]
    assert leftovers == []


@pytest.mark.notebook
def test_a_killed_pipeline_resumes_without_redoing_completed_runs(reproduced):
    killed, finished = reproduced["killed"], reproduced["finished"]
    assert len(killed) >= 3 and finished  # two jobs: at most two of the three trained runs were still running
    assert {p: p.stat().st_mtime_ns for p in killed} == killed  # no trained run was trained again
    status = {s["step"]: s["status"] for s in json.loads((reproduced["root"] / "pipeline.json").read_text())["steps"]}
    for p in killed:
        run = p.parent
        assert status[f"10_train:{run.parents[1].name}/{run.parent.name}/{run.name}"] == \
            ("skipped" if p in finished else "ran")


@pytest.mark.notebook
def test_render_only_verifies_run_cards_and_rechecks_the_ledger(reproduced):
    root = reproduced["root"]
    render = json.loads((root / "render.json").read_text())
    assert render["render_only"] and render["failed"] == [] and {s["kind"] for s in render["steps"]} == {"report"}
    assert render["ledger"]["problems"] == [] and render["ledger"]["known_cells"] == 17 and render["ledger"]["flagged"] == 0
    verification = pd.DataFrame(json.loads((root / "verification.json").read_text()))
    assert (verification["status"] == "ok").all(), verification[verification["status"] != "ok"]
    ledger = pd.read_csv(root / "tables" / "ledger_comparison.csv", keep_default_na=False)
    known = ledger[(ledger["paper"] != "–") & (ledger["ours"] != "not run")]
    assert len(known) >= 3 and (known["difference"] == "stand-in: not comparable").all()
    table2 = pd.read_csv(root / "tables" / "table2_food101.csv", keep_default_na=False).set_index("Method")
    assert table2.loc["CGGM", "Acc ours"].endswith("(stand-in)") and table2.loc["CGGM", "Acc paper"] == "92.94"
    for cards in table2["run cards"]:
        for card in filter(None, cards.split("; ")):
            assert (root / card).is_file()
    memory = pd.read_csv(root / "tables" / "table8_memory.csv", keep_default_na=False)
    assert (memory["extra peak (MB)"] == "not measured on CPU").all() and (memory["classifier parameters"] > 0).all()


@pytest.mark.notebook
@pytest.mark.parametrize("parameters, message", [
    ({"strategy": "nope"}, "unknown strategy 'nope'"),
    ({"dataset": "nope"}, "unknown dataset 'nope'"),
    ({"strategy_kwargs": {"rho": -1.0}}, "rho"),
])
def test_bad_worker_parameters_stop_with_a_config_error(tmp_path, parameters, message):
    out = tmp_path / "run" / "10_train.ipynb"
    with pytest.raises(ConfigError, match=message) as err:
        steps.execute(ROOT / "notebooks" / "10_train.ipynb", out, parameters | {"out_dir": str(tmp_path / "run"), "threads": 1},
                     cwd=tmp_path)
    assert "failed: ConfigError" in str(err.value)
    assert not out.exists() and (tmp_path / "run" / "10_train.failed.ipynb").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
