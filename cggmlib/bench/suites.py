"""The measurements of `cggm bench`, one function per suite; each yields one row (a dict) per measurement.

- `strategies`: every paper model: joint, CGGM (official, official+guard, paper, the lighter pooled
  classifier, overlap) with its classifiers alone, every baseline, and joint without gradient-norm
  logging; each row paired with its own joint run;
- `modalities`: cost against the number of modalities (2 to 8, `synthetic` late-fusion MLP);
- `batch`: cost against batch size (MOSI model);
- `light`: accuracy and training time of CGGM with its default classifiers vs the lighter pooled
  one, a few seeds (needs the dataset files, e.g. stand-ins from `cggm make-standin`);
- `released`: our joint and CGGM steps, the forward pass, forward + backward, the classifiers alone
  and the clipping + optimizer step alone against a
  transcription of the released code's (cggmlib/bench/released.py), and against our slower exact
  attention path (cggmlib/models/attention.py), per TokenFusionTransformer paper model;
- `food_cache`: a training step on cached frozen BERT/ViT tokens against recomputing them every batch
  as the official Food-101 code does (same architectures, random weights: the cost does not depend
  on the values).
Row keys and the ratios are explained in cggmlib/bench/runner.py.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from ..config import Config
from ..data import load_data
from ..models import build_model
from ..modulation import STRATEGIES, make_strategy
from ..runs.folder import seed_everything
from ..train import train
from .runner import (CASES, HeadsRunner, Runner, make_batch, median_ms, peak_mb, pooled_classifiers, synthetic_case,
                     time_steps)

#: CGGM rows: label -> (strategy options, lighter classifier?)
CGGM_ARMS = {
    "official": ({"variant": "official"}, False),
    "official+guard": ({"variant": "official", "guard": True}, False),
    "paper": ({"variant": "paper"}, False),
    "official/pooled": ({"variant": "official"}, True),
}
#: options a baseline needs to run inside a benchmark (UMT/UME: one-epoch teachers in a temporary folder)
BASELINE_OPTIONS = {"umt": {"teacher_epochs": 1}, "ume": {"teacher_epochs": 1}}


def result_row(case_name, size, device, batch_size, strategy, variant, times, joint_key="joint", heads_key=None,
               peaks=None, arm="arm") -> dict:
    """One measurement. Times are aligned by repetition (each runner ran once per rotation, adjacent in
    time), so the ratios come from per-repetition pairs, which cancels slow changes of machine load:
    vs_joint = median_k(arm_k / joint_k); overhead_vs_heads = median_k(arm_k − joint_k) / median(heads).
    `overhead_vs_heads_min` uses the fastest step of each runner instead (interference from other
    processes only adds time), a second estimate for a shared machine."""
    arm_t, joint_t = times[arm], times[joint_key]
    row = {"model": case_name, "size": size, "device": str(device), "threads": torch.get_num_threads(),
           "batch": batch_size, "strategy": strategy, "variant": variant, "step_ms": median_ms(arm_t),
           "joint_ms": median_ms(joint_t), "vs_joint": statistics.median(a / j for a, j in zip(arm_t, joint_t))}
    if heads_key:
        diff = statistics.median(a - j for a, j in zip(arm_t, joint_t))
        heads_t = times[heads_key]
        row |= {"heads_ms": median_ms(heads_t), "overhead_vs_heads": diff / statistics.median(heads_t),
                "overhead_vs_heads_min": (min(arm_t) - min(joint_t)) / min(heads_t)}
    if peaks:
        row |= {"peak_mb": peaks[arm], "extra_mb": peaks[arm] - peaks[joint_key]}
    return row | {"reps": len(arm_t), "times_ms": {k: [round(1000 * t, 3) for t in v] for k, v in times.items()}}


def measure(runners: dict, reps: int, device, memory: bool) -> tuple[dict, dict | None]:
    times = time_steps(runners, reps, device=device)
    peaks = {k: peak_mb(r, device) for k, r in runners.items()} if memory else None
    return times, peaks


def strategies(size: str = "reduced", device="cpu", models=None, names=None, reps: int = 7,
               memory: bool = True, overlap: bool | None = None):
    """One row per (model, strategy or CGGM variant), each timed alternately with joint training."""
    names = [n for n in (names or STRATEGIES) if n != "joint"]
    overlap = torch.device(device).type == "cuda" if overlap is None else overlap
    for model in models or CASES[size]:
        case = CASES[size][model]
        joint = Runner(case, "joint", device)
        arms = []
        if "cggm" in names:
            arms += [("cggm", label, opts, light) for label, (opts, light) in CGGM_ARMS.items()]
            if overlap:
                arms.append(("cggm", "official/overlap", {"variant": "official", "overlap": True}, False))
        arms += [(n, "", BASELINE_OPTIONS.get(n, {}), False) for n in names if n != "cggm"]
        quiet = Runner(case, "joint", device, batch=joint.batch, grad_norms=False)
        times, peaks = measure({"joint": joint, "arm": quiet}, reps, device, memory)
        yield result_row(model, size, device, case.batch_size, "joint", "no grad-norm logging", times, peaks=peaks)
        with tempfile.TemporaryDirectory() as teachers:
            for name, variant, options, light in arms:
                try:
                    options = options | ({"teacher_dir": teachers} if name in BASELINE_OPTIONS else {})
                    arm = Runner(case, name, device, options, batch=joint.batch, light=light)
                    runners = {"joint": joint, "arm": arm}
                    if name == "cggm":
                        runners["heads"] = HeadsRunner(arm)
                    times, peaks = measure(runners, reps, device, memory)
                    yield result_row(model, size, device, case.batch_size, name, variant, times,
                               heads_key="heads" if name == "cggm" else None, peaks=peaks)
                except Exception as err:  # one failing row must not end the benchmark
                    yield {"model": model, "size": size, "device": str(device), "strategy": name, "variant": variant,
                           "error": f"{type(err).__name__}: {err}".replace("\n", " ")[:200]}


def modalities(device="cpu", counts=range(2, 9), reps: int = 9, batch_size: int = 256):
    """Joint, CGGM and its classifiers alone on the `synthetic` MLP with M = 2..8 modalities."""
    for m in counts:
        case = synthetic_case(m, batch_size)
        joint = Runner(case, "joint", device)
        cggm = Runner(case, "cggm", device, batch=joint.batch)
        times = time_steps({"joint": joint, "arm": cggm, "heads": HeadsRunner(cggm)}, reps, device=device)
        yield {"suite": "modalities", "modalities": m} | result_row(f"synthetic-M{m}", "reduced", device, batch_size,
                                                              "cggm", "official", times, heads_key="heads")


def batch_sizes(device="cpu", model: str = "mosi", sizes=(8, 16, 32, 64, 128), reps: int = 7, size: str = "reduced"):
    """Joint, CGGM and its classifiers alone on one model at several batch sizes."""
    base = CASES[size][model]
    for n in sizes:
        batch = make_batch(base, device, batch_size=n)
        joint = Runner(base, "joint", device, batch=batch)
        cggm = Runner(base, "cggm", device, batch=batch)
        times = time_steps({"joint": joint, "arm": cggm, "heads": HeadsRunner(cggm)}, reps, device=device)
        yield {"suite": "batch"} | result_row(model, size, device, n, "cggm", "official", times, heads_key="heads")


def food_cache(device="cpu", batch_size: int = 4, reps: int = 3, size: str = "reduced"):
    """Seconds per Food-101 step with cached tokens vs with frozen ViT-B/16 + BERT-base run on every batch."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    case = CASES["paper"]["food101"]
    batch = make_batch(case, device, batch_size=batch_size)
    step = Runner(case, "cggm", device, batch=batch)
    vit, bert = ViTModel(ViTConfig()).to(device).eval(), BertModel(BertConfig()).to(device).eval()
    images = torch.randn(batch_size, 3, 224, 224, device=device)
    tokens = torch.randint(0, 30522, (batch_size, 50), device=device)

    @torch.no_grad()
    def encode():
        return vit(pixel_values=images).last_hidden_state, bert(input_ids=tokens).last_hidden_state

    class Encode:
        def step(self):
            encode()

    times = time_steps({"step": step, "encode": Encode()}, reps, warmup=1, device=device)
    step_ms, encode_ms = median_ms(times["step"]), median_ms(times["encode"])
    yield {"suite": "food_cache", "model": "food101", "size": "paper", "device": str(device),
           "threads": torch.get_num_threads(), "batch": batch_size, "cached_step_ms": step_ms,
           "encode_ms": encode_ms, "recompute_step_ms": step_ms + encode_ms,
           "speedup": (step_ms + encode_ms) / step_ms, "reps": reps}


def light_accuracy(device="cpu", datasets=("mosi", "iemocap"), seeds=(0, 1, 2), data_root: str = "data",
                   epochs: int | None = None, preset: str = "smoke"):
    """CGGM with the default classifiers vs the lighter pooled one (`PooledLinear`): the reported
    metric and the wall time of each run (smoke preset; labelled stand-in when the files are)."""
    for name in datasets:
        for seed in seeds:
            for classifier in ("default", "pooled"):
                cfg = Config(dataset=name, strategy="cggm", seed=seed, data_root=data_root, device=str(device),
                                epochs=epochs, preset=preset)
                seed_everything(seed)
                data = load_data(name, data_root, batch_size=cfg.batch_size, seed=seed)
                model = build_model(name, data, cfg.preset)
                kwargs = dict(cfg.strategy_kwargs)
                if classifier == "pooled":
                    sample = next(iter(data.train)).inputs
                    kwargs["classifiers_override"] = pooled_classifiers(model.to(device), sample, data.num_outputs)
                started = time.perf_counter()
                result = train(model, make_strategy("cggm", **kwargs), data, cfg, progress=False)
                numbers = {k: v for k, v in result.metrics.items() if isinstance(v, float)}
                yield {"suite": "light", "model": name, "size": preset, "device": str(device), "strategy": "cggm",
                       "variant": f"official/{classifier}", "seed": seed, "standin": data.standin,
                       "metric": data.task.select, "value": result.metrics[data.task.select],
                       "train_s": time.perf_counter() - started, "epochs": cfg.epochs, "metrics": numbers}


class _Exact:
    """A runner stepped with the reference attention and dropout (`attention.exact_attention`)."""

    def __init__(self, runner):
        self.runner = runner

    def step(self, batch=None) -> None:
        from ..models.attention import exact_attention

        with exact_attention():
            self.runner.step()


class _Forward:
    """Our model's training-mode forward pass and loss only (no backward)."""

    def __init__(self, runner: Runner):
        self.r = runner

    def step(self, batch=None) -> None:
        r = self.r
        with r.tools.autocast():
            out = r.strategy.forward(r.model, r.batch, 0)
            r.strategy.loss(r.model, r.batch, out, 0).item()


class _ForwardBackward(_Forward):
    """Our model's training-mode forward pass, loss and backward (no modulation, no optimizer step)."""

    def step(self, batch=None) -> None:
        r = self.r
        with r.tools.autocast():
            out = r.strategy.forward(r.model, r.batch, 0)
            loss = r.strategy.loss(r.model, r.batch, out, 0)
        r.tools.optimizer.zero_grad(set_to_none=True)
        loss.backward()


class _Optimizer:
    """Our clipping and optimizer step (`train_step`'s last part) on the gradients of one backward pass."""

    def __init__(self, runner: Runner):
        self.tools = runner.tools
        _ForwardBackward(runner).step()

    def step(self, batch=None) -> None:
        t = self.tools
        if t.grad_clip:
            clip_grads_with_norm_(t.params, t.grad_clip, get_total_norm([p.grad for p in t.params if p.grad is not None]))
        t.optimizer.step()


#: `released` suite parts: label -> (our strategy, transcription with CGGM?, what is timed); the backward
#: pass alone is `forward_backward` − `forward`, the classifiers and the optimizer are timed alone
RELEASED_PARTS = {"joint": ("joint", False, "step"), "cggm": ("cggm", True, "step"),
                  "forward": ("joint", False, "forward"), "forward_backward": ("joint", False, "forward_backward"),
                  "classifiers": ("cggm", True, "classifiers"), "optimizer": ("joint", False, "optimizer")}


def released(size: str = "paper", device="cpu", models=None, reps: int = 7, parts=tuple(RELEASED_PARTS),
             amp: str = "off"):
    """Per model and part, ours, ours with the exact attention path and the released transcription,
    interleaved; `vs_released` = median_k(ours_k / released_k), `exact_vs_released` likewise.

    `amp`: our two runners' mixed precision (`Config.amp`; bf16 on a GPU); the transcription always runs
    in float32, as the released code does."""
    from .released import (ReleasedClassifiers, ReleasedForward, ReleasedForwardBackward, ReleasedOptimizer,
                           ReleasedStep, released_sizes)

    for model in models or [m for m in ("mosi", "iemocap", "food101") if m in CASES[size]]:
        case = CASES[size][model]
        for part in parts:
            strategy, cggm, what = RELEASED_PARTS[part]
            ours = Runner(case, strategy, device, options={"variant": "official"} if cggm else None, amp=amp)
            exact = Runner(case, strategy, device, batch=ours.batch,
                           options={"variant": "official"} if cggm else None, amp=amp)
            rel = ReleasedStep(released_sizes(ours.model), ours.batch, case.task.kind == "regression", cggm)
            rel.model.to(device)
            if rel.classifier is not None:
                rel.classifier.to(device)
            if what == "forward":
                runners = {"ours": _Forward(ours), "exact": _Exact(_Forward(exact)), "released": ReleasedForward(rel)}
            elif what == "forward_backward":
                runners = {"ours": _ForwardBackward(ours), "exact": _Exact(_ForwardBackward(exact)),
                           "released": ReleasedForwardBackward(rel)}
            elif what == "optimizer":
                runners = {"ours": _Optimizer(ours), "exact": _Exact(_Optimizer(exact)), "released": ReleasedOptimizer(rel)}
            elif what == "classifiers":
                runners = {"ours": HeadsRunner(ours), "exact": _Exact(HeadsRunner(exact)),
                           "released": ReleasedClassifiers(rel)}
            else:
                runners = {"ours": ours, "exact": _Exact(exact), "released": rel}
            times = time_steps(runners, reps, device=device)
            t_ours, t_exact, t_rel = times["ours"], times["exact"], times["released"]
            yield {"model": model, "size": size, "device": str(device), "threads": torch.get_num_threads(),
                   "batch": case.batch_size, "strategy": strategy,
                   "variant": part if amp == "off" else f"{part} amp={amp}",
                   "step_ms": median_ms(t_ours), "exact_ms": median_ms(t_exact), "released_ms": median_ms(t_rel),
                   "vs_released": statistics.median(a / b for a, b in zip(t_ours, t_rel)),
                   "exact_vs_released": statistics.median(a / b for a, b in zip(t_exact, t_rel)),
                   "vs_exact": statistics.median(a / b for a, b in zip(t_ours, t_exact)), "reps": reps,
                   "times_ms": {k: [round(1000 * t, 3) for t in v] for k, v in times.items()}}


SUITES = {"strategies": strategies, "released": released, "modalities": modalities, "batch": batch_sizes, "food_cache": food_cache,
          "light": light_accuracy}


def fit_line(xs, ys) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R² of ys against xs (cost against the number of modalities)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1e-12
    return slope, intercept, 1 - ss_res / ss_tot
