"""npe2 reader: open a CTC data set root, sequence, result or ground-truth folder, or an OME-Zarr image or
label image (drag and drop a folder)."""
from __future__ import annotations

from pathlib import Path

from ._ctc import folder_kind, layers_of
from ._omezarr import is_omezarr_image, omezarr_layers


def get_reader(path):
    """The reader function for `path` when it is a CTC folder napari should hand to us, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if is_omezarr_image(path):
        return read_omezarr
    if folder_kind(Path(path)) is None:
        return None
    return read_ctc


def read_ctc(path) -> list[tuple]:
    """Layer data tuples (data, metadata, layer type) of one CTC folder."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return layers_of(Path(path))


def read_omezarr(path) -> list[tuple]:
    """Layer data tuples of an OME-Zarr: Image (per channel), Labels of each label image, Tracks of a lineage."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return omezarr_layers(Path(path))
