"""OME-Zarr images as napari layer data: (data, metadata, layer type) tuples, without importing napari.

    movie.ome.zarr/                 multiscale image → one Image layer per channel (level 0)
    movie.ome.zarr/labels/NAME/     each label image → a Labels layer; with a lineage in its image-label
                                    properties (`label-value`, `begin`, `end`, `parent`: what `--out-format
                                    ome-zarr` writes) also a branching Tracks layer
    movie.ome.zarr/labels/NAME      a label image on its own works too

Frames are stacked lazily (dask, which napari brings), so only the frames shown are read, chunk by chunk;
without dask they are read at once. All layers share the scale (1, [z,] y, x) in µm from the NGFF metadata
(the CTC reader's scale, so both overlay) and start at frame 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dataset.omezarr import OmeZarrImage, _ome, group_attrs, is_omezarr, label_names, store_stem
from exports.graph import graph_from_masks

from ._ctc import scale_of, tracks_layer


def is_omezarr_image(path: str | Path) -> bool:
    """Whether `path` is an OME-Zarr napari should hand to us: a multiscale image or a group with labels."""
    path = Path(path)
    if not (path.is_dir() and is_omezarr(path)):
        return False
    try:
        return bool(_ome(group_attrs(path), "multiscales")) or bool(label_names(path))
    except Exception:  # no zarr package, or not a zarr group: not ours to open
        return False


def lazy_stack(image: OmeZarrImage, channel: int = 0):
    """Frames (T, [Z,] Y, X) of channel `channel` of `image`: a dask array reading one frame per task."""
    shape, n = image.frame_shape, image.n_frames
    try:
        import dask
        import dask.array as da
    except ImportError:
        return np.stack([image.frame(t, channel) for t in range(n)])
    read = dask.delayed(image.frame, pure=True)
    return da.stack([da.from_delayed(read(t, channel), shape=shape, dtype=image.dtype) for t in range(n)])


def _common(image: OmeZarrImage, name: str) -> dict:
    ndim = len(image.frame_shape)
    return {"name": name, "scale": scale_of(image.voxel_size, ndim),
            "metadata": {"source": str(image.path), "voxel_size": tuple(image.voxel_size), "voxel_size_recorded": True,
                         "axes": "".join(image.axes), "frames": list(range(image.n_frames))}}


def image_layers(image: OmeZarrImage, name: str) -> list[tuple]:
    """One Image layer per channel (named `name`, or `name [c]` where there are several)."""
    n = image.n_channels
    return [(lazy_stack(image, c), _common(image, name if n == 1 else f"{name} [{c}]"), "image") for c in range(n)]


def lineage_rows(attrs: dict) -> np.ndarray | None:
    """The CTC track rows (L, B, E, P) in a label image's image-label properties, or None where they are not all there."""
    properties = (_ome(attrs, "image-label") or {}).get("properties") or []
    rows = []
    for item in properties:
        try:
            rows.append([int(item["label-value"]), int(item["begin"]), int(item["end"]), int(item["parent"])])
        except (KeyError, TypeError, ValueError):
            return None
    return np.array(rows, np.int64).reshape(-1, 4) if rows else None


def label_layers(path: Path, name: str) -> list[tuple]:
    """The Labels layer of the label image `path`, and a Tracks layer where it records its lineage."""
    labels = OmeZarrImage(path)
    layers = [(lazy_stack(labels), _common(labels, name), "labels")]
    rows = lineage_rows(group_attrs(path))
    if rows is not None:
        masks = ((t, labels.frame(t)) for t in range(labels.n_frames))
        graph = graph_from_masks(masks, rows, labels.voxel_size, track_file=f"{path} (image-label properties)", source=path)
        layers.append(tracks_layer(graph, f"{name} tracks", layers[0][1]["scale"]))
    return layers


def omezarr_layers(path: str | Path) -> list[tuple]:
    """Every layer of an OME-Zarr: its image (when it is one) and each of its label images."""
    path = Path(path)
    attrs = group_attrs(path)
    stem = store_stem(path)
    if _ome(attrs, "image-label") is not None:
        return label_layers(path, stem)
    layers = image_layers(OmeZarrImage(path), stem) if _ome(attrs, "multiscales") else []
    for label in label_names(path):
        layers.extend(label_layers(path / "labels" / label, label))
    return layers
