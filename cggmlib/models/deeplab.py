"""DeepLabV3+ parts for BraTS: a dilated ResNet backbone, ASPP and the decoder, from MONAI blocks.

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation"
(DeepLabV3+), ECCV 2018; He et al., ResNet, CVPR 2016. As CGGM's BraTS model uses them:
Reference code: zrguo/CGGM@21e428c models/segmodel.py (`ResNet`, `Bottleneck`, `ASPP`, `Decoder`).

Built from `monai.networks.blocks.Convolution` (conv + BatchNorm + ReLU). MONAI's own `ResNet` has no
dilation or multi-grid, and its `SimpleASPP` has neither per-branch BatchNorm nor the image-pooling
branch, so the backbone and ASPP are assembled here from its convolution block.

- `ResNet`: 7×7/2 stem, 3×3/2 max-pool, four stages of bottlenecks; output stride 16 uses strides
  [1, 2, 2, 1], dilations [1, 1, 1, 2] and multi-grid [1, 2, 4] in the last stage (ResNet-101:
  blocks [3, 4, 23, 3]; `blocks` and `width` shrink it for tests). Returns the last stage (2048 ch at 1/16) and layer1 (256 ch at 1/4).
- `ASPP`: 1×1 and three 3×3 atrous branches (dilations [1, 2, 4, 6], the official code's change from
  DeepLab's [1, 6, 12, 18]) plus image pooling, each 256 ch with BN + ReLU; 1×1 projection, Dropout .5.
- `Decoder(heads)`: the low-level features of `heads` inputs (heads·256 ch) → 1×1 conv to 48 ch;
  concatenated with the upsampled ASPP outputs (heads·256 ch); 3×3 conv to 256 and `last_conv`
  (BN, ReLU, Dropout .5, 3×3 conv, BN, ReLU, Dropout .1). The final 1×1 conv (`out_layer`) is kept by
  the caller, so the fused model and each CGGM classifier expose it under the same name.
Initialisation as the official code: backbone convs N(0, 2/fan_out), ASPP/decoder convs Kaiming
normal (fan_in), BatchNorm weight 1 and bias 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

#: bottlenecks in layers 1–3 per depth; layer4 has one per multi-grid entry (3 for both)
RESNET_BLOCKS = {50: (3, 4, 6), 101: (3, 4, 23)}


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, dilation: int = 1, act: bool = True) -> Convolution:
    """Conv2d (no bias, 'same' padding) → BatchNorm → ReLU (or no activation)."""
    return Convolution(2, cin, cout, strides=stride, kernel_size=kernel, dilation=dilation, act="RELU" if act else None,
                       norm="BATCH", bias=False)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1×1 → 3×3 (stride, dilation) → 1×1 (4× width), residual, ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(conv_bn(cin, planes, 1), conv_bn(planes, planes, 3, stride, dilation),
                                  conv_bn(planes, cout, 1, act=False))
        self.downsample = conv_bn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.downsample(x))


class ResNet(nn.Module):
    """Dilated ResNet for DeepLab: image (B, C, H, W) → (last stage (B, 8w·4, H/16, W/16), layer1 (B, 4w, H/4, W/4))."""

    def __init__(self, in_channels: int = 1, depth: int = 101, width: int = 64, output_stride: int = 16,
                 multi_grid: tuple = (1, 2, 4), blocks: tuple | None = None):
        super().__init__()
        blocks = tuple(blocks or RESNET_BLOCKS[depth])
        if output_stride == 16:
            strides, dilations = (1, 2, 2, 1), (1, 1, 1, 2)
        elif output_stride == 8:
            strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        else:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.stem = nn.Sequential(conv_bn(in_channels, width, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.cin = width
        self.layer1 = self._stage(width, [dilations[0]] * blocks[0], strides[0])
        self.layer2 = self._stage(2 * width, [dilations[1]] * blocks[1], strides[1])
        self.layer3 = self._stage(4 * width, [dilations[2]] * blocks[2], strides[2])
        self.layer4 = self._stage(8 * width, [g * dilations[3] for g in multi_grid], strides[3])
        self.out_channels, self.low_channels = 8 * width * Bottleneck.expansion, width * Bottleneck.expansion
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, planes: int, dilations: list, stride: int) -> nn.Sequential:
        layers = []
        for i, d in enumerate(dilations):
            layers.append(Bottleneck(self.cin, planes, stride if i == 0 else 1, d))
            self.cin = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return self.layer4(self.layer3(self.layer2(low))), low


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: four atrous branches + image pooling → 1×1 conv → Dropout(.5)."""

    def __init__(self, in_channels: int = 2048, channels: int = 256, dilations: tuple = (1, 2, 4, 6),
                 dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(conv_bn(in_channels, channels, 1 if i == 0 else 3, dilation=d)
                                      for i, d in enumerate(dilations))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn(in_channels, channels, 1))
        self.project = nn.Sequential(conv_bn(channels * (len(dilations) + 1), channels, 1), nn.Dropout(dropout))
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            # batch statistics of one 1×1 map are undefined (BatchNorm raises); use the running ones
            self.pool[1].adn.N.eval()
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])  # bilinear upsampling of a 1×1 map is a broadcast
        self.pool[1].adn.N.train(self.training)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class Decoder(nn.Module):
    """DeepLabV3+ decoder of `heads` inputs without its final 1×1 conv: (aspp, low) → (B, 256, H/4, W/4)."""

    def __init__(self, heads: int = 1, aspp_channels: int = 256, low_channels: int = 256, low_out: int = 48,
                 channels: int = 256, dropouts: tuple = (0.5, 0.1)):
        super().__init__()
        self.low = conv_bn(heads * low_channels, low_out, 1)
        self.merge = nn.Conv2d(heads * aspp_channels + low_out, channels, 3, padding=1, bias=False)
        self.last_conv = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.Dropout(dropouts[0]),
                                       conv_bn(channels, channels, 3), nn.Dropout(dropouts[1]))
        self.out_channels = channels
        kaiming_init(self)

    def forward(self, aspp: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """aspp: (B, heads·256, h, w) already at the low-level resolution; low: (B, heads·256, h, w)."""
        return self.last_conv(self.merge(torch.cat([aspp, self.low(low)], dim=1)))


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal (fan_in) weights for every Conv2d in `module`, as the official ASPP and decoder."""
    for mod in module.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight)
