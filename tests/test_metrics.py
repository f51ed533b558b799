"""Task metrics against scikit-learn / numpy and hand-computed values (metrics.json keys included)."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from cggmlib import metrics as M
from cggmlib.tasks import Classification, Regression, Segmentation


@pytest.mark.parametrize("seed,classes,n", [(0, 4, 50), (1, 101, 300), (2, 5, 7), (3, 3, 40)])
def test_classification_metrics_match_sklearn(seed, classes, n):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g)
    target = torch.randint(0, classes, (n,), generator=g)
    target[0] = classes - 1  # some classes occur only in the predictions, some only in the targets
    pred = logits.argmax(1).numpy()
    out = M.classification_metrics(logits, target)
    assert set(out) == {"acc", "f1", "f1_macro"}
    assert out["acc"] == pytest.approx(accuracy_score(target.numpy(), pred))
    assert float(M.accuracy(logits, target)) == pytest.approx(accuracy_score(target.numpy(), pred))
    with np.errstate(all="ignore"):
        assert out["f1"] == pytest.approx(f1_score(target.numpy(), pred, average="weighted", zero_division=0))
        assert out["f1_macro"] == pytest.approx(f1_score(target.numpy(), pred, average="macro", zero_division=0))


def test_f1_by_hand():
    # class 0: tp 1, support 2, predicted 1 -> F1 2/3; class 1: tp 1, support 1, predicted 2 -> 2/3
    # class 2 only predicted: F1 0 with support 0 (counts in macro, not in weighted)
    pred, target = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 3])
    out = M.f1_scores(pred, target, 4)
    # class 3 only in target: F1 0, support 1
    assert out["f1"] == pytest.approx((2 * 2 / 3 + 1 * 2 / 3 + 0) / 4)
    assert out["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 0) / 4)


def mosi_reference(p: np.ndarray, t: np.ndarray) -> dict:
    """The MOSI metrics written with numpy/sklearn, as zrguo/CGGM@21e428c src/eval_metrics.py `eval_senti`."""
    nz = t != 0
    return {"acc2": accuracy_score(t > 0, p > 0), "f1": f1_score(t > 0, p > 0, average="weighted"),
            "acc2_nonzero": accuracy_score(t[nz] > 0, p[nz] > 0),
            "f1_nonzero": f1_score(t[nz] > 0, p[nz] > 0, average="weighted"),
            "acc2_nonneg": accuracy_score(t >= 0, p >= 0), "f1_nonneg": f1_score(t >= 0, p >= 0, average="weighted"),
            "acc7": np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(t, -3, 3))),
            "acc5": np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(t, -2, 2))),
            "mae": np.mean(np.abs(p - t)), "corr": np.corrcoef(p, t)[0, 1]}


@pytest.mark.parametrize("seed", range(4))
def test_regression_metrics_match_numpy_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = np.round(rng.normal(0, 1.5, 200) * 3) / 3  # MOSI labels: a 1/3 grid with exact zeros
    p = np.concatenate([rng.normal(0, 1.5, 190), [0.0, 0.0, 2.5, -2.5, 0.5, -0.5, 3.7, -3.2, 1.5, -1.5]])
    t[:5] = 0.0
    out = M.regression_metrics(torch.tensor(p[:, None], dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    ref = mosi_reference(p.astype(np.float32).astype(float), t.astype(np.float32).astype(float))
    assert set(out) == set(ref)
    for k, v in ref.items():
        assert out[k] == pytest.approx(v, abs=1e-6), k


def test_acc2_puts_zero_on_the_negative_side():
    """Official Acc-2: (pred > 0) == (label > 0); a 0 is 'non-positive', grouped with the negatives."""
    pred, target = torch.tensor([0.0, 0.0, 1.0, -1.0]), torch.tensor([0.0, -1.0, 0.0, 0.0])
    assert float(M.sign_accuracy(pred, target)) == pytest.approx(3 / 4)  # only (1.0 vs 0) is wrong
    out = M.regression_metrics(pred, target)
    assert out["acc2"] == pytest.approx(3 / 4)
    assert out["acc2_nonneg"] == pytest.approx(2 / 4)  # ≥ 0 split: (0 vs −1) and (−1 vs 0) wrong
    assert out["acc2_nonzero"] == pytest.approx(1.0)  # only the target −1 counts; pred 0 is non-positive
    assert math.isnan(M.regression_metrics(torch.ones(3), torch.ones(3))["corr"])


def test_dice_by_hand():
    # one 2x3 slice; target WT = {1,2,3} pixels, TC = {1,3}, ET = {3}
    target = torch.tensor([[[0, 1, 2], [3, 0, 0]]])
    pred = torch.tensor([[[1, 1, 0], [3, 3, 0]]])
    eps = 1e-3
    counts = M.dice_counts(pred, target)
    # WT: P = 4 px, T = 3 px, overlap 2; TC: P = 4, T = 2, overlap 2; ET: P = 2, T = 1, overlap 1
    expect = {"wt": (2 * 2 + 2 * eps) / (7 + 2 * eps), "tc": (2 * 2 + 2 * eps) / (6 + 2 * eps),
              "et": (2 * 1 + 2 * eps) / (3 + 2 * eps)}
    for r, v in expect.items():
        assert float(M.dice_from_counts(counts[r], eps)) == pytest.approx(v)
    logits = torch.nn.functional.one_hot(pred, 4).movedim(-1, 1).float()
    assert float(M.mean_dice(logits, target)) == pytest.approx(sum(expect.values()) / 3, rel=1e-6)


def test_dice_empty_empty_is_one_and_disjoint_is_near_zero():
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    assert all(float(M.dice_from_counts(c)) == 1.0 for c in M.dice_counts(empty, empty).values())
    full_et = torch.full((1, 4, 4), 3)
    c = M.dice_counts(empty, full_et)["et"]
    assert float(M.dice_from_counts(c)) == pytest.approx(2e-3 / (16 + 2e-3))


def test_seg_meter_per_slice_and_per_volume():
    # two slices of case "a" (ET hit on one, missed on the other) and one empty slice of case "b"
    target = torch.zeros(3, 2, 2, dtype=torch.long)
    target[0, 0, 0] = 3
    target[1, 0, 0] = 3
    pred = target.clone()
    pred[1] = 0
    logits = torch.nn.functional.one_hot(pred, 4).movedim(-1, 1).float()
    meter = Segmentation().new_meter()
    meter.update(logits, target, {"case": ["a", "a", "b"]})
    out = meter.compute()
    eps = 1e-3
    miss = 2 * eps / (1 + 2 * eps)
    assert out["dice_et"] == pytest.approx((1 + miss + 1) / 3)
    # volume a pools both slices: overlap 1 px of P = 1, T = 2
    assert out["dice_et_volume"] == pytest.approx(((2 + 2 * eps) / (3 + 2 * eps) + 1) / 2)
    assert out["dice_mean"] == pytest.approx((out["dice_wt"] + out["dice_tc"] + out["dice_et"]) / 3)
    assert {"dice_wt_volume", "dice_tc_volume", "dice_mean_volume"} <= set(out)


def test_segmentation_loss_by_hand():
    """Uniform logits: CE = log 4 (any class weights); the released soft Dice is 2·¼·F / (¾·N + F + s)
    (zrguo/CGGM@21e428c src/eval_metrics.py:114–116); smooth_numerator=True adds s above too."""
    target = torch.tensor([[[0, 1], [2, 3]], [[0, 0], [0, 1]]])
    n, fg, s = target.numel(), int((target > 0).sum()), 0.01
    released = (2 * 0.25 * fg) / (0.75 * n + fg + s)
    loss = Segmentation().loss(torch.zeros(2, 4, 2, 2), target)
    assert float(loss) == pytest.approx(0.5 * math.log(4) + 0.5 * (1 - released), rel=1e-6)
    corrected = (2 * 0.25 * fg + s) / (0.75 * n + fg + s)
    loss = Segmentation(smooth_numerator=True).loss(torch.zeros(2, 4, 2, 2), target)
    assert float(loss) == pytest.approx(0.5 * math.log(4) + 0.5 * (1 - corrected), rel=1e-6)


def test_empty_target_soft_dice_released_vs_smoothed():
    """All background, confident background logits: the released Dice is 0 (loss term 1), ours ≈ 1."""
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 4, 4, 4)
    logits[:, 0] = 30.0
    ce_free = dict(ce_weight=0.0, dice_weight=1.0)
    assert float(Segmentation(**ce_free).loss(logits, target)) == pytest.approx(1.0, abs=1e-6)
    assert float(Segmentation(smooth_numerator=True, **ce_free).loss(logits, target)) == pytest.approx(0.0, abs=1e-6)


def test_cggm_step_metric_per_task():
    """ε of each task is the official per-batch metric: accuracy, sign accuracy, mean Dice."""
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 0, 0])
    assert float(Classification(2).step_metric(logits, labels)) == pytest.approx(2 / 3)
    scores, targets = torch.tensor([[0.5], [0.0], [-1.0]]), torch.tensor([1.0, -0.5, 0.0])
    assert float(Regression().step_metric(scores, targets)) == pytest.approx(1.0)
    assert float(Regression().paper_metric(scores, targets)) == pytest.approx(-(0.5 + 0.5 + 1.0) / 3)
    seg_target = torch.zeros(1, 2, 2, dtype=torch.long)
    assert float(Segmentation().step_metric(torch.zeros(1, 4, 2, 2), seg_target)) == pytest.approx(1.0)


def test_meters_give_the_metrics_json_keys():
    reg = Regression().new_meter()
    reg.update(torch.randn(10, 1), torch.randn(10))
    assert {"acc2", "acc2_nonzero", "acc7", "acc5", "f1", "mae", "corr"} <= set(reg.compute())
    cls = Classification(4).new_meter()
    cls.update(torch.randn(10, 4), torch.randint(0, 4, (10,)))
    assert set(cls.compute()) == {"acc", "f1", "f1_macro"}
