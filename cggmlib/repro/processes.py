"""Processes the pipeline starts end with the process that started them, however it dies.

`cggm reproduce --jobs N` starts, below its own process: N ProcessPoolExecutor workers (spawned), the
multiprocessing resource tracker, and one Jupyter kernel per executing notebook (papermill; in the
workers, and in the main process for the data steps). Before this module, a SIGKILLed pipeline left its
workers and tracker alive for good (measured: docs/reliability.md, "Killed runs leave no processes"):
a worker blocks forever reading a task queue whose write end it holds itself, and it may even start
the next notebook's kernel after its parent is gone; the tracker waits for every holder of its pipe.

How each kind ends (Linux; the measured latencies are in docs/reliability.md):

- Workers (`die_with_parent`, the pool's initializer): `prctl(PR_SET_PDEATHSIG, SIGKILL)` through
  ctypes, so the kernel kills the worker the moment its parent dies; then a check that the parent is
  still the expected one (it may have died before prctl ran), and a watchdog thread polling
  `os.getppid()` for systems without prctl. PDEATHSIG fires when the parent *thread* that started the
  child ends, not the parent process; that is safe here because ProcessPoolExecutor starts spawn
  workers from the thread that calls `submit` (cggmlib calls it from the thread that then waits for
  every result), but it would kill a worker early if a short-lived thread started the pool.
- Kernels (`kernel_manager_class`): the kernel command is prefixed with a few lines of Python that set
  PDEATHSIG and `exec` the kernel (same pid, so jupyter_client still manages it). jupyter_client starts
  the kernel from the thread running its event loop: the calling thread when no loop runs (workers,
  `cggm` commands), or a long-lived runner thread inside Jupyter. ipykernel's own parent poller
  (ipykernel/parentpoller.py, ParentPollerUnix: exits when getppid() differs from JPY_PARENT_PID,
  checked once a second) stays as the fallback, and is what ends kernels off Linux.
- The resource tracker needs nothing of its own: it exits when every holder of its pipe has closed
  it, i.e. once the main process and the workers are gone (measured: it goes with them).

Chosen over a process group killed by the rerun, because that needs a rerun, and over a watchdog
alone, because a thread can be starved (a long C call holding the GIL) while PDEATHSIG cannot.

Every process of a pipeline also carries `CGGM_RESULTS_ROOT` and `CGGM_PIPELINE_PID` in its environment,
so a rerun finds whatever an older pipeline left writing into the same results (`stale`), whichever
process it was reparented to.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from functools import lru_cache
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ROOT_VAR, PIPELINE_VAR = "CGGM_RESULTS_ROOT", "CGGM_PIPELINE_PID"

#: run in front of the kernel command: die with the parent, then become the kernel (exec keeps the pid)
KERNEL_PREFIX = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)\n"
    "parent = int(os.environ.get('JPY_PARENT_PID', '0') or 0)\n"
    "if parent and os.getppid() != parent:\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n")


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent (thread) dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """In a freshly started child of `parent_pid`: end as soon as that parent is gone (see the module doc)."""
    set_pdeathsig()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)

    def watch():
        while os.getppid() == parent_pid:
            threading.Event().wait(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="cggm-parent-watchdog", daemon=True).start()


@lru_cache(maxsize=1)
def kernel_manager_class():
    """jupyter_client's AsyncKernelManager whose kernels die with the process that started them."""
    from jupyter_client.manager import AsyncKernelManager

    class DyingKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            cmd = super().format_kernel_cmd(extra_arguments)
            return [sys.executable, "-c", KERNEL_PREFIX, *cmd] if sys.platform.startswith("linux") else cmd

    return DyingKernelManager


def pipeline_environment(root) -> dict:
    """The variables that mark every process of the pipeline writing into `root` (see `stale`)."""
    return {ROOT_VAR: str(Path(root).resolve()), PIPELINE_VAR: str(os.getpid())}


def marked(name: str, value: str) -> list:
    """Live processes (psutil) whose environment has name=value, this one excluded; [] without psutil."""
    try:
        import psutil
    except ImportError:
        return []
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.status() != psutil.STATUS_ZOMBIE and p.environ().get(name) == value:
                found.append(p)
        except psutil.Error:  # gone meanwhile, or another user's
            continue
    return found


def describe(p) -> str:
    """pid, age and what a process (psutil.Process or pid) is: kernel, pool worker, resource tracker or its command."""
    import time

    try:
        import psutil

        p = p if isinstance(p, psutil.Process) else psutil.Process(int(p))
        cmd, age = " ".join(" ".join(p.cmdline()).split()), time.time() - p.create_time()  # one line
    except ImportError:
        return f"pid {p}"
    except psutil.Error:
        return f"pid {getattr(p, 'pid', p)} (gone)"
    kind = ("Jupyter kernel" if "ipykernel" in cmd else "pool worker" if "multiprocessing.spawn" in cmd
            else "resource tracker" if "resource_tracker" in cmd else cmd[:120])
    return f"pid {p.pid} ({kind}, started {age:.0f} s ago)"


def stale(root) -> list[dict]:
    """Processes of an earlier pipeline still running with results in `root`, and any other process holding
    a run folder's lock there: one dict each with the process, its description, its pipeline's pid (None
    when unmarked), whether that pipeline is alive and the run folders whose locks it holds."""
    try:
        import psutil  # installed with ipykernel, which the pipeline needs
    except ImportError:
        return []
    from ..runs.lock import lock_holders  # here, so this file also loads alone (no torch): tests/test_no_orphans.py

    holders = lock_holders(root)
    out = []
    for p in marked(ROOT_VAR, str(Path(root).resolve())):
        try:
            pipeline = int(p.environ().get(PIPELINE_VAR, "0"))
        except (psutil.Error, ValueError):
            continue
        if pipeline == os.getpid():
            continue
        out.append({"process": p, "description": describe(p), "pipeline": pipeline,
                    "pipeline_alive": psutil.pid_exists(pipeline), "holds": holders.pop(p.pid, [])})
    for pid, folders in holders.items():  # unmarked: a notebook run by hand, or a cggmlib before the marks
        if pid != os.getpid() and psutil.pid_exists(pid):
            out.append({"process": psutil.Process(pid), "description": describe(pid), "pipeline": None,
                        "pipeline_alive": False, "holds": folders})
    return out


def report_stale(root, log=print) -> list[dict]:
    """Log every process an earlier pipeline left running in `root` (nothing when there is none)."""
    found = stale(root)
    for s in found:
        whose = ("no cggm reproduce (a notebook run by hand, or an older cggmlib)" if s["pipeline"] is None
                 else f"another cggm reproduce (pid {s['pipeline']}) still running" if s["pipeline_alive"]
                 else f"a pipeline that is gone (pid {s['pipeline']})")
        held = f"; it holds run folder(s) {', '.join(map(str, s['holds']))}, which wait for it" if s["holds"] else ""
        log(f"warning: {s['description']} of {whose} is still working in {root}{held}; "
            f"stop it with `kill {s['process'].pid}` if it should not finish")
    return found


__all__ = ["describe", "die_with_parent", "kernel_manager_class", "marked", "pipeline_environment", "report_stale",
           "set_pdeathsig", "stale"]
