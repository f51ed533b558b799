"""The reproduction pipeline without notebooks: profiles and their grids, the plan, run status keyed by
configuration, moving stale runs aside, run-card completion and verification, the run lock, the
index page and the command line. The end-to-end papermill runs are in test_notebooks.py."""
import json
import os
import subprocess
import sys
import time

import pytest

import cggmlib as cg
from cggmlib.repro import jobs, pipeline, reports, steps, worker
from cggmlib.repro.verify import verify
from cggmlib.runs.checksums import data_checksums
from cggmlib.runs.lock import claim
from cggmlib.errors import ConfigError, ResultsError
from cggmlib.modulation import make_strategy


@pytest.mark.parametrize("name", sorted(pipeline.PROFILES))
def test_every_run_of_every_profile_is_a_valid_configuration(name):
    profile = pipeline.get_profile(name)
    specs = pipeline.grid(profile)
    for s in specs:
        make_strategy(s.strategy, **s.strategy_kwargs)  # options accepted by the strategy
        assert s.groups, s
    assert len({(s.dataset, s.label, s.seed) for s in specs}) == len(specs)
    assert len({s.config(profile).key() for s in specs}) == len(specs)


def test_paper_grid_covers_the_compared_methods_on_every_dataset_with_three_seeds():
    paper = pipeline.get_profile("paper")
    have = {(s.dataset, s.label, s.seed) for s in pipeline.grid(paper) if "main" in s.groups}
    for d in pipeline.PAPER_DATASETS:
        for method in pipeline.COMPARED:
            for seed in (0, 1, 2):
                assert ((d, method, seed) in have) == (pipeline.not_applicable(method, d) is None), (d, method)
        for m in pipeline.MODALITIES[d]:
            assert (d, f"unimodal.{m}", 2) in have
    assert pipeline.not_applicable("pmr", "mosi") and pipeline.not_applicable("pmr", "iemocap") is None
    assert paper.preset == "paper" and pipeline.get_profile("colab").checkpoint_every > 0
    colab = {s.config(pipeline.get_profile("colab")).key() for s in pipeline.grid(pipeline.get_profile("colab"))}
    assert colab == {s.config(paper).key() for s in pipeline.grid(paper)}  # same runs, other folder


def test_ablation_and_sweep_settings():
    smoke = pipeline.get_profile("smoke")
    specs = {(s.dataset, s.label): s for s in pipeline.grid(smoke)}
    assert specs[("iemocap", "cggm.magnitude")].strategy_kwargs == {"rho": 1.0, "lam": 0.0}
    assert specs[("iemocap", "cggm.direction")].strategy_kwargs == {"magnitude": False, "lam": 0.1}
    assert specs[("brats2021", "cggm.fix_scaled")].strategy_kwargs == {"scaled": "encoder"}
    assert specs[("food101", "cggm.fix_text_projection")].config(smoke).model_kwargs == {"text_projection": "own"}
    assert specs[("brats2021", "cggm.fix_dice")].config(smoke).task_kwargs == {"smooth_numerator": True}
    assert specs[("brats2021", "cggm.fix_warmup")].config(smoke).lr_warmup == "exclusive"
    for label, (_, _, datasets) in pipeline.FIXES.items():  # each correction beside its official run
        assert all((d, label) in specs and (d, "cggm") in specs for d in datasets), label
    assert not [s for s in pipeline.grid(pipeline.get_profile("ci")) if s.label.startswith("cggm.fix_")]
    assert specs[("iemocap", "joint")].strategy_kwargs == {"observe": True}
    assert specs[("mfeat", "umt")].strategy_kwargs == {"teacher_epochs": smoke.epochs["mfeat"]}
    labels = pipeline.sweep_labels(smoke)
    assert labels["rho"][1.3] == ("iemocap", "cggm")   # the preset's ρ is the main CGGM run, trained once
    assert labels["rho"][0.8] == ("iemocap", "cggm.rho0.8")
    assert {"gradients", "memory"} <= specs[("brats2021", "cggm")].artifacts


def test_plan_order_only_and_render_only():
    ci = pipeline.get_profile("ci")
    steps = pipeline.plan(ci)
    kinds = [s.kind for s in steps]
    assert kinds == sorted(kinds, key=["data", "worker", "explainer", "report"].index)
    assert "00_quickstart" not in [s.name for s in steps]  # ci: the quickstart has its own test
    assert [s.name for s in pipeline.plan(pipeline.get_profile("smoke")) if s.kind == "explainer"] == \
        ["00_quickstart", "80_your_model"]
    assert [s.name for s in pipeline.plan(ci, ["quickstart"])] == ["00_quickstart"]
    assert [s.name for s in pipeline.plan(ci, ["80"])] == [s.name for s in pipeline.plan(ci, ["your_model"])] == \
        ["80_your_model"]
    only = pipeline.plan(ci, ["table6"])
    assert [s.name for s in only if s.kind != "worker"] == ["01_data_iemocap", "40_ablations"]
    # 40_ablations also draws Figure 5, whose ci sweep is the main CGGM run (ρ 1.3, λ 0.2)
    assert {s.spec.label for s in only if s.kind == "worker"} == {"joint", "cggm", "cggm.magnitude", "cggm.direction",
                                                                 "cggm.both"}
    assert pipeline.sweep_labels(ci) == {"rho": {1.3: ("iemocap", "cggm")}, "lam": {0.2: ("iemocap", "cggm")}}
    assert [s.name for s in pipeline.plan(ci, ["30"])][-1] == "30_dynamics"
    assert all(s.kind == "report" for s in pipeline.plan(ci, render_only=True))
    assert [s.name for s in pipeline.plan(ci, ["01_data_mosi"])] == ["01_data_mosi"]
    with pytest.raises(ConfigError, match="nothing matches"):
        pipeline.plan(ci, ["fig9"])
    with pytest.raises(ConfigError, match="unknown profile"):
        pipeline.get_profile("fast")


@pytest.fixture
def ci_run(tmp_path):
    """One real run of the ci grid (synthetic, 2 epochs), trained as the worker notebook does."""
    profile = pipeline.get_profile("ci")
    ctx = steps.Context(profile, tmp_path / "results", tmp_path / "data", steps.notebooks_folder(), threads=1)
    spec = pipeline.find(profile, "synthetic", "cggm")
    step = pipeline.worker_step(spec)
    return profile, ctx, spec, step


def test_status_moves_from_missing_to_done_and_stale_runs_are_moved_aside(ci_run):
    profile, ctx, spec, step = ci_run
    run_dir = spec.path(ctx.results, profile)
    assert reports.spec_status(spec, ctx.results, profile) == "missing"
    steps.prepare_run_dir(ctx, step, "missing")
    assert reports.spec_status(spec, ctx.results, profile) == "partial"
    cfg = spec.config(profile, ctx.data_root)
    result = worker.train_or_load(cfg, run_dir, progress=False)
    worker.finish_run(run_dir, result, spec.artifacts, cache_dir=ctx.root / "datasets")
    card = json.loads((run_dir / "run_card.json").read_text())
    assert card["data_receipt"].startswith("generated in memory") and card["config_key"] == cfg.key()
    assert reports.spec_status(spec, ctx.results, profile) == "partial"   # the executed notebook is missing
    (run_dir / "10_train.ipynb").write_text("{}")
    assert reports.spec_status(spec, ctx.results, profile) == "done"
    mtime = (run_dir / "metrics.json").stat().st_mtime_ns
    again = worker.train_or_load(cfg, run_dir, progress=False)              # loaded, not retrained
    assert again.metrics == result.metrics and (run_dir / "metrics.json").stat().st_mtime_ns == mtime
    frame = verify(ctx.results, profile)
    row = frame[frame["run"] == "synthetic/cggm/seed0"].iloc[0]
    assert row["status"] == "ok", row["problems"]
    assert (frame["status"] == "missing").sum() == len(frame) - 1
    # another configuration in the same folder: stale, moved aside (never deleted), then restarted
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(config | {"epochs": 3}))
    assert reports.spec_status(spec, ctx.results, profile) == "stale"
    steps.prepare_run_dir(ctx, step, "stale")
    aside = list((ctx.root / ".superseded" / "synthetic" / "cggm").iterdir())
    assert len(aside) == 1 and (aside[0] / "metrics.json").exists()
    assert reports.spec_status(spec, ctx.results, profile) == "partial"


def test_verify_reports_a_tampered_run_card(ci_run):
    profile, ctx, spec, step = ci_run
    run_dir = spec.path(ctx.results, profile)
    steps.prepare_run_dir(ctx, step, "missing")
    worker.finish_run(run_dir, worker.train_or_load(spec.config(profile, ctx.data_root), run_dir, progress=False), ())
    card = json.loads((run_dir / "run_card.json").read_text())
    (run_dir / "run_card.json").write_text(json.dumps(card | {"config_key": "0" * 12, "git_commit": None}))
    problems = verify(ctx.results, profile).set_index("run").loc["synthetic/cggm/seed0", "problems"]
    assert "run card key" in problems and "git_commit" in problems and "10_train.ipynb" in problems


def test_data_checksums_cover_the_files_and_are_cached(tmp_path, monkeypatch):
    from cggmlib.data.standins import write_standin

    write_standin("mosi", tmp_path / "data", noalign=False, train=20, valid=5, test=5)
    (tmp_path / "data" / "mosi" / "cache").mkdir()
    (tmp_path / "data" / "mosi" / "cache" / "derived.bin").write_bytes(b"x")
    sums, how = data_checksums("mosi", tmp_path / "data", tmp_path / "cache")
    assert set(sums) == {"mosi_data.pkl", "STANDIN.json"} and all(v.startswith("sha256:") for v in sums.values())
    monkeypatch.setattr("cggmlib.data.checksums", lambda *a, **k: pytest.fail("not served from the cache"))
    assert data_checksums("mosi", tmp_path / "data", tmp_path / "cache")[0] == sums


def test_the_run_lock_keeps_a_second_process_out(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cggmlib.runs.lock import claim; "
                               f"claim({str(tmp_path)!r}); print('held', flush=True); time.sleep(20)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.time()
        with pytest.raises(ResultsError, match=f"being written by process {holder.pid} on "):
            claim(tmp_path, timeout_s=0.6)
        assert time.time() - started < 5
    finally:
        holder.kill()
        holder.wait()
    claim(tmp_path, timeout_s=5)  # free once the holder is gone


def test_jobs_are_pinned_to_gpus_round_robin(monkeypatch):
    import queue

    slots = queue.Queue()
    for i in range(3):
        slots.put(i)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    seen = []
    for _ in range(3):
        steps._init_job(slots, ["0", "1"])
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert steps.visible_gpus() == ["4", "5"]


def test_cli_reports_a_bad_profile_and_lists_reproduce(capsys):
    from cggmlib.commands import main

    assert main(["reproduce", "--profile", "fast"]) == 2
    assert "unknown profile 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    assert "--render-only" in capsys.readouterr().out


def test_colab_profile_asks_for_drive(tmp_path):
    if os.path.isdir("/content/drive"):
        pytest.skip("running on Colab")
    with pytest.raises(ConfigError, match="mount it first"):
        jobs.reproduce("colab")


def test_worker_parameters_rebuild_the_runs_configuration(tmp_path):
    """Each worker notebook gets everything its Config needs, Config fields beyond the strategy included:
    the Config the notebook builds from its parameters has the profile's configuration key."""
    profile = pipeline.get_profile("smoke")
    ctx = steps.Context(profile, tmp_path, tmp_path / "data", steps.notebooks_folder(), threads=1)
    workers = [s for s in pipeline.plan(profile) if s.kind == "worker"]
    assert any(s.spec.settings for s in workers)
    for step in workers:
        p = ctx.parameters(step)
        cfg = cg.Config(dataset=p["dataset"], strategy=p["strategy"], strategy_kwargs=p["strategy_kwargs"],
                        seed=p["seed"], preset=p["preset"], epochs=p["epochs"] or None, data_root=p["data_root"],
                        checkpoint_every=p["checkpoint_every"], **p["settings"])
        assert cfg.key() == step.spec.config(profile).key(), step.name
