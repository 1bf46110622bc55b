"""Swin-UNETR (Hatamizadeh et al. 2022, arXiv 2201.01266) = `swinunetr`.

A Swin Transformer encodes the image at 1/2 .. 1/32 resolution (patch 2, four stages with patch merging);
residual conv blocks refine the image and the five encoder feature maps, and a residual conv decoder with
transposed-conv up-sampling merges them back to full resolution (MONAI's layout, names and parameter count).

Beyond MONAI: inputs of any size (zero-padded inside to a multiple of patch_size * 16, outputs cropped back),
window attention through `F.scaled_dot_product_attention`, and segmentation + marker heads.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, SegMarkerHeads, UnetrUpBlock, init_weights, per_axis
from .swin import SwinTransformer


class SwinUNETR(nn.Module):
    """Swin-UNETR with segmentation and marker heads. Input [B, in_channels, *S], any S;
    output (seg_logits [B, 3, *S], marker_logits [B, 1, *S])."""

    name = "swinunetr"

    def __init__(self, in_channels: int = 1, feature_size: int = 12, patch_size=2, depths=(2, 2, 2, 2),
                 num_heads=(3, 6, 12, 24), window_size=4, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, dropout_path_rate: float = 0.0,
                 spatial_dims: int = 3, use_checkpoint: bool = False):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError("the Swin-UNETR decoder needs exactly four stages: len(depths) == len(num_heads) == 4")
        if any(feature_size * 2 ** i % h for i, h in enumerate(num_heads)):
            raise ValueError(f"feature_size * 2**i must be divisible by num_heads[i] (feature_size {feature_size}, "
                             f"num_heads {tuple(num_heads)})")
        patch = per_axis(patch_size, spatial_dims, "patch_size")
        window = per_axis(window_size, spatial_dims, "window_size")
        self.config = dict(in_channels=in_channels, feature_size=feature_size, patch_size=list(patch),
                           depths=list(depths), num_heads=list(num_heads), window_size=list(window),
                           mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                           dropout_path_rate=dropout_path_rate, spatial_dims=spatial_dims,
                           use_checkpoint=use_checkpoint)
        self.size_divisor = (1,) * spatial_dims       # any size: padded inside ...
        self.pad_multiple = tuple(p * 16 for p in patch)   # ... to a multiple of this (cheapest input sizes)
        f, n = feature_size, spatial_dims

        self.swin_vit = SwinTransformer(in_channels, f, window, patch, depths, num_heads, mlp_ratio, qkv_bias,
                                        drop_rate, attn_drop_rate, dropout_path_rate, spatial_dims, use_checkpoint)
        self.encoder1 = ResBlock(n, in_channels, f)    # image, full resolution
        self.encoder2 = ResBlock(n, f, f)              # embedding, 1/2
        self.encoder3 = ResBlock(n, 2 * f, 2 * f)      # stage 1, 1/4
        self.encoder4 = ResBlock(n, 4 * f, 4 * f)      # stage 2, 1/8
        self.encoder10 = ResBlock(n, 16 * f, 16 * f)   # stage 4, 1/32 (bottleneck)
        self.decoder5 = UnetrUpBlock(n, 16 * f, 8 * f, 2)
        self.decoder4 = UnetrUpBlock(n, 8 * f, 4 * f, 2)
        self.decoder3 = UnetrUpBlock(n, 4 * f, 2 * f, 2)
        self.decoder2 = UnetrUpBlock(n, 2 * f, f, 2)
        self.decoder1 = UnetrUpBlock(n, f, f, patch)
        self.heads = SegMarkerHeads(n, f)
        self.apply(init_weights)

    def forward(self, x_in):
        size = x_in.shape[2:]
        pad = [(-s) % m for s, m in zip(size, self.pad_multiple)]
        if any(pad):
            x_in = F.pad(x_in, [v for p in reversed(pad) for v in (0, p)])
        hidden_states = self.swin_vit(x_in)
        enc0 = self.encoder1(x_in)                     # [B, f, *S]
        enc1 = self.encoder2(hidden_states[0])         # [B, f, *S/2]
        enc2 = self.encoder3(hidden_states[1])         # [B, 2f, *S/4]
        enc3 = self.encoder4(hidden_states[2])         # [B, 4f, *S/8]
        dec4 = self.encoder10(hidden_states[4])        # [B, 16f, *S/32]
        dec3 = self.decoder5(dec4, hidden_states[3])   # [B, 8f, *S/16]
        dec2 = self.decoder4(dec3, enc3)               # [B, 4f, *S/8]
        dec1 = self.decoder3(dec2, enc2)               # [B, 2f, *S/4]
        dec0 = self.decoder2(dec1, enc1)               # [B, f, *S/2]
        out = self.decoder1(dec0, enc0)                # [B, f, *S]
        seg, marker = self.heads(out)
        if any(pad):
            crop = (slice(None), slice(None), *(slice(0, s) for s in size))
            seg, marker = seg[crop].contiguous(), marker[crop].contiguous()
        return seg, marker
