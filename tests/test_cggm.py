"""CGGM: formulas against hand-computed numbers, which gradients each part touches, the variants,
and a golden test against a transcription of the official training step (src/msatrain.py:62–134)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import cggmlib as cg
from cggmlib.modulation.cggm import balance_coefficients, direction_loss, guarded_balance_coefficients
from conftest import one_step


def preset_model_on_400_samples(num_modalities=3, task="classification", seed=0):
    """`synthetic` with 400 samples in batches of 32 and the dataset's preset model; (data, model)."""
    torch.manual_seed(seed)
    data = cg.load_data("synthetic", num_modalities=num_modalities, task=task, num_samples=400, batch_size=32)
    model = cg.build_model("synthetic", data)
    return data, model


# ----------------------------------------------------------------------------- formulas

def test_balance_coefficients_two_modalities_by_hand():
    b = balance_coefficients(torch.tensor([0.2, 0.1], dtype=torch.float64))
    # gains 0.2 and 0.1, total 0.3: B_1 = 0.1 / 0.3, B_2 = 0.2 / 0.3
    assert b.tolist() == pytest.approx([1 / 3, 2 / 3], rel=1e-6)


def test_balance_coefficients_sum_to_m_minus_1():
    delta = torch.tensor([0.05, 0.02, 0.01, 0.04], dtype=torch.float64)
    b = balance_coefficients(delta)
    assert float(b.sum()) == pytest.approx(3.0, rel=1e-6)
    assert b.tolist() == pytest.approx([(0.12 - d) / 0.12 for d in delta.tolist()], rel=1e-6)
    assert int(b.argmin()) == 0  # the fastest-improving modality gets the smallest coefficient


def test_direction_loss_by_hand():
    coeff = torch.tensor([0.5, 1.5])
    cos = torch.tensor([0.2, -0.4])
    # (|0.5| + |1.5| - (0.5·0.2 + 1.5·(−0.4))) / 2 = (2 + 0.5) / 2
    assert float(direction_loss(coeff, cos)) == pytest.approx(1.25)
    assert float(direction_loss(coeff, torch.sign(coeff))) == 0.0  # minimum at cos = sign(B)


def test_official_coefficients_explode_when_gains_cancel_and_guard_prevents_it():
    # accuracies move in steps of 1/64; gains +1/64, −1/64, 0 cancel exactly
    delta = torch.tensor([1 / 64, -1 / 64, 0.0])
    official = balance_coefficients(delta)
    assert float(official.abs().max()) > 1e5
    assert float(official.min()) < 0  # a sign flip of that encoder's gradient
    guarded = guarded_balance_coefficients(delta)
    assert guarded.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_guard_is_neutral_when_nothing_improved():
    assert guarded_balance_coefficients(torch.tensor([-0.1, -0.2, 0.0])).tolist() == pytest.approx([2 / 3] * 3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=-1, max_value=1, allow_nan=False), min_size=2, max_size=8))
def test_guarded_coefficients_are_finite_and_in_unit_interval(gains):
    b = guarded_balance_coefficients(torch.tensor(gains, dtype=torch.float64))
    assert torch.isfinite(b).all()
    assert float(b.min()) >= 0.0 and float(b.max()) <= 1.0 + 1e-12


# ----------------------------------------------------------------------------- which gradients are touched

@pytest.mark.parametrize("variant", ["official", "paper"])
def test_only_encoder_m_is_scaled_by_exactly_rho_b(variant):
    data, model = preset_model_on_400_samples()
    strategy = cg.make_strategy("cggm", rho=1.3, lam=0.2, variant=variant)
    batch = next(iter(data.train))
    step = one_step(strategy, model, data, batch)
    before, stats = step.before, step.stats
    for name, p in model.named_parameters():
        if name.startswith("encoders."):
            m = name.split(".")[1]
            expected = 1.3 * float(stats[f"balance/{m}"]) if variant == "official" else float(stats[f"coeff/{m}"])
            if variant == "paper":  # ρ sits inside B: the applied factor is ρ·B of the code's convention
                assert expected == pytest.approx(1.3 * float(stats[f"balance/{m}"]), rel=1e-5)
            # also proves the classifiers' loss added nothing to the encoders
            torch.testing.assert_close(p.grad, before[name] * expected, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(p.grad, before[name]), name


def test_classifiers_never_receive_gradient_from_the_task_and_never_send_it():
    data, model = preset_model_on_400_samples()
    strategy = cg.make_strategy("joint", observe=True)
    batch = next(iter(data.train))
    step = one_step(strategy, model, data, batch)
    before, stats = step.before, step.stats
    for name, p in model.named_parameters():  # observing changes no model gradient
        assert torch.equal(p.grad, before[name]), name
    assert {f"acc_head/{m}" for m in data.modalities} <= set(stats)


def test_official_direction_term_reaches_only_the_fused_output_layer():
    data, model = preset_model_on_400_samples()
    strategy = cg.make_strategy("cggm", lam=0.5)
    batches = iter(data.train)
    one_step(strategy, model, data, next(batches))  # step t builds L_gm
    batch = next(batches)
    out = strategy.forward(model, batch, 0)
    total = strategy.loss(model, batch, out, 0)
    task = data.task.loss(out.logits, batch.target)
    l_gm_part = total - task
    assert float(l_gm_part.detach()) > 0
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(l_gm_part, list(params.values()), allow_unused=True)
    touched = {n for n, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
    assert touched == {"out_layer.weight"}


def test_paper_direction_term_is_same_step_and_differentiable_through_the_fused_gradient():
    data, model = preset_model_on_400_samples()
    strategy = cg.make_strategy("cggm", rho=1.2, lam=0.5, variant="paper")
    strategy.setup(model, data)
    batch = next(iter(data.train))
    out = strategy.forward(model, batch, 0)
    total = strategy.loss(model, batch, out, 0)
    l_gm = strategy._l_gm
    coeff = strategy._paper_stats[1]
    assert float(coeff.sum()) == pytest.approx(1.2 * 2, rel=1e-5)  # ρ inside B: Σ B = ρ (M − 1)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(l_gm, list(params.values()), allow_unused=True, retain_graph=True)
    touched = {n.split(".")[0] for n, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
    assert "encoders" in touched and "fusion" in touched  # through ∇_{W_F} L_task (double backward)
    assert float(total.detach()) == pytest.approx(float(data.task.loss(out.logits, batch.target) + 0.5 * l_gm.detach()), rel=1e-5)


def test_warmup_epochs_modulate_nothing():
    data, model = preset_model_on_400_samples()
    strategy = cg.make_strategy("cggm", warmup_epochs=1)
    step = one_step(strategy, model, data, epoch=0)
    before, stats = step.before, step.stats
    assert all(float(stats[f"coeff/{m}"]) == 1.0 for m in data.modalities)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, before[name])


def test_magnitude_off_leaves_gradients_and_logs_unit_coefficients():
    data, model = preset_model_on_400_samples()
    strategy = cg.make_strategy("cggm", magnitude=False)
    step = one_step(strategy, model, data)
    before, stats = step.before, step.stats
    assert all(float(stats[f"coeff/{m}"]) == 1.0 for m in data.modalities)
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())


def test_regression_uses_sign_accuracy_officially_and_negative_mae_in_the_paper():
    data, model = preset_model_on_400_samples(task="regression")
    batch = next(iter(data.train))
    for variant, metric in [("official", cg.metrics.sign_accuracy), ("paper", cg.metrics.negative_mae)]:
        strategy = cg.make_strategy("cggm", variant=variant, lam=0.0)
        out = model(batch.inputs)
        stats = one_step(strategy, model, data, batch).stats
        preds = strategy.classifiers.last_preds
        for m in data.modalities:
            assert float(stats[f"eps/{m}"]) == pytest.approx(float(metric(preds[m], batch.target)), abs=1e-6)
        del out


@pytest.mark.parametrize("kwargs, message", [({"rho": -1}, "rho"), ({"lam": -0.1}, "lam"),
                                             ({"variant": "guarded"}, "variant"), ({"warmup_epochs": -1}, "warmup")])
def test_invalid_options_are_clear_errors(kwargs, message):
    with pytest.raises(cg.ConfigError, match=message):
        cg.make_strategy("cggm", **kwargs)


def test_one_modality_is_a_clear_error():
    data, model = preset_model_on_400_samples(num_modalities=1)
    with pytest.raises(cg.ConfigError, match="at least 2 modalities"):
        cg.make_strategy("cggm").setup(model, data)


def test_any_number_and_names_of_modalities():
    data, model = preset_model_on_400_samples(num_modalities=5)
    cfg = cg.Config(dataset="synthetic", strategy="cggm", epochs=1, data_kwargs={"num_modalities": 5})
    result = cg.train(model, cg.make_strategy("cggm", guard=True), data, cfg, progress=False)
    steps = result.trace.steps()
    assert {f"coeff/m{k}" for k in range(5)} <= set(steps.columns)
    assert steps["loss"].notna().all() and math.isfinite(result.metrics["acc"])


# ----------------------------------------------------------------------------- golden test

class OfficialStep:
    """Transcription of the released step (zrguo/CGGM src/msatrain.py:62–134): positional
    lists, ΣΔ + 1e-8, cosine of cloned output-layer weights, L_gm added one step later."""

    def __init__(self, model, heads, rho, lam, clip, lr, cls_lr):
        self.model, self.heads, self.rho, self.lam, self.clip = model, heads, rho, lam, clip
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        self.cls_opt = torch.optim.Adam([p for h in heads for p in h.parameters()], lr=cls_lr)
        self.acc1 = [0.0] * len(heads)
        self.l_gm = None

    def step(self, xs, y):
        self.model.zero_grad()
        out = self.model(xs)
        loss = F.cross_entropy(out.logits, y)
        if self.l_gm is not None:
            loss = loss + self.lam * self.l_gm
        loss.backward()
        self.cls_opt.zero_grad()
        hs = [out.features[m].detach() for m in self.model.encoders]
        zs = [h(f) for h, f in zip(self.heads, hs)]
        sum(F.cross_entropy(z, y) for z in zs).backward()
        fusion_w = self.model.out_layer.weight
        cos = [F.cosine_similarity(fusion_w.clone().flatten(), h.out_layer.weight.clone().flatten(), dim=0)
               for h in self.heads]
        acc = [float((z.argmax(1) == y).float().mean()) for z in zs]
        diff = [a - b for a, b in zip(acc, self.acc1)]
        total = sum(diff) + 1e-8
        coeff = [(total - d) / total for d in diff]
        self.acc1 = acc
        self.l_gm = (sum(abs(c) for c in coeff) - sum(c * s for c, s in zip(coeff, cos))) / len(coeff)
        for i, m in enumerate(self.model.encoders):
            for p in self.model.encoders[m].parameters():
                p.grad *= self.rho * coeff[i]
        self.cls_opt.step()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return coeff


def test_golden_cggm_matches_a_transcription_of_the_official_step():
    data, model_a = preset_model_on_400_samples()
    cfg = cg.Config(dataset="synthetic", strategy="cggm", epochs=1, data_kwargs={"num_samples": 400},
                    batch_size=32, scheduler="none")
    model_b = cg.build_model("synthetic", data)
    model_b.load_state_dict(model_a.state_dict())
    ours = cg.make_strategy("cggm", rho=1.3, lam=0.2)
    ours.setup(model_a, data)
    heads = [ours.classifiers.heads[m] for m in data.modalities]
    import copy
    ref = OfficialStep(model_b, [copy.deepcopy(h) for h in heads], 1.3, 0.2, 0.8, cfg.lr, 5e-4)
    opt = torch.optim.Adam(model_a.parameters(), lr=cfg.lr)
    model_a.train(), model_b.train()
    for k, batch in zip(range(8), data.train):
        torch.manual_seed(k)
        out = ours.forward(model_a, batch, 0)
        loss = ours.loss(model_a, batch, out, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        stats = ours.after_backward(model_a, batch, out, 0)
        torch.nn.utils.clip_grad_norm_(model_a.parameters(), 0.8)
        opt.step()
        torch.manual_seed(k)
        coeff = ref.step(batch.inputs, batch.target)
        assert [float(stats[f"balance/{m}"]) for m in data.modalities] == pytest.approx(coeff, rel=1e-4, abs=1e-3)
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
