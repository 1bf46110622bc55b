"""CTC folders as napari layer data: (data, metadata, layer type) tuples, without importing napari.

Kinds of folder recognised (see dataset/ctc.py for the layout):

    data set root   ROOT/ with sequences 01/, 02/ ...   every sequence, its GT TRA tracks and its results
    sequence        ROOT/01/t000.tif ...                the raw frames as one (T, [Z,] Y, X) Image layer
    result          ROOT/01_RES/mask000.tif + res_track.txt     Labels + Tracks
    ground truth    ROOT/01_GT/ (its TRA/) or ROOT/01_GT/TRA/   Labels (man_track) + Tracks

Frames are stacked lazily (dask, which napari brings) so that opening a 150-frame data set reads
only the frames shown; the Tracks layer needs every mask's centroids and reads the masks once,
one at a time. All layers share one scale (1, [z,] y, x voxel size in µm) and start at their first
frame number, so they overlay. The voxel size comes from the TIFF's ImageJ metadata where it is
recorded, else the Fluo-N3DH-SIM+ default (the CTC does not store it).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tifffile

from dataset.ctc import VOXEL_SIZE_SIM, CTCFormatError, list_frames, read_image, read_labels, tiff_shape
from exports.graph import FOLDER_KINDS, TrackGraph, read_track_graph, track_folder_kind
from exports.tracks_csv import tracks_layer_data

_SEQUENCE = re.compile(r"^\d{2,}$")
_MICRONS = {"um", "µm", "\u00b5m", "micron", "microns", "micrometer", "micrometre", "\\u00B5m"}


def folder_kind(path: str | Path) -> str | None:
    """'root', 'sequence', 'tracks' (a result or GT folder) or None for anything else."""
    path = Path(path)
    if not path.is_dir():
        return None
    if list_frames(path, "image"):
        return "sequence"
    try:
        track_folder_kind(path)
        return "tracks"
    except CTCFormatError:
        pass
    if sequences(path):
        return "root"
    return None


def sequences(root: Path) -> list[str]:
    """Sequence ids (01, 02, ...) of a data set root: sub-folders named by digits holding tNNN.tif frames."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _SEQUENCE.match(p.name) and list_frames(p, "image"))


def tiff_voxel_size(path: Path) -> tuple[float, float, float] | None:
    """(x, y, z) µm from an ImageJ TIFF's resolution and spacing, or None when not recorded in microns."""
    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.imagej_metadata or {}
            tags = tif.pages[0].tags
            xr, yr = tags.get("XResolution"), tags.get("YResolution")
            if xr is None or yr is None or str(meta.get("unit", "")).strip() not in _MICRONS:
                return None
            x, y = xr.value[1] / xr.value[0], yr.value[1] / yr.value[0]
            z = float(meta.get("spacing", 1.0))
    except (OSError, ValueError, ZeroDivisionError, tifffile.TiffFileError):
        return None
    size = (float(x), float(y), z)
    return size if all(np.isfinite(size)) and min(size) > 0 else None


def voxel_size_of(files: dict[int, Path]) -> tuple[float, float, float]:
    """The voxel size recorded in the first frame, else Fluo-N3DH-SIM+'s."""
    first = next(iter(files.values()), None)
    return (first is not None and tiff_voxel_size(first)) or tuple(VOXEL_SIZE_SIM)


def scale_of(voxel_size, ndim: int) -> tuple[float, ...]:
    """Layer scale (t, [z,] y, x) of ndim-D frames."""
    return (1.0, *[float(v) for v in voxel_size[:ndim]][::-1])


def stack(files: dict[int, Path], labels: bool = False):
    """The frames of `files` as one lazy (T, *S) array (dask when available, else read now)."""
    read = read_labels if labels else read_image
    paths = list(files.values())
    shape = tiff_shape(paths[0])
    try:
        import dask
        import dask.array as da
    except ImportError:
        return np.stack([read(p, len(shape)) for p in paths])
    dtype = tifffile.TiffFile(paths[0]).series[0].dtype
    lazy = [da.from_delayed(dask.delayed(read)(p, len(shape)), shape=shape, dtype=dtype) for p in paths]
    return da.stack(lazy)


def image_layer(folder: Path, name: str | None = None, voxel_size=None) -> tuple:
    files = list_frames(folder, "image")
    recorded = tiff_voxel_size(next(iter(files.values())))
    voxel_size = voxel_size or recorded or tuple(VOXEL_SIZE_SIM)
    ndim = len(tiff_shape(next(iter(files.values()))))
    meta = {"name": name or folder.name, "scale": scale_of(voxel_size, ndim), "translate": _start(files, ndim),
            "metadata": {"source": str(folder), "voxel_size": tuple(voxel_size), "voxel_size_recorded": bool(recorded),
                         "frames": list(files)}}
    return stack(files), meta, "image"


def track_layers(folder: Path, name: str | None = None, voxel_size=None) -> list[tuple]:
    """Labels layer of the masks and Tracks layer of the lineage of a result or GT folder."""
    folder, kind = track_folder_kind(folder)
    files = list_frames(folder, FOLDER_KINDS[kind][0])
    voxel_size = voxel_size or voxel_size_of(files)
    graph = read_track_graph(folder, voxel_size)
    name = name or (folder.parent.name if kind == "tra" else folder.name)
    scale = scale_of(voxel_size, graph.ndim)
    common = {"scale": scale, "translate": _start(files, graph.ndim)}
    meta = {"source": str(folder), "voxel_size": tuple(graph.voxel_size), "frames": list(files)}
    labels = (stack(files, labels=True), {"name": f"{name} masks", **common, "metadata": meta}, "labels")
    return [labels, tracks_layer(graph, f"{name} tracks", scale)]


def tracks_layer(graph: TrackGraph, name: str, scale) -> tuple:
    """Tracks layer data of a lineage: rows (track id, t, [z,] y, x) in voxels, shown at `scale`; divisions
    branch through the `graph` {child: [parent]}."""
    data, parents = tracks_layer_data(graph, units="voxel")
    meta = {"name": name, "scale": scale, "graph": parents, "tail_length": 30,
            "metadata": {"source": str(graph.source), "voxel_size": tuple(graph.voxel_size), "tracks": graph.tracks}}
    return data, meta, "tracks"


def layers_of(path: str | Path) -> list[tuple]:
    """All layer data of a CTC folder (see the module docstring); [] for a folder of another kind."""
    path = Path(path)
    kind = folder_kind(path)
    if kind == "sequence":
        return [image_layer(path)]
    if kind == "tracks":
        return track_layers(path)
    if kind == "root":
        out = []
        for seq in sequences(path):
            image = image_layer(path / seq)
            voxel_size = image[1]["metadata"]["voxel_size"]
            out.append(image)
            for suffix in ("_GT", "_RES"):
                extra = path / f"{seq}{suffix}"
                if folder_kind(extra) == "tracks":
                    out.extend(track_layers(extra, f"{seq}{suffix}", voxel_size))
        return out
    return []


def _start(files: dict[int, Path], ndim: int) -> tuple[float, ...]:
    """Layer translate that puts stack index 0 at the first frame number."""
    return (float(next(iter(files))), *([0.0] * ndim))
