"""3D U-Net in the style of nnU-Net (Isensee et al. 2021) = `unet`: the fast convolutional reference.

Each level is (conv, instance norm, leaky ReLU) x 2; levels after the first down-sample with a strided first
conv, whose per-axis stride can skip z for anisotropic stacks; the decoder up-samples by transposed conv
(kernel = stride), concatenates the skip and applies another level block. Also 2D (`spatial_dims=2`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ConvBlock, SegMarkerHeads, init_weights, per_axis, up_conv


def default_strides(levels: int, spatial_dims: int) -> list[tuple[int, ...]]:
    """None at level 0; in 3D level 1 keeps z (anisotropic microscopy stacks); 2 on every axis after."""
    strides = [(1,) * spatial_dims]
    for level in range(1, levels):
        strides.append((1, 2, 2) if spatial_dims == 3 and level == 1 else (2,) * spatial_dims)
    return strides


class UNet(nn.Module):
    """U-Net with segmentation and marker heads. Input [B, in_channels, *S], S a multiple of `size_divisor`
    (the product of the strides per axis); output (seg_logits [B, 3, *S], marker_logits [B, 1, *S]).

    `features[i]` channels at level i; `strides[i]` (int or per axis) down-samples into level i (strides[0]
    is usually 1)."""

    name = "unet"

    def __init__(self, in_channels: int = 1, features=(8, 16, 32, 64, 128), strides=None,
                 spatial_dims: int = 3, use_checkpoint: bool = False):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        if strides is None:
            strides = default_strides(len(features), spatial_dims)
        if len(strides) != len(features):
            raise ValueError(f"one stride per level: {len(features)} features but {len(strides)} strides")
        strides = [per_axis(s, spatial_dims, "strides[i]") for s in strides]
        self.config = dict(in_channels=in_channels, features=list(features), strides=[list(s) for s in strides],
                           spatial_dims=spatial_dims, use_checkpoint=use_checkpoint)
        self.size_divisor = tuple(math.prod(axis) for axis in zip(*strides))
        self.use_checkpoint = use_checkpoint
        n = spatial_dims

        channels = [in_channels, *features]
        self.encoder = nn.ModuleList(ConvBlock(n, channels[i], channels[i + 1], strides[i])
                                     for i in range(len(features)))
        self.upsample = nn.ModuleList(up_conv(n, features[i + 1], features[i], strides[i + 1])
                                      for i in reversed(range(len(features) - 1)))
        self.decoder = nn.ModuleList(ConvBlock(n, 2 * features[i], features[i])
                                     for i in reversed(range(len(features) - 1)))
        self.heads = SegMarkerHeads(n, features[0])
        self.apply(init_weights)

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, x):
        if any(s % d for s, d in zip(x.shape[2:], self.size_divisor)):
            raise ValueError(f"input size {tuple(x.shape[2:])} is not a multiple of {self.size_divisor}")
        skips = []
        for block in self.encoder:                     # level i: [B, features[i], *S / prod(strides[:i+1])]
            x = self._run(block, x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.upsample, self.decoder):
            x = self._run(block, torch.cat((up(x), skips.pop()), dim=1))   # one level up
        return self.heads(x)
