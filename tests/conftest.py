"""Shared test set-up: offline Hugging Face, a headless matplotlib, and one torch thread per xdist
worker (two workers on a 2-core machine; oversubscribed torch is many times slower)."""
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture
def root() -> Path:
    return ROOT


def pytest_terminal_summary(terminalreporter):
    """The bad-input catalogue reports how many kinds it tried (tests/test_bad_inputs.py)."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "call") == "call" and "test_bad_inputs.py::test_bad_input[" in r.nodeid]
    if reports:
        ok = sum(r.passed for r in reports)
        terminalreporter.write_line(f"bad-input catalogue: {len(reports)} kinds tried, {ok} ended in a clear error")
