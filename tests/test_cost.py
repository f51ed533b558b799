"""`python -m cggmlib.repro.cost`: the cost table of the paper profile (measured rows, projection, 16 GB verdict)."""
import json

import pytest
import torch

from cggmlib.repro import cost
from cggmlib.errors import ConfigError


def test_projection_scales_activations_with_the_batch_and_finds_the_largest_batch():
    m = {"batch": 2, "ms": 1000.0, "live_mb": 100.0, "peak_mb": 300.0}
    p = cost.project(m, "brats2021", factor=50.0, measured_on="cpu")  # paper batch 64
    assert p["paper_batch"] == 64 and p["peak_mb_paper_batch"] == pytest.approx(100 + 200 * 32)
    assert p["ms_step_cpu"] == pytest.approx(32000) and p["ms_step_gpu"] == pytest.approx(640)
    assert p["fits_16gb"] and p["largest_batch_16gb"] == int((16 * 1024 * 0.9 - 100) // 100)
    assert p["steps_per_epoch"] == 14  # 876 training slices / 64
    big = cost.project(m | {"peak_mb": 1100.0}, "brats2021", factor=50.0, measured_on="cpu")
    assert not big["fits_16gb"] and big["largest_batch_16gb"] < 64


def test_the_command_writes_measured_rows_and_gpu_hours(tmp_path):
    out = tmp_path / "cost.md"
    assert cost.main(["--datasets", "synthetic", "--reps", "1", "--write", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["rows"]
    assert "cggm" in [r["row"] for r in rows]  # the audit's runs and the imbalance study's strategies
    assert all(r["params"] > 0 and r["ms"] > 0 for r in rows)
    assert result["factor"] > 1 and result["total_hours"] > 0
    assert len(result["runs"]) == sum(1 for r in result["runs"] if r["dataset"] == "synthetic") > 0
    text = out.read_text()
    assert "python -m cggmlib.repro.cost --write docs/cost.md" in text and "| synthetic | cggm |" in text
    assert "GPU time = CPU time /" in text
    again = tmp_path / "again.md"  # re-projection of the stored rows measures nothing and agrees
    assert cost.main(["--rows-from", str(out.with_suffix(".json")), "--write", str(again)]) == 0
    assert again.read_text() == text


def test_complete_measures_only_the_rows_an_earlier_table_lacks(tmp_path, capsys):
    """How the rows a long measurement did not reach (BraTS) are added without measuring the rest again."""
    m = {"ms": 12.5, "batch": 64, "params": 1.0, "strategy_params": 0.0, "live_mb": 1.0, "peak_mb": 2.0}
    rows = [{"dataset": "synthetic", "row": "joint", "measured_on": "cpu"} | m | cost.project(m, "synthetic", 80.0, "cpu")]
    earlier = cost.summarize(rows, torch.device("cpu"), 1, 50.0, 4.0, 80.0)
    (tmp_path / "old.json").write_text(json.dumps(earlier))
    out = tmp_path / "cost.md"
    assert cost.main(["--datasets", "synthetic", "--reps", "1", "--complete", str(tmp_path / "old.json"),
                      "--write", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    measured = capsys.readouterr().out
    assert " joint " not in measured and " cggm " in measured  # the kept row was not measured again
    kept = [r for r in result["rows"] if r["row"] == "joint"]
    assert len(kept) == 1 and kept[0]["ms"] == 12.5 and result["factor"] == 80.0
    assert {r["row"] for r in result["rows"]} == {row for d, row in cost.rows_of_grid() if d == "synthetic"}
    with pytest.raises(ConfigError, match="--complete: the earlier rows were measured on cpu with 1 thread"):
        cost.main(["--datasets", "synthetic", "--threads", "2", "--complete", str(tmp_path / "old.json")])


def test_unknown_dataset_is_named():
    with pytest.raises(ConfigError, match="--datasets: unknown"):
        cost.main(["--datasets", "cifar"])
