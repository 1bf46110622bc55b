"""What each inference-time remedy buys, on a trained checkpoint, without retraining.

Every frame of the sequence is predicted once without and (with --tta) once with mirror test-time
augmentation; each variant's watershed is then run on those probabilities, tracked, and scored with the
CTC measures against the sequence's GT (SEG, DET, TRA, the merges NS, the median result/reference volume).
Variants: the checkpoint's own thresholds (its best.postprocessing.json, else the plan's defaults), with
marker splitting (`PostParams.marker_split`) at each --split value, the largest split with the smallest-object
limit scaled by each --min-size-scale (false positives in haze are small), with --drop-unmarked the largest
split dropping foreground components that hold no marker (`keep_unmarked=False`), and the same with TTA. The seconds are
the sliding window's per frame (mean), so TTA's cost is shown beside its gain.

    python bench/postprocess.py --checkpoint RUN/best.pt --data ROOT --seq 02 [--split 0.1 0.2] [--min-size-scale 2 4] [--drop-unmarked] [--tta]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inference  # noqa: E402
import metrics  # noqa: E402
from dataset import Sequence  # noqa: E402
from predict import Predictor  # noqa: E402
from tracking import track_sequence  # noqa: E402


def score(predictor: Predictor, seq: Sequence, probs: dict, post: inference.PostParams) -> dict:
    """CTC measures of the watershed of `probs` ({t: (seg, marker)}) with `post`, tracked."""
    frames = sorted(probs)
    spacing = predictor.spacing(len(seq.shape))
    masks = [inference.instances(*probs[t], post, voxel_size=spacing) for t in frames]
    relabelled, tracks = track_sequence(masks, frames, spacing, predictor.track)
    seg_gt = {t: seq.seg(t) for t in seq.seg_frames if t in probs}
    return metrics.check_arrays(dict(relabelled), tracks, {t: seq.tra(t) for t in frames}, seq.tracks, seg_gt)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seq", default="02")
    parser.add_argument("--split", type=float, nargs="*", default=[0.1, 0.2, 0.3], help="marker_split values")
    parser.add_argument("--min-size-scale", type=float, nargs="*", default=[], help="min_size multipliers (at the largest split)")
    parser.add_argument("--drop-unmarked", action="store_true",
                        help="also the largest split with foreground components without a marker dropped")
    parser.add_argument("--tta", action="store_true", help="also predict with mirror test-time augmentation")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint, "cpu")
    seq = Sequence(args.data, args.seq, predictor.voxel_size)
    base = predictor.post
    probs, seconds = {}, {}
    for tta in ([False, True] if args.tta else [False]):
        predictor.tta = tta
        start = time.perf_counter()
        probs[tta] = {t: predictor.probabilities(seq.image(t))
                      for t in tqdm(seq.frames, desc=f"predicting (tta={tta})", leave=False)}
        seconds[tta] = (time.perf_counter() - start) / len(seq.frames)
    rows = []
    for tta in probs:
        for split in [0.0, *args.split]:
            post = dataclasses.replace(base, marker_split=split)
            rows.append((f"{'TTA, ' if tta else ''}marker_split {split:g}", seconds[tta], score(predictor, seq, probs[tta], post)))
        split = max([0.0, *args.split])
        for k in args.min_size_scale:
            post = dataclasses.replace(base, marker_split=split, min_size=int(round(base.min_size * k)))
            rows.append((f"{'TTA, ' if tta else ''}split {split:g}, min_size x{k:g}", seconds[tta],
                         score(predictor, seq, probs[tta], post)))
        if args.drop_unmarked:
            post = dataclasses.replace(base, marker_split=split, keep_unmarked=False)
            rows.append((f"{'TTA, ' if tta else ''}split {split:g}, drop unmarked", seconds[tta],
                         score(predictor, seq, probs[tta], post)))
    print(f"{seq.image_dir}: {len(seq.frames)} frames of {'x'.join(map(str, seq.shape))}; thresholds {base}")
    print(f"{'variant':28} {'s/frame':>8} {'SEG':>7} {'DET':>7} {'TRA':>7} {'NS':>4} {'FN':>4} {'FP':>4} {'EA':>4} {'VOL':>6}")
    for name, s, m in rows:
        print(f"{name:28} {s:>8.2f} {m['SEG']:>7.4f} {m['DET']:>7.4f} {m['TRA']:>7.4f} {m['NS']:>4} {m['FN']:>4} "
              f"{m['FP']:>4} {m['EA']:>4} {m['VOL_median']:>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
