"""Tracking: link per-frame instance masks (2D+t or 3D+t) into CTC tracks with divisions and gap closing.

Two passes, so that memory holds one or two frames, never the sequence:

1. `link` reads the frames one at a time and keeps only per-object features (input label, volume,
   centroid in µm) and the overlap counts with the previous frame (one `np.bincount` over combined
   label pairs). For each frame pair it solves one global assignment (cost: centroid distance in µm
   and 1 - IoU, gated by `TrackParams.max_distance`), then a second one that gives the unmatched
   new objects to mothers (divisions). After the last frame, track segments that end are joined
   to segments that start up to `max_gap` frames later (gap closing), again by one global assignment.
2. `relabel` maps each frame's input labels to track labels with a lookup table (`np.take`).

Assignments use `scipy.sparse.csgraph.min_weight_full_bipartite_matching` (LAPJVsp) on the gated,
hence sparse, cost matrix, augmented with a "no link" choice for every object (Jaqaman et al. 2008).

CTC labelling (checked by `dataset.validate.check_lineage`): a track continued after a gap gets a
new label whose parent is the old one; daughters get new labels with P = mother, and the mother's
track ends the frame before they start. Labels are numbered 1, 2, ... in order of their first frame.

Writing a CTC result folder from masks is `results.write_tracked_result` (used by every command); in
memory, `relabelled, tracks = track_sequence(read, frames, voxel_size)` links and relabels, reading each
frame twice (once to link, once to relabel) so that masks need not sit in memory together.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from dataset.ctc import VOXEL_SIZE_SIM, CTCFormatError, check_consecutive
from errors import ConfigError

#: Largest input label value accepted (the per-frame lookup table is a dense array of this length).
MAX_INPUT_LABEL = 2**24 - 1
#: Largest track label: CTC masks are uint16.
MAX_TRACKS = np.iinfo(np.uint16).max
_BINCOUNT_LIMIT = 2**20  # above this, labels are compacted by sorting instead of np.bincount


@dataclass(frozen=True)
class TrackParams:
    """Gates and costs of the linker. Distances are in micrometres, between object centroids.

    Every cost term lies in [0, 1]; leaving an object unlinked costs 1, so any candidate that
    passes its gates is taken unless a cheaper global choice uses its objects.
    """

    max_distance: float = 5.0  # largest centroid displacement between consecutive frames for a link
    min_iou: float = 0.3  # pairs overlapping at least this much are link candidates at any distance
    division_distance: float = 6.0  # largest distance from a mother's centroid to a daughter's
    daughter_volume: tuple[float, float] = (0.15, 0.95)  # each daughter's volume as a fraction of the mother's
    daughter_ratio: float = 3.0  # largest volume ratio between the two daughters
    max_gap: int = 2  # most frames an object may be missing before its track is continued
    gap_distance: float = 6.0  # largest centroid distance across a gap

    def __post_init__(self):
        positive = ("max_distance", "division_distance", "gap_distance", "daughter_ratio")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"TrackParams.{name} must be positive, got {getattr(self, name)}")
        lo, hi = self.daughter_volume
        if not 0 <= lo <= hi:
            raise ConfigError(f"TrackParams.daughter_volume must be (low, high) with 0 <= low <= high, got {self.daughter_volume}")
        if not 0 <= self.min_iou <= 1 or self.max_gap < 0:
            raise ConfigError(f"TrackParams: min_iou must be in [0, 1] and max_gap >= 0, got {self.min_iou}, {self.max_gap}")


class LookupTables(Sequence):
    """Per-frame dense lookup tables input label -> track label (uint16), built on access."""

    def __init__(self, sources: list[np.ndarray], targets: list[np.ndarray]):
        self._sources, self._targets = sources, targets

    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, i: int) -> np.ndarray:
        sources = self._sources[i]
        lut = np.zeros(int(sources[-1]) + 1 if sources.size else 1, dtype=np.uint16)
        lut[sources] = self._targets[i]
        return lut


@dataclass
class Lineage:
    """Result of `link`: track rows (L, B, E, P) and, per frame, the map input label -> track label."""

    tracks: np.ndarray  # int64 rows (L, B, E, P), sorted by L
    luts: LookupTables  # luts[i]: lookup table of the i-th frame given to `link` (frame first_frame + i)
    first_frame: int = 0


def relabel(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Mask with every input label replaced by its track label (uint16), `lut` being the table of the
    same frame; a label beyond the table's end raises (a mask of another frame, or changed since linking)."""
    if mask.size and int(mask.max()) >= lut.size:
        raise CTCFormatError(f"mask has label {int(mask.max())}, not seen when linking (lookup table ends at {lut.size - 1})")
    return np.take(lut, mask)


# ----------------------------------------------------------------------------- per-frame measurement
@dataclass
class _Objects:
    """Objects of one frame: input labels, volumes (voxels), centroids (µm, array axis order)."""

    labels: np.ndarray
    volume: np.ndarray
    centroid: np.ndarray

    def __len__(self) -> int:
        return self.labels.size


def axis_spacing(voxel_size, ndim: int) -> np.ndarray:
    """Voxel size (x, y[, z]) in µm -> spacing in array axis order ([z,] y, x)."""
    size = [float(v) for v in voxel_size]
    if ndim == 2 and len(size) == 3:
        size = size[:2]  # a 3D voxel size on 2D masks: z does not apply
    if len(size) != ndim or min(size) <= 0:
        raise ConfigError(f"voxel size {tuple(voxel_size)}: expected {ndim} positive values (x y{' z' if ndim == 3 else ''}) in µm")
    return np.array(size[::-1])


def _measure(mask: np.ndarray, spacing: np.ndarray, previous: np.ndarray | None, n_prev: int):
    """Objects of `mask`, its compact index image (0 = background, k + 1 = object k) and the overlap
    counts with the previous frame's compact image (`n_prev` objects) as sorted codes i * n + j and counts."""
    flat = mask.ravel()
    fg = np.flatnonzero(flat)
    values = flat[fg]
    if values.size and int(values.max()) <= _BINCOUNT_LIMIT:
        present = np.flatnonzero(np.bincount(values))
        lut = np.zeros(int(present[-1]) + 1, dtype=np.int64)
        lut[present] = np.arange(present.size)
        index = lut[values]
    else:
        present, index = np.unique(values, return_inverse=True)
    n = present.size
    volume = np.bincount(index, minlength=n).astype(np.float64)
    coords = np.unravel_index(fg, mask.shape)
    centroid = np.stack([np.bincount(index, weights=c, minlength=n) for c in coords], axis=1) if n else np.zeros((0, mask.ndim))
    centroid = centroid / np.maximum(volume, 1)[:, None] * spacing
    compact = np.zeros(flat.size, dtype=np.uint16 if n < 2**16 - 1 else np.uint32)
    compact[fg] = index + 1
    codes = counts = np.zeros(0, dtype=np.int64)
    if previous is not None and n:
        before = previous[fg].astype(np.int64)
        both = before > 0
        pairs = (before[both] - 1) * n + index[both]
        if n_prev * n <= 2**24:
            table = np.bincount(pairs, minlength=n_prev * n)
            codes = np.flatnonzero(table)
            counts = table[codes]
        else:
            codes, counts = np.unique(pairs, return_counts=True)
    return _Objects(present.astype(np.int64), volume, centroid), compact, codes, counts


def _check_frame(mask, position: int, first_shape) -> None:
    name = f"frame {position}"
    if not isinstance(mask, np.ndarray) or not np.issubdtype(mask.dtype, np.integer):
        raise CTCFormatError(f"{name}: a label image must be an integer array, got {getattr(mask, 'dtype', type(mask))}")
    if mask.ndim not in (2, 3):
        raise CTCFormatError(f"{name}: expected a 2D or 3D label image, got shape {mask.shape}")
    if first_shape is not None and mask.shape != first_shape:
        raise CTCFormatError(f"{name}: shape {mask.shape} differs from the first frame's {first_shape}")
    if mask.size and np.issubdtype(mask.dtype, np.signedinteger) and mask.min() < 0:
        raise CTCFormatError(f"{name}: negative labels (min {mask.min()})")
    if mask.size and int(mask.max()) > MAX_INPUT_LABEL:
        raise CTCFormatError(f"{name}: label {int(mask.max())} is larger than {MAX_INPUT_LABEL}; number the objects sequentially first")


# ----------------------------------------------------------------------------- assignment
def _assign(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, n_rows: int, n_cols: int):
    """Globally cheapest one-to-one choice among candidate pairs (unique), each object also free to
    stay unpaired at cost 1. Returns the chosen (rows, cols).

    The square augmented matrix [[C, no-link diagonal], [no-link diagonal, C^T pattern at 0]] always
    has a full matching; weights are shifted by +1 because the solver treats zeros as missing edges.
    """
    if rows.size == 0:
        return rows, cols
    r_free = np.arange(n_rows)
    c_free = np.arange(n_cols)
    i = np.concatenate([rows, r_free, n_rows + c_free, n_rows + cols])
    j = np.concatenate([cols, n_cols + r_free, c_free, n_cols + rows])
    w = np.concatenate([cost, np.ones(n_rows), np.ones(n_cols), np.zeros(rows.size)]) + 1.0
    size = n_rows + n_cols
    graph = sparse.csr_matrix((w, (i, j)), shape=(size, size))
    r, c = min_weight_full_bipartite_matching(graph)
    keep = (r < n_rows) & (c < n_cols)
    return r[keep], c[keep]


def _pairs_within(a: np.ndarray, b: np.ndarray, radius: float):
    """Index pairs (i, j) with |a_i - b_j| <= radius, by k-d trees."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    found = cKDTree(a).sparse_distance_matrix(cKDTree(b), radius, output_type="ndarray")
    return found["i"].astype(np.int64), found["j"].astype(np.int64)


def _link_pair(prev: _Objects, cur: _Objects, codes: np.ndarray, counts: np.ndarray, params: TrackParams):
    """Links prev -> cur as (i, k) plus divisions as (i, j): j a second daughter of i, whose link i -> k
    becomes the other daughter."""
    n = len(cur)
    empty = np.zeros(0, dtype=np.int64)
    if len(prev) == 0 or n == 0:
        return empty, empty, empty, empty
    near_i, near_j = _pairs_within(prev.centroid, cur.centroid, max(params.max_distance, params.division_distance))
    keys = np.union1d(codes, near_i * n + near_j)
    i, j = keys // n, keys % n
    overlap = np.zeros(keys.size)
    at = np.searchsorted(keys, codes)
    overlap[at] = counts
    dist = np.linalg.norm(prev.centroid[i] - cur.centroid[j], axis=1)
    iou = overlap / (prev.volume[i] + cur.volume[j] - overlap)

    ok = (dist <= params.max_distance) | (iou >= params.min_iou)
    cost = np.minimum(dist / params.max_distance, 1.0) + (1.0 - iou)
    link_i, link_k = _assign(i[ok], j[ok], cost[ok], len(prev), n)

    # divisions: a new object j near a mother i that is linked to k, both daughters "roughly half" of i
    successor = np.full(len(prev), -1)
    successor[link_i] = link_k
    is_new = np.ones(n, dtype=bool)
    is_new[link_k] = False
    k = successor[i]
    lo, hi = params.daughter_volume
    f_j = cur.volume[j] / prev.volume[i]
    f_k = cur.volume[k] / prev.volume[i]
    ratio = np.maximum(f_j, f_k) / np.minimum(f_j, f_k)
    ok = (is_new[j] & (k >= 0) & ((dist <= params.division_distance) | (overlap > 0))
          & (f_j >= lo) & (f_j <= hi) & (f_k >= lo) & (f_k <= hi) & (ratio <= params.daughter_ratio))
    cost = np.minimum(dist / params.division_distance, 1.0) + (1.0 - overlap / cur.volume[j])
    div_i, div_j = _assign(i[ok], j[ok], cost[ok], len(prev), n)
    return link_i, link_k, div_i, div_j


# ----------------------------------------------------------------------------- linking
def link(frames: Iterable[np.ndarray], voxel_size=VOXEL_SIZE_SIM, params: TrackParams | None = None,
         first_frame: int = 0) -> Lineage:
    """Track the instance masks `frames` (consecutive, all the same shape, 0 = background).

    voxel_size: (x, y[, z]) in µm; first_frame: the frame number of the first mask (track B/E count from it).
    Only the previous frame is held in memory; see the module docstring for the second (relabelling) pass.
    """
    params = params or TrackParams()
    objects: list[_Objects] = []
    links: list[np.ndarray] = []  # (object, successor) global ids, same track
    parents: list[np.ndarray] = []  # (child, mother) global ids, divisions
    previous = shape = spacing = None
    offset = 0
    for position, mask in enumerate(frames):
        _check_frame(mask, position, shape)
        if shape is None:
            shape, spacing = mask.shape, axis_spacing(voxel_size, mask.ndim)
        current, compact, codes, counts = _measure(mask, spacing, previous, len(objects[-1]) if objects else 0)
        if objects:
            prev_offset = offset - len(objects[-1])
            link_i, link_k, div_i, div_j = _link_pair(objects[-1], current, codes, counts, params)
            dividing = np.zeros(len(objects[-1]), dtype=bool)
            dividing[div_i] = True
            keep = ~dividing[link_i]
            links.append(np.stack([link_i[keep] + prev_offset, link_k[keep] + offset], axis=1))
            first_daughters = np.stack([link_k[~keep] + offset, link_i[~keep] + prev_offset], axis=1)
            parents.append(np.concatenate([first_daughters, np.stack([div_j + offset, div_i + prev_offset], axis=1)]))
        objects.append(current)
        offset += len(current)
        previous = compact
    if not objects:
        raise CTCFormatError("no frames to track")
    return _lineage(objects, links, parents, first_frame, params)


def _lineage(objects: list[_Objects], links, parents, first_frame: int, params: TrackParams) -> Lineage:
    """Segments from the links, gap closing, track labels and rows (L, B, E, P)."""
    sizes = np.array([len(o) for o in objects])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    frame_of = np.repeat(np.arange(len(objects)), sizes)
    successor = np.full(total, -1)
    predecessor = np.full(total, -1)
    if links:
        pairs = np.concatenate(links).reshape(-1, 2)
        successor[pairs[:, 0]] = pairs[:, 1]
        predecessor[pairs[:, 1]] = pairs[:, 0]
    mother = np.full(total, -1)  # for a segment's first object: the mother's last object
    if parents:
        pairs = np.concatenate(parents).reshape(-1, 2)
        mother[pairs[:, 0]] = pairs[:, 1]

    # segments: chains of links, numbered in order of their first object (hence of their first frame)
    starts = np.flatnonzero(predecessor < 0)
    segment_of = [-1] * total
    end_list = []
    following = successor.tolist()
    for s, obj in enumerate(starts.tolist()):
        segment_of[obj] = s
        while following[obj] >= 0:
            obj = following[obj]
            segment_of[obj] = s
        end_list.append(obj)
    segment = np.array(segment_of, dtype=np.int64)
    ends = np.array(end_list, dtype=np.int64)
    parent = np.where(mother[starts] >= 0, segment[np.maximum(mother[starts], 0)], -1)
    centroid = np.concatenate([o.centroid for o in objects])
    has_children = np.zeros(len(starts), dtype=bool)
    has_children[parent[parent >= 0]] = True
    gap_child, gap_parent = _close_gaps(starts, ends, frame_of, centroid, parent, has_children, len(objects), params)
    parent[gap_child] = gap_parent

    if len(starts) > MAX_TRACKS:
        raise CTCFormatError(f"{len(starts)} tracks: more than the {MAX_TRACKS} labels a CTC uint16 mask can hold")
    labels = np.arange(1, len(starts) + 1)
    tracks = np.stack([labels, frame_of[starts] + first_frame, frame_of[ends] + first_frame,
                       np.where(parent >= 0, parent + 1, 0)], axis=1).astype(np.int64).reshape(-1, 4)
    targets = labels[segment].astype(np.uint16)
    sources = [o.labels for o in objects]
    return Lineage(tracks, LookupTables(sources, [targets[offsets[f]:offsets[f + 1]] for f in range(len(objects))]), first_frame)


def _close_gaps(starts, ends, frame_of, centroid, parent, has_children, n_frames: int, params: TrackParams):
    """Join segments that end (not by dividing) to segments that start (without a mother) 2 to
    max_gap + 1 frames later, near where they ended. Returns (child segments, parent segments)."""
    end_frame, start_frame = frame_of[ends], frame_of[starts]
    open_end = np.flatnonzero(~has_children & (end_frame < n_frames - 2))
    open_start = np.flatnonzero((parent < 0) & (start_frame > 1))
    if params.max_gap < 1 or open_end.size == 0 or open_start.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    a, b = _pairs_within(centroid[ends[open_end]], centroid[starts[open_start]], params.gap_distance)
    a, b = open_end[a], open_start[b]
    gap = start_frame[b] - end_frame[a] - 1
    ok = (gap >= 1) & (gap <= params.max_gap)
    a, b, gap = a[ok], b[ok], gap[ok]
    dist = np.linalg.norm(centroid[ends[a]] - centroid[starts[b]], axis=1)
    cost = np.minimum(dist / params.gap_distance, 1.0) + 0.5 * (gap - 1) / max(params.max_gap, 1)
    rows, cols = _assign(np.searchsorted(open_end, a), np.searchsorted(open_start, b), cost, open_end.size, open_start.size)
    return open_start[cols], open_end[rows]


def track_sequence(masks: Sequence[np.ndarray] | Callable[[int], np.ndarray], frames: Sequence[int] | None = None,
                   voxel_size=VOXEL_SIZE_SIM, params: TrackParams | None = None) -> tuple[Iterator[tuple[int, np.ndarray]], np.ndarray]:
    """Link then relabel: returns (an iterator of (t, track-labelled uint16 mask), track rows L B E P).

    masks: a list (masks[i] is frame frames[i]; frames default 0, 1, ...) or a reader t -> mask,
    called twice per frame (once to link, once to relabel) so that masks need not sit in memory.
    """
    if callable(masks):
        if frames is None:
            raise ConfigError("track_sequence: frames are required with a mask reader")
        read = masks
    else:
        frames = list(range(len(masks))) if frames is None else frames
        by_frame = dict(zip(frames, masks))
        read = by_frame.__getitem__
    frames = list(frames)
    if frames != check_consecutive(frames, "track_sequence"):
        raise ConfigError(f"track_sequence: frames must be given in increasing order, got {frames[:10]}")
    lineage = link((read(t) for t in frames), voxel_size, params, first_frame=frames[0])
    relabelled = ((t, relabel(read(t), lineage.luts[i])) for i, t in enumerate(frames))
    return relabelled, lineage.tracks
