"""Self-attention and dropout for the token fusion transformers (MOSI, IEMOCAP, Food-101), fast on CPU.

`SelfAttention` is `nn.MultiheadAttention` (same parameters, names, initialisation and checkpoints:
`in_proj_weight`, `in_proj_bias`, `out_proj.*`) with its own forward pass:

- eval mode, or no attention dropout: `F.scaled_dot_product_attention` (the fused kernels on CPU and
  GPU); the same function `nn.MultiheadAttention` calls, so the outputs equal it.
- training with attention dropout on CUDA: `F.scaled_dot_product_attention(dropout_p=p)` (fused).
- training with attention dropout on CPU: PyTorch's fused CPU kernel has no dropout, and its fallback
  draws one float32 uniform per attention weight, which made dropout ~70% of a CPU forward pass at
  the paper sizes. Here the weights are computed explicitly, softmax(q·kᵀ/√d_h), and dropped with
  `dropout` below, as the official MulT/fairseq attention does (explicit dropout on the attention
  weights: zrguo/CGGM@21e428c modules/multihead_attention.py:120-125).

`dropout(x, p, training)` is inverted dropout (zero with probability p, scale the rest by 1/(1 − p)).
On CPU its mask costs one 16-bit random number per element: 64-bit words from the default generator
(`random_` over the full int64 range, so seeding and `torch.manual_seed` work as usual), viewed as
four 16-bit integers each and compared with a threshold. The probability is therefore quantised to
1/65536: an element is dropped with probability round(65536·p)/65536 (0.149994 for p = 0.15; within
7.7e-6 of p for 1/65536 ≤ p ≤ 1 − 1/65536), and the kept ones are scaled by the inverse of the kept
probability, so the expectation is exact. The mask is written as a 0/1 float tensor by the comparison itself (a bool mask costs a
slow mixed-type multiply or `masked_fill`), as `F.dropout` keeps a float mask too. In attention
the scale is applied to the product with v, a tensor head_dim/T times smaller than the weights.
On other devices it is `F.dropout`.

`EXACT` (or the `exact_attention()` context) switches every `SelfAttention` back to the
`nn.MultiheadAttention` forward and `dropout` to `F.dropout`, e.g. to reproduce the random draws of
runs made before this module. Measured costs: docs/performance.md (`cggm bench --suite released`).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

#: True: nn.MultiheadAttention's forward and F.dropout (the slower reference path)
EXACT = False

_LEVELS = 1 << 16


@contextlib.contextmanager
def exact_attention(exact: bool = True):
    """Within the block, `SelfAttention` and `dropout` use the reference path (or the fast one: False)."""
    global EXACT
    previous, EXACT = EXACT, exact
    try:
        yield
    finally:
        EXACT = previous


def drop_threshold(p: float) -> int:
    """The number of the 65536 16-bit values that drop an element: round(65536·p), kept within 1..65535
    for 0 < p < 1 (so a tiny p still drops and a p near 1 still keeps)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return min(_LEVELS - 1, max(1, round(p * _LEVELS))) if p > 0 else 0


def keep_mask(shape, p: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """0/1 tensor of `shape` and `dtype`: 0 with probability round(65536·p)/65536 each, independently."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    # int16 values are uniform on [-32768, 32767]; the lowest `drop_threshold(p)` of them drop
    bits = words.view(torch.int16)[:n].view(shape)
    return torch.ge(bits, drop_threshold(p) - _LEVELS // 2, out=torch.empty(shape, dtype=dtype, device=device))


def kept_scale(p: float) -> float:
    """1 / (probability that `keep_mask` keeps an element)."""
    return _LEVELS / (_LEVELS - drop_threshold(p))


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout; on CPU with a 16-bit-quantised probability (module docstring), else `F.dropout`."""
    if not training or p == 0.0:
        return x
    if EXACT or x.device.type != "cpu":
        return F.dropout(x, p, True)
    return x * keep_mask(x.shape, p, x.device, x.dtype).mul_(kept_scale(p))


class Dropout(nn.Module):
    """`nn.Dropout` through `dropout` (no parameters; state dicts are unchanged)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = float(p)
        drop_threshold(self.p)  # reject a bad probability when the model is built

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SelfAttention(nn.MultiheadAttention):
    """Multi-head self-attention on (B, T, d) (batch first); `forward(x, key_padding_mask)` → (B, T, d).

    `key_padding_mask` (B, T): True where a key is padding (as nn.MultiheadAttention). Parameters and
    initialisation are nn.MultiheadAttention's (`batch_first=True`)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if EXACT:
            return super().forward(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if p == 0.0 or x.device.type != "cpu":
            mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            scores = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            weights = scores.softmax(-1)
            # the 1/(1 − p) of inverted dropout is applied to the (smaller) product instead of the weights
            out = (weights * keep_mask(weights.shape, p, x.device, weights.dtype)) @ v * kept_scale(p)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))
