"""Run folders: seeding, atomic writes, and `save_run` (config.json, metrics.json, trace.jsonl, run card).

A run folder is complete exactly when `metrics.json` exists: it is written last, atomically, so a
killed run never leaves a file that a later step could mistake for a result.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .errors import ResultsError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); make CPU kernels deterministic where possible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _describe_os_error(path, err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return (f"disk full while writing {path}: free space and rerun (the disk holding it is full; "
                "or choose a folder on another disk)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path} is not writable ({err.strerror}); choose a writable --out folder"
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot write {path}: a file stands where a folder is needed ({err}); choose a writable --out folder"
    return f"cannot write {path}: {err}; choose a writable --out folder"


def ensure_writable(folder) -> Path:
    """Create `folder` and prove it accepts a file, before any compute is spent on a run."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResultsError(_describe_os_error(folder, err)) from err
    probe = atomic_write_text(folder / ".write-test", "ok")
    probe.unlink()
    return folder


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    If anything fails, `path` keeps its previous content and the temporary file is removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise ResultsError(_describe_os_error(path, err)) from err


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(obj, path) -> Path:
    """torch.save through a temporary file and a rename (a kill leaves the old file intact)."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if torch.is_tensor(o):
        return o.tolist()
    return repr(o)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    from importlib import metadata

    names = ["cggmlib", "torch", "numpy", "pandas", "monai", "nibabel", "datasets", "transformers", "h5py"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_card(cfg, data=None, wall_time_s: float | None = None, extra: dict | None = None) -> dict:
    """Provenance of one run: commit, configuration hash, seed, versions, device, time, data checksums."""
    device = cfg.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name()})"
    card = {"git_commit": git_commit(), "config_key": cfg.key(), "seed": cfg.seed,
            "packages": package_versions(), "device": device, "threads": torch.get_num_threads(),
            "wall_time_s": wall_time_s, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "standin": bool(getattr(data, "standin", False)),
            "data_files": (getattr(data, "info", {}) or {}).get("checksums", {})}
    if not card["data_files"] and cfg.dataset != "custom":
        from .receipts import data_checksums  # every file the loader reads (derived caches excluded)

        try:
            card["data_files"], card["data_receipt"] = data_checksums(cfg.dataset, cfg.data_root)
        except OSError as err:
            card["data_receipt"] = f"checksums not computed: {err}"
    return card | (extra or {})


def save_run(out_dir, cfg, result, data=None) -> Path:
    """Write config.json, trace.jsonl, run_card.json, then metrics.json (last: it marks completion)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResultsError(_describe_os_error(out, err)) from err
    atomic_write_json(out / "config.json", cfg.to_dict())
    result.trace.save(out / "trace.jsonl")
    atomic_write_json(out / "run_card.json", run_card(cfg, data, result.wall_time_s))
    atomic_write_json(out / "metrics.json", result.metrics)
    return out


def load_run(run_dir) -> dict:
    """{"config", "metrics", "run_card", "trace"} of a completed run folder."""
    from .trace import Trace

    d = Path(run_dir)
    if not (d / "metrics.json").exists():
        raise ResultsError(f"{d} holds no completed run (metrics.json is missing)")
    read = lambda name: json.loads((d / name).read_text()) if (d / name).exists() else None  # noqa: E731
    return {"config": read("config.json"), "metrics": read("metrics.json"), "run_card": read("run_card.json"),
            "trace": Trace.load(d / "trace.jsonl").frame() if (d / "trace.jsonl").exists() else None}


def run_dir(results: str | Path, profile: str, cfg) -> Path:
    """results/<profile>/<dataset>/<strategy>/seed<k>/ (the layout every report reads)."""
    return Path(results) / profile / cfg.dataset / cfg.strategy / f"seed{cfg.seed}"


def progress_bar(iterable, enabled: bool, initial: int = 0):
    """One bar over epochs: a widget in JupyterLab, a few lines in papermill logs, nothing if disabled."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc="epochs", disable=not enabled, initial=initial, mininterval=2.0, leave=True)


#: run folders this process holds the lock of: folder (resolved) -> filelock.FileLock
_HELD: dict = {}
LOCK_FILES = (".lock", ".lock.holder")


def lock_run_folder(folder, wait_s: float = 0.0) -> bool:
    """Take `folder/.lock` for this process; False if it held it already. Raises ResultsError, naming
    the holder (pid, host, command, since when), if another process still holds it after `wait_s`."""
    from filelock import FileLock, Timeout

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
        raise ResultsError(f"{folder} is being written by {holder}; wait for it to finish, stop it, or "
                           "choose another --out folder") from None
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
def run_folder_lock(folder):
    """Hold `folder/.lock` for the block (no-op if this process holds it already, e.g. a pipeline worker)."""
    taken = lock_run_folder(folder)
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
