"""The Cell Tracking Challenge measures SEG, DET and TRA (AOGM), on in-memory volumes and on CTC folders.

Definitions (celltrackingchallenge.net/evaluation-methodology; Matula et al. 2015, PLoS ONE 10:e0144959):

- matching: a reference object R is matched by the result object S with |R ∩ S| > 0.5 |R|; an R has at
  most one match, one S may match several R (each extra one is a split, NS);
- SEG: mean over the reference objects of the SEG ground truth of the Jaccard index |R∩S| / |R∪S| of
  the matching S (0 when unmatched). A SEG file given as a 2D slice `man_seg_T_Z.tif` is compared with
  slice Z of the result, as its own image (as the challenge's SEG software does); frames without SEG
  ground truth are skipped;
- DET = 1 - min(AOGM_D, AOGM_D0) / AOGM_D0, AOGM_D = 5 NS + 10 FN + 1 FP, AOGM_D0 = 10 |V_ref|;
- TRA = 1 - min(AOGM, AOGM_0) / AOGM_0, AOGM = AOGM_D + 1 ED + 1.5 EA + 1 EC, AOGM_0 = 10 |V_ref| + 1.5 |E_ref|,
  over the graphs whose vertices are the objects of each frame (TRA ground truth / result masks) and
  whose edges are track links (one label in consecutive frames) and parent links (last frame of a
  parent to the first frame of each child). Only result vertices matching exactly one reference vertex
  keep their edges: a result edge between them is redundant (ED) if the reference has no edge between
  the matched vertices, of wrong kind (EC) if the reference edge is a track link where the result has a
  parent link or vice versa; each reference edge no result edge maps onto is missing (EA).

Scoring is counting: per frame, one `np.bincount` over the (compacted) label pairs of the foreground
voxels gives |R|, |S| and every |R∩S|; the graph comparison then works on objects, not voxels.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset.ctc import CTCFormatError, atomic_path, frame_gaps, frame_name, list_frames, list_seg_slices, read_labels, read_tracks
from dataset.validate import check_lineage

#: AOGM weights of the challenge.
WEIGHTS = {"NS": 5.0, "FN": 10.0, "FP": 1.0, "ED": 1.0, "EA": 1.5, "EC": 1.0}

# A label image whose largest label is below this is compacted with a lookup table, else with np.unique.
_LUT_LIMIT = 1 << 22


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


def _unique_matches(m: Matching) -> dict[int, int]:
    """Result label -> reference label, for the result objects that match exactly one reference object."""
    once = set(m.res_labels[m.hits == 1].tolist())
    sel = m.matched > 0
    return {r: g for r, g in zip(m.matched[sel].tolist(), m.gt_labels[sel].tolist()) if r in once}


def _edges(tracks: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """Edges (t1, label1, t2, label2, kind) of a validated track table: kind 0 = track link, 1 = parent link."""
    ends = {l: e for l, _, e, _ in tracks.tolist()}
    out = []
    for l, b, e, p in tracks.tolist():
        out.extend((t, l, t + 1, l, 0) for t in range(b, e))
        if p:
            out.append((ends[p], p, b, l, 1))
    return out


def _edge_errors(gt_tracks: np.ndarray, res_tracks: np.ndarray, matches: dict[int, Matching]) -> tuple[int, int, int, int]:
    """(ED, EA, EC, number of reference edges), comparing the result edges between uniquely matched vertices."""
    reference = {(t1, l1, t2, l2): kind for t1, l1, t2, l2, kind in _edges(gt_tracks)}
    to_ref = {t: _unique_matches(m) for t, m in matches.items()}
    ed = ec = found = 0
    for t1, l1, t2, l2, kind in _edges(res_tracks):
        g1, g2 = to_ref[t1].get(l1), to_ref[t2].get(l2)
        if g1 is None or g2 is None:
            continue
        ref_kind = reference.get((t1, g1, t2, g2))
        if ref_kind is None:
            ed += 1
        else:
            found += 1
            ec += ref_kind != kind
    return ed, len(reference) - found, ec, len(reference)


def check_accuracy(res_dir: str | Path, gt_dir: str | Path, seg_dir: str | Path | None = None) -> dict:
    """SEG, DET, TRA and the AOGM parts of a CTC result folder against a ground-truth folder.

    res_dir: `maskNNN.tif` for every frame of the TRA ground truth, and `res_track.txt`;
    gt_dir: e.g. `ROOT/01_GT` with `TRA/` (`man_trackNNN.tif`, `man_track.txt`) and `SEG/`;
    seg_dir: SEG ground truth to use instead of `gt_dir/SEG`.

    Returns SEG, DET, TRA, OP_CSB, OP_CTB, NS, FN, FP, ED, EA, EC, AOGM, AOGM_0, AOGM_D, AOGM_D0,
    n_ref_objects, n_ref_edges, n_res_objects, n_seg_objects, seg_frames, tra_frames. SEG, OP_CSB and
    OP_CTB are None when there is no SEG ground truth (no folder, no file, or no object in it).
    Raises CTCFormatError, naming the file and label, when the result or the ground truth breaks the
    CTC rules; each file is read once.
    """
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
    seg_files = _seg_files(seg_dir, tra_files)

    matches: dict[int, Matching] = {}
    seg_sum, seg_objects = 0.0, 0
    for t, tra_path in tra_files.items():
        res = read_labels(mask_files[t], None)
        gt = read_labels(tra_path, None)
        if res.shape != gt.shape:
            raise CTCFormatError(f"{mask_files[t]}: shape {res.shape} differs from the ground truth {tra_path.name} {gt.shape}")
        matches[t] = match_objects(gt, res)
        for z, seg_path in seg_files.get(t, ()):
            m = _seg_matching(seg_path, z, res, mask_files[t])
            seg_sum += float(m.jaccard.sum())
            seg_objects += m.gt_labels.size

    check_lineage(res_tracks, {t: m.res_labels for t, m in matches.items()},
                  {t: str(p) for t, p in mask_files.items()}, str(res_track_path))
    check_lineage(gt_tracks, {t: m.gt_labels for t, m in matches.items()},
                  {t: str(p) for t, p in tra_files.items()}, str(gt_track_path))

    counts = {"NS": sum(m.ns for m in matches.values()), "FN": sum(m.fn for m in matches.values()),
              "FP": sum(m.fp for m in matches.values())}
    counts["ED"], counts["EA"], counts["EC"], n_edges = _edge_errors(gt_tracks, res_tracks, matches)
    n_vertices = sum(m.gt_labels.size for m in matches.values())
    if n_vertices == 0:
        raise CTCFormatError(f"{tra_dir}: the TRA ground truth has no object; DET and TRA are undefined")
    aogm_d = sum(WEIGHTS[k] * counts[k] for k in ("NS", "FN", "FP"))
    aogm = aogm_d + sum(WEIGHTS[k] * counts[k] for k in ("ED", "EA", "EC"))
    aogm_d0 = WEIGHTS["FN"] * n_vertices
    aogm_0 = aogm_d0 + WEIGHTS["EA"] * n_edges
    seg = seg_sum / seg_objects if seg_objects else None
    det = 1.0 - min(aogm_d, aogm_d0) / aogm_d0
    tra = 1.0 - min(aogm, aogm_0) / aogm_0
    return {
        "SEG": seg, "DET": det, "TRA": tra,
        "OP_CSB": None if seg is None else (seg + det) / 2,
        "OP_CTB": None if seg is None else (seg + tra) / 2,
        **{k: int(v) for k, v in counts.items()},
        "AOGM": aogm, "AOGM_0": aogm_0, "AOGM_D": aogm_d, "AOGM_D0": aogm_d0,
        "n_ref_objects": int(n_vertices), "n_ref_edges": int(n_edges),
        "n_res_objects": int(sum(m.res_labels.size for m in matches.values())),
        "n_seg_objects": int(seg_objects), "seg_frames": len(seg_files), "tra_frames": len(tra_files),
    }


# ----------------------------------------------------------------------------- report and CLI
def format_table(scores: dict) -> str:
    """The measures and the AOGM parts of a `check_accuracy` result as a small aligned text table."""
    def value(key):
        v = scores.get(key)
        return "n/a" if v is None else f"{v:.6f}"

    rows = [(k, value(k), "") for k in ("SEG", "DET", "TRA", "OP_CSB", "OP_CTB")]
    rows.append(("AOGM", f"{scores['AOGM']:g}", f"of AOGM_0 {scores['AOGM_0']:g}"))
    rows += [(k, f"{scores[k]}", f"x {WEIGHTS[k]:g}") for k in WEIGHTS]
    rows.append(("objects", f"{scores['n_ref_objects']}",
                 f"reference (TRA), {scores['n_ref_edges']} edges; {scores['n_res_objects']} in the result"))
    rows.append(("SEG GT", f"{scores['n_seg_objects']}", f"objects in {scores['seg_frames']} of {scores['tra_frames']} frames"))
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows)


def _write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a temporary file in the same folder, then a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def evaluate_command(args) -> int:
    """`main.py evaluate --res RES --gt GT [--json OUT]`: print the scores, optionally save them as JSON."""
    scores = check_accuracy(args.res, args.gt)
    print(format_table(scores))
    if args.json:
        _write_json(Path(args.json), scores)
        print(f"scores written to {args.json}")
    return 0
