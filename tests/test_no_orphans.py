"""Killed runs leave no processes: a SIGKILLed `cggm reproduce --jobs 2` takes its workers, kernels and
resource tracker with it; so does any pool started with `die_with_parent`; a rerun names a process an
older pipeline left holding a run folder; a lock file of a dead process blocks nothing; and the suite's
own check (tests/conftest.py) catches a process that outlives a session, also under pytest-xdist."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import psutil
import pytest

from cggmlib.repro import processes
from cggmlib.runs.lock import claim, lock_holders
from cggmlib.errors import ResultsError
from conftest import ROOT

MARK = "CGGM_TEST_TREE"


def _marked_env(tag: str) -> dict:
    return os.environ | {MARK: tag, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _gone_within(procs: list, seconds: float, log=None, names=None) -> list:
    """The processes of `procs` still running after `seconds` (zombies count as gone); `log` gets one line
    per process with the time it took to go (pytest -s shows them; docs/reliability.md quotes them)."""
    started, gone = time.time(), {}
    while True:
        for p in procs:
            if p.pid not in gone and not _running(p):
                gone[p.pid] = time.time() - started
        left = [p for p in procs if p.pid not in gone]
        if not left or time.time() > started + seconds:
            break
        time.sleep(0.02)
    for p in procs if log else ():
        went = f"gone after {gone[p.pid]:.2f} s" if p.pid in gone else f"still running after {seconds} s"
        log(f"  {(names or {}).get(p.pid, 'pid')} {p.pid}: {went}")
    return left


def _kill_all(procs) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def _kind(p: psutil.Process) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    return ("kernel" if "ipykernel" in cmd else "worker" if "multiprocessing.spawn" in cmd
            else "tracker" if "resource_tracker" in cmd else cmd[:80])


@pytest.mark.notebook
def test_a_killed_reproduce_leaves_no_worker_kernel_or_tracker(tmp_path):
    """`--only mfeat` of the ci profile: worker notebooks straight away (mfeat has no data step)."""
    tag = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "cggmlib", "reproduce", "--profile", "ci", "--only", "mfeat", "--jobs", "2",
           "--results", str(tmp_path / "results")]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, env=_marked_env(tag), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    main = psutil.Process(proc.pid)
    tree: dict = {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # until a worker runs a notebook in a kernel
            with contextlib.suppress(psutil.Error):  # a process may go between two calls
                with_kids = {p.pid: p for p in main.children(recursive=True)}
                tree |= with_kids
                if any(_kind(p) == "kernel" and p.ppid() != proc.pid for p in with_kids.values() if _running(p)):
                    break
            time.sleep(0.1)
        assert proc.poll() is None, "the pipeline ended before a worker started a kernel: " + \
            (tmp_path / "killed.log").read_text()[-2000:]
        tree = {pid: p for pid, p in tree.items() if _running(p)}
        kinds = {pid: _kind(p) for pid, p in tree.items()}
        assert {"kernel", "tracker", "worker"} <= set(kinds.values()), kinds
        print("\nkilled `cggm reproduce --jobs 2` with", ", ".join(f"{k} {pid}" for pid, k in kinds.items()))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = _gone_within(list((tree | {p.pid: p for p in processes.marked(MARK, tag)}).values()), 5.0, print, kinds)
        assert left == [], [f"{p.pid} {_kind(p)}" for p in left]
        assert processes.marked(MARK, tag) == []  # nothing started meanwhile either (a worker's next kernel)
    finally:
        proc.kill()
        _kill_all(list(tree.values()) + processes.marked(MARK, tag))


POOL = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
sys.path.insert(0, {root!r} + "/cggmlib/repro")  # processes.py alone: no torch import, a fast test
import processes
with ProcessPoolExecutor(2, mp_context=mp.get_context({method!r}), initializer=processes.die_with_parent,
                         initargs=(os.getpid(),)) as pool:
    futures = [pool.submit(time.sleep, 60) for _ in range(2)]
    print("running", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pool_workers_started_with_die_with_parent_end_with_their_parent(tmp_path, method):
    """The initializer of cggm reproduce's workers (spawn) and of the BraTS preprocessing pool (fork)."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", POOL.format(root=str(ROOT), method=method)],
                            env=_marked_env(tag), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        deadline = time.time() + 60
        while time.time() < deadline:  # two workers (and, for spawn, the resource tracker)
            tree = psutil.Process(proc.pid).children(recursive=True)
            if len([p for p in tree if "resource_tracker" not in " ".join(p.cmdline())]) == 2:
                break
            time.sleep(0.05)
        assert len([p for p in tree if "resource_tracker" not in " ".join(p.cmdline())]) == 2, tree
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = _gone_within(tree + processes.marked(MARK, tag), 3.0)
        assert left == [], [" ".join(p.cmdline())[:100] for p in left]
    finally:
        proc.kill()
        _kill_all(processes.marked(MARK, tag))


HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from cggmlib.runs.lock import claim
claim({folder!r})
print("claimed", flush=True)
time.sleep(120)
"""


def _holder(folder, env) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT), folder=str(folder))], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def test_a_lock_left_by_a_dead_process_blocks_nothing(tmp_path):
    folder = tmp_path / "ci" / "mfeat" / "joint" / "seed0"
    holder = _holder(folder, _marked_env(uuid.uuid4().hex))
    holder.kill()
    holder.wait()
    assert (folder / ".lock").exists()  # the file stays, the lock does not
    assert json.loads((folder / ".lock.holder").read_text())["pid"] == holder.pid
    started = time.time()
    claim(folder, timeout_s=5)
    assert time.time() - started < 1.0
    assert lock_holders(tmp_path) == {os.getpid(): [folder]}


def test_a_rerun_names_the_stale_process_that_holds_a_run_folder(tmp_path):
    root = tmp_path / "results" / "ci"
    folder = root / "mfeat" / "joint" / "seed0"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    env = _marked_env(uuid.uuid4().hex) | {processes.ROOT_VAR: str(root.resolve()),
                                           processes.PIPELINE_VAR: dead.stdout.strip()}
    holder = _holder(folder, env)
    try:
        lines = []
        found = processes.report_stale(root, log=lines.append)
        assert [s["process"].pid for s in found] == [holder.pid] and found[0]["holds"] == [folder]
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and str(folder) in lines[0] \
            and "gone" in lines[0] and f"kill {holder.pid}" in lines[0]
        with pytest.raises(ResultsError, match=f"process {holder.pid}"):
            claim(folder, timeout_s=0.5)
        assert processes.report_stale(tmp_path / "elsewhere", log=lines.append) == []
    finally:
        holder.kill()
        holder.wait()
    assert processes.stale(root) == []


def test_a_rerun_names_an_unmarked_process_that_holds_a_run_folder(tmp_path):
    """A notebook run by hand (or an older cggmlib) carries no pipeline marks; its lock still names it."""
    root = tmp_path / "results" / "ci"
    folder = root / "mfeat" / "cggm" / "seed0"
    holder = _holder(folder, _marked_env(uuid.uuid4().hex))
    try:
        lines = []
        found = processes.report_stale(root, log=lines.append)
        assert [(s["process"].pid, s["pipeline"], s["holds"]) for s in found] == [(holder.pid, None, [folder])]
        assert f"pid {holder.pid}" in lines[0] and "run by hand" in lines[0]
    finally:
        holder.kill()
        holder.wait()


LEAKY = '''
import subprocess, sys


def test_leaves_a_child():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_leaves_an_orphan():  # the grandchild is reparented to init (or a subreaper) at once
    subprocess.run([sys.executable, "-c", "import subprocess, sys; "
                    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"], check=True)


def test_tidy():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
'''


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_the_suite_fails_when_a_process_outlives_its_session(tmp_path, workers):
    """A session of three tests, two of which leak: the sessions (one per xdist worker) report exactly the
    two leaked processes and kill them. That tidy sessions pass is what every other run of the suite shows."""
    (tmp_path / "test_leaky.py").write_text(textwrap.dedent(LEAKY))
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-q", "-p", "no:cacheprovider", *workers,
                           "-rA", str(tmp_path / "test_leaky.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "3 passed" in out and "outlived it (now killed)" in out, out[-3000:]
    # the child and the orphan, each reported (pytest may print a report twice: the error and its summary line)
    reported = set(re.findall(r"pid (\d+) \([^)]*-c import time; time\.sleep\(60\)", out))
    assert len(reported) == 2, out[-3000:]
