"""Vision Transformer encoder (Dosovitskiy et al. 2021) as used by UNETR, for 2D and 3D images.

Tokens are kept as a contiguous [B, N, hidden] with N in raster order of the patch grid: the layout every
LayerNorm and matrix product of the transformer wants, and, read as [B, *grid, hidden], a channels-last feature
map that UNETR's decoder takes without a copy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import CONV


class PatchEmbedding(nn.Module):
    """Non-overlapping patches → linear projection (a strided conv) + learnable position embedding.

    The position embedding is learnt for the grid of `img_size` and interpolated (trilinear in 3D, bicubic in
    2D) to any other grid, so the model accepts every input whose size is a multiple of `patch_size`.
    """

    def __init__(self, in_channels: int, img_size: tuple, patch_size: tuple, hidden_size: int,
                 dropout_rate: float, spatial_dims: int):
        """
        Args:
            in_channels: image channels.
            img_size: training image size per axis; the learnt position embedding has its patch grid.
            patch_size: patch size per axis (img_size must be a multiple).
            hidden_size: token width.
            dropout_rate: dropout after adding the position embedding.
            spatial_dims: 2 or 3.
        """
        super().__init__()
        self.grid_size = tuple(s // p for s, p in zip(img_size, patch_size))
        self.patch_embeddings = CONV[spatial_dims](in_channels=in_channels, out_channels=hidden_size,
                                                   kernel_size=patch_size, stride=patch_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, math.prod(self.grid_size), hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02, a=-2.0, b=2.0)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.mode = "trilinear" if spatial_dims == 3 else "bicubic"

    def position_embedding(self, grid: tuple) -> torch.Tensor:
        """[1, N, hidden] for a patch grid `grid` (the learnt one, or resampled to it)."""
        if grid == self.grid_size:
            return self.position_embeddings
        pos = self.position_embeddings.transpose(1, 2).reshape(1, -1, *self.grid_size)
        pos = F.interpolate(pos, size=grid, mode=self.mode, align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x):
        x = self.patch_embeddings(x)                  # [B, hidden, *grid]
        grid = tuple(x.shape[2:])
        # [B, N, hidden], contiguous: left as a transposed view, the whole residual stream would inherit its
        # strides, and every LayerNorm and linear layer would copy it, forward and backward
        x = x.flatten(2).transpose(1, 2).contiguous()
        return self.dropout(x + self.position_embedding(grid)), grid


class MLP(nn.Module):
    """Transformer feed-forward: Linear → GELU → Linear, with dropout."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout_rate: float):
        """
        Args:
            hidden_size: token width (input and output).
            mlp_dim: width of the hidden layer.
            dropout_rate: dropout after each linear layer.
        """
        super().__init__()
        self.linear1 = nn.Linear(in_features=hidden_size, out_features=mlp_dim)
        self.linear2 = nn.Linear(in_features=mlp_dim, out_features=hidden_size)
        self.act = nn.GELU(approximate="none")
        self.drop = nn.Dropout(p=dropout_rate)

    def forward(self, x):
        return self.drop(self.linear2(self.drop(self.act(self.linear1(x)))))


class SelfAttention(nn.Module):
    """Multi-head self-attention through the fused `F.scaled_dot_product_attention`."""

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float, qkv_bias: bool):
        """
        Args:
            hidden_size: token width; a multiple of num_heads.
            num_heads: attention heads, each of hidden_size / num_heads channels.
            dropout_rate: dropout on the attention weights and after the output projection.
            qkv_bias: whether the fused query/key/value projection has a bias.
        """
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout_rate = dropout_rate
        self.qkv = nn.Linear(in_features=hidden_size, out_features=3 * hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(in_features=hidden_size, out_features=hidden_size)
        self.drop_output = nn.Dropout(p=dropout_rate)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                       # [B, heads, N, head_dim]
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_rate if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, c)        # [B, N, hidden]
        return self.drop_output(self.out_proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float, qkv_bias: bool):
        """
        Args:
            hidden_size: token width.
            mlp_dim: width of the MLP's hidden layer.
            num_heads: attention heads.
            dropout_rate: dropout in attention and MLP.
            qkv_bias: whether the query/key/value projection has a bias.
        """
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = SelfAttention(hidden_size=hidden_size, num_heads=num_heads, dropout_rate=dropout_rate,
                                  qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size=hidden_size, mlp_dim=mlp_dim, dropout_rate=dropout_rate)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding + `num_layers` transformer blocks + final LayerNorm.

    Returns the normalised last hidden state, every block's output (UNETR taps some of them) and the patch grid.
    """

    def __init__(self, in_channels: int, img_size: tuple, patch_size: tuple, hidden_size: int, mlp_dim: int,
                 num_layers: int, num_heads: int, dropout_rate: float, qkv_bias: bool, spatial_dims: int,
                 use_checkpoint: bool = False):
        """
        Args:
            in_channels: image channels.
            img_size: training image size per axis (sets the learnt position-embedding grid).
            patch_size: patch size per axis.
            hidden_size: token width.
            mlp_dim: width of each MLP's hidden layer.
            num_layers: transformer blocks.
            num_heads: attention heads per block.
            dropout_rate: dropout in embedding, attention and MLP.
            qkv_bias: whether the query/key/value projections have a bias.
            spatial_dims: 2 or 3.
            use_checkpoint: recompute each block in the backward pass instead of storing its activations.
        """
        super().__init__()
        self.patch_embedding = PatchEmbedding(in_channels=in_channels, img_size=img_size, patch_size=patch_size,
                                              hidden_size=hidden_size, dropout_rate=dropout_rate,
                                              spatial_dims=spatial_dims)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads,
                             dropout_rate=dropout_rate, qkv_bias=qkv_bias)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.use_checkpoint = use_checkpoint

    def forward(self, x):
        x, grid = self.patch_embedding(x)             # [B, N, hidden]
        hidden_states = []
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            hidden_states.append(x)
        return self.norm(x), hidden_states, grid
