"""`cggm bench`: step time and memory of joint training, CGGM and every baseline (also `make bench`).

One line per measurement on stdout, e.g.
    model=mosi size=reduced device=cpu ... strategy=cggm variant=official step_ms=1249.3 vs_joint=1.19 ...
and, under --out (default results/bench), `bench.jsonl` (the rows) and `bench.md` (the tables the
README shows). What is measured and how: cggmlib/bench/runner.py; the suites: cggmlib/bench/suites.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import ConfigError

DEFAULT_SUITES = ("strategies", "modalities", "batch")


def add_arguments(p) -> None:
    p.add_argument("--suite", nargs="+", default=list(DEFAULT_SUITES),
                   help="strategies | modalities | batch | food_cache | light | released (default: the first three)")
    p.add_argument("--size", default=None, help="reduced (CPU default) | paper (GPU default; always the default "
                                                "of the released suite) | smoke")
    p.add_argument("--models", nargs="+", default=None, help="mosi iemocap food101 brats2021 (default: all)")
    p.add_argument("--strategies", nargs="+", default=None, help="registry names (default: all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per runner (medians are reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--overlap", action="store_true", help="also time CGGM with overlap=True (on by default on CUDA)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--data-root", default="data", help="dataset files for the `light` suite (stand-ins are fine)")
    p.add_argument("--out", default="results/bench", help="folder for bench.jsonl and bench.md")
    p.add_argument("--docs", nargs=2, metavar=("MD", "BLOCK"), default=None,
                   help="also write the tables, with the command and the machine's load, between "
                        "<!-- BLOCK:begin --> and <!-- BLOCK:end --> in MD (how docs/performance.md gets its numbers)")


def run(args) -> int:
    import torch

    from ..bench import suites as S
    from ..bench.report import line, machine_load, markdown
    from ..config import resolve_device
    from ..files import atomic_write_text

    unknown = sorted(set(args.suite) - set(S.SUITES))
    if unknown:
        raise ConfigError(f"unknown suite(s) {unknown}; choose from {sorted(S.SUITES)}")
    if args.reps < 1:
        raise ConfigError(f"--reps must be >= 1, got {args.reps}")
    torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    size = args.size or ("paper" if device.type == "cuda" else "reduced")
    if size not in S.CASES:
        raise ConfigError(f"--size must be one of {sorted(S.CASES)}, got {size!r}")
    bad = sorted(set(args.models or []) - set(S.CASES[size]))
    if bad:
        raise ConfigError(f"unknown model(s) {bad}; choose from {sorted(S.CASES[size])}")
    bad = sorted(set(args.models or []) - {"mosi", "iemocap", "food101"}) if "released" in args.suite else []
    if bad:
        raise ConfigError(f"the released suite times the token models mosi, iemocap and food101; "
                          f"drop {bad} from --models")
    rows, out = [], Path(args.out)
    started = time.perf_counter()
    for suite in args.suite:
        if suite == "strategies":
            gen = S.strategies(size, device, args.models, args.strategies, args.reps, not args.no_memory,
                               True if args.overlap else None)
        elif suite == "released":
            gen = S.released(args.size or "paper", device, args.models, args.reps)
        elif suite == "batch":
            gen = S.batch_sizes(device, reps=args.reps, size=size)
        else:
            gen = S.SUITES[suite](device, reps=args.reps) if suite not in ("food_cache", "light") else \
                S.food_cache(device) if suite == "food_cache" else S.light_accuracy(device, data_root=args.data_root)
        for row in gen:
            row = {"suite": suite} | row
            rows.append(row)
            print(line(row), flush=True)
            atomic_write_text(out / "bench.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    tables = markdown(rows, load=machine_load())
    atomic_write_text(out / "bench.md", tables)
    if args.docs:
        from ..files import write_block

        command = " ".join(["cggm bench --suite", *args.suite, *(["--size", args.size] if args.size else []),
                            *(["--models", *args.models] if args.models else []),
                            *(["--strategies", *args.strategies] if args.strategies else []),
                            f"--reps {args.reps} --threads {args.threads}"])
        text = tables.replace("# cggm bench\n\n", "", 1)
        write_block(args.docs[0], f"*Written by `{command}` ({time.strftime('%Y-%m-%d')}).*\n\n{text.strip()}",
                    args.docs[1])
    print(f"# {len(rows)} rows in {time.perf_counter() - started:.0f} s; tables in {out / 'bench.md'}")
    return 0
