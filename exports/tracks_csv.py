"""napari tracks: the Tracks-layer data of a lineage, in memory (for the plugin) and as a CSV file.

napari's Tracks layer takes rows (track_id, t, [z,] y, x) — one track id per unbranched piece,
which a CTC label is — and a `graph` {track_id: [parent ids]} that draws divisions as branches.
The CSV holds exactly those rows plus a parent_id column (0 = none), positions in micrometres so
that they line up with images shown at their voxel size as layer scale:

    track_id,t,z,y,x,parent_id
    1,0,3.2,10.5,8.1,0
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from dataset.fileio import atomic_path

from ._output import check_target, head
from .graph import TrackGraph


def tracks_layer_data(graph: TrackGraph, units: str = "um") -> tuple[np.ndarray, dict[int, list[int]]]:
    """(data [N, 2 + ndim] rows track_id, t, [z,] y, x sorted by track then time, graph {child: [parent]})."""
    data = np.column_stack([graph.label, graph.t, graph.positions(units)]).astype(np.float64)
    data = data[np.lexsort((data[:, 1], data[:, 0]))] if len(data) else data.reshape(0, 2 + graph.ndim)
    present = set(graph.label.tolist())
    parents = {child: [parent] for child, parent in graph.parents().items() if child in present and parent in present}
    return data, parents


def header(graph: TrackGraph) -> list[str]:
    return ["track_id", "t", *graph.axes, "parent_id"]


def write_tracks_csv(graph: TrackGraph, out: str | Path, units: str = "um", overwrite: bool = False) -> Path:
    """Write the napari tracks of `graph` as CSV `out` atomically."""
    out = Path(out)
    check_target(out, overwrite, is_our_csv)
    data, parents = tracks_layer_data(graph, units)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header(graph))
    for row in data.tolist():
        track = int(row[0])
        writer.writerow([track, int(row[1]), *(repr(v) for v in row[2:]), parents.get(track, [0])[0]])
    with atomic_path(out) as tmp:
        tmp.write_text(buffer.getvalue())
    return out


def is_our_csv(path: Path) -> bool:
    first = head(path, 256).split("\n", 1)[0]
    return first in (",".join(["track_id", "t", "z", "y", "x", "parent_id"]), ",".join(["track_id", "t", "y", "x", "parent_id"]))
