"""Files written atomically and JSON read back: the lowest layer, used by every module that writes.

A write goes to a temporary file in the same folder, is fsynced, then renamed over the target, so a
killed process leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import ResultsError


def describe_os_error(path, err: OSError) -> str:
    """What went wrong writing `path` and what to do, in words."""
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
        raise ResultsError(describe_os_error(folder, err)) from err
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
        raise ResultsError(describe_os_error(path, err)) from err


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(obj, path) -> Path:
    """torch.save through a temporary file and a rename (a kill leaves the old file intact)."""
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


def write_block(path, text: str, name: str) -> None:
    """Replace what lies between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in the Markdown file
    `path` with `text` (how commands write their measured tables into docs/)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path = Path(path)
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise ResultsError(f"{path}: no {begin} ... {end} block to replace; add the two markers where the text goes")
    head, rest = doc.split(begin, 1)
    atomic_write_text(path, f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def read_json(path, lenient: bool = False):
    """The content of a JSON file, or None when it does not exist (lenient: also when it cannot be read or
    is not JSON; otherwise those raise)."""
    path = Path(path)
    if not lenient:
        return json.loads(path.read_text()) if path.exists() else None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON-lines file (blank lines skipped)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "describe_os_error",
           "ensure_writable", "read_json", "read_jsonl"]
