"""The prepared GPU check: `python -m cggmlib.bench.gpu_check [--out DIR] [--budget-s 480]`.

On one CUDA GPU, in one process and within a time budget, it
1. checks that a CGGM step makes no host-device synchronisation
   (`torch.cuda.set_sync_debug_mode("error")` around the steps; bf16 and float32, overlap on and off);
2. trains each paper model for `--overlap-steps` (50) CGGM steps with and without the classifiers'
   overlap and compares every parameter (`overlap_check`; the overlap stays off, `overlap.VERIFIED =
   False`, until a committed report shows a pass);
3. benchmarks every paper model at the paper's sizes (cggmlib/bench/runner.py `CASES["paper"]`): joint
   training, CGGM (official with and without the side-stream overlap, guard, paper, the lighter pooled
   classifier), its classifiers alone and every baseline, in float32 and in bf16 autocast, with peak
   memory (`torch.cuda.max_memory_allocated`; `extra_mb` is the classifiers' extra memory, the
   paper's Table 8);
4. times our MOSI, IEMOCAP and Food-101 steps and their parts against the transcription of the
   released step (`cggm bench --suite released`), ours in float32 and in bf16 autocast;
5. times channels-last memory format on the BraTS DeepLab;
6. trains each model for a few steps with `amp="auto"` through `cggmlib.train` and checks the losses.
Every measurement is one `key=value` line (as `cggm bench`), also written to DIR/gpu_check.jsonl and
DIR/gpu_check.md (DIR defaults to $OUT when set, else results/gpu_check). Sections that do not fit in
the budget are skipped and say so. The report, STEM.json and STEM.md (`--report STEM`, default
docs/gpu_check), holds every row and whether the overlap is verified.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch

from ..config import Config
from ..files import atomic_write_text
from ..models import build_model
from ..modulation import make_strategy
from ..train import train
from . import runner as B
from . import suites as S
from .report import line, markdown
from .runner import CASES


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def sync_check(device) -> list[dict]:
    """A few CGGM steps under set_sync_debug_mode('error'): any host-device sync raises."""
    rows = []
    case = B.CASES["reduced"]["mosi"]
    for amp in ("off", "bf16"):
        for overlap in (False, True):
            runner = B.Runner(case, "cggm", device, {"overlap": overlap}, amp=amp)
            runner.trace.flush_every = 10**9  # the trace's batched transfer is the one allowed read
            runner.step()  # first step: lazy initialisations (optimizer state, cuBLAS handles)
            torch.cuda.synchronize(device)
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(3):
                    runner.step()
                result = "none"
            except RuntimeError as err:
                result = str(err).splitlines()[0][:160]
            finally:
                torch.cuda.set_sync_debug_mode(0)
            rows.append({"suite": "sync", "model": "mosi", "device": str(device), "strategy": "cggm",
                         "variant": f"official amp={amp} overlap={overlap}", "host_syncs": result})
    return rows


def _train_params(case, device, overlap: bool, steps: int, batches: list) -> dict:
    """Parameters of the model and CGGM's classifiers after `steps` seeded steps (overlap on or off)."""
    runner = B.Runner(case, "cggm", device, {"overlap": overlap}, batch=batches[0])
    torch.manual_seed(1)  # dropout masks: the same stream in every compared run
    for k in range(steps):
        runner.step(batches[k % len(batches)])
    B.sync(device)
    named = {f"model.{n}": p for n, p in runner.model.named_parameters()}
    named |= {f"classifiers.{n}": p for n, p in runner.strategy.classifiers.named_parameters()}
    return {n: p.detach().to("cpu", copy=True) for n, p in named.items()}


def _max_diff(a: dict, b: dict) -> float:
    return max((x.double() - b[n].double()).abs().max().item() for n, x in a.items())


def overlap_check(device, models, steps: int = 50) -> list[dict]:
    """Parameters after `steps` CGGM steps with and without the classifiers' overlap, per paper model.

    pass: bitwise identical, or no further apart than two runs without overlap (the device's own
    run-to-run nondeterminism, e.g. atomic adds in cuDNN backward kernels); fail otherwise. Until this
    passes on a GPU for every paper model, `cggmlib.modulation.overlap.VERIFIED` stays False.
    """
    import contextlib

    rows = []
    det = torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True) \
        if device.type == "cuda" else contextlib.nullcontext()
    for name in models:
        case = B.CASES["paper"][name]
        started = time.perf_counter()
        batches = [B.make_batch(case, device, seed=k) for k in range(4)]
        with det:
            off = _train_params(case, device, False, steps, batches)
            again = _train_params(case, device, False, steps, batches)
            on = _train_params(case, device, True, steps, batches)
        if off.keys() != on.keys():
            raise RuntimeError(f"{name}: overlap changed the set of parameters")
        diff, noise = _max_diff(off, on), _max_diff(off, again)
        identical = all(torch.equal(x, on[n]) for n, x in off.items())
        verdict = "pass" if identical or diff <= noise else "fail"
        rows.append({"suite": "overlap", "model": name, "device": str(device), "strategy": "cggm",
                     "variant": "official overlap on vs off", "steps": steps, "batch_size": case.batch_size,
                     "tensors": len(off), "identical": identical, "max_abs_diff": diff,
                     "max_abs_diff_off_vs_off": noise, "verdict": verdict,
                     "seconds": round(time.perf_counter() - started, 1)})
    return rows


def channels_last(device, reps: int) -> list[dict]:
    """BraTS DeepLab step in channels-last vs the default layout (joint and CGGM)."""
    case = B.CASES["paper"]["brats2021"]
    rows = []
    for strategy in ("joint", "cggm"):
        base = B.Runner(case, strategy, device)
        last = B.Runner(case, strategy, device, batch=base.batch)
        last.model.to(memory_format=torch.channels_last)
        last.batch = type(base.batch)({m: x.contiguous(memory_format=torch.channels_last)
                                       for m, x in base.batch.inputs.items()}, base.batch.target)
        times = B.time_steps({"joint": base, "arm": last}, reps, device=device)
        row = S.result_row("brats2021", "paper", device, case.batch_size, strategy, "channels_last vs default", times)
        rows.append({"suite": "channels_last"} | row)
    return rows


def train_with_amp(device, models) -> list[dict]:
    """A few steps of `cggmlib.train` per paper model with amp="auto" (bf16 or fp16 + GradScaler)."""
    rows = []
    for name in models:
        case = B.CASES["paper"][name]
        batch = B.make_batch(case, "cpu", batch_size=min(case.batch_size, 16))
        data = B.make_data(case, batch)
        data.train.batch_size = max(2, len(batch) // 4)  # four steps
        torch.manual_seed(0)
        model = build_model(case.dataset, data, case.preset, **case.model_kwargs)
        cfg = Config(dataset=case.dataset, strategy="cggm", preset=case.preset, epochs=1, amp="auto",
                        device=str(device), scheduler="none")
        started = time.perf_counter()
        result = train(model, make_strategy("cggm", **cfg.strategy_kwargs), data, cfg, progress=False)
        losses = result.trace.steps()["loss"].tolist()
        rows.append({"suite": "amp_train", "model": name, "device": str(device), "strategy": "cggm",
                     "variant": "amp=auto" + (f" ({'bf16' if torch.cuda.is_bf16_supported() else 'fp16'})"
                                              if device.type == "cuda" else " (off on CPU)"),
                     "steps": len(losses), "finite": all(map(lambda v: v == v and abs(v) < float("inf"), losses)),
                     "seconds": time.perf_counter() - started})
    return rows


def main(argv=None) -> int:
    """`python -m cggmlib.bench.gpu_check` (see the module docstring)."""
    saved = B.CASES["paper"]
    try:
        return _main(argv)
    finally:  # --cpu-dry-run swaps the smoke sizes in for this call only (tests call main in-process)
        B.CASES["paper"] = saved


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cggmlib.bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "results/gpu_check"))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=480, help="stop starting new sections after this many seconds")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--strategies", nargs="+", default=None, help="default: every registered strategy")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="run every section on the CPU with the smoke sizes (checks this script, measures nothing)")
    p.add_argument("--report", default=None, help="path stem of the JSON and Markdown report (default docs/gpu_check "
                   "on a GPU, DIR/gpu_check_report in a CPU dry run): STEM.json and STEM.md")
    p.add_argument("--overlap-steps", type=int, default=50,
                   help="CGGM steps compared with and without overlap per model (>= 50 to verify the overlap)")
    p.add_argument("--sections", nargs="+", default=None, metavar="NAME",
                   help="only the sections whose name starts with one of these (e.g. overlap sync)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.cpu_dry_run:
        B.CASES["paper"] = B.CASES["smoke"]
        torch.set_num_threads(1)
        device, header = torch.device("cpu"), "CPU dry run with the smoke sizes: not a measurement"
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; nothing to check (--cpu-dry-run checks the script itself)")
        return 1
    else:
        device = torch.device("cuda")
        props = torch.cuda.get_device_properties(device)
        header = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
                  f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    budget, out = Budget(args.budget_s), Path(args.out)
    print(f"# {header}", flush=True)
    rows: list[dict] = []

    def emit(new_rows):
        for row in new_rows:
            rows.append(row)
            print(line(row), flush=True)
            atomic_write_text(out / "gpu_check.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    models = args.models or list(B.CASES["paper"])
    baselines = [n for n in (args.strategies or S.STRATEGIES) if n not in ("joint", "cggm")]
    # most important first: the budget may end the run before the baselines
    sections = [] if args.cpu_dry_run else [("sync", lambda: sync_check(device))]
    sections += [(f"overlap {m}", lambda m=m: overlap_check(device, [m], args.overlap_steps)) for m in models]
    sections += [(f"cggm {m}", lambda m=m: _strategies(m, device, args, "off", ["cggm"])) for m in models]
    sections += [(f"cggm {m} bf16", lambda m=m: _strategies(m, device, args, "bf16")) for m in models]
    sections += [(f"released {m} {amp}", lambda m=m, amp=amp: _released(m, device, args, amp))
                 for m in models if m in ("mosi", "iemocap", "food101") for amp in ("off", "bf16")]
    if "brats2021" in models:
        sections.append(("channels_last", lambda: channels_last(device, args.reps)))
    sections.append(("amp_train", lambda: train_with_amp(device, models)))
    sections += [(f"baselines {m}", lambda m=m: _strategies(m, device, args, "off", baselines)) for m in models]
    if args.sections:
        sections = [(n, f) for n, f in sections if any(n.startswith(k) for k in args.sections)]
    for name, section in sections:
        if budget.left() <= 0:
            emit([{"suite": "skipped", "variant": name, "error": "time budget spent"}])
            continue
        try:
            emit(list(section()))
        except Exception as err:  # report and go on: one section must not hide the others
            emit([{"suite": "failed", "variant": name, "error": f"{type(err).__name__}: {err}"[:300]}])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    atomic_write_text(out / "gpu_check.md", f"{header}\n\n" + markdown(rows) + _extra_tables(rows))
    stem = Path(args.report or (out / "gpu_check_report" if args.cpu_dry_run else "docs/gpu_check"))
    write_report(stem, header, rows, device, args.overlap_steps, models, cpu_dry_run=args.cpu_dry_run)
    print(f"# {len(rows)} rows in {budget.seconds - budget.left():.0f} s; {out / 'gpu_check.md'}", flush=True)
    return 0


def overlap_verdict(rows, models, steps: int, device) -> dict:
    """Whether the rows verify the overlap: a pass on a CUDA GPU for every paper model over >= 50 steps."""
    found = {r["model"]: r for r in rows if r.get("suite") == "overlap"}
    missing = sorted(set(CASES["paper"]) - set(found))
    failed = sorted(m for m, r in found.items() if r["verdict"] != "pass")
    why = []
    if device.type != "cuda":
        why.append("not run on a CUDA GPU")
    if steps < 50:
        why.append(f"{steps} steps (< 50)")
    if missing:
        why.append(f"paper models not checked: {missing}")
    if failed:
        why.append(f"failed: {failed}")
    return {"verifies_overlap": not why, "why_not": why, "models": sorted(found), "steps": steps}


def write_report(stem, header: str, rows: list, device, steps: int, models, cpu_dry_run: bool = False) -> dict:
    """STEM.json (every row and the overlap verdict) and STEM.md (the same, readable)."""
    verdict = overlap_verdict(rows, models, steps, device)
    report = {"header": header, "device": str(device), "cpu_dry_run": cpu_dry_run, "torch": torch.__version__,
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overlap": verdict, "rows": rows}
    stem = Path(stem)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(report, indent=1, default=str) + "\n")
    lines = [f"# GPU check: {header}", "", "Written by `python -m cggmlib.bench.gpu_check`; do not edit by hand.", "",
             "## Overlap of CGGM's classifiers with the backward pass", "",
             "| model | steps | batch | identical | max abs diff on vs off | off vs off | verdict |",
             "|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        if r.get("suite") == "overlap":
            lines.append(f"| {r['model']} | {r['steps']} | {r['batch_size']} | {r['identical']} | {r['max_abs_diff']:.3g} "
                         f"| {r['max_abs_diff_off_vs_off']:.3g} | {r['verdict']} |")
    lines += ["", ("**The overlap is verified**: set `cggmlib.modulation.overlap.VERIFIED = True` in the commit that "
                   "adds this report." if verdict["verifies_overlap"] else
                   "**The overlap is not verified** (" + "; ".join(verdict["why_not"]) + "): "
                   "`cggmlib.modulation.overlap.VERIFIED` stays False and CGGM runs without overlap."),
              "", "## Every measurement", "", markdown(rows) + _extra_tables(rows)]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines))
    return report


def _strategies(model, device, args, amp, names=None):
    """The `strategies` suite of cggm bench for one model at paper size (float32), or CGGM in bf16."""
    if amp == "off":
        for r in S.strategies("paper", device, [model], names, args.reps, True):
            if names == ["cggm"] or r["strategy"] != "joint":  # the no-grad-norm row once per model
                yield {"suite": "strategies"} | r
        return
    case = B.CASES["paper"][model]
    joint = B.Runner(case, "joint", device, amp=amp)
    for variant, options in (("official", {"overlap": False}), ("official/overlap", {"overlap": True})):
        cggm = B.Runner(case, "cggm", device, options, amp=amp, batch=joint.batch)
        runners = {"joint": joint, "arm": cggm, "heads": B.HeadsRunner(cggm)}
        times, peaks = S.measure(runners, args.reps, device, True)
        yield {"suite": "strategies_bf16"} | S.result_row(model, "paper", device, case.batch_size, "cggm", variant, times,
                                                     heads_key="heads", peaks=peaks)


def _released(model, device, args, amp):
    """The `released` suite of cggm bench for one model at paper size, ours in float32 or bf16."""
    for r in S.released("paper", device, [model], args.reps, amp=amp):
        yield {"suite": "released"} | r


def _extra_tables(rows) -> str:
    out = []
    for r in rows:
        if r.get("suite") in ("sync", "amp_train", "skipped", "failed"):
            out.append("- " + line(r))
    for r in rows:
        if r.get("suite") == "strategies_bf16" and "error" not in r:
            out.append(f"- bf16 {r['model']} {r['variant']}: step {r['step_ms']:.1f} ms, vs_joint {r['vs_joint']:.2f}, "
                       f"overhead_vs_heads {r['overhead_vs_heads']:.2f}, extra {r.get('extra_mb', 0):.1f} MB")
    return ("\n" + "\n".join(out) + "\n") if out else ""


if __name__ == "__main__":
    raise SystemExit(main())
