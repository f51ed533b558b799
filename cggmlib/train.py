"""The one training loop, `train()`, and its step `train_step()`. Every method plugs in as a Strategy;
`evaluate()` and the epoch selection live in cggmlib/training/protocol.py.

Order of one step (as zrguo/CGGM@21e428c src/msatrain.py): forward → loss → backward → (unscale) →
strategy.after_backward (gradient modulation) → (average over ranks) → clip → optimizer.step.
Nothing in a step reads a device value on the host (no GPU synchronisation): logged values stay
tensors until the trace moves them in batches, and the non-finite check follows the trace on a GPU
(cggmlib/training/finite.py). Data parallel over processes: cggmlib/training/distributed.py.
"""
from __future__ import annotations

import time

from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from .training import distributed
from .training.checkpoint import Checkpointer, Parts
from .device import device_batches
from .training.optim import StepTools, build_scheduler, encoder_grad_norms, step_tools
from .training.protocol import TrainResult, evaluate, improved, summarize
from .runs.folder import progress_bar, seed_everything
from .training.trace import Trace


def train(model, strategy, data, cfg, *, out_dir=None, resume: bool = False, progress: bool = True,
          grad_norms: bool = True, on_step=None) -> TrainResult:
    """Train `model` with `strategy` on `data` for `cfg.epochs`; checkpoint to `out_dir` when given.

    `grad_norms`: log ‖∇θ^{φ_m} L‖ of every encoder before and after modulation (the figures use
    them; measured cost in `cggm bench`). `on_step(steps_done, model, strategy, data)`, when given, is
    called after every optimisation step, to observe (e.g. a held-out probe, `study.b_and_speed`); it
    must leave the model as it found it, in training mode. Under `torchrun` (or an initialised torch.distributed),
    each rank trains on its shard and only rank 0 writes files.
    """
    started = time.time()
    seed_everything(cfg.seed)
    world, device = distributed.setup(cfg.device)
    model.to(device)
    world.shard(data)
    strategy.step_limit = cfg.max_steps  # a dry run: the strategy's own training passes stop early too
    strategy.setup(model, data)
    tools = step_tools(cfg, model, strategy, device, world, grad_norms)
    scheduler, when = build_scheduler(cfg, tools.optimizer, len(data.train))
    trace = Trace()
    ckpt = Checkpointer(out_dir, Parts(model, tools.optimizer, scheduler, tools.scaler, strategy, trace, cfg),
                        writes=world.is_main)
    state = ckpt.start(resume)
    tools.finite.skipped, tools.finite.checked = state.skipped, len(trace.rows)
    tools.finite.data = data  # a non-finite step first checks the inputs (the data's fault, named)
    bar = progress_bar(range(cfg.epochs), progress and world.is_main, initial=state.epoch)
    for epoch in range(state.epoch, cfg.epochs):
        state.epoch = epoch
        getattr(data.train, "set_epoch", lambda e: None)(epoch)
        if state.batch == 0:
            trace.log(epoch=epoch, **strategy.on_epoch_start(model, data, epoch))
        model.train()
        for i, batch in enumerate(device_batches(data.train, device)):
            if i < state.batch:  # resuming inside an epoch: the order is seeded by (seed, epoch)
                continue
            if cfg.max_steps and i >= cfg.max_steps:  # a dry run (Config.max_steps): the epoch ends early
                break
            row = train_step(model, strategy, batch, epoch, tools, state.step)
            state.skipped = tools.finite.skipped
            if when == "step":
                scheduler.step()
            trace.log(step=state.step, epoch=epoch, lr=tools.optimizer.param_groups[0]["lr"], **row)
            tools.finite.check_trace(trace)
            state.step, state.batch = state.step + 1, i + 1
            if on_step is not None:
                on_step(state.step, model, strategy, data)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                tools.finite.check_trace(trace, flush=True)  # never checkpoint a state past a bad step
                ckpt.checkpoint(state)
        tools.finite.check_trace(trace, flush=True)
        world.broadcast_buffers(model)
        val = evaluate(model, data.val, data.task, device, strategy, cfg.max_eval_batches)
        test = evaluate(model, data.test, data.task, device, strategy, cfg.max_eval_batches)
        trace.log(epoch=epoch, **{f"val/{k}": v for k, v in val.items()}, **{f"test/{k}": v for k, v in test.items()})
        if when == "epoch":
            scheduler.step(val["loss"])
        if improved(val[data.task.select], state.best_value, data.task.higher_is_better):
            ckpt.keep_best(state, epoch, val[data.task.select])
        state.epoch, state.batch = epoch + 1, 0
        ckpt.checkpoint(state)
        bar.update(1)
        bar.set_postfix({f"val {data.task.select}": round(val[data.task.select], 4)})
    bar.close()
    ckpt.load_selected()
    metrics = summarize(trace.epochs(), data, state.best_epoch) | {"skipped_steps": state.skipped}
    return TrainResult(trace, metrics, state.best_epoch, time.time() - started, model, strategy, data)


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
    if not tools.finite.step_ok(row, step, epoch, batch):
        tools.optimizer.zero_grad(set_to_none=True)
    else:
        if tools.grad_clip:
            clip_grads_with_norm_(tools.params, tools.grad_clip, total)
        tools.scaler.step(tools.optimizer) if tools.scaler else tools.optimizer.step()
    if tools.scaler:
        tools.scaler.update()
    return row
