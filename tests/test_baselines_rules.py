"""Baselines: each method's rule on hand-computed inputs, and its bad options as clear errors.

Unimodal, MRD, MSLR, G-Blending, Greedy, OGM, OGM-GE, AGM, PMR, QMF, ReconBoost, MMPareto, UMT, UME.
What each step touches is in tests/test_baselines_gradients.py, training in tests/test_baselines_training.py.
"""
import math

import pytest
import torch
from torch import nn

from cggmlib.errors import ConfigError
from cggmlib.models.base import MultimodalModel
from cggmlib.modulation import make_strategy
from cggmlib.modulation.agm import agm_coefficients, competition_ratio, shapley_values
from cggmlib.modulation.gblending import blend_weights
from cggmlib.modulation.greedy import caring_modality, mean_replaced, utilisation_rates
from cggmlib.modulation.mmpareto import combine, min_norm_weight, pareto_weights
from cggmlib.modulation.mrd import drop_masks
from cggmlib.modulation.mslr import dynamic_scales, smooth_scales
from cggmlib.modulation.ogm import discrepancy_ratios, ogm_coefficients
from cggmlib.modulation.pmr import lag_coefficients, prototype_logits
from cggmlib.modulation.qmf import energy_confidence, rank_loss
from cggmlib.modulation.reconboost import reconcile_weights, stage_at
from cggmlib.modulation.ume import ensemble_predictions
from cggmlib.modulation.unimodal import keep_only, unimodal_responses
from cggmlib.tasks import Classification
from conftest import close, preset_model_on_synthetic, small_mlp_on_synthetic

torch.set_num_threads(1)


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


# ---------------------------------------------------------------- bad options

@pytest.mark.parametrize("name, kwargs, message", [
    ("ogm", {"alpha": -1}, "alpha"), ("ogm_ge", {"modulation_starts": 5, "modulation_ends": 2}, "modulation_ends"),
    ("mrd", {"p": 1.0}, "p must be"), ("mrd", {"where": "output"}, "where"), ("mslr", {"variant": "fast"}, "variant"),
    ("mslr", {"lr_scale": {"m0": -1}}, "lr_scale"), ("gblending", {"super_epoch": 0}, "super_epoch"),
    ("gblending", {"estimate_optimizer": "lbfgs"}, "optimizer"), ("greedy", {"window": 0}, "window"),
    ("unimodal", {"modality": 3}, "modality"),
    ("agm", {"alpha": -1.0}, "alpha"), ("pmr", {"momentum": 1.0}, "momentum"),
    ("qmf", {"rank_weight": -1}, "rank_weight"),
    ("reconboost", {"w1": 1.0, "w2": 2.0}, "w1"), ("mmpareto", {"scale": 0.0}, "scale"),
    ("umt", {"teacher_preset": "huge"}, "teacher_preset"), ("ume", {"weights": "median"}, "weights"),
])
def test_bad_options_are_clear_config_errors_naming_the_field(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy(name, **kwargs)


def test_mslr_rejects_unknown_modalities_at_setup():
    data, model = small_mlp_on_synthetic()
    with pytest.raises(ConfigError, match=r"unknown modalities \['audio'\]"):
        make_strategy("mslr", lr_scale={"audio": 2.0}).setup(model, data)


def test_pmr_refuses_regression_with_the_reason():
    data, model, _ = preset_model_on_synthetic(task="regression")
    with pytest.raises(ConfigError, match="class"):
        make_strategy("pmr").setup(model, data)
