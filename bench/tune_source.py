"""Where the watershed thresholds should come from: the defaults (inference.PostParams), a tuning of all of them on
frames the network was trained on, of the marker threshold alone there (what a run does: TRAINING_FRAMES_GRID), or a
tuning on frames it never saw (sequence 01 of another data set of the same kind, e.g. the same synthetic preset with
another --seed). Each is scored, tracked, on the whole of 02 (SEG, DET, TRA, merges NS, FP, volume), from
probabilities predicted once.

    python bench/tune_source.py RUN/best.pt DATA_ROOT [--held-out OTHER_ROOT] [--frames 3 10]

A network is more confident on frames it has fit than on new ones, so a foreground threshold tuned there transfers
badly; tuning on held-out frames shows what an honest tuning could buy.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import inference  # noqa: E402
import postprocess  # noqa: E402  (bench/postprocess.py, this folder)
from dataset import Sequence  # noqa: E402
from predict import Predictor  # noqa: E402
from training import evenly_spaced  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data", help="the run's data set: 01 trained on, 02 scored")
    parser.add_argument("--held-out", help="a data set of the same kind the network never saw: its 01 is tuned on")
    parser.add_argument("--frames", type=int, nargs="+", default=[3, 10], help="tuning frame counts")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    p = Predictor.from_checkpoint(args.checkpoint, "cpu", post=None)  # the defaults, not the run's tuned record
    va = Sequence(args.data, "02", p.voxel_size)
    spacing = p.spacing(len(va.shape))
    vprob = {t: p.probabilities(va.image(t)) for t in va.frames}
    everything = ("", inference.DEFAULT_GRID)
    sources = [("training frames (01)", Sequence(args.data, "01", p.voxel_size),
                [everything, ("marker only, ", inference.TRAINING_FRAMES_GRID)])]  # the latter: what a run does
    if args.held_out:
        sources.append(("held-out frames", Sequence(args.held_out, "01", p.voxel_size), [everything]))

    def show(name, post):
        m = postprocess.score(p, va, vprob, post)
        print(f"{name:46} fg {post.fg_threshold:.1f} marker {post.marker_threshold:.1f} split {post.marker_split:.1f} | "
              f"SEG {m['SEG']:.4f} DET {m['DET']:.4f} TRA {m['TRA']:.4f} NS {m['NS']:>3} FP {m['FP']:>3} "
              f"VOL {m['VOL_median']:.3f}", flush=True)

    print(f"{args.checkpoint} on {va.image_dir} ({len(va.frames)} frames)")
    show("defaults", p.post)
    show("defaults without the split", dataclasses.replace(p.post, marker_split=0.0))
    for name, seq, grids in sources:
        probs = {}
        for n in args.frames:
            frames = evenly_spaced(seq.seg_files, n)
            for t in frames:
                if t not in probs:
                    probs[t] = p.probabilities(seq.image(t))
            for label, grid in grids:
                post, _ = inference.tune_postprocessing([probs[t] for t in frames], [seq.seg(t) for t in frames],
                                                        grid, base=p.post, voxel_size=spacing)
                show(f"{label}tuned on {n} {name}", post)
    return 0


if __name__ == "__main__":
    sys.exit(main())
