"""Baselines in training: one epoch of every method on `synthetic` (regression, four modalities), on a tiny
segmentation problem and on the BraTS 2021 stand-in; state_dict round trips; resuming mid-epoch; the
unimodal contract UMT and UME rely on; the UMT/UME teacher cache.

The plain classification epoch of every strategy: tests/test_train.py::test_every_registered_strategy_trains_one_epoch.
"""
import copy
import io
import math
import os

import pytest
import torch
from torch import nn

import cggmlib as cg
from cggmlib.data.base import Data, TensorLoader
from cggmlib.models.base import MultimodalModel
from cggmlib.modulation import make_strategy, teachers
from cggmlib.tasks import Segmentation
from conftest import cfg, preset_model_on_synthetic, small_mlp_on_synthetic

torch.set_num_threads(1)

MINE = ["unimodal", "mrd", "mslr", "gblending", "greedy", "ogm", "ogm_ge"]
NEW = ["agm", "pmr", "qmf", "reconboost", "mmpareto", "umt", "ume"]
#: tiny-run settings: G-Blending re-estimates in epoch 0, Greedy may re-balance from the first step
KWARGS = {"gblending": {"super_epoch": 1}, "greedy": {"start_epoch": 0, "alpha": 0.0},
          "mslr": {"variant": "dynamic"}}
#: per-step trace columns each strategy must write ({m}: every modality); the first is checked on segmentation
COLUMNS = {"unimodal": [], "mrd": ["drop/{m}"], "mslr": ["lr_scale/{m}"], "gblending": ["loss_uni/{m}"],
           "greedy": ["util/{m}", "caring/{m}", "rebalancing", "d_util"],
           "ogm": ["coeff/{m}", "ratio/{m}", "score/{m}"], "ogm_ge": ["coeff/{m}", "ratio/{m}", "score/{m}"],
           "agm": ["coeff/{m}", "score/{m}", "ratio/{m}", "ratio_ref/{m}"],
           "pmr": ["score/{m}", "ratio/{m}", "weight/{m}", "loss_proto/{m}"],
           "qmf": ["weight/{m}", "loss_head/{m}", "rank/{m}"], "reconboost": ["coeff/{m}"],
           "mmpareto": ["coeff/{m}", "cos/{m}", "weight/{m}", "loss_head/{m}"], "umt": ["distill/{m}"],
           "ume": ["weight/{m}"]}


def options(name, tmp_path):
    """The strategy options of a tiny run: KWARGS, and a teacher cache under `tmp_path` for UMT and UME."""
    teacher = {"teacher_dir": str(tmp_path / "teachers"), "teacher_epochs": 1} if name in ("umt", "ume") else {}
    return KWARGS.get(name, {}) | teacher


# ---------------------------------------------------------------- one epoch, every task kind

@pytest.mark.parametrize("data_kwargs", [{"task": "regression"}, {"num_modalities": 4}],
                         ids=["regression", "four_modalities"])
@pytest.mark.parametrize("name", MINE + NEW)
def test_one_epoch_on_synthetic(name, data_kwargs, tmp_path):
    c = cfg(strategy=name, strategy_kwargs=options(name, tmp_path), data_kwargs={"num_samples": 600} | data_kwargs)
    if name == "pmr" and data_kwargs.get("task") == "regression":
        with pytest.raises(cg.ConfigError, match="class labels"):
            cg.run_experiment(c, progress=False)
        return
    result = cg.run_experiment(c, progress=False)
    steps = result.trace.steps()
    assert len(steps) == 6 and steps["loss"].map(math.isfinite).all()
    modalities = [f"m{k}" for k in range(data_kwargs.get("num_modalities", 3))]
    for template in COLUMNS[name]:
        for column in sorted({template.format(m=m) for m in modalities}):
            assert column in steps.columns, column
        assert steps[template.format(m="m0")].notna().all(), template
    metric = "mae" if data_kwargs.get("task") == "regression" else "acc"
    assert math.isfinite(result.metrics[metric])
    if name == "gblending":
        epochs = result.trace.epochs()
        assert epochs["weight/fused"].notna().any() and "delta_g/m0" in epochs


class SegmentationHead(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU())
        self.out_layer = nn.Conv2d(8, classes, 1)

    def forward(self, feature):
        return self.out_layer(self.body(feature))


class TinySeg(MultimodalModel):
    """One conv per modality, concatenation, a conv and a 1×1 `out_layer`: a seconds-fast segmenter."""

    def __init__(self, modalities, classes=4, channels=6):
        super().__init__()
        self.encoders = nn.ModuleDict({m: nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU())
                                       for m in modalities})
        self.fusion = nn.Sequential(nn.Conv2d(channels * len(modalities), 8, 3, padding=1), nn.ReLU())
        self.out_layer = nn.Conv2d(8, classes, 1)
        self.channels, self.classes = channels, classes

    def fuse(self, features):
        return self.out_layer(self.fusion(torch.cat([features[m] for m in self.encoders], 1)))

    def modality_classifier(self, modality):
        return SegmentationHead(self.channels, self.classes)


def nested_squares(n=40, size=16, modalities=("flair", "t1ce", "t1", "t2")):
    """Nested squares labelled 1 ⊃ 2 ⊃ 3, seen by each modality with its own contrast and noise; 24/8/8
    samples in batches of 8."""
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
        target[i, r:r + 6, c:c + 6], target[i, r + 1:r + 4, c + 1:c + 4], target[i, r + 2, c + 2] = 1, 2, 3
    inputs = {m: (target.float() * (1 - 0.2 * k))[:, None] + torch.randn(n, 1, size, size, generator=g)
              for k, m in enumerate(modalities)}
    cuts = {"train": slice(0, 24), "val": slice(24, 32), "test": slice(32, 40)}
    loaders = {k: TensorLoader({m: x[s] for m, x in inputs.items()}, target[s], 8, shuffle=k == "train")
               for k, s in cuts.items()}
    return Data("brats2021", loaders["train"], loaders["val"], loaders["test"], Segmentation(),
                {m: (1, size, size) for m in modalities})


@pytest.mark.parametrize("name", MINE + NEW)
def test_one_epoch_on_segmentation(name, tmp_path):
    torch.manual_seed(0)
    data = nested_squares()
    model = TinySeg(data.modalities)
    c = cfg(dataset="custom", strategy=name, batch_size=8, data_kwargs={})
    result = cg.train(model, make_strategy(name, **options(name, tmp_path)), data, c, progress=False)
    steps = result.trace.steps()
    assert len(steps) == 3 and steps["loss"].map(math.isfinite).all()
    for template in COLUMNS[name][:1]:
        assert template.format(m="flair") in steps.columns
    assert 0.0 <= result.metrics["dice_mean"] <= 1.0


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    """DATA_ROOT with the BraTS 2021 stand-in (8 cases, written in the real NIfTI layout)."""
    from cggmlib.data.standins import brats as standin

    root = tmp_path_factory.mktemp("data")
    standin.write(root / "brats2021", seed=0, cases=8, size=176, depth=16)
    return root


@pytest.mark.parametrize("name", MINE)
def test_one_epoch_on_the_brats_standin(brats_root, name):
    assert "brats2021" in cg.MODELS
    result = cg.run_experiment(cfg(dataset="brats2021", strategy=name, strategy_kwargs=KWARGS.get(name, {}),
                                   data_root=str(brats_root), data_kwargs={}), progress=False)
    steps = result.trace.steps()
    assert len(steps) and steps["loss"].map(math.isfinite).all()
    assert result.metrics["standin"] and 0.0 <= result.metrics["dice_mean"] <= 1.0


# ---------------------------------------------------------------- state, checkpoints and contracts

def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", MINE + NEW)
def test_state_dict_round_trip(name, tmp_path):
    data, model, batch = preset_model_on_synthetic()
    strategy = make_strategy(name, **options(name, tmp_path))
    cg.train(model, strategy, data, cfg(strategy=name, data_kwargs={"num_samples": 600}), progress=False)
    if name == "mslr":  # a rescaling still pending from the last step travels with the state
        strategy.pending = {"m0": [p.detach().clone() for p in model.encoders["m0"].parameters()]}
    state = roundtrip(strategy.state_dict())
    fresh = make_strategy(name, **options(name, tmp_path))
    fresh.setup(model, data)
    fresh.load_state_dict(state)
    again = fresh.state_dict()
    assert state.keys() == again.keys()
    for key, value in state.items():
        assert repr(value) == repr(again[key]), key
    model.eval()
    with torch.no_grad():  # each on its own copy: MSLR's predict applies the pending rescaling to the model
        assert torch.equal(fresh.predict(copy.deepcopy(model), batch.inputs),
                           strategy.predict(copy.deepcopy(model), batch.inputs))
    for attr in ("ref_score", "steps_seen", "prototypes", "step", "added", "history"):
        if hasattr(strategy, attr):
            a, b = getattr(strategy, attr), getattr(fresh, attr)
            if isinstance(a, dict):
                assert all(torch.equal(a[k], b[k]) for k in a), attr
            else:
                assert (torch.equal(a, b) if torch.is_tensor(a) else a == b), attr


class Interrupted(Exception):
    pass


class InterruptAt:
    """A training loader that raises `Interrupted` at batch `batch` of epoch `epoch` (a crash mid-epoch)."""

    def __init__(self, loader, epoch, batch):
        self.loader, self.at = loader, (epoch, batch)

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if (self.loader.epoch, i) == self.at:
                raise Interrupted
            yield batch


@pytest.mark.parametrize("name", ["mslr", "greedy", "gblending"])
def test_resume_mid_epoch_gives_the_uninterrupted_result(tmp_path, name):
    kwargs = {"mslr": {"lr_scale": {"m0": 0.5, "m1": 2.0}, "variant": "smooth"},
              "greedy": {"start_epoch": 0, "alpha": 0.0, "window": 2},
              "gblending": {"super_epoch": 1, "estimate": "trajectory"}}[name]
    c = cfg(epochs=2, checkpoint_every=1)
    data, model = small_mlp_on_synthetic()
    full = cg.train(model, make_strategy(name, **kwargs), data, c, progress=False)
    data, model = small_mlp_on_synthetic()
    crashing = Data(data.name, InterruptAt(data.train, 1, 2), data.val, data.test, data.task, data.input_dims)
    with pytest.raises(Interrupted):
        cg.train(model, make_strategy(name, **kwargs), crashing, c, out_dir=tmp_path, progress=False)
    data, model = small_mlp_on_synthetic()
    resumed = cg.train(model, make_strategy(name, **kwargs), data, c, out_dir=tmp_path, resume=True, progress=False)
    assert resumed.metrics == full.metrics
    assert resumed.trace.steps()["loss"].tolist() == full.trace.steps()["loss"].tolist()


def test_unimodal_contract_for_umt_and_ume():
    data, model = small_mlp_on_synthetic()
    strategy = make_strategy("unimodal", modality="m0")
    result = cg.train(model, strategy, data, cfg(), progress=False)
    batch = next(iter(data.test))
    model.eval()
    pred = strategy.predict(model, batch.inputs)
    assert pred.shape == (len(batch), data.num_outputs)
    assert torch.allclose(pred, strategy.head(model.encoders["m0"](batch.inputs["m0"])))
    again = cg.evaluate(model, data.test, data.task, strategy=strategy)
    assert again["acc"] == pytest.approx(result.metrics["acc"])


def test_teacher_cache_is_reused_by_ume_and_umt_and_changes_nothing(tmp_path):
    data, model, _ = preset_model_on_synthetic()
    c = cfg(strategy="umt", data_kwargs={"num_samples": 600})
    trained = dict(teachers.TRAINED)
    first = cg.train(model, make_strategy("umt", **options("umt", tmp_path)), data, c, progress=False)
    files = sorted((tmp_path / "teachers").glob("synthetic-*/*.pt"))
    assert [f.name for f in files] == ["m0.pt", "m1.pt", "m2.pt"]
    assert {m: teachers.TRAINED[m] - trained.get(m, 0) for m in ("m0", "m1", "m2")} == {"m0": 1, "m1": 1, "m2": 1}
    stamps = {f: os.stat(f).st_mtime_ns for f in files}

    data, model, _ = preset_model_on_synthetic()
    counts = dict(teachers.TRAINED)
    second = cg.train(model, make_strategy("umt", **options("umt", tmp_path)), data, c, progress=False)
    cg.train(model, make_strategy("ume", **options("ume", tmp_path)), data, c.replace(strategy="ume"),
             progress=False)
    assert dict(teachers.TRAINED) == counts  # loaded, not retrained
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamps
    # training the teachers restores the random state: a cold and a warm cache give the same run
    assert first.trace.steps()["loss"].tolist() == second.trace.steps()["loss"].tolist()
