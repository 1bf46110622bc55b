"""npe2 writer: a 3D+t (or 2D+t) Labels layer → a CTC result folder, tracked by the project's tracker.

The labels may be any instance masks (our widget's, another plugin's, hand-painted); the tracker
(tracking.py, through results.write_tracked_result) links them into tracks with divisions and
relabels every frame, so the folder is a valid CTC result (maskNNN.tif + res_track.txt) that
`main.py evaluate` and the CTC's own tools accept. The folder must not exist or be empty.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dataset.ctc import VOXEL_SIZE_SIM, CTCFormatError


def voxel_size_from(meta: dict, ndim: int) -> tuple[float, ...]:
    """(x, y[, z]) µm of a layer: the voxel size our reader recorded, else its scale, else SIM+'s."""
    recorded = (meta.get("metadata") or {}).get("voxel_size")
    if recorded:
        return tuple(float(v) for v in recorded)[:ndim]
    scale = [float(s) for s in (meta.get("scale") or ())][1:]
    if len(scale) == ndim and any(s != 1.0 for s in scale):
        return tuple(scale[::-1])
    return tuple(VOXEL_SIZE_SIM)[:ndim]


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write Labels `data` (T, [Z,] Y, X) as the tracked CTC result folder `path`; returns [path]."""
    from results import write_tracked_result
    out = Path(path)
    if np.ndim(data) not in (3, 4):
        raise CTCFormatError(f"{out}: a CTC result needs a 2D+t or 3D+t labels layer (T, [Z,] Y, X), got shape {np.shape(data)}")
    n = int(np.shape(data)[0])
    first = int(round(float((meta.get("translate") or (0,))[0])))
    frames = list(range(first, first + n))
    voxel_size = voxel_size_from(meta, np.ndim(data) - 1)
    masks = ((t, np.asarray(data[i])) for i, t in enumerate(frames))
    write_tracked_result(masks, frames, out, voxel_size, progress=False)
    return [str(out)]
