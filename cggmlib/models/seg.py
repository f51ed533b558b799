"""BraTS 2021 models: the paper's four-encoder DeepLabV3+ (`DeepLabMultiInput`) and a light
multi-encoder U-Net (`MultiEncoderUNet`, cggmlib/models/unet.py); `build_brats` picks one.

Guo et al., NeurIPS 2024, Sec. 4.2 and App. B ("DeepLabv3+ encoders and several convolution layers
as fusion"). Reference code: zrguo/CGGM@21e428c models/segmodel.py (`DeepLabMultiInput`, `SegClassifier`).

`DeepLabMultiInput`: encoder m = a randomly initialised 1-channel ResNet-101 (output stride 16) and
its ASPP (dilations [1, 2, 4, 6]); the shared DeepLabV3+ decoder reads the four ASPP outputs and the
four layer1 features; `out_layer` is its final 1×1 conv to 4 classes; logits are upsampled to the
input size. CGGM classifier f_m: a single-input DeepLabV3+ decoder with an `out_layer` of the same
shape (4×256×1×1), its logits upsampled ×4 (the official code hard-codes 160×160).

The feature of modality m is one tensor (the strategies' contract): its ASPP output upsampled
bilinearly (align_corners) to the layer1 resolution, concatenated with layer1 along channels,
(B, 256 + 256, H/4, W/4). The official decoder performs that same upsampling after concatenating the
modalities; bilinear interpolation acts per channel, so the fused prediction is identical. Zeroed
features of a modality equal the official zero-filled ASPP and low-level inputs of a missing one.

Deviations from the official code: none in the architecture. The released training step selects the
parameters to rescale by the names `vision_encoder` / `text_encoder` (zrguo/CGGM@21e428c
src/segtrain.py:106–110), which no parameter of this model has (its encoders are `backbone1..4`), so
the released magnitude modulation rescales nothing: `released_scaled_parameters` is empty and CGGM's
official variant leaves the encoder gradients as they are. `scaled="encoder"` (our correction)
rescales each backbone and its ASPP, `encoders[m]` (docs/methods.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import MultimodalModel, Output
from .deeplab import ASPP, Decoder, ResNet, kaiming_init
from .unet import MultiEncoderUNet, check_image_size

#: modality order of the official BraTS code (backbone1..4) and of the BraTS h5 `image` channels
BRATS_ORDER = ("flair", "t1ce", "t1", "t2")


def _upsample(x: torch.Tensor, size=None, scale: int | None = None) -> torch.Tensor:
    return F.interpolate(x, size=size, scale_factor=None if size is not None else scale, mode="bilinear",
                         align_corners=True)


class DeepLabEncoder(nn.Module):
    """Encoder φ_m: ResNet → ASPP; returns cat(upsampled ASPP, layer1) (B, 512, H/4, W/4)."""

    def __init__(self, in_channels: int = 1, depth: int = 101, width: int = 64, output_stride: int = 16,
                 aspp_channels: int = 256, aspp_dilations: tuple = (1, 2, 4, 6), blocks: tuple | None = None):
        super().__init__()
        self.backbone = ResNet(in_channels, depth, width, output_stride, blocks=blocks)
        self.aspp = ASPP(self.backbone.out_channels, aspp_channels, aspp_dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, low = self.backbone(x)
        return torch.cat([_upsample(self.aspp(top), size=low.shape[-2:]), low], dim=1)


class DeepLabClassifier(nn.Module):
    """CGGM classifier f_m: single-input DeepLabV3+ decoder, `out_layer` 1×1 conv, logits upsampled ×4."""

    def __init__(self, aspp_channels: int, low_channels: int, num_outputs: int, decoder_channels: int = 256):
        super().__init__()
        self.aspp_channels = aspp_channels
        self.decoder = Decoder(1, aspp_channels, low_channels, channels=decoder_channels)
        self.out_layer = nn.Conv2d(decoder_channels, num_outputs, 1)
        kaiming_init(self.out_layer)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        aspp, low = feature.split([self.aspp_channels, feature.shape[1] - self.aspp_channels], dim=1)
        return _upsample(self.out_layer(self.decoder(aspp, low)), scale=4)


class DeepLabMultiInput(MultimodalModel):
    """Four DeepLabV3+ encoders (ResNet-101 + ASPP), one shared decoder, `out_layer` to 4 classes.

    `input_dims`: modality -> (C, H, W) (or C); H and W must be multiples of 16 (the output stride).
    `depth`/`width`/`blocks` shrink the backbone for tests (e.g. blocks=(1, 1, 1), width=8).
    """

    def __init__(self, input_dims: dict, num_outputs: int = 4, depth: int = 101, width: int = 64,
                 output_stride: int = 16, aspp_channels: int = 256, aspp_dilations: tuple = (1, 2, 4, 6),
                 decoder_channels: int = 256, blocks: tuple | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict({
            m: DeepLabEncoder(_channels(d), depth, width, output_stride, aspp_channels, aspp_dilations, blocks)
            for m, d in input_dims.items()})
        low = next(iter(self.encoders.values())).backbone.low_channels
        self.aspp_channels, self.low_channels, self.num_outputs = aspp_channels, low, num_outputs
        self.decoder_channels, self.stride = decoder_channels, 16
        self.decoder = Decoder(len(input_dims), aspp_channels, low, channels=decoder_channels)
        self.out_layer = nn.Conv2d(decoder_channels, num_outputs, 1)
        kaiming_init(self.out_layer)

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_image_size(inputs, self.stride)
        return super().encode(inputs)

    def fuse(self, features: dict[str, torch.Tensor], size=None) -> torch.Tensor:
        """Ω: shared decoder on the concatenated ASPP and layer1 parts, `out_layer`, upsampled to `size` (×4)."""
        parts = [features[m].split([self.aspp_channels, self.low_channels], dim=1) for m in self.encoders]
        h = self.decoder(torch.cat([a for a, _ in parts], dim=1), torch.cat([low for _, low in parts], dim=1))
        return _upsample(self.out_layer(h), size=size, scale=4)

    def forward(self, inputs: dict[str, torch.Tensor]) -> Output:
        features = self.encode(inputs)
        return Output(self.fuse(features, size=next(iter(inputs.values())).shape[-2:]), features)

    def modality_classifier(self, modality: str) -> nn.Module:
        return DeepLabClassifier(self.aspp_channels, self.low_channels, self.num_outputs, self.decoder_channels)

    def released_scaled_parameters(self, modality: str) -> list[nn.Parameter]:
        """None: the released BraTS step's name filter matches no parameter of this model."""
        return []


def _channels(d) -> int:
    return int(d[0]) if isinstance(d, (tuple, list)) else int(d)


def build_brats(data, arch: str = "unet", deeplab: dict | None = None, unet: dict | None = None) -> MultimodalModel:
    """The BraTS model: arch="deeplab" (the paper's DeepLabV3+) or "unet" (light, CPU/Colab).

    `deeplab` and `unet` hold each architecture's keyword arguments, so a preset can size both and
    `model_kwargs={"arch": "unet"}` switches architecture without touching sizes.
    """
    dims = {m: data.input_dims[m] for m in BRATS_ORDER} if set(BRATS_ORDER) == set(data.input_dims) \
        else dict(data.input_dims)
    if arch == "deeplab":
        return DeepLabMultiInput(dims, data.num_outputs, **(deeplab or {}))
    if arch == "unet":
        return MultiEncoderUNet(dims, data.num_outputs, **(unet or {}))
    raise ConfigError(f"brats2021: arch must be 'deeplab' (the paper's DeepLabV3+) or 'unet' (light), got {arch!r}")
