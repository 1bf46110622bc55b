"""Which tuning grid to search, on how many frames: each grid is tuned (for SEG) on N evenly spaced frames of 01,
as a training run tuned them until 2026-12-08 (a run now tunes the marker threshold alone: bench/tune_source.py), and
the thresholds found are scored, tracked, on the whole of 02 (SEG, DET, TRA, merges NS, FP, volume).

    python bench/tuning.py RUN/best.pt DATA_ROOT [--frames 3 10]

Grids: fg 0.3-0.7 x marker 0.2-0.7 alone ("thresholds"), the default (inference.DEFAULT_GRID: the same with
marker_split 0, 0.3, 0.5), and a wide one (fg 0.3-0.9 x marker 0.2-0.9, split searched). Tuning seconds are the
grid search's (the probabilities are predicted once).
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import inference  # noqa: E402
import postprocess  # noqa: E402  (bench/postprocess.py, this folder)
from dataset import Sequence  # noqa: E402
from predict import Predictor  # noqa: E402
from training import evenly_spaced  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("checkpoint")
parser.add_argument("data")
parser.add_argument("--frames", type=int, nargs="+", default=[3], help="tuning frame counts to compare")
args = parser.parse_args()
torch.set_num_threads(2)
p = Predictor.from_checkpoint(args.checkpoint, "cpu")
tr, va = Sequence(args.data, "01", p.voxel_size), Sequence(args.data, "02", p.voxel_size)
spacing = p.spacing(len(tr.shape))
probs = {}
vprob = {t: p.probabilities(va.image(t)) for t in va.frames}
SPLIT = {"marker_split": inference.DEFAULT_GRID["marker_split"]}
THRESHOLDS = {k: v for k, v in inference.DEFAULT_GRID.items() if k not in SPLIT}
WIDE = {"fg_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "marker_threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        **SPLIT}
grids = {"thresholds": THRESHOLDS, "default": inference.DEFAULT_GRID, "wide": WIDE}
base = dataclasses.replace(p.post, marker_split=0.0)  # "thresholds" is split-free even if the run's record is not
for n in args.frames:
    tf = list(evenly_spaced(tr.seg_files, n))
    for t in tf:
        if t not in probs:
            probs[t] = p.probabilities(tr.image(t))
    pairs, gts = [probs[t] for t in tf], [tr.seg(t) for t in tf]
    for name, g in grids.items():
        s = time.perf_counter()
        post, best = inference.tune_postprocessing(pairs, gts, g, base=base, voxel_size=spacing)
        dt = time.perf_counter() - s
        m = postprocess.score(p, va, vprob, post)  # tracked CTC scores, as bench/postprocess.py
        print(f"{n:2} frames {name:10} tune {dt:6.1f}s train-SEG {best:.4f} fg {post.fg_threshold} "
              f"mk {post.marker_threshold} split {post.marker_split} | 02: SEG {m['SEG']:.4f} DET {m['DET']:.4f} "
              f"TRA {m['TRA']:.4f} NS {m['NS']} FP {m['FP']} VOL {m['VOL_median']:.3f}", flush=True)
