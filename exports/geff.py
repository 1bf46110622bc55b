"""GEFF export: the lineage as a Graph Exchange File Format zarr (https://liveimagetrackingtools.org/geff/).

GEFF is what Ultrack, Trackastra, laptrack, traccuracy and TrackMate exchange tracking graphs in.
The store is a zarr v2 group, written here with numpy and json alone (uncompressed, one chunk per
array), so exporting needs no zarr package; it is read back with the `geff` package in the tests.

    out.geff/.zattrs                 {"geff": metadata: axes t, [z,] y, x with units, props, ...}
    out.geff/nodes/ids               uint64 [N]
    out.geff/nodes/props/P/values    one array per node property
    out.geff/edges/ids               uint64 [E, 2] (source, target), source earlier in time

Node properties: t (frame), z, y, x (centroid, micrometres or voxels), track_id (the CTC label),
seg_id (the mask value, = track_id in CTC masks), volume (voxels), lineage_id (weakly connected
component), tracklet_id (maximal unbranched path). Edge property: `kind` 0 = same track,
1 = division (parent to one of two children), 2 = gap (parent to its only child).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._output import WRITTEN_BY, atomic_folder, check_target
from .graph import TrackGraph

#: The GEFF spec version written (https://liveimagetrackingtools.org/geff/latest/specification/).
GEFF_VERSION = "1.3"

_PROPS = {  # name: (dtype, description)
    "track_id": ("int64", "CTC track label L (res_track.txt / man_track.txt)"),
    "seg_id": ("int64", "label of the object in its frame's mask"),
    "volume": ("int64", "object size in voxels"),
    "lineage_id": ("int64", "label of the root track of this node's lineage"),
    "tracklet_id": ("int64", "label of the first track of this node's unbranched path"),
}


def write_geff(graph: TrackGraph, out: str | Path, units: str = "um", overwrite: bool = False) -> Path:
    """Write `graph` as a GEFF zarr folder `out` atomically; units 'um' (micrometres) or 'voxel'."""
    out = Path(out)
    check_target(out, overwrite, is_our_geff)
    positions = graph.positions(units)
    kind = edge_kinds(graph)
    with atomic_folder(out) as tmp:
        _group(tmp, {"geff": metadata(graph, units)})
        _group(tmp / "nodes")
        _array(tmp / "nodes" / "ids", np.arange(len(graph), dtype=np.uint64))
        _group(tmp / "nodes" / "props")
        props = {"t": graph.t, **{a: positions[:, i] for i, a in enumerate(graph.axes)},
                 "track_id": graph.label, "seg_id": graph.label, "volume": graph.volume,
                 "lineage_id": graph.lineage_ids(), "tracklet_id": graph.tracklet_ids()}
        for name, values in props.items():
            _group(tmp / "nodes" / "props" / name)
            _array(tmp / "nodes" / "props" / name / "values", values)
        _group(tmp / "edges")
        _array(tmp / "edges" / "ids", graph.edges.astype(np.uint64).reshape(-1, 2))
        _group(tmp / "edges" / "props")
        _group(tmp / "edges" / "props" / "kind")
        _array(tmp / "edges" / "props" / "kind" / "values", kind)
    return out


def edge_kinds(graph: TrackGraph) -> np.ndarray:
    """Per edge: 0 within a track, 1 parent -> one of two or more children (division), 2 parent -> only child (gap)."""
    src, dst = graph.label[graph.edges[:, 0]], graph.label[graph.edges[:, 1]]
    counts = np.bincount(graph.tracks[:, 3], minlength=int(graph.tracks[:, 0].max(initial=0)) + 1)
    kind = np.zeros(len(graph.edges), dtype=np.uint8)
    between = src != dst
    kind[between] = np.where(counts[src[between]] >= 2, 1, 2)
    return kind


def metadata(graph: TrackGraph, units: str) -> dict:
    """The `geff` attribute: axes with units, property metadata, tracklet/lineage props, provenance."""
    if units == "um":
        space = [{"name": a, "type": "space", "unit": "micrometer"} for a in graph.axes]
    else:
        space = [{"name": a, "type": "space", "unit": "pixel", "scale": float(s), "scaled_unit": "micrometer"}
                 for a, s in zip(graph.axes, graph.spacing)]
    unit = "micrometer" if units == "um" else "pixel"
    node_props = {"t": _prop("t", "int64", "frame number", unit="frame")}
    node_props.update({a: _prop(a, "float64", f"{a} of the mask centroid", unit=unit) for a in graph.axes})
    node_props.update({name: _prop(name, dtype, text) for name, (dtype, text) in _PROPS.items()})
    hints = {"display_horizontal": "x", "display_vertical": "y", "display_time": "t"}
    if "z" in graph.axes:
        hints["display_depth"] = "z"
    return {
        "geff_version": GEFF_VERSION,
        "directed": True,
        "axes": [{"name": "t", "type": "time", "unit": "frame"}] + space,
        "node_props_metadata": node_props,
        "edge_props_metadata": {"kind": _prop("kind", "uint8", "0 same track, 1 division, 2 gap closed")},
        "track_node_props": {"lineage": "lineage_id", "tracklet": "tracklet_id"},
        "display_hints": hints,
        "extra": {"written_by": WRITTEN_BY, "source": str(graph.source) if graph.source else None,
                  "voxel_size_xyz_um": list(graph.voxel_size), "shape": list(graph.shape)},
    }


def is_our_geff(path: Path) -> bool:
    """True for a GEFF folder this module wrote (its metadata carries our `written_by` mark)."""
    attrs = path / ".zattrs"
    if not attrs.is_file():
        return False
    meta = json.loads(attrs.read_text()).get("geff", {})
    return isinstance(meta, dict) and meta.get("extra", {}).get("written_by") == WRITTEN_BY


def _prop(identifier: str, dtype: str, description: str, unit: str | None = None) -> dict:
    prop = {"identifier": identifier, "dtype": dtype, "varlength": False, "description": description}
    if unit:
        prop["unit"] = unit
    return prop


# ----------------------------------------------------------------------------- zarr v2, by hand
def _group(path: Path, attrs: dict | None = None) -> None:
    """A zarr v2 group: `.zgroup` (and `.zattrs`)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    if attrs is not None:
        (path / ".zattrs").write_text(json.dumps(attrs, indent=2))


def _array(path: Path, values: np.ndarray) -> None:
    """A zarr v2 array stored as one uncompressed little-endian chunk (none when empty)."""
    values = np.ascontiguousarray(values)
    values = values.astype(values.dtype.newbyteorder("<"), copy=False)
    path.mkdir(parents=True, exist_ok=True)
    chunks = [max(s, 1) for s in values.shape]
    fill = False if values.dtype == np.bool_ else 0
    (path / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": list(values.shape), "chunks": chunks, "dtype": values.dtype.str,
        "compressor": None, "fill_value": fill, "filters": None, "order": "C", "dimension_separator": ".",
    }))
    if values.size:
        (path / ".".join("0" * values.ndim)).write_bytes(values.tobytes())
