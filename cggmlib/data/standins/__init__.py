"""Stand-ins: small synthetic datasets written in *exactly* the published on-disk format of a paper dataset.

`cggm make-standin NAME --out DATA_ROOT` (or `write_standin(NAME, DATA_ROOT)`) writes
`DATA_ROOT/<NAME>/` so that the real loader reads it through its real code path. One modality is
informative and the others weaker, so modality imbalance is visible in seconds on a CPU.

Convention shared by every writer and loader: a stand-in folder holds the JSON file `MARKER`
(`STANDIN.json`) beside the data. Loaders set `Data.standin = is_standin(folder)`; anything computed
from such data is labelled stand-in. Writers call `mark(...)` last, so a half-written folder is
never marked; `write_standin` adds the marker if a writer did not.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from ...errors import ConfigError, DataError

#: dataset name -> module inside cggmlib.data.standins defining `write(path, seed=0, **size) -> Path`
STANDINS: dict[str, str] = {"mosi": "mosi", "iemocap": "iemocap", "food101": "food101", "brats2021": "brats"}

#: file name of the stand-in marker, written inside DATA_ROOT/<name>/
MARKER = "STANDIN.json"


def is_standin(folder) -> bool:
    """True when `folder` (a dataset folder, or a file inside one) carries the stand-in marker."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    return (folder / MARKER).is_file()


def mark(folder, dataset: str, seed: int, size: dict | None = None, writer: str | None = None) -> Path:
    """Write `folder/MARKER` saying the files are a synthetic stand-in (atomic; call it last)."""
    from ...runs import atomic_write_json

    return atomic_write_json(Path(folder) / MARKER, {
        "dataset": dataset, "standin": True, "seed": int(seed), "size": dict(size or {}),
        "writer": writer or f"{__name__}.{STANDINS.get(dataset, dataset)}",
        "note": "synthetic stand-in written by `cggm make-standin` in the real on-disk format; "
                "NOT the real dataset: every number computed from it is a stand-in number"})


def available() -> list[str]:
    """Names whose writer module is installed (the registry may list writers not written yet)."""
    return [n for n, m in STANDINS.items() if importlib.util.find_spec(f"{__name__}.{m}") is not None]


def write_standin(name: str, data_root, seed: int = 0, overwrite: bool = False, **size) -> Path:
    """Write the stand-in of dataset `name` into `data_root/<name>/` and return that folder.

    Refuses to write into a non-empty folder that is not itself a stand-in (it may hold the real
    data); an existing stand-in is deleted and rewritten only with `overwrite=True`.
    """
    if name not in STANDINS:
        raise ConfigError(f"no stand-in for dataset {name!r}; choose from {sorted(STANDINS)}")
    try:
        module = importlib.import_module(f".{STANDINS[name]}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{STANDINS[name]}":
            raise
        raise ConfigError(f"the stand-in writer for {name!r} is not installed in this version; "
                          f"available: {available()}") from None
    params = inspect.signature(module.write).parameters
    accepted = [k for k in params if k not in ("path", "seed")]
    unknown = sorted(set(size) - set(accepted))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"stand-in {name!r} has no size option(s) {unknown}; its options are {accepted}")
    folder = Path(data_root) / name
    if folder.is_dir() and any(folder.iterdir()):
        if not is_standin(folder):
            raise DataError(f"{folder} already holds files that are not a stand-in (real data?); "
                            "refusing to write over them", path=folder, expected="an empty or absent folder")
        if not overwrite:
            raise DataError(f"{folder} already holds a stand-in; pass overwrite=True (CLI: --force) to rewrite it",
                            path=folder)
        shutil.rmtree(folder)  # a stand-in only: files of the old size must not linger
    out = Path(module.write(folder, seed=seed, **size))
    if not is_standin(out):
        mark(out, name, seed, size)
    return out


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it over `path` (h5py needs a filename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_npy(path, array) -> Path:
    """np.save through a temporary file and a rename."""
    import numpy as np

    from ...runs import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def read_marker(folder) -> dict:
    """The marker's content ({} when absent or unreadable)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
