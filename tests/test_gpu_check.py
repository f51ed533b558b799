"""The overlap verification of `python -m cggmlib.bench.gpu_check` (reduced form on the CPU) and the rule that
CGGM's overlap stays off until a committed GPU report shows a pass."""
import json

import torch

from cggmlib.bench import gpu_check
from cggmlib.modulation import overlap

REPORT = gpu_check.Path(__file__).resolve().parents[1] / "docs" / "gpu_check.json"


def test_overlap_check_writes_json_and_markdown_and_never_verifies_on_cpu(tmp_path):
    stem = tmp_path / "report"
    assert gpu_check.main(["--cpu-dry-run", "--sections", "overlap", "--overlap-steps", "4", "--models", "mosi",
                           "iemocap", "--out", str(tmp_path), "--report", str(stem)]) == 0
    report = json.loads(stem.with_suffix(".json").read_text())
    rows = [r for r in report["rows"] if r["suite"] == "overlap"]
    assert [r["model"] for r in rows] == ["mosi", "iemocap"]
    assert all(r["verdict"] == "pass" and r["steps"] == 4 and r["tensors"] > 10 for r in rows), rows
    assert report["overlap"]["verifies_overlap"] is False  # a CPU, 4 steps, two of four models
    assert "not run on a CUDA GPU" in report["overlap"]["why_not"]
    md = stem.with_suffix(".md").read_text()
    assert "| mosi | 4 |" in md and "**The overlap is not verified**" in md


def test_a_changed_update_is_caught():
    """The comparison is sensitive: one parameter nudged by 1e-7 is a difference."""
    a = {"w": torch.ones(3)}
    b = {"w": torch.ones(3) + torch.tensor([0.0, 1e-7, 0.0])}
    assert gpu_check._max_diff(a, b) > 0 and gpu_check._max_diff(a, a) == 0


def test_overlap_stays_off_until_a_committed_report_verifies_it():
    verified = REPORT.exists() and json.loads(REPORT.read_text())["overlap"]["verifies_overlap"]
    assert overlap.VERIFIED == bool(verified), ("cggmlib.modulation.overlap.VERIFIED must be True only with a "
                                                "committed docs/gpu_check.json whose overlap check passed on a GPU")


def test_gpu_check_times_ours_against_the_released_transcription_in_float32_and_bf16(tmp_path):
    stem = tmp_path / "report"
    assert gpu_check.main(["--cpu-dry-run", "--sections", "released", "--models", "mosi", "--reps", "1",
                           "--out", str(tmp_path), "--report", str(stem)]) == 0
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert not [r for r in rows if r["suite"] in ("failed", "skipped")], rows
    parts = ["joint", "cggm", "forward", "forward_backward", "classifiers", "optimizer"]
    assert [r["variant"] for r in rows] == parts + [f"{p} amp=bf16" for p in parts]
    assert all(r["suite"] == "released" and r["model"] == "mosi" and r["vs_released"] > 0 for r in rows)
