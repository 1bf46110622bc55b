"""Frames larger than memory: segmented in overlapping blocks whose labels are stitched into one mask.

    layout = plan_blocks(axes, margin, need, budget)        # raises BudgetError when not even small blocks fit
    labels = segment_in_blocks(frame, layout, segment)      # segment(raw, block) -> labels of block.extent

The frame is cut into a grid of blocks. Each block has a *core* (the cores tile the frame, no overlap) and
an *extent*, what is read and segmented: the core with a margin around it (the caller's: the Predictor
keeps a nucleus diameter, so that an object cut by the core's border is seen whole), grown to the frame's
own prediction windows. On each axis (`Axis`) a block covers a range of the frame's working voxels that
holds, whole, every window of the frame that covers a voxel of its core or margin, and it is resampled on
the frame's grid (`Layout.to_working`, `Layout.to_native`): its windows, their inputs and their outputs are
the frame's, so its probabilities there are those of the whole frame, up to float rounding (checked in
tests/test_tiled.py). The smallest block is thus about a window wider than core and margin on each axis.

Stitching, in raster order of the blocks: a block's labels get fresh global ids; where its extent covers the
cores of blocks already done (the shared margin), each of its objects is compared with the objects already
written there, and two objects that overlap by a majority of both their parts in that margin are the same
object (union-find). The block then writes its core. At the end every id is replaced by its set's
representative and the labels are renumbered 1..N. An object away from every core border is thus the very
object the block saw; one cut by a border is joined from its two halves.

Memory: the frame-sized arrays of the stitching (uint32 ids and the uint16 result, STITCH_BYTES per voxel)
stay in memory when they take at most STITCH_SHARE of the budget, else they live in an unlinked scratch file
(`DiskArray`: the OS removes it when it is closed, even after a crash) mapped only a box at a time. Of the
layouts whose largest block fits what is left, the one that segments the fewest voxels (margins included)
is taken: peak memory follows the budget, not the frame.
"""
from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from errors import UserError

#: Bytes per voxel of the frame-sized stitching arrays: uint32 global ids and the uint16 result.
STITCH_BYTES = 6
#: The stitching arrays stay in memory while they take at most this share of the budget.
STITCH_SHARE = 0.25
#: Cores are never cut smaller than this many voxels per axis (or the axis' length).
MIN_CORE = 8
#: Planes read or written at a time when the stitched ids are turned into the result.
_CHUNK_VOXELS = 1 << 22


class BudgetError(UserError):
    """Not even the smallest block fits the memory budget."""


@dataclass(frozen=True)
class Axis:
    """One axis of a frame and the grid it is predicted on: n native voxels are m working voxels (the plan's
    working spacing; m = n without one), resampled with the geometry of `dataset3D.resample` (box average
    where an axis shrinks, linear where it grows, half-voxel centres); the windows are `roi` working voxels
    long and start every `step` (0: no windows to follow), as `inference.window_starts` places them.

    A block covers a range of the frame's *own* working voxels that starts where a window of the frame
    starts and ends where one ends (or at the frame's ends), and it is resampled on the frame's grid
    (`to_working`, `to_native`): so its windows, their inputs and their outputs are those of the whole frame,
    and a block predicts its core as the whole frame would (up to float rounding).
    """
    n: int
    m: int
    roi: int = 0
    step: int = 0

    @property
    def cuttable(self) -> bool:
        """False where one window covers the whole axis (every block would read all of it)."""
        return self.n > MIN_CORE and not (self.roi and self.m <= self.roi)

    # the two maps, voxel by voxel: which input voxels an output voxel is made of
    def _support(self, i: int, size: int, out: int) -> tuple[int, int]:
        """Input voxels [lo, hi) that output voxel i of an axis resized from `size` to `out` reads."""
        if out < size:  # box average: torch's adaptive pooling bins
            return (i * size) // out, -(-((i + 1) * size) // out)
        if out == size:
            return i, i + 1
        src = max((i + 0.5) * size / out - 0.5, 0.0)
        lo = int(src)
        return lo, min(lo + 1, size - 1) + 1

    def working_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The working voxels [j0, j1) a block needs to give native voxels [lo, hi) the values the whole frame
        gives them: every window of the frame that covers one of their working voxels, whole."""
        j0 = self._support(lo, self.m, self.n)[0]
        j1 = self._support(hi - 1, self.m, self.n)[1]
        if not self.step or self.m <= self.roi:
            return (j0, j1) if self.step == 0 else (0, self.m)
        flush = self.m - self.roi  # the frame's last window starts there; the others at multiples of step
        first = -(-(j0 - self.roi + 1) // self.step) * self.step  # the first start past j0 - roi
        start = max(first, 0) if first < flush else flush
        last = (j1 - 1) // self.step * self.step  # the last start at or before j1 - 1
        stop = last + self.roi if last < flush and flush > j1 - 1 else self.m
        return start, stop

    def native_range(self, j0: int, j1: int) -> tuple[int, int]:
        """The native voxels [a, b) that working voxels [j0, j1) are made of."""
        return self._support(j0, self.n, self.m)[0], self._support(j1 - 1, self.n, self.m)[1]

    def ranges(self, core: int, margin: int) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
        """(core, working, extent) ranges of every block along this axis, for cores of `core` voxels."""
        out = []
        for c0 in range(0, self.n, core):
            c1 = min(c0 + core, self.n)
            j0, j1 = self.working_range(max(c0 - margin, 0), min(c1 + margin, self.n))
            a, b = self.native_range(j0, j1)
            out.append(((c0, c1), (j0, j1), (min(a, max(c0 - margin, 0)), max(b, min(c1 + margin, self.n)))))
        return out

    # the resampling of a block on the frame's grid
    def to_working(self, x: torch.Tensor, dim: int, j0: int, j1: int, a: int) -> torch.Tensor:
        """Working voxels [j0, j1) of this axis (dim `dim` of x) from native voxels starting at `a`."""
        if self.m == self.n:
            return x.narrow(dim, j0 - a, j1 - j0)
        return _resize_axis(x, dim, self.n, self.m, j0, j1, a)

    def to_native(self, x: torch.Tensor, dim: int, a: int, b: int, j0: int) -> torch.Tensor:
        """Native voxels [a, b) of this axis from working voxels starting at j0 (those missing at a block's
        edge are left out of the average or clamped: only the margin is affected)."""
        if self.m == self.n:
            return x.narrow(dim, a - j0, b - a)
        return _resize_axis(x, dim, self.m, self.n, a, b, j0)


def _resize_axis(x: torch.Tensor, dim: int, size: int, out: int, o0: int, o1: int, start: int) -> torch.Tensor:
    """Output voxels [o0, o1) of axis `dim` resized from `size` to `out` voxels, from an input holding voxels
    start.. of it: adaptive-pooling bins where it shrinks, linear (align_corners=False) where it grows. Input
    voxels missing at a block's edge are left out of a bin, or clamped (as the frame's edge is)."""
    have = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = -1
    i = torch.arange(o0, o1, dtype=torch.int64)
    if out < size:  # the mean of each bin, as the sum of its first, second, ... voxels (a few gathers)
        lo = ((i * size) // out - start).clamp(0, have)
        hi = (-((-(i + 1) * size) // out) - start).clamp(0, have)
        total = None
        for t in range(int((hi - lo).max())):
            inside = (lo + t < hi).to(x.dtype).view(shape)
            term = _take(x, dim, (lo + t).clamp(max=have - 1)).mul_(inside)
            total = term if total is None else total.add_(term)
        return total.div_((hi - lo).clamp(min=1).to(x.dtype).view(shape))
    src = ((i.double() + 0.5) * size / out - 0.5).clamp(min=0)
    i0 = torch.floor(src).long()
    weight = (src - i0).to(x.dtype).view(shape)
    i1 = torch.minimum(i0 + 1, torch.tensor(size - 1))
    i0, i1 = (i0 - start).clamp(0, have - 1), (i1 - start).clamp(0, have - 1)
    result = _take(x, dim, i0).mul_(1 - weight)
    return result.addcmul_(_take(x, dim, i1), weight)


def _take(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """x.index_select(dim, index) (as advanced indexing, several times faster on the first axes)."""
    return x[(slice(None),) * dim + (index,)]


@dataclass(frozen=True)
class Block:
    """One block: `core` (the native voxels its labels are kept for) inside `extent` (the native voxels read
    and segmented), predicted on `working` (the frame's working voxels that extent is resampled to)."""
    index: tuple[int, ...]
    core: tuple[slice, ...]
    extent: tuple[slice, ...]
    working: tuple[slice, ...]

    @property
    def extent_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.extent)

    @property
    def working_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.working)


@dataclass(frozen=True)
class Layout:
    """How a frame is cut: `grid` blocks per axis of `core` voxels (the last one shorter), each read with at
    least `margin` voxels around (grown to whole windows, see Axis); `block_need` bytes for the largest block,
    `fixed` bytes for the stitching arrays kept in memory (0 when `on_disk`)."""
    axes: tuple[Axis, ...]
    grid: tuple[int, ...]
    core: tuple[int, ...]
    margin: tuple[int, ...]
    block_need: int
    fixed: int
    on_disk: bool

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.n for a in self.axes)

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.grid))

    @property
    def need(self) -> int:
        """Estimated peak bytes of the whole tiled prediction of one frame."""
        return self.block_need + self.fixed

    def blocks(self) -> list[Block]:
        """Every block, in raster order of the grid."""
        per_axis = [a.ranges(c, m) for a, c, m in zip(self.axes, self.core, self.margin)]
        out = []
        for index in itertools.product(*(range(g) for g in self.grid)):
            parts = [ranges[i] for i, ranges in zip(index, per_axis)]
            out.append(Block(index, tuple(slice(*p[0]) for p in parts), tuple(slice(*p[2]) for p in parts),
                             tuple(slice(*p[1]) for p in parts)))
        return out

    def to_working(self, volume: np.ndarray, block: Block) -> np.ndarray:
        """A block's native volume (its extent) resampled to its part of the frame's working grid."""
        x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        for dim, (axis, w, e) in enumerate(zip(self.axes, block.working, block.extent)):
            x = axis.to_working(x, dim, w.start, w.stop, e.start)
        return x.contiguous().numpy()

    def to_native(self, maps, block: Block) -> np.ndarray:
        """Maps [C, *working] of a block brought back to its extent on the native grid, float32."""
        maps = maps if isinstance(maps, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
        out = np.empty((maps.shape[0], *block.extent_shape), np.float32)
        for channel in range(maps.shape[0]):  # one map at a time: the temporaries are one map's
            x = maps[channel]
            for dim in reversed(range(len(self.axes))):  # the last axis first, while the map is smallest
                axis, w, e = self.axes[dim], block.working[dim], block.extent[dim]
                x = axis.to_native(x, dim, e.start, e.stop, w.start)
            out[channel] = x.numpy()
            del x
        return out

    def describe(self) -> str:
        x = lambda v: "x".join(str(int(i)) for i in v)  # noqa: E731
        return (f"{self.n_blocks} blocks ({x(self.grid)}) of {x(self.core)} voxels with a {x(self.margin)} margin, "
                f"about {format_bytes(self.need)}" + (", stitched on disk" if self.on_disk else ""))


def _round_up(value: int, k: int) -> int:
    return -(-int(value) // k) * k


def _core(n: int, count: int) -> int:
    """Core length of an axis of n voxels cut in `count`."""
    return math.ceil(n / count)


def format_bytes(n: float) -> str:
    """`1.50 GiB`, `320 MiB`: a size for messages."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _mapped_rows(extent, shape) -> int:
    """Bytes of file pages a box of `extent` touches when read through a map of whole rows (4 bytes a voxel)."""
    return 4 * int(np.prod(extent[:-1])) * int(shape[-1])


def plan_blocks(axes, margin, need: Callable[[tuple[int, ...], tuple[int, ...]], int], budget: int) -> Layout:
    """The fewest blocks whose largest one fits `budget` bytes (with the stitching arrays).

    axes: an `Axis` per frame axis (or plain lengths). margin: native voxels read around each core, per axis.
    need(extent_shape, working_shape): bytes of segmenting one block of those shapes.
    Raises BudgetError when blocks of MIN_CORE voxels still do not fit.
    """
    axes = tuple(a if isinstance(a, Axis) else Axis(int(a), int(a)) for a in axes)
    margin = tuple(int(m) for m in margin)
    frame_bytes = STITCH_BYTES * int(np.prod([a.n for a in axes]))
    smallest = None
    for on_disk in ((False, True) if frame_bytes <= STITCH_SHARE * budget else (True,)):
        fixed = 0 if on_disk else frame_bytes
        layout = _fit(axes, margin, need, budget - fixed, fixed, on_disk)
        if isinstance(layout, Layout):
            return layout
        smallest = layout
    raise BudgetError(f"blocks of {'x'.join(map(str, smallest[0]))} voxels (with a {'x'.join(map(str, margin))} margin) "
                      f"need about {format_bytes(smallest[1])} each")


def _fit(axes, margin, need, room: int, fixed: int, on_disk: bool):
    """The Layout that fits `room` bytes with the least work (voxels segmented, margins included), or
    (smallest core, its need) where none fits. Every core length of every axis is tried (the distinct values
    of ceil(n / k), down to MIN_CORE), each with the longest extent it gives."""
    shape = [a.n for a in axes]
    per_axis = []
    for a, m in zip(axes, margin):
        options, seen = [], set()
        for k in range(1, a.n + 1 if a.cuttable else 2):
            core = _core(a.n, k)
            if core in seen or (k > 1 and core < min(MIN_CORE, a.n)):
                continue
            seen.add(core)
            ranges = a.ranges(core, m)
            options.append((core, max(e[1] - e[0] for _, _, e in ranges), max(w[1] - w[0] for _, w, _ in ranges),
                            sum(e[1] - e[0] for _, _, e in ranges)))
        per_axis.append(options)
    best = smallest = None
    for combo in itertools.product(*per_axis):
        extent, working = tuple(o[1] for o in combo), tuple(o[2] for o in combo)
        block_need = int(need(extent, working)) + _mapped_rows(extent, shape)
        if smallest is None or block_need < smallest[1]:
            smallest = (tuple(o[0] for o in combo), block_need)
        if block_need <= room:
            work = (int(np.prod([o[3] for o in combo])), block_need)
            if best is None or work < best[0]:
                best = (work, combo, block_need)
    if best is None:
        return smallest
    _, combo, block_need = best
    core = tuple(o[0] for o in combo)
    grid = tuple(math.ceil(a.n / c) for a, c in zip(axes, core))
    return Layout(tuple(axes), grid, core, tuple(margin), block_need, fixed, on_disk)


# ----------------------------------------------------------------------------- frame-sized arrays
class MemoryArray:
    """A frame-sized array in memory, with DiskArray's read/write of boxes."""

    def __init__(self, shape, dtype):
        self.array = np.zeros(shape, dtype)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def read(self, box) -> np.ndarray:
        return self.array[box]

    def write(self, box, values) -> None:
        self.array[box] = values

    def result(self) -> np.ndarray:
        return self.array

    def close(self) -> None:
        self.array = None


class DiskArray:
    """A frame-sized array in an unlinked scratch file in `folder` (default: the system's temporary folder):
    the OS frees it when it is closed or the process ends, crash or not. Boxes are read and written through a
    map of only the planes (first-axis indices) they cover, unmapped at once, so its pages do not pile up in
    the process's memory; `result()` maps it whole, read-only (freed when that array is dropped)."""

    def __init__(self, shape, dtype, folder=None):
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        folder = Path(folder) if folder is not None and Path(folder).is_dir() else None
        self.file = tempfile.TemporaryFile(prefix=".nuclei3d-blocks-", dir=folder)
        self.plane = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self.file.truncate(self.plane * self.shape[0])  # sparse: the disk fills as blocks are written

    def _map(self, first: slice, mode: str) -> np.memmap:
        return np.memmap(self.file, dtype=self.dtype, mode=mode, offset=first.start * self.plane,
                         shape=(first.stop - first.start, *self.shape[1:]))

    def read(self, box) -> np.ndarray:
        mapped = self._map(box[0], "r")
        try:
            return np.array(mapped[(slice(None), *box[1:])])
        finally:
            del mapped

    def write(self, box, values) -> None:
        mapped = self._map(box[0], "r+")
        try:
            mapped[(slice(None), *box[1:])] = values
            mapped.flush()
        finally:
            del mapped

    def result(self) -> np.ndarray:
        return np.memmap(self.file, dtype=self.dtype, mode="r", shape=self.shape)

    def close(self) -> None:
        self.file.close()


def frame_array(shape, dtype, on_disk: bool, folder=None):
    """A zeroed frame-sized MemoryArray, or a DiskArray in `folder` when `on_disk`."""
    return DiskArray(shape, dtype, folder) if on_disk else MemoryArray(shape, dtype)


# ----------------------------------------------------------------------------- stitching
class _UnionFind:
    def __init__(self):
        self.parent = [0]

    def add(self, n: int) -> int:
        """Make n new singleton ids; return the first."""
        first = len(self.parent)
        self.parent.extend(range(first, first + n))
        return first

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _local(box, extent) -> tuple[slice, ...]:
    return tuple(slice(b.start - e.start, b.stop - e.start) for b, e in zip(box, extent))


def _intersection(a, b):
    box = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return box if all(s.stop > s.start for s in box) else None


def _matches(ids: np.ndarray, labels: np.ndarray) -> list[tuple[int, int]]:
    """(global id, block label) pairs whose overlap is more than half of both their voxels in the shared
    margin (`ids`: the labels already written there, `labels`: the block's own, same shape)."""
    both = (ids > 0) & (labels > 0)
    if not both.any():
        return []
    key = ids[both].astype(np.int64) * (int(labels.max()) + 1) + labels[both]
    pairs, overlap = np.unique(key, return_counts=True)
    gid, lab = np.divmod(pairs, int(labels.max()) + 1)
    id_values, id_sizes = np.unique(ids[ids > 0], return_counts=True)
    id_size = id_sizes[np.searchsorted(id_values, gid)]
    label_size = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)[lab]
    keep = (2 * overlap > id_size) & (2 * overlap > label_size)
    return list(zip(gid[keep].tolist(), lab[keep].tolist()))


def segment_in_blocks(frame, layout: Layout, segment: Callable[[np.ndarray, Block], np.ndarray], scratch=None,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """uint16 labels (1..N) of `frame` (anything with `shape` and `read(box)`, e.g. a `dataset.frames` frame),
    segmented block by block as `layout` says and stitched (see the module docstring).

    segment(raw block, Block) -> integer labels of the block's extent (its shape). scratch: where the scratch file
    goes when the layout stitches on disk (then the result is a read-only array mapped from that unlinked file).
    progress(done, total) is called after each block. Raises UserError past 65535 objects (the CTC masks are uint16).
    """
    blocks = layout.blocks()
    by_index = {b.index: b for b in blocks}
    reach = [-(-m // c) for m, c in zip(layout.margin, layout.core)]  # blocks a margin reaches across, per axis
    ids = frame_array(layout.shape, np.uint32, layout.on_disk, scratch)
    sets = _UnionFind()
    present: list[np.ndarray] = []
    try:
        for number, block in enumerate(blocks):
            labels = np.asarray(segment(frame.read(block.extent), block))
            if labels.shape != block.extent_shape:
                raise ValueError(f"segment returned shape {labels.shape} for a block of {block.extent_shape}")
            n = int(labels.max()) if labels.size else 0
            offset = sets.add(n) - 1
            written = np.zeros(labels.shape, bool)  # the cores of earlier blocks inside this extent
            for step in itertools.product(*(range(-r, r + 1) for r in reach)):
                other = by_index.get(tuple(i + s for i, s in zip(block.index, step)))
                if other is None or other.index >= block.index:
                    continue
                shared = _intersection(other.core, block.extent)
                if shared is not None:
                    written[_local(shared, block.extent)] = True
            if written.any() and n:
                done = np.where(written, ids.read(block.extent), 0)
                seen = np.unique(done)  # each id as its set's representative: an object already joined
                roots = np.array([sets.find(int(i)) for i in seen], np.uint32)  # across cores is one object
                done = roots[np.searchsorted(seen, done)]
                for gid, lab in _matches(done, np.where(written, labels, 0)):
                    sets.union(gid, lab + offset)
                del done
            core = labels[_local(block.core, block.extent)]
            values = np.where(core > 0, core.astype(np.uint32) + np.uint32(offset), np.uint32(0))
            ids.write(block.core, values)
            present.append(np.unique(values[values > 0]))
            del labels, written, core, values
            if progress is not None:
                progress(number + 1, len(blocks))
        return _relabel(ids, sets, np.concatenate(present) if present else np.zeros(0, np.uint32), layout, scratch)
    finally:
        ids.close()


def _relabel(ids, sets: _UnionFind, present: np.ndarray, layout: Layout, scratch) -> np.ndarray:
    """The stitched result: each id replaced by its set's number 1..N (in order of the sets' first ids)."""
    roots = np.array([sets.find(int(i)) for i in present], np.int64)
    numbers = np.searchsorted(np.unique(roots), roots) + 1
    if numbers.size and numbers.max() > np.iinfo(np.uint16).max:
        raise UserError(f"{numbers.max()} objects in one {'x'.join(map(str, layout.shape))} frame: more than the "
                        f"{np.iinfo(np.uint16).max} a CTC result mask (uint16) holds")
    lut = np.zeros(len(sets.parent), np.uint16)
    lut[present] = numbers
    out = frame_array(layout.shape, np.uint16, layout.on_disk, scratch)
    planes = max(1, _CHUNK_VOXELS // max(1, int(np.prod(layout.shape[1:]))))
    rest = tuple(slice(0, n) for n in layout.shape[1:])
    for z in range(0, layout.shape[0], planes):
        box = (slice(z, min(z + planes, layout.shape[0])), *rest)
        out.write(box, lut[ids.read(box)])
    return out.result()
