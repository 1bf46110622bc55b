"""Swin-UNETR (Hatamizadeh et al. 2022, arXiv 2201.01266) = `swinunetr`.

A Swin Transformer encodes the image at 1/2 .. 1/32 resolution (patch 2, four stages with patch merging);
residual conv blocks refine the image and the five encoder feature maps, and a residual conv decoder with
transposed-conv up-sampling merges them back to full resolution (MONAI's layout, names and parameter count).

Beyond MONAI: inputs of any size (zero-padded inside to a multiple of patch_size * 16, outputs cropped back),
window attention through `F.scaled_dot_product_attention`, and segmentation + marker heads.
"""
from __future__ import annotations

from torch import nn

from .blocks import ResBlock, SegMarkerHeads, UnetrUpBlock, constructor_config, init_weights, pad_to_multiple, per_axis
from .swin import SwinTransformer


class SwinUNETR(nn.Module):
    """Swin-UNETR with segmentation and marker heads. Input [B, in_channels, *S], any S;
    output (seg_logits [B, 3, *S], marker_logits [B, 1, *S])."""

    name = "swinunetr"

    def __init__(self, in_channels: int = 1, feature_size: int = 12, patch_size=2, depths=(2, 2, 2, 2),
                 num_heads=(3, 6, 12, 24), window_size=4, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, dropout_path_rate: float = 0.0,
                 spatial_dims: int = 3, use_checkpoint: bool = False):
        """
        Args:
            in_channels: image channels.
            feature_size: channels of the patch embedding (2^i x at stage i) and of the decoder's finest level.
            patch_size: patch of the embedding (int or per axis); the encoder works at 1/patch .. 1/(16 patch).
            depths: Swin blocks per stage (four stages).
            num_heads: attention heads per stage; feature_size * 2**i must be a multiple of num_heads[i].
            window_size: attention window (int or per axis), shrunk along axes shorter than it.
            mlp_ratio: MLP width / token width.
            qkv_bias: whether the query/key/value projections have a bias.
            drop_rate: dropout after the embedding, in the MLPs and after attention.
            attn_drop_rate: dropout on the attention weights.
            dropout_path_rate: stochastic depth, growing linearly to this rate over the blocks.
            spatial_dims: 2 or 3.
            use_checkpoint: gradient checkpointing of the Swin blocks (less memory, one more forward).
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError("the Swin-UNETR decoder needs exactly four stages: len(depths) == len(num_heads) == 4")
        if any(feature_size * 2 ** i % h for i, h in enumerate(num_heads)):
            raise ValueError(f"feature_size * 2**i must be divisible by num_heads[i] (feature_size {feature_size}, "
                             f"num_heads {tuple(num_heads)})")
        patch_size = per_axis(patch_size, spatial_dims, "patch_size")
        window_size = per_axis(window_size, spatial_dims, "window_size")
        self.config = constructor_config(SwinUNETR.__init__, locals())
        self.size_divisor = (1,) * spatial_dims             # any size: padded inside ...
        self.pad_multiple = tuple(p * 16 for p in patch_size)   # ... to a multiple of this (cheapest input sizes)
        f, n = feature_size, spatial_dims

        self.swin_vit = SwinTransformer(
            in_channels=in_channels, embed_dim=f, window_size=window_size, patch_size=patch_size, depths=depths,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=dropout_path_rate, spatial_dims=n,
            use_checkpoint=use_checkpoint)
        self.encoder1 = ResBlock(spatial_dims=n, in_channels=in_channels, out_channels=f)    # image, 1/1
        self.encoder2 = ResBlock(spatial_dims=n, in_channels=f, out_channels=f)              # embedding, 1/2
        self.encoder3 = ResBlock(spatial_dims=n, in_channels=2 * f, out_channels=2 * f)      # stage 1, 1/4
        self.encoder4 = ResBlock(spatial_dims=n, in_channels=4 * f, out_channels=4 * f)      # stage 2, 1/8
        self.encoder10 = ResBlock(spatial_dims=n, in_channels=16 * f, out_channels=16 * f)  # stage 4, 1/32 (bottleneck)
        self.decoder5 = UnetrUpBlock(spatial_dims=n, in_channels=16 * f, out_channels=8 * f, scale=2)
        self.decoder4 = UnetrUpBlock(spatial_dims=n, in_channels=8 * f, out_channels=4 * f, scale=2)
        self.decoder3 = UnetrUpBlock(spatial_dims=n, in_channels=4 * f, out_channels=2 * f, scale=2)
        self.decoder2 = UnetrUpBlock(spatial_dims=n, in_channels=2 * f, out_channels=f, scale=2)
        self.decoder1 = UnetrUpBlock(spatial_dims=n, in_channels=f, out_channels=f, scale=patch_size)
        self.heads = SegMarkerHeads(spatial_dims=n, in_channels=f)
        self.apply(init_weights)

    def forward(self, x_in):
        x_in, crop = pad_to_multiple(x_in, self.pad_multiple)   # [B, C, *P], P = S rounded up to pad_multiple
        hidden_states = self.swin_vit(x_in)
        enc0 = self.encoder1(x_in)                     # [B, f, *P]
        enc1 = self.encoder2(hidden_states[0])         # [B, f, *P/2]
        enc2 = self.encoder3(hidden_states[1])         # [B, 2f, *P/4]
        enc3 = self.encoder4(hidden_states[2])         # [B, 4f, *P/8]
        dec4 = self.encoder10(hidden_states[4])        # [B, 16f, *P/32]
        dec3 = self.decoder5(dec4, hidden_states[3])   # [B, 8f, *P/16]
        dec2 = self.decoder4(dec3, enc3)               # [B, 4f, *P/8]
        dec1 = self.decoder3(dec2, enc2)               # [B, 2f, *P/4]
        dec0 = self.decoder2(dec1, enc1)               # [B, f, *P/2]
        out = self.decoder1(dec0, enc0)                # [B, f, *P]
        seg, marker = self.heads(out)
        if crop is not None:
            seg, marker = seg[crop].contiguous(), marker[crop].contiguous()
        return seg, marker
