"""The CTC validity rules for a set of label frames and its track file (L B E P).

The same rules hold for ground truth (`man_track.txt`) and results (`res_track.txt`):
- track labels are unique and B <= E;
- a label is present in every frame from B to E and in no frame outside [B, E];
- every label found in a frame is listed in the track file;
- a parent P is 0 or a listed track that ends before its child begins (E_P < B).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .ctc import CTCFormatError, list_frames, read_labels, read_tracks


def labels_present(labels: np.ndarray) -> np.ndarray:
    """Sorted non-zero labels of a frame (bincount for small unsigned labels: one pass, no sort)."""
    if labels.dtype.kind == "u" and labels.dtype.itemsize <= 2 and labels.size:
        counts = np.bincount(labels.ravel())
        found = np.flatnonzero(counts)
        return found[found > 0]
    found = np.unique(labels)
    return found[found > 0]


def lineage_problems(tracks: np.ndarray, present: dict[int, np.ndarray], frame_files: dict[int, str] | None = None,
                     track_file: str = "track file") -> list[str]:
    """All violations of the rules above, as messages naming the file and the label.

    tracks: rows (L, B, E, P); present: frame number -> labels found in that frame.
    """
    names = frame_files or {t: f"frame {t}" for t in present}
    problems: list[str] = []
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    listed: dict[int, tuple[int, int, int]] = {}
    for l, b, e, p in tracks.tolist():
        if l in listed:
            problems.append(f"{track_file}: label {l} listed more than once")
        if b > e:
            problems.append(f"{track_file}: label {l} begins at {b} after it ends at {e}")
        listed[l] = (b, e, p)
    for l, (b, e, p) in listed.items():
        if p == 0:
            continue
        if p not in listed:
            problems.append(f"{track_file}: label {l} has parent {p}, which is not a listed track")
        elif listed[p][1] >= b:
            problems.append(f"{track_file}: parent {p} ends at frame {listed[p][1]}, not before its child {l} begins at {b}")
        if p == l:
            problems.append(f"{track_file}: label {l} is its own parent")

    frames = sorted(present)
    if not frames:
        return problems
    where: dict[int, set[int]] = {}
    for t in frames:
        for l in np.asarray(present[t]).tolist():
            where.setdefault(l, set()).add(t)
            if l not in listed:
                problems.append(f"{names[t]}: label {l} is not listed in {track_file}")
    first, last = frames[0], frames[-1]
    for l, (b, e, _) in listed.items():
        seen = where.get(l, set())
        expected = {t for t in frames if b <= t <= e}
        missing = sorted(expected - seen)
        extra = sorted(seen - expected)
        if b < first or e > last:
            problems.append(f"{track_file}: label {l} spans frames {b}-{e}, outside the frames {first}-{last}")
        if missing:
            problems.append(f"{names[missing[0]]}: label {l} (track {b}-{e} in {track_file}) is absent"
                            + (f" (and in {len(missing) - 1} more frames)" if len(missing) > 1 else ""))
        if extra:
            problems.append(f"{names[extra[0]]}: label {l} is present outside its track {b}-{e} in {track_file}")
    return problems


def check_lineage(tracks, present, frame_files=None, track_file="track file") -> None:
    """Raise CTCFormatError listing every rule broken (see `lineage_problems`)."""
    problems = lineage_problems(tracks, present, frame_files, track_file)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CTCFormatError(f"{len(problems)} CTC rule(s) broken:\n  {shown}{more}")


def check_track_folder(folder: str | Path, kind: str = "tra", track_name: str = "man_track.txt", ndim: int | None = None) -> None:
    """Check a folder of label frames plus its track file, e.g. `01_GT/TRA` or a result folder (kind='mask')."""
    folder = Path(folder)
    files = list_frames(folder, kind)
    if not files:
        raise CTCFormatError(f"{folder}: no label frames found")
    track_path = folder / track_name
    tracks = read_tracks(track_path)
    present = {t: labels_present(read_labels(path, ndim)) for t, path in files.items()}
    check_lineage(tracks, present, {t: str(p) for t, p in files.items()}, str(track_path))


def label_image_problem(labels: np.ndarray) -> str | None:
    """Why `labels` looks like an intensity image rather than an instance mask, or None.

    In a mask each object is a solid blob, so almost every foreground voxel has the same value as its
    neighbour along x; in a raw intensity image (noise, gradients) neighbouring values mostly differ,
    and nearly every voxel is non-zero.
    """
    if labels.size < 64 or labels.shape[-1] < 2:
        return None
    fg = labels[..., 1:] > 0
    n_fg = int(fg.sum())
    if n_fg < 32:
        return None
    same = float(((labels[..., 1:] == labels[..., :-1]) & fg).sum()) / n_fg
    if same < 0.5:
        return (f"only {same:.0%} of its foreground voxels share their neighbour's label ({n_fg / fg.size:.0%} "
                "of the image is foreground): it looks like an intensity image, not an instance mask")
    return None
