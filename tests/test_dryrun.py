"""The paper profile's dry run (cggmlib/repro/dryrun.py): step limits, the dryrun profile, labelled shape reuse,
and the worker receiving every setting of its run."""
import dataclasses
import json

import pytest

import cggmlib as cg
from cggmlib.repro import pipeline, steps
from cggmlib.data.standins import write_standin
from cggmlib.repro.dryrun import MARKER, shape_key, shape_phases
from cggmlib.errors import ConfigError
from cggmlib.presets import train_kwargs
from cggmlib.repro.reports import spec_status


def test_max_steps_stops_the_epoch_and_evaluation_early():
    full = cg.Config(dataset="synthetic", strategy="joint", epochs=1, batch_size=16, device="cpu")
    cfg = full.replace(max_steps=2, max_eval_batches=1)
    data = cg.load_data("synthetic", batch_size=16)
    model = cg.build_model("synthetic", data, cfg.preset)
    result = cg.train(model, cg.make_strategy("joint"), data, cfg, progress=False)
    assert len(result.trace.steps()) == 2 < len(data.train)
    assert cfg.key() != full.key()  # a dry-run folder is never taken for a real run
    # off, the key is the one every real run had before the field existed (results stay valid)
    assert cg.Config(dataset="synthetic", strategy="joint", device="cpu").key() == "47b8d0b494d5"
    with pytest.raises(ConfigError, match="max_steps must be an integer >= 0"):
        full.replace(max_steps=-1)


@pytest.mark.parametrize("name", ["paper", "colab", "smoke", "ci"])
def test_real_profiles_never_limit_steps_or_batches(name):
    profile = pipeline.PROFILES[name]
    for spec in pipeline.grid(profile):
        cfg = spec.config(profile)
        assert (cfg.max_steps, cfg.max_eval_batches) == (0, 0)
        assert cfg.batch_size == train_kwargs(spec.dataset, profile.preset)["batch_size"]


def test_dryrun_profile_is_the_paper_grid_with_limits():
    paper, dry = pipeline.PROFILES["paper"], pipeline.PROFILES["dryrun"]
    where = lambda p: sorted((s.dataset, s.label, s.seed) for s in pipeline.grid(p))  # noqa: E731
    assert where(dry) == where(paper)
    for spec in pipeline.grid(dry):
        cfg = spec.config(dry)
        assert cfg.preset == "paper" and cfg.max_steps == 2 and cfg.max_eval_batches == 1 and cfg.epochs == 1
    assert len({shape_key(s) for s in pipeline.grid(dry)}) < len(pipeline.grid(dry)) / 2


def test_the_worker_receives_every_setting_of_its_run(tmp_path):
    """The audit's corrections set other Config fields (lr_warmup, model_kwargs, task_kwargs): the worker
    must build exactly the spec's configuration (before, it dropped them and trained the official run)."""
    profile = pipeline.PROFILES["paper"]
    ctx = steps.Context(profile, tmp_path, tmp_path / "data", tmp_path, threads=1)
    fixes = [s for s in pipeline.grid(profile) if s.settings]
    assert fixes
    for spec in fixes:
        p = ctx.parameters(pipeline.worker_step(spec))
        cfg = cg.Config(dataset=p["dataset"], strategy=p["strategy"], strategy_kwargs=p["strategy_kwargs"],
                        seed=p["seed"], preset=p["preset"], epochs=p["epochs"] or None, **p["settings"])
        assert cfg.key() == spec.config(profile).key(), spec.label


def test_tiny_dry_run_trains_one_step_and_copies_the_same_shape(tmp_path, monkeypatch):
    """One dataset, one step, through the real worker notebook; the second seed is a labelled copy."""
    tiny = dataclasses.replace(pipeline.PROFILES["dryrun"], name="dryrun_tiny", max_steps=1, threads=1,
                               standin_size={"mosi": {"train": 24, "valid": 8, "test": 8}})
    monkeypatch.setitem(pipeline.PROFILES, "dryrun_tiny", tiny)
    data_root = tmp_path / "data"
    write_standin("mosi", data_root, train=24, valid=8, test=8)
    first, second = [s for s in pipeline.grid(tiny) if s.dataset == "mosi" and s.label == "joint"][:2]
    assert shape_key(first) == shape_key(second) and first.seed != second.seed
    ctx = steps.Context(tiny, tmp_path / "results", data_root, steps.notebooks_folder(), threads=1)
    records = [steps.run_step(ctx, pipeline.worker_step(s)) for s in (first, second)]
    assert [r["status"] for r in records] == ["ran", "skipped"], records
    a, b = first.path(ctx.results, tiny), second.path(ctx.results, tiny)
    config = json.loads((a / "config.json").read_text())
    assert config["max_steps"] == 1 and config["max_eval_batches"] == 1 and config["preset"] == "paper"
    assert len(cg.load_run(a)["trace"].dropna(subset=["loss"])) == 1
    assert json.loads((b / MARKER).read_text())["copy_of"] == str(a.relative_to(ctx.root))
    assert json.loads((b / "run_card.json").read_text())["dry_run_copy_of"] == str(a.relative_to(ctx.root))
    assert json.loads((b / "config.json").read_text())["seed"] == second.seed
    assert spec_status(first, ctx.results, tiny) == spec_status(second, ctx.results, tiny) == "done"
    assert not list(a.glob("*.pt")) and not list(b.glob("*.pt"))  # a dry run keeps no checkpoints


class CountingLoader:
    """The real training loader, counting the batches drawn from it."""

    def __init__(self, loader):
        self.loader, self.drawn = loader, 0

    def __iter__(self):
        for batch in self.loader:
            self.drawn += 1
            yield batch

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def test_max_steps_also_limits_gblending_estimation_copies_and_loss_estimates():
    """G-Blending trains a copy per head for super_epoch epochs at epoch 0 and measures each head's train
    and validation losses: a dry run limits all of those passes (a full pass made its BraTS dry run 25 min)."""
    drawn = {}
    for limit in (0, 1):
        cfg = cg.Config(dataset="synthetic", strategy="gblending", strategy_kwargs={"super_epoch": 2}, epochs=1,
                        batch_size=32, device="cpu", max_steps=limit)
        data = cg.load_data("synthetic", batch_size=cfg.batch_size, num_samples=300)
        data.train, data.val = CountingLoader(data.train), CountingLoader(data.val)
        model = cg.build_model("synthetic", data, cfg.preset)
        cg.train(model, cg.make_strategy("gblending", **cfg.strategy_kwargs), data, cfg, progress=False)
        drawn[limit] = data.train.drawn, data.val.drawn
    heads, n, n_val = 3 + 1, len(data.train), len(data.val)
    assert n >= 3 and n_val >= 2
    # unlimited: the loss estimate at the start (1 pass), per head a copy's super_epoch=2 epochs and its
    # loss estimate (3 passes), the loop's epoch (1 pass)
    assert drawn[0][0] == (1 + heads * 3 + 1) * n
    # a dry run: each copy trains one epoch instead of super_epoch, and every pass takes 1 batch; the
    # loop's epoch draws 2 (the second only to stop)
    assert drawn[1][0] == 1 + heads * 2 + 2
    # validation: the 1 + heads loss estimates take 1 batch each instead of a full pass
    assert drawn[0][1] - drawn[1][1] == (1 + heads) * (n_val - 1)


def test_parallel_dry_run_trains_each_shape_once():
    """Jobs in parallel take one run of every shape first and the copies after, so no shape trains twice
    (two seeds of one shape side by side both found nothing to copy, and both trained)."""
    profile = pipeline.PROFILES["dryrun"]
    workers = [s for s in pipeline.plan(profile) if s.kind == "worker"]
    first, rest = shape_phases(workers)
    keys = [shape_key(s.spec) for s in first]
    assert len(keys) == len(set(keys)) and {shape_key(s.spec) for s in rest} <= set(keys)
    assert len(first) + len(rest) == len(workers) and len(rest) > len(first) > 0
    assert shape_phases(workers[:1]) == [workers[:1]]


def test_max_steps_also_limits_the_unimodal_teachers_of_umt_and_ume(tmp_path):
    """UMT/UME train a teacher per modality for teacher_epochs full epochs: a dry run trains each for
    max_steps steps of one epoch, and caches them apart from real teachers (IEMOCAP's took 10 min)."""
    import torch

    for name in ("umt", "ume"):
        cfg = cg.Config(dataset="synthetic", strategy=name, epochs=1, batch_size=32, device="cpu", max_steps=1,
                        strategy_kwargs={"teacher_epochs": 5, "teacher_dir": str(tmp_path / name)})
        data = cg.load_data("synthetic", batch_size=cfg.batch_size, num_samples=300)
        data.train = CountingLoader(data.train)
        model = cg.build_model("synthetic", data, cfg.preset)
        cg.train(model, cg.make_strategy(name, **cfg.strategy_kwargs), data, cfg, progress=False)
        # 3 teachers and the loop: one step each, and one more batch drawn to stop (5 epochs: 3 x 5 x n)
        assert data.train.drawn == 4 * 2, name
        (folder,) = (tmp_path / name).iterdir()
        states = [torch.load(p, weights_only=False) for p in sorted(folder.glob("*.pt"))]
        assert len(states) == 3 and all(s["settings"]["epochs"] == 1 for s in states), name


def test_dry_run_keeps_and_copies_the_weights_a_report_reads(tmp_path, monkeypatch):
    """The imbalance study probes each run's frozen encoders (best.pt): a dry run keeps and copies the selected
    weights of its runs (41_imbalance_study failed without them) and drops them everywhere else."""
    from cggmlib.repro.dryrun import keeps_weights

    tiny = dataclasses.replace(pipeline.PROFILES["dryrun"], name="dryrun_tiny", max_steps=1, threads=1)
    monkeypatch.setitem(pipeline.PROFILES, "dryrun_tiny", tiny)
    grid = pipeline.grid(tiny)
    first, second = [s for s in grid if s.dataset == "synthetic" and "study" in s.groups][:2]
    other = next(s for s in grid if s.dataset == "synthetic" and "study" not in s.groups)
    assert shape_key(first) == shape_key(second) and keeps_weights(first) and not keeps_weights(other)
    ctx = steps.Context(tiny, tmp_path / "results", tmp_path / "data", steps.notebooks_folder(), threads=1)
    records = [steps.run_step(ctx, pipeline.worker_step(s)) for s in (first, second, other)]
    assert [r["status"] for r in records] == ["ran", "skipped", "ran"], records
    a, b, c = (s.path(ctx.results, tiny) for s in (first, second, other))
    for run in (a, b):  # trained, and its labelled copy
        assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "best_strategy.pt"], run
    assert (b / MARKER).exists() and not list(c.glob("*.pt"))


def test_dry_run_probes_the_study_retrainings_at_every_step(tmp_path):
    """Notebook 41 retrains a run and probes it every `speed_every` steps; a dry run's runs train 2 steps, so
    the default of 5 gave no probe and the report failed: the dry run passes 1."""
    report = next(s for s in pipeline.REPORTS if s.name == "41_imbalance_study")
    for name, expected in (("dryrun", {"speed_every": 1}), ("smoke", {})):
        ctx = steps.Context(pipeline.PROFILES[name], tmp_path, tmp_path / "data", steps.notebooks_folder(), threads=1)
        params = ctx.parameters(report)
        assert {k: v for k, v in params.items() if k == "speed_every"} == expected, name
