"""Trained checkpoints as files other tools run: ONNX, TorchScript, and bioimage.io packages.

    export_model("runs/.../best.pt", "onnx", "exported/")   # exported/model.onnx + export.json

Every export holds one network, [B, 1, *S] float32 (percentile-normalised raw) → (seg_logits
[B, 3, *S]: background / boundary / interior, marker_logits [B, 1, *S]: seeds); consumers apply
softmax / sigmoid, the marker-controlled watershed and the tracker themselves (see the README).

What is exported is a copy of the model with two exact substitutions that exporters can follow:
the project's oneDNN convolution shortcut (a custom autograd Function for batch-1 CPU speed)
becomes the plain torch convolution it computes, and the GroupNorm-kernel instance norm becomes
`F.instance_norm` (the same normalisation: ONNX InstanceNormalization). Spatial sizes are dynamic
(multiples of `size_divisor`) for the fully convolutional U-Net; UNETR's position embeddings and
Swin-UNETR's windows fix theirs to the training window.
"""
from __future__ import annotations

import copy
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from errors import UserError

from ._output import WRITTEN_BY, atomic_folder, check_target

#: Models whose forward is shape-agnostic (multiples of size_divisor): exported with dynamic spatial axes.
DYNAMIC_MODELS = ("unet",)
INPUT, OUTPUTS = "raw", ("seg_logits", "marker_logits")
MARKER = "export.json"


@dataclass
class Exportable:
    """A checkpoint's network ready for export, and what a consumer must know about it.

    Args:
        model: the export copy (eval mode, CPU, exporter-friendly layers).
        name: model name (unet, vit_unet, swinunetr).
        config: constructor arguments.
        window: the training crop / sliding window, array order ([Z,] Y, X).
        size_divisor: per axis, what every input side must be a multiple of.
        voxel_size: (x, y[, z]) µm of the training data.
        post: watershed thresholds (inference.PostParams fields).
        checkpoint: the file it came from.
    """

    model: nn.Module
    name: str
    config: dict
    window: tuple[int, ...]
    size_divisor: tuple[int, ...]
    voxel_size: tuple[float, ...]
    post: dict = field(default_factory=dict)
    checkpoint: str = ""

    @property
    def dynamic(self) -> bool:
        return self.name in DYNAMIC_MODELS

    def example(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """A normalised-looking input of the window's size."""
        generator = torch.Generator().manual_seed(seed)
        return torch.rand((batch, 1, *self.window), generator=generator)

    def describe(self) -> dict:
        """JSON-serialisable description written beside every export."""
        return {"written_by": WRITTEN_BY, "checkpoint": self.checkpoint, "model_name": self.name,
                "model_config": self.config, "input": {"name": INPUT, "axes": "bc" + "zyx"[3 - len(self.window):],
                "window": list(self.window), "size_divisor": list(self.size_divisor), "dynamic_spatial": self.dynamic,
                "normalisation": "per volume: (x - p1) / (p99.8 - p1), percentiles over the whole frame"},
                "outputs": {OUTPUTS[0]: "logits of background, boundary, interior (softmax over channels)",
                            OUTPUTS[1]: "logit of the marker (seed) map (sigmoid)"},
                "voxel_size_xyz_um": list(self.voxel_size), "postprocessing": self.post}


class _InstanceNorm(nn.Module):
    """Instance norm without affine parameters written out (mean and biased variance over the spatial axes), which
    every exporter follows; also defined on 1-voxel maps (zeros), like the GroupNorm kernel it replaces."""

    def forward(self, x):
        dims = tuple(range(2, x.dim()))
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).pow(2).mean(dims, keepdim=True)
        return (x - mean) * torch.rsqrt(var + 1e-5)


def export_copy(model: nn.Module) -> nn.Module:
    """A CPU, eval-mode copy of `model` with the exact exporter-friendly substitutions of the module docstring."""
    from models.blocks import InstanceNorm
    out = copy.deepcopy(model).cpu().eval()
    for parent in out.modules():
        for key, child in list(parent.named_children()):
            if isinstance(child, InstanceNorm):
                setattr(parent, key, _InstanceNorm())
            elif isinstance(child, nn.modules.conv._ConvNd) and type(child).__module__ == "models.blocks":
                # the project's subclass adds only a faster forward: give it back torch's own
                child.__class__ = next(c for c in type(child).__mro__ if c.__module__.startswith("torch.nn"))
    return out


@contextmanager
def traceable():
    """While exporting, two calls take the argument forms the ONNX exporter handles (same maths): F.layer_norm's
    normalized shape as plain ints (Swin-UNETR passes `x.shape[-1:]`, which the tracer records as a tensor),
    and Tensor.movedim's dims as non-negative ints (the exporter writes a negative one into Transpose's perm)."""
    layer_norm, movedim = F.layer_norm, torch.Tensor.movedim

    def static_layer_norm(x, normalized_shape, *args, **kwargs):
        return layer_norm(x, tuple(int(s) for s in normalized_shape), *args, **kwargs)

    def positive_movedim(x, source, destination):
        def fix(d):
            return tuple(v % x.dim() for v in d) if isinstance(d, (tuple, list)) else d % x.dim()
        return movedim(x, fix(source), fix(destination))

    F.layer_norm, torch.Tensor.movedim = static_layer_norm, positive_movedim
    try:
        with warnings.catch_warnings():
            # known and intended: shape checks frozen by the tracer; torch.jit and the TorchScript-based ONNX
            # exporter are deprecated in favour of torch.export, which bioimage.io consumers do not read yet
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*|exports\..*")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            yield
    finally:
        F.layer_norm, torch.Tensor.movedim = layer_norm, movedim


def load_exportable(checkpoint: str | Path) -> Exportable:
    """The network and settings of one of our checkpoints (see predict.Predictor.from_checkpoint)."""
    from predict import Predictor
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    model = predictor.model
    window = tuple(int(w) for w in predictor.window)
    divisor = tuple(int(d) for d in getattr(model, "size_divisor", (1,) * len(window)))
    import dataclasses
    return Exportable(export_copy(model), getattr(model, "name", type(model).__name__), dict(getattr(model, "config", {})),
                      window, divisor, tuple(predictor.voxel_size), dataclasses.asdict(predictor.post), str(checkpoint))


def write_onnx(exportable: Exportable, path: Path, opset: int = 17) -> Path:
    """The ONNX file of `exportable` (torch.onnx.export, TorchScript-based; needs the `onnx` package)."""
    import importlib.util
    if importlib.util.find_spec("onnx") is None:
        raise UserError("--format onnx needs the onnx package: pip install onnx (or pip install -e '.[export]')")
    spatial = "zyx"[3 - len(exportable.window):]
    dynamic = {INPUT: {0: "batch"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}}
    if exportable.dynamic:
        for name in dynamic:
            dynamic[name].update({2 + i: a for i, a in enumerate(spatial)})
    with torch.no_grad(), traceable():
        torch.onnx.export(exportable.model, (exportable.example(),), str(path), input_names=[INPUT],
                          output_names=list(OUTPUTS), dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return path


def write_torchscript(exportable: Exportable, path: Path) -> Path:
    """The TorchScript file of `exportable` (traced; shapes stay symbolic for the U-Net)."""
    with torch.no_grad(), traceable():
        traced = torch.jit.trace(exportable.model, (exportable.example(),), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def is_our_export(path: Path) -> bool:
    """True for a folder this module wrote (it holds our export.json or a bioimage.io rdf.yaml of ours)."""
    marker = path / MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("written_by") == WRITTEN_BY
        except ValueError:
            return False
    rdf = path / "rdf.yaml"
    return rdf.is_file() and f'written_by: "{WRITTEN_BY}"' in rdf.read_text()


def export_model(checkpoint: str | Path, fmt: str, out: str | Path, overwrite: bool = False, **bioimageio) -> Path:
    """Export `checkpoint` as `fmt` (onnx, torchscript, bioimageio) into the folder `out`, atomically."""
    out = Path(out)
    if fmt not in ("onnx", "torchscript", "bioimageio"):
        raise UserError(f"--format {fmt}: expected onnx, torchscript or bioimageio")
    check_target(out, overwrite, is_our_export)
    exportable = load_exportable(checkpoint)
    with atomic_folder(out) as tmp:
        if fmt == "onnx":
            write_onnx(exportable, tmp / "model.onnx")
        elif fmt == "torchscript":
            write_torchscript(exportable, tmp / "model.pt")
        else:
            from .bioimageio import write_package
            write_package(exportable, tmp, **bioimageio)
        if fmt != "bioimageio":
            (tmp / MARKER).write_text(json.dumps({**exportable.describe(), "format": fmt}, indent=2) + "\n")
    return out
