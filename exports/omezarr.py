"""A CTC result folder as an OME-Zarr label image (`predict` / `track --out-format ome-zarr`).

    02_RES.ome.zarr/                       zarr v2 group, attributes {"nuclei3d": provenance}
    02_RES.ome.zarr/labels/                {"labels": ["02_RES"]}
    02_RES.ome.zarr/labels/02_RES/         multiscales (NGFF 0.4: axes t, [z,] y, x; scale 1, [z,] y, x µm)
                                           + image-label {"version": "0.4", "properties": one per track}
    02_RES.ome.zarr/labels/02_RES/0        uint16 (T, [Z,] Y, X), one chunk per frame

NGFF 0.4 on zarr v2 is what today's readers open (napari-ome-zarr, ome-zarr-py, Fiji's MoBIE, BigDataViewer's
N5/zarr readers; 0.5 needs a zarr-v3 reader). A label value is the CTC track label, and the image-label
`properties` hold each track's row (`label-value`, `begin`, `end`, `parent`), so the store alone carries the
lineage; `res_track.txt` in the CTC folder beside it stays the reference. Written frame by frame into a hidden
sibling folder and renamed into place (`dataset.fileio.OutputFolder`: marked as ours, never replacing an input
or a folder this tool did not write).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dataset.ctc import CTCFormatError, check_consecutive, list_frames, read_labels, read_tracks, tiff_shape
from dataset.fileio import OutputFolder, check_output
from dataset.omezarr import _zarr

from ._output import WRITTEN_BY

#: The NGFF version written.
NGFF_VERSION = "0.4"
#: The kind recorded in the output's marker (dataset.fileio.mark): what --overwrite may replace.
KIND = "ome-zarr"
SUFFIX = ".ome.zarr"


def default_label_output(res: str | Path) -> Path:
    """`<res>.ome.zarr` beside the result folder."""
    res = Path(res)
    return res.with_name(res.name + SUFFIX)


def check_label_output(out: str | Path, overwrite: bool = False, inputs=()) -> None:
    """Refuse, before any work, an OME-Zarr output that would lose data (see `dataset.fileio.check_output`),
    and a missing zarr package."""
    _zarr()
    check_output(out, overwrite, KIND, inputs, what="OME-Zarr output")


def ngff_metadata(name: str, ndim: int, voxel_size, first_frame: int = 0) -> dict:
    """The `multiscales` entry of a one-level (T, [Z,] Y, X) label image at `voxel_size` (x, y[, z]) µm."""
    space = ("z", "y", "x")[3 - ndim:]
    axes = [{"name": "t", "type": "time"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in space]
    transforms = [{"type": "scale", "scale": [1.0, *[float(v) for v in voxel_size[:ndim][::-1]]]}]
    if first_frame:
        transforms.append({"type": "translation", "translation": [float(first_frame)] + [0.0] * ndim})
    return {"version": NGFF_VERSION, "name": name, "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": transforms}]}


def write_label_image(res: str | Path, out: str | Path | None = None, voxel_size=None, overwrite: bool = False,
                      inputs=(), name: str | None = None) -> Path:
    """Write the CTC result folder `res` (maskNNN.tif + res_track.txt) as the OME-Zarr label image `out`
    (default `<res>.ome.zarr`), one frame at a time; voxel_size (x, y[, z]) µm (the TIFFs do not hold it)."""
    zarr = _zarr()
    res = Path(res)
    out = Path(out) if out else default_label_output(res)
    files = list_frames(res, "mask")
    frames = check_consecutive(files, str(res))
    tracks = read_tracks(res / "res_track.txt")
    shape = tiff_shape(files[frames[0]])
    ndim = len(shape)
    size = tuple(float(v) for v in voxel_size)[:ndim] if voxel_size else ()
    if len(size) != ndim or min(size) <= 0:
        raise CTCFormatError(f"{res}: voxel size {voxel_size} does not fit its {ndim}D masks (x y{' z' if ndim == 3 else ''} µm)")
    name = name or res.name
    with OutputFolder(out, KIND, overwrite, [res, *inputs], what="OME-Zarr output") as tmp:
        root = zarr.open_group(str(tmp), mode="a", zarr_format=2)  # "a": keep the marker OutputFolder wrote
        root.attrs["nuclei3d"] = {"written_by": WRITTEN_BY, "source": str(res), "labels": f"labels/{name}",
                                  "voxel_size_xyz_um": list(size), "first_frame": int(frames[0])}
        group = root.create_group("labels")
        group.attrs["labels"] = [name]
        image = group.create_group(name)
        array = image.create_array("0", shape=(len(frames), *shape), chunks=(1, *shape), dtype="uint16", fill_value=0)
        for i, t in enumerate(frames):
            mask = read_labels(files[t], ndim)
            if mask.shape != shape:
                raise CTCFormatError(f"{files[t]}: shape {mask.shape} differs from {files[frames[0]].name} {shape}")
            array[i] = mask.astype(np.uint16, copy=False)
        properties = [{"label-value": int(l), "begin": int(b), "end": int(e), "parent": int(p)} for l, b, e, p in tracks.tolist()]
        image.attrs.update({"multiscales": [ngff_metadata(name, ndim, size, frames[0])],
                            "image-label": {"version": NGFF_VERSION, "properties": properties}})
    return out
