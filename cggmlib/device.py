"""Batches on their way to the device: pinned memory and one batch prepared ahead on CUDA.

A copy from ordinary (pageable) host memory to a GPU waits for the GPU's queue to drain first, a
host-device synchronisation every step. From pinned memory the copy is asynchronous, so the loop
pins each batch and copies it with `non_blocking=True`; a background thread gathers and pins the
next batch while the GPU works on the current one (indexing and pinning release the GIL). On a CPU
device batches are used as they are, in the calling thread.
"""
from __future__ import annotations

import queue
import threading

import torch

_DONE = object()


def device_batches(loader, device: torch.device, ahead: int = 2):
    """Iterate `loader`, yielding each Batch on `device` (pinned and prefetched on CUDA)."""
    if device.type != "cuda":
        yield from (b.to(device) for b in loader)
        return
    slots: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def produce():
        try:
            for b in loader:
                if stop.is_set():
                    return
                slots.put(b.pin_memory())
        except BaseException as err:  # handed to the consumer, raised there
            slots.put(err)
            return
        slots.put(_DONE)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item.to(device, non_blocking=True)
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.01)
