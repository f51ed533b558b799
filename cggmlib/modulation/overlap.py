"""Running CGGM's classifiers concurrently with the main backward pass.

The classifiers f_m read detached features, so their forward, backward and optimizer step share no
data with the model's backward pass. `Overlap` runs them in one worker thread: PyTorch releases the
GIL inside its operators and runs backward passes of disjoint graphs concurrently, so the two
proceed side by side (on a CPU this uses a second core). On CUDA the worker enqueues its kernels
on a side stream that first waits for the features; collecting the result makes the main stream
wait for the side stream, and the returned tensors are marked as used there (`record_stream`), so
the caching allocator never hands their memory out while the main stream may still read it.

Determinism: the worker starts after the model's forward pass and is collected before anything else
draws random numbers (the main backward draws none), so dropout masks and results are the same as
running the classifiers after the backward pass.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

#: whether `python -m cggmlib.bench.gpu_check` has shown, on a GPU, parameters identical with and without
#: overlap over >= 50 steps of each paper model. Until then CGGM's `overlap=None` means off: a
#: stream-ordering mistake would corrupt gradients silently. Set it with the committed report.
VERIFIED = False


class Overlap:
    """`submit(fn, *args)` starts fn in the worker; `result()` waits for it and returns its value."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="cggm-classifiers")
        self.future = None

    def submit(self, fn, *args) -> None:
        if self.future is not None:  # a step that failed before collecting its classifiers
            self.future.result()
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the features are ready
        self.future = self.pool.submit(self._run, fn, *args)

    def _run(self, fn, *args):
        if self.stream is None:
            return fn(*args)
        with torch.cuda.stream(self.stream):
            return fn(*args)

    def result(self):
        future, self.future = self.future, None
        out = future.result()
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for t in _tensors(out):
                t.record_stream(current)
        return out

    def __deepcopy__(self, memo):
        return Overlap(self.device)

    def __getstate__(self):
        return {"device": str(self.device)}

    def __setstate__(self, state):
        self.__init__(torch.device(state["device"]))


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
