"""UNETR (Hatamizadeh et al. 2021, "UNETR: Transformers for 3D Medical Image Segmentation") = `vit_unet`.

A ViT encodes the image as patch tokens; the outputs of evenly spaced transformer blocks (z3, z6, z9 of 12)
are reshaped to feature maps and brought up by deconvolution stacks to 1/8, 1/4 and 1/2 resolution, the last
block (z12) is the bottleneck, and a U-Net decoder merges them with a full-resolution conv skip from the image.

Beyond MONAI's UNETR: `patch_size` may differ per axis (e.g. (4, 16, 16) for anisotropic z; each entry a power
of two), `num_layers` is free, any input whose size is a multiple of `patch_size` is accepted (the position
embedding is interpolated), and the output is a pair of heads (segmentation, marker).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import ResBlock, SegMarkerHeads, UnetrPrUpBlock, UnetrUpBlock, init_weights, per_axis
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


class UNETR(nn.Module):
    """UNETR with segmentation and marker heads. Input [B, in_channels, *S], S a multiple of `patch_size`;
    output (seg_logits [B, 3, *S], marker_logits [B, 1, *S])."""

    name = "vit_unet"

    def __init__(self, in_channels: int = 1, img_size=None, patch_size=None, feature_size: int = 16,
                 hidden_size: int = 192, mlp_dim: int = 768, num_layers: int = 12, num_heads: int = 3,
                 dropout_rate: float = 0.0, qkv_bias: bool = False, spatial_dims: int = 3,
                 use_checkpoint: bool = False):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        img_size = per_axis(DEFAULT_IMG_SIZE[-spatial_dims:] if img_size is None else img_size, spatial_dims,
                            "img_size")
        patch_size = per_axis(DEFAULT_PATCH_SIZE[-spatial_dims:] if patch_size is None else patch_size,
                              spatial_dims, "patch_size")
        if any(s % p for s, p in zip(img_size, patch_size)):
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.config = dict(in_channels=in_channels, img_size=list(img_size), patch_size=list(patch_size),
                           feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim,
                           num_layers=num_layers, num_heads=num_heads, dropout_rate=dropout_rate,
                           qkv_bias=qkv_bias, spatial_dims=spatial_dims, use_checkpoint=use_checkpoint)
        self.size_divisor = patch_size
        # 0-based indices of the blocks whose outputs become the 1/2, 1/4 and 1/8 skips (z3, z6, z9 of 12)
        self.skip_layers = tuple(max(num_layers * i // 4, 1) - 1 for i in (1, 2, 3))
        s1, s2, s3, s4 = decoder_scales(patch_size)
        f, n = feature_size, spatial_dims

        self.vit = ViT(in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads,
                       dropout_rate, qkv_bias, spatial_dims, use_checkpoint)
        self.encoder1 = ResBlock(n, in_channels, f)                         # full resolution, from the image
        self.encoder2 = UnetrPrUpBlock(n, hidden_size, 2 * f, [s4, s3, s2])  # z3 → 1/2
        self.encoder3 = UnetrPrUpBlock(n, hidden_size, 4 * f, [s4, s3])      # z6 → 1/4
        self.encoder4 = UnetrPrUpBlock(n, hidden_size, 8 * f, [s4])          # z9 → 1/8
        self.decoder5 = UnetrUpBlock(n, hidden_size, 8 * f, s4)              # z12 → 1/8
        self.decoder4 = UnetrUpBlock(n, 8 * f, 4 * f, s3)                    # → 1/4
        self.decoder3 = UnetrUpBlock(n, 4 * f, 2 * f, s2)                    # → 1/2
        self.decoder2 = UnetrUpBlock(n, 2 * f, f, s1)                        # → full resolution
        self.heads = SegMarkerHeads(n, f)
        self.apply(init_weights)

    @staticmethod
    def proj_feat(tokens: torch.Tensor, grid: tuple) -> torch.Tensor:
        """Tokens [B, N, hidden] → feature map [B, hidden, *grid]."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid).contiguous()

    def forward(self, x_in):
        if any(s % p for s, p in zip(x_in.shape[2:], self.size_divisor)):
            raise ValueError(f"input size {tuple(x_in.shape[2:])} is not a multiple of patch_size {self.size_divisor}")
        x, hidden_states, grid = self.vit(x_in)                        # grid = S / patch_size
        # resolutions below for patch 16; per axis, the decoder scales of a smaller patch are 1 at coarse stages
        enc1 = self.encoder1(x_in)                                     # [B, f, *S]
        enc2 = self.encoder2(self.proj_feat(hidden_states[self.skip_layers[0]], grid))  # [B, 2f, *S/2]
        enc3 = self.encoder3(self.proj_feat(hidden_states[self.skip_layers[1]], grid))  # [B, 4f, *S/4]
        enc4 = self.encoder4(self.proj_feat(hidden_states[self.skip_layers[2]], grid))  # [B, 8f, *S/8]
        dec4 = self.proj_feat(x, grid)                                 # [B, hidden, *S/16]
        dec3 = self.decoder5(dec4, enc4)                               # [B, 8f, *S/8]
        dec2 = self.decoder4(dec3, enc3)                               # [B, 4f, *S/4]
        dec1 = self.decoder3(dec2, enc2)                               # [B, 2f, *S/2]
        out = self.decoder2(dec1, enc1)                                # [B, f, *S]
        return self.heads(out)
