"""What the widgets compute, without Qt: segment + track an image stack, score a result folder.

Kept apart from the widgets so that the work is one plain function (tested without a viewer) and
the widget only moves it to a worker thread and turns its progress into a progress bar.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from errors import UserError
from exports.graph import TrackGraph, graph_from_masks


def image_voxel_size(meta: dict, ndim: int, fallback) -> tuple[float, ...]:
    """(x, y[, z]) µm of an image layer: the size recorded in its TIFF, else its scale when set, else `fallback`."""
    recorded = meta.get("metadata") or {}
    if recorded.get("voxel_size") and recorded.get("voxel_size_recorded"):
        return tuple(float(v) for v in recorded["voxel_size"])[:ndim]
    scale = [float(s) for s in (meta.get("scale") or ())][-ndim:]
    if len(scale) == ndim and any(s != 1.0 for s in scale) and not recorded.get("voxel_size"):
        return tuple(scale[::-1])
    return tuple(float(v) for v in fallback)[:ndim]


def segment_and_track(predictor, images, first_frame: int = 0, voxel_size=None) -> Iterator:
    """Generator: yields (done, total) after each frame, then returns (labels (T, *S) uint16, TrackGraph).

    images: (T, [Z,] Y, X) array-like (a dask stack is read one frame at a time), or one frame ([Z,] Y, X)
    when the model is as many-D as the frame. Run it with `run_to_end` or in napari's thread_worker.
    """
    from tracking import track_sequence
    ndim = len(predictor.window)
    shape = tuple(np.shape(images))
    if len(shape) == ndim:
        images = np.asarray(images)[None]
        shape = (1, *shape)
    if len(shape) != ndim + 1:
        raise UserError(f"image of shape {shape}: the model takes {ndim}D frames; expected (T, {'Z, ' if ndim == 3 else ''}Y, X)")
    predictor.check_image(shape[1:], 1, "image layer")
    voxel_size = tuple(voxel_size or predictor.voxel_size)[:ndim]
    n = shape[0]
    masks = []
    for i in range(n):
        masks.append(predictor.instances(np.asarray(images[i])))
        yield i + 1, n + 1
    frames = list(range(first_frame, first_frame + n))
    relabelled, tracks = track_sequence(masks, frames, voxel_size, predictor.track)
    labels = np.zeros((n, *shape[1:]), dtype=np.uint16)
    for t, mask in relabelled:
        labels[t - first_frame] = mask
    graph = graph_from_masks(zip(frames, labels), tracks, voxel_size)
    yield n + 1, n + 1
    return labels, graph


def run_to_end(generator: Iterator, progress: Callable[[int, int], None] | None = None):
    """Drive a generator like `segment_and_track` in this thread; returns its return value."""
    while True:
        try:
            done, total = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress:
            progress(done, total)


def score(res_dir: str | Path, gt_dir: str | Path, measures: str | None = "SEG,DET,TRA") -> dict:
    """The CTC measures of a result folder against a GT folder (`utils.check_accuracy`)."""
    from utils import check_accuracy
    for option, path in (("result", res_dir), ("ground truth", gt_dir)):
        if not path or not Path(path).is_dir():
            raise UserError(f"{option} folder {path}: not found")
    return check_accuracy(res_dir, gt_dir, measures or None, cache=False)


def table_rows(scores: dict) -> list[tuple[str, str]]:
    """(measure, value) rows of a scores dict for display: numbers rounded, undefined as '-'."""
    rows = []
    for key, value in scores.items():
        if isinstance(value, float):
            text = f"{value:.4f}"
        elif value is None:
            text = "-"
        else:
            text = str(value)
        rows.append((str(key), text))
    return rows


def graph_layers(labels: np.ndarray, graph: TrackGraph, name: str, first_frame: int = 0) -> list[tuple]:
    """Labels + Tracks layer data of a segment_and_track result (the same scale as the reader's layers)."""
    from ._ctc import scale_of, tracks_layer
    scale = scale_of(graph.voxel_size, graph.ndim)
    meta = {"source": None, "voxel_size": tuple(graph.voxel_size), "frames": graph.frames}
    translate = (float(first_frame), *([0.0] * graph.ndim))
    return [(labels, {"name": f"{name} masks", "scale": scale, "translate": translate, "metadata": meta}, "labels"),
            tracks_layer(graph, f"{name} tracks", scale)]
