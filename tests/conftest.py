"""Shared test set-up: offline Hugging Face, a headless matplotlib, one torch thread per xdist
worker (two workers on a 2-core machine; oversubscribed torch is many times slower), and a check that
no process the suite started outlives it (`no_process_outlives_the_session`)."""
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
#: marks every process this session starts (set at import, before test modules copy os.environ); one
#: value per pytest process, so each xdist worker checks only what its own tests started
SESSION_MARK = "CGGM_TEST_SESSION"
os.environ[SESSION_MARK] = str(os.getpid())

import pytest  # noqa: E402
import torch  # noqa: E402

import cggmlib as cg  # noqa: E402
from cggmlib.models.mlp import LateFusionMLP  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture
def root() -> Path:
    return ROOT


# --- shared helpers (tests import them: `from conftest import cfg, one_step`) ---------------------------

def cfg(**kw) -> cg.Config:
    """A Config for one CPU epoch on `synthetic` with 100 samples; every keyword overrides its field
    (a test that needs more epochs or data says so at its call site)."""
    return cg.Config(**({"dataset": "synthetic", "epochs": 1, "device": "cpu", "data_kwargs": {"num_samples": 100}}
                        | kw))


def small_mlp_on_synthetic(**data_kwargs):
    """`synthetic` with 160 samples in batches of 32 and a small LateFusionMLP (hidden 16, features 8);
    (data, model)."""
    data = cg.load_data("synthetic", batch_size=32, num_samples=160, **data_kwargs)
    torch.manual_seed(0)
    return data, LateFusionMLP(data.input_dims, data.num_outputs, hidden=16, feature_dim=8)


def preset_model_on_synthetic(seed=0, **data_kwargs):
    """`synthetic` with 600 samples in batches of 64, the dataset's preset model without dropout, and the
    first training batch; (data, model, batch)."""
    torch.manual_seed(seed)
    data = cg.load_data("synthetic", batch_size=64, seed=seed, **({"num_samples": 600} | data_kwargs))
    model = cg.build_model("synthetic", data, dropout=0.0)
    return data, model, next(iter(data.train))


def close(a, b, tol=1e-5) -> bool:
    """a ≈ b elementwise (absolute tolerance `tol`), for tensors, lists or numbers."""
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def gradients(model) -> dict:
    """{parameter name: a copy of its gradient} for the parameters that have one."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@dataclass
class Step:
    """What `one_step` saw: the batch, the model output, the loss, the gradients after backward and before
    the strategy's `after_backward` (`before`), and the statistics `after_backward` returned."""
    batch: object
    out: object
    loss: torch.Tensor
    before: dict
    stats: dict


def one_step(strategy, model, data, batch=None, epoch=0) -> Step:
    """One training step as the loop takes it: setup, train mode, forward, loss, zeroed model gradients,
    backward, after_backward (on the first training batch unless `batch` is given). What the strategy
    changed in the gradients is the difference between `Step.before` and the gradients now."""
    strategy.setup(model, data)
    model.train()
    batch = next(iter(data.train)) if batch is None else batch
    out = strategy.forward(model, batch, epoch)
    loss = strategy.loss(model, batch, out, epoch)
    model.zero_grad(set_to_none=True)
    loss.backward()
    before = gradients(model)
    return Step(batch, out, loss, before, strategy.after_backward(model, batch, out, epoch))


#: children of the pytest process itself that live exactly as long as it (they end when it exits)
INFRASTRUCTURE = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "compile_worker")


def leftovers(me, before: set) -> list:
    """Processes this session started that still run: descendants of `me` (except the multiprocessing
    helpers of `me` itself, which end with it) and orphans anywhere carrying this session's mark."""
    import psutil

    from cggmlib.repro.processes import marked

    found = {}
    for p in me.children(recursive=True):
        try:
            if p.pid in before or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.ppid() == me.pid and any(k in " ".join(p.cmdline()) for k in INFRASTRUCTURE):
                continue
        except psutil.Error:
            continue
        found[p.pid] = p
    descendants = {p.pid for p in me.children(recursive=True)}
    for p in marked(SESSION_MARK, os.environ[SESSION_MARK]):
        if p.pid not in descendants and p.pid not in before:
            found[p.pid] = p
    return list(found.values())


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session():
    """Fails the session (an error at its last teardown) when a worker, kernel, resource tracker or any
    other process a test started is still running at the end, then stops it. Kernels take about a
    second to go after their notebook, so the check waits up to 10 s before it complains."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.time() + 10
    while (left := leftovers(me, before)) and time.time() < deadline:
        time.sleep(0.25)
    if left:
        from cggmlib.repro.processes import describe

        lines = []
        for p in left:
            with contextlib.suppress(psutil.Error):
                lines.append(describe(p))
                p.kill()
        pytest.fail(f"{len(left)} process(es) started by this test session outlived it (now killed):\n  "
                    + "\n  ".join(lines), pytrace=False)


#: files whose tests are the cases of silent failures: each ends in correct behaviour or a clear error
SILENT_FAILURE_FILES = ("tests/test_silent_failures.py::", "tests/test_data_recovery.py::")


def pytest_terminal_summary(terminalreporter):
    """The bad-input catalogue (tests/test_bad_inputs.py) and the silent-failure cases
    (SILENT_FAILURE_FILES) report how many they tried."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "call") == "call"]
    bad_input = [r for r in reports if "test_bad_inputs.py::test_bad_input[" in r.nodeid]
    if bad_input:
        ok = sum(r.passed for r in bad_input)
        terminalreporter.write_line(f"bad-input catalogue: {len(bad_input)} kinds tried, {ok} ended in a clear error")
    silent = [r for r in reports if any(f in r.nodeid for f in SILENT_FAILURE_FILES)
              and "catalogue_counts" not in r.nodeid]
    if silent:
        ok = sum(r.passed for r in silent)
        terminalreporter.write_line(f"silent-failure catalogue: {len(silent)} cases tried, {ok} ended in correct "
                                    "behaviour or a clear error")
