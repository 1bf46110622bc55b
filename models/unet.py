"""3D U-Net in the style of nnU-Net (Isensee et al. 2021) = `unet`: the fast convolutional reference.

Each level is (conv, instance norm, leaky ReLU) x 2; levels after the first down-sample with a strided first
conv, whose per-axis stride can skip z for anisotropic stacks; the decoder up-samples by transposed conv
(kernel = stride), concatenates the skip and applies another level block. Also 2D (`spatial_dims=2`).
Inputs of any size are accepted: zero-padded inside to a multiple of the total stride, outputs cropped back
(as Swin-UNETR does).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ConvBlock, SegMarkerHeads, constructor_config, init_weights, pad_to_multiple, per_axis, up_conv


def default_strides(levels: int, spatial_dims: int) -> list[tuple[int, ...]]:
    """None at level 0; in 3D level 1 keeps z (anisotropic microscopy stacks); 2 on every axis after."""
    strides = [(1,) * spatial_dims]
    for level in range(1, levels):
        strides.append((1, 2, 2) if spatial_dims == 3 and level == 1 else (2,) * spatial_dims)
    return strides


class UNet(nn.Module):
    """U-Net with segmentation and marker heads. Input [B, in_channels, *S], any S (padded inside to a multiple
    of `pad_multiple`, the product of the strides per axis); output (seg_logits [B, 3, *S], marker_logits
    [B, 1, *S])."""

    name = "unet"

    def __init__(self, in_channels: int = 1, features=(8, 16, 32, 64, 128), strides=None,
                 spatial_dims: int = 3, use_checkpoint: bool = False):
        """
        Args:
            in_channels: image channels.
            features: channels of each level, finest first (one level per entry).
            strides: per level, the stride (int or per axis) of its first conv, i.e. the down-sampling into that
                level; strides[0] is usually 1. Default: 1, then (1, 2, 2) in 3D (anisotropic z), then 2.
            spatial_dims: 2 or 3.
            use_checkpoint: gradient checkpointing of every level block (less memory, one more forward).
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        if strides is None:
            strides = default_strides(len(features), spatial_dims)
        if len(strides) != len(features):
            raise ValueError(f"one stride per level: {len(features)} features but {len(strides)} strides")
        strides = [per_axis(s, spatial_dims, "strides[i]") for s in strides]
        self.config = constructor_config(UNet.__init__, locals())
        self.size_divisor = (1,) * spatial_dims                              # any size: padded inside ...
        self.pad_multiple = tuple(math.prod(axis) for axis in zip(*strides))  # ... to a multiple of this
        self.use_checkpoint = use_checkpoint
        n = spatial_dims

        channels = [in_channels, *features]
        self.encoder = nn.ModuleList(
            ConvBlock(spatial_dims=n, in_channels=channels[i], out_channels=channels[i + 1], stride=strides[i])
            for i in range(len(features)))
        self.upsample = nn.ModuleList(up_conv(n, features[i + 1], features[i], strides[i + 1])
                                      for i in reversed(range(len(features) - 1)))
        self.decoder = nn.ModuleList(
            ConvBlock(spatial_dims=n, in_channels=2 * features[i], out_channels=features[i])
            for i in reversed(range(len(features) - 1)))
        self.heads = SegMarkerHeads(spatial_dims=n, in_channels=features[0])
        self.apply(init_weights)

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, x):
        x, crop = pad_to_multiple(x, self.pad_multiple)  # [B, C, *P], P = S rounded up to pad_multiple
        skips = []
        for block in self.encoder:                     # level i: [B, features[i], *P / prod(strides[:i+1])]
            x = self._run(block, x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.upsample, self.decoder):
            x = self._run(block, torch.cat((up(x), skips.pop()), dim=1))   # one level up
        seg, marker = self.heads(x)                    # [B, 3, *P], [B, 1, *P]
        if crop is not None:
            seg, marker = seg[crop].contiguous(), marker[crop].contiguous()
        return seg, marker
