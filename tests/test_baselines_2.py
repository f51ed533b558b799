"""Baselines part 2: AGM, PMR, QMF, ReconBoost, MMPareto, UMT, UME.

Formula tests on hand-computed inputs, which gradients each method changes and which it must not,
one epoch of every method on `synthetic` (classification, regression, four modalities) and on a
tiny segmentation problem, state_dict round trips, and the UMT/UME teacher cache.
"""
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
from cggmlib.modulation.agm import agm_coefficients, competition_ratio, shapley_values
from cggmlib.modulation.mmpareto import combine, min_norm_weight, pareto_weights
from cggmlib.modulation.pmr import lag_coefficients, prototype_logits
from cggmlib.modulation.qmf import energy_confidence, rank_loss
from cggmlib.modulation.reconboost import reconcile_weights, stage_at
from cggmlib.modulation.ume import ensemble_predictions
from cggmlib.tasks import Segmentation

torch.set_num_threads(1)
NEW = ("agm", "pmr", "qmf", "reconboost", "mmpareto", "umt", "ume")
SMALL = {"num_samples": 600}


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def setting(seed=0, **data_kwargs):
    torch.manual_seed(seed)
    data = cg.load_data("synthetic", batch_size=64, seed=seed, **(SMALL | data_kwargs))
    model = cg.build_model("synthetic", data, dropout=0.0)
    return data, model, next(iter(data.train))


def kwargs_for(name, tmp_path):
    return {"teacher_dir": str(tmp_path / "teachers"), "teacher_epochs": 1} if name in ("umt", "ume") else {}


def one_step(strategy, model, data, batch, epoch=0):
    """setup, forward, loss, backward; returns (out, gradients before after_backward, stats)."""
    strategy.setup(model, data)
    out = strategy.forward(model, batch, epoch)
    strategy.loss(model, batch, out, epoch).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, before, strategy.after_backward(model, batch, out, epoch)


# ---------------------------------------------------------------- formulas on hand-computed inputs

def test_shapley_values_of_small_games():
    game = {frozenset("a"): 1.0, frozenset("b"): 0.0, frozenset("ab"): 3.0}
    phi = shapley_values(lambda s: game[s], ["a", "b"])
    assert math.isclose(phi["a"], 2.0) and math.isclose(phi["b"], 1.0)  # ½(1−0) + ½(3−0); ½(0−0) + ½(3−1)
    additive = shapley_values(lambda s: sum({"a": 1.0, "b": 2.0, "c": 4.0}[m] for m in s), ["a", "b", "c"])
    assert {m: round(v, 9) for m, v in additive.items()} == {"a": 1.0, "b": 2.0, "c": 4.0}


def test_agm_ratio_and_coefficients_by_hand():
    score = torch.tensor([1.0, 2.0])  # modality 0 has the lower loss: it leads
    assert close(competition_ratio(score), [math.e, 1 / math.e])  # exp(2·(1.5 − s))
    coeff, ratio, ref = agm_coefficients(score, torch.tensor([1.5, 1.5]), alpha=1.0, cap=10.0)
    assert close(ref, [1.0, 1.0])
    assert close(coeff, [math.exp(1 - math.e), math.exp(1 - 1 / math.e)])  # the leader is slowed, the other boosted
    capped, _, _ = agm_coefficients(score, torch.tensor([1.5, 1.5]), alpha=1.0, cap=0.5)
    assert close(capped[1], math.exp(0.5))


def test_pmr_prototype_logits_and_lag_coefficients_by_hand():
    logits = prototype_logits(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    assert close(logits, [[-5.0, -1.0]])
    beta, ratio = lag_coefficients(torch.tensor([0.6, 0.3, 0.45]), alpha=2.0)
    assert close(ratio, [1.0, 2.0, 0.6 / 0.45]) and close(beta, [0.0, 2.0, 2.0])  # every lagging one: full α
    beta, _ = lag_coefficients(torch.tensor([0.6, 0.3, 0.45]), alpha=2.0, clip=True)
    assert close(beta, [0.0, 2.0, 2.0 * (0.6 / 0.45 - 1)])


def test_qmf_energy_and_rank_loss_by_hand():
    assert close(energy_confidence(torch.tensor([[0.0, math.log(3.0)]])), [[0.1 * math.log(4.0)]])
    history = torch.tensor([0.5, 0.2])
    assert close(rank_loss(torch.tensor([0.9, 0.1]), history), 0.5)  # the higher-loss sample is the more confident
    assert close(rank_loss(torch.tensor([0.1, 0.9]), history), 0.0)  # ranked right: no penalty
    assert close(rank_loss(torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0])), 0.0)  # within the tolerance


def test_reconboost_schedule_and_weights_by_hand():
    phases = [stage_at(s, boost_steps=3, rectify_steps=2, num_modalities=2) for s in range(11)]
    assert phases[:6] == [(0, 0, True)] * 3 + [(0, 0, False)] * 2 + [(1, 1, True)]
    assert phases[10] == (2, 0, True)
    assert close(reconcile_weights(torch.tensor([0.0, 0.5, 1.0]), 5.0, 1.0), [5.0, 4.5, 4.0])


def test_mmpareto_min_norm_weights_and_combination_by_hand():
    g_mm, g_uni = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    k_mm, k_uni, cos = pareto_weights(g_mm, g_uni)
    assert close(k_mm, 0.6) and close(k_uni, 0.4) and cos < 0  # γ = (2 − (−1)) / (1 + 2 + 2)
    assert close((k_mm * g_mm + k_uni * g_uni) @ (g_mm - g_uni), 0.0)  # min-norm point ⟂ g₁ − g₂
    assert close(min_norm_weight(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)), 0.999)
    assert close(pareto_weights(g_mm, torch.tensor([1.0, 1.0]))[0], 0.5)  # no conflict: ½ / ½
    new = combine(g_mm + g_uni, g_mm, g_uni, k_mm, k_uni, scale=1.5)
    assert close(new.norm(), 1.5 * (g_mm + g_uni).norm())  # magnitude of the summed gradient, times γ_s
    assert close(new / new.norm(), torch.tensor([0.4, 0.8]) / torch.tensor([0.4, 0.8]).norm())


def test_ume_ensemble_by_hand():
    preds = {"a": torch.tensor([[0.0, 0.0]]), "b": torch.tensor([[math.log(3.0), 0.0]])}
    out = ensemble_predictions(preds, torch.tensor([0.5, 0.5]), "classification")
    assert close(out.softmax(1), [[0.625, 0.375]])
    reg = ensemble_predictions({"a": torch.tensor([[1.0]]), "b": torch.tensor([[3.0]])}, torch.tensor([0.25, 0.75]),
                               "regression")
    assert close(reg, [[2.5]])


@pytest.mark.parametrize("name, kwargs, field", [
    ("agm", {"alpha": -1.0}, "alpha"), ("pmr", {"momentum": 1.0}, "momentum"),
    ("qmf", {"rank_weight": -1}, "rank_weight"),
    ("reconboost", {"w1": 1.0, "w2": 2.0}, "w1"), ("mmpareto", {"scale": 0.0}, "scale"),
    ("umt", {"teacher_preset": "huge"}, "teacher_preset"), ("ume", {"weights": "median"}, "weights")])
def test_invalid_options_name_the_field(name, kwargs, field):
    with pytest.raises(cg.ConfigError, match=field):
        make_strategy(name, **kwargs)


# ---------------------------------------------------------------- which gradients change

def test_agm_scales_exactly_the_encoder_gradients():
    data, model, batch = setting()
    strategy = make_strategy("agm")
    strategy.setup(model, data)
    strategy.ref_score, strategy.steps_seen = torch.tensor([3.0, 0.5, 0.5]), 10  # a history unlike this batch
    out = strategy.forward(model, batch, 0)
    strategy.loss(model, batch, out, 0).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    stats = strategy.after_backward(model, batch, out, 0)
    coeff = {m: stats[f"coeff/{m}"] for m in strategy.modalities}
    assert all(not close(k, 1.0, 1e-3) for k in coeff.values())
    for n, p in model.named_parameters():
        m = n.split(".")[1] if n.startswith("encoders.") else None
        assert close(p.grad, before[n] * (coeff[m] if m else 1.0)), n
    phi = strategy.mono_responses(model, out.features, out.logits)
    assert close(sum(phi.values()), out.logits.detach(), 1e-4)  # efficiency: the responses add up to f(M)
    out = strategy.forward(model, batch, 99)
    strategy.loss(model, batch, out, 99).backward()
    outside = strategy.after_backward(model, batch, out, 99)  # epoch 99 > end_epoch: nothing is modulated
    assert all(float(v) == 1.0 for k, v in outside.items() if k.startswith("coeff/"))


def test_pmr_prototypes_are_class_means_and_only_lagging_encoders_get_the_extra_term():
    data, model, _ = setting()
    strategy = make_strategy("pmr", proto_fraction=0.2)
    strategy.setup(model, data)
    strategy.on_epoch_start(model, data, 0)
    model.eval()
    with torch.no_grad():
        batches = list(data.train)[:max(1, int(0.2 * len(data.train)))]
        feats = torch.cat([model(b.inputs).features["m1"] for b in batches])
        target = torch.cat([b.target for b in batches])
    model.train()
    expected = torch.stack([feats[target == k].mean(0) for k in range(10)])
    assert close(strategy.prototypes["m1"], expected, 1e-4)
    old = {m: p.clone() for m, p in strategy.prototypes.items()}
    strategy.on_epoch_start(model, data, 1)  # same weights: EMA of two equal estimates
    assert close(strategy.prototypes["m1"], old["m1"], 1e-4)

    batch = next(iter(data.train))
    out = model(batch.inputs)
    strategy.loss(model, batch, out, 0).backward()
    pmr_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    stats = strategy.after_backward(model, batch, out, 0)
    lead = [m for m in strategy.modalities if float(stats[f"weight/{m}"]) == 0.0]
    model.zero_grad()
    data.task.loss(model(batch.inputs).logits, batch.target).backward()
    for n, p in model.named_parameters():
        m = n.split(".")[1] if n.startswith("encoders.") else None
        changed = not close(p.grad, pmr_grads[n], 1e-6)
        assert changed == (m is not None and m not in lead and float(stats[f"weight/{m}"]) > 0), n


def test_pmr_refuses_regression_with_the_reason():
    data, model, _ = setting(task="regression")
    with pytest.raises(cg.ConfigError, match="class"):
        make_strategy("pmr").setup(model, data)


def test_qmf_fuses_by_energy_and_leaves_the_fusion_module_alone():
    data, model, batch = setting()
    strategy = make_strategy("qmf")
    out, _, stats = one_step(strategy, model, data, batch)
    assert model.out_layer.weight.grad is None and all(p.grad is None for p in model.fusion.parameters())
    assert all(p.grad is not None for p in strategy.parameters())
    with torch.no_grad():
        feats = model.encode(batch.inputs)
        z = {m: strategy.heads[m](feats[m]) for m in strategy.modalities}
        manual = sum(0.1 * torch.logsumexp(v, 1, keepdim=True) * v for v in z.values())
    assert close(strategy.predict(model, batch.inputs), manual, 1e-5)
    assert float(stats["history"]) == 1.0  # TensorLoader batches carry sample ids: the history is used


def test_qmf_keeps_a_loss_history_by_sample_index():
    data, model, _ = setting()
    x, y = {m: torch.randn(40, 32) for m in data.modalities}, torch.randint(0, 10, (40,))
    loader = TensorLoader(x, y, 16, shuffle=True, meta={"index": list(range(40))})
    indexed = Data("synthetic", loader, loader, loader, data.task, data.input_dims)
    strategy = make_strategy("qmf")
    strategy.setup(model, indexed)
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            out = strategy.forward(model, batch, epoch)
            strategy.loss(model, batch, out, epoch).backward()
            assert float(strategy.after_backward(model, batch, out, epoch)["history"]) == 1.0
    hist = strategy.history["m0"]
    assert hist.shape == (40,) and torch.isfinite(hist).all() and (hist > 0).all()


def test_reconboost_trains_one_learner_while_boosting_and_all_while_rectifying():
    data, model, batch = setting()
    strategy = make_strategy("reconboost", stage_epochs=1 / len(data.train), rectify_epochs=1 / len(data.train))
    out, before, stats = one_step(strategy, model, data, batch)  # step 0: boosting m0
    touched = {n.split(".")[1] for n in before if n.startswith("encoders.")}
    assert touched == {"m0"} and float(stats["boosting"]) == 1.0
    assert [p.grad is not None for p in strategy.heads["m1"].parameters()] == [False, False, False, False]
    assert strategy.added == ["m0"]  # one boosting step per stage here: m0 joined the ensemble
    model.zero_grad(set_to_none=True)
    out = strategy.forward(model, batch, 0)
    strategy.loss(model, batch, out, 0).backward()  # step 1: rectification of the ensemble {m0}
    assert float(strategy.after_backward(model, batch, out, 0)["boosting"]) == 0.0
    assert strategy.boost_rate.grad is not None
    assert model.out_layer.weight.grad is None  # the model's fusion module is not part of the ensemble


def test_mmpareto_writes_the_pareto_combination_into_encoder_gradients_only():
    data, model, batch = setting()
    strategy = make_strategy("mmpareto")
    strategy.setup(model, data)
    out = model(batch.inputs)
    loss = strategy.loss(model, batch, out, 0)
    enc = {m: list(model.encoders[m].parameters()) for m in strategy.modalities}
    l_mm = data.task.loss(out.logits, batch.target)
    g_mm = {m: torch.autograd.grad(l_mm, enc[m], retain_graph=True) for m in enc}
    g_uni = {m: torch.autograd.grad(data.task.loss(strategy.heads[m](out.features[m]), batch.target), enc[m],
                                    retain_graph=True) for m in enc}
    loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    heads_before = [p.grad.clone() for p in strategy.parameters()]
    stats = strategy.after_backward(model, batch, out, 0)
    for m in enc:
        flat = [torch.cat([g.flatten() for g in grads[m]]) for grads in (g_mm, g_uni)]
        k_mm, k_uni, _ = pareto_weights(*flat)
        assert close(stats[f"weight/{m}"], k_mm)
        for p, gm, gu in zip(enc[m], g_mm[m], g_uni[m]):
            assert close(p.grad, combine(gm + gu, gm, gu, k_mm, k_uni, 1.5), 1e-5)
    for n, p in model.named_parameters():
        if not n.startswith("encoders."):
            assert torch.equal(p.grad, before[n]), n
    assert all(torch.equal(p.grad, g) for p, g in zip(strategy.parameters(), heads_before))


def test_umt_adds_the_feature_distillation_to_the_task_loss(tmp_path):
    data, model, batch = setting()
    strategy = make_strategy("umt", alpha=2.0, **kwargs_for("umt", tmp_path))
    strategy.setup(model, data)
    out = model(batch.inputs)
    loss = strategy.loss(model, batch, out, 0)
    distill = sum(torch.mean((out.features[m] - strategy.teachers[m].encoder(batch.inputs[m])) ** 2)
                  for m in strategy.modalities)
    assert close(loss, data.task.loss(out.logits, batch.target) + 2.0 * distill, 1e-5)
    assert not any(p.requires_grad for t in strategy.teachers.values() for p in t.parameters())


# ---------------------------------------------------------------- one epoch everywhere

EXPECTED = {"agm": ["coeff", "score", "ratio", "ratio_ref"], "pmr": ["score", "ratio", "weight", "loss_proto"],
            "qmf": ["weight", "loss_head", "rank"], "reconboost": ["coeff"],
            "mmpareto": ["coeff", "cos", "weight", "loss_head"], "umt": ["distill"], "ume": ["weight"]}


@pytest.mark.parametrize("data_kwargs", [{}, {"task": "regression"}, {"num_modalities": 4}],
                         ids=["classification", "regression", "four-modalities"])
@pytest.mark.parametrize("name", NEW)
def test_one_epoch_on_synthetic(name, data_kwargs, tmp_path):
    cfg = cg.Config(dataset="synthetic", strategy=name, epochs=1, data_kwargs=SMALL | data_kwargs, device="cpu",
                    strategy_kwargs=kwargs_for(name, tmp_path))
    if name == "pmr" and data_kwargs.get("task") == "regression":
        with pytest.raises(cg.ConfigError, match="class labels"):
            cg.run_experiment(cfg, progress=False)
        return
    result = cg.run_experiment(cfg, progress=False)
    steps = result.trace.steps()
    assert len(steps) == 6 and steps["loss"].map(math.isfinite).all()
    modalities = [f"m{k}" for k in range(data_kwargs.get("num_modalities", 3))]
    for column in EXPECTED[name]:
        assert all(f"{column}/{m}" in steps.columns for m in modalities), column
    selected = "mae" if data_kwargs.get("task") == "regression" else "acc"
    assert math.isfinite(result.metrics[selected])


class _Head(nn.Module):
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
        return _Head(self.channels, self.classes)


def tiny_segmentation(n=40, size=16, modalities=("flair", "t1", "t2")):
    """Nested squares labelled 1 ⊃ 2 ⊃ 3, seen by each modality with its own contrast and noise."""
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
        target[i, r:r + 6, c:c + 6], target[i, r + 1:r + 4, c + 1:c + 4], target[i, r + 2, c + 2] = 1, 2, 3
    inputs = {m: (target.float() * (1 - 0.3 * k))[:, None] + torch.randn(n, 1, size, size, generator=g)
              for k, m in enumerate(modalities)}
    cuts = {"train": slice(0, 24), "val": slice(24, 32), "test": slice(32, 40)}
    loaders = {k: TensorLoader({m: x[s] for m, x in inputs.items()}, target[s], 8, shuffle=k == "train")
               for k, s in cuts.items()}
    return Data("brats2021", loaders["train"], loaders["val"], loaders["test"], Segmentation(),
                {m: (1, size, size) for m in modalities})


@pytest.mark.parametrize("name", NEW)
def test_one_epoch_on_segmentation(name, tmp_path):
    torch.manual_seed(0)
    data = tiny_segmentation()
    model = TinySeg(data.modalities)
    cfg = cg.Config(dataset="custom", strategy=name, epochs=1, batch_size=8, device="cpu")
    result = cg.train(model, make_strategy(name, **kwargs_for(name, tmp_path)), data, cfg, progress=False)
    steps = result.trace.steps()
    assert len(steps) == 3 and steps["loss"].map(math.isfinite).all()
    assert f"{EXPECTED[name][0]}/flair" in steps.columns
    assert 0.0 <= result.metrics["dice_mean"] <= 1.0


# ---------------------------------------------------------------- state and the teacher cache

@pytest.mark.parametrize("name", NEW)
def test_state_dict_round_trip(name, tmp_path):
    data, model, batch = setting()
    cfg = cg.Config(dataset="synthetic", strategy=name, epochs=1, data_kwargs=SMALL, device="cpu")
    strategy = make_strategy(name, **kwargs_for(name, tmp_path))
    cg.train(model, strategy, data, cfg, progress=False)
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    fresh = make_strategy(name, **kwargs_for(name, tmp_path))
    fresh.setup(model, data)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    model.eval()
    with torch.no_grad():
        assert torch.equal(fresh.predict(model, batch.inputs), strategy.predict(model, batch.inputs))
    for attr in ("ref_score", "steps_seen", "prototypes", "step", "added", "history"):
        if hasattr(strategy, attr):
            a, b = getattr(strategy, attr), getattr(fresh, attr)
            if isinstance(a, dict):
                assert all(torch.equal(a[k], b[k]) for k in a), attr
            else:
                assert (torch.equal(a, b) if torch.is_tensor(a) else a == b), attr


def test_teacher_cache_is_reused_by_ume_and_umt_and_changes_nothing(tmp_path):
    data, model, _ = setting()
    cfg = cg.Config(dataset="synthetic", strategy="umt", epochs=1, data_kwargs=SMALL, device="cpu")
    trained = dict(teachers.TRAINED)
    first = cg.train(model, make_strategy("umt", **kwargs_for("umt", tmp_path)), data, cfg, progress=False)
    files = sorted((tmp_path / "teachers").glob("synthetic-*/*.pt"))
    assert [f.name for f in files] == ["m0.pt", "m1.pt", "m2.pt"]
    assert {m: teachers.TRAINED[m] - trained.get(m, 0) for m in ("m0", "m1", "m2")} == {"m0": 1, "m1": 1, "m2": 1}
    stamps = {f: os.stat(f).st_mtime_ns for f in files}

    data, model, _ = setting()
    counts = dict(teachers.TRAINED)
    second = cg.train(model, make_strategy("umt", **kwargs_for("umt", tmp_path)), data, cfg, progress=False)
    cg.train(model, make_strategy("ume", **kwargs_for("ume", tmp_path)), data, cfg.replace(strategy="ume"),
             progress=False)
    assert dict(teachers.TRAINED) == counts  # loaded, not retrained
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamps
    # training the teachers restores the random state: a cold and a warm cache give the same run
    assert first.trace.steps()["loss"].tolist() == second.trace.steps()["loss"].tolist()
