"""Shared test set-up: offline Hugging Face, a headless matplotlib, one torch thread per xdist
worker (two workers on a 2-core machine; oversubscribed torch is many times slower), and a check that
no process the suite started outlives it (`no_process_outlives_the_session`)."""
import contextlib
import os
import time
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

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture
def root() -> Path:
    return ROOT


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


def pytest_terminal_summary(terminalreporter):
    """The bad-input catalogue reports how many kinds it tried (tests/test_bad_inputs.py)."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "call") == "call" and "test_bad_inputs.py::test_bad_input[" in r.nodeid]
    if reports:
        ok = sum(r.passed for r in reports)
        terminalreporter.write_line(f"bad-input catalogue: {len(reports)} kinds tried, {ok} ended in a clear error")
