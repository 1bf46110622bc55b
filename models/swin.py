"""Swin Transformer encoder (Liu et al. 2021) in the 3D form of Swin-UNETR (Hatamizadeh et al. 2022), also 2D.

Tokens stay channels-last, [B, *S, C], through every stage. Each stage is a stack of blocks that alternate
regular and shifted window multi-head self-attention (W-MSA / SW-MSA) with a learnt relative position bias,
followed by patch merging (2x down-sampling, channels doubled). Attention runs through the fused
`F.scaled_dot_product_attention`, with the position bias and the shift mask as its additive mask.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import CONV
from .vit import MLP


# --------------------------------------------------------------------------- windows
def window_partition(x: torch.Tensor, window: tuple) -> torch.Tensor:
    """[B, *S, C] → [B * num_windows, prod(window), C]; S must be a multiple of `window`."""
    b, *size, c = x.shape
    n = len(window)
    split = [d for s, w in zip(size, window) for d in (s // w, w)]
    x = x.view(b, *split, c)                                   # [B, S0/w0, w0, S1/w1, w1, ..., C]
    x = x.permute(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
    return x.reshape(-1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: tuple, batch: int, size: tuple) -> torch.Tensor:
    """Inverse of `window_partition`: [B * num_windows, prod(window), C] → [B, *size, C]."""
    n = len(window)
    grid = [s // w for s, w in zip(size, window)]
    x = windows.view(batch, *grid, *window, -1)                # [B, S0/w0, S1/w1, .., w0, w1, .., C]
    x = x.permute(0, *(a for i in range(n) for a in (1 + i, 1 + n + i)), 2 * n + 1)
    return x.reshape(batch, *size, -1)


def effective_window(size: tuple, window: tuple, shift: tuple) -> tuple[tuple, tuple]:
    """Along an axis no longer than the window, the window shrinks to the axis and does not shift (as Swin)."""
    window = tuple(min(s, w) for s, w in zip(size, window))
    shift = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))
    return window, shift


def shift_mask(size: tuple, window: tuple, shift: tuple, device) -> torch.Tensor:
    """SW-MSA mask [num_windows, N, N] for a padded map of `size` rolled by -`shift`: 0 between tokens that were
    neighbours before the roll, -100 between tokens that the cyclic shift brought into the same window."""
    regions = torch.zeros((), dtype=torch.long, device=device)
    for axis, (s, w, h) in enumerate(zip(size, window, shift)):
        r = torch.arange(s, device=device)
        region = (r >= s - w).long() + (r >= s - h).long()    # 0 body, 1 last window, 2 wrapped-around strip
        regions = regions.unsqueeze(-1) * 3 + region.view((1,) * axis + (s,))
    ids = window_partition(regions[None, ..., None], window).squeeze(-1)      # [num_windows, N]
    return torch.where(ids[:, :, None] == ids[:, None, :], 0.0, -100.0)


def relative_position_index(window: tuple, table_window: tuple, device=None) -> torch.Tensor:
    """[N, N] index into a relative-position bias table of prod(2 * table_window - 1) entries for the tokens
    of a window (which may be smaller than `table_window`)."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w, device=device) for w in window), indexing="ij"))
    coords = coords.flatten(1)                                 # [n, N]
    relative = coords[:, :, None] - coords[:, None, :]         # [n, N, N], each in (-w, w)
    index = torch.zeros_like(relative[0])
    for rel, w in zip(relative, table_window):
        index = index * (2 * w - 1) + rel + w - 1
    return index


# --------------------------------------------------------------------------- blocks
class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample with probability `p` while training."""

    def __init__(self, p: float):
        """
        Args:
            p: probability of dropping the branch for a sample.
        """
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learnt relative position bias per head."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple, qkv_bias: bool, attn_drop: float,
                 proj_drop: float):
        """
        Args:
            dim: token width; a multiple of num_heads.
            num_heads: attention heads.
            window_size: window per axis (the bias table's size; smaller windows index into it).
            qkv_bias: whether the fused query/key/value projection has a bias.
            attn_drop: dropout on the attention weights.
            proj_drop: dropout after the output projection.
        """
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in window_size), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02, a=-2.0, b=2.0)
        self.register_buffer("relative_position_index", relative_position_index(window_size, window_size),
                             persistent=False)
        self.qkv = nn.Linear(in_features=dim, out_features=3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(in_features=dim, out_features=dim)
        self.proj_drop = nn.Dropout(p=proj_drop)

    def relative_position_bias(self, window: tuple) -> torch.Tensor:
        """[heads, N, N] bias for the tokens of a (possibly shrunk) window."""
        index = (self.relative_position_index if window == self.window_size else
                 relative_position_index(window, self.window_size, self.relative_position_bias_table.device))
        return self.relative_position_bias_table.t()[:, index]

    def forward(self, x, window: tuple, mask):
        """x [B * num_windows, N, C]; mask [num_windows, N, N] for shifted windows, else None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                # [B * nW, heads, N, head_dim]
        bias = self.relative_position_bias(window)             # [heads, N, N]
        dropout = self.attn_drop if self.training else 0.0
        if bias.requires_grad and x.device.type == "cpu":
            x = self.unfused_attention(q, k, v, bias, mask, dropout)
        else:
            bias = bias.unsqueeze(0) if mask is None else bias + mask.unsqueeze(1)   # [1 or nW, heads, N, N]
            bias = bias.expand(bw // bias.shape[0], -1, -1, -1, -1).reshape(bw, -1, n, n)  # a view unless B > 1
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)
        x = x.transpose(1, 2).reshape(bw, n, c)                # [B * nW, N, C]
        return self.proj_drop(self.proj(x))

    @staticmethod
    def unfused_attention(q, k, v, bias, mask, dropout: float):
        """softmax(q k^T / sqrt(d) + bias + mask) v, written out. PyTorch's fused CPU kernels cannot return the
        gradient of a learnt bias and fall back to a slower unfused path (with extra passes for fully-masked
        rows, which cannot occur here); this is that path without the extra passes. Windows are split from the
        batch ([B, nW, ...]) so that bias and mask broadcast and are added in place to a fresh tensor."""
        bw, heads, n, d = q.shape
        nw = 1 if mask is None else mask.shape[0]
        q, k, v = (t.view(bw // nw, nw, heads, n, d) for t in (q, k, v))
        scores = (q * d ** -0.5) @ k.transpose(-2, -1)       # [B, nW, heads, N, N]
        scores += bias
        if mask is not None:
            scores += mask.unsqueeze(1)
        attn = F.dropout(scores.softmax(-1), dropout, training=dropout > 0)
        return (attn @ v).view(bw, heads, n, d)


class SwinTransformerBlock(nn.Module):
    """x + (S)W-MSA(LN(x)), then x + MLP(LN(x)); `shifted` blocks roll the map by half a window first."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple, shifted: bool, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path: float):
        """
        Args:
            dim: token width.
            num_heads: attention heads.
            window_size: attention window per axis.
            shifted: SW-MSA (windows shifted by half a window) instead of W-MSA.
            mlp_ratio: MLP width / dim.
            qkv_bias: whether the query/key/value projection has a bias.
            drop: dropout after attention and in the MLP.
            attn_drop: dropout on the attention weights.
            drop_path: stochastic-depth rate of both residual branches.
        """
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim=dim, num_heads=num_heads, window_size=window_size, qkv_bias=qkv_bias,
                                    attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(p=drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(hidden_size=dim, mlp_dim=int(dim * mlp_ratio), dropout_rate=drop)

    def forward(self, x, window: tuple, shift: tuple, mask):
        """x [B, *S, C]; `window`, `shift` and `mask` are the stage's (shift all zero, mask None: W-MSA)."""
        b, *size = x.shape[:-1]
        dims = tuple(range(1, len(size) + 1))
        h = self.norm1(x)
        pad = [(-s) % w for s, w in zip(size, window)]
        if any(pad):
            h = F.pad(h, [0, 0] + [v for p in reversed(pad) for v in (0, p)])
        padded = h.shape[1:-1]
        if any(shift):
            h = torch.roll(h, [-s for s in shift], dims)
        h = self.attn(window_partition(h, window), window, mask)  # [B * nW, N, C]
        h = window_reverse(h, window, b, padded)                # [B, *S_padded, C]
        if any(shift):
            h = torch.roll(h, shift, dims)
        if any(pad):
            h = h[(slice(None), *(slice(0, s) for s in size))]
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x down-sampling: concatenate the 2^n neighbours of each 2x2(x2) cell, LayerNorm, linear to 2C.

    Neighbours are concatenated in MONAI's (and Swin's) order, so weights are interchangeable."""

    def __init__(self, dim: int, spatial_dims: int):
        """
        Args:
            dim: token width C of the input (the output has 2C).
            spatial_dims: 2 or 3.
        """
        super().__init__()
        n = spatial_dims
        self.offsets = [tuple(int(a in ones) for a in range(n))
                        for k in range(n + 1) for ones in itertools.combinations(range(n), k)]
        self.norm = nn.LayerNorm(2 ** n * dim)
        self.reduction = nn.Linear(in_features=2 ** n * dim, out_features=2 * dim, bias=False)

    def forward(self, x):
        """[B, *S, C] → [B, *S/2, 2C]; S even."""
        x = torch.cat([x[(slice(None), *(slice(o, None, 2) for o in offset))] for offset in self.offsets], -1)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One Swin stage: `depth` blocks alternating W-MSA and SW-MSA, then patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: tuple, drop_path: list,
                 mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float, spatial_dims: int,
                 use_checkpoint: bool):
        """
        Args:
            dim: token width of the stage (2 dim after its patch merging).
            depth: Swin blocks, alternating W-MSA and SW-MSA.
            num_heads: attention heads.
            window_size: attention window per axis.
            drop_path: stochastic-depth rate of each block.
            mlp_ratio: MLP width / dim.
            qkv_bias: whether the query/key/value projections have a bias.
            drop: dropout after attention and in the MLPs.
            attn_drop: dropout on the attention weights.
            spatial_dims: 2 or 3.
            use_checkpoint: gradient checkpointing of each block.
        """
        super().__init__()
        self.window_size = window_size
        self.shift_size = tuple(w // 2 for w in window_size)
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim=dim, num_heads=num_heads, window_size=window_size, shifted=i % 2 == 1,
                                 mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop,
                                 drop_path=drop_path[i])
            for i in range(depth))
        self.downsample = PatchMerging(dim=dim, spatial_dims=spatial_dims)

    def forward(self, x):
        """[B, *S, C] → [B, *S/2, 2C]."""
        size = tuple(x.shape[1:-1])
        window, shift = effective_window(size, self.window_size, self.shift_size)
        no_shift = (0,) * len(size)
        mask = None
        if any(shift):
            padded = tuple(math.ceil(s / w) * w for s, w in zip(size, window))
            mask = shift_mask(padded, window, shift, x.device)
        for block in self.blocks:
            args = (window, shift, mask) if block.shifted else (window, no_shift, None)
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, *args, use_reentrant=False)
            else:
                x = block(x, *args)
        return self.downsample(x)


class SwinTransformer(nn.Module):
    """Patch embedding (strided conv) + Swin stages. Returns the layer-normalised feature maps, channels-first,
    of the embedding and of every stage: [B, C * 2^i, *S / (patch * 2^i)] for i = 0 .. len(depths)."""

    def __init__(self, in_channels: int, embed_dim: int, window_size: tuple, patch_size: tuple, depths,
                 num_heads, mlp_ratio: float, qkv_bias: bool, drop_rate: float, attn_drop_rate: float,
                 drop_path_rate: float, spatial_dims: int, use_checkpoint: bool):
        """
        Args:
            in_channels: image channels.
            embed_dim: token width after the patch embedding (doubled by every stage).
            window_size: attention window per axis.
            patch_size: patch of the embedding per axis.
            depths: Swin blocks per stage.
            num_heads: attention heads per stage.
            mlp_ratio: MLP width / token width.
            qkv_bias: whether the query/key/value projections have a bias.
            drop_rate: dropout after the embedding, after attention and in the MLPs.
            attn_drop_rate: dropout on the attention weights.
            drop_path_rate: stochastic depth, growing linearly from 0 to this over all blocks.
            spatial_dims: 2 or 3.
            use_checkpoint: gradient checkpointing of the Swin blocks.
        """
        super().__init__()
        self.patch_embed = CONV[spatial_dims](in_channels=in_channels, out_channels=embed_dim,
                                              kernel_size=patch_size, stride=patch_size)
        self.pos_drop = nn.Dropout(p=drop_rate)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]   # stochastic depth grows with depth
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            BasicLayer(dim=embed_dim * 2 ** i, depth=d, num_heads=h, window_size=window_size,
                       drop_path=rates[s:s + d], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                       attn_drop=attn_drop_rate, spatial_dims=spatial_dims, use_checkpoint=use_checkpoint)
            for i, (d, h, s) in enumerate(zip(depths, num_heads, starts)))

    @staticmethod
    def proj_out(x: torch.Tensor) -> torch.Tensor:
        """Channels-last tokens → parameter-free LayerNorm → channels-first feature map."""
        return F.layer_norm(x, x.shape[-1:]).movedim(-1, 1).contiguous()

    def forward(self, x):
        x = self.pos_drop(self.patch_embed(x))                 # [B, C, *S/patch]
        x = x.movedim(1, -1).contiguous()                      # [B, *S/patch, C]
        outputs = [self.proj_out(x)]
        for layer in self.layers:
            x = layer(x)                                       # [B, *S/(patch * 2^i), C * 2^i]
            outputs.append(self.proj_out(x))
        return outputs
