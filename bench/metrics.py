"""Benchmark: `metrics.check_accuracy` against py-ctcmetrics on synthetic 3D sequences, single-threaded.

    python bench/metrics.py [--frames 20] [--shape 59,256,256] [--nuclei 60] [--seed 0]
                            [--long-frames 150] [--long-shape 59,350,330] [--long-nuclei 30] [--keep DIR]

Writes a ground truth (moving ellipsoidal nuclei with divisions; TRA and SEG for every frame) and a
perturbed result (boundary shift, missed, merged, shifted and spurious nuclei, swapped labels), then
scores it with each implementation in its own subprocess (one thread, one process): SEG, DET and TRA,
then every measure (py-ctcmetrics' ALL_METRICS), then ours again from the matching cache. A second,
SIM+-sized sequence (150 frames of 59x350x330, 30 nuclei dividing to about 60) is scored by us only.
Prints a Markdown table (times, speed-up, peak resident memory VmHWM, whether the values agree).
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


def ground_truth(shape, frames, nuclei, rng, divisions=None, redivide=False):
    """Label volumes and track rows of nuclei moving by a random walk; `divisions` (default: one in six of
    the nuclei) divide, at most one per frame: nuclei of the first frame, or (redivide) any nucleus alive
    then, so that daughters divide again and complete cell cycles appear."""
    shape = np.array(shape)
    cells = {}
    for label in range(1, nuclei + 1):
        r = rng.uniform(8, 13)
        cells[label] = dict(c=rng.uniform([8, 16, 16], shape - [8, 16, 16]), r=np.array([0.625 * r, r, r]))
    tracks = {label: [label, 0, None, 0] for label in cells}
    divisions = {int(t): [] for t in rng.integers(2, frames - 2, nuclei // 6 if divisions is None else divisions)}
    for t in divisions:
        divisions[t].append(None if redivide else int(rng.choice(list(cells))))
    volumes, next_label = [], nuclei + 1
    for t in range(frames):
        if redivide and t in divisions:
            divisions[t] = [int(rng.choice(sorted(cells)))]
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


def write_sequence(root: Path, frames: int, shape: str, nuclei: int, seed: int, divisions=None, redivide=False) -> str:
    """Write the ground truth and the perturbed result under `root`; return a one-line description."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape.split(","))
    gt, gt_tracks = ground_truth(shape, frames, nuclei, rng, divisions, redivide)
    res, res_tracks = perturbed_result(gt, gt_tracks, rng)
    for t, (g, r) in enumerate(zip(gt, res)):
        write_tiff(root / "01_GT" / "TRA" / f"man_track{t:03d}.tif", g)
        write_tiff(root / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", g)
        write_tiff(root / "01_RES" / f"mask{t:03d}.tif", r)
    write_tracks(root / "01_GT" / "TRA" / "man_track.txt", gt_tracks)
    write_tracks(root / "01_RES" / "res_track.txt", res_tracks)
    counts = [len(np.unique(g)) - 1 for g in gt]
    return (f"{frames} frames of {'×'.join(map(str, shape))}, {min(counts)}–{max(counts)} nuclei, "
            f"{int((gt_tracks[:, 3] > 0).sum()) // 2} divisions")  # two daughter tracks each


# ----------------------------------------------------------------------------- scoring, one subprocess each
#: py-ctcmetrics' names of our keys, where they differ (BIO, OP_CLB: the challenge's BC(2)).
ORACLE_NAME = {"BIO": "BIO(2)", "OP_CLB": "OP_CLB(2)", **{k: f"AOGM_{k}" for k in ("NS", "FN", "FP", "ED", "EA", "EC")}}
#: Measures we define as the cited papers do where py-ctcmetrics does not (see metrics.py): reported, not failed.
BY_DEFINITION = ("MT", "ML")
#: What each table compares: the three measures and the AOGM parts; every measure both report.
KEYS = {"three": ("SEG", "DET", "TRA", "NS", "FN", "FP", "ED", "EA", "EC"),
        "all": ("Valid", "CHOTA", "CT", "CCA", "TF", "SEG", "TRA", "DET", "MOTA", "IDSW", "HOTA", "IDF1", "IDP", "IDR",
                "MT", "ML", "FAF", "LNK", "OP_CTB", "OP_CSB", "BIO", "OP_CLB", "BC(0)", "BC(1)", "BC(2)", "BC(3)",
                "NS", "FN", "FP", "ED", "EA", "EC", "AOGM", "AOGM_0")}


def peak_rss_mb() -> float:
    """This process's peak resident memory. /proc's VmHWM counts only this program; ru_maxrss (the
    fallback) also keeps the peak of the parent image this process was forked from."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plain(v):
    return None if v is None else float(v)


def score(which: str, measures: str, root: Path, cached: bool) -> dict:
    """Import, then time one scoring of `root` by `which` ('ours' or 'py-ctcmetrics') of `measures`
    ('three': SEG, DET, TRA; 'all'); report values, seconds and peak memory. Ours starts without a cache
    (and writes one, as it does by default) unless `cached`."""
    keys = KEYS[measures]
    if which == "ours":
        from metrics import CACHE_NAME, check_accuracy
        if not cached:
            (root / "01_RES" / CACHE_NAME).unlink(missing_ok=True)

        def run():
            s = check_accuracy(root / "01_RES", root / "01_GT", ["SEG", "DET", "TRA"] if measures == "three" else None)
            return {k: _plain(s[k]) for k in keys}
    else:
        import warnings

        from ctc_metrics.metrics import ALL_METRICS
        from ctc_metrics.scripts.evaluate import evaluate_sequence

        def run():
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = evaluate_sequence(str(root / "01_RES"), str(root / "01_GT"), threads=1,
                                      metrics=["SEG", "DET", "TRA"] if measures == "three" else list(ALL_METRICS))
            return {k: _plain(s[ORACLE_NAME.get(k, k)]) for k in keys}
    before = peak_rss_mb()
    start = time.perf_counter()
    values = run()
    seconds = time.perf_counter() - start
    return {"values": values, "seconds": seconds, "rss_after_import_mb": before, "peak_rss_mb": peak_rss_mb()}


def run_scoring(which: str, measures: str, root: Path, cached: bool = False) -> dict:
    """`score` in a fresh single-threaded Python process."""
    argv = [sys.executable, __file__, "--score", which, "--measures", measures, "--data", str(root)]
    done = subprocess.run(argv + (["--cached"] if cached else []), check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def differences(a: dict, b: dict) -> dict[str, float]:
    """Key -> |a - b| where they differ by more than 1e-9 (inf where only one is None)."""
    out = {}
    for k in a:
        if a[k] is None or b[k] is None:
            if (a[k] is None) != (b[k] is None):
                out[k] = float("inf")
        elif abs(a[k] - b[k]) > 1e-9:
            out[k] = abs(a[k] - b[k])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--shape", default="59,256,256")
    p.add_argument("--nuclei", type=int, default=60, help="nuclei in the first frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--long-frames", type=int, default=150, help="frames of the SIM+-sized sequence (0: skip it)")
    p.add_argument("--long-shape", default="59,350,330")
    p.add_argument("--long-nuclei", type=int, default=30)
    p.add_argument("--long-divisions", type=int, default=30)
    p.add_argument("--keep", help="write the sequences here and keep them (default: a temporary folder)")
    p.add_argument("--score", choices=("ours", "py-ctcmetrics"), help=argparse.SUPPRESS)
    p.add_argument("--measures", choices=("three", "all"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.score:
        print(json.dumps(score(args.score, args.measures, Path(args.data), args.cached)))
        return 0
    rows, problems = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        short = write_sequence(root / "short", args.frames, args.shape, args.nuclei, args.seed)
        print(f"sequence: {short}", flush=True)
        for measures, label in (("three", "SEG, DET, TRA"), ("all", "all (ALL_METRICS)")):
            ours = run_scoring("ours", measures, root / "short")
            ref = run_scoring("py-ctcmetrics", measures, root / "short")
            diff = differences(ours["values"], ref["values"])
            problems += [f"{label}: {k} differs by {d:.1e}" for k, d in diff.items() if k not in BY_DEFINITION]
            note = "identical" if not diff else "DIFFER: " + ", ".join(k for k in diff if k not in BY_DEFINITION)
            if set(diff) <= set(BY_DEFINITION) and diff:
                note = f"identical but {', '.join(diff)} (defined as motchallenge.net, see metrics.py)"
            rows.append((short, label, ref, ours, note))
            print("  " + "  ".join(f"{k}={v:.6g}" if v is not None else f"{k}=None" for k, v in ours["values"].items()),
                  flush=True)
        cached = run_scoring("ours", "all", root / "short", cached=True)
        rows.append((short, "all, re-scored from the cache", None, cached, "identical" if cached["values"] == ours["values"]
                     else "DIFFER from the first scoring"))
        if args.long_frames:
            long = write_sequence(root / "long", args.long_frames, args.long_shape, args.long_nuclei, args.seed,
                                  args.long_divisions, redivide=True)
            print(f"sequence: {long}", flush=True)
            first = run_scoring("ours", "all", root / "long")
            again = run_scoring("ours", "all", root / "long", cached=True)
            rows.append((long, "all (ALL_METRICS)", None, first, "py-ctcmetrics not run"))
            rows.append((long, "all, re-scored from the cache", None, again, "identical" if again["values"] == first["values"]
                         else "DIFFER from the first scoring"))
    print("\n| sequence | measures | py-ctcmetrics s | ours s | speed-up | py-ctcmetrics peak MB | ours peak MB | values |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for seq, label, ref, ours, note in rows:
        r_s, r_mb = (f"{ref['seconds']:.2f}", f"{ref['peak_rss_mb']:.0f}") if ref else ("–", "–")
        speed = f"{ref['seconds'] / ours['seconds']:.0f}×" if ref else "–"
        print(f"| {seq} | {label} | {r_s} | {ours['seconds']:.2f} | {speed} | {r_mb} | {ours['peak_rss_mb']:.0f} | {note} |")
    print("\nEach scoring in its own single-threaded process, timed after the imports; ours starts without a cache "
          "(and writes one) unless re-scored from it. Peak memory: VmHWM of that process.")
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
