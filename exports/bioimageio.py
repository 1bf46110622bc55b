"""bioimage.io model package: a folder that deepImageJ, ilastik, BiaPy and `bioimageio.core` run.

    rdf.yaml             the model description, bioimage.io spec 0.5 (https://bioimage.io/spec)
    model.pt             TorchScript weights (traced export copy, see exports/model.py)
    model.onnx           ONNX weights (when the `onnx` package is installed)
    test_input.npy       a raw test frame of the training window's size (float32, b c z y x)
    test_output_*.npy    the network's two outputs on it (logits)
    cover.png            input / interior probability / marker probability of the test frame
    README.md            what the outputs mean and the post-processing a consumer must add

Pre-processing is described in the RDF (`scale_range`: per-volume percentiles 1 and 99.8, exactly
dataset3D.normalize); post-processing is not expressible there (softmax, sigmoid, marker-controlled
watershed, tracking), so the documentation spells it out. The RDF is written as YAML by hand
(strings JSON-quoted), so the package needs no YAML library; the tests validate it with
`bioimageio.core`, which the product never imports.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from ._output import WRITTEN_BY

FORMAT_VERSION = "0.5.4"
CLASSES = ("background", "boundary", "interior")
CITATIONS = {
    "vit_unet": ("Hatamizadeh et al. 2022, UNETR: Transformers for 3D Medical Image Segmentation, WACV",
                 "10.1109/WACV51458.2022.00181"),
    "swinunetr": ("Hatamizadeh et al. 2022, Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors "
                  "in MRI Images, BrainLes (MICCAI)", "10.1007/978-3-031-08999-2_22"),
    "unet": ("Isensee et al. 2021, nnU-Net: a self-configuring method for deep learning-based biomedical image "
             "segmentation, Nature Methods", "10.1038/s41592-020-01008-z"),
}
CTC = ("Maska et al. 2023, The Cell Tracking Challenge: 10 years of objective benchmarking, Nature Methods",
       "10.1038/s41592-023-01879-y")


def write_package(exportable, folder: Path, authors=None, license: str = "MIT", sample=None) -> Path:
    """Fill `folder` with the bioimage.io package of `exportable` (an exports.model.Exportable).

    authors: names (default: the project's contributors); license: SPDX id of the weights;
    sample: optional raw frame ([Z,] Y, X) whose centre becomes the test input (default: synthetic nuclei).
    """
    from dataset3D import normalize

    from .model import write_onnx, write_torchscript
    window = exportable.window
    raw = test_frame(window, sample)
    x = torch.from_numpy(normalize(raw))[None, None]
    with torch.no_grad():
        seg, marker = exportable.model(x)
    arrays = {"test_input.npy": raw[None, None].astype(np.float32),
              "test_output_seg_logits.npy": seg.numpy().astype(np.float32),
              "test_output_marker_logits.npy": marker.numpy().astype(np.float32)}
    for name, array in arrays.items():
        np.save(folder / name, array)
    write_torchscript(exportable, folder / "model.pt")
    weights = {"torchscript": {"source": "model.pt", "sha256": sha256(folder / "model.pt"),
                               "pytorch_version": torch.__version__.split("+")[0]}}
    if importlib.util.find_spec("onnx") is not None:
        write_onnx(exportable, folder / "model.onnx")
        weights["onnx"] = {"source": "model.onnx", "sha256": sha256(folder / "model.onnx"), "opset_version": 17,
                           "parent": "torchscript"}
    write_cover(folder / "cover.png", normalize(raw), seg[0].softmax(0).numpy(), torch.sigmoid(marker[0, 0]).numpy())
    (folder / "README.md").write_text(documentation(exportable))
    rdf = description(exportable, weights, {n: sha256(folder / n) for n in arrays}, authors, license)
    rdf["covers"] = ["cover.png"]
    rdf["documentation"] = "README.md"
    (folder / "rdf.yaml").write_text(to_yaml(rdf))
    return folder


def description(exportable, weights: dict, hashes: dict, authors=None, license: str = "MIT") -> dict:
    """The RDF (spec 0.5) of the package as a dict."""
    spatial = "zyx"[3 - len(exportable.window):]
    spacing = dict(zip(spatial, exportable.voxel_size[: len(spatial)][::-1]))

    def space_axis(axis: str, i: int) -> dict:
        if exportable.dynamic:
            size = {"min": int(exportable.size_divisor[i]), "step": int(exportable.size_divisor[i])}
        else:
            size = int(exportable.window[i])
        return {"type": "space", "id": axis, "size": size, "scale": float(spacing[axis]), "unit": "micrometer"}

    def output_axes(channels) -> list:
        return [{"type": "batch"}, {"type": "channel", "channel_names": list(channels)}] + [
            {"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}, "scale": float(spacing[a]),
             "unit": "micrometer"} for a in spatial]

    text, doi = CITATIONS.get(exportable.name, CITATIONS["unet"])
    return {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": f"nuclei3d {exportable.name} nuclei {len(spatial)}D",
        "description": (f"{len(spatial)}D nucleus segmentation for Cell Tracking Challenge data ({exportable.name}): "
                        "3-class (background, boundary, interior) and marker logits, for a marker-controlled watershed"),
        "authors": [{"name": a} for a in (authors or ["nuclei3d contributors"])],
        "cite": [{"text": text, "doi": doi}, {"text": CTC[0], "doi": CTC[1]}],
        "license": license,
        "tags": ["nuclei", "instance-segmentation", "cell-tracking-challenge", f"{len(spatial)}d", "fluorescence-light-microscopy",
                 exportable.name, "pytorch"],
        "inputs": [{
            "id": "raw",
            "description": "raw fluorescence frame (one channel); normalised by the preprocessing below",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["raw"]}]
                    + [space_axis(a, i) for i, a in enumerate(spatial)],
            "test_tensor": {"source": "test_input.npy", "sha256": hashes["test_input.npy"]},
            "data": {"type": "float32"},
            "preprocessing": [{"id": "scale_range", "kwargs": {"axes": list(spatial), "min_percentile": 1.0,
                                                                "max_percentile": 99.8, "eps": 1e-6}}],
        }],
        "outputs": [
            {"id": "seg_logits", "description": "logits of background, boundary, interior: softmax over channels",
             "axes": output_axes(CLASSES),
             "test_tensor": {"source": "test_output_seg_logits.npy", "sha256": hashes["test_output_seg_logits.npy"]},
             "data": {"type": "float32"}},
            {"id": "marker_logits", "description": "logit of the marker (seed) map: sigmoid",
             "axes": output_axes(["marker"]),
             "test_tensor": {"source": "test_output_marker_logits.npy", "sha256": hashes["test_output_marker_logits.npy"]},
             "data": {"type": "float32"}},
        ],
        "weights": weights,
        "config": {"nuclei3d": {**exportable.describe(), "written_by": WRITTEN_BY}},
    }


def test_frame(window, sample=None, seed: int = 0) -> np.ndarray:
    """A raw frame of `window`'s shape: the centre of `sample` (padded by edge values), else synthetic nuclei."""
    window = tuple(int(w) for w in window)
    if sample is not None:
        sample = np.asarray(sample, np.float32)
        if sample.ndim != len(window):
            from errors import UserError
            raise UserError(f"--sample: a {sample.ndim}D frame for a model of {len(window)}D windows")
        pad = [(max(w - s, 0) // 2, max(w - s, 0) - max(w - s, 0) // 2) for s, w in zip(sample.shape, window)]
        sample = np.pad(sample, pad, mode="edge")
        start = [(s - w) // 2 for s, w in zip(sample.shape, window)]
        return np.ascontiguousarray(sample[tuple(slice(a, a + w) for a, w in zip(start, window))])
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    grid = np.indices(window, dtype=np.float32)
    image = np.zeros(window, np.float32)
    for _ in range(4):
        centre = [rng.uniform(0.25, 0.75) * w for w in window]
        radius = [max(w / 5, 1.5) for w in window]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1
        image[inside] = rng.uniform(600, 1000)
    image = ndimage.gaussian_filter(image, 1.0) + 100
    return (image + rng.normal(0, 20, window)).astype(np.float32)


def write_cover(path: Path, image: np.ndarray, seg_prob: np.ndarray, marker_prob: np.ndarray) -> None:
    """Three panels of the middle plane: input, interior probability, marker probability."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mid = (lambda a: a[a.shape[0] // 2]) if image.ndim == 3 else (lambda a: a)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7), constrained_layout=True)
    for ax, (title, plane, cmap) in zip(axes, (("input", mid(image), "gray"), ("interior", mid(seg_prob[2]), "magma"),
                                               ("marker", mid(marker_prob), "viridis"))):
        ax.imshow(plane, cmap=cmap)
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def documentation(exportable) -> str:
    spatial = "zyx"[3 - len(exportable.window):]
    post = ", ".join(f"{k}={v}" for k, v in exportable.post.items()) or "defaults"
    return f"""# nuclei3d {exportable.name}: nucleus segmentation for Cell Tracking Challenge data

Exported by nuclei3d from `{Path(exportable.checkpoint).name}`.

## Input
`raw`: one raw fluorescence frame, axes b c {' '.join(spatial)}, float32. Pre-processing (in the RDF):
per-volume percentile normalisation, (x - p1) / (p99.8 - p1), percentiles over the whole frame.
Voxel size of the training data (x, y{', z' if len(spatial) == 3 else ''}): {', '.join(f'{v:g}' for v in exportable.voxel_size)} µm.
{"Spatial sizes: any multiple of " + str(list(exportable.size_divisor)) if exportable.dynamic else "Spatial size: exactly " + str(list(exportable.window)) + " (run larger frames with a sliding window)"}.

## Outputs
- `seg_logits` (b, 3, {', '.join(spatial)}): logits of background, boundary, interior; apply softmax over the channels.
- `marker_logits` (b, 1, {', '.join(spatial)}): logit of the marker (seed) map, one blob per nucleus; apply sigmoid.

## Post-processing a consumer must add
1. Sliding-window inference over the whole frame (25% overlap, Gaussian blending) when it is larger than the window.
2. Marker-controlled watershed: seeds = connected components of marker probability above a threshold; mask =
   interior + boundary probability; flood the inverted interior probability (nuclei3d: inference.instances,
   tuned thresholds {post}).
3. Tracking across frames (nuclei3d: tracking.py, CTC result folders with res_track.txt).

`python main.py predict --checkpoint CKPT --data ROOT --seq 02` in nuclei3d does all three.

## Validation
The test tensors were produced by the exported network itself; nuclei3d checks in its tests that the ONNX and
TorchScript weights reproduce them (and PyTorch's forward) to 1e-4 and that `bioimageio.core` passes the package.
Segmentation and tracking quality (SEG, DET, TRA) depend on the training data; see the checkpoint's run folder.

## Cite
{CITATIONS.get(exportable.name, CITATIONS['unet'])[0]} (doi {CITATIONS.get(exportable.name, CITATIONS['unet'])[1]});
{CTC[0]} (doi {CTC[1]}).
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_yaml(value, indent: int = 0) -> str:
    """YAML of nested dicts / lists / scalars, strings JSON-quoted (valid YAML 1.2)."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        out = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
            else:
                out.append(f"{pad}{key}: {_scalar(item)}\n")
        return "".join(out)
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 1)
                out.append(f"{pad}- {body.lstrip()}")
            else:
                out.append(f"{pad}- {_scalar(item)}\n")
        return "".join(out)
    return pad + _scalar(value) + "\n"


def _scalar(value) -> str:
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return json.dumps(value.item() if hasattr(value, "item") else value)
    return json.dumps(str(value), ensure_ascii=False)
