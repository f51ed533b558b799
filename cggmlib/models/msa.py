"""Token-sequence fusion transformer of CGGM for CMU-MOSI and IEMOCAP (`MSAModel`), and its parts.

Guo et al., NeurIPS 2024, Sec. 4.2 and Table 7; the encoders follow MulT (Tsai et al., ACL 2019).
Reference code: zrguo/CGGM@21e428c models/msamodel.py (`MSAModel`, `Classifier`) and modules/transformer.py.

Encoder m: Conv1d(d_m → d, k=1) → MulT encoder (embed scale √d, sinusoidal positions from 1,
embedding dropout, pre-LN layers, final LayerNorm) → (B, T_m, d). Fusion Ω: the sequences
concatenated along time in modality order (MOSI/IEMOCAP: text, audio, vision), a fusion encoder of
`fusion_layers` layers, the output at position 0 (the first step of the first modality), the residual
MLP proj2(dropout(relu(proj1(h)))) + h and `out_layer` Linear(d, C). CGGM classifier f_m: a 2-layer
encoder on features[m], position 0, then the head (below) and `out_layer` Linear(d, C).

Where the released code is followed exactly, and the corrections offered beside it:
- The input projection Conv1d of modality m sits inside `encoders[m]` (as `encoders[m].proj`); the
  released `proj` list sits outside the encoders. `released_scaled_parameters(m)` names what the
  released CGGM step rescales (zrguo/CGGM@21e428c src/msatrain.py:119–122 selects parameters whose
  name contains `encoders.{i}`): the transformer `encoders[m].encoder`, not the projection. CGGM's
  `scaled="encoder"` correction rescales the projection too.
- Classifier head `head="released"` applies the same `proj1` twice, proj1 → proj1 → ReLU, and has no
  proj2 (models/msamodel.py:89–94 `Classifier.forward`); `head="two_layer"` (our correction) is
  proj1 → ReLU → proj2 → ReLU. CGGM's `variant` picks one (docs/methods.md).
- Positions are 1..T for every step. MulT gives the zero embedding to steps whose first projected
  channel is exactly 0, which after a Conv1d with bias practically never happens.
- `mask_padding=True` (off by default, as the official code, which attends to IEMOCAP's zero padding)
  treats all-zero steps as padding: encoders ignore them as keys and output zeros there; the fusion
  and the classifiers ignore all-zero feature steps. Position 0 is never masked.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .attention import Dropout, SelfAttention
from .base import MultimodalModel

#: modality order of the fused sequence in the official MSA code (position 0 = first text step)
MSA_ORDER = ("text", "audio", "vision")


def padding_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, T) True where a step of x (B, T, D) is all zeros; position 0 is never masked."""
    mask = (x == 0).all(-1)
    mask[:, 0] = False
    return mask


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """(length, dim) fairseq/MulT sinusoidal embeddings of positions 1..length: [sin | cos] halves."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=device) * -(math.log(10000.0) / max(half - 1, 1)))
    angle = torch.arange(1, length + 1, device=device)[:, None] * freq[None]
    emb = torch.cat([angle.sin(), angle.cos()], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


class EncoderLayer(nn.Module):
    """MulT's pre-LN layer: x + drop_res(attn(LN x)); x + drop_res(fc2(drop_relu(relu(fc1(LN x)))))."""

    def __init__(self, dim: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float):
        super().__init__()
        self.attn = SelfAttention(dim, heads, attn_dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        self.relu_dropout, self.res_dropout = Dropout(relu_dropout), Dropout(res_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.res_dropout(self.attn(h, mask))
        h = self.fc2(self.relu_dropout(F.relu(self.fc1(self.norm2(x)))))
        return x + self.res_dropout(h)


class SequenceEncoder(nn.Module):
    """MulT TransformerEncoder on (B, T, d): √d·x + positions, embedding dropout, layers, LayerNorm."""

    def __init__(self, dim: int, heads: int, layers: int, attn_dropout: float = 0.0, relu_dropout: float = 0.0,
                 res_dropout: float = 0.0, embed_dropout: float = 0.0):
        super().__init__()
        self.dim, self.embed_dropout = dim, Dropout(embed_dropout)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, attn_dropout, relu_dropout, res_dropout)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        pos = sinusoidal_positions(x.shape[1], self.dim, x.device).to(x.dtype)
        if mask is not None:
            pos = pos * (~mask)[..., None]  # padded steps get no position, as MulT's padding_idx
        x = self.embed_dropout(math.sqrt(self.dim) * x + pos)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class ModalityEncoder(nn.Module):
    """Encoder φ_m: Conv1d(d_m → d, k=1) projection, then a `SequenceEncoder`; (B, T, d_m) → (B, T, d)."""

    def __init__(self, input_dim: int, dim: int, mask_padding: bool = False, **encoder_kwargs):
        super().__init__()
        self.proj = nn.Conv1d(input_dim, dim, kernel_size=1)
        self.encoder = SequenceEncoder(dim, **encoder_kwargs)
        self.mask_padding = mask_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = padding_mask(x) if self.mask_padding else None
        h = self.encoder(self.proj(x.transpose(1, 2)).transpose(1, 2), mask)
        return h if mask is None else h.masked_fill(mask[..., None], 0.0)


#: classifier heads of `SequenceClassifier`: the released one and our correction
HEADS = ("released", "two_layer")


class SequenceClassifier(nn.Module):
    """CGGM classifier f_m: 2-layer encoder on (B, T, d), position 0, a head, out_layer.

    head="released": relu(proj1(proj1(h))), the released code's head (one Linear applied twice);
    head="two_layer": relu(proj2(relu(proj1(h)))), our correction.
    """

    def __init__(self, dim: int, num_outputs: int, layers: int = 2, mask_padding: bool = False,
                 head: str = "two_layer", **encoder_kwargs):
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"classifier head must be one of {HEADS}, got {head!r}")
        self.encoder = SequenceEncoder(dim, layers=layers, **encoder_kwargs)
        self.proj1 = nn.Linear(dim, dim)
        self.proj2 = nn.Linear(dim, dim) if head == "two_layer" else None
        self.out_layer = nn.Linear(dim, num_outputs)
        self.mask_padding, self.head = mask_padding, head

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        h = self.encoder(feature, padding_mask(feature) if self.mask_padding else None)[:, 0]
        if self.proj2 is None:
            return self.out_layer(F.relu(self.proj1(self.proj1(h))))
        return self.out_layer(F.relu(self.proj2(F.relu(self.proj1(h)))))


class TokenFusionTransformer(MultimodalModel):
    """Per-modality projection + transformer encoders, a fusion transformer over the concatenated
    sequences, position 0, a residual MLP and `out_layer` (CGGM's MOSI, IEMOCAP and Food-101 design).

    `input_dims`: modality -> per-step feature size (int, or a shape whose last entry is it), in the
    order the sequences are concatenated; position 0 of the fused sequence is the first modality's.
    """

    def __init__(self, input_dims: dict, num_outputs: int, dim: int = 40, heads: int = 5, layers: int = 5,
                 fusion_layers: int = 3, classifier_layers: int = 2, attn_dropout: float = 0.15,
                 relu_dropout: float = 0.15, embed_dropout: float = 0.2, res_dropout: float = 0.1,
                 out_dropout: float = 0.1, mask_padding: bool = False):
        super().__init__()
        self.encoder_kwargs = dict(heads=heads, attn_dropout=attn_dropout, relu_dropout=relu_dropout,
                                   res_dropout=res_dropout, embed_dropout=embed_dropout)
        self.encoders = nn.ModuleDict({
            m: ModalityEncoder(_step_dim(d), dim, mask_padding, layers=layers, **self.encoder_kwargs)
            for m, d in input_dims.items()})
        self.fusion = SequenceEncoder(dim, layers=fusion_layers, **self.encoder_kwargs)
        self.proj1, self.proj2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_dropout = nn.Dropout(out_dropout)
        self.out_layer = nn.Linear(dim, num_outputs)
        self.dim, self.num_outputs = dim, num_outputs
        self.classifier_layers, self.mask_padding = classifier_layers, mask_padding

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Ω: concatenate along time in encoder order, fusion encoder, position 0, residual MLP, out_layer.

        Missing modalities may be given as zeros of any length (baselines feed subsets this way).
        """
        seq = torch.cat([features[m] for m in self.encoders], dim=1)
        h = self.fusion(seq, padding_mask(seq) if self.mask_padding else None)[:, 0]
        h = self.proj2(self.out_dropout(F.relu(self.proj1(h)))) + h
        return self.out_layer(h)

    def modality_classifier(self, modality: str, head: str = "two_layer") -> nn.Module:
        return SequenceClassifier(self.dim, self.num_outputs, self.classifier_layers, self.mask_padding,
                                  head=head, **self.encoder_kwargs)

    def released_scaled_parameters(self, modality: str) -> list[nn.Parameter]:
        """What the released CGGM step rescales for modality m: its transformer encoder only, not the
        input projection (src/msatrain.py:119–122, src/foodtrain.py:125–129 select by name)."""
        return list(self.encoders[modality].encoder.parameters())


class MSAModel(TokenFusionTransformer):
    """CGGM's model for CMU-MOSI (layers 5, fusion 3) and IEMOCAP (layers 4, fusion 2); d 40, 5 heads."""


def _step_dim(d) -> int:
    return int(d[-1]) if isinstance(d, (tuple, list)) else int(d)


def ordered(input_dims: dict, order: tuple) -> dict:
    """input_dims reordered to the paper's `order` when it names the same modalities, else unchanged."""
    return {m: input_dims[m] for m in order} if set(order) == set(input_dims) else dict(input_dims)
