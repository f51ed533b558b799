"""The run-folder lock (`.lock`, `.lock.holder`): one writer per run folder, named when another waits."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

try:
    import fcntl
except ImportError:  # Windows: no flock, so no holder can be named
    fcntl = None

from ..errors import ResultsError
from ..files import atomic_write_json, ensure_writable


#: run folders this process holds the lock of: folder (resolved) -> filelock.FileLock
_HELD: dict = {}
LOCK_FILES = (".lock", ".lock.holder")


def lock_run_folder(folder, wait_s: float = 0.0, other: str = "choose another --out folder") -> bool:
    """Take `folder/.lock` for this process; False if it held it already. Raises ResultsError, naming
    the holder (pid, host, command, since when), if another process still holds it after `wait_s`."""
    folder = ensure_writable(folder)
    key = str(folder.resolve())
    if key in _HELD:
        return False
    lock = FileLock(folder / ".lock", timeout=wait_s, poll_interval=0.5, preserve_lock_file=True)
    try:
        lock.acquire()
    except Timeout:
        try:
            h = json.loads((folder / ".lock.holder").read_text())
            holder = f"process {h['pid']} on {h['host']} ({h['command']}), since {h['since']}"
        except (OSError, ValueError, KeyError):
            holder = "another process"
        raise ResultsError(f"{folder} is being written by {holder}; wait for it to finish, stop it, or {other}") from None
    _HELD[key] = lock
    atomic_write_json(folder / ".lock.holder", {"pid": os.getpid(), "host": socket.gethostname(),
                                               "command": " ".join(sys.argv)[:200],
                                               "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return True


def unlock_run_folder(folder) -> None:
    lock = _HELD.pop(str(Path(folder).resolve()), None)
    if lock is not None:
        lock.release()


@contextlib.contextmanager
def run_folder_lock(folder, other: str = "choose another --out folder"):
    """Hold `folder/.lock` for the block (no-op if this process holds it already, e.g. a pipeline worker)."""
    taken = lock_run_folder(folder, other=other)
    try:
        yield
    finally:
        if taken:
            unlock_run_folder(folder)


def move_aside(folder, aside_root) -> Path:
    """Move the content of `folder` (never its lock) to `aside_root/<name>-<timestamp>/`; nothing is deleted."""
    folder = Path(folder)
    aside = Path(aside_root) / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    while aside.exists():
        aside = aside.with_name(aside.name + "x")
    aside.mkdir(parents=True)
    for item in folder.iterdir():
        if item.name not in LOCK_FILES:
            shutil.move(str(item), str(aside / item.name))
    return aside


def claim(out_dir, timeout_s: float = 600.0) -> None:
    """Hold the lock of out_dir until this process exits (waits up to `timeout_s` while another holds it).

    The lock is an advisory `flock`, which the operating system drops when its holder dies however it
    dies, so a `.lock` file left by a dead process never blocks anyone. The holder writes its pid into
    the file, so a process kept waiting (and `cggm reproduce`, see cggmlib/repro/processes.py) can name it.
    """
    lock_run_folder(out_dir, wait_s=timeout_s)


def lock_holders(root) -> dict[int, list[Path]]:
    """{pid: [run folders]} of the `.lock` files under `root` that a live process holds right now."""
    if fcntl is None:
        return {}
    held: dict[int, list[Path]] = {}
    for lock in Path(root).rglob(".lock") if Path(root).is_dir() else ():
        try:
            with open(lock, "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    continue  # free (a file left by a dead process)
                except OSError:
                    pid = int(json.loads((lock.parent / ".lock.holder").read_text())["pid"])
        except (OSError, ValueError, IndexError):
            continue
        held.setdefault(pid, []).append(lock.parent)
    return held


__all__ = ["LOCK_FILES", "claim", "lock_holders", "lock_run_folder", "move_aside", "run_folder_lock", "unlock_run_folder"]
