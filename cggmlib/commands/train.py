"""`cggm train`: one run → config.json, metrics.json, trace.jsonl, run_card.json, checkpoints.

Strategy options are given as flags named after the strategy's fields, e.g.
`cggm train --dataset synthetic --strategy cggm --rho 1.2 --lam 0.1 --variant paper --guard yes`; each value is
typed by the field it sets (cggmlib/options.py), so `--guard no` is False and a misspelt flag is an error.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError

ACCEPTS_EXTRA = True  # strategy options arrive as --<field> VALUE


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True, help="synthetic | mfeat | mosi | iemocap | food101 | brats2021")
    p.add_argument("--strategy", default="cggm", help="a registry name, e.g. joint, cggm (default), ogm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--preset", default="smoke", help="smoke (CPU, small) | paper (Table 7)")
    p.add_argument("--data-root", default="data", help="folder holding <dataset>/ (default ./data)")
    p.add_argument("--out", default=None, help="results folder (default results/<preset>/<dataset>/<strategy>/seed<k>)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="off", help="off | auto | bf16 | fp16")
    p.add_argument("--nonfinite", default="raise", help="raise | skip")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out (an error if there is none)")
    p.add_argument("--overwrite", action="store_true", help="--out holds a run of another configuration: move it "
                   "aside to <parent>/.superseded/ and train (without this flag: refuse)")
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. fold=3 (repeatable)")
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="model size or option override, e.g. text_projection=own")
    p.add_argument("--task-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, e.g. smooth_numerator=true (BraTS soft Dice; docs/methods.md)")
    p.add_argument("--lr-warmup", default="linspace",
                   help="linspace (released: base rate at the last warm-up step) | exclusive (one step later)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _pairs(items: list[str], what: str) -> dict:
    """['fold=3'] -> {'fold': '3'}: the text is typed by cg.Config against the option's declared type."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} must look like KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def strategy_options(strategy: str, extra: list[str]) -> dict:
    """Turn ['--rho', '1.2', '--guard', 'no'] into {'rho': '1.2', 'guard': 'no'}; cg.Config types them."""
    from ..modulation import STRATEGIES, strategy_class
    from ..options import unknown_message

    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose from {sorted(STRATEGIES)}")
    flags = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(strategy_class(strategy))}
    out, i = {}, 0
    while i < len(extra):
        flag = extra[i]
        name = flag.split("=", 1)[0]
        if not flag.startswith("--") or name.replace("_", "-") not in flags:
            raise ConfigError(unknown_message(name, flags, f"option of strategy {strategy!r}:"))
        key = name[2:].replace("-", "_")
        if "=" in flag:
            out[key], i = flag.split("=", 1)[1], i + 1
        elif i + 1 < len(extra):
            out[key], i = extra[i + 1], i + 2
        else:
            raise ConfigError(f"option {flag} needs a value")
    return out


def run(args) -> int:
    from ..config import Config
    from ..experiment import run_experiment
    from ..runs.folder import run_dir
    from ..training.distributed import is_main_process

    cfg = Config(dataset=args.dataset, strategy=args.strategy, seed=args.seed, epochs=args.epochs,
                    preset=args.preset, data_root=args.data_root, batch_size=args.batch_size, lr=args.lr,
                    device=args.device, amp=args.amp, nonfinite=args.nonfinite,
                    checkpoint_every=args.checkpoint_every,
                    strategy_kwargs=strategy_options(args.strategy, args.extra),
                    data_kwargs=_pairs(args.data_opt, "--data-opt"), model_kwargs=_pairs(args.model_opt, "--model-opt"),
                    task_kwargs=_pairs(args.task_opt, "--task-opt"), lr_warmup=args.lr_warmup)
    out = Path(args.out) if args.out else run_dir("results", cfg.preset, cfg)
    result = run_experiment(cfg, out_dir=out, resume=args.resume, overwrite=args.overwrite,
                               progress=not args.quiet)
    shown = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if is_main_process():
        print(json.dumps({"out": str(out), **shown}, indent=1))
    return 0
