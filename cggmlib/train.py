"""The one training loop, `train()`, its step `train_step()`, and `evaluate()`. Every method plugs in
as a Strategy.

Order of one step (as zrguo/CGGM:src/msatrain.py): forward → loss → backward → (unscale) →
strategy.after_backward (gradient modulation) → (average over ranks) → clip → optimizer.step.
Nothing in a step reads a device value on the host (no GPU synchronisation): logged values stay
tensors until the trace moves them in batches, and the non-finite check follows the trace on a GPU
(cggmlib/finite.py). Data parallel over processes: cggmlib/distributed.py.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from . import distributed
from .checkpoint import Checkpointer
from .device import device_batches
from .optim import StepTools, build_scheduler, step_tools
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


def train(model, strategy, data, cfg, *, out_dir=None, resume: bool = False, progress: bool = True,
          grad_norms: bool = True) -> TrainResult:
    """Train `model` with `strategy` on `data` for `cfg.epochs`; checkpoint to `out_dir` when given.

    `grad_norms`: log ‖∇θ^{φ_m} L‖ of every encoder before and after modulation (the figures use
    them; measured cost in `cggm bench`). Under `torchrun` (or an initialised torch.distributed),
    each rank trains on its shard and only rank 0 writes files.
    """
    started = time.time()
    seed_everything(cfg.seed)
    world, device = distributed.setup(cfg.device)
    model.to(device)
    world.shard(data)
    strategy.setup(model, data)
    tools = step_tools(cfg, model, strategy, device, world, grad_norms)
    scheduler, when = build_scheduler(cfg, tools.optimizer, len(data.train))
    trace, ckpt = Trace(), Checkpointer(out_dir) if out_dir else None
    loop = {"epoch": 0, "batch": 0, "step": 0, "best_epoch": -1, "best_value": None, "skipped": 0}
    if ckpt and world.is_main:
        ckpt.remove_stale_temporaries()
    if resume and ckpt and ckpt.exists():
        loop = ckpt.restore(model, tools.optimizer, scheduler, tools.scaler, strategy, trace)
    tools.finite.skipped, tools.finite.checked = loop["skipped"], len(trace.rows)

    def save():
        tools.finite.check_trace(trace, flush=True)  # never checkpoint a state past a bad step
        if ckpt and world.is_main:
            ckpt.save(model, tools.optimizer, scheduler, tools.scaler, strategy, loop, trace)

    best = ckpt.load_best() if resume and ckpt and ckpt.best_path.exists() else None
    bar = _progress(range(cfg.epochs), progress and world.is_main, initial=loop["epoch"])
    for epoch in range(loop["epoch"], cfg.epochs):
        loop["epoch"] = epoch
        getattr(data.train, "set_epoch", lambda e: None)(epoch)
        if loop["batch"] == 0:
            trace.log(epoch=epoch, **strategy.on_epoch_start(model, data, epoch))
        model.train()
        for i, batch in enumerate(device_batches(data.train, device)):
            if i < loop["batch"]:  # resuming inside an epoch: the order is seeded by (seed, epoch)
                continue
            row = train_step(model, strategy, batch, epoch, tools, loop["step"])
            loop["skipped"] = tools.finite.skipped
            if when == "step":
                scheduler.step()
            trace.log(step=loop["step"], epoch=epoch, lr=tools.optimizer.param_groups[0]["lr"], **row)
            tools.finite.check_trace(trace)
            loop["step"] += 1
            loop["batch"] = i + 1
            if cfg.checkpoint_every and loop["step"] % cfg.checkpoint_every == 0:
                save()
        tools.finite.check_trace(trace, flush=True)
        world.broadcast_buffers(model)
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
            if ckpt and world.is_main:
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


def train_step(model, strategy, batch, epoch: int, tools: StepTools, step: int = 0) -> dict:
    """One optimisation step on `batch` (already on the device); returns its trace row (device tensors)."""
    with tools.autocast():
        out = strategy.forward(model, batch, epoch)
        loss = strategy.loss(model, batch, out, epoch)
    tools.optimizer.zero_grad(set_to_none=True)
    (tools.scaler.scale(loss) if tools.scaler else loss).backward()
    if tools.scaler:
        tools.scaler.unscale_(tools.optimizer)  # modulation and clipping act on true gradients
    before = encoder_grad_norms(tools.encoder_params, "grad_norm") if tools.grad_norms else {}
    stats = strategy.after_backward(model, batch, out, epoch)  # gradient modulation happens here
    after = encoder_grad_norms(tools.encoder_params, "grad_norm_mod") if tools.grad_norms else {}
    tools.world.average_gradients(tools.params)  # data parallel: every rank steps with the mean
    total = get_total_norm([p.grad for p in tools.params if p.grad is not None])
    row = {"loss": loss.detach(), "grad_norm_total": total, **before, **after, **stats}
    if not tools.finite.step_ok(row, step, epoch):
        tools.optimizer.zero_grad(set_to_none=True)
    else:
        if tools.grad_clip:
            clip_grads_with_norm_(tools.params, tools.grad_clip, total)
        tools.scaler.step(tools.optimizer) if tools.scaler else tools.optimizer.step()
    if tools.scaler:
        tools.scaler.update()
    return row


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


def encoder_grad_norms(encoder_params, prefix: str) -> dict[str, torch.Tensor]:
    """‖∇θ^{φ_m} L‖₂ of every encoder, as device tensors (no host sync).

    `encoder_params`: {m: parameters of encoder m} (a model with `encoders` is accepted too)."""
    if hasattr(encoder_params, "encoders"):
        encoder_params = {m: list(enc.parameters()) for m, enc in encoder_params.encoders.items()}
    out = {}
    for m, params in encoder_params.items():
        grads = [p.grad for p in params if p.grad is not None]
        out[f"{prefix}/{m}"] = get_total_norm(grads) if grads else torch.zeros(())
    return out


def _improved(value, best, higher_is_better: bool) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value > best if higher_is_better else value < best)


def _progress(iterable, enabled: bool, initial: int = 0):
    """One bar over epochs: a widget in JupyterLab, a few lines in papermill logs, nothing if disabled."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc="epochs", disable=not enabled, initial=initial, mininterval=2.0, leave=True)
