"""A light multi-encoder 2-D U-Net for BraTS on a CPU or a free Colab GPU (`MultiEncoderUNet`).

Not the paper's model (that is `DeepLabMultiInput`, cggmlib/models/seg.py); a small stand-in with the
same contract, so CGGM and the baselines run on BraTS-shaped data in minutes. U-Net: Ronneberger et
al., MICCAI 2015, with one encoder per MRI sequence and a shared decoder. Built from MONAI blocks
(`ResidualUnit`, `UnetUpBlock`, `Convolution`).

Encoder m: a MONAI `ResidualUnit` per level (channels c_0..c_L, stride 2 from level 1 on). Its
feature is the whole pyramid packed into one tensor at the coarsest resolution: level k is
space-to-depth rearranged (`pixel_unshuffle` by 2^(L−k)) and the levels concatenated along channels,
(B, Σ_k c_k·4^(L−k), H/2^L, W/2^L). The packing is lossless and has as many numbers as the pyramid;
`unpack` restores every level exactly. Fusion Ω: a U-Net decoder (MONAI `UnetUpBlock`s) whose input
and skip connections at each level are the concatenation over modalities, a 3×3 conv to
`head_channels`, and `out_layer` Conv2d(head_channels, 4, 1). CGGM classifier f_m: the same decoder
for one modality (the paper's "light decoder") ending in an `out_layer` of the same shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit, UnetUpBlock
from torch import nn

from ..errors import ConfigError
from .base import MultimodalModel


def pack(levels: list[torch.Tensor]) -> torch.Tensor:
    """Pyramid [(B, c_k, H/2^k, W/2^k)] → one tensor at the coarsest level (space-to-depth, concatenated)."""
    top = len(levels) - 1
    return torch.cat([F.pixel_unshuffle(x, 2 ** (top - k)) if k < top else x for k, x in enumerate(levels)], dim=1)


def unpack(packed: torch.Tensor, channels: tuple) -> list[torch.Tensor]:
    """Inverse of `pack` for a pyramid with per-level `channels`."""
    top = len(channels) - 1
    parts = packed.split([c * 4 ** (top - k) for k, c in enumerate(channels)], dim=1)
    return [F.pixel_shuffle(x, 2 ** (top - k)) if k < top else x for k, x in enumerate(parts)]


class UNetEncoder(nn.Module):
    """Encoder φ_m: residual units at channels c_0..c_L (stride 2 from level 1); returns the packed pyramid."""

    def __init__(self, in_channels: int, channels: tuple):
        super().__init__()
        self.levels = nn.ModuleList(
            ResidualUnit(2, in_channels if k == 0 else channels[k - 1], c, strides=1 if k == 0 else 2,
                         subunits=2, act="RELU", norm="BATCH")
            for k, c in enumerate(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = []
        for level in self.levels:
            x = level(x)
            levels.append(x)
        return pack(levels)


class UNetDecoder(nn.Module):
    """U-Net decoder over `heads` concatenated pyramids → (B, head_channels, H, W), without `out_layer`."""

    def __init__(self, channels: tuple, heads: int, head_channels: int):
        super().__init__()
        self.ups = nn.ModuleList(
            UnetUpBlock(2, heads * channels[k + 1], heads * channels[k], kernel_size=3, stride=1,
                        upsample_kernel_size=2, norm_name="batch", act_name="relu")
            for k in reversed(range(len(channels) - 1)))
        self.head = Convolution(2, heads * channels[0], head_channels, kernel_size=3, act="RELU", norm="BATCH")

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        x = levels[-1]
        for up, skip in zip(self.ups, reversed(levels[:-1])):
            x = up(x, skip)
        return self.head(x)


class UNetClassifier(nn.Module):
    """CGGM classifier f_m: the one-modality U-Net decoder and an `out_layer` shaped like the fused one."""

    def __init__(self, channels: tuple, head_channels: int, num_outputs: int):
        super().__init__()
        self.channels = tuple(channels)
        self.decoder = UNetDecoder(self.channels, 1, head_channels)
        self.out_layer = nn.Conv2d(head_channels, num_outputs, 1)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.decoder(unpack(feature, self.channels)))


class MultiEncoderUNet(MultimodalModel):
    """One small U-Net encoder per modality, a shared decoder with skips from all of them, `out_layer`.

    `input_dims`: modality -> (C, H, W) (or C); H and W must be multiples of 2^(len(channels) − 1).
    """

    def __init__(self, input_dims: dict, num_outputs: int = 4, channels: tuple = (16, 32, 64, 128),
                 head_channels: int = 32):
        super().__init__()
        self.channels, self.head_channels, self.num_outputs = tuple(channels), head_channels, num_outputs
        self.encoders = nn.ModuleDict({m: UNetEncoder(_channels(d), self.channels) for m, d in input_dims.items()})
        self.decoder = UNetDecoder(self.channels, len(input_dims), head_channels)
        self.out_layer = nn.Conv2d(head_channels, num_outputs, 1)
        self.stride = 2 ** (len(self.channels) - 1)

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_image_size(inputs, self.stride)
        return super().encode(inputs)

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Ω: unpack each modality's pyramid, concatenate per level over modalities, decode, `out_layer`."""
        pyramids = [unpack(features[m], self.channels) for m in self.encoders]
        return self.out_layer(self.decoder([torch.cat(level, dim=1) for level in zip(*pyramids)]))

    def modality_classifier(self, modality: str) -> nn.Module:
        return UNetClassifier(self.channels, self.head_channels, self.num_outputs)

    def released_scaled_parameters(self, modality: str) -> list[nn.Parameter]:
        """None, as the released BraTS step (whose name filter matches no parameter of the BraTS model):
        this light stand-in of that model follows the same method (docs/methods.md)."""
        return []


def check_image_size(inputs: dict[str, torch.Tensor], stride: int) -> None:
    """Raise a ConfigError unless every input is (B, C, H, W) with H and W multiples of `stride`."""
    for m, x in inputs.items():
        if x.dim() != 4 or x.shape[-1] % stride or x.shape[-2] % stride:
            raise ConfigError(f"modality {m!r}: expected a (B, C, H, W) image with H and W multiples of {stride}, "
                              f"got shape {tuple(x.shape)}; BraTS slices are 160×160 (data_cards/brats2021.md)")


def _channels(d) -> int:
    return int(d[0]) if isinstance(d, (tuple, list)) else int(d)
