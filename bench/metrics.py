"""Benchmark: `metrics.check_accuracy` against py-ctcmetrics on one synthetic 3D sequence, single-threaded.

    python bench/metrics.py [--frames 20] [--shape 59,256,256] [--nuclei 60] [--seed 0] [--keep DIR]

Writes a ground truth (moving ellipsoidal nuclei with divisions; TRA and SEG for every frame) and a
perturbed result (boundary shift, missed, merged, shifted and spurious nuclei, swapped labels), then
scores it with each implementation in its own subprocess (one thread, one process) and prints both
times, their ratio, whether the values agree, and each subprocess's peak resident memory (VmHWM).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import numpy as np  # noqa: E402

from dataset.ctc import write_tiff, write_tracks  # noqa: E402

KEYS = ("SEG", "DET", "TRA", "NS", "FN", "FP", "ED", "EA", "EC")


# ----------------------------------------------------------------------------- synthetic sequence
def _paint(volume, label, centre, radii):
    """Paint an axis-aligned ellipsoid into `volume` (later labels overwrite earlier ones)."""
    lo = np.maximum(np.floor(centre - radii).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, volume.shape)
    if np.any(hi <= lo):
        return
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
    volume[tuple(slice(a, b) for a, b in zip(lo, hi))][inside] = label


def ground_truth(shape, frames, nuclei, rng):
    """Label volumes and track rows of nuclei moving by a random walk; about one in six divides once."""
    shape = np.array(shape)
    cells = {}
    for label in range(1, nuclei + 1):
        r = rng.uniform(8, 13)
        cells[label] = dict(c=rng.uniform([8, 16, 16], shape - [8, 16, 16]), r=np.array([0.625 * r, r, r]))
    tracks = {label: [label, 0, None, 0] for label in cells}
    divisions = {int(t): [] for t in rng.integers(2, frames - 2, nuclei // 6)}
    for t in divisions:
        divisions[t].append(int(rng.choice(list(cells))))
    volumes, next_label = [], nuclei + 1
    for t in range(frames):
        for mother in set(divisions.get(t, ())) & set(cells):
            m = cells.pop(mother)
            tracks[mother][2] = t - 1
            offset = rng.normal(size=3) * [0.3, 1, 1]
            offset *= 0.6 * m["r"] / np.linalg.norm(offset)
            for sign in (1, -1):
                cells[next_label] = dict(c=m["c"] + sign * offset, r=0.8 * m["r"])
                tracks[next_label] = [next_label, t, None, mother]
                next_label += 1
        volume = np.zeros(tuple(shape), np.uint16)
        for label, cell in cells.items():
            cell["c"] = np.clip(cell["c"] + rng.normal(0, [0.5, 1.5, 1.5]), 0, shape - 1)
            _paint(volume, label, cell["c"], cell["r"])
        volumes.append(volume)
    present = [set(np.unique(v).tolist()) - {0} for v in volumes]
    return volumes, _tracks_from_presence(volumes, present, {l: p for l, _, _, p in tracks.values()})


def _tracks_from_presence(volumes, present, parents):
    """Make tracks valid in place: a label absent for some frames is split into runs (new labels, each
    run the parent of the next); parents are kept where the parent's last run ends first."""
    frames_of = {}
    for t, labels in enumerate(present):
        for label in labels:
            frames_of.setdefault(label, []).append(t)
    next_label = max(frames_of) + 1
    runs = {}
    for label, ts in sorted(frames_of.items()):
        cuts = np.flatnonzero(np.diff(ts) > 1) + 1
        runs[label] = []
        for k, part in enumerate(np.split(np.array(ts), cuts)):
            new = label if k == 0 else next_label
            next_label += k > 0
            runs[label].append((new, int(part[0]), int(part[-1])))
            if new != label:
                for t in part:
                    volumes[t][volumes[t] == label] = new
    rows = []
    for label, parts in runs.items():
        p = parents.get(label, 0)
        first_parent = runs[p][-1] if p in runs else None
        for k, (new, b, e) in enumerate(parts):
            if k:
                rows.append([new, b, e, parts[k - 1][0]])
            else:
                rows.append([new, b, e, first_parent[0] if first_parent and first_parent[2] < b else 0])
    return np.array(sorted(rows), dtype=np.int64)


def perturbed_result(gt, tracks, rng):
    """A plausible imperfect result: boundaries moved by a voxel, ~3% nuclei missed, some merged with a
    neighbour, some shifted off their reference, spurious blobs, two labels swapped halfway, and one
    mother whose track goes on into a daughter."""
    res = [np.roll(v, 1, axis=2) for v in gt]
    daughter, b, e, mother = (int(x) for x in tracks[tracks[:, 3] > 0][0])
    for v in res[b:e + 1]:
        v[v == daughter] = mother
    shape = np.array(gt[0].shape)
    parents = {int(l): int(p) for l, _, _, p in tracks}
    next_label = int(tracks[:, 0].max()) + 1
    for t, v in enumerate(res):
        labels = np.unique(v)[1:]
        for label in rng.choice(labels, max(1, len(labels) // 30), replace=False):
            v[v == label] = 0  # missed
        for a, b in rng.choice(labels, (2, 2), replace=False):
            v[v == b] = a  # merged (both references are covered by one object)
        for label in rng.choice(labels, 1):
            mask = v == label
            v[mask] = 0
            v[np.roll(mask, int(rng.integers(12, 20)), axis=1)] = label  # shifted off
        for _ in range(2):
            _paint(v, next_label, rng.uniform([4, 8, 8], shape - [4, 8, 8]), np.array([2.5, 4, 4]))
            next_label += 1  # spurious
    long_lived = [int(l) for l, b, e, p in tracks if b == 0 and e == len(gt) - 1 and p == 0]
    a, b = long_lived[:2]
    for v in res[len(res) // 2:]:
        ma, mb = v == a, v == b
        v[ma], v[mb] = b, a  # swapped
    present = [set(np.unique(v).tolist()) - {0} for v in res]
    return res, _tracks_from_presence(res, present, parents)


def write_sequence(root: Path, args) -> None:
    rng = np.random.default_rng(args.seed)
    shape = tuple(int(s) for s in args.shape.split(","))
    gt, gt_tracks = ground_truth(shape, args.frames, args.nuclei, rng)
    res, res_tracks = perturbed_result(gt, gt_tracks, rng)
    for t, (g, r) in enumerate(zip(gt, res)):
        write_tiff(root / "01_GT" / "TRA" / f"man_track{t:03d}.tif", g)
        write_tiff(root / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", g)
        write_tiff(root / "01_RES" / f"mask{t:03d}.tif", r)
    write_tracks(root / "01_GT" / "TRA" / "man_track.txt", gt_tracks)
    write_tracks(root / "01_RES" / "res_track.txt", res_tracks)
    counts = [len(np.unique(g)) - 1 for g in gt]
    print(f"sequence: {args.frames} frames of {shape}, {min(counts)}-{max(counts)} nuclei per frame, "
          f"{int((gt_tracks[:, 3] > 0).sum())} daughter tracks; result {len(res_tracks)} tracks")


# ----------------------------------------------------------------------------- scoring, one subprocess each
def peak_rss_mb() -> float:
    """This process's peak resident memory. /proc's VmHWM counts only this program; ru_maxrss (the
    fallback) also keeps the peak of the parent image this process was forked from."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score(which: str, root: Path) -> dict:
    """Import, then time one scoring of `root` by `which`; report values, seconds and peak memory."""
    if which == "ours":
        from metrics import check_accuracy

        def run():
            s = check_accuracy(root / "01_RES", root / "01_GT")
            return {k: s[k] for k in KEYS}
    else:
        from ctc_metrics.scripts.evaluate import evaluate_sequence

        def run():
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                s = evaluate_sequence(str(root / "01_RES"), str(root / "01_GT"), metrics=["SEG", "DET", "TRA"], threads=1)
            return {k: s[k] if k in ("SEG", "DET", "TRA") else int(s[f"AOGM_{k}"]) for k in KEYS}
    before = peak_rss_mb()
    start = time.perf_counter()
    values = run()
    seconds = time.perf_counter() - start
    return {"values": values, "seconds": seconds, "rss_after_import_mb": before, "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--shape", default="59,256,256")
    p.add_argument("--nuclei", type=int, default=60, help="nuclei in the first frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="write the sequence here and keep it (default: a temporary folder)")
    p.add_argument("--score", choices=("ours", "py-ctcmetrics"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.score:
        print(json.dumps(score(args.score, Path(args.data))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        write_sequence(root, args)
        out = {}
        for which in ("ours", "py-ctcmetrics"):
            done = subprocess.run([sys.executable, __file__, "--score", which, "--data", str(root)],
                                  check=True, capture_output=True, text=True)
            out[which] = json.loads(done.stdout.strip().splitlines()[-1])
    ours, ref = out["ours"], out["py-ctcmetrics"]
    diff = max(abs(ours["values"][k] - ref["values"][k]) for k in KEYS)
    print(f"{'':16}{'seconds':>10}{'peak RSS MB':>13}{'RSS after imports MB':>22}")
    for name, r in out.items():
        print(f"{name:16}{r['seconds']:10.2f}{r['peak_rss_mb']:13.0f}{r['rss_after_import_mb']:22.0f}")
    print(f"speed-up: {ref['seconds'] / ours['seconds']:.1f}x")
    print("values:  " + "  ".join(f"{k}={ours['values'][k]:.6g}" for k in KEYS))
    print(f"identical to py-ctcmetrics: {'yes' if diff <= 1e-9 else 'NO'} (largest difference {diff:.1e})")
    return 0 if diff <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
