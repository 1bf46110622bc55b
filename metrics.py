"""The Cell Tracking Challenge measures, technical and biological, plus CHOTA, HOTA, MOTA and IDF1, on CTC folders.

Every measure is computed from one matching of reference and result objects per frame (below); the
matching of a (result, GT) pair is computed once, shared by all measures, and kept in a small cache
file in the result folder, so that scoring the same result again (with other measures) reads no mask.

Matching (Matula et al. 2015, PLoS ONE 10:e0144959): a reference object R is matched by the result object
S with |R ∩ S| > 0.5 |R|; an R has at most one match, one S may match several R (each extra one is a split).
A *unique* match is an S matching exactly one R; the biological measures count unique matches only.

Technical measures (celltrackingchallenge.net/evaluation-methodology; Ulman et al. 2017, Nat. Methods 14:1141):
- SEG: mean over the reference objects of the SEG ground truth of the Jaccard index |R∩S| / |R∪S| of the
  matching S (0 when unmatched). A SEG file given as a 2D slice `man_seg_T_Z.tif` is compared with slice Z
  of the result, as its own image, as the challenge's SEG program does (py-ctcmetrics stacks the slices of a
  frame into one image, which differs when an object is annotated in two slices); frames without SEG
  ground truth are skipped; None without SEG ground truth;
- DET = 1 - min(AOGM_D, AOGM_D0) / AOGM_D0, AOGM_D = 5 NS + 10 FN + 1 FP, AOGM_D0 = 10 |V_ref|;
- TRA = 1 - min(AOGM, AOGM_0) / AOGM_0, AOGM = AOGM_D + AOGM_A, AOGM_0 = 10 |V_ref| + 1.5 |E_ref|;
- LNK = 1 - min(AOGM_A, AOGM_A0) / AOGM_A0, AOGM_A = 1 ED + 1.5 EA + 1 EC, AOGM_A0 = 1.5 |E_ref| (Maška et
  al. 2023, Nat. Methods 20:1010); None when the reference has no edge;
- OP_CSB = (SEG + DET) / 2, OP_CTB = (SEG + TRA) / 2.
  The graphs have the objects of each frame as vertices and track links (one label in consecutive frames)
  and parent links (last frame of a parent to the first frame of each child) as edges. Only result
  vertices matching exactly one reference vertex keep their edges: a result edge between them is
  redundant (ED) if the reference has no edge between the matched vertices, of wrong kind (EC) if the
  reference edge is a track link where the result has a parent link or vice versa; each reference edge
  no result edge maps onto is missing (EA).

Biological measures (Ulman et al. 2017; Maška et al. 2023; as the challenge's programs, java-ctcmetrics):
- CT = 2 T_rc / (T_ref + T_res): T_rc reference tracks matched uniquely by one result track in every frame,
  the two beginning and ending in the same frames;
- TF: per reference track, the longest run of consecutive frames in which one result track matches it
  uniquely, as a fraction of its length; the mean over the reference tracks with a run. As the challenge's
  program (and py-ctcmetrics), result tracks are taken in label order and a result track that follows a
  reference track completely is not tried on the reference tracks of higher label. 0 when no reference
  track is matched, as py-ctcmetrics gives (the challenge's program divides 0 by 0 there);
- BC(i): F1 = 2 n_correct / (n_ref + n_res) of the divisions (a parent with two or more children). A result
  division is correct for a reference division with as many children when the parents end at most i frames
  apart and match uniquely in the last frame both exist, and every reference child has a result child
  beginning at most i frames apart that matches it uniquely in the first frame both exist. Each reference
  division is counted once, as the challenge's program counts them (result divisions in parent-label
  order); py-ctcmetrics counts every matching (reference, result) pair and so gives BC above 1 when two
  result divisions match one reference division. None when the reference has no division (as
  py-ctcmetrics). Reported for i = 0..3 as BC(0)..BC(3);
- CCA = 1 - max |CDF_ref - CDF_res| of the lengths of the complete cell cycles (tracks that begin at a
  division and end in one); 0 when the result has none, None when the reference has none;
- BIO: the mean of CT, TF, BC(2) and CCA over those defined. It takes BC(2) because the challenge's BIO
  (and so its OP_CLB ranking) does (Maška et al. 2023): a division found up to two frames early or late
  still counts, so our BIO and OP_CLB compare with the published ones;
- OP_CLB = (LNK + BIO) / 2.

Other tracking measures, as py-ctcmetrics defines them on the CTC matching (every match counts, a result
object matching two references counts twice), after joining each track whose parent has no other child
to that parent (one cell, re-detected after a gap):
- CHOTA (Kaiser et al. 2024): HOTA with the association of a pair of tracks extended to their lineages
  (the track, its ancestors and descendants). A joined track keeps the parent of its first part;
  py-ctcmetrics keeps the parent of whichever part is listed first in the track file, so it loses the
  lineage of a gap-closed track listed before its first part;
- HOTA (Luiten et al. 2021) at the CTC matching; MOTA (Bernardin & Stiefelhagen 2008) with IDSW, the
  identity switches; IDF1 (Ristani et al. 2016) with IDP, IDR;
- MT, ML: the share of reference tracks that one result track matches in at least 80% (MT) or less than
  20% (ML) of their frames (motchallenge.net). py-ctcmetrics counts the unmatched frames as if they were
  one more result track, so a reference track missed in 80% of its frames is "mostly tracked" there;
- FAF: result objects per frame that do not match exactly one reference object.

Scoring is counting: per frame, one `np.bincount` over the (compacted) label pairs of the foreground
voxels gives |R|, |S| and every |R∩S|; everything after that works on objects and tracks, not voxels.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset.ctc import CTCFormatError, atomic_path, frame_gaps, frame_name, list_frames, list_seg_slices, read_labels, read_tracks
from dataset.validate import check_lineage
from errors import ConfigError

#: AOGM weights of the challenge.
WEIGHTS = {"NS": 5.0, "FN": 10.0, "FP": 1.0, "ED": 1.0, "EA": 1.5, "EC": 1.0}

#: The measures, as py-ctcmetrics names them (`ctc_metrics.ALL_METRICS`).
ALL_METRICS = ("Valid", "CHOTA", "BC", "CT", "CCA", "TF", "SEG", "TRA", "DET", "MOTA", "HOTA", "IDF1", "MTML", "FAF",
               "LNK", "OP_CTB", "OP_CSB", "BIO", "OP_CLB")
TECHNICAL = ("SEG", "DET", "TRA", "LNK", "OP_CSB", "OP_CTB")
BIOLOGICAL = ("CT", "TF", "BC", "CCA", "BIO", "OP_CLB")
OTHERS = ("CHOTA", "HOTA", "MOTA", "IDF1", "MTML", "FAF")
#: Measures made of others.
_PARTS = {"OP_CSB": ("SEG", "DET"), "OP_CTB": ("SEG", "TRA"), "BIO": ("CT", "TF", "BC", "CCA"), "OP_CLB": ("LNK", "BIO")}
#: The largest i of BC(i) always reported, and the i that BIO uses.
BC_MAX, BIO_BC = 3, 2

CACHE_NAME = ".ctc_matching.npz"
_CACHE_FORMAT = "ctc-matching/2"

# A label image whose largest label is below this is compacted with a lookup table, else with np.unique.
_LUT_LIMIT = 1 << 22


class UnknownMeasureError(ConfigError):
    """A measure name (e.g. of --metrics) that is not one of ALL_METRICS or BC(i)."""


# ----------------------------------------------------------------------------- one image pair
@dataclass(frozen=True)
class Matching:
    """The CTC matching of one reference (GT) label image against one result label image.

    gt_labels, res_labels: the non-zero labels present, sorted; gt_sizes, res_sizes: their voxel counts;
    matched: per reference object, the result label covering more than half of it (0: none);
    intersection, jaccard: per reference object, |R∩S| and |R∩S|/|R∪S| with that result object (0: none);
    hits: per result object, how many reference objects it matches.
    """

    gt_labels: np.ndarray
    res_labels: np.ndarray
    gt_sizes: np.ndarray
    res_sizes: np.ndarray
    matched: np.ndarray
    intersection: np.ndarray
    jaccard: np.ndarray
    hits: np.ndarray

    @property
    def fn(self) -> int:
        """Reference objects without a match (false negatives)."""
        return int(np.count_nonzero(self.matched == 0))

    @property
    def fp(self) -> int:
        """Result objects matching no reference object (false positives)."""
        return int(np.count_nonzero(self.hits == 0))

    @property
    def ns(self) -> int:
        """Splits needed: each result object matching k > 1 reference objects counts k - 1."""
        return int(np.maximum(self.hits - 1, 0).sum())

    @property
    def unique(self) -> np.ndarray:
        """Per reference object: matched by a result object that matches no other reference object."""
        sel = self.matched > 0
        out = np.zeros(self.matched.size, bool)
        out[sel] = self.hits[np.searchsorted(self.res_labels, self.matched[sel])] == 1
        return out


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, index): the sorted distinct values with 0 first (present or not), and each element's index."""
    if labels.size == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.intp)
    top = int(labels.max())
    if top < _LUT_LIMIT:
        present = np.flatnonzero(np.bincount(labels))
        present = present[present > 0]
        lut = np.zeros(top + 1, np.intp)
        lut[present] = np.arange(1, present.size + 1)
        return np.concatenate(([0], present)).astype(np.int64), lut[labels]
    values, index = np.unique(labels, return_inverse=True)
    if values[0] != 0:
        values, index = np.concatenate(([0], values)), index + 1
    return values.astype(np.int64), index.ravel()


def _check_pair(gt: np.ndarray, res: np.ndarray) -> None:
    if gt.shape != res.shape:
        raise ValueError(f"label images differ in shape: reference {gt.shape}, result {res.shape}")
    for name, a in (("reference", gt), ("result", res)):
        if a.dtype != bool and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} labels have dtype {a.dtype}; labels must be integers")
        if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
            raise ValueError(f"{name} labels have negative values")


def match_objects(gt: np.ndarray, res: np.ndarray) -> Matching:
    """Match the objects of a result label image `res` to those of a reference label image `gt` (same shape).

    One pass selects the voxels where either image is non-zero; one bincount over their compacted label
    pairs gives all overlap counts.
    """
    gt, res = np.asarray(gt), np.asarray(res)
    _check_pair(gt, res)
    g, r = (a.ravel().astype(np.uint8) if a.dtype == bool else a.ravel() for a in (gt, res))
    foreground = g != 0
    foreground |= r != 0
    g_values, g_index = _compact(g[foreground])
    r_values, r_index = _compact(r[foreground])
    n_g, n_r = g_values.size, r_values.size
    key = g_index * n_r + r_index
    if n_g * n_r <= _LUT_LIMIT:
        counts = np.bincount(key, minlength=n_g * n_r)
        pairs = np.flatnonzero(counts)
        counts = counts[pairs]
    else:  # many objects on both sides: count the pairs that occur, sparsely
        pairs, counts = np.unique(key, return_counts=True)
    pg, pr = np.divmod(pairs, n_r)
    g_sizes = np.bincount(pg, weights=counts, minlength=n_g).astype(np.int64)[1:]
    r_sizes = np.bincount(pr, weights=counts, minlength=n_r).astype(np.int64)[1:]
    both = (pg > 0) & (pr > 0)
    pg, pr, inter = pg[both] - 1, pr[both] - 1, counts[both].astype(np.int64)
    ok = 2 * inter > g_sizes[pg]  # |R∩S| > 0.5 |R|: at most one S per R
    pg, pr, inter = pg[ok], pr[ok], inter[ok]
    matched = np.zeros(n_g - 1, np.int64)
    intersection = np.zeros(n_g - 1, np.int64)
    jaccard = np.zeros(n_g - 1, np.float64)
    matched[pg] = r_values[1:][pr]
    intersection[pg] = inter
    jaccard[pg] = inter / (g_sizes[pg] + r_sizes[pr] - inter)
    hits = np.bincount(pr, minlength=n_r - 1).astype(np.int64)
    return Matching(g_values[1:], r_values[1:], g_sizes, r_sizes, matched, intersection, jaccard, hits)


def seg_score(pred: np.ndarray, gt) -> tuple[float, int]:
    """(sum of the Jaccard indices, number of reference objects) of one predicted label volume `pred`
    against its reference `gt`; add these up over volumes and divide to get the SEG of a set.

    gt: a label volume, or {z: 2D label slice} where the SEG ground truth is given as slices (each
    annotated slice is scored as its own image, as the challenge's SEG program does).
    """
    if isinstance(gt, dict):
        parts = [seg_score(pred[z], np.asarray(plane)) for z, plane in gt.items()]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    m = match_objects(gt, pred)
    return float(m.jaccard.sum()), int(m.gt_labels.size)


def seg_measure(pred: np.ndarray, gt) -> float:
    """SEG of one predicted label volume `pred` against its reference `gt`; NaN when `gt` has no object."""
    total, n = seg_score(pred, gt)
    return total / n if n else float("nan")


# ----------------------------------------------------------------------------- a whole sequence
@dataclass
class SequenceMatching:
    """The TRA matching of every frame of a sequence, flattened: all the tracking measures need, and what
    the cache stores. Per reference object (frame by frame, labels sorted): gt_labels, matched (result
    label or 0) and unique; per result object: res_labels and hits. gt_start / res_start: where each frame
    begins in those arrays. seg: (sum of the Jaccard indices, reference objects, frames) of the SEG ground
    truth, None where not computed; volume_ratio: the result/reference volume of each matched SEG object."""

    frames: np.ndarray
    gt_start: np.ndarray
    res_start: np.ndarray
    gt_labels: np.ndarray
    matched: np.ndarray
    unique: np.ndarray
    res_labels: np.ndarray
    hits: np.ndarray
    seg: tuple[float, int, int] | None = None
    volume_ratio: np.ndarray | None = None  # per matched SEG reference object: |S| / |R|

    @classmethod
    def from_frames(cls, matches: dict[int, Matching]) -> "SequenceMatching":
        ms = list(matches.values())

        def cat(values, dtype):
            return np.concatenate([np.asarray(v, dtype) for v in values]) if values else np.zeros(0, dtype)

        return cls(np.array(list(matches), np.int64),
                   np.cumsum([0] + [m.gt_labels.size for m in ms]), np.cumsum([0] + [m.res_labels.size for m in ms]),
                   cat([m.gt_labels for m in ms], np.int64), cat([m.matched for m in ms], np.int64),
                   cat([m.unique for m in ms], bool), cat([m.res_labels for m in ms], np.int64),
                   cat([m.hits for m in ms], np.int64))

    def labels(self, kind: str) -> dict[int, np.ndarray]:
        """Frame -> labels present, of the reference ('gt') or the result ('res')."""
        values, start = (self.gt_labels, self.gt_start) if kind == "gt" else (self.res_labels, self.res_start)
        return {int(t): values[start[i]:start[i + 1]] for i, t in enumerate(self.frames)}

    def gt_frame(self) -> np.ndarray:
        """The frame of each reference object."""
        return np.repeat(self.frames, np.diff(self.gt_start))

    def unique_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame, reference label, result label) of the unique matches."""
        sel = self.unique
        return self.gt_frame()[sel], self.gt_labels[sel], self.matched[sel]

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("frames", "gt_start", "res_start", "gt_labels", "matched", "unique",
                                              "res_labels", "hits")}


# ----------------------------------------------------------------------------- which measures
def parse_metrics(metrics) -> tuple[set[str], int]:
    """(the measures to compute, with the ones they are made of; the largest i of BC(i)) for a list of
    names (case-insensitive; "BC(i)" asks for BC up to i) or a comma-separated string; None: all."""
    if metrics is None:
        names = list(ALL_METRICS)
    elif isinstance(metrics, str):
        names = [m.strip() for m in metrics.split(",") if m.strip()]
    else:
        names = [str(m).strip() for m in metrics]
    known = {m.upper(): m for m in ALL_METRICS}
    wanted, bc_max = set(), BC_MAX
    for name in names:
        bc = re.fullmatch(r"BC\((\d+)\)", name.upper())
        if bc:
            wanted.add("BC")
            bc_max = max(bc_max, int(bc.group(1)))
        elif name.upper() in known:
            wanted.add(known[name.upper()])
        else:
            raise UnknownMeasureError(f"unknown measure {name!r}; the measures are {', '.join(ALL_METRICS)} "
                                      f"(and BC(i) for a chosen i)")
    if not wanted:
        raise UnknownMeasureError(f"no measure named; the measures are {', '.join(ALL_METRICS)}")
    todo = list(wanted)
    while todo:
        for part in _PARTS.get(todo.pop(), ()):
            if part not in wanted:
                wanted.add(part)
                todo.append(part)
    return wanted, bc_max


# ----------------------------------------------------------------------------- CTC folders
def _check_same_frames(masks: dict, tra: dict, res_dir: Path, tra_dir: Path) -> None:
    missing, extra = sorted(set(tra) - set(masks)), sorted(set(masks) - set(tra))
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append("missing " + ", ".join(frame_name("mask", t, len(tra)) for t in missing[:10])
                     + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    if extra:
        parts.append("extra " + ", ".join(masks[t].name for t in extra[:10])
                     + (f" and {len(extra) - 10} more" if len(extra) > 10 else ""))
    raise CTCFormatError(f"{res_dir}: {len(masks)} result masks for the {len(tra)} ground-truth frames "
                         f"of {tra_dir} ({'; '.join(parts)})")


def _seg_files(seg_dir: Path, frames: dict) -> dict[int, list[tuple[int | None, Path]]]:
    """Frame -> [(z or None, file)] of the SEG ground truth; every file must belong to a scored frame."""
    if not seg_dir.is_dir():
        return {}
    out: dict[int, list[tuple[int | None, Path]]] = {}
    for t, path in list_frames(seg_dir, "seg").items():
        out.setdefault(t, []).append((None, path))
    for t, slices in list_seg_slices(seg_dir).items():
        out.setdefault(t, []).extend(slices.items())
    for t, files in out.items():
        if t not in frames:
            raise CTCFormatError(f"{files[0][1]}: SEG ground truth for frame {t}, which has no TRA ground truth "
                                 f"and no result mask")
    return dict(sorted(out.items()))


def _seg_matching(path: Path, z: int | None, res: np.ndarray, mask_path: Path) -> Matching:
    if z is None:
        gt = read_labels(path, None)
        if gt.shape != res.shape:
            raise CTCFormatError(f"{path}: shape {gt.shape} differs from {mask_path.name} {res.shape}")
        return match_objects(gt, res)
    gt = read_labels(path, 2)
    if res.ndim != 3:
        raise CTCFormatError(f"{path}: a SEG slice, but {mask_path.name} is not 3D (shape {res.shape})")
    if gt.shape != res.shape[1:] or not 0 <= z < res.shape[0]:
        raise CTCFormatError(f"{path}: slice z={z} of shape {gt.shape} does not fit {mask_path.name} {res.shape}")
    return match_objects(gt, res[z])


def _read_pair(mask_path: Path, tra_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A result mask and its TRA ground truth, which must have the same shape."""
    res, gt = read_labels(mask_path, None), read_labels(tra_path, None)
    if res.shape != gt.shape:
        raise CTCFormatError(f"{mask_path}: shape {res.shape} differs from the ground truth {tra_path.name} {gt.shape}")
    return res, gt


def _match_folders(mask_files, tra_files, seg_files) -> SequenceMatching:
    """Read the masks and the TRA (and SEG, unless `seg_files` is None) ground truth, each file once, and match."""
    matches: dict[int, Matching] = {}
    seg_total, seg_objects, ratios = 0.0, 0, []
    for t in tra_files:
        res, gt = _read_pair(mask_files[t], tra_files[t])
        matches[t] = match_objects(gt, res)
        if seg_files and t in seg_files:
            total, n, _, ratio = _seg_sums({t: seg_files[t]}, mask_files, res)
            seg_total, seg_objects = seg_total + total, seg_objects + n
            ratios.append(ratio)
    sm = SequenceMatching.from_frames(matches)
    if seg_files is not None:
        sm.seg = (seg_total, seg_objects, len(seg_files))
        sm.volume_ratio = np.concatenate(ratios) if ratios else np.zeros(0)
    return sm


def _seg_sums(seg_files, mask_files, res: np.ndarray | None = None) -> tuple[float, int, int, np.ndarray]:
    """(sum of the Jaccard indices, reference objects, frames, volume ratios) of the SEG ground truth; `res`:
    the mask of the one frame in `seg_files`, already read."""
    total, objects, ratios = 0.0, 0, []
    for t, files in seg_files.items():
        mask = res if res is not None else read_labels(mask_files[t], None)
        for z, seg_path in files:
            m = _seg_matching(seg_path, z, mask, mask_files[t])
            total += float(m.jaccard.sum())
            objects += m.gt_labels.size
            ratios.append(volume_ratios(m))
    return total, objects, len(seg_files), np.concatenate(ratios) if ratios else np.zeros(0)


def volume_ratios(m: Matching) -> np.ndarray:
    """|S| / |R| of each matched reference object: above 1 where the result is too large (a blur halo
    segmented), below where it is too small; unmatched objects are left out (they count in FN)."""
    sel = m.matched > 0
    res_sizes = m.res_sizes[np.searchsorted(m.res_labels, m.matched[sel])]
    return res_sizes / m.gt_sizes[sel]


# ----------------------------------------------------------------------------- the cache
def _stamp(paths) -> str:
    """A digest of the paths, sizes, modification times and inodes of `paths`: changes when any file is
    rewritten, replaced, added or removed."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


def _cache_path(cache, res_dir: Path, gt_dirs) -> Path | None:
    """Where the matching is cached: `res_dir/.ctc_matching.npz` (cache=True), a given path, or None; never
    inside a ground-truth folder."""
    if cache is False or cache is None:
        return None
    path = res_dir / CACHE_NAME if cache is True else Path(cache)
    where = path.resolve()
    if any(where.is_relative_to(Path(g).resolve()) for g in gt_dirs):
        return None
    return path


def _load_cache(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
        return out if str(out.get("format")) == _CACHE_FORMAT else {}
    except (OSError, ValueError, KeyError, EOFError):  # unreadable or foreign: compute afresh
        return {}


def _write_cache(path: Path | None, data: dict) -> None:
    """Save the matching atomically; a folder we may not write to just means no cache."""
    if path is None:
        return
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, format=np.array(_CACHE_FORMAT), **data)
    except OSError:
        pass


def _matching(res_dir: Path, mask_files, tra_files, seg_files, cache_path: Path | None) -> SequenceMatching:
    """The matching of the result against the TRA ground truth, and the SEG sums when `seg_files` is not
    None: from the cache where its stamps still fit the files, else from the masks (then cached)."""
    tra_key = _stamp([*mask_files.values(), *tra_files.values()])
    seg_key = None if seg_files is None else _stamp([*mask_files.values(), *(p for fs in seg_files.values() for _, p in fs)])
    cached = _load_cache(cache_path)
    fresh = str(cached.get("tra_key")) != tra_key
    if fresh:
        sm = _match_folders(mask_files, tra_files, seg_files)
    else:
        sm = SequenceMatching(**{k: cached[k] for k in SequenceMatching.__dataclass_fields__ if k not in ("seg", "volume_ratio")})
        if seg_key is not None and str(cached.get("seg_key")) == seg_key:
            sm.seg, sm.volume_ratio = tuple(cached["seg"].tolist()), cached["volume_ratio"]
        elif seg_key is not None:  # the TRA matching is known: read only the masks of the SEG frames
            *seg, sm.volume_ratio = _seg_sums(seg_files, mask_files)
            sm.seg, fresh = tuple(seg), True
    if fresh:
        data = {"tra_key": np.array(tra_key), **sm.arrays()}
        if sm.seg is not None:
            data.update(seg_key=np.array(seg_key), seg=np.array(sm.seg, np.float64), volume_ratio=sm.volume_ratio)
        _write_cache(cache_path, data)
    return sm


# ----------------------------------------------------------------------------- AOGM
def _edges(tracks: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """Edges (t1, label1, t2, label2, kind) of a validated track table: kind 0 = track link, 1 = parent link."""
    ends = {l: e for l, _, e, _ in tracks.tolist()}
    out = []
    for l, b, e, p in tracks.tolist():
        out.extend((t, l, t + 1, l, 0) for t in range(b, e))
        if p:
            out.append((ends[p], p, b, l, 1))
    return out


def _edge_errors(gt_tracks: np.ndarray, res_tracks: np.ndarray, sm: SequenceMatching) -> tuple[int, int, int, int]:
    """(ED, EA, EC, number of reference edges), comparing the result edges between uniquely matched vertices."""
    reference = {(t1, l1, t2, l2): kind for t1, l1, t2, l2, kind in _edges(gt_tracks)}
    t, g, r = sm.unique_pairs()
    to_ref = dict(zip(zip(t.tolist(), r.tolist()), g.tolist()))
    ed = ec = found = 0
    for t1, l1, t2, l2, kind in _edges(res_tracks):
        g1, g2 = to_ref.get((t1, l1)), to_ref.get((t2, l2))
        if g1 is None or g2 is None:
            continue
        ref_kind = reference.get((t1, g1, t2, g2))
        if ref_kind is None:
            ed += 1
        else:
            found += 1
            ec += ref_kind != kind
    return ed, len(reference) - found, ec, len(reference)


def _aogm(gt_tracks, res_tracks, sm: SequenceMatching) -> dict:
    """The AOGM operation counts and sums (and DET, TRA, LNK)."""
    counts = {"NS": int(np.maximum(sm.hits - 1, 0).sum()), "FN": int(np.count_nonzero(sm.matched == 0)),
              "FP": int(np.count_nonzero(sm.hits == 0))}
    counts["ED"], counts["EA"], counts["EC"], n_edges = _edge_errors(gt_tracks, res_tracks, sm)
    n_vertices = int(sm.gt_labels.size)
    aogm_d = sum(WEIGHTS[k] * counts[k] for k in ("NS", "FN", "FP"))
    aogm_a = sum(WEIGHTS[k] * counts[k] for k in ("ED", "EA", "EC"))
    aogm_d0 = WEIGHTS["FN"] * n_vertices
    aogm_a0 = WEIGHTS["EA"] * n_edges
    aogm, aogm_0 = aogm_d + aogm_a, aogm_d0 + aogm_a0
    return {"DET": 1.0 - min(aogm_d, aogm_d0) / aogm_d0, "TRA": 1.0 - min(aogm, aogm_0) / aogm_0,
            "LNK": 1.0 - min(aogm_a, aogm_a0) / aogm_a0 if n_edges else None,
            **counts, "AOGM": aogm, "AOGM_0": aogm_0, "AOGM_D": aogm_d, "AOGM_D0": aogm_d0,
            "AOGM_A": aogm_a, "AOGM_A0": aogm_a0, "n_ref_objects": n_vertices, "n_ref_edges": int(n_edges),
            "n_res_objects": int(sm.res_labels.size)}


# ----------------------------------------------------------------------------- biological measures
def _spans(tracks: np.ndarray) -> dict[int, tuple[int, int]]:
    return {l: (b, e) for l, b, e, _ in tracks.tolist()}


def _forks(tracks: np.ndarray) -> dict[int, list[int]]:
    """Parent -> children, for the parents with two or more children (divisions)."""
    children: dict[int, list[int]] = {}
    for l, _, _, p in tracks.tolist():
        if p:
            children.setdefault(p, []).append(l)
    return {p: c for p, c in sorted(children.items()) if len(c) > 1}


def _pair_counts(t, g, r):
    """For each (reference, result) label pair of the unique matches: (g, r, frames, longest run of
    consecutive frames), sorted by g, then r."""
    if t.size == 0:
        return [np.zeros(0, np.int64)] * 4
    order = np.lexsort((t, r, g))
    t, g, r = t[order], g[order], r[order]
    same_pair = np.zeros(t.size, bool)
    same_pair[1:] = (g[1:] == g[:-1]) & (r[1:] == r[:-1])
    pair_start = np.flatnonzero(~same_pair)
    run_start = np.flatnonzero(~(same_pair & np.r_[False, t[1:] == t[:-1] + 1]))
    run_len = np.diff(np.r_[run_start, t.size])
    frames = np.diff(np.r_[pair_start, t.size])
    longest = np.maximum.reduceat(run_len, np.searchsorted(run_start, pair_start))
    return g[pair_start], r[pair_start], frames, longest


def complete_tracks(gt_tracks, res_tracks, pairs) -> float:
    """CT: reference tracks that one result track of the same span matches uniquely in all their frames."""
    g, r, frames, _ = pairs
    gs, rs = _spans(gt_tracks), _spans(res_tracks)
    correct = sum(1 for a, b, n in zip(g.tolist(), r.tolist(), frames.tolist())
                  if gs[a] == rs[b] and n == gs[a][1] - gs[a][0] + 1)
    return 2.0 * correct / (len(gt_tracks) + len(res_tracks))


def track_fractions(gt_tracks, pairs) -> float:
    """TF: the mean over the detected reference tracks of the longest fraction one result track follows."""
    g, r, _, longest = pairs
    length = {l: e - b + 1 for l, (b, e) in _spans(gt_tracks).items()}
    best: dict[int, float] = {}
    done: set[int] = set()  # reference tracks followed completely
    res_done: set[int] = set()  # result tracks that followed one completely: not tried further
    for i in np.lexsort((g, r)).tolist():  # result label order, then reference label order
        a, b = int(g[i]), int(r[i])
        if b in res_done or a in done:
            continue
        best[a] = max(best.get(a, 0.0), longest[i] / length[a])
        if longest[i] == length[a]:
            done.add(a)
            res_done.add(b)
    values = [v for v in best.values() if v > 0]
    return float(np.mean(values)) if values else 0.0


def branching_correctness(gt_tracks, res_tracks, unique: set, i: int) -> tuple[int, int, int]:
    """(correct, reference, result divisions) with a tolerance of i frames; see BC(i) above."""
    gt_forks, res_forks = _forks(gt_tracks), _forks(res_tracks)
    gs, rs = _spans(gt_tracks), _spans(res_tracks)
    found: set[int] = set()
    for rp, r_kids in res_forks.items():
        for gp, g_kids in gt_forks.items():
            if gp in found or len(g_kids) != len(r_kids):
                continue
            ge, re_ = gs[gp][1], rs[rp][1]
            if abs(ge - re_) > i or (min(ge, re_), gp, rp) not in unique:
                continue
            if all(any(abs(gs[k][0] - rs[l][0]) <= i and (max(gs[k][0], rs[l][0]), k, l) in unique for l in r_kids)
                   for k in g_kids):
                found.add(gp)
                break
    return len(found), len(gt_forks), len(res_forks)


def cell_cycle_accuracy(gt_tracks, res_tracks) -> float | None:
    """CCA: 1 - the largest distance between the distributions of the complete cell-cycle lengths."""
    def lengths(tracks):
        forks = _forks(tracks)
        return [e - b + 1 for l, b, e, p in tracks.tolist() if p in forks and l in forks]

    ref, res = lengths(gt_tracks), lengths(res_tracks)
    if not ref:
        return None
    if not res:
        return 0.0
    top = max(ref + res) + 1
    cdf_ref = np.cumsum(np.bincount(ref, minlength=top)) / len(ref)
    cdf_res = np.cumsum(np.bincount(res, minlength=top)) / len(res)
    return float(1.0 - np.abs(cdf_ref - cdf_res).max())


def _mean_defined(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


# ----------------------------------------------------------------------------- CHOTA, HOTA, MOTA, IDF1
class _Joined:
    """Tracks joined where a parent has exactly one child (the same cell after a gap), as py-ctcmetrics does.

    n: the joined tracks; index(labels): each label's joined track (0..n-1); parent: each joined track's
    parent (-1: none), the parent of its first part; lineage_sum: sums over each one's lineage."""

    def __init__(self, tracks: np.ndarray):
        labels = tracks[:, 0].tolist()
        parent = dict(zip(labels, tracks[:, 3].tolist()))
        n_children = Counter(p for p in parent.values() if p)

        def first_part(l):
            while parent[l] and n_children[parent[l]] == 1:
                l = parent[l]
            return l

        root = {l: first_part(l) for l in labels}
        roots = sorted(set(root.values()))
        number = {r: k for k, r in enumerate(roots)}
        self.n = len(roots)
        self.sorted_labels = np.array(sorted(labels), np.int64)
        self.lut = np.array([number[root[l]] for l in self.sorted_labels.tolist()], np.int64)
        self.parent = np.array([number[root[parent[r]]] if parent[r] else -1 for r in roots], np.int64)
        lineage = [{a} for a in range(self.n)]  # a, its ancestors and its descendants
        for a in range(self.n):
            b = self.parent[a]
            while b >= 0:
                lineage[a].add(int(b))
                lineage[b].add(a)
                b = self.parent[b]
        self._members = np.array([b for group in lineage for b in sorted(group)], np.int64)
        self._starts = np.cumsum([0] + [len(group) for group in lineage[:-1]])

    def index(self, labels: np.ndarray) -> np.ndarray:
        return self.lut[np.searchsorted(self.sorted_labels, labels)]

    def lineage_sum(self, x: np.ndarray) -> np.ndarray:
        """Per joined track, the sum of x (along the first axis) over its lineage: a gather and one
        np.add.reduceat (no matrix product, whose BLAS threads cost more than they give here)."""
        return np.add.reduceat(x[self._members], self._starts, axis=0) if self.n else x[:0]


def _track_matrix(sm: SequenceMatching, ref: _Joined, res: _Joined) -> np.ndarray:
    """(1 + n_ref, 1 + n_res) frames in which each reference track matches each result track; column 0:
    unmatched reference objects, row 0: result objects matching nothing."""
    rows = ref.index(sm.gt_labels) + 1
    cols = np.zeros(rows.size, np.int64)
    sel = sm.matched > 0
    cols[sel] = res.index(sm.matched[sel]) + 1
    fp = res.index(sm.res_labels[sm.hits == 0]) + 1
    rows, cols = np.concatenate([rows, np.zeros(fp.size, np.int64)]), np.concatenate([cols, fp])
    shape = (ref.n + 1, res.n + 1)
    return np.bincount(rows * shape[1] + cols, minlength=shape[0] * shape[1]).reshape(shape).astype(np.float64)


def _hota(ti: np.ndarray, ref: _Joined | None = None, res: _Joined | None = None) -> float:
    """HOTA at the CTC matching; given the joined tracks, CHOTA (associations counted over whole lineages)."""
    tp = ti[1:, 1:]
    row, col = ti[1:, :].sum(1), ti[:, 1:].sum(0)
    if ref is None:
        tpa, row_a, col_a = tp, row[:, None], col[None, :]
    else:
        tpa = res.lineage_sum(ref.lineage_sum(tp).T).T
        row_a, col_a = ref.lineage_sum(row)[:, None], res.lineage_sum(col)[None, :]
    sel = tp > 0
    score = (tp * np.where(sel, tpa / np.where(sel, row_a + col_a - tpa, 1.0), 0.0)).sum()
    return float(np.sqrt(score / (tp.sum() + ti[0, 1:].sum() + ti[1:, 0].sum())))


def _mota(sm: SequenceMatching, ref: _Joined, res: _Joined) -> tuple[float, int]:
    """(MOTA, identity switches): MOTA = 1 - (FN + FP + IDSW + splits) / |V_ref|, where a switch is a reference
    track matched by another result track than the last time it was matched."""
    sel = sm.matched > 0
    g, r, t = ref.index(sm.gt_labels[sel]), res.index(sm.matched[sel]), sm.gt_frame()[sel]
    order = np.lexsort((t, g))
    g, r = g[order], r[order]
    idsw = int(np.count_nonzero((g[1:] == g[:-1]) & (r[1:] != r[:-1])))
    multi = int(np.maximum(sm.hits - 1, 0).sum())
    fn = int(np.count_nonzero(~sel))
    fp = int(np.count_nonzero(sm.hits == 0))
    return 1.0 - (fn + fp + idsw + multi) / sm.gt_labels.size, idsw


def _components(rows: np.ndarray, cols: np.ndarray) -> list[np.ndarray]:
    """Indices into (rows, cols), grouped by the connected components of the bipartite graph they form."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r, c in zip(rows.tolist(), cols.tolist()):
        parent[find(("r", r))] = find(("c", c))
    number: dict = {}
    roots = np.array([number.setdefault(find(("r", r)), len(number)) for r in rows.tolist()], np.int64)
    order = np.argsort(roots, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(roots[order])) + 1)


def _hungarian(w: np.ndarray) -> float:
    """The largest sum of `w` (n x m, n <= m) over a one-to-one assignment of rows to columns: the
    shortest-augmenting-path Hungarian algorithm, O(n^2 m), vectorized over the columns."""
    n, m = w.shape
    cost = -w
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p, way = np.zeros(m + 1, np.int64), np.zeros(m + 1, np.int64)  # p[j]: row (1-based) on column j
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv, used = np.full(m + 1, np.inf), np.zeros(m + 1, bool)
        while p[j0] != 0 or j0 == 0:  # grow the alternating tree until it reaches a free column
            used[j0] = True
            i0 = p[j0]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better], way[1:][better] = cur[better], j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            done = np.flatnonzero(used)
            u[p[done]] += delta
            v[done] -= delta
            minv[1:][free] -= delta
            j0 = j1
        while j0:
            j1 = way[j0]
            p[j0], j0 = p[j1], j1
    on = p[1:] > 0
    return float(w[p[1:][on] - 1, np.flatnonzero(on)].sum())


def _max_assignment(w: np.ndarray) -> float:
    """The largest sum of the non-negative `w` over a one-to-one assignment of rows to columns, solved
    per connected component of its non-zero entries (mostly single pairs); very large ones by SciPy, whose
    import alone takes longer than scoring a sequence."""
    rows, cols = np.nonzero(w)
    total = 0.0
    for part in _components(rows, cols):
        r, c = np.unique(rows[part]), np.unique(cols[part])
        sub = w[np.ix_(r, c)]
        if min(sub.shape) == 1:
            total += float(sub.max())
        elif max(sub.shape) <= 400:  # milliseconds for track matrices, which are near-diagonal
            total += _hungarian(sub if sub.shape[0] <= sub.shape[1] else sub.T)
        else:
            from scipy.optimize import linear_sum_assignment  # slow to import: only where needed
            i, j = linear_sum_assignment(sub, maximize=True)
            total += float(sub[i, j].sum())
    return total


def _idf1(ti: np.ndarray) -> tuple[float, float, float]:
    """(IDF1, IDP, IDR), from the one-to-one assignment of result to reference tracks sharing most frames."""
    idtp = _max_assignment(ti[1:, 1:])
    idfn, idfp = ti[1:, :].sum() - idtp, ti[:, 1:].sum() - idtp
    return float(2 * idtp / (2 * idtp + idfp + idfn)), float(idtp / (idtp + idfp)), float(idtp / (idtp + idfn))


def _mt_ml(ti: np.ndarray) -> tuple[float, float]:
    total = ti[1:, :].sum(1)
    covered = ti[1:, 1:].max(1, initial=0) / np.maximum(total, 1)
    valid = total > 0
    return float(np.mean(covered[valid] >= 0.8)), float(np.mean(covered[valid] < 0.2))


# ----------------------------------------------------------------------------- all together
def _check_gt_lineage(tracks, present, frame_files, track_file) -> None:
    try:
        check_lineage(tracks, present, frame_files, track_file)
    except CTCFormatError as err:
        raise CTCFormatError(f"the ground truth {track_file} is invalid, so nothing is scored against it: {err}") from None


def check_accuracy(res_dir: str | Path, gt_dir: str | Path, metrics=None, *, seg_dir: str | Path | None = None,
                   cache: bool | str | Path = True) -> dict:
    """The CTC measures of a result folder against a ground-truth folder.

    res_dir: `maskNNN.tif` for every frame of the TRA ground truth, and `res_track.txt`;
    gt_dir: e.g. `ROOT/01_GT` with `TRA/` (`man_trackNNN.tif`, `man_track.txt`) and `SEG/`;
    metrics: names from ALL_METRICS (or a comma-separated string) to compute, with the measures they are
    made of (BIO: CT, TF, BC, CCA; ...); None: all. BC is reported as BC(0)..BC(3); BIO uses BC(2), the
    challenge's choice (see the module docstring);
    seg_dir: SEG ground truth to use instead of `gt_dir/SEG`;
    cache: keep the matching in `res_dir/.ctc_matching.npz` (True), in a given file, or not (False). It is
    used only while the masks and ground-truth files have the sizes, times and inodes it was made from.

    Returns the measures asked for under their py-ctcmetrics names (MTML as MT and ML; MOTA with IDSW, IDF1
    with IDP and IDR), Valid (1: an invalid result raises instead), the AOGM parts NS, FN, FP, ED, EA, EC,
    AOGM, AOGM_0, AOGM_D, AOGM_D0, AOGM_A, AOGM_A0 and the counts n_ref_objects, n_ref_edges,
    n_res_objects, tra_frames (and n_seg_objects, seg_frames and the volume ratio VOL_p10, VOL_median, VOL_p90 with SEG; gt_divisions, res_divisions and
    tp_div(i) with BC). A measure is None where undefined: SEG, OP_CSB and OP_CTB without SEG ground truth,
    BC(i) and CCA without divisions or complete cell cycles in the reference, LNK without reference edges.
    Raises CTCFormatError, naming the file and label, when the result or the ground truth breaks the CTC
    rules, and UnknownMeasureError for a name not in ALL_METRICS.
    """
    wanted, bc_max = parse_metrics(metrics)
    res_dir, gt_dir = Path(res_dir), Path(gt_dir)
    tra_dir = gt_dir / "TRA"
    seg_dir = gt_dir / "SEG" if seg_dir is None else Path(seg_dir)
    tra_files = list_frames(tra_dir, "tra")
    if not tra_files:
        raise CTCFormatError(f"{tra_dir}: no ground-truth frames named man_trackNNN.tif")
    if frame_gaps(tra_files):
        raise CTCFormatError(f"{tra_dir}: frames missing from the ground truth: {frame_gaps(tra_files)}")
    mask_files = list_frames(res_dir, "mask")
    _check_same_frames(mask_files, tra_files, res_dir, tra_dir)
    res_track_path, gt_track_path = res_dir / "res_track.txt", tra_dir / "man_track.txt"
    res_tracks, gt_tracks = read_tracks(res_track_path), read_tracks(gt_track_path)
    check_lineage(res_tracks, {}, track_file=str(res_track_path))  # track-file rules, before reading masks
    _check_gt_lineage(gt_tracks, {}, None, str(gt_track_path))
    seg_files = _seg_files(seg_dir, tra_files) if "SEG" in wanted else None

    sm = _matching(res_dir, mask_files, tra_files, seg_files, _cache_path(cache, res_dir, (gt_dir, seg_dir)))
    check_lineage(res_tracks, sm.labels("res"), {t: str(p) for t, p in mask_files.items()}, str(res_track_path))
    _check_gt_lineage(gt_tracks, sm.labels("gt"), {t: str(p) for t, p in tra_files.items()}, str(gt_track_path))
    if sm.gt_labels.size == 0:
        raise CTCFormatError(f"{tra_dir}: the TRA ground truth has no object; DET and TRA are undefined")
    return _measures(wanted, bc_max, gt_tracks, res_tracks, sm)


def clip_tracks(tracks, first: int, last: int) -> np.ndarray:
    """The track rows (L, B, E, P) of frames first..last only: spans cut to the window, tracks outside it
    dropped, and a parent link kept only where the parent is still in the window (else the track starts one)."""
    rows = [[l, max(b, first), min(e, last), p] for l, b, e, p in np.asarray(tracks, np.int64).reshape(-1, 4).tolist()
            if b <= last and e >= first]
    kept = {r[0] for r in rows}
    return np.array([[l, b, e, p if p in kept else 0] for l, b, e, p in rows], np.int64).reshape(-1, 4)


def check_arrays(res_masks: dict, res_tracks, tra_gt: dict, gt_tracks, seg_gt: dict | None = None,
                 metrics=("SEG", "DET", "TRA", "OP_CTB")) -> dict:
    """The measures of a result held in memory, as `check_accuracy` gives them for the same files.

    res_masks, tra_gt: frame -> label image (the same frames, consecutive); res_tracks, gt_tracks: track rows
    (L, B, E, P) of those frames (`clip_tracks` cuts a sequence's table to a window); seg_gt: frame -> SEG
    ground truth (a label image, or {z: 2D slice}), for SEG. Used where many candidate results are scored
    (the post-processing search of Predictor.tune), so nothing is written.
    """
    wanted, bc_max = parse_metrics(metrics)
    frames = sorted(tra_gt)
    if sorted(res_masks) != frames or frame_gaps(frames):
        raise ValueError(f"need masks for the same consecutive frames as the ground truth {frames[:5]}..., "
                         f"got {sorted(res_masks)[:5]}...")
    res_tracks, gt_tracks = (np.asarray(t, np.int64).reshape(-1, 4) for t in (res_tracks, gt_tracks))
    sm = SequenceMatching.from_frames({t: match_objects(tra_gt[t], res_masks[t]) for t in frames})
    check_lineage(res_tracks, sm.labels("res"), None, "result tracks")
    _check_gt_lineage(gt_tracks, sm.labels("gt"), None, "ground-truth tracks")
    if "SEG" in wanted:
        total, n, ratios = 0.0, 0, []
        for t, gt in (seg_gt or {}).items():
            planes = gt.items() if isinstance(gt, dict) else [(None, gt)]
            for z, plane in planes:
                m = match_objects(plane, res_masks[t] if z is None else res_masks[t][z])
                total, n = total + float(m.jaccard.sum()), n + m.gt_labels.size
                ratios.append(volume_ratios(m))
        sm.seg, sm.volume_ratio = (total, n, len(seg_gt or {})), np.concatenate(ratios) if ratios else np.zeros(0)
    return _measures(wanted, bc_max, gt_tracks, res_tracks, sm)


def _measures(wanted: set, bc_max: int, gt_tracks, res_tracks, sm: SequenceMatching) -> dict:
    """The measures in `wanted` from the matching and the two track tables (validated)."""
    out: dict = {"Valid": 1} if "Valid" in wanted else {}
    aogm = _aogm(gt_tracks, res_tracks, sm)
    seg = None
    if "SEG" in wanted:
        seg = sm.seg[0] / sm.seg[1] if sm.seg[1] else None
        out["SEG"] = seg
    for k in ("DET", "TRA", "LNK"):
        if k in wanted:
            out[k] = aogm[k]
    if "OP_CSB" in wanted:
        out["OP_CSB"] = None if seg is None else (seg + aogm["DET"]) / 2
    if "OP_CTB" in wanted:
        out["OP_CTB"] = None if seg is None else (seg + aogm["TRA"]) / 2

    pairs = _pair_counts(*sm.unique_pairs()) if wanted & {"CT", "TF"} else None
    if "CT" in wanted:
        out["CT"] = complete_tracks(gt_tracks, res_tracks, pairs)
    if "TF" in wanted:
        out["TF"] = track_fractions(gt_tracks, pairs)
    divisions = {}
    if "BC" in wanted:
        t, g, r = sm.unique_pairs()
        unique = set(zip(t.tolist(), g.tolist(), r.tolist()))
        for i in range(bc_max + 1):
            tp, n_ref, n_res = branching_correctness(gt_tracks, res_tracks, unique, i)
            out[f"BC({i})"] = 2.0 * tp / (n_ref + n_res) if n_ref else None
            divisions[f"tp_div({i})"] = tp
        divisions = {"gt_divisions": n_ref, "res_divisions": n_res, **divisions}
    if "CCA" in wanted:
        out["CCA"] = cell_cycle_accuracy(gt_tracks, res_tracks)
    if "BIO" in wanted:
        out["BIO"] = _mean_defined([out["CT"], out["TF"], out[f"BC({BIO_BC})"], out["CCA"]])
    if "OP_CLB" in wanted:
        out["OP_CLB"] = None if out["LNK"] is None or out["BIO"] is None else (out["LNK"] + out["BIO"]) / 2

    if wanted & {"CHOTA", "HOTA", "MOTA", "IDF1", "MTML", "FAF"}:
        ref, res = _Joined(gt_tracks), _Joined(res_tracks)
        ti = _track_matrix(sm, ref, res)
        if "CHOTA" in wanted:
            out["CHOTA"] = _hota(ti, ref, res)
        if "HOTA" in wanted:
            out["HOTA"] = _hota(ti)
        if "MOTA" in wanted:
            out["MOTA"], out["IDSW"] = _mota(sm, ref, res)
        if "IDF1" in wanted:
            out["IDF1"], out["IDP"], out["IDR"] = _idf1(ti)
        if "MTML" in wanted:
            out["MT"], out["ML"] = _mt_ml(ti)
        if "FAF" in wanted:
            out["FAF"] = float(np.count_nonzero(sm.hits != 1) / sm.frames.size)

    out.update({k: v for k, v in aogm.items() if k not in ("DET", "TRA", "LNK")})
    out["tra_frames"] = int(sm.frames.size)
    if "SEG" in wanted:
        out["n_seg_objects"], out["seg_frames"] = int(sm.seg[1]), int(sm.seg[2])
        out.update(volume_ratio_summary(sm.volume_ratio))
    out.update(divisions)
    return out


def volume_ratio_summary(ratios) -> dict:
    """{"VOL_p10", "VOL_median", "VOL_p90"}: percentiles of the result/reference volume of the matched SEG
    objects (None without any), the size bias SEG alone does not show."""
    ratios = np.asarray(ratios, np.float64)
    if ratios.size == 0:
        return {"VOL_p10": None, "VOL_median": None, "VOL_p90": None}
    p10, p50, p90 = np.percentile(ratios, [10, 50, 90])
    return {"VOL_p10": float(p10), "VOL_median": float(p50), "VOL_p90": float(p90)}


# ----------------------------------------------------------------------------- report and CLI
def _value(v) -> str:
    return "n/a" if v is None else f"{v:.6f}"


def format_table(scores: dict) -> str:
    """The measures of a `check_accuracy` result as a small aligned text table, grouped: technical,
    biological, other tracking measures, then the AOGM parts. Shows what `scores` holds."""
    groups = [("technical", [k for k in TECHNICAL if k in scores]),
              ("biological", [k for k in ("CT", "TF", *sorted(k for k in scores if k.startswith("BC(")), "CCA", "BIO",
                                          "OP_CLB") if k in scores]),
              ("tracking", [k for k in ("CHOTA", "HOTA", "MOTA", "IDSW", "IDF1", "IDP", "IDR", "MT", "ML", "FAF")
                            if k in scores])]
    notes = {"BIO": f"mean of CT, TF, BC({BIO_BC}), CCA", "IDSW": "identity switches"}
    rows: list[tuple[str, str, str]] = []
    for title, keys in groups:
        if keys:
            rows.append((f"[{title}]", "", ""))
            rows += [(k, f"{scores[k]}" if k == "IDSW" else _value(scores[k]), notes.get(k, "")) for k in keys]
    if "AOGM" in scores:
        rows.append(("[AOGM]", "", ""))
        rows.append(("AOGM", f"{scores['AOGM']:g}", f"of AOGM_0 {scores['AOGM_0']:g}"))
        rows += [(k, f"{scores[k]}", f"x {WEIGHTS[k]:g}") for k in WEIGHTS]
        rows.append(("objects", f"{scores['n_ref_objects']}",
                     f"reference (TRA), {scores['n_ref_edges']} edges; {scores['n_res_objects']} in the result"))
    if scores.get("VOL_median") is not None:
        rows.append(("volume", f"{scores['VOL_median']:.3f}", f"result / reference, median of the matched SEG objects "
                                                              f"(p10 {scores['VOL_p10']:.3f}, p90 {scores['VOL_p90']:.3f})"))
    if "n_seg_objects" in scores:
        rows.append(("SEG GT", f"{scores['n_seg_objects']}", f"objects in {scores['seg_frames']} of {scores['tra_frames']} frames"))
    if "gt_divisions" in scores:
        rows.append(("divisions", f"{scores['gt_divisions']}", f"reference, {scores['res_divisions']} in the result"))
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() if b else a for a, b, c in rows)


# ----------------------------------------------------------------------------- a whole data set
_SEQUENCE_RES = re.compile(r"^(\d{2,})_RES$")


def sequence_folders(res_root: str | Path, gt_root: str | Path) -> dict[str, tuple[Path, Path]]:
    """Sequence -> (NN_RES, NN_GT) for the `NN_RES` folders of a data-set root (empty when there are none);
    each needs its `NN_GT` under `gt_root`."""
    res_root, gt_root = Path(res_root), Path(gt_root)
    if not res_root.is_dir() or list_frames(res_root, "mask"):
        return {}
    out = {}
    for path in sorted(res_root.iterdir()):
        match = _SEQUENCE_RES.match(path.name)
        if match and path.is_dir():
            gt = gt_root / f"{match.group(1)}_GT"
            if not gt.is_dir():
                raise CTCFormatError(f"{path}: no ground truth {gt} to score it against")
            out[match.group(1)] = (path, gt)
    return out


def check_dataset(res_root: str | Path, gt_root: str | Path, metrics=None, *, cache: bool = True) -> dict[str, dict]:
    """`check_accuracy` of every `NN_RES` of a data-set root against its `NN_GT`, and "mean": each measure
    averaged over the sequences where it is defined, as the challenge reports a data set."""
    folders = sequence_folders(res_root, gt_root)
    if not folders:
        raise CTCFormatError(f"{res_root}: no result masks and no NN_RES sequence folders")
    out = {seq: check_accuracy(res, gt, metrics, cache=cache) for seq, (res, gt) in folders.items()}
    mean = {}
    for key in out[next(iter(out))]:
        values = [s.get(key) for s in out.values()]
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        mean[key] = float(np.mean(values)) if values else None
    out["mean"] = mean
    return out


def format_dataset_table(results: dict[str, dict]) -> str:
    """A `check_dataset` result as one table: a row per measure, a column per sequence and the mean."""
    columns = list(results)
    first = results[columns[0]]
    keys = [k for k in (*TECHNICAL, "CT", "TF", *sorted(k for k in first if k.startswith("BC(")), "CCA", "BIO", "OP_CLB",
                        "CHOTA", "HOTA", "MOTA", "IDF1", "MT", "ML", "FAF") if k in first]
    rows = [("", *columns)] + [(k, *(_value(results[c].get(k)) for c in columns)) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in rows)
