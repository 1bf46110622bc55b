"""The data plan: measure a CTC training sequence once (`fingerprint`), then derive from it every size the
run needs (`make_plan`), so one command fits the demo data, the real Fluo-N3DH-SIM+ and any CTC set, 2D or 3D.

    fp = fingerprint(root, "01", voxel_size=args.voxel_size)       # measured once, cached beside the data
    plan = make_plan(fp, model.size_divisor, overrides={...}, flags={...})
    print(plan.describe())

The fingerprint holds the voxel size, the image shape, the nucleus size distribution (SEG GT), foreground
fraction and intensities, and the track motion (TRA GT). The plan holds
- the working spacing: the grid at which the median nucleus spans about TARGET_DIAMETER voxels in y/x
  (native when it already spans 16-32), with z zoomed like y/x but never finer than native and never to
  fewer than MIN_Z_DIAMETER voxels per nucleus (coarse z stays coarse);
- the training crop and the prediction window at that spacing (CROP_DIAMETERS nucleus diameters, 8 in 2D,
  at least MIN_CROP_DIAMETERS, multiples of the model's divisor and of the size it pads its input to, no larger
  than the image where avoidable), and for a ViT the patch size;
- the post-processing size limits (smallest object, smallest marker) in voxels at the working spacing, from
  the GT volumes in um^3;
- the tracking gates in um, from the measured displacements with a floor tied to the nucleus size.
Every value records where it came from: "plan", "config" (a train script), "flag" (the command line) or
"default"; an explicit value always wins over the plan.

Why 24 voxels (measured on two frames of the "sim+" synthetic preset, nuclei of about 50 voxels natively):
taking the GT labels to the working grid and back (dataset3D.resample_labels, "safe") keeps a mean
per-object Jaccard of 0.946 / 0.955 / 0.967 / 0.970 / 0.976 at 16 / 20 / 24 / 28 / 32 voxels across, while
the working volume of a 59x350x330 frame is 0.28 / 0.45 / 0.79 / 1.22 / 1.85 M voxels. 24 is where the
loss stops being worth the cost (past it, each step buys 0.3-0.6 % for 1.5x the voxels); it is close to the
demo's own 19 voxels, for which the models' defaults were tuned (so the demo stays on its native grid), and
its 3-diameter crop is today's 64 voxels in y/x. Tracking gates: on GT masks with 4 % of the nuclei removed
and 3 % split, TRA varies by less than 0.002 between floors of 0.75 and 3 diameters (the overlap decides
most links at these speeds); one diameter is kept because a nucleus does not pass its neighbour in a frame.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from dataset import VOXEL_SIZE_SIM, Sequence
from dataset.ctc import CTCFormatError, atomic_path
from errors import UserError

#: Bump when the measurement changes, so cached fingerprints are measured again.
FINGERPRINT_VERSION = 1
#: Percentiles stored for every distribution, as keys "p1", "p5", ... of a dict.
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
#: At most this many frames are read for sizes and intensities, and this many frame pairs for motion.
MAX_FRAMES = 10
#: Where the cache lives, relative to the data set root (a folder of our own: no user file is touched).
CACHE_DIR = ".nuclei3d"

# the rules of the plan (see the module docstring)
TARGET_DIAMETER = 24.0          # working voxels across the median nucleus in y/x
KEEP_NATIVE = (16.0, 32.0)      # ... unless it spans this many natively: then the native grid is used
MAX_ZOOM = 2.0                  # never up-sample y/x by more than this
MIN_Z_DIAMETER = 12.0           # z voxels the median nucleus keeps when z is zoomed down with y/x
CROP_DIAMETERS = 3.0            # training crop, nucleus diameters per axis (3D) ...
CROP_DIAMETERS_2D = 8.0         # ... and in 2D, where pixels are cheap (Cellpose and StarDist train on 7-12)
MIN_CROP_DIAMETERS = 1.5        # ... never fewer, where the image is large enough
MAX_CROP_VOXELS = 32 * 64 * 64  # ... and at most the voxels of the demo's crop, so a step costs what it costs there
WINDOW_COVER = 1.5              # a window covers a whole axis when that is at most this many crops long
MIN_SIZE_FRACTION = 0.2         # smallest object: this fraction of the 5th-percentile GT volume (0.1 -> 0.2: README)
MIN_MARKER_FRACTION = 0.01      # smallest marker: this fraction of it
GATE_MARGIN = 2.0               # max_distance: this many times the 99th-percentile displacement ...
GATE_FLOOR = 1.0                # ... and at least this many median nucleus diameters
GAP_FACTOR = 1.2                # division and gap gates: this many times max_distance, at least
PATCH_FRACTION = 1 / 3          # ViT patch: the power of two nearest this fraction of the nucleus (2/3, one token
                                # per nucleus, was too coarse for the boundaries: hard SEG 0.61 -> 0.72, README) ...
PATCH_FRACTION_2D = 2 / 3       # ... in 2D, where a crop spans 8 nuclei: a third would give ~1200 tokens, 5x the step
MAX_PATCH = 32

SOURCES = ("plan", "config", "flag", "default")
PLANNED = ("spacing", "crop_size", "window", "patch_size", "min_size", "min_marker_size",
           "max_distance", "division_distance", "gap_distance")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _percentiles(values, axis=None) -> dict | None:
    """{"p1": ..., "p99": ...} of `values` (per column with axis=0); None when there are none."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return None
    out = np.percentile(values, PERCENTILES, axis=axis)
    return {f"p{q}": (np.round(v, 6).tolist() if np.ndim(v) else round(float(v), 6)) for q, v in zip(PERCENTILES, out)}


# ----------------------------------------------------------------------------- voxel size
def check_voxel_size(voxel_size, ndim: int, option: str = "--voxel-size") -> tuple[float, ...]:
    """(x, y[, z]) in um as ndim positive floats; a 2D set accepts and drops a z. Raises UserError naming `option`."""
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise UserError(f"{option} {voxel_size!r}: expected {ndim} numbers "
                        f"(x y{' z' if ndim == 3 else ''}) in micrometres") from None
    if len(values) == 3 and ndim == 2:
        values = values[:2]
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"{option} {' '.join(f'{v:g}' for v in values)}: expected {ndim} positive sizes "
                        f"(x y{' z' if ndim == 3 else ''}) in micrometres for this {ndim}D data")
    return values


_UNITS = {"um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "\\u00b5m": 1.0,
          "\u00b5m": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3}


def read_voxel_size(path, ndim: int) -> tuple[float, ...] | None:
    """(x, y[, z]) in um from a TIFF's resolution tags and ImageJ unit/spacing, or None where they do not say.

    Trusted: an ImageJ unit of length (um, nm, mm...) with the resolution tags, or a resolution in
    centimetres; inch resolutions (usually a printer's 72 dpi) and unit-less files are ignored. A 3D
    file without an ImageJ spacing gives no z: then None.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            ij = tif.imagej_metadata or {}
            x, y = (page.tags.get(name) for name in ("XResolution", "YResolution"))
            unit_tag = page.tags.get("ResolutionUnit")
            res_unit = int(unit_tag.value) if unit_tag is not None else 2
    except (OSError, ValueError, IndexError, EOFError, tifffile.TiffFileError):
        return None
    if x is None or y is None:
        return None
    unit = str(ij.get("unit", "")).strip().lower()
    if unit in _UNITS:
        scale = _UNITS[unit]
    elif res_unit == 3:  # pixels per centimetre
        scale = 1e4
    else:
        return None

    def size(tag):
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        return den / num * scale if num else None

    sizes = [size(x), size(y)]
    if ndim == 3:
        spacing = ij.get("spacing")
        sizes.append(float(spacing) * (_UNITS[unit] if unit in _UNITS else 1.0) if spacing else None)
    if any(s is None or not math.isfinite(s) or s <= 0 for s in sizes):
        return None
    return tuple(round(s, 9) for s in sizes)


def resolve_voxel_size(path, ndim: int, given=None, default=VOXEL_SIZE_SIM,
                       what: str = "") -> tuple[tuple[float, ...], str]:
    """(voxel size (x, y[, z]) in um, source): `given` ("given"), else the TIFF metadata of `path`
    ("metadata"), else `default` ("default", with a printed warning)."""
    if given is not None:
        return check_voxel_size(given, ndim), "given"
    found = read_voxel_size(path, ndim) if path is not None else None
    if found is not None:
        return found, "metadata"
    value = check_voxel_size(default, ndim, "default voxel size")
    _warn(f"{what or path}: no voxel size given (--voxel-size X Y{' Z' if ndim == 3 else ''}) or found in the TIFF "
          f"metadata; using {' x '.join(f'{v:g}' for v in value)} um (Fluo-N3DH-SIM+)")
    return value, "default"


# ----------------------------------------------------------------------------- fingerprint
@dataclass
class Fingerprint:
    """What a CTC training sequence looks like, measured from its images and ground truth.

    Distributions are dicts of percentiles {"p1", "p5", "p25", "p50", "p75", "p95", "p99"}; per-axis values
    are lists in array order ((z, y, x) or (y, x)).

    Args:
        ndim: 2 or 3 spatial dimensions.
        shape: image shape, array order.
        frames: number of frames in the sequence.
        voxel_size: (x, y[, z]) in um, CTC order (the order of --voxel-size).
        voxel_size_source: "given", "metadata" or "default".
        objects: number of nucleus instances measured.
        sizes_from: "masks" (full SEG masks) or "slices" (2D SEG slices of 3D frames: z extents are estimated
            as round nuclei from y/x).
        extent_vox, extent_um: per-axis bounding-box extents of the nuclei.
        diameter_um: equivalent diameter (of the sphere, or disc in 2D, of the same volume).
        diameter_vox: that diameter in voxels of each axis.
        volume_um3: nucleus volumes (areas in um^2 in 2D).
        foreground_fraction: fraction of the voxels inside nuclei.
        intensity_inside, intensity_outside: raw image intensities inside and outside nuclei.
        displacement_um: centroid displacement of a track from one frame to the next (None without TRA GT).
        division_offset_um: distance from a mother's last centroid to each daughter's first (None if unseen).
        division_rate: divisions per object per frame, from man_track.txt (None without it).
        links: number of displacements measured.
        seg_frames, tra_frames: the frames that were read.
        version: FINGERPRINT_VERSION at measurement.
    """
    ndim: int
    shape: list
    frames: int
    voxel_size: list
    voxel_size_source: str
    objects: int
    sizes_from: str
    extent_vox: dict
    extent_um: dict
    diameter_um: dict
    diameter_vox: dict
    volume_um3: dict
    foreground_fraction: float
    intensity_inside: dict
    intensity_outside: dict
    displacement_um: dict | None = None
    division_offset_um: dict | None = None
    division_rate: float | None = None
    links: int = 0
    seg_frames: list = field(default_factory=list)
    tra_frames: list = field(default_factory=list)
    version: int = FINGERPRINT_VERSION

    @property
    def spacing(self) -> tuple[float, ...]:
        """Native voxel size in array order ((z, y, x) or (y, x)), um."""
        return tuple(reversed(self.voxel_size))

    @property
    def median_diameter_um(self) -> float:
        return float(self.diameter_um["p50"])

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> "Fingerprint":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _evenly(items: list, n: int) -> list:
    """At most n of `items`, evenly spread, first and last included."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))]


def _objects(labels: np.ndarray):
    """(label values, voxel counts, centroids [k, ndim] in voxels, bounding-box extents [k, ndim]) of an instance image."""
    flat = labels.ravel()
    index = np.flatnonzero(flat)
    values = flat[index]
    if values.size == 0:
        empty = np.zeros((0, labels.ndim))
        return np.zeros(0, np.int64), np.zeros(0), empty, empty
    ids, inverse = np.unique(values, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    coords = np.unravel_index(index, labels.shape)
    centroids = np.stack([np.bincount(inverse, weights=c) for c in coords], axis=1) / counts[:, None]
    boxes = ndimage.find_objects(labels)
    extents = np.array([[s.stop - s.start for s in boxes[v - 1]] for v in ids], np.float64)
    return ids.astype(np.int64), counts, centroids, extents


def _sample(values: np.ndarray, limit: int) -> np.ndarray:
    """At most about `limit` of `values`, evenly strided (deterministic, and cheaper than a random choice)."""
    return values[::max(1, -(-values.size // limit))]


def _measure(seq: Sequence, voxel_size, source: str, max_frames: int) -> Fingerprint:
    ndim = seq.ndim
    spacing = np.array(voxel_size[::-1], np.float64)
    full = seq.seg_files
    slices = {} if full or ndim == 2 else seq.seg_slice_files
    frames = _evenly(sorted(full) if full else sorted(slices), max_frames)
    if not frames:
        raise CTCFormatError(f"{seq.gt_dir / 'SEG'}: no SEG ground truth (man_segNNN.tif) to measure nucleus sizes from")
    extents, volumes, inside, outside, fg = [], [], [], [], []
    for t in frames:
        image = seq.image(t)
        if full:
            labels = seq.seg(t)
            planes = [(labels, image, spacing)]
        else:  # 2D slices of a 3D frame: each slice on its own plane
            planes = [(lab, image[z], spacing[1:]) for z, lab in seq.seg(t).items()]
        for labels, img, sp in planes:
            _, counts, _, ext = _objects(labels)
            extents.append(ext * sp)
            volumes.append(counts * np.prod(sp))
            mask = labels > 0
            fg.append(mask.mean())
            inside.append(_sample(img[mask], 200_000))
            outside.append(_sample(img[~mask], 200_000))
    extent_um = np.concatenate(extents) if extents else np.zeros((0, ndim))
    volume = np.concatenate(volumes) if volumes else np.zeros(0)
    if volume.size == 0:
        raise CTCFormatError(f"{seq.gt_dir / 'SEG'}: the SEG ground truth of frames {frames} has no nuclei")
    sizes_from = "masks" if full else "slices"
    if sizes_from == "slices":  # cross-sections: area -> disc diameter; z extent as for a round nucleus
        diameter = np.sqrt(4 * volume / np.pi)
        extent_um = np.concatenate([np.sqrt(extent_um[:, :1] * extent_um[:, 1:]), extent_um], axis=1)
        volume = np.pi / 6 * diameter ** 3
    else:
        diameter = (6 * volume / np.pi) ** (1 / 3) if ndim == 3 else np.sqrt(4 * volume / np.pi)
    displacement, offsets, links, tra_frames, rate = _motion(seq, spacing, max_frames)
    return Fingerprint(
        ndim=ndim, shape=list(seq.shape), frames=len(seq), voxel_size=list(voxel_size), voxel_size_source=source,
        objects=int(volume.size), sizes_from=sizes_from,
        extent_vox=_percentiles(extent_um / spacing, axis=0), extent_um=_percentiles(extent_um, axis=0),
        diameter_um=_percentiles(diameter), diameter_vox=_percentiles(diameter[:, None] / spacing[None, :], axis=0),
        volume_um3=_percentiles(volume), foreground_fraction=round(float(np.mean(fg)), 6),
        intensity_inside=_percentiles(np.concatenate(inside)), intensity_outside=_percentiles(np.concatenate(outside)),
        displacement_um=_percentiles(displacement), division_offset_um=_percentiles(offsets), division_rate=rate,
        links=int(len(displacement)), seg_frames=[int(t) for t in frames], tra_frames=tra_frames)


def _motion(seq: Sequence, spacing: np.ndarray, max_frames: int):
    """(displacements um, division offsets um, number of links, frames read, division rate) from the TRA GT."""
    tra_dir = seq.gt_dir / "TRA"
    if not tra_dir.is_dir():
        return np.zeros(0), np.zeros(0), 0, [], None
    tracks = seq.tracks
    files = seq.tra_files
    rate = None
    if len(tracks):
        divisions = len(set(tracks[tracks[:, 3] > 0, 3].tolist()))
        object_frames = int((tracks[:, 2] - tracks[:, 1] + 1).sum())
        rate = round(divisions / object_frames, 6) if object_frames > 0 else None
    starts = [t for t in files if t + 1 in files]
    starts = _evenly(starts, max_frames)
    centroids = {}

    def centroid(t):
        if t not in centroids:
            ids, _, c, _ = _objects(seq.tra(t))
            centroids[t] = dict(zip(ids.tolist(), c * spacing))
        return centroids[t]

    parent = {int(l): int(p) for l, _, _, p in tracks.tolist() if p > 0}
    moves, offsets = [], []
    for t in starts:
        a, b = centroid(t), centroid(t + 1)
        for label, position in b.items():
            if label in a:
                moves.append(np.linalg.norm(position - a[label]))
            elif parent.get(label) in a:
                offsets.append(np.linalg.norm(position - a[parent[label]]))
    return np.array(moves), np.array(offsets), len(moves), sorted(int(t) for t in centroids), rate


def _stamp(seq: Sequence, voxel_size, max_frames: int) -> str:
    """Hash of every input file's name, size and mtime, the given voxel size and the measurement settings."""
    entries = []
    for folder in (seq.image_dir, seq.gt_dir / "SEG", seq.gt_dir / "TRA"):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    st = path.stat()
                    entries.append([f"{folder.name}/{path.name}", st.st_size, st.st_mtime_ns])
    key = {"version": FINGERPRINT_VERSION, "voxel_size": voxel_size, "max_frames": max_frames, "files": entries}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_path(root, seq: str) -> Path:
    """Where the fingerprint of sequence `seq` of data set `root` is cached."""
    return Path(root) / CACHE_DIR / f"fingerprint-{seq}.json"


def fingerprint(root, seq="01", voxel_size=None, *, cache: bool = True, max_frames: int = MAX_FRAMES) -> Fingerprint:
    """The Fingerprint of sequence `seq` (a name, or a dataset.Sequence) of the CTC data set `root`; or of an
    OME-Zarr sequence with labels (a `dataset.omezarr.OmeZarrSequence`: measured each time, never cached into
    the store, its voxel size from the metadata).

    Reused from ROOT/.nuclei3d/fingerprint-SEQ.json while no input file (images, SEG, TRA) changed size or
    mtime and voxel_size is the same; else measured (a few seconds: at most `max_frames` frames are read)
    and written there atomically. A folder that cannot be written is no error: the fingerprint is then
    measured without caching. voxel_size (x, y[, z]) um; None: TIFF metadata, else the SIM+ default.
    Raises CTCFormatError for a sequence without SEG ground truth, UserError for a bad voxel size.
    """
    sequence = seq if hasattr(seq, "image") else Sequence(root, str(seq))
    root = sequence.root
    cache = cache and isinstance(sequence, Sequence)  # an OME-Zarr's stamp would need every chunk: measure it again
    if not sequence.has_gt:
        raise CTCFormatError(f"{sequence.gt_dir}: no ground truth to measure the data from (a training sequence needs "
                             f"{sequence.seq}_GT/SEG and {sequence.seq}_GT/TRA)")
    given = None if voxel_size is None else list(check_voxel_size(voxel_size, sequence.ndim))
    stamp = _stamp(sequence, given, max_frames)
    path = cache_path(root, sequence.seq)
    fp = None
    if cache:
        try:
            stored = json.loads(path.read_text())
            if stored.get("stamp") == stamp:
                fp = Fingerprint.from_json(stored["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            fp = None
    if fp is None:
        first = sequence.files[sequence.frames[0]]
        if isinstance(sequence, Sequence):
            size, source = resolve_voxel_size(first, sequence.ndim, given, what=str(first))
        else:  # OME-Zarr metadata always states the voxel size
            size, source = (tuple(given), "given") if given else (check_voxel_size(sequence.voxel_size, sequence.ndim), "metadata")
        fp = _measure(sequence, size, source, max_frames)
        if cache:
            try:
                with atomic_path(path) as tmp:
                    tmp.write_text(json.dumps({"stamp": stamp, "fingerprint": fp.to_json()}, indent=1) + "\n")
            except OSError as err:
                print(f"note: could not cache the fingerprint in {path} ({err.strerror or err}); measured without caching",
                      file=sys.stderr, flush=True)
    elif fp.voxel_size_source == "default":
        _warn(f"{sequence.image_dir}: no voxel size given or found in the TIFF metadata; using "
              f"{' x '.join(f'{v:g}' for v in fp.voxel_size)} um (Fluo-N3DH-SIM+)")
    return fp


# ----------------------------------------------------------------------------- plan
def _round_up(value: float, k: int) -> int:
    return int(math.ceil(value / k - 1e-9)) * k


def _round_down(value: float, k: int) -> int:
    return int(math.floor(value / k + 1e-9)) * k


def choose_patch_size(nucleus_vox, crop=None, max_patch: int = MAX_PATCH) -> tuple[int, ...]:
    """ViT patch per axis: the power of two nearest PATCH_FRACTION (PATCH_FRACTION_2D in 2D) of the nucleus
    diameter (in working voxels), 1..max_patch, halved until it divides `crop` where a crop is given (so any crop
    gets a compatible patch).

    At the demo's scale (12 x 19 x 19 voxels) this is (4, 8, 8); at the working scale (about 15 x 24 x 24) too.
    """
    patch, fraction = [], PATCH_FRACTION_2D if len(nucleus_vox) == 2 else PATCH_FRACTION
    for i, d in enumerate(nucleus_vox):
        p = 2 ** int(round(math.log2(max(fraction * float(d), 1.0))))
        p = int(min(max(p, 1), max_patch))
        if crop is not None:
            while p > 1 and int(crop[i]) % p:
                p //= 2
        patch.append(p)
    return tuple(patch)


def _axis_crop(d: float, image: int, div: int, diameters: float, pads: bool = False) -> int:
    """Training crop along one axis for a nucleus of d voxels in an image of `image` voxels: the multiple of
    the divisor nearest `diameters` nuclei (ties down), cut to the largest multiple inside the image, never
    below MIN_CROP_DIAMETERS nuclei; an image smaller than that gives the whole image, padded up to the divisor.
    pads: the model pads its input up to `div` anyway, so the cut is the image padded up to it (same cost, more context)."""
    lo, fit = _round_up(MIN_CROP_DIAMETERS * d, div), (_round_up if pads else _round_down)(image, div)
    want = max(div, int(math.floor(diameters * d / div + 0.5 - 1e-6)) * div)
    return max(lo, min(want, fit)) if fit >= lo else min(lo, _round_up(image, div))


def _cap_crop(crop: list, nucleus, step) -> list:
    """Shrink a planned crop to at most MAX_CROP_VOXELS: one step at a time along the axes that hold the most
    nucleus diameters (equal ones together, so a square crop stays square), never below MIN_CROP_DIAMETERS."""
    crop = list(crop)
    while math.prod(crop) > MAX_CROP_VOXELS:
        floors = [max(k, _round_up(MIN_CROP_DIAMETERS * d, k)) for d, k in zip(nucleus, step)]
        room = [c / d if c - k >= f else 0.0 for c, d, k, f in zip(crop, nucleus, step, floors)]
        if max(room) == 0:
            break
        crop = [c - k if abs(r - max(room)) < 1e-9 else c for c, k, r in zip(crop, step, room)]
    return crop


def _axis_window(crop: int, image: int, div: int) -> int:
    """Prediction window along one axis: the crop, or the whole axis (padded up to the divisor) when that is
    at most WINDOW_COVER crops, so a short axis (often z) takes one window instead of two overlapping ones."""
    whole = _round_up(image, div)
    return whole if whole <= WINDOW_COVER * crop else crop


@dataclass
class Plan:
    """Sizes of a run derived from a Fingerprint (see make_plan); spacings in um, array order ((z,) y, x).

    Args:
        ndim: 2 or 3.
        native_spacing: voxel size of the data, array order.
        spacing: working voxel size, array order (the grid the model sees).
        native_shape: image shape of the fingerprinted sequence.
        shape: its shape at the working spacing (`working_shape(native_shape)`).
        divisor: every crop and window side is a multiple of it (the model's divisor, and the patch).
        crop_size: training crop at the working spacing.
        window: prediction window at the working spacing.
        patch_size: ViT patch, or None where the model has none.
        min_size: objects smaller than this (working voxels) are removed after the watershed.
        min_marker_size: marker components smaller than this (working voxels) are dropped.
        max_distance, division_distance, gap_distance: tracking gates in um.
        sources: for each planned value, "plan", "config", "flag" or "default".
        measured: a few numbers of the fingerprint, for the record and describe().
    """
    ndim: int
    native_spacing: list
    spacing: list
    native_shape: list
    shape: list
    divisor: list
    crop_size: list
    window: list
    patch_size: list | None
    min_size: int
    min_marker_size: int
    max_distance: float
    division_distance: float
    gap_distance: float
    sources: dict
    measured: dict = field(default_factory=dict)

    @property
    def zoom(self) -> tuple[float, ...]:
        """Working voxels per native voxel, per axis (1 where the native grid is kept)."""
        return tuple(n / w for n, w in zip(self.native_spacing, self.spacing))

    @property
    def resamples(self) -> bool:
        """Whether images must be resampled at all (False: the working grid is the native grid)."""
        return list(self.shape) != list(self.native_shape) or any(abs(z - 1) > 1e-9 for z in self.zoom)

    def working_shape(self, shape, native_spacing=None) -> tuple[int, ...]:
        """Shape at the working spacing of an image of `shape` at `native_spacing` (default: the plan's), at least 1."""
        native = self.native_spacing if native_spacing is None else native_spacing
        if len(shape) != self.ndim or len(native) != self.ndim:
            raise UserError(f"image shape {tuple(shape)} / spacing {tuple(native)}: the plan is for {self.ndim}D data")
        return tuple(max(1, int(round(n * s / w))) for n, s, w in zip(shape, native, self.spacing))

    def tracking_gates(self) -> dict:
        """{"max_distance", "division_distance", "gap_distance"} in um, for tracking.TrackParams."""
        return {"max_distance": self.max_distance, "division_distance": self.division_distance,
                "gap_distance": self.gap_distance}

    def size_limits(self, native: bool = False) -> dict:
        """{"min_size", "min_marker_size"} for inference.PostParams: in working voxels, or (native=True) in
        native voxels, for a watershed run on the native grid after the probabilities were brought back."""
        scale = float(np.prod(self.spacing) / np.prod(self.native_spacing)) if native else 1.0
        return {"min_size": max(1, int(round(self.min_size * scale))) if self.min_size else 0,
                "min_marker_size": max(1, int(round(self.min_marker_size * scale))) if self.min_marker_size else 0}

    def to_json(self) -> dict:
        """A plain dict (str, int, float, bool, None, list, dict only): fit for JSON and torch.load(weights_only=True)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        names = {f.name for f in fields(cls)}
        missing = names - set(data) - {"measured"}
        if missing:
            raise UserError(f"plan: stored plan lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self) -> str:
        """A few lines for the start of a run: what was measured, what was planned, and from where."""
        def x(values, fmt="{:g}"):
            return " x ".join(fmt.format(v) for v in values)

        def src(name):
            return f"[{self.sources.get(name, 'plan')}]"

        m = self.measured
        axes = "(z, y, x)" if self.ndim == 3 else "(y, x)"
        diameter = m.get("diameter_um")
        nuclei = f"nuclei {diameter:.2f} um across (median of {m.get('objects')})" if diameter else "nuclei: not measured"
        patch = f", patch {x(self.patch_size, '{}')} {src('patch_size')}" if self.patch_size else ""
        p99 = m.get("displacement_p99_um")
        motion = f" (displacement p99 {p99:.2f} um)" if p99 is not None else ""
        return "\n".join([
            f"plan ({self.ndim}D, sizes {axes}): voxel {x(self.native_spacing, '{:.4g}')} um "
            f"({m.get('voxel_size_source', '?')}), {nuclei}",
            f"  working spacing {x(self.spacing, '{:.4g}')} um {src('spacing')}: zoom {x(self.zoom, '{:.3g}')}, "
            f"{x(self.native_shape, '{}')} -> {x(self.shape, '{}')} voxels, "
            f"nucleus {x(m.get('nucleus_vox', []), '{:.0f}')} voxels",
            f"  crop {x(self.crop_size, '{}')} {src('crop_size')}, window {x(self.window, '{}')} {src('window')}"
            f"{patch} (multiples of {x(self.divisor, '{}')})",
            f"  min_size {self.min_size} {src('min_size')}, min_marker_size {self.min_marker_size} "
            f"{src('min_marker_size')} working voxels",
            f"  tracking gates: max_distance {self.max_distance:.2f} {src('max_distance')}, division_distance "
            f"{self.division_distance:.2f} {src('division_distance')}, gap_distance {self.gap_distance:.2f} "
            f"{src('gap_distance')} um{motion}"])


def _per_axis(value, ndim: int, name: str, integer: bool) -> list:
    """`value` (one number, or one per axis) as ndim positive ints or floats; UserError naming `name` otherwise."""
    try:
        raw = [value] * ndim if np.isscalar(value) else list(value)
        values = [float(v) for v in raw]
        ok = len(values) == ndim and all(math.isfinite(v) and v > 0 for v in values)
        if integer:
            ok = ok and all(v == int(v) for v in values)
            values = [int(v) for v in values] if ok else values
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"{name} {value!r}: expected {ndim} positive {'integers' if integer else 'numbers'} "
                        f"({'Z, Y, X' if ndim == 3 else 'Y, X'})")
    return values


def _given(overrides: dict | None, flags: dict | None) -> dict:
    """name -> (value, source) of the explicit values, a flag beating a config value; None means not given."""
    out = {}
    for values, source in ((overrides, "config"), (flags, "flag")):
        for name, value in (values or {}).items():
            if name not in PLANNED:
                raise UserError(f"plan override {name!r}: unknown; choose one of {', '.join(PLANNED)}")
            if value is not None:
                out[name] = (value, source)
    return out


def make_plan(fp: Fingerprint, model_divisor, overrides: dict | None = None, *, flags: dict | None = None,
              plan_patch: bool = False, cheap_multiple=None) -> Plan:
    """The Plan of fingerprint `fp` for a model whose input sides must be multiples of `model_divisor`.

    model_divisor: int or one per spatial axis (array order), e.g. model.size_divisor.
    overrides: values from a train script (source "config"); flags: from the command line (source "flag",
        wins over overrides). Keys: PLANNED; a value of None counts as not given. "spacing" is in um, array order.
    plan_patch: also plan a ViT patch (choose_patch_size) unless one is given; crops and windows are then
        multiples of it too. Without it, a given patch_size is recorded and used as a divisor.
    cheap_multiple: int or one per axis, the sizes a model that pads its input inside computes on anyway
        (model.pad_multiple): planned crops and windows are multiples of it, so no time goes into padding
        (a 72-voxel crop costs Swin-UNETR a 96-voxel one). Given crops and windows need only fit model_divisor.
    Raises UserError for a bad value, naming it and where it came from.
    """
    ndim = int(fp.ndim)
    given = _given(overrides, flags)
    sources = {}

    def explicit(name, integer=False, per_axis=True):
        value, source = given[name]
        label = f"{name} ({'--' + name.replace('_', '-') if source == 'flag' else 'train config'})"
        sources[name] = source
        if per_axis:
            return _per_axis(value, ndim, label, integer)
        try:
            number = int(value) if integer else float(value)
            if integer and number != value:
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"{label} {value!r}: expected a {'whole ' if integer else ''}number") from None
        if (integer and number < 0) or (not integer and not number > 0):
            raise UserError(f"{label} {value!r}: must be {'>= 0' if integer else 'positive'}")
        return number

    divisor = _per_axis(model_divisor, ndim, "model size divisor", integer=True)
    native = [float(s) for s in fp.spacing]
    d_um = fp.median_diameter_um
    native_d = [d_um / s for s in native]

    # working spacing
    if "spacing" in given:
        spacing = explicit("spacing")
    else:
        sources["spacing"] = "plan"
        xy = min(native_d[-2:])
        zoom_xy = 1.0 if KEEP_NATIVE[0] <= xy <= KEEP_NATIVE[1] else min(TARGET_DIAMETER / xy, MAX_ZOOM)
        zoom = [zoom_xy] * ndim
        if ndim == 3:
            zoom[0] = min(1.0, max(zoom_xy, MIN_Z_DIAMETER / native_d[0])) if zoom_xy < 1 else 1.0
        spacing = [round(s / z, 9) for s, z in zip(native, zoom)]
    shape = [max(1, int(round(n * s / w))) for n, s, w in zip(fp.shape, native, spacing)]
    nucleus = [d_um / w for w in spacing]

    # patch, divisor
    patch = None
    if "patch_size" in given:
        patch = explicit("patch_size", integer=True)
        if any(p & (p - 1) for p in patch):
            raise UserError(f"patch_size {tuple(patch)} ({sources['patch_size']}): every entry must be a power of two")
    elif plan_patch:
        crop_given = _per_axis(given["crop_size"][0], ndim, "crop_size", True) if "crop_size" in given else None
        patch = list(choose_patch_size(nucleus, crop_given))
        sources["patch_size"] = "plan"
    else:
        sources["patch_size"] = "default"
    step = [math.lcm(d, p) for d, p in zip(divisor, patch)] if patch else divisor
    pads = cheap_multiple is not None
    cheap = _per_axis(cheap_multiple, ndim, "model pad multiple", integer=True) if pads else [1] * ndim
    planned = [math.lcm(k, c) for k, c in zip(step, cheap)]  # planned sizes: no compute lost to padding

    # crop and window
    sizes = {}
    for name in ("crop_size", "window"):
        if name in given:
            sizes[name] = explicit(name, integer=True)
            if any(v % k for v, k in zip(sizes[name], step)):
                raise UserError(f"{name} {tuple(sizes[name])} ({sources[name]}): must be a multiple of {tuple(step)} "
                                f"(the model's size divisor{' and patch size' if patch else ''}) on every axis")
        elif name == "crop_size":
            diameters = CROP_DIAMETERS if ndim == 3 else CROP_DIAMETERS_2D
            sizes[name] = _cap_crop([_axis_crop(d, n, k, diameters, pads) for d, n, k in zip(nucleus, shape, planned)],
                                    nucleus, planned)
            sources[name] = "plan"
        else:
            sizes[name] = [_axis_window(c, n, k) for c, n, k in zip(sizes["crop_size"], shape, planned)]
            sources[name] = "plan"

    # post-processing sizes, from the 5th-percentile GT volume in um^3 (um^2 in 2D)
    voxel = float(np.prod(spacing))
    small = float(fp.volume_um3["p5"])
    limits = {"min_size": max(1, int(round(MIN_SIZE_FRACTION * small / voxel))),
              "min_marker_size": max(1, int(round(MIN_MARKER_FRACTION * small / voxel)))}
    for name in limits:
        if name in given:
            limits[name] = explicit(name, integer=True, per_axis=False)
        else:
            sources[name] = "plan"

    # tracking gates, um
    p99 = fp.displacement_um["p99"] if fp.displacement_um else 0.0
    gates = {"max_distance": max(GATE_MARGIN * p99, GATE_FLOOR * d_um)}
    if "max_distance" in given:
        gates["max_distance"] = explicit("max_distance", per_axis=False)
    else:
        sources["max_distance"] = "plan"
    offset = GATE_MARGIN * fp.division_offset_um["p99"] if fp.division_offset_um else 0.0
    gates["division_distance"] = max(GAP_FACTOR * gates["max_distance"], offset)
    gates["gap_distance"] = max(GAP_FACTOR * gates["max_distance"], 2 * GATE_MARGIN * p99)
    for name in ("division_distance", "gap_distance"):
        if name in given:
            gates[name] = explicit(name, per_axis=False)
        else:
            sources[name] = "plan"

    measured = {"diameter_um": round(d_um, 4), "objects": fp.objects, "voxel_size_source": fp.voxel_size_source,
                "nucleus_vox": [round(v, 2) for v in nucleus], "volume_p5_um3": round(small, 4),
                "displacement_p99_um": None if not fp.displacement_um else round(float(p99), 4),
                "division_rate": fp.division_rate}
    return Plan(ndim=ndim, native_spacing=native, spacing=spacing, native_shape=list(fp.shape),
                shape=shape, divisor=list(step), crop_size=sizes["crop_size"], window=sizes["window"],
                patch_size=patch, min_size=limits["min_size"], min_marker_size=limits["min_marker_size"],
                max_distance=round(float(gates["max_distance"]), 4),
                division_distance=round(float(gates["division_distance"]), 4),
                gap_distance=round(float(gates["gap_distance"]), 4), sources=sources, measured=measured)
