"""Planned prediction against MONAI's sliding window at the native resolution, same trained model.

Ours: `Predictor.instances` — each frame resampled to the plan's working spacing, the sliding window
there, the probabilities brought back to the native grid, the watershed — plus linking. "ours (labels
back)" is the alternative the plan did not take: the watershed at the working spacing (size limits in
working voxels), the labels brought back by nearest neighbour (`resample_labels`). MONAI:
`monai.inferers.sliding_window_inference` on the native frame (same window, overlap, Gaussian mode,
batch), then the same watershed. Both are timed end to end per frame (medians, alternating), and
scored with SEG on the same frames.

    python bench/planned.py --checkpoint runs/simplus/best.pt --data ROOT --seq 02 [--frames 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inference  # noqa: E402
from dataset import Sequence  # noqa: E402
from dataset3D import normalize  # noqa: E402
from dataset3D.resample import resample_image, resample_labels  # noqa: E402
from metrics import seg_score  # noqa: E402
from predict import Predictor  # noqa: E402
from tracking import link  # noqa: E402


def monai_instances(predictor: Predictor, image: np.ndarray) -> np.ndarray:
    from monai.inferers import sliding_window_inference
    x = torch.from_numpy(normalize(image))[None, None]
    with torch.inference_mode():
        seg, marker = sliding_window_inference(x, predictor.window, predictor.window_batch, predictor.model,
                                               overlap=predictor.overlap, mode="gaussian")
    return inference.instances(torch.softmax(seg[0], 0), torch.sigmoid(marker[0]), predictor.post,
                               voxel_size=predictor.spacing(image.ndim))


def labels_back_instances(predictor: Predictor, image: np.ndarray) -> np.ndarray:
    """The watershed on the working grid, then labels resampled to the native grid (nearest neighbour)."""
    plan = predictor.plan
    if plan is None or not plan.resamples:
        return predictor.instances(image)
    volume = resample_image(normalize(image), predictor.working_shape(image.shape))
    seg, marker = inference.sliding_window(predictor.model, torch.from_numpy(volume)[None], predictor.window,
                                           overlap=predictor.overlap, sw_batch_size=predictor.window_batch,
                                           device=predictor.device, amp=predictor.amp, mirror=predictor.tta)
    post = replace(predictor.post, **plan.size_limits(native=False))
    labels = inference.instances(seg, marker, post, voxel_size=tuple(reversed(plan.spacing)))
    return resample_labels(labels, image.shape)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seq", default="02")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint, "cpu")
    seq = Sequence(args.data, args.seq, predictor.voxel_size)
    frames = seq.seg_frames[: args.frames]
    times = {"ours (planned)": [], "ours (labels back)": [], "MONAI (native)": []}
    run = {"ours (planned)": predictor.instances, "ours (labels back)": lambda im: labels_back_instances(predictor, im),
           "MONAI (native)": lambda im: monai_instances(predictor, im)}
    seg = {k: [0.0, 0] for k in times}
    previous = None
    for t in frames:
        image, gt = seq.image(t), seq.seg(t)
        for name in times:
            start = time.perf_counter()
            labels = run[name](image)
            link([previous if previous is not None else labels, labels], predictor.voxel_size, predictor.track)
            times[name].append(time.perf_counter() - start)
            j, n = seg_score(labels, gt)
            seg[name][0] += j
            seg[name][1] += n
        previous = labels
    print(f"{seq.image_dir}, frames {frames} of {'x'.join(map(str, seq.shape))}, working "
          f"{'x'.join(map(str, predictor.working_shape(seq.shape)))}, window {predictor.window}, {args.threads} threads")
    print(f"{'':20} {'s per frame (median)':>22} {'SEG':>8}")
    for name in times:
        print(f"{name:20} {statistics.median(times[name]):>22.2f} {seg[name][0] / max(seg[name][1], 1):>8.4f}")
    ratio = statistics.median(times["MONAI (native)"]) / statistics.median(times["ours (planned)"])
    print(f"speed-up: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
