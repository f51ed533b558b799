"""Multi-seed statistics: Student-t intervals, paired differences, and tables over real run folders."""
import math

import pytest
from scipy import stats as st

import cggmlib as cg
from cggmlib.errors import ResultsError
from cggmlib.runs import run_dir
from cggmlib.analysis.stats import aggregate, collect, format_mean_std, paired_difference, seed_values, summarize


def test_aggregate_by_hand():
    out = aggregate([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(5 / 3)  # sample std (n − 1) of 1..4
    half = 3.182446305284263 * std / 2  # t_{0.975, 3} · std / √4
    assert out["mean"] == 2.5 and out["n"] == 4
    assert out["std"] == pytest.approx(std)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half))
    low, high = st.t.interval(0.95, 3, loc=2.5, scale=st.sem([1, 2, 3, 4]))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((low, high))


def test_aggregate_edge_cases():
    one = aggregate([0.7])
    assert one["mean"] == 0.7 and one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    assert aggregate([])["n"] == 0 and math.isnan(aggregate([])["mean"])
    assert aggregate([1.0, None, float("nan"), 3.0])["n"] == 2  # missing values are dropped, not zeros
    assert aggregate([1.0, 2.0, 3.0], confidence=0.99)["ci_low"] < aggregate([1.0, 2.0, 3.0])["ci_low"]


def test_paired_difference_uses_common_seeds():
    a = {0: 0.80, 1: 0.70, 2: 0.90, 3: 0.75}
    b = {0: 0.78, 1: 0.675, 2: 0.878, 5: 0.10}
    out = paired_difference(a, b)
    assert out["seeds"] == [0, 1, 2] and out["n"] == 3
    assert out["mean"] == pytest.approx((0.02 + 0.025 + 0.022) / 3)
    # the seed effect is shared, so the paired interval is far narrower than the unpaired spreads
    assert out["ci_high"] - out["ci_low"] < aggregate(a.values())["ci_high"] - aggregate(a.values())["ci_low"]
    assert out["ci_low"] > 0
    with pytest.raises(ResultsError, match="no common seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_format_mean_std():
    assert format_mean_std(0.75381, 0.01234, scale=100) == "75.38 ± 1.23"
    assert format_mean_std(0.747, float("nan"), digits=3) == "0.747"
    assert format_mean_std(float("nan"), 0.1) == "–"


def test_collect_and_summarize_real_run_folders(tmp_path):
    """Two strategies × two seeds of real (tiny) runs in the results/<profile>/<dataset>/<strategy>/seed<k> layout."""
    for strategy in ("joint", "cggm"):
        for seed in (0, 1):
            cfg = cg.Config(dataset="synthetic", strategy=strategy, epochs=1, seed=seed,
                            data_kwargs={"num_samples": 300})
            cg.run_experiment(cfg, run_dir(tmp_path, "smoke", cfg), progress=False)
    (tmp_path / "smoke" / "synthetic" / "joint" / "seed9").mkdir()  # unfinished run: skipped
    frame = collect(tmp_path, profile="smoke")
    assert set(frame["strategy"]) == {"joint", "cggm"} and set(frame["seed"]) == {0, 1}
    assert {"acc", "f1", "loss", "val/acc", "official/acc"} <= set(frame["metric"])
    assert "best_epoch" not in set(frame["metric"])
    table = summarize(frame)
    row = table[(table["strategy"] == "cggm") & (table["metric"] == "acc")].iloc[0]
    values = frame[(frame["strategy"] == "cggm") & (frame["metric"] == "acc")]["value"]
    assert row["n"] == 2 and row["seeds"] == [0, 1]
    assert row["mean"] == pytest.approx(values.mean()) and row["std"] == pytest.approx(values.std(ddof=1))
    diff = paired_difference(seed_values(frame, "synthetic", "cggm", "acc"),
                             seed_values(frame, "synthetic", "joint", "acc"))
    assert diff["seeds"] == [0, 1]
