"""What the data checks cost: write each stand-in (default sizes) to a temporary folder and time it.

    python -m cggmlib.data.check_cost [--dataset NAME ...]

One line per dataset, e.g. `dataset=food101 files=... write_s=... doctor_s=... doctor_full_s=...
cache_key_s=...`: the atomic stand-in write, `cggm doctor` (headers of every file), `cggm doctor --full`
(every file decoded), and computing the key that decides whether a cache is stale (Food101: the digest
of every image, `food101_features.image_digests`; BraTS: `brats_cache.stamp` of every case). Measured
after one warm-up doctor run, so library imports are not counted. docs/data.md quotes these numbers.
"""
from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from pathlib import Path


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cache_key(name: str, folder: Path):
    if name == "food101":
        import json

        from .food101_features import image_digests, image_path

        paths = [image_path(folder, r["img_path"]) for split in ("train", "test")
                 for r in json.loads((folder / f"{split}.json").read_text())]
        return lambda: image_digests(paths, folder)
    if name == "brats2021":
        from .brats_cache import case_files, find_cases, stamp

        return lambda: [stamp(case_files(c)) for c in find_cases(folder)]
    return None


def measure(name: str, root: Path) -> dict:
    from . import DATASETS
    from .standins import write_standin

    module = importlib.import_module(f".{DATASETS[name]}", __package__)
    write_s = _seconds(lambda: write_standin(name, root))
    folder = root / name
    files = [p for p in folder.rglob("*") if p.is_file()]
    module.check(folder, full=True)  # warm-up: imports (MONAI, PIL, h5py) are not what we measure
    out = {"dataset": name, "files": len(files), "mib": round(sum(p.stat().st_size for p in files) / 2**20, 1),
           "write_s": round(write_s, 2), "doctor_s": round(_seconds(lambda: module.check(folder)), 2),
           "doctor_full_s": round(_seconds(lambda: module.check(folder, full=True)), 2)}
    key = _cache_key(name, folder)
    if key is not None:
        out["cache_key_s"] = round(_seconds(key), 3)
    return out


def main(argv=None) -> None:
    from .standins import available

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", action="append", default=None, help="stand-in to measure (default: all)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.dataset or available():
            print(" ".join(f"{k}={v}" for k, v in measure(name, Path(tmp)).items()), flush=True)


if __name__ == "__main__":
    main()
