"""The loop's check for non-finite losses and gradients, without a host sync per step on a GPU.

`nonfinite="raise"` stops the run with `NumericsError` naming the step, the epoch, the encoders
whose gradient norm is not finite and the coefficients of that step; `"skip"` drops such a step and
counts it. Reading a device value on the host waits for the GPU, so on CUDA the "raise" check is
lazy: the trace moves its values to the host in batches anyway (cggmlib/training/trace.py), and the check
reads those rows when they arrive, before every checkpoint and at the end of each epoch. The error
then still names the first bad step, but the steps after it (up to one trace batch) have already
run. On CPU a read costs nothing, so the check is eager there, as it is for "skip" everywhere
(dropping a step needs the answer before the optimizer step).

With a GradScaler (fp16), a non-finite gradient is the scaler's business (it skips that step and
lowers the scale); only a non-finite loss counts here.

Before blaming the learning rate or ρ, the check looks at the inputs: if the offending batch (on the
lazy path: the training split) holds a non-finite value or one with |x| > 1e6
(`cggmlib.data.base.ABSURD`), the error names the dataset file, the modality and the sample instead.
"""
from __future__ import annotations

import math

import torch

from ..data.base import ABSURD, limit_text
from ..errors import NumericsError


def lazy_on(device: torch.device, nonfinite: str) -> bool:
    """Whether the "raise" check may wait for the trace (a GPU); "skip" is always eager."""
    return nonfinite == "raise" and device.type == "cuda"


class FiniteCheck:
    """`step_ok(row)` before each optimizer step; `check_trace(trace)` for the lazy rows."""

    def __init__(self, nonfinite: str, lazy: bool, scaler: bool, skipped: int = 0, data=None):
        self.nonfinite, self.lazy, self.scaler = nonfinite, lazy, scaler
        self.data = data  # the Data being trained on: its inputs are checked before lr/ρ are blamed
        self.skipped = skipped  # steps dropped so far (restored on resume)
        self.checked = 0  # trace rows already read by the lazy check

    def step_ok(self, row: dict, step: int, epoch: int, batch=None) -> bool:
        """True to take the step; False to drop it ("skip"); raises ("raise", eager)."""
        if self.lazy:
            return True
        finite = torch.isfinite(row["loss"]) if self.scaler else torch.isfinite(row["loss"]) & torch.isfinite(
            row["grad_norm_total"])
        if bool(finite):
            return True
        if self.nonfinite == "skip":
            self.skipped += 1
            return False
        raise NumericsError(message({"step": step, "epoch": epoch, **row}, self.scaler,
                                    fault=input_fault([batch] if batch is not None else [], self.data)))

    def check_trace(self, trace, flush: bool = False) -> None:
        """Read the trace rows that reached the host since the last call (all rows when `flush`)."""
        if not self.lazy:
            return
        if flush:
            trace.flush()
        rows = trace.rows[self.checked:]
        self.checked = len(trace.rows)
        for row in rows:
            if "step" in row and not _finite(row, self.scaler):
                fault = input_fault(getattr(self.data, "train", None) or [], self.data)
                raise NumericsError(message(row, self.scaler, fault) + " (checked lazily on the GPU: the steps "
                                    "after it had already run)")


def _finite(row: dict, scaler: bool) -> bool:
    keys = ("loss",) if scaler else ("loss", "grad_norm_total")
    return all(math.isfinite(float(row.get(k, 0.0))) for k in keys)


def input_fault(batches, data=None) -> str | None:
    """Where the inputs are to blame, or None: the first non-finite or absurd (|x| > ABSURD) input value
    in `batches`, named by dataset file, modality and sample (index within the training split, and id)."""
    for batch in batches:
        for m, x in batch.inputs.items():
            if not torch.is_tensor(x) or not torch.is_floating_point(x):
                continue
            x = x.detach().float().cpu()
            bad = ~torch.isfinite(x) | (x.abs() > ABSURD)
            rows = bad.reshape(len(x), -1).any(1).nonzero().flatten()
            if not len(rows):
                continue
            r = int(rows[0])
            value = float(x[r][bad[r]].flatten()[0])
            meta = batch.meta or {}
            index = meta.get("index")
            sample = f"sample {int(index[r])} of the training split" if index is not None else f"row {r} of a batch"
            for key in ("id", "case"):
                if key in meta:
                    sample += f" ({key} {meta[key][r]!r})"
            info = getattr(data, "info", {}) or {}
            source = info.get("file") or info.get("root") or info.get("source") or "the dataset"
            name = getattr(data, "name", "the dataset")
            return (f"the input data, not the learning rate or ρ: {name} modality {m!r}, {sample}, holds the value "
                    f"{value:.4g} (non-finite or |x| > {limit_text(ABSURD)}); file: {source}. Run `cggm doctor` on it and "
                    "replace the damaged file")
    return None


def message(row: dict, scaler: bool = False, fault: str | None = None) -> str:
    """What went wrong at this step and what to change (`fault`: the inputs are to blame, see `input_fault`)."""
    value = {k: float(v) for k, v in row.items() if torch.is_tensor(v) or isinstance(v, (int, float))}
    bad = [k.split("/", 1)[1] for k, v in value.items() if k.startswith("grad_norm/") and not math.isfinite(v)]
    coeffs = {k: round(v, 4) for k, v in value.items() if k.startswith("coeff/")}
    what = "loss" if not math.isfinite(value["loss"]) else "gradient"
    facts = (f"loss={value['loss']:.4g}, gradient norm={value.get('grad_norm_total', float('nan')):.4g}; "
             f"non-finite encoder gradients: {bad or 'none'}; last coefficients: {coeffs or 'none'}")
    where = f"non-finite {what} at step {int(value['step'])} (epoch {int(value['epoch'])})"
    if fault:
        return f"{where} caused by {fault}. The step: {facts}. (nonfinite='skip' only drops such steps)"
    return (f"{where}: {facts}. "
            "Lower the learning rate or ρ, use CGGM's guard=True, or set nonfinite='skip' to drop such steps")
