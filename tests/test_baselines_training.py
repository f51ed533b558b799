"""Baselines part 1: unimodal, MRD, MSLR, G-Blending, Greedy, OGM, OGM-GE.

Per method: its rule on hand-computed numbers, which gradients/losses it touches, one epoch on tiny
data (classification, regression, 4 modalities, segmentation) and a state_dict round trip.
"""
import copy
import io
import math

import pytest
import torch
from torch import nn

import cggmlib as cg
from cggmlib.data.base import Data, TensorLoader
from cggmlib.errors import ConfigError
from cggmlib.models.base import MultimodalModel
from cggmlib.models.mlp import LateFusionMLP
from cggmlib.modulation import make_strategy
from cggmlib.modulation.gblending import blend_weights
from cggmlib.modulation.greedy import caring_modality, mean_replaced, utilisation_rates
from cggmlib.modulation.mrd import drop_masks
from cggmlib.modulation.mslr import dynamic_scales, smooth_scales
from cggmlib.modulation.ogm import discrepancy_ratios, ogm_coefficients
from cggmlib.modulation.unimodal import keep_only, unimodal_responses
from cggmlib.tasks import Classification, Segmentation

torch.set_num_threads(1)

MINE = ["unimodal", "mrd", "mslr", "gblending", "greedy", "ogm", "ogm_ge"]
#: tiny-run settings: G-Blending re-estimates in epoch 0, Greedy may re-balance from the first step
KWARGS = {"gblending": {"super_epoch": 1}, "greedy": {"start_epoch": 0, "alpha": 0.0},
          "mslr": {"variant": "dynamic"}}
#: per-step trace columns each strategy must write (m0 is always a modality)
COLUMNS = {"unimodal": [], "mrd": ["drop/m0"], "mslr": ["lr_scale/m0"], "gblending": ["loss_uni/m0"],
           "greedy": ["util/m0", "caring/m0", "rebalancing", "d_util"],
           "ogm": ["coeff/m0", "ratio/m0", "score/m0"], "ogm_ge": ["coeff/m0", "ratio/m0", "score/m0"]}


def cfg(**kw):
    return cg.Config(**({"dataset": "synthetic", "epochs": 1, "batch_size": 32, "device": "cpu"} | kw))


def tiny(**data_kwargs):
    data = cg.load_data("synthetic", batch_size=32, num_samples=160, **data_kwargs)
    torch.manual_seed(0)
    return data, LateFusionMLP(data.input_dims, data.num_outputs, hidden=16, feature_dim=8)


class TinySeg(MultimodalModel):
    """Four 1-channel conv encoders, concatenation, conv fusion, 1×1 `out_layer` (test-only)."""

    def __init__(self, modalities, classes=4, width=4):
        super().__init__()
        self.encoders = nn.ModuleDict({m: nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
                                       for m in modalities})
        self.fusion = nn.Sequential(nn.Conv2d(width * len(modalities), width, 3, padding=1), nn.BatchNorm2d(width),
                                    nn.ReLU())
        self.out_layer = nn.Conv2d(width, classes, 1)
        self.width, self.classes = width, classes

    def fuse(self, features):
        return self.out_layer(self.fusion(torch.cat([features[m] for m in self.encoders], 1)))

    def modality_classifier(self, modality):
        head = nn.Sequential(nn.Conv2d(self.width, self.width, 3, padding=1), nn.ReLU())
        head.out_layer = nn.Conv2d(self.width, self.classes, 1)
        return nn.Sequential(head, head.out_layer)


def tiny_seg(n=24, size=16):
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (n, size, size), generator=g)
    inputs = {m: (target[:, None] == k).float() * s + torch.randn(n, 1, size, size, generator=g)
              for m, k, s in zip(("flair", "t1ce", "t1", "t2"), (1, 2, 3, 1), (2.0, 1.0, 0.5, 0.3))}
    loaders = [TensorLoader({m: x[i::3] for m, x in inputs.items()}, target[i::3], 4, shuffle=i == 0) for i in range(3)]
    torch.manual_seed(0)
    return Data("tinyseg", *loaders, Segmentation(), {m: (1, size, size) for m in inputs}), TinySeg(list(inputs))


def one_step(strategy, model, data, epoch=0):
    """forward → loss → backward of one training batch, as the loop does; returns (batch, out, loss)."""
    strategy.setup(model, data)
    model.train()
    batch = next(iter(data.train))
    out = strategy.forward(model, batch, epoch)
    loss = strategy.loss(model, batch, out, epoch)
    loss.backward()
    return batch, out, loss


# ---------------------------------------------------------------- formulas on hand-computed inputs

def test_ogm_ratio_and_coefficient_follow_eq9_eq10():
    ratios = discrepancy_ratios(torch.tensor([3.0, 1.0]))
    assert torch.allclose(ratios, torch.tensor([3.0, 1 / 3]))
    # M = 3: against the mean of the others
    assert torch.allclose(discrepancy_ratios(torch.tensor([2.0, 1.0, 1.0])), torch.tensor([2.0, 2 / 3, 2 / 3]))
    coeff = ogm_coefficients(torch.tensor([2.0, 0.5, 1.0]), alpha=0.5)
    # official: 1 - tanh(alpha * relu(ratio)) when ratio > 1 (not ratio - 1); ratio exactly 1 is untouched
    assert torch.allclose(coeff, torch.tensor([1 - math.tanh(1.0), 1.0, 1.0]))


def test_gblending_weights_are_generalisation_over_squared_overfitting():
    start = {"m0": (1.0, 1.2), "fused": (1.0, 1.1)}
    end = {"m0": (0.5, 1.0), "fused": (0.8, 1.0)}
    w, d_g, d_o = blend_weights(start, end)
    # m0: ΔG = 0.2, ΔO = (1.0-0.5) - (1.2-1.0) = 0.3 -> 0.2/0.09;  fused: ΔG = 0.1, ΔO = 0.1 -> 10
    assert d_g["m0"] == pytest.approx(0.2) and d_o["m0"] == pytest.approx(0.3) and d_o["fused"] == pytest.approx(0.1)
    assert w["m0"] == pytest.approx((0.2 / 0.09) / (0.2 / 0.09 + 10), rel=1e-6)
    assert sum(w.values()) == pytest.approx(1.0)
    # a head whose validation loss rose gets 0; if all did, the weights stay uniform
    w, _, _ = blend_weights(start, {"m0": (0.5, 1.3), "fused": (0.8, 1.0)})
    assert w == {"m0": 0.0, "fused": pytest.approx(1.0)}
    w, _, _ = blend_weights(start, {"m0": (0.5, 1.3), "fused": (0.8, 1.2)})
    assert w == {"m0": 0.5, "fused": 0.5}


def test_mslr_scale_rules():
    assert dynamic_scales({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 0.5}) == pytest.approx({"a": 4 / 3, "b": 1 / 3})
    scale, best = smooth_scales({"a": 1.0, "b": 2.0}, {"a": 1.5, "b": 1.5}, {"a": 1.0, "b": 1.0}, 0.5, 0.1)
    assert scale == {"a": 1.0, "b": 0.5} and best == {"a": 1.0, "b": 1.5}
    scale, _ = smooth_scales({"b": 2.0}, {"b": 1.0}, {"b": 0.15}, 0.5, 0.1)
    assert scale == {"b": 0.1}


def test_mrd_never_drops_every_modality_and_drops_at_the_expected_rate():
    torch.manual_seed(0)
    for num in (2, 3, 4):
        drop = drop_masks(20000, num, 0.9)
        assert not drop.all(1).any()
    drop = drop_masks(20000, 2, 0.5)
    # P(drop m) = p(1-p) + p²/2 = 0.375 for two modalities
    assert drop.float().mean(0).tolist() == pytest.approx([0.375, 0.375], abs=0.015)
    assert not drop_masks(100, 3, 0.0).any()


class SumFuse(MultimodalModel):
    """fuse = sum of the features (they are already logits); for hand-computed utilisation rates."""

    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({"a": nn.Identity(), "b": nn.Identity()})
        self.out_layer = nn.Identity()

    def fuse(self, features):
        return sum(features.values())


def test_greedy_utilisation_and_caring_modality():
    features = {"a": torch.tensor([[2.0, 0.0]]), "b": torch.zeros(1, 2)}
    util = utilisation_rates(SumFuse(), features, torch.tensor([0]), Classification(2))
    p = 1 / (1 + math.exp(-2))  # softmax([2, 0])[0]
    # removing a drops the true-class probability to 0.5; removing b changes nothing
    assert util.tolist() == pytest.approx([(p - 0.5) / p, 0.0], abs=1e-6)
    assert caring_modality(util, alpha=0.01) == 1 and caring_modality(util, alpha=0.5) is None
    f = {"a": torch.randn(4, 3, requires_grad=True), "b": torch.randn(4, 3, requires_grad=True)}
    replaced = mean_replaced(f, keep="a")
    assert replaced["a"] is f["a"] and not replaced["b"].requires_grad
    assert torch.allclose(replaced["b"], f["b"].mean(0).expand(4, 3))


def test_unimodal_responses_zero_the_other_modalities():
    features = {"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([[5.0, 7.0]])}
    assert torch.equal(keep_only(features, "a")["b"], torch.zeros(1, 2))
    responses = unimodal_responses(SumFuse(), features)
    assert torch.equal(responses["a"], features["a"]) and torch.equal(responses["b"], features["b"])


# ---------------------------------------------------------------- which gradients and losses change

def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_ogm_scales_only_encoders_with_ratio_above_one_and_only_in_the_window():
    data, model = tiny()
    strategy = make_strategy("ogm", alpha=0.5, modulation_ends=3)
    batch, out, _ = one_step(strategy, model, data)
    before = grads(model)
    stats = strategy.after_backward(model, batch, out, epoch=0)
    ratios = torch.tensor([float(stats[f"ratio/{m}"]) for m in strategy.modalities])
    expected = ogm_coefficients(ratios, 0.5)
    assert (expected < 1).any() and (expected == 1).any()
    for name, p in model.named_parameters():
        m = name.split(".")[1] if name.startswith("encoders.") else None
        k = float(expected[strategy.modalities.index(m)]) if m else 1.0
        assert float(stats[f"coeff/{m}"]) == pytest.approx(k) if m else True
        assert torch.allclose(p.grad, before[name] * k), name
    # outside [modulation_starts, modulation_ends] nothing changes and coeff is logged as 1
    model.zero_grad()
    strategy.loss(model, batch, strategy.forward(model, batch, 4), 4).backward()
    before = grads(model)
    stats = strategy.after_backward(model, batch, out, epoch=4)
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())
    assert all(float(stats[f"coeff/{m}"]) == 1.0 for m in strategy.modalities)


def test_ogm_ge_adds_noise_with_the_unscaled_gradient_std_to_every_encoder():
    data, model = tiny()
    strategy = make_strategy("ogm_ge", alpha=0.5)
    batch, out, _ = one_step(strategy, model, data)
    before = grads(model)
    torch.manual_seed(1)
    stats = strategy.after_backward(model, batch, out, epoch=0)
    for name, p in model.named_parameters():
        if not name.startswith("encoders."):
            assert torch.equal(p.grad, before[name]), name
            continue
        k = float(stats[f"coeff/{name.split('.')[1]}"])
        noise = p.grad - before[name] * k
        assert not torch.equal(p.grad, before[name] * k), name
        if p.numel() >= 256:  # the noise std is the std of the gradient before scaling
            assert float(noise.std() / before[name].std()) == pytest.approx(1.0, abs=0.15), name


def test_mrd_zeroes_whole_modalities_per_sample_in_training_only():
    data, model = tiny()
    strategy = make_strategy("mrd", p=0.5, where="feature")
    batch, out, _ = one_step(strategy, model, data)
    for i, m in enumerate(strategy.modalities):
        zero_rows = (out.features[m] == 0).all(1)
        assert torch.equal(zero_rows, strategy._drop[:, i])
    assert not strategy._drop.all(1).any() and strategy._drop.any()
    model.eval()
    assert torch.equal(strategy.predict(model, batch.inputs), model(batch.inputs).logits)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mslr_equals_a_per_encoder_learning_rate(optimizer):
    data, model = tiny()
    reference = copy.deepcopy(model)
    lr, scale = 0.01, {"m0": 0.25, "m2": 3.0}
    strategy = make_strategy("mslr", lr_scale=scale)
    strategy.setup(model, data)
    opt = cg.modulation.classifiers.make_optimizer(optimizer, model.parameters(), lr)
    groups = [{"params": list(reference.encoders[m].parameters()), "lr": lr * scale.get(m, 1.0)}
              for m in reference.encoders]
    groups.append({"params": [p for n, p in reference.named_parameters() if not n.startswith("encoders.")]})
    ref_opt = type(opt)(groups, lr=lr, **({"momentum": 0.9} if optimizer == "sgd" else {}))
    model.train(), reference.train()
    for step, batch in zip(range(3), data.train):
        torch.manual_seed(step)
        out = strategy.forward(model, batch, 0)
        opt.zero_grad()
        strategy.loss(model, batch, out, 0).backward()
        strategy.after_backward(model, batch, out, 0)
        opt.step()
        torch.manual_seed(step)
        ref_opt.zero_grad()
        data.task.loss(reference(batch.inputs).logits, batch.target).backward()
        ref_opt.step()
    strategy.predict(model, batch.inputs)  # applies the rescaling of the last step
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_greedy_rebalancing_step_trains_only_the_caring_encoder():
    data, model = tiny()
    strategy = make_strategy("greedy")
    strategy.setup(model, data)
    strategy.caring, strategy.steps_left = "m2", 2
    batch = next(iter(data.train))
    out = strategy.forward(model, batch, 0)
    strategy.loss(model, batch, out, 0).backward()
    assert all(p.grad is None for m in ("m0", "m1") for p in model.encoders[m].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders["m2"].parameters())
    stats = strategy.after_backward(model, batch, out, 0)
    assert stats["caring/m2"] == 1.0 and stats["rebalancing"] == 1.0 and strategy.steps_left == 1
    assert "util_step/m0" not in stats and strategy.measured == 0  # re-balancing steps measure nothing


def test_greedy_starts_rebalancing_only_from_start_epoch():
    data, model = tiny()
    strategy = make_strategy("greedy", alpha=0.0, start_epoch=1)
    batch, out, _ = one_step(strategy, model, data)
    strategy.after_backward(model, batch, out, epoch=0)
    assert strategy.caring is None and strategy.measured == 1
    strategy.after_backward(model, batch, out, epoch=1)
    assert strategy.caring == strategy.modalities[int((strategy.util_sum / 2).argmin())]
    assert strategy.steps_left == strategy.window


def test_unimodal_runs_one_encoder_and_its_head():
    data, model = tiny()
    strategy = make_strategy("unimodal", modality="m1")
    batch, out, _ = one_step(strategy, model, data)
    assert list(out.features) == ["m1"]
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("encoders.m1."))
    assert all(p.grad is not None for p in strategy.parameters())
    with pytest.raises(ConfigError, match=r"'m9'.*\['m0', 'm1', 'm2'\]"):
        make_strategy("unimodal", modality="m9").setup(model, data)


def test_gblending_loss_is_the_weighted_sum_and_the_copy_estimate_leaves_the_model_alone():
    data, model = tiny(num_modalities=2)
    strategy = make_strategy("gblending", super_epoch=1)
    strategy.setup(model, data)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = strategy.on_epoch_start(model, data, 0)
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert sum(stats[f"weight/{k}"] for k in ("m0", "m1", "fused")) == pytest.approx(1.0)
    strategy.weights = {"m0": 0.2, "m1": 0.3, "fused": 0.5}
    batch = next(iter(data.train))
    model.eval()
    out = strategy.forward(model, batch, 0)
    loss = strategy.loss(model, batch, out, 0)
    task = data.task
    expected = (0.5 * task.loss(out.logits, batch.target)
                + sum(w * task.loss(strategy.heads[m](out.features[m]), batch.target)
                      for m, w in (("m0", 0.2), ("m1", 0.3))))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


@pytest.mark.parametrize("name, kwargs, message", [
    ("ogm", {"alpha": -1}, "alpha"), ("ogm_ge", {"modulation_starts": 5, "modulation_ends": 2}, "modulation_ends"),
    ("mrd", {"p": 1.0}, "p must be"), ("mrd", {"where": "output"}, "where"), ("mslr", {"variant": "fast"}, "variant"),
    ("mslr", {"lr_scale": {"m0": -1}}, "lr_scale"), ("gblending", {"super_epoch": 0}, "super_epoch"),
    ("gblending", {"estimate_optimizer": "lbfgs"}, "optimizer"), ("greedy", {"window": 0}, "window"),
    ("unimodal", {"modality": 3}, "modality"),
])
def test_bad_hyperparameters_are_clear_config_errors(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy(name, **kwargs)


def test_mslr_rejects_unknown_modalities_at_setup():
    data, model = tiny()
    with pytest.raises(ConfigError, match=r"unknown modalities \['audio'\]"):
        make_strategy("mslr", lr_scale={"audio": 2.0}).setup(model, data)


# ---------------------------------------------------------------- one epoch, every task kind

@pytest.mark.parametrize("data_kwargs", [{}, {"task": "regression"}, {"num_modalities": 4}],
                         ids=["classification", "regression", "four_modalities"])
@pytest.mark.parametrize("name", MINE)
def test_one_epoch_on_synthetic(name, data_kwargs):
    result = cg.run_experiment(cfg(strategy=name, strategy_kwargs=KWARGS.get(name, {}),
                                   data_kwargs={"num_samples": 160} | data_kwargs), progress=False)
    steps = result.trace.steps()
    assert len(steps) and steps["loss"].map(math.isfinite).all()
    for col in COLUMNS[name]:
        assert col in steps.columns and steps[col].notna().all(), col
    metric = "mae" if data_kwargs.get("task") == "regression" else "acc"
    assert math.isfinite(result.metrics[metric])
    if name == "gblending":
        epochs = result.trace.epochs()
        assert epochs["weight/fused"].notna().any() and "delta_g/m0" in epochs


@pytest.mark.parametrize("name", MINE)
def test_one_epoch_on_segmentation(name):
    data, model = tiny_seg()
    result = cg.train(model, make_strategy(name, **KWARGS.get(name, {})), data, cfg(), progress=False)
    assert result.trace.steps()["loss"].map(math.isfinite).all()
    assert 0.0 <= result.metrics["dice_mean"] <= 1.0


# ---------------------------------------------------------------- state, checkpoints and contracts

def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", MINE)
def test_state_dict_round_trip(name):
    data, model = tiny()
    strategy = make_strategy(name, **KWARGS.get(name, {}))
    cg.train(model, strategy, data, cfg(), progress=False)
    if name == "mslr":
        strategy.pending = {"m0": [p.detach().clone() for p in model.encoders["m0"].parameters()]}
    state = roundtrip(strategy.state_dict())
    fresh = make_strategy(name, **KWARGS.get(name, {}))
    fresh.setup(model, data)
    fresh.load_state_dict(state)
    again = fresh.state_dict()
    assert state.keys() == again.keys()
    for key, value in state.items():
        assert repr(value) == repr(again[key]), key


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
    data, model = tiny()
    full = cg.train(model, make_strategy(name, **kwargs), data, c, progress=False)
    data, model = tiny()
    crashing = Data(data.name, InterruptAt(data.train, 1, 2), data.val, data.test, data.task, data.input_dims)
    with pytest.raises(Interrupted):
        cg.train(model, make_strategy(name, **kwargs), crashing, c, out_dir=tmp_path, progress=False)
    data, model = tiny()
    resumed = cg.train(model, make_strategy(name, **kwargs), data, c, out_dir=tmp_path, resume=True, progress=False)
    assert resumed.metrics == full.metrics
    assert resumed.trace.steps()["loss"].tolist() == full.trace.steps()["loss"].tolist()


def test_unimodal_contract_for_umt_and_ume():
    data, model = tiny()
    strategy = make_strategy("unimodal", modality="m0")
    result = cg.train(model, strategy, data, cfg(), progress=False)
    batch = next(iter(data.test))
    model.eval()
    pred = strategy.predict(model, batch.inputs)
    assert pred.shape == (len(batch), data.num_outputs)
    assert torch.allclose(pred, strategy.head(model.encoders["m0"](batch.inputs["m0"])))
    again = cg.evaluate(model, data.test, data.task, strategy=strategy)
    assert again["acc"] == pytest.approx(result.metrics["acc"])


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
    result = cg.run_experiment(cg.Config(dataset="brats2021", strategy=name, strategy_kwargs=KWARGS.get(name, {}),
                                         epochs=1, data_root=str(brats_root), device="cpu"), progress=False)
    steps = result.trace.steps()
    assert len(steps) and steps["loss"].map(math.isfinite).all()
    assert result.metrics["standin"] and 0.0 <= result.metrics["dice_mean"] <= 1.0
