"""What the paper profile costs before it runs: `python -m cggmlib.repro.cost --write docs/cost.md`.

One row per dataset × strategy of the paper grid (single-modality rows per modality): parameters,
peak memory, milliseconds per step and steps per epoch at the real data sizes and the paper preset's
batch size, the projected GPU time of every run of the paper profile, and whether each run fits a
16 GB GPU. Every number is measured or derived here; nothing is typed in.

How each number is obtained (also printed into the Markdown):
- A step is the loop's real `train_step` (cggmlib/bench/runner.py `Runner`: model, strategy, optimizer,
  clipping, gradient-norm logging) on random inputs of the dataset's real per-sample shapes
  (bench `CASES["paper"]`; synthetic and mfeat their own sizes).
- On a CPU the step is timed at a small measurement batch b (`MEASURE_BATCH`) and scaled linearly to
  the paper batch B; memory is `live + (peak − live) · B / b`, where `live` is what persists between
  steps (weights, gradients, optimizer and strategy state, independent of the batch) and `peak − live`
  the step's own allocations (activations; cggmlib/bench/runner.py `peak_mb`), which grow with the batch.
- The projected GPU time is the CPU time divided by a factor: the GPU's sustained float32 throughput
  (`--gpu-tflops`, default 4: half the 8.1 TFLOPS peak of the 16 GB T4 Colab hands out; dense training
  kernels rarely sustain more than about half of peak) over this CPU's measured float32 matrix-multiply
  throughput on the threads used. The small transformers (MOSI, IEMOCAP) are bound by kernel launches
  rather than arithmetic on a GPU, so their projection is optimistic.
- With a CUDA GPU present every row is measured on it at the paper batch (`torch.cuda.max_memory_allocated`,
  synchronised step times) and replaces the projection.
- An epoch is steps × step time plus one forward pass over validation and test (taken as a third of
  a step per batch). G-Blending's estimation copies are added (`extra_epochs`); UMT/UME teachers
  (trained before the students) are not included: for their rows the teachers train one epoch on the
  measurement batch, only so that the student can be built.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ..bench.runner import CASES, Case, Runner, live_bytes, make_batch, median_ms, peak_mb, time_steps
from ..data.mfeat import VIEWS
from ..errors import ConfigError
from ..files import atomic_write_json, atomic_write_text
from ..presets import REGISTRY, train_kwargs
from ..tasks import Classification
from .pipeline import REPORTS, get_profile, grid

#: real training-split sizes (samples per epoch) and where they come from
TRAIN_SIZE = {
    "mosi": (1284, "MOSI standard split 1284/229/686 (cggmlib/data/mosi.py STANDARD_SIZES)"),
    "iemocap": (4425, "8 of 10 MMIN speakers of 5,531 utterances (an estimate: fold sizes vary by speaker)"),
    "food101": (61189, "67,988 UPMC train pairs less the 10 % dev split (data_cards/food101.md; before JSON filtering)"),
    "brats2021": (876, "one tumour slice per training case per epoch (official draw); 70 % of 1,251 cases"),
    "synthetic": (1800, "the generator's train split"),
    "mfeat": (1200, "60 % of 2,000 digits"),
}
#: samples of one evaluation pass (validation + test); BraTS: one tumour slice per case (official protocol)
EVAL_SIZE = {"mosi": 229 + 686, "iemocap": 1106, "food101": 6799 + 22716, "brats2021": 375,
             "synthetic": 1200, "mfeat": 800}
#: batch a CPU step is measured at (scaled linearly to the paper batch)
MEASURE_BATCH = {"mosi": 16, "iemocap": 8, "food101": 4, "brats2021": 1, "synthetic": 64, "mfeat": 64}
GPU_GB = 16
HEADROOM = 0.9
"""a run fits when its projected peak is under 90 % of the GPU's memory (CUDA context, fragmentation)"""


def cases() -> dict:
    out = dict(CASES["paper"])
    out["synthetic"] = Case("synthetic", {f"m{k}": (32,) for k in range(3)}, Classification(10), 64)
    out["mfeat"] = Case("mfeat", {v: (d,) for v, d in VIEWS.items()}, Classification(10), 64)
    return out


def rows_of_grid(profile_name: str = "paper") -> dict:
    """(dataset, row label) -> (strategy, options) for every strategy the profile trains per dataset."""
    rows = {}
    for spec in grid(get_profile(profile_name)):
        label = spec.label if spec.strategy == "unimodal" else spec.strategy
        options = {"modality": spec.strategy_kwargs["modality"]} if spec.strategy == "unimodal" else {}
        rows.setdefault((spec.dataset, label), (spec.strategy, options))
    return rows


def row_label(spec) -> str:
    return spec.label if spec.strategy == "unimodal" else spec.strategy


def cpu_gflops(threads: int, n: int = 1024, reps: int = 5) -> float:
    """Measured float32 matrix-multiply throughput of this CPU on `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def measure(dataset: str, strategy: str, options: dict, device, batch: int, reps: int) -> dict:
    """One row's measurement at `batch`: parameters, live and peak MiB, median ms per step.

    UMT and UME train their unimodal teachers in `setup`; the teachers are not part of a student's step
    (nor of this table), so here they train one epoch of the one-batch data, into a temporary cache."""
    import tempfile

    case = cases()[dataset]
    with tempfile.TemporaryDirectory(prefix="cggm-cost-teachers-") as cache:
        if strategy in ("umt", "ume"):
            options = {"teacher_epochs": 1, "teacher_dir": cache} | dict(options)
        runner = Runner(case, strategy, device, options, batch=make_batch(case, device, batch_size=batch))
    params = sum(p.numel() for p in runner.model.parameters())
    extra = getattr(runner.strategy, "classifiers", None)
    strategy_params = sum(p.numel() for p in extra.parameters()) if extra is not None else 0
    times = time_steps({"run": runner}, reps, warmup=1, device=device)["run"]
    peak = peak_mb(runner, device)
    return {"params": params, "strategy_params": strategy_params, "ms": median_ms(times),
            "live_mb": live_bytes(runner) / 2**20, "peak_mb": peak, "batch": batch}


def project(m: dict, dataset: str, factor: float, measured_on: str) -> dict:
    """Scale a measurement to the paper batch; GPU milliseconds per step and the 16 GB verdict."""
    paper = train_kwargs(dataset, "paper")
    big, scale = paper["batch_size"], paper["batch_size"] / m["batch"]
    peak = m["live_mb"] + max(m["peak_mb"] - m["live_mb"], 0.0) * scale
    ms_cpu = m["ms"] * scale
    ms_gpu = m["ms"] if measured_on == "cuda" else ms_cpu / factor
    per_sample = max(m["peak_mb"] - m["live_mb"], 0.0) / m["batch"]
    fits_batch = int((GPU_GB * 1024 * HEADROOM - m["live_mb"]) // per_sample) if per_sample else big
    return {"paper_batch": big, "peak_mb_paper_batch": peak, "ms_step_cpu": ms_cpu, "ms_step_gpu": ms_gpu,
            "steps_per_epoch": math.ceil(TRAIN_SIZE[dataset][0] / big), "epochs": paper["epochs"],
            "fits_16gb": peak < GPU_GB * 1024 * HEADROOM, "largest_batch_16gb": max(fits_batch, 0)}


def extra_epochs(spec) -> float:
    """Training beyond the loop's own epochs, as a factor: G-Blending ("copy" estimate) trains a copy per
    head (M modalities + fused) for super_epoch epochs every super_epoch epochs, (M + 1) extra epochs per
    epoch, each counted as a full epoch (an upper bound: a modality's copy trains one encoder)."""
    if spec.strategy == "gblending" and spec.strategy_kwargs.get("estimate", "copy") == "copy":
        return 1.0 + len(REGISTRY[spec.dataset].modalities) + 1
    return 1.0


def gpu_hours(ms_step: float, dataset: str, batch: int, epochs: int) -> float:
    steps = math.ceil(TRAIN_SIZE[dataset][0] / batch) + math.ceil(EVAL_SIZE[dataset] / batch) / 3
    return ms_step * steps * epochs / 3.6e6


ORDER = ("synthetic", "mfeat", "mosi", "iemocap", "food101", "brats2021")
"""cheapest first: an interrupted run still covers the small datasets (its table says how many rows)"""


def collect(datasets=None, reps: int = 2, threads: int = 1, gpu_tflops: float = 4.0, log=print,
            measure_batch: dict | None = None, on_row=None, earlier: dict | None = None) -> dict:
    """Measure every row and project the paper profile; a dict the Markdown and the JSON are written from.
    `on_row(partial_result)` is called after every row (the command rewrites its files each time).
    `earlier` (a result this function returned, e.g. read from docs/cost.json): keep its measured rows and
    its throughput factor, and measure only the rows it lacks or failed on (same device and threads)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(threads)
    rows = []
    if earlier is not None:
        if (earlier["device"], earlier["threads"]) != (device.type, threads):
            raise ConfigError(f"--complete: the earlier rows were measured on {earlier['device']} with "
                              f"{earlier['threads']} thread(s), this run would use {device.type} with {threads}; "
                              "measure every row again instead (drop --complete)")
        rows = [r for r in earlier["rows"] if "error" not in r]
        gflops, gpu_tflops, factor = earlier["cpu_gflops"], earlier["gpu_tflops"], earlier["factor"]
    else:
        gflops = cpu_gflops(threads)
        factor = 1.0 if cuda else gpu_tflops * 1000 / gflops
    batches = MEASURE_BATCH | (measure_batch or {})
    have = {(r["dataset"], r["row"]) for r in rows}
    todo = sorted(rows_of_grid().items(), key=lambda kv: (ORDER.index(kv[0][0]), kv[0][1]))
    for (dataset, label), (strategy, options) in todo:
        if datasets and dataset not in datasets or (dataset, label) in have:
            continue
        batch = train_kwargs(dataset, "paper")["batch_size"] if cuda else batches[dataset]
        started = time.perf_counter()
        try:
            m = measure(dataset, strategy, options, device, batch, reps)
            row = {"dataset": dataset, "row": label} | m | project(m, dataset, factor, device.type)
        except Exception as err:  # one row's failure (e.g. CUDA out of memory) is reported, not fatal
            row = {"dataset": dataset, "row": label, "error": f"{type(err).__name__}: {err}"[:200]}
        row["measured_on"] = device.type
        rows.append(row)
        log(f"  {dataset:9} {label:18} {row.get('ms', float('nan')):9.1f} ms at batch {batch}  "
            f"({time.perf_counter() - started:.0f} s){'  ' + row['error'] if 'error' in row else ''}")
        if cuda:
            torch.cuda.empty_cache()
        if on_row is not None:
            on_row(summarize(rows, device, threads, gflops, gpu_tflops, factor))
    return summarize(rows, device, threads, gflops, gpu_tflops, factor)


def summarize(rows, device, threads, gflops, gpu_tflops, factor) -> dict:
    """The projection of the paper profile from the measured rows."""
    by = {(r["dataset"], r["row"]): r for r in rows}
    paper = get_profile("paper")
    runs, items = [], {}
    for spec in grid(paper):
        r = by.get((spec.dataset, row_label(spec)))
        if r is None or "error" in r:
            continue
        cfg = spec.config(paper)
        hours = gpu_hours(r["ms_step_gpu"], spec.dataset, cfg.batch_size, cfg.epochs) * extra_epochs(spec)
        runs.append({"dataset": spec.dataset, "label": spec.label, "seed": spec.seed, "hours": hours,
                     "groups": sorted(spec.groups)})
    for report in REPORTS:
        for out in report.outputs or (report.name,):
            items[out] = sum(r["hours"] for r in runs if set(r["groups"]) & set(report.groups))
    return {"device": str(device), "threads": threads, "cpu_gflops": gflops, "gpu_tflops": gpu_tflops,
            "factor": factor, "rows": rows, "runs": runs, "items": items,
            "total_hours": sum(r["hours"] for r in runs), "planned_runs": len(grid(paper)),
            "datasets": sorted({r["dataset"] for r in rows})}


def markdown(result: dict) -> str:
    cuda = result["device"].startswith("cuda")
    done = {(r["dataset"], r["row"]) for r in result["rows"] if "error" not in r}
    missing = [f"{d} {row}" for d, row in sorted(rows_of_grid()) if (d, row) not in done]
    missing = missing if len(missing) <= 12 else [f"{len(missing)} rows"]
    lines = ["# What the paper profile costs", "",
             "Generated by `python -m cggmlib.repro.cost --write docs/cost.md` (do not edit by hand; rerun it, on a GPU "
             "to replace the projections with measurements).", "",
             f"Measured on **{result['device']}** with {result['threads']} thread(s); "
             + ("every time and memory below is measured on the GPU at the paper batch." if cuda else
                f"this CPU multiplies float32 matrices at {result['cpu_gflops']:.1f} GFLOP/s; the GPU is assumed to "
                f"sustain {result['gpu_tflops']:.1f} TFLOPS (half the peak of a 16 GB T4), so GPU time = CPU time / "
                f"{result['factor']:.0f}. CPU steps are timed at a small batch and scaled linearly to the paper "
                "batch; peak memory is the batch-independent state plus the step's allocations scaled with the "
                "batch (see cggmlib/repro/cost.py). The small models (synthetic, mfeat, MOSI, IEMOCAP) are bound by kernel "
                "launches on a GPU rather than by arithmetic, so their projected GPU times are lower bounds; "
                "CPU times on a shared machine are noisy (one timed step per row by default). G-Blending runs count "
                "their estimation copies ((M + 1) extra epochs per epoch, an upper bound); UMT/UME teachers are not "
                "counted. The factor comes from matrix multiplies; CPU convolutions reach a smaller share of that "
                "throughput, so the BraTS projection is likely high, and CPU peak memory (oneDNN buffers) is likely "
                "above the CUDA peak: measure on the GPU before planning around either."), "",
             f"**Whole paper profile ({result['planned_runs']} runs planned; {len(result['runs'])} projected here): "
             f"{result['total_hours']:.1f} GPU hours on one GPU.**"
             + (f" Not measured (yet): {', '.join(missing)}; their runs are not in any total." if missing else ""), "",
             "| dataset | row | params (M) | +strategy (M) | measured batch | ms/step measured | paper batch | "
             "steps/epoch | epochs | ms/step GPU | peak MiB at paper batch | fits 16 GB | largest batch in 16 GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['row']} | failed: {r['error']} |" + " |" * 10)
            continue
        lines.append(f"| {r['dataset']} | {r['row']} | {r['params'] / 1e6:.2f} | {r['strategy_params'] / 1e6:.2f} | "
                     f"{r['batch']} | {r['ms']:.1f} | {r['paper_batch']} | {r['steps_per_epoch']} | {r['epochs']} | "
                     f"{r['ms_step_gpu']:.1f} | {r['peak_mb_paper_batch']:.0f} | {'yes' if r['fits_16gb'] else '**no**'} | "
                     f"{_largest(r)} |")
    lines += ["", "## GPU hours per table and figure", "",
              "A run that several items read counts in each of them; the total above counts it once.", "",
              "| item | GPU hours |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in result["items"].items()]
    lines += ["", "## Per dataset", "", "| dataset | runs | GPU hours |", "|---|---:|---:|"]
    for d in result["datasets"]:
        runs = [r for r in result["runs"] if r["dataset"] == d]
        lines.append(f"| {d} | {len(runs)} | {sum(r['hours'] for r in runs):.1f} |")
    too_big = sorted({(r["dataset"], r["row"]) for r in result["rows"] if not r.get("fits_16gb", True)})
    lines += ["", "## Runs that do not fit a 16 GB GPU at the paper batch", ""]
    lines += ([f"- {d} {row}" for d, row in too_big] or ["- none"])
    lines += ["", "The `colab` profile keeps the paper settings (batch sizes included) and only moves results and "
              "checkpoints to Google Drive: a row marked **no** runs out of memory there. The column 'largest batch in "
              "16 GB' is the batch that would fit; training at it is a deviation from the paper preset "
              "(`Config(batch_size=...)`, recorded in the run card).", "",
              "Sizes per epoch: " + "; ".join(f"{d} {n:,} ({why})" for d, (n, why) in TRAIN_SIZE.items()
                                             if d in result["datasets"]) + ".", ""]
    return "\n".join(lines)


def _largest(row: dict) -> str:
    """The largest batch that fits, shown up to 8 × the paper batch (beyond that it constrains nothing)."""
    cap = 8 * row["paper_batch"]
    return f"≥ {cap}" if row["largest_batch_16gb"] >= cap else str(row["largest_batch_16gb"])


def write_files(path, result: dict) -> None:
    """PATH (the Markdown) and PATH with .json (every measured row and projected run)."""
    atomic_write_text(Path(path), markdown(result))
    atomic_write_json(Path(path).with_suffix(".json"), result)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cggmlib.repro.cost", description=__doc__.splitlines()[0])
    p.add_argument("--write", default=None, help="Markdown file to write (e.g. docs/cost.md); also writes .json beside it")
    p.add_argument("--datasets", nargs="+", default=None, help=f"default: all of {sorted(TRAIN_SIZE)}")
    p.add_argument("--reps", type=int, default=2, help="timed steps per row (after one warm-up step)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gpu-tflops", type=float, default=4.0, help="assumed sustained float32 TFLOPS of the GPU (CPU only)")
    p.add_argument("--measure-batch", default=None, help='JSON: dataset -> CPU measurement batch, e.g. \'{"food101": 2}\'')
    p.add_argument("--complete", default=None, metavar="JSON",
                   help="keep the rows measured in an earlier run's JSON (e.g. docs/cost.json) and its throughput "
                        "factor; measure only the rows it lacks")
    p.add_argument("--rows-from", default=None, metavar="JSON",
                   help="re-project the rows measured in an earlier run's JSON (e.g. docs/cost.json), measuring nothing")
    args = p.parse_args(argv)

    if args.rows_from:
        old = json.loads(Path(args.rows_from).read_text())
        result = summarize(old["rows"], old["device"], old["threads"], old["cpu_gflops"], old["gpu_tflops"], old["factor"])
        write_files(args.write, result) if args.write else print(markdown(result))
        return 0

    unknown = sorted(set(args.datasets or ()) - set(TRAIN_SIZE))
    if unknown:
        raise ConfigError(f"--datasets: unknown {unknown}; choose from {sorted(TRAIN_SIZE)}")
    def write(result):
        write_files(args.write, result)

    result = collect(args.datasets, args.reps, args.threads, args.gpu_tflops, log=lambda s: print(s, flush=True),
                     measure_batch=json.loads(args.measure_batch) if args.measure_batch else None,
                     on_row=write if args.write else None,
                     earlier=json.loads(Path(args.complete).read_text()) if args.complete else None)
    if args.write:
        write(result)
        print(f"wrote {args.write} and {Path(args.write).with_suffix('.json')}")
    else:
        print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["collect", "markdown", "main", "project", "TRAIN_SIZE"]
