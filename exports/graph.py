"""The lineage graph of a CTC track folder: one node per object per frame, edges in time.

Every export (GEFF, TrackMate XML, napari tracks) and the napari reader start from this one
`TrackGraph`, so they describe the same graph by construction:

- a node is a label present in a frame, placed at its mask centroid (voxels, array order z, y, x);
- an edge joins a track's node in frame t to its node in frame t + 1 (the CTC labels a track with
  one label from B to E), and a parent's last node (frame E_P) to its child's first node (frame B):
  two children make a division, one child a track continued across a gap.

The folder is checked against the CTC rules first (`dataset.validate`), so a node's track row,
and hence its edges, always exist.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataset.ctc import VOXEL_SIZE_SIM, CTCFormatError, frame_gaps, list_frames, read_labels, read_tracks
from dataset.validate import lineage_problems
from errors import UserError

#: (mask kind in dataset.ctc.PATTERNS, track file name) of the two kinds of track folder.
FOLDER_KINDS = {"result": ("mask", "res_track.txt"), "tra": ("tra", "man_track.txt")}


@dataclass
class TrackGraph:
    """Nodes (sorted by frame, then label) and directed edges (node index pairs) of a CTC lineage.

    Args:
        t: frame of each node.
        label: CTC track label of each node (the mask value).
        position: centroid of each node in voxels, array axis order ([z,] y, x).
        volume: voxel count of each node.
        edges: [E, 2] (source, target) node indices, source earlier in time.
        tracks: the track file's rows (L, B, E, P).
        voxel_size: (x, y[, z]) in micrometres, as the CTC states it.
        shape: spatial shape of the frames ([Z,] Y, X).
        source: the folder it was read from.
    """

    t: np.ndarray
    label: np.ndarray
    position: np.ndarray
    volume: np.ndarray
    edges: np.ndarray
    tracks: np.ndarray
    voxel_size: tuple[float, ...]
    shape: tuple[int, ...]
    source: Path | None = None
    frames: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.t.size)

    @property
    def ndim(self) -> int:
        return int(self.position.shape[1])

    @property
    def axes(self) -> tuple[str, ...]:
        """Spatial axis names in array order."""
        return ("z", "y", "x")[3 - self.ndim:]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in array axis order ([z,] y, x), micrometres."""
        return np.asarray(self.voxel_size[: self.ndim][::-1], dtype=np.float64)

    def positions(self, units: str = "um") -> np.ndarray:
        """Centroids [N, ndim] in array axis order, in micrometres ('um') or voxels ('voxel')."""
        if units == "voxel":
            return self.position.copy()
        if units == "um":
            return self.position * self.spacing
        raise UserError(f"--units {units}: expected um or voxel")

    def parents(self) -> dict[int, int]:
        """Track label -> parent track label, for tracks with a parent."""
        return {int(l): int(p) for l, _, _, p in self.tracks.tolist() if p}

    def lineage_ids(self) -> np.ndarray:
        """Per node, the label of its track's root ancestor: equal ids = one weakly connected component."""
        parent = self.parents()
        root: dict[int, int] = {}
        for l in self.tracks[:, 0].tolist():
            chain = [l]
            while chain[-1] in parent and chain[-1] not in root:
                chain.append(parent[chain[-1]])
            top = root.get(chain[-1], chain[-1])
            for c in chain:
                root[c] = top
        return np.array([root[l] for l in self.label.tolist()], dtype=np.int64)

    def tracklet_ids(self) -> np.ndarray:
        """Per node, the id of its maximal unbranched path: a track joined to its only child (a gap
        closed), which is how GEFF defines a tracklet; the id is the label of the path's first track."""
        children: dict[int, list[int]] = {}
        for l, p in self.parents().items():
            children.setdefault(p, []).append(l)
        parent = self.parents()
        head: dict[int, int] = {}
        for l in self.tracks[:, 0].tolist():
            chain = [l]
            while chain[-1] in parent and len(children[parent[chain[-1]]]) == 1 and chain[-1] not in head:
                chain.append(parent[chain[-1]])
            top = head.get(chain[-1], chain[-1])
            for c in chain:
                head[c] = top
        return np.array([head[l] for l in self.label.tolist()], dtype=np.int64)

    def edge_set(self) -> set[tuple[tuple[int, int], tuple[int, int]]]:
        """Edges as ((t, label), (t, label)) pairs: a form independent of node numbering, for comparisons."""
        keys = list(zip(self.t.tolist(), self.label.tolist()))
        return {(keys[a], keys[b]) for a, b in self.edges.tolist()}


def track_folder_kind(folder: str | Path) -> tuple[Path, str]:
    """(folder, kind) of a result folder, a GT TRA folder, or a GT folder (its TRA subfolder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CTCFormatError(f"{folder}: folder not found")
    for kind, (pattern, track_name) in FOLDER_KINDS.items():
        if (folder / track_name).is_file() and list_frames(folder, pattern):
            return folder, kind
    if (folder / "TRA").is_dir():
        return track_folder_kind(folder / "TRA")
    raise CTCFormatError(f"{folder}: not a CTC track folder (expected maskNNN.tif + res_track.txt, "
                         "man_trackNNN.tif + man_track.txt, or a *_GT folder with TRA/)")


def measure(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, voxel counts, centroids [n, ndim] in voxels) of the non-zero labels of one mask."""
    flat = mask.ravel()
    fg = np.flatnonzero(flat)
    labels, index = np.unique(flat[fg], return_inverse=True)
    volume = np.bincount(index, minlength=labels.size)
    coords = np.unravel_index(fg, mask.shape)
    centroid = np.stack([np.bincount(index, weights=c, minlength=labels.size) for c in coords], axis=1)
    return labels.astype(np.int64), volume.astype(np.int64), centroid / np.maximum(volume, 1)[:, None]


def read_track_graph(folder: str | Path, voxel_size=VOXEL_SIZE_SIM) -> TrackGraph:
    """The TrackGraph of a CTC result folder, GT TRA folder or GT folder, read one frame at a time.

    voxel_size: (x, y[, z]) in micrometres (the CTC files do not store it).
    """
    folder, kind = track_folder_kind(folder)
    pattern, track_name = FOLDER_KINDS[kind]
    files = list_frames(folder, pattern)
    gaps = frame_gaps(files)
    if gaps:
        raise CTCFormatError(f"{folder}: frames {gaps[:5]} missing (a lineage cannot skip a frame that is not there)")
    track_path = folder / track_name
    tracks = read_tracks(track_path)
    masks = ((t, read_labels(path, None)) for t, path in files.items())
    return graph_from_masks(masks, tracks, voxel_size, {t: str(p) for t, p in files.items()}, str(track_path), folder)


def graph_from_masks(masks: Iterable[tuple[int, np.ndarray]], tracks, voxel_size=VOXEL_SIZE_SIM,
                     names: dict[int, str] | None = None, track_file: str = "tracks", source: Path | None = None) -> TrackGraph:
    """The TrackGraph of (t, track-labelled mask) pairs and their rows (L, B, E, P), checked against the CTC rules.

    masks are consumed one at a time (only centroids and sizes are kept); names: frame -> file, for messages.
    """
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    ts, labels, positions, volumes, present, frames = [], [], [], [], {}, []
    shape = None
    for t, mask in masks:
        where = names[t] if names and t in names else f"frame {t}"
        mask = np.asarray(mask)
        if mask.ndim not in (2, 3) or not np.issubdtype(mask.dtype, np.integer):
            raise CTCFormatError(f"{where}: expected a 2D or 3D integer label image, found {mask.dtype} {mask.shape}")
        if shape is None:
            shape = mask.shape
        elif mask.shape != shape:
            raise CTCFormatError(f"{where}: shape {mask.shape} differs from the first frame's {shape}")
        lab, vol, cen = measure(mask)
        present[t] = lab
        frames.append(int(t))
        ts.append(np.full(lab.size, t, dtype=np.int64))
        labels.append(lab)
        positions.append(cen)
        volumes.append(vol)
    if shape is None:
        raise CTCFormatError(f"{source or track_file}: no frames")
    gaps = frame_gaps(frames)
    if gaps or frames != sorted(frames):
        raise CTCFormatError(f"{source or track_file}: frames must be consecutive and in order, got {frames[:10]}")
    problems = lineage_problems(tracks, present, names, track_file)
    if problems:
        more = f" (and {len(problems) - 1} more CTC rule(s) broken)" if len(problems) > 1 else ""
        raise CTCFormatError(problems[0] + more)
    ndim = len(shape)
    size = tuple(float(v) for v in voxel_size)
    if len(size) == 3 and ndim == 2:
        size = size[:2]
    if len(size) != ndim or min(size) <= 0:
        raise UserError(f"--voxel-size {' '.join(map(str, voxel_size))}: expected {ndim} positive values (x y"
                        f"{' z' if ndim == 3 else ''}) in micrometres for the {ndim}D masks of {source or track_file}")
    graph = TrackGraph(np.concatenate(ts), np.concatenate(labels), np.concatenate(positions).reshape(-1, ndim),
                       np.concatenate(volumes), np.zeros((0, 2), np.int64), tracks, size, tuple(int(s) for s in shape),
                       source, frames)
    graph.edges = _edges(graph)
    return graph


def _edges(graph: TrackGraph) -> np.ndarray:
    """Within-track edges (t -> t + 1, same label) and parent edges (parent's last node -> child's first)."""
    node = {key: i for i, key in enumerate(zip(graph.t.tolist(), graph.label.tolist()))}
    pairs = []
    for l, b, e, p in graph.tracks.tolist():
        pairs.extend((node[(t, l)], node[(t + 1, l)]) for t in range(b, e))
        if p:
            end_of_parent = int(graph.tracks[graph.tracks[:, 0] == p][0, 2])
            pairs.append((node[(end_of_parent, p)], node[(b, l)]))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
