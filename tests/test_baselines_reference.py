"""Baselines against their released code: our transcriptions of the reference expressions, each citing
repository@commit file:line, compared with the strategies' coefficients on random inputs, ties and
epoch boundaries, plus 20-step end-to-end runs (OGM, PMR, MMPareto) on a tiny model; and docs/baselines.md
against its generator.

The transcriptions are short, written from reading the released code; none of it is copied.
"""
import copy
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cggmlib.data.base import Batch, Data, TensorLoader
from cggmlib.models.base import MultimodalModel, Output
from cggmlib.modulation import make_strategy
from cggmlib.modulation.agm import agm_coefficients
from cggmlib.modulation.ogm import discrepancy_ratios, ogm_coefficients
from cggmlib.modulation.pmr import lag_coefficients
from cggmlib.modulation.references import render
from cggmlib.tasks import Classification

torch.set_num_threads(1)
ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ transcriptions of the released code

def ref_ogm(score_a: float, score_v: float, alpha: float) -> tuple[float, float]:
    """GeWu-Lab/OGM-GE_CVPR2022@343dc1d main.py:116-124: (coeff_a, coeff_v); a tie takes the else branch."""
    ratio_v = score_v / score_a
    ratio_a = 1 / ratio_v
    if ratio_v > 1:
        return 1.0, 1 - math.tanh(alpha * max(ratio_v, 0.0))
    return 1 - math.tanh(alpha * max(ratio_a, 0.0)), 1.0


def ref_pmr(score_a_p: float, score_v_p: float, alpha: float) -> tuple[float, float]:
    """fanyunfeng-bit/Modal-Imbalance-PMR@3615e48 main_Prototype_grad.py:160,169-177: (beta, lam)."""
    ratio_a_p = score_a_p / score_v_p
    if ratio_a_p > 1:
        return 0.0, alpha
    if ratio_a_p < 1:
        return alpha, 0.0
    return 0.0, 0.0


def ref_pmr_smooths(finished_epoch: int) -> bool:
    """main_Prototype_grad.py:435 called at :557 with the finished epoch: EMA only when that index is > 0."""
    return not finished_epoch <= 0


def ref_greedy_unlocked(epoch_from_1: int, starting_epoch: int = 2) -> bool:
    """nyukat/greedy_multimodal_learning@a190e03 callbacks.py:265-267 over framework.py:293 range(1, N+1)."""
    return epoch_from_1 >= starting_epoch


def ref_agm_active(epoch_from_1: int, starts: int = 0, ends: int = 20) -> bool:
    """Lingy12/AGM_ICCV2023@a24f2ce run/MOSEI_main.py:115 over :336 range(1, N+1); utils/config.py:74-75."""
    return starts <= epoch_from_1 <= ends


def ref_agm(score_a: float, score_t: float, run_a: float, run_t: float, alpha: float) -> tuple[float, float]:
    """run/MOSEI_main.py:101-110 (no cap there; run/CREMAD_main.py:151 adds min(., 10)): (coeff_a, coeff_t)."""
    mean = (score_a + score_t) / 2
    ratio_a, ratio_t = math.exp((mean - score_a) * 2), math.exp((mean - score_t) * 2)
    run_mean = (run_a + run_t) / 2
    opt_a, opt_t = math.exp((run_mean - run_a) * 2), math.exp((run_mean - run_t) * 2)
    return math.exp(alpha * (opt_a - ratio_a)), math.exp(alpha * (opt_t - ratio_t))


# ------------------------------------------------------------------ coefficients on random inputs and ties

@pytest.mark.parametrize("alpha", [0.1, 0.8])
def test_ogm_coefficients_equal_the_released_branch_including_ties(alpha):
    g = torch.Generator().manual_seed(0)
    pairs = [(float(a), float(v)) for a, v in torch.rand(200, 2, generator=g) * 30 + 0.1]
    pairs += [(5.0, 5.0), (0.25, 0.25), (17.5, 17.5)]  # exact ties
    for score_a, score_v in pairs:
        ours = ogm_coefficients(discrepancy_ratios(torch.tensor([score_a, score_v])), alpha)
        assert torch.allclose(ours, torch.tensor(ref_ogm(score_a, score_v, alpha)), atol=1e-6), (score_a, score_v)
    tie = ogm_coefficients(torch.tensor([1.0, 1.0]), 0.8)
    assert tie[0].item() == pytest.approx(1 - math.tanh(0.8), abs=1e-6) and tie[0].item() == pytest.approx(0.336, abs=1e-3)
    assert ogm_coefficients(torch.tensor([1.0, 1.0]), 0.8, skip_ties=True).tolist() == [1.0, 1.0]


def test_pmr_weights_equal_the_released_branch():
    g = torch.Generator().manual_seed(1)
    pairs = [(float(a), float(v)) for a, v in torch.rand(200, 2, generator=g) + 0.01] + [(0.4, 0.4)]
    for sa, sv in pairs:
        beta, _ = lag_coefficients(torch.tensor([sa, sv]), alpha=1.5)
        assert beta.tolist() == pytest.approx(list(ref_pmr(sa, sv, 1.5))), (sa, sv)


def test_pmr_ema_starts_in_the_epoch_the_released_loop_starts_it():
    strategy = make_strategy("pmr")
    for epoch in range(1, 6):  # prototypes used in `epoch` are computed after epoch - 1 finished
        ours = epoch >= (1 if strategy.ema_from_epoch_1 else 2)
        assert ours == ref_pmr_smooths(epoch - 1), epoch


def test_agm_coefficients_equal_the_released_step():
    g = torch.Generator().manual_seed(2)
    for row in torch.rand(100, 4, generator=g) * 3:
        sa, st, ra, rt = (float(x) for x in row)
        ours, _, _ = agm_coefficients(torch.tensor([sa, st]), torch.tensor([ra, rt]), alpha=0.7, cap=1e9)
        assert torch.allclose(ours, torch.tensor(ref_agm(sa, st, ra, rt, 0.7)), rtol=1e-5)


# ------------------------------------------------------------------ a tiny late-fusion model

class Tiny(MultimodalModel):
    """Two linear encoders, concatenation, one linear head; unimodal shares W_m h_m + b/2 as OGM's."""

    def __init__(self, dims=(6, 5), hidden=4, classes=3):
        super().__init__()
        self.encoders = nn.ModuleDict({"a": nn.Linear(dims[0], hidden), "v": nn.Linear(dims[1], hidden)})
        self.out_layer = nn.Linear(2 * hidden, classes)

    def fuse(self, features):
        return self.out_layer(torch.cat([features["a"], features["v"]], 1))

    def modality_classifier(self, modality):
        return nn.Linear(4, 3)

    def forward(self, inputs):
        features = self.encode(inputs)
        w, b, h = self.out_layer.weight, self.out_layer.bias, features["a"].shape[1]
        shares = {"a": features["a"] @ w[:, :h].T + b / 2, "v": features["v"] @ w[:, h:].T + b / 2}
        return Output(self.fuse(features), features, shares)


def tiny_data(n=24, batch_size=8, seed=0, same_inputs=False):
    g = torch.Generator().manual_seed(seed)
    x_a = torch.randn(n, 6, generator=g)
    x_v = x_a[:, :5].clone() if same_inputs else torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    loader = TensorLoader({"a": x_a, "v": x_v}, y, batch_size)
    return Data("tiny", loader, loader, loader, Classification(3), {"a": 6, "v": 5})


def symmetric(model: Tiny) -> Tiny:
    """Encoders and head halves that give both modalities the same share on the same inputs: a tie."""
    with torch.no_grad():
        model.encoders["a"].weight.zero_()
        model.encoders["a"].weight[:, :5] = model.encoders["v"].weight
        model.encoders["a"].bias.copy_(model.encoders["v"].bias)
        model.out_layer.weight[:, :4] = model.out_layer.weight[:, 4:]
    return model


def run_ours(strategy, model, data, steps, lr=0.1, setup=True):
    if setup:
        strategy.setup(model, data)
    opt = torch.optim.SGD([*model.parameters(), *strategy.parameters()], lr=lr)
    per_epoch = len(data.train)
    for epoch in range(-(-steps // per_epoch)):
        strategy.on_epoch_start(model, data, epoch)
        for i, batch in enumerate(data.train):
            if epoch * per_epoch + i == steps:
                return model
            opt.zero_grad()
            out = strategy.forward(model, batch, epoch)
            strategy.loss(model, batch, out, epoch).backward()
            strategy.after_backward(model, batch, out, epoch)
            opt.step()
    return model


def ref_ogm_run(model, data, steps, alpha, starts, ends, lr=0.1):
    """OGM-GE_CVPR2022@343dc1d main.py:78-148 (modulation OGM, concat fusion), 0-based epochs as :275.

    Our encoders are linear, so every encoder parameter is scaled where the release scales 4-D kernels.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    per_epoch, h = len(data.train), 4
    for step in range(steps):
        epoch, batch = divmod(step, per_epoch)[0], list(data.train)[step % per_epoch]
        opt.zero_grad()
        a, v = model.encoders["a"](batch.inputs["a"]), model.encoders["v"](batch.inputs["v"])
        out = model.out_layer(torch.cat([a, v], 1))
        w, b = model.out_layer.weight, model.out_layer.bias
        out_v, out_a = v @ w[:, h:].T + b / 2, a @ w[:, :h].T + b / 2
        F.cross_entropy(out, batch.target).backward()
        idx = torch.arange(len(batch))
        score_v = out_v.softmax(1)[idx, batch.target].sum().item()
        score_a = out_a.softmax(1)[idx, batch.target].sum().item()
        coeff_a, coeff_v = ref_ogm(score_a, score_v, alpha)
        if starts <= epoch <= ends:
            for m, k in (("a", coeff_a), ("v", coeff_v)):
                for p in model.encoders[m].parameters():
                    p.grad *= k
        opt.step()
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_ogm_twenty_steps_equal_the_released_step(tie):
    torch.manual_seed(0)
    data = tiny_data(same_inputs=tie)
    model = symmetric(Tiny()) if tie else Tiny()
    ref = ref_ogm_run(copy.deepcopy(model), data, 20, alpha=0.8, starts=0, ends=4)
    ours = run_ours(make_strategy("ogm", alpha=0.8, modulation_ends=4), copy.deepcopy(model), data, 20)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    if tie:  # the option departs from the release exactly where the scores tie
        other = run_ours(make_strategy("ogm", alpha=0.8, modulation_ends=4, skip_ties=True), copy.deepcopy(model), data, 20)
        assert not torch.allclose(other.encoders["a"].weight, ref.encoders["a"].weight, atol=1e-5)


def ref_pmr_prototypes(model, data, finished_epoch, old=None, momentum=0.2):
    """main_Prototype_grad.py:383-442: class means over the first max(1, len(loader)//10) batches, EMA if > 0."""
    model.eval()
    sums, counts = {m: torch.zeros(3, 4) for m in "av"}, torch.zeros(3)
    with torch.no_grad():
        for i, batch in enumerate(data.train):
            feats = model.encode(batch.inputs)
            for m in "av":
                sums[m].index_add_(0, batch.target, feats[m])
            counts += torch.bincount(batch.target, minlength=3)
            if i + 1 >= len(data.train) // 10:
                break
    model.train()
    new = {m: sums[m] / counts[:, None] for m in "av"}
    if ref_pmr_smooths(finished_epoch):
        new = {m: (1 - momentum) * new[m] + momentum * old[m] for m in "av"}
    return new


def ref_pmr_run(model, data, epochs, alpha, lr=0.1):
    """main_Prototype_grad.py:532-557 (schedule) and :153-178 (the Proto step)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    proto = ref_pmr_prototypes(model, data, 0)
    for epoch in range(epochs):
        for batch in data.train:
            opt.zero_grad()
            feats = model.encode(batch.inputs)
            out = model.fuse(feats)
            sim = {m: -torch.cdist(feats[m], proto[m]) for m in "av"}
            idx = torch.arange(len(batch))
            score = {m: sim[m].softmax(1)[idx, batch.target].sum().item() for m in "av"}
            beta, lam = ref_pmr(score["a"], score["v"], alpha)
            loss = F.cross_entropy(out, batch.target) + beta * F.cross_entropy(sim["a"], batch.target) \
                + lam * F.cross_entropy(sim["v"], batch.target)
            loss.backward()
            opt.step()
        proto = ref_pmr_prototypes(model, data, epoch, proto)
    return model


def test_pmr_twenty_one_steps_over_seven_epochs_equal_the_released_run():
    torch.manual_seed(0)
    data = tiny_data(n=24, batch_size=8)  # 3 steps per epoch: epoch boundaries at steps 3, 6, ...
    model = Tiny()
    ref = ref_pmr_run(copy.deepcopy(model), data, epochs=7, alpha=1.0)
    ours = run_ours(make_strategy("pmr", alpha=1.0), copy.deepcopy(model), data, 21)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    for option in ({"ema_from_epoch_1": True}, {"clip_weight": True}):  # each option changes the run
        other = run_ours(make_strategy("pmr", alpha=1.0, **option), copy.deepcopy(model), data, 21)
        assert not all(torch.allclose(p, q, atol=1e-5) for p, q in zip(other.parameters(), ref.parameters())), option


def ref_min_norm_from2(v11: float, v12: float, v22: float) -> float:
    """GeWu-Lab/MMPareto_ICML2024@a339db3 code/min_norm_solvers.py:9-29 (`_min_norm_element_from2`)."""
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))


def ref_mmpareto_run(model, heads, data, steps, lr=0.1, gamma=1.5):
    """MMPareto_ICML2024@a339db3 code/MMPareto.py:57-209: three backward passes (118-147), equal weights
    when the cosine is positive, else min-norm (165-174), γ = 1.5 and the per-tensor rule (178-207)."""
    opt = torch.optim.SGD([*model.parameters(), *heads.parameters()], lr=lr)
    enc = {m: list(model.encoders[m].parameters()) for m in "av"}
    batches, conflicts = list(data.train), 0
    for step in range(steps):
        batch = batches[step % len(batches)]
        opt.zero_grad()
        feats = model.encode(batch.inputs)
        losses = {"both": F.cross_entropy(model.fuse(feats), batch.target)}
        losses |= {m: F.cross_entropy(heads[m](feats[m]), batch.target) for m in "av"}
        grads = {}
        for name, loss in losses.items():
            loss.backward(retain_graph=True)
            grads[name] = {m: [p.grad.clone() for p in enc[m]] for m in ("av" if name == "both" else name)}
            opt.zero_grad()
        k = {}
        for m in "av":
            both = torch.cat([g.flatten() for g in grads["both"][m]])
            uni = torch.cat([g.flatten() for g in grads[m][m]])
            if F.cosine_similarity(both, uni, dim=0) > 0:
                k[m] = (0.5, 0.5)
            else:
                conflicts += 1
                c = ref_min_norm_from2(float(both @ both), float(both @ uni), float(uni @ uni))
                k[m] = (c, 1 - c)
        sum(losses.values()).backward()
        for m in "av":
            for p, g_both, g_uni in zip(enc[m], grads["both"][m], grads[m][m]):
                new = 2 * k[m][0] * g_both + 2 * k[m][1] * g_uni
                diff = torch.norm(p.grad) / torch.norm(new)
                p.grad = diff * new * gamma if diff > 1 else new * gamma
        opt.step()
    return model, heads, conflicts


def test_mmpareto_twenty_steps_equal_the_released_step():
    torch.manual_seed(0)
    data = tiny_data(n=40, batch_size=8)
    model = Tiny()
    strategy = make_strategy("mmpareto")
    ours = copy.deepcopy(model)
    strategy.setup(ours, data)
    ref, ref_heads, conflicts = ref_mmpareto_run(copy.deepcopy(model), copy.deepcopy(strategy.heads), data, 20)
    run_ours(strategy, ours, data, 20, setup=False)
    assert conflicts > 0  # the min-norm branch was taken on the way
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    for (name, p), q in zip(strategy.heads.named_parameters(), ref_heads.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name


# ------------------------------------------------------------------ schedules at epoch boundaries

def test_greedy_unlocks_in_the_epoch_the_released_callback_unlocks():
    data, model = tiny_data(), Tiny()
    batch = next(iter(data.train))
    for epoch in range(4):  # ours counts from 0, the release from 1
        strategy = make_strategy("greedy", alpha=0.0)  # α = 0: any gap triggers re-balancing once unlocked
        strategy.setup(model, data)
        out = strategy.forward(model, batch, epoch)
        strategy.loss(model, batch, out, epoch).backward()
        strategy.after_backward(model, batch, out, epoch)
        model.zero_grad()
        assert (strategy.caring is not None) == ref_greedy_unlocked(epoch + 1), epoch


def test_agm_window_covers_the_released_twenty_epochs():
    data, model = tiny_data(), Tiny()
    batches = list(data.train)
    strategy = make_strategy("agm")
    strategy.setup(model, data)
    for i, epoch in enumerate((0, 1, 18, 19, 20, 21)):
        batch = batches[i % len(batches)]  # a new score each step, so r̂ ≠ r and k ≠ 1 inside the window
        out = strategy.forward(model, batch, epoch)
        strategy.loss(model, batch, out, epoch).backward()
        stats = strategy.after_backward(model, batch, out, epoch)
        model.zero_grad()
        modulated = stats["coeff/a"].item() != 1.0 or stats["coeff/v"].item() != 1.0
        assert modulated == ref_agm_active(epoch + 1), epoch
    active = [e for e in range(30) if strategy.start_epoch <= e <= strategy.end_epoch]
    assert len(active) == sum(ref_agm_active(e) for e in range(1, 31)) == 20


def test_reconboost_stages_and_ga_term_as_released():
    """huacong/ReconBoost@14ab57a train.py:59-60 (4 + 4 epochs per stage), :349 (GA MSE on detached outputs)."""
    default = make_strategy("reconboost")
    assert (default.stage_epochs, default.rectify_epochs, default.ga_gradient) == (4.0, 4.0, False)
    data = tiny_data()
    batches = list(data.train)
    grads = {}
    for name, options in {"released": {}, "no_ga": {"alpha": 0.0}, "ga_gradient": {"ga_gradient": True}}.items():
        torch.manual_seed(0)
        model = Tiny()
        strategy = make_strategy("reconboost", stage_epochs=1 / 3, rectify_epochs=1 / 3, **options)
        strategy.setup(model, data)
        for step in range(3):  # boost a, rectify, boost v: the GA term (against a) appears in the third step
            batch = batches[step]
            out = strategy.forward(model, batch, 0)
            strategy.loss(model, batch, out, 0).backward()
            strategy.after_backward(model, batch, out, 0)
            if step < 2:
                model.zero_grad()
                strategy.heads.zero_grad()
        grads[name] = strategy.heads["v"].weight.grad.clone()
    assert torch.allclose(grads["released"], grads["no_ga"])  # the released GA term adds no gradient
    assert not torch.allclose(grads["ga_gradient"], grads["no_ga"])


# ------------------------------------------------------------------ the generated page

def test_docs_baselines_page_is_the_rendered_references():
    page = ROOT / "docs" / "baselines.md"
    assert page.read_text() == render(), (
        "docs/baselines.md is stale: run `python -m cggmlib.modulation.references > docs/baselines.md`")
    assert "0.336" in render() and "no reference found" in render()


def test_every_baseline_has_a_reference_or_says_it_has_none():
    """All 15 registered baselines (every strategy but CGGM) appear on docs/baselines.md exactly once, each
    with a repository@commit or an explicit "no reference" with what was searched."""
    from cggmlib.modulation import STRATEGIES
    from cggmlib.modulation.references import references

    listed = [s for ref in references() for s in ref.strategies]
    assert sorted(listed) == sorted(set(STRATEGIES) - {"cggm"}) and len(listed) == 15
    for ref in references():
        assert "@" in ref.code or ref.code.startswith("no "), ref.strategies
        assert all(":" in f for f in ref.files), ref.strategies  # file:line
