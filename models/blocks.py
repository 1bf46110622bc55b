"""Convolutional blocks shared by the U-shaped decoders of UNETR, Swin-UNETR and the U-Net, and the helpers the
three models share (per-axis arguments, `config` from the constructor's arguments, padding to a multiple).

Names follow MONAI's `dynunet_block` / `unetr_block` (UnetResBlock, UnetrUpBlock, UnetrPrUpBlock), whose
parameter layout these blocks reproduce. Every block works for 2D and 3D (`spatial_dims`) and for either memory
layout: channels-first (PyTorch's default, what the U-Net and Swin-UNETR run) or channels-last (what UNETR's
decoder runs, see `channels_last`); the layout of the input decides, and outputs keep it.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN = torch.backends.mkldnn.is_available()


# --------------------------------------------------------------------------- helpers
def per_axis(value, spatial_dims: int, name: str) -> tuple[int, ...]:
    """An int or a per-axis sequence → a tuple with one int per spatial axis."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ValueError(f"{name}={value} needs one entry per spatial axis ({spatial_dims})")
    return value


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def constructor_config(init, arguments: dict) -> dict:
    """A model's `config`: every parameter of its constructor `init`, read from `arguments` (the constructor's
    `locals()` once its arguments are normalised, e.g. per-axis sizes as tuples), tuples as lists, so that
    `build_model(model.name, **model.config)` rebuilds the same architecture. Taken from the signature, so a new
    constructor argument is in `config` without anyone copying it there."""
    names = [p for p in inspect.signature(init).parameters if p != "self"]
    return {name: _jsonable(arguments[name]) for name in names}


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int]) -> tuple[torch.Tensor, tuple | None]:
    """Zero-pad the spatial axes of x [B, C, *S] at their ends to a multiple of `multiple`; returns the padded
    tensor and the index that crops an output back to S (None when no padding was needed). Under tracing (ONNX,
    TorchScript) it always pads and crops, by amounts the trace computes from the input's shape, so that the
    exported graph takes every size."""
    size = x.shape[2:]
    pad = [(-s) % m for s, m in zip(size, multiple)]
    if not torch.jit.is_tracing() and not any(pad):
        return x, None
    x = F.pad(x, [v for p in reversed(pad) for v in (0, p)])
    return x, (slice(None), slice(None), *(slice(0, s) for s in size))


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, *S] with the channels as the fastest-varying axis: the same values, oneDNN's native layout
    (PyTorch's `channels_last(_3d)` memory format). Free for a single channel (only the strides change)."""
    b, c, *size = x.shape
    if c == 1:
        return x.reshape(b, *size, 1).movedim(-1, 1)
    return x.movedim(1, -1).contiguous().movedim(-1, 1)


def _is_channels_last(x: torch.Tensor) -> bool:
    """True for a map whose channels are the fastest axis (and that has more than one voxel)."""
    return x.dim() > 3 and x.stride(1) == 1 and x.shape[2:].numel() > 1


# --------------------------------------------------------------------------- convolutions
class _OneDnnConv(torch.autograd.Function):
    """Stride-1 convolution whose forward, input-gradient and weight-gradient all run in oneDNN.

    For a float32 CPU map of batch 1 with N*C*D*H <= 20480 (2D: N*C*H*W; most decoder layers at training-crop
    sizes) PyTorch picks its im2col kernel, 3-8x slower than oneDNN here, forward and backward; for every other
    map PyTorch itself uses oneDNN, at the same float32 accuracy. All three products of a stride-1 convolution are
    convolutions: input-grad = grad (*) flipped, transposed kernel; weight-grad = input (*) grad with the
    channels as the batch. Either memory layout in, the same layout out.
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
        grad = grad.contiguous(memory_format=torch.channels_last if grad.dim() == 4 else torch.channels_last_3d) \
            if _is_channels_last(x) else grad.contiguous()
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


class _KeepLayout:
    """Mixin for a convolution module: a channels-last input gives a channels-last output (PyTorch's kernels for
    small or batch-1 maps return channels-first ones), so that the layout a decoder runs in does not change
    midway."""

    def forward(self, x):
        out = super().forward(x)
        return channels_last(out) if _is_channels_last(x) and not _is_channels_last(out) else out


class _FastConv(_KeepLayout):
    """Mixin for a convolution module (same parameters, same maths) with two CPU shortcuts:

    - a batch-1 float32 stride-1 map of at least 128 voxels that PyTorch would send to im2col
      (N*C*D*H <= 20480, see `_OneDnnConv`) goes through `_OneDnnConv`;
    - a 1x1(x1) convolution of a channels-last map is a matrix product over the channel axis (`F.linear`).

    Everything else, and anything under torch.compile, autocast or on another device, takes PyTorch's own path
    (oneDNN for the maps above; on smaller ones with many channels PyTorch's choice is faster)."""

    def forward(self, x):
        plain = (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                 and not torch.compiler.is_compiling() and all(s == 1 for s in self.stride)
                 and all(d == 1 for d in self.dilation) and self.groups == 1)
        if plain and _is_channels_last(x) and all(k == 1 for k in self.kernel_size):
            return F.linear(x.movedim(1, -1), self.weight.flatten(1), self.bias).movedim(-1, 1)
        if (plain and _ONEDNN and x.shape[0] == 1 and x.shape[2:].numel() >= 128
                and math.prod(x.shape[:4]) <= 20480):
            return _OneDnnConv.apply(x, self.weight, self.bias, list(self.padding))
        return super().forward(x)


class Conv2d(_FastConv, nn.Conv2d):
    pass


class Conv3d(_FastConv, nn.Conv3d):
    pass


class ConvTranspose2d(_KeepLayout, nn.ConvTranspose2d):
    pass


class ConvTranspose3d(_KeepLayout, nn.ConvTranspose3d):
    pass


CONV = {2: Conv2d, 3: Conv3d}
CONV_TRANSPOSE = {2: ConvTranspose2d, 3: ConvTranspose3d}


def conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size=3, stride=1, bias: bool = False):
    """'Same'-padded convolution (odd kernel); strided ones down-sample by `stride`."""
    kernel_size = per_axis(kernel_size, spatial_dims, "kernel_size")
    return CONV[spatial_dims](in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=tuple(k // 2 for k in kernel_size), bias=bias)


def up_conv(spatial_dims: int, in_channels: int, out_channels: int, scale) -> nn.Module:
    """Transposed convolution with kernel = stride = `scale` (per axis): non-overlapping learned up-sampling."""
    return CONV_TRANSPOSE[spatial_dims](in_channels=in_channels, out_channels=out_channels, kernel_size=scale,
                                        stride=scale, bias=False)


# --------------------------------------------------------------------------- instance norm
def _instance_norm_channels_last(x: torch.Tensor, eps: float):
    """Instance norm of a channels-last map x [B, C, *S]; returns (y, mean, rstd), the stats [B, C, 1, ..].
    Two passes, the mean and then the variance of the centred map, both summed as accurately as the GroupNorm
    kernel's (PyTorch's channels-last GroupNorm kernel is single-pass and 100x less accurate in float32)."""
    spatial = tuple(range(2, x.dim()))
    mean = x.mean(spatial, keepdim=True)
    y = x - mean                                                 # channels-last, like x
    rstd = (y.square().mean(spatial, keepdim=True) + eps).rsqrt_()
    return y.mul_(rstd), mean, rstd


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """Instance norm (no affine) of a channels-last map, with the GroupNorm kernel's backward (from the sums of
    the gradient and of gradient x input per channel) written for that layout, where PyTorch's is 2-3x slower."""

    @staticmethod
    def forward(ctx, x, eps):
        y, mean, rstd = _instance_norm_channels_last(x, eps)
        ctx.save_for_backward(x, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd = ctx.saved_tensors                       # mean, rstd [B, C, 1, ..]
        grad = grad.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
        spatial, n = tuple(range(2, x.dim())), x.shape[2:].numel()
        sum_g = grad.sum(spatial, keepdim=True)
        sum_gx = (grad * x).sum(spatial, keepdim=True)
        # dx = rstd * (g - mean(g) - y * mean(g * y)), y = (x - mean) * rstd, as dx = rstd * g + coef_x * x + const
        coef_x = (mean * sum_g - sum_gx) * rstd.pow(3) / n
        const = -rstd * sum_g / n - coef_x * mean
        return torch.addcmul(const, x, coef_x).addcmul_(grad, rstd), None


class InstanceNorm(nn.Module):
    """Instance norm without affine parameters (MONAI's and nnU-Net's choice), through the GroupNorm kernel with
    one channel per group (identical maths, 3-4x faster on CPU than `nn.InstanceNorm3d`); channels-last CPU maps
    outside autocast through `_ChannelsLastInstanceNorm` instead. The output keeps the input's layout."""

    def forward(self, x):
        if (not _is_channels_last(x) or x.shape[1] == 1 or x.device.type != "cpu"
                or x.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled("cpu")):
            return torch.group_norm(x, x.shape[1], None, None, 1e-5)
        if torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling():
            return _ChannelsLastInstanceNorm.apply(x, 1e-5)
        return _instance_norm_channels_last(x, 1e-5)[0]


def lrelu() -> nn.Module:
    return nn.LeakyReLU(negative_slope=0.01, inplace=True)


# --------------------------------------------------------------------------- blocks
class ConvBlock(nn.Sequential):
    """nnU-Net's stage: (conv, instance norm, leaky ReLU) x 2; the first conv may down-sample by `stride`."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride=1):
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the input map.
            out_channels: channels of both convolutions' outputs.
            stride: stride of the first convolution (int or per axis); 1 keeps the resolution.
        """
        super().__init__(
            conv(spatial_dims, in_channels, out_channels, kernel_size=3, stride=stride), InstanceNorm(), lrelu(),
            conv(spatial_dims, out_channels, out_channels, kernel_size=3), InstanceNorm(), lrelu())


class ResBlock(nn.Module):
    """MONAI's UnetResBlock (UNETR's and Swin-UNETR's 'UnetrBasicBlock'): two 3x3(x3) conv + instance norm with
    a residual connection, projected by a 1x1(x1) conv + norm when the channel count changes."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the input map.
            out_channels: channels of the output map (a 1x1 projection of the residual when they differ).
        """
        super().__init__()
        self.conv1 = conv(spatial_dims, in_channels, out_channels, kernel_size=3)
        self.norm1 = InstanceNorm()
        self.conv2 = conv(spatial_dims, out_channels, out_channels, kernel_size=3)
        self.norm2 = InstanceNorm()
        self.act = lrelu()
        if in_channels != out_channels:
            self.conv3 = conv(spatial_dims, in_channels, out_channels, kernel_size=1)
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
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the coarser decoder map.
            out_channels: channels of the skip and of the output.
            scale: up-sampling factor (int or per axis) = kernel and stride of the transposed convolution.
        """
        super().__init__()
        self.transp_conv = up_conv(spatial_dims, in_channels, out_channels, scale)
        self.conv_block = ResBlock(spatial_dims=spatial_dims, in_channels=2 * out_channels, out_channels=out_channels)

    def forward(self, x, skip):
        x = self.transp_conv(x)                       # [B, out, *S*scale]
        return self.conv_block(torch.cat((x, skip), dim=1))


class UnetrPrUpBlock(nn.Module):
    """UNETR's skip projection: a transformer feature map brought up to a decoder resolution by a transposed
    conv followed by (transposed conv, ResBlock) pairs, one per scale after the first."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scales: Sequence):
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the transformer feature map (its hidden size).
            out_channels: channels of every up-sampled map.
            scales: up-sampling factor (int or per axis) of each transposed convolution, coarsest first.
        """
        super().__init__()
        self.transp_conv_init = up_conv(spatial_dims, in_channels, out_channels, scales[0])
        self.blocks = nn.ModuleList(
            nn.Sequential(up_conv(spatial_dims, out_channels, out_channels, s),
                          ResBlock(spatial_dims=spatial_dims, in_channels=out_channels, out_channels=out_channels))
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
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the last decoder map.
            num_classes: segmentation classes (3: background, boundary, interior).
        """
        super().__init__()
        self.seg = conv(spatial_dims, in_channels, num_classes, kernel_size=1, bias=True)
        self.marker = conv(spatial_dims, in_channels, 1, kernel_size=1, bias=True)

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
