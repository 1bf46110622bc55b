"""UNETR (Hatamizadeh et al. 2021, "UNETR: Transformers for 3D Medical Image Segmentation") = `vit_unet`.

A ViT encodes the image as patch tokens; the outputs of three transformer blocks (z3, z6, z9 of 12; in general
blocks L/4, L/2 and 3L/4 of L, rounded down, counting from 1, see `skip_layers`) are reshaped to feature maps
and brought up by deconvolution stacks to 1/2, 1/4 and 1/8 resolution, the normalised output of the last block
(z12) is the bottleneck, and a U-Net decoder merges them with a full-resolution conv skip from the image.

The decoder runs channels-last (`blocks.channels_last`): the tokens already are a channels-last map, and
oneDNN's channels-last convolutions are 1.2-1.7x faster than its channels-first ones at these channel counts
(see `bench/models.py`); the outputs are returned in the usual channels-first layout.

Beyond MONAI's UNETR: `patch_size` may differ per axis (e.g. (4, 16, 16) for anisotropic z; each entry a power
of two), `num_layers` is free, any input whose size is a multiple of `patch_size` is accepted (the position
embedding is interpolated), and the output is a pair of heads (segmentation, marker).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import (ResBlock, SegMarkerHeads, UnetrPrUpBlock, UnetrUpBlock, channels_last, constructor_config,
                     init_weights, per_axis)
from .vit import ViT

DEFAULT_IMG_SIZE = (32, 64, 64)
DEFAULT_PATCH_SIZE = (8, 16, 16)


def decoder_scales(patch_size: tuple) -> list[tuple[int, ...]]:
    """Per-axis up-sampling factors of the four decoder stages, finest first, multiplying up to `patch_size`.

    Patch 16 gives 2 at every stage, as in the paper; a smaller patch along an axis drops the coarse stages'
    up-sampling there (4 → 2, 2, 1, 1), a larger one puts the rest into the coarsest stage (32 → 2, 2, 2, 4).
    """
    per_axis_scales = []
    for p in patch_size:
        k = p.bit_length() - 1
        if p != 1 << k:
            raise ValueError(f"patch_size {patch_size}: every entry must be a power of two")
        per_axis_scales.append([2 if i < k else 1 for i in range(3)] + [2 ** max(k - 3, 0)])
    return [tuple(axis[i] for axis in per_axis_scales) for i in range(4)]


def skip_layers(num_layers: int) -> tuple[int, int, int]:
    """0-based indices of the transformer blocks whose outputs feed the 1/2, 1/4 and 1/8 skips: blocks
    L/4, L/2 and 3L/4 of L (rounded down, at least the first), i.e. z3, z6, z9 of 12; z1, z3, z4 of 6."""
    return tuple(max(num_layers * i // 4, 1) - 1 for i in (1, 2, 3))


class UNETR(nn.Module):
    """UNETR with segmentation and marker heads. Input [B, in_channels, *S], S a multiple of `patch_size`;
    output (seg_logits [B, 3, *S], marker_logits [B, 1, *S])."""

    name = "vit_unet"

    def __init__(self, in_channels: int = 1, img_size=None, patch_size=None, feature_size: int = 16,
                 hidden_size: int = 192, mlp_dim: int = 768, num_layers: int = 12, num_heads: int = 3,
                 dropout_rate: float = 0.0, qkv_bias: bool = False, spatial_dims: int = 3,
                 use_checkpoint: bool = False):
        """
        Args:
            in_channels: image channels.
            img_size: training image size (int or per axis; default 32x64x64, 2D 64x64). The learnt position
                embedding has its patch grid and is interpolated for other sizes.
            patch_size: ViT patch (int or per axis, powers of two; default 8x16x16, 2D 16x16).
            feature_size: channels of the decoder's full-resolution level (2x, 4x, 8x at the coarser ones).
            hidden_size: transformer width.
            mlp_dim: width of each transformer MLP.
            num_layers: transformer blocks; blocks L/4, L/2, 3L/4 feed the skips (see `skip_layers`).
            num_heads: attention heads (hidden_size must be a multiple).
            dropout_rate: dropout in the transformer.
            qkv_bias: whether the attention's query/key/value projection has a bias.
            spatial_dims: 2 or 3.
            use_checkpoint: gradient checkpointing of the transformer blocks (less memory, one more forward).
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        img_size = per_axis(DEFAULT_IMG_SIZE[-spatial_dims:] if img_size is None else img_size, spatial_dims,
                            "img_size")
        patch_size = per_axis(DEFAULT_PATCH_SIZE[-spatial_dims:] if patch_size is None else patch_size,
                              spatial_dims, "patch_size")
        if any(s % p for s, p in zip(img_size, patch_size)):
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.config = constructor_config(UNETR.__init__, locals())
        self.size_divisor = patch_size
        self.skip_layers = skip_layers(num_layers)
        s1, s2, s3, s4 = decoder_scales(patch_size)
        f, n = feature_size, spatial_dims

        self.vit = ViT(in_channels=in_channels, img_size=img_size, patch_size=patch_size, hidden_size=hidden_size,
                       mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, dropout_rate=dropout_rate,
                       qkv_bias=qkv_bias, spatial_dims=n, use_checkpoint=use_checkpoint)
        # resolutions for patch 16; along an axis with a smaller patch the coarse stages' scales are 1
        self.encoder1 = ResBlock(spatial_dims=n, in_channels=in_channels, out_channels=f)       # image → 1/1
        self.encoder2 = UnetrPrUpBlock(spatial_dims=n, in_channels=hidden_size, out_channels=2 * f,
                                       scales=[s4, s3, s2])                                     # z3 → 1/2
        self.encoder3 = UnetrPrUpBlock(spatial_dims=n, in_channels=hidden_size, out_channels=4 * f,
                                       scales=[s4, s3])                                         # z6 → 1/4
        self.encoder4 = UnetrPrUpBlock(spatial_dims=n, in_channels=hidden_size, out_channels=8 * f,
                                       scales=[s4])                                             # z9 → 1/8
        self.decoder5 = UnetrUpBlock(spatial_dims=n, in_channels=hidden_size, out_channels=8 * f, scale=s4)  # → 1/8
        self.decoder4 = UnetrUpBlock(spatial_dims=n, in_channels=8 * f, out_channels=4 * f, scale=s3)        # → 1/4
        self.decoder3 = UnetrUpBlock(spatial_dims=n, in_channels=4 * f, out_channels=2 * f, scale=s2)        # → 1/2
        self.decoder2 = UnetrUpBlock(spatial_dims=n, in_channels=2 * f, out_channels=f, scale=s1)            # → 1/1
        self.heads = SegMarkerHeads(spatial_dims=n, in_channels=f)
        self.apply(init_weights)

    @staticmethod
    def proj_feat(tokens: torch.Tensor, grid: tuple) -> torch.Tensor:
        """Tokens [B, N, hidden] → feature map [B, hidden, *grid], channels-last: a view, no copy."""
        return tokens.view(tokens.shape[0], *grid, tokens.shape[-1]).movedim(-1, 1)

    def forward(self, x_in):
        if any(s % p for s, p in zip(x_in.shape[2:], self.size_divisor)):
            raise ValueError(f"input size {tuple(x_in.shape[2:])} is not a multiple of patch_size {self.size_divisor}")
        x, hidden_states, grid = self.vit(x_in)                        # [B, N, hidden]; grid = S / patch_size
        # every map below is channels-last; resolutions for patch 16
        enc1 = self.encoder1(channels_last(x_in))                      # [B, f, *S]
        enc2 = self.encoder2(self.proj_feat(hidden_states[self.skip_layers[0]], grid))  # [B, 2f, *S/2]
        enc3 = self.encoder3(self.proj_feat(hidden_states[self.skip_layers[1]], grid))  # [B, 4f, *S/4]
        enc4 = self.encoder4(self.proj_feat(hidden_states[self.skip_layers[2]], grid))  # [B, 8f, *S/8]
        dec4 = self.proj_feat(x, grid)                                 # [B, hidden, *S/16]
        dec3 = self.decoder5(dec4, enc4)                               # [B, 8f, *S/8]
        dec2 = self.decoder4(dec3, enc3)                               # [B, 4f, *S/4]
        dec1 = self.decoder3(dec2, enc2)                               # [B, 2f, *S/2]
        out = self.decoder2(dec1, enc1)                                # [B, f, *S]
        seg, marker = self.heads(out)
        return seg.contiguous(), marker.contiguous()                   # channels-first [B, 3, *S], [B, 1, *S]
