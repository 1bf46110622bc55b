"""Convolutional blocks shared by the U-shaped decoders of UNETR, Swin-UNETR and the U-Net.

Names follow MONAI's `dynunet_block` / `unetr_block` (UnetResBlock, UnetrUpBlock, UnetrPrUpBlock), whose
parameter layout these blocks reproduce. Every block works for 2D and 3D (`spatial_dims`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN = torch.backends.mkldnn.is_available()


def per_axis(value, spatial_dims: int, name: str) -> tuple[int, ...]:
    """An int or a per-axis sequence → a tuple with one int per spatial axis."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ValueError(f"{name}={value} needs one entry per spatial axis ({spatial_dims})")
    return value


# --------------------------------------------------------------------------- convolutions
class _OneDnnConv(torch.autograd.Function):
    """Stride-1 convolution whose forward, input-gradient and weight-gradient all run in oneDNN.

    PyTorch sends float32 CPU convolutions of batch 1 with N*C*D*H <= 20480 (most decoder layers at training-crop
    sizes) to its im2col kernel, 3-8x slower than oneDNN here, forward and backward; PyTorch itself uses oneDNN,
    at the same float32 accuracy, for every batch > 1. All three products of a stride-1 convolution are
    convolutions: input-grad = grad (*) flipped, transposed kernel; weight-grad = input (*) grad with the
    channels as the batch.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        ones = [1] * (x.dim() - 2)
        return torch.mkldnn_convolution(x, weight, bias, padding, ones, ones, 1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        spatial = tuple(range(2, x.dim()))
        ones = [1] * len(spatial)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(spatial).transpose(0, 1).contiguous()
            full = [k - 1 - p for k, p in zip(weight.shape[2:], ctx.padding)]
            grad_x = torch.mkldnn_convolution(grad, flipped, None, full, ones, ones, 1)
        if ctx.needs_input_grad[1]:
            pad = [p for p in reversed(ctx.padding) for _ in (0, 1)]
            x_t = F.pad(x, pad).transpose(0, 1).contiguous()          # [C_in, B, *S+2p]
            grad_t = grad.transpose(0, 1).contiguous()                  # [C_out, B, *S]
            grad_w = torch.mkldnn_convolution(x_t, grad_t, None, [0] * len(spatial), ones, ones, 1)
            grad_w = grad_w.transpose(0, 1)                             # [C_out, C_in, *k]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, *spatial))
        return grad_x, grad_w, grad_b, None


class _FastConv:
    """Mixin: route batch-1 float32 CPU stride-1 convolutions of maps of at least 128 voxels through
    `_OneDnnConv` (same maths, same weights); on smaller maps with many channels PyTorch's choice is faster,
    and under torch.compile the compiler chooses."""

    def forward(self, x):
        if (_ONEDNN and x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32
                and x.shape[2:].numel() >= 128 and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling()
                and all(s == 1 for s in self.stride) and all(d == 1 for d in self.dilation) and self.groups == 1):
            return _OneDnnConv.apply(x, self.weight, self.bias, list(self.padding))
        return super().forward(x)


class Conv2d(_FastConv, nn.Conv2d):
    pass


class Conv3d(_FastConv, nn.Conv3d):
    pass


CONV = {2: Conv2d, 3: Conv3d}
CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size=3, stride=1, bias: bool = False):
    """'Same'-padded convolution (odd kernel); strided ones down-sample by `stride`."""
    kernel_size = per_axis(kernel_size, spatial_dims, "kernel_size")
    return CONV[spatial_dims](in_channels, out_channels, kernel_size, stride, tuple(k // 2 for k in kernel_size),
                              bias=bias)


def up_conv(spatial_dims: int, in_channels: int, out_channels: int, scale) -> nn.Module:
    """Transposed convolution with kernel = stride = `scale` (per axis): non-overlapping learned up-sampling."""
    return CONV_TRANSPOSE[spatial_dims](in_channels, out_channels, scale, scale, bias=False)


class InstanceNorm(nn.Module):
    """Instance norm without affine parameters (MONAI's and nnU-Net's choice), computed by the GroupNorm kernel
    with one channel per group: identical maths, 3-4x faster on CPU than `nn.InstanceNorm3d`."""

    def forward(self, x):
        return torch.group_norm(x, x.shape[1], None, None, 1e-5)


def lrelu() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


# --------------------------------------------------------------------------- blocks
class ConvBlock(nn.Sequential):
    """nnU-Net's stage: (conv, instance norm, leaky ReLU) x 2; the first conv may down-sample by `stride`."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride=1):
        super().__init__(conv(spatial_dims, in_channels, out_channels, 3, stride), InstanceNorm(), lrelu(),
                         conv(spatial_dims, out_channels, out_channels, 3), InstanceNorm(), lrelu())


class ResBlock(nn.Module):
    """MONAI's UnetResBlock (UNETR's and Swin-UNETR's 'UnetrBasicBlock'): two 3x3(x3) conv + instance norm with
    a residual connection, projected by a 1x1(x1) conv + norm when the channel count changes."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv(spatial_dims, in_channels, out_channels, 3)
        self.norm1 = InstanceNorm()
        self.conv2 = conv(spatial_dims, out_channels, out_channels, 3)
        self.norm2 = InstanceNorm()
        self.act = lrelu()
        if in_channels != out_channels:
            self.conv3 = conv(spatial_dims, in_channels, out_channels, 1)
            self.norm3 = InstanceNorm()

    def forward(self, x):
        residual = self.norm3(self.conv3(x)) if hasattr(self, "conv3") else x
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out += residual
        return self.act(out)


class UnetrUpBlock(nn.Module):
    """Decoder stage: up-sample (transposed conv), concatenate the encoder skip, fuse with a ResBlock."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale):
        super().__init__()
        self.transp_conv = up_conv(spatial_dims, in_channels, out_channels, scale)
        self.conv_block = ResBlock(spatial_dims, 2 * out_channels, out_channels)

    def forward(self, x, skip):
        x = self.transp_conv(x)                       # [B, out, *S*scale]
        return self.conv_block(torch.cat((x, skip), dim=1))


class UnetrPrUpBlock(nn.Module):
    """UNETR's skip projection: a transformer feature map brought up to a decoder resolution by a transposed
    conv followed by (transposed conv, ResBlock) pairs, one per scale after the first."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scales: Sequence):
        super().__init__()
        self.transp_conv_init = up_conv(spatial_dims, in_channels, out_channels, scales[0])
        self.blocks = nn.ModuleList(
            nn.Sequential(up_conv(spatial_dims, out_channels, out_channels, s),
                          ResBlock(spatial_dims, out_channels, out_channels))
            for s in scales[1:])

    def forward(self, x):
        x = self.transp_conv_init(x)
        for block in self.blocks:
            x = block(x)
        return x


class SegMarkerHeads(nn.Module):
    """The two outputs over the shared decoder: 1x1 convs to segmentation logits (background / boundary /
    interior) and to marker (seed) logits."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int = 3):
        super().__init__()
        self.seg = conv(spatial_dims, in_channels, num_classes, 1, bias=True)
        self.marker = conv(spatial_dims, in_channels, 1, 1, bias=True)

    def forward(self, x):
        return self.seg(x), self.marker(x)            # [B, 3, *S], [B, 1, *S]


def init_weights(module: nn.Module) -> None:
    """Initialise as the papers do: He (Kaiming) normal for convolutions as nnU-Net, truncated normal
    (std 0.02) for linear layers as ViT/Swin, LayerNorm to identity. Apply with `model.apply(init_weights)`."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
