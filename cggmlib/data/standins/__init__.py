"""Stand-ins: small synthetic datasets written in *exactly* the published on-disk format of a paper dataset.

`cggm make-standin NAME --out DATA_ROOT` (or `write_standin(NAME, DATA_ROOT)`) writes
`DATA_ROOT/<NAME>/` so that the real loader reads it through its real code path. One modality is
informative and the others weaker, so modality imbalance is visible in seconds on a CPU.

Convention shared by every writer and loader: a stand-in folder holds the JSON file `MARKER`
(`STANDIN.json`) beside the data. Loaders set `Data.standin = is_standin(folder)`; anything computed
from such data is labelled stand-in. Writers call `mark(...)` last, and `write_standin` runs them in a
temporary sibling folder that it renames into place only when complete, so a kill or a full disk
never leaves a half-written DATA_ROOT/<name>/ (see `write_standin` for the recovery rules).
"""
from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import io
import json
import os
import shutil
import sys
import tempfile
import time
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
    from ...files import atomic_write_json

    return atomic_write_json(Path(folder) / MARKER, {
        "dataset": dataset, "standin": True, "seed": int(seed), "size": dict(size or {}),
        "writer": writer or f"{__name__}.{STANDINS.get(dataset, dataset)}",
        "note": "synthetic stand-in written by `cggm make-standin` in the real on-disk format; "
                "NOT the real dataset: every number computed from it is a stand-in number"})


def available() -> list[str]:
    """Names whose writer module is installed (the registry may list writers not written yet)."""
    return [n for n, m in STANDINS.items() if importlib.util.find_spec(f"{__name__}.{m}") is not None]


PARTIAL = ".{name}.partial-"
"""prefix of the temporary sibling folder a stand-in is written into (DATA_ROOT/.<name>.partial-<pid>-*)"""
ASIDE = "{name}.replaced-"
"""prefix of a folder moved aside by `--force` because it looked like a failed stand-in without its marker"""


def write_standin(name: str, data_root, seed: int = 0, overwrite: bool = False, reuse: bool = False,
                  **size) -> Path:
    """Write the stand-in of dataset `name` into `data_root/<name>/` and return that folder.

    The writer fills a temporary sibling folder `data_root/.<name>.partial-<pid>-*` and renames it into
    place once complete and marked, so a kill or a full disk never leaves a half-written `<name>/`.
    One writer per dataset at a time: a second one waits for the first (a file lock), then
    - `reuse=True` (the data-preparation step) takes the stand-in the first one wrote;
    - otherwise an existing stand-in is replaced only with `overwrite=True` (CLI: --force).
    Partial folders of killed writers are removed first. A folder without the marker is never deleted
    (see `folder_state`): one holding nothing but empty folders and writer temporaries is replaced; one
    whose files all sit where this writer puts them, beside a writer temporary (a stand-in killed
    mid-write by an earlier version), is moved aside to `data_root/<name>.replaced-<time>/` with
    `overwrite=True`; anything else (real data?) is refused, also with `overwrite=True`.
    """
    if name not in STANDINS:
        raise ConfigError(f"no stand-in for dataset {name!r}; choose from {sorted(STANDINS)}")
    module = _writer(name)
    params = inspect.signature(module.write).parameters
    accepted = [k for k in params if k not in ("path", "seed")]
    unknown = sorted(set(size) - set(accepted))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"stand-in {name!r} has no size option(s) {unknown}; its options are {accepted}")
    from ..base import disk_errors, writer_lock

    root = Path(data_root)
    folder = root / name
    with disk_errors(root), writer_lock(root / f".{name}.lock", f"the {name} stand-in in {root}"):
        for stale in [*root.glob(PARTIAL.format(name=name) + "*"), *root.glob(f".{name}.old-*")]:
            _note(f"removing {stale}, left by a stand-in writer that was killed or ran out of disk")
            shutil.rmtree(stale, ignore_errors=True)
        state = folder_state(folder, name)
        if state == "standin" and reuse:
            check_size(name, folder, size)
            return folder
        if state == "standin" and not overwrite:
            raise DataError(f"{folder} already holds a stand-in; pass overwrite=True (CLI: --force) to rewrite it",
                            path=folder)
        if state == "foreign":
            raise DataError(f"{folder} already holds files that are not a stand-in (real data?); refusing to write "
                            "over them, also with --force", path=folder,
                            expected="an empty or absent folder: move the files elsewhere, or pick another --out")
        if state == "failed" and not overwrite:
            raise DataError(f"{folder} holds files in the stand-in's layout but no {MARKER}: a stand-in whose "
                            "writer was killed before it finished, or data of your own", path=folder,
                            expected=f"--force (it is moved aside to {root / ASIDE.format(name=name)}<time>/, "
                                     "not deleted), or move it away yourself")
        tmp = Path(tempfile.mkdtemp(prefix=PARTIAL.format(name=name) + f"{os.getpid()}-", dir=root))
        try:
            out = Path(module.write(tmp, seed=seed, **size))
            if not is_standin(out):
                mark(out, name, seed, size)
            _replace(out, folder, state)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolved_size(name: str, size: dict | None) -> dict:
    """`size` completed with the writer's defaults: the stand-in's full shape, comparable across calls."""
    params = inspect.signature(_writer(name).write).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("path", "seed")
                and p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}
    return defaults | dict(size or {})


def check_size(name: str, folder, size: dict | None) -> None:
    """Refuse to reuse the stand-in in `folder` when it was written with another size than asked: a
    profile whose stand-ins are bigger (dryrun) must not train on a smaller one (smoke) without a word.
    (Its seed may differ: the shapes do not depend on it.)"""
    marker = read_marker(folder)
    had, asked = resolved_size(name, marker.get("size")), resolved_size(name, size)
    changed = {k: (had.get(k), asked.get(k)) for k in sorted(set(had) | set(asked)) if had.get(k) != asked.get(k)}
    if changed:
        listed = ", ".join(f"{k} {a!r} (asked: {b!r})" for k, (a, b) in changed.items())
        raise DataError(f"{folder} holds a {name} stand-in of another size than this run asks for: {listed}",
                        path=folder, expected=f"a stand-in of the asked size: rewrite it with `cggm make-standin {name} "
                        f"--out {Path(folder).parent} --force --size KEY=VALUE ...`, or give this profile its own "
                        "--data-root (each profile's default data root is its own)")


def _writer(name: str):
    try:
        return importlib.import_module(f".{STANDINS[name]}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{STANDINS[name]}":
            raise
        raise ConfigError(f"the stand-in writer for {name!r} is not installed in this version; "
                          f"available: {available()}") from None


def _note(text: str) -> None:
    print(f"cggmlib: {text}", file=sys.stderr, flush=True)


def _is_temporary(rel: str) -> bool:
    """A file our atomic writers create before their rename (`.<name>.<random>.tmp`)."""
    return Path(rel).name.startswith(".") and rel.endswith(".tmp")


def folder_state(folder, name: str) -> str:
    """What `folder` holds, for a stand-in writer: "absent"; "standin" (marked); "empty" (only folders and
    writer temporaries `.<file>.<random>.tmp`); "failed" (unmarked, every file where `name`'s writer puts
    one, beside a writer temporary: a writer of an earlier version killed mid-write); else "foreign"."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return "absent"
    if not folder.is_dir():
        return "foreign"
    if is_standin(folder):
        return "standin"
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()]
    kept = [f for f in files if not _is_temporary(f)]
    if not kept:
        return "empty"
    layout = getattr(_writer(name), "LAYOUT", ())
    in_layout = all(any(fnmatch.fnmatchcase(f, pat) for pat in layout) for f in kept)
    return "failed" if in_layout and len(kept) < len(files) else "foreign"


def _replace(new: Path, folder: Path, state: str) -> None:
    """Rename the finished `new` folder to `folder`, moving what stood there out of the way first."""
    if state == "failed":
        aside = folder.with_name(ASIDE.format(name=folder.name) + time.strftime("%Y%m%d-%H%M%S"))
        os.replace(folder, aside)
        _note(f"moved the unmarked, incomplete {folder} aside to {aside} (delete it once checked)")
    elif state in ("standin", "empty"):
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        if state == "empty":
            _note(f"replaced {folder}: it held only empty folders and temporary files of a failed write")
        shutil.rmtree(old)
    os.replace(new, folder)


def save_npy(path, array) -> Path:
    """np.save through a temporary file and a rename."""
    import numpy as np

    from ...files import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def read_marker(folder) -> dict:
    """The marker's content ({} when absent or unreadable)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
