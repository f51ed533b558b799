"""`cggm compare`: every strategy on the same seeds, with mean ± std and the paired difference to joint."""
from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--datasets", nargs="+", default=["synthetic", "mfeat"])
    p.add_argument("--strategies", nargs="+", default=["all"], help="registry names, or all (default)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--preset", default="smoke")
    p.add_argument("--data-root", default="data")
    p.add_argument("--results", default="results/compare", help="run folders and the tables land here")
    p.add_argument("--study", choices=["imbalance"], default=None,
                   help="imbalance: instead of the fused-metric table, each modality's held-out utilisation "
                        "(linear probe on the frozen encoder) against the encoder trained alone, on mfeat and "
                        "synthetic setting=imbalanced (cggmlib/repro/study.py; --datasets must be among those)")


def run(args) -> int:
    from ..analysis.compare import compare, to_markdown
    from ..files import atomic_write_text

    if args.study == "imbalance":
        from ..repro import study

        datasets = list(study.DATASETS) if args.datasets == ["synthetic", "mfeat"] else args.datasets
        found = study.runs(datasets, args.seeds, args.strategies, args.epochs, args.results, args.data_root, args.preset)
        table = study.write(found, args.results)
        print(study.describe_gaps(table))
        print(f"written: {Path(args.results) / 'imbalance_study'}.{{csv,md,tex,png,pdf}}")
        return 0

    frame = compare(args.datasets, args.seeds, args.strategies, args.epochs, args.results, args.data_root,
                    args.preset)
    out = Path(args.results)
    atomic_write_text(out / "compare.csv", frame.to_csv(index=False))
    text = to_markdown(frame)
    atomic_write_text(out / "compare.md", text)
    print(text)
    print(f"written: {out / 'compare.csv'}, {out / 'compare.md'}")
    return 0
