"""TrackMate XML export: the lineage as a file that Fiji's TrackMate opens (File > Load a TrackMate file).

The layout follows TrackMate's own reader (`fiji.plugin.trackmate.io.TmXmlReader`, keys in TmXmlKeys):

    <TrackMate version>
      <Model spatialunits timeunits>
        <FeatureDeclarations> Spot-, Edge-, TrackFeatures: every attribute written below is declared
        <AllSpots nspots> <SpotsInFrame frame> <Spot ID name POSITION_X/Y/Z POSITION_T FRAME RADIUS ...>
        <AllTracks> <Track name TRACK_ID ...> <Edge SPOT_SOURCE_ID SPOT_TARGET_ID ...>
        <FilteredTracks> <TrackID TRACK_ID>
      <Settings> ImageData (voxel size, sizes), BasicSettings, Detector/TrackerSettings (manual), filters
      <GUIState state="ConfigureViews">

A TrackMate track is a connected component of the spot graph, so one <Track> holds a whole
lineage (a mother's edges and her daughters'); spots of single-frame, unlinked objects are
listed but belong to no track. Spot attributes other than ID and name must be numbers: the CTC
label is kept as the spot feature CTC_LABEL. Positions are in micrometres, time in frames.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from dataset.fileio import atomic_path

from ._output import WRITTEN_BY, check_target, head
from .graph import TrackGraph

#: The TrackMate version whose reader this layout was checked against.
TRACKMATE_VERSION = "7.14.0"
MARK = f"<!-- written by {WRITTEN_BY} -->"

# feature: (name, shortname, dimension, isint)
SPOT_FEATURES = {
    "QUALITY": ("Quality", "Quality", "QUALITY", False),
    "POSITION_X": ("X", "X", "POSITION", False),
    "POSITION_Y": ("Y", "Y", "POSITION", False),
    "POSITION_Z": ("Z", "Z", "POSITION", False),
    "POSITION_T": ("T", "T", "TIME", False),
    "FRAME": ("Frame", "Frame", "NONE", True),
    "RADIUS": ("Radius", "R", "LENGTH", False),
    "VISIBILITY": ("Visibility", "Visibility", "NONE", True),
    "CTC_LABEL": ("CTC label", "Label", "NONE", True),
    "VOLUME_VOXELS": ("Volume in voxels", "Voxels", "NONE", True),
}
EDGE_FEATURES = {
    "SPOT_SOURCE_ID": ("Source spot ID", "Source ID", "NONE", True),
    "SPOT_TARGET_ID": ("Target spot ID", "Target ID", "NONE", True),
    "LINK_COST": ("Edge cost", "Cost", "COST", False),
    "EDGE_TIME": ("Edge time", "Edge T", "TIME", False),
}
TRACK_FEATURES = {
    "TRACK_INDEX": ("Track index", "Index", "NONE", True),
    "TRACK_ID": ("Track ID", "ID", "NONE", True),
    "NUMBER_SPOTS": ("Number of spots in track", "N spots", "NONE", True),
    "NUMBER_GAPS": ("Number of gaps", "N gaps", "NONE", True),
    "NUMBER_SPLITS": ("Number of split events", "N splits", "NONE", True),
    "NUMBER_MERGES": ("Number of merge events", "N merges", "NONE", True),
    "TRACK_START": ("Track start", "Track start", "TIME", False),
    "TRACK_STOP": ("Track stop", "Track stop", "TIME", False),
    "TRACK_DURATION": ("Track duration", "Duration", "TIME", False),
}


def write_trackmate(graph: TrackGraph, out: str | Path, overwrite: bool = False, image_name: str = "") -> Path:
    """Write `graph` as a TrackMate XML file `out` atomically (positions in micrometres)."""
    out = Path(out)
    check_target(out, overwrite, is_our_trackmate)
    root = build_tree(graph, image_name)
    ET.indent(root)
    text = f'<?xml version="1.0" encoding="UTF-8"?>\n{MARK}\n' + ET.tostring(root, encoding="unicode") + "\n"
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def is_our_trackmate(path: Path) -> bool:
    return MARK in head(path, 512)


def build_tree(graph: TrackGraph, image_name: str = "") -> ET.Element:
    """The <TrackMate> element of `graph`."""
    root = ET.Element("TrackMate", version=TRACKMATE_VERSION)
    ET.SubElement(root, "Log").text = f"Exported by {WRITTEN_BY} from {graph.source}"
    model = ET.SubElement(root, "Model", spatialunits="µm", timeunits="frame")
    declarations = ET.SubElement(model, "FeatureDeclarations")
    for tag, features in (("SpotFeatures", SPOT_FEATURES), ("EdgeFeatures", EDGE_FEATURES), ("TrackFeatures", TRACK_FEATURES)):
        group = ET.SubElement(declarations, tag)
        for key, (name, short, dim, isint) in features.items():
            ET.SubElement(group, "Feature", feature=key, name=name, shortname=short, dimension=dim,
                          isint="true" if isint else "false")

    um = graph.positions("um")
    xyz = np.zeros((len(graph), 3))
    xyz[:, : graph.ndim] = um[:, ::-1]  # array order ([z,] y, x) -> x, y[, z]
    cell = float(np.prod(graph.spacing))
    if graph.ndim == 3:
        radius = np.cbrt(3 * graph.volume * cell / (4 * math.pi))
    else:
        radius = np.sqrt(graph.volume * cell / math.pi)
    spots = ET.SubElement(model, "AllSpots", nspots=str(len(graph)))
    for t in graph.frames:
        in_frame = ET.SubElement(spots, "SpotsInFrame", frame=str(t))
        for i in np.flatnonzero(graph.t == t).tolist():
            ET.SubElement(in_frame, "Spot", {
                "ID": str(i), "name": f"L{graph.label[i]}_t{t}", "QUALITY": "1.0",
                "POSITION_X": _num(xyz[i, 0]), "POSITION_Y": _num(xyz[i, 1]), "POSITION_Z": _num(xyz[i, 2]),
                "POSITION_T": _num(float(t)), "FRAME": str(t), "RADIUS": _num(radius[i]), "VISIBILITY": "1",
                "CTC_LABEL": str(graph.label[i]), "VOLUME_VOXELS": str(graph.volume[i])})

    all_tracks = ET.SubElement(model, "AllTracks")
    filtered = ET.SubElement(model, "FilteredTracks")
    component = graph.lineage_ids()
    for index, lineage in enumerate(sorted(set(component[graph.edges[:, 0]].tolist()))):
        edges = graph.edges[component[graph.edges[:, 0]] == lineage]
        nodes = np.unique(edges)
        out_degree = np.bincount(edges[:, 0], minlength=len(graph))
        gaps = int((graph.t[edges[:, 1]] - graph.t[edges[:, 0]] > 1).sum())
        start, stop = int(graph.t[nodes].min()), int(graph.t[nodes].max())
        track = ET.SubElement(all_tracks, "Track", {
            "name": f"Track_{lineage}", "TRACK_INDEX": str(index), "TRACK_ID": str(index),
            "NUMBER_SPOTS": str(nodes.size), "NUMBER_GAPS": str(gaps),
            "NUMBER_SPLITS": str(int((out_degree[nodes] >= 2).sum())), "NUMBER_MERGES": "0",
            "TRACK_START": _num(start), "TRACK_STOP": _num(stop), "TRACK_DURATION": _num(stop - start)})
        for a, b in edges.tolist():
            ET.SubElement(track, "Edge", {
                "SPOT_SOURCE_ID": str(a), "SPOT_TARGET_ID": str(b), "LINK_COST": "0.0",
                "EDGE_TIME": _num((graph.t[a] + graph.t[b]) / 2)})
        ET.SubElement(filtered, "TrackID", TRACK_ID=str(index))

    settings = ET.SubElement(root, "Settings")
    shape = (1,) * (3 - graph.ndim) + tuple(graph.shape)  # (Z, Y, X)
    size = tuple(graph.voxel_size) + (1.0,) * (3 - len(graph.voxel_size))  # (x, y, z)
    n_frames = (max(graph.frames) + 1) if graph.frames else 1
    ET.SubElement(settings, "ImageData", filename=image_name, folder="", width=str(shape[2]), height=str(shape[1]),
                  nslices=str(shape[0]), nframes=str(n_frames), pixelwidth=_num(size[0]), pixelheight=_num(size[1]),
                  voxeldepth=_num(size[2]), timeinterval="1.0")
    ET.SubElement(settings, "BasicSettings", xstart="0", xend=str(shape[2] - 1), ystart="0", yend=str(shape[1] - 1),
                  zstart="0", zend=str(shape[0] - 1), tstart="0", tend=str(n_frames - 1))
    ET.SubElement(settings, "DetectorSettings", DETECTOR_NAME="MANUAL_DETECTOR", RADIUS="2.5")
    ET.SubElement(settings, "InitialSpotFilter", feature="QUALITY", value="0.0", isabove="true")
    ET.SubElement(settings, "SpotFilterCollection")
    ET.SubElement(settings, "TrackerSettings", TRACKER_NAME="MANUAL_TRACKER")
    ET.SubElement(settings, "TrackFilterCollection")
    analyzers = ET.SubElement(settings, "AnalyzerCollection")
    for tag in ("SpotAnalyzers", "EdgeAnalyzers", "TrackAnalyzers"):
        ET.SubElement(analyzers, tag)
    ET.SubElement(root, "GUIState", state="ConfigureViews")
    return root


def _num(value) -> str:
    return repr(float(value))
