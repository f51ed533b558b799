"""Baselines: what one training step of each method touches — which gradients it scales, replaces or leaves
alone, which parameters and encoders it trains, and which losses it adds.

The rules themselves (on hand-computed numbers) are in tests/test_baselines_rules.py.
"""
import copy

import pytest
import torch

import cggmlib as cg
from cggmlib.data.base import Data, TensorLoader
from cggmlib.errors import ConfigError
from cggmlib.modulation import make_strategy
from cggmlib.modulation.mmpareto import combine, pareto_weights
from cggmlib.modulation.ogm import ogm_coefficients
from conftest import close, gradients, one_step, preset_model_on_synthetic, small_mlp_on_synthetic

torch.set_num_threads(1)


def teacher_options(tmp_path):
    return {"teacher_dir": str(tmp_path / "teachers"), "teacher_epochs": 1}


def test_ogm_scales_only_encoders_with_ratio_above_one_and_only_in_the_window():
    data, model = small_mlp_on_synthetic()
    strategy = make_strategy("ogm", alpha=0.5, modulation_ends=3)
    step = one_step(strategy, model, data)
    ratios = torch.tensor([float(step.stats[f"ratio/{m}"]) for m in strategy.modalities])
    expected = ogm_coefficients(ratios, 0.5)
    assert (expected < 1).any() and (expected == 1).any()
    for name, p in model.named_parameters():
        m = name.split(".")[1] if name.startswith("encoders.") else None
        k = float(expected[strategy.modalities.index(m)]) if m else 1.0
        assert float(step.stats[f"coeff/{m}"]) == pytest.approx(k) if m else True
        assert torch.allclose(p.grad, step.before[name] * k), name
    # outside [modulation_starts, modulation_ends] nothing changes and coeff is logged as 1
    batch, out = step.batch, step.out
    model.zero_grad()
    strategy.loss(model, batch, strategy.forward(model, batch, 4), 4).backward()
    before = gradients(model)
    stats = strategy.after_backward(model, batch, out, epoch=4)
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())
    assert all(float(stats[f"coeff/{m}"]) == 1.0 for m in strategy.modalities)


def test_ogm_ge_adds_noise_with_the_unscaled_gradient_std_to_every_encoder():
    data, model = small_mlp_on_synthetic()
    strategy = make_strategy("ogm_ge", alpha=0.5)
    torch.manual_seed(1)
    step = one_step(strategy, model, data)
    for name, p in model.named_parameters():
        if not name.startswith("encoders."):
            assert torch.equal(p.grad, step.before[name]), name
            continue
        k = float(step.stats[f"coeff/{name.split('.')[1]}"])
        noise = p.grad - step.before[name] * k
        assert not torch.equal(p.grad, step.before[name] * k), name
        if p.numel() >= 256:  # the noise std is the std of the gradient before scaling
            assert float(noise.std() / step.before[name].std()) == pytest.approx(1.0, abs=0.15), name


def test_mrd_zeroes_whole_modalities_per_sample_in_training_only():
    data, model = small_mlp_on_synthetic()
    strategy = make_strategy("mrd", p=0.5, where="feature")
    step = one_step(strategy, model, data)
    for i, m in enumerate(strategy.modalities):
        zero_rows = (step.out.features[m] == 0).all(1)
        assert torch.equal(zero_rows, strategy._drop[:, i])
    assert not strategy._drop.all(1).any() and strategy._drop.any()
    model.eval()
    assert torch.equal(strategy.predict(model, step.batch.inputs), model(step.batch.inputs).logits)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mslr_equals_a_per_encoder_learning_rate(optimizer):
    data, model = small_mlp_on_synthetic()
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
    data, model = small_mlp_on_synthetic()
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
    data, model = small_mlp_on_synthetic()
    strategy = make_strategy("greedy", alpha=0.0, start_epoch=1)
    step = one_step(strategy, model, data, epoch=0)
    assert strategy.caring is None and strategy.measured == 1
    strategy.after_backward(model, step.batch, step.out, epoch=1)
    assert strategy.caring == strategy.modalities[int((strategy.util_sum / 2).argmin())]
    assert strategy.steps_left == strategy.window


def test_unimodal_runs_one_encoder_and_its_head():
    data, model = small_mlp_on_synthetic()
    strategy = make_strategy("unimodal", modality="m1")
    step = one_step(strategy, model, data)
    assert list(step.out.features) == ["m1"]
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("encoders.m1."))
    assert all(p.grad is not None for p in strategy.parameters())
    with pytest.raises(ConfigError, match=r"'m9'.*\['m0', 'm1', 'm2'\]"):
        make_strategy("unimodal", modality="m9").setup(model, data)


def test_gblending_loss_is_the_weighted_sum_and_the_copy_estimate_leaves_the_model_alone():
    data, model = small_mlp_on_synthetic(num_modalities=2)
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


def test_agm_scales_exactly_the_encoder_gradients():
    data, model, batch = preset_model_on_synthetic()
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
    data, model, _ = preset_model_on_synthetic()
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


def test_qmf_fuses_by_energy_and_leaves_the_fusion_module_alone():
    data, model, batch = preset_model_on_synthetic()
    strategy = make_strategy("qmf")
    step = one_step(strategy, model, data, batch)
    assert model.out_layer.weight.grad is None and all(p.grad is None for p in model.fusion.parameters())
    assert all(p.grad is not None for p in strategy.parameters())
    with torch.no_grad():
        feats = model.encode(batch.inputs)
        z = {m: strategy.heads[m](feats[m]) for m in strategy.modalities}
        manual = sum(0.1 * torch.logsumexp(v, 1, keepdim=True) * v for v in z.values())
    assert close(strategy.predict(model, batch.inputs), manual, 1e-5)
    assert float(step.stats["history"]) == 1.0  # TensorLoader batches carry sample ids: the history is used


def test_qmf_keeps_a_loss_history_by_sample_index():
    data, model, _ = preset_model_on_synthetic()
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
    data, model, batch = preset_model_on_synthetic()
    strategy = make_strategy("reconboost", stage_epochs=1 / len(data.train), rectify_epochs=1 / len(data.train))
    step = one_step(strategy, model, data, batch)  # step 0: boosting m0
    touched = {n.split(".")[1] for n in step.before if n.startswith("encoders.")}
    assert touched == {"m0"} and float(step.stats["boosting"]) == 1.0
    assert [p.grad is not None for p in strategy.heads["m1"].parameters()] == [False, False, False, False]
    assert strategy.added == ["m0"]  # one boosting step per stage here: m0 joined the ensemble
    model.zero_grad(set_to_none=True)
    out = strategy.forward(model, batch, 0)
    strategy.loss(model, batch, out, 0).backward()  # step 1: rectification of the ensemble {m0}
    assert float(strategy.after_backward(model, batch, out, 0)["boosting"]) == 0.0
    assert strategy.boost_rate.grad is not None
    assert model.out_layer.weight.grad is None  # the model's fusion module is not part of the ensemble


def test_mmpareto_writes_the_pareto_combination_into_encoder_gradients_only():
    data, model, batch = preset_model_on_synthetic()
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
    data, model, batch = preset_model_on_synthetic()
    strategy = make_strategy("umt", alpha=2.0, **teacher_options(tmp_path))
    strategy.setup(model, data)
    out = model(batch.inputs)
    loss = strategy.loss(model, batch, out, 0)
    distill = sum(torch.mean((out.features[m] - strategy.teachers[m].encoder(batch.inputs[m])) ** 2)
                  for m in strategy.modalities)
    assert close(loss, data.task.loss(out.logits, batch.target) + 2.0 * distill, 1e-5)
    assert not any(p.requires_grad for t in strategy.teachers.values() for p in t.parameters())
