"""The one training loop, `train()`, and `evaluate()`. Every method plugs in as a Strategy.

Order of one step (as zrguo/CGGM:src/msatrain.py): forward → loss → backward → (unscale) →
strategy.after_backward (gradient modulation) → clip → optimizer.step.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from .checkpoint import Checkpointer
from .errors import NumericsError
from .optim import amp_setup, build_optimizer, build_scheduler
from .protocol import summarize
from .runs import seed_everything
from .trace import Trace


@dataclass
class TrainResult:
    """What `train` returns: the trace, the reported metrics (test at the validation-selected epoch)."""

    trace: Trace
    metrics: dict
    best_epoch: int
    wall_time_s: float
    model: object = None
    """the trained model (best epoch's weights), when trained in this process"""
    strategy: object = None
    data: object = None


def train(model, strategy, data, cfg, *, out_dir=None, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train `model` with `strategy` on `data` for `cfg.epochs`; checkpoint to `out_dir` when given."""
    started = time.time()
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    model.to(device)
    strategy.setup(model, data)
    params = [*model.parameters(), *strategy.parameters()]  # strategy-owned heads are clipped too
    optimizer = build_optimizer(cfg, params)
    scheduler, when = build_scheduler(cfg, optimizer, len(data.train))
    autocast, scaler = amp_setup(cfg.amp, device)
    trace, ckpt = Trace(), Checkpointer(out_dir) if out_dir else None
    loop = {"epoch": 0, "batch": 0, "step": 0, "best_epoch": -1, "best_value": None, "skipped": 0}
    if ckpt:
        ckpt.remove_stale_temporaries()
    if resume and ckpt and ckpt.exists():
        loop = ckpt.restore(model, optimizer, scheduler, scaler, strategy, trace)
    save = lambda: ckpt and ckpt.save(model, optimizer, scheduler, scaler, strategy, loop, trace)  # noqa: E731
    best = ckpt.load_best() if resume and ckpt and ckpt.best_path.exists() else None
    bar = _progress(range(cfg.epochs), progress, initial=loop["epoch"])
    for epoch in range(loop["epoch"], cfg.epochs):
        loop["epoch"] = epoch
        getattr(data.train, "set_epoch", lambda e: None)(epoch)
        if loop["batch"] == 0:
            trace.log(epoch=epoch, **strategy.on_epoch_start(model, data, epoch))
        model.train()
        for i, batch in enumerate(data.train):
            if i < loop["batch"]:  # resuming inside an epoch: the order is seeded by (seed, epoch)
                continue
            batch = batch.to(device, non_blocking=True)
            with autocast():
                out = strategy.forward(model, batch, epoch)
                loss = strategy.loss(model, batch, out, epoch)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)  # modulation and clipping act on true gradients
            before = encoder_grad_norms(model, "grad_norm")
            stats = strategy.after_backward(model, batch, out, epoch)  # gradient modulation happens here
            after = encoder_grad_norms(model, "grad_norm_mod")
            grads = [p.grad for p in params if p.grad is not None]
            total = get_total_norm(grads)
            if not _check_finite(cfg, loop, loss, total, before, stats):
                optimizer.zero_grad(set_to_none=True)
            elif scaler:
                if cfg.grad_clip:
                    clip_grads_with_norm_(params, cfg.grad_clip, total)
                scaler.step(optimizer)
            else:
                if cfg.grad_clip:
                    clip_grads_with_norm_(params, cfg.grad_clip, total)
                optimizer.step()
            if scaler:
                scaler.update()
            if when == "step":
                scheduler.step()
            trace.log(step=loop["step"], epoch=epoch, loss=loss.detach(), grad_norm_total=total,
                      lr=optimizer.param_groups[0]["lr"], **before, **after, **stats)
            loop["step"] += 1
            loop["batch"] = i + 1
            if cfg.checkpoint_every and loop["step"] % cfg.checkpoint_every == 0:
                save()
        val = evaluate(model, data.val, data.task, device, strategy)
        test = evaluate(model, data.test, data.task, device, strategy)
        trace.log(epoch=epoch, **{f"val/{k}": v for k, v in val.items()}, **{f"test/{k}": v for k, v in test.items()})
        if when == "epoch":
            scheduler.step(val["loss"])
        if _improved(val[data.task.select], loop["best_value"], data.task.higher_is_better):
            loop["best_epoch"], loop["best_value"] = epoch, val[data.task.select]
            # the selected epoch's model *and* strategy state (its own heads, e.g. unimodal, QMF)
            best = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "strategy": copy.deepcopy(strategy.state_dict())}
            if ckpt:
                ckpt.save_best(best)
        loop["epoch"], loop["batch"] = epoch + 1, 0
        save()
        bar.update(1)
        bar.set_postfix({f"val {data.task.select}": round(val[data.task.select], 4)})
    bar.close()
    if best is not None:
        model.load_state_dict(best["model"])
        strategy.load_state_dict(best["strategy"])
    metrics = summarize(trace.epochs(), data, loop["best_epoch"]) | {"skipped_steps": loop["skipped"]}
    return TrainResult(trace, metrics, loop["best_epoch"], time.time() - started, model, strategy, data)


@torch.no_grad()
def evaluate(model, loader, task, device=None, strategy=None) -> dict[str, float]:
    """The task's metrics and mean loss of the fused prediction over `loader`."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    meter, total, n = task.new_meter(), 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        pred = strategy.predict(model, batch.inputs) if strategy is not None else model(batch.inputs).logits
        total = total + task.loss(pred.float(), batch.target) * len(batch)
        n += len(batch)
        meter.update(pred, batch.target, batch.meta)
    model.train(was_training)
    return meter.compute() | {"loss": float(total) / max(n, 1)}


def encoder_grad_norms(model, prefix: str) -> dict[str, torch.Tensor]:
    """‖∇θ^{φ_m} L‖₂ of every encoder, as device tensors (no host sync)."""
    out = {}
    for m, enc in model.encoders.items():
        grads = [p.grad for p in enc.parameters() if p.grad is not None]
        out[f"{prefix}/{m}"] = get_total_norm(grads) if grads else torch.zeros(())
    return out


def _check_finite(cfg, loop, loss, total, norms, stats) -> bool:
    """False (skip the step) or NumericsError when the loss or gradient norm is not finite."""
    if bool(torch.isfinite(loss.detach()) & torch.isfinite(total)):
        return True
    bad = [k.split("/", 1)[1] for k, v in norms.items() if not math.isfinite(float(v))]
    coeffs = {k: round(float(v), 4) for k, v in stats.items() if k.startswith("coeff/")}
    if cfg.nonfinite == "skip":
        loop["skipped"] += 1
        return False
    raise NumericsError(f"non-finite {'loss' if not torch.isfinite(loss.detach()) else 'gradient'} at step {loop['step']} "
                        f"(epoch {loop['epoch']}): loss={float(loss.detach()):.4g}, gradient norm={float(total):.4g}; "
                        f"non-finite encoder gradients: {bad or 'none'}; last coefficients: {coeffs or 'none'}. "
                        "Lower the learning rate or ρ, use CGGM's guard=True, or set nonfinite='skip' to drop such steps")


def _improved(value, best, higher_is_better: bool) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value > best if higher_is_better else value < best)


def _progress(iterable, enabled: bool, initial: int = 0):
    """One bar over epochs: a widget in JupyterLab, a few lines in papermill logs, nothing if disabled."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc="epochs", disable=not enabled, initial=initial, mininterval=2.0, leave=True)
