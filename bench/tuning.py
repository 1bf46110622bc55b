"""Which tuning grid to search: each grid is tuned (for SEG) on 3 evenly spaced frames of 01, as a training run
tunes, and the thresholds found are scored, tracked, on the whole of 02 (SEG, DET, TRA, merges NS, FP, volume).

    python bench/tuning.py RUN/best.pt DATA_ROOT

Grids: the default (fg 0.3-0.7 x marker 0.2-0.7), a wide one (fg 0.3-0.9 x marker 0.2-0.9), and each with
marker_split searched too (0, 0.3, 0.5). Tuning seconds are the grid search's (the probabilities are predicted once).
"""
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
torch.set_num_threads(2)
import inference
import postprocess  # bench/postprocess.py (this folder)
from dataset import Sequence
from predict import Predictor
from training import evenly_spaced
if len(sys.argv) != 3:
    sys.exit("usage: python bench/tuning.py RUN/best.pt DATA_ROOT")
ckpt, root = sys.argv[1], sys.argv[2]
p = Predictor.from_checkpoint(ckpt, "cpu")
tr = Sequence(root, "01", p.voxel_size); va = Sequence(root, "02", p.voxel_size)
tf = list(evenly_spaced(tr.seg_files, 3))
print("tune frames", tf)
spacing = p.spacing(len(tr.shape))
pairs = [p.probabilities(tr.image(t)) for t in tf]
gts = [tr.seg(t) for t in tf]
vprob = {t: p.probabilities(va.image(t)) for t in va.frames}
WIDE = {"fg_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "marker_threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}
SPLIT = {"marker_split": (0.0, 0.3, 0.5)}
grids = {"default": inference.DEFAULT_GRID, "wide": WIDE,
         "default+split": {**inference.DEFAULT_GRID, **SPLIT}, "wide+split": {**WIDE, **SPLIT}}
for name, g in grids.items():
    s = time.perf_counter()
    post, best = inference.tune_postprocessing(pairs, gts, g, base=p.post, voxel_size=spacing)
    dt = time.perf_counter() - s
    m = postprocess.score(p, va, vprob, post)  # tracked CTC scores, as bench/postprocess.py
    print(f"{name:14} tune {dt:6.1f}s train-SEG {best:.4f} fg {post.fg_threshold} mk {post.marker_threshold} split {post.marker_split} | 02: SEG {m['SEG']:.4f} DET {m['DET']:.4f} TRA {m['TRA']:.4f} NS {m['NS']} FP {m['FP']} VOL {m['VOL_median']:.3f}", flush=True)
