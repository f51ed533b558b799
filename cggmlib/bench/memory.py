"""Table 8 of the CGGM paper (Appendix C): the extra memory the modality classifiers f_m cost.

Guo et al., NeurIPS 2024, App. C: the classifiers update only themselves and pass no gradient to the
encoders, so their cost is small (8 to 24 MB per an AI-written summary; per-dataset values unknown,
Table 8). Measured here on the run's own model and first training batch:

- `classifier_params`, `param_mb`: parameters of every f_m, exactly (numel × element size);
- `optimizer_state_mb`: the classifiers' optimizer state after one step, exactly (Adam: two moments,
  SGD: momentum);
- `extra_peak_mb` (CUDA only): peak allocated memory of one CGGM step minus that of one joint step
  on the same model and batch, both from the same baseline (`torch.cuda.max_memory_allocated`); it
  includes the classifiers' parameters, gradients, optimizer state and activations. On a CPU no
  allocator statistics exist: the field says "not measured on CPU" rather than a guess.
"""
from __future__ import annotations

import copy

import torch

from ..modulation import make_strategy

MB = 2**20
NOT_ON_CPU = "not measured on CPU"


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def optimizer_state_bytes(optimizer) -> int:
    return sum(tensor_bytes(state.values()) for state in optimizer.state.values())


def classifier_memory(model, data, strategy_kwargs: dict | None = None, device=None) -> dict:
    """Memory of CGGM's classifiers for `model` on `data` (see the module docstring); the model is copied."""
    device = torch.device(device or next(model.parameters()).device)
    model = copy.deepcopy(model).to(device)
    batch = next(iter(data.train)).to(device)
    kwargs = {k: v for k, v in (strategy_kwargs or {}).items() if k != "classifiers_override"}
    cggm = make_strategy("cggm", **kwargs)
    out = {"device": str(device), "batch_size": len(batch)}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        joint_peak = _step_peak(model, make_strategy("joint"), data, batch, device, base)
        cggm_peak = _step_peak(model, cggm, data, batch, device, base, steps=2)  # step 2 holds the optimizer state
        out |= {"joint_step_peak_mb": joint_peak / MB, "cggm_step_peak_mb": cggm_peak / MB,
                "extra_peak_mb": (cggm_peak - joint_peak) / MB}
    else:
        cggm.setup(model, data)
        _step(model, cggm, batch)
        out["extra_peak_mb"] = NOT_ON_CPU
    heads = cggm.classifiers
    out |= {"classifier_params": sum(p.numel() for p in heads.heads.parameters()),
            "param_mb": tensor_bytes(heads.heads.parameters()) / MB,
            "optimizer_state_mb": optimizer_state_bytes(heads.optimizer) / MB,
            "head_optimizer": heads.optimizer_name}
    return out


def _step(model, strategy, batch) -> None:
    model.train()
    out = strategy.forward(model, batch, 0)
    strategy.loss(model, batch, out, 0).backward()
    strategy.after_backward(model, batch, out, 0)
    model.zero_grad(set_to_none=True)


def _step_peak(model, strategy, data, batch, device, base: int, steps: int = 1) -> int:
    """Peak allocated bytes above `base` over `steps` training steps; the strategy is set up inside the
    window, so the classifiers' parameters count."""
    torch.cuda.reset_peak_memory_stats(device)
    strategy.setup(model, data)
    for _ in range(steps):
        _step(model, strategy, batch)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


__all__ = ["NOT_ON_CPU", "classifier_memory", "optimizer_state_bytes", "tensor_bytes"]
