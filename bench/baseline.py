"""The classical no-learning baseline every accuracy claim is measured against.

Per frame: Gaussian smoothing, an Otsu threshold, holes filled, a distance transform in micrometres,
one seed per local maximum at least half a nucleus radius apart, a watershed on the negative distance,
small objects removed. Then the project's own tracker and result writer, and the CTC measures.
The nucleus size and the tracker's gates come from the data's fingerprint (plan.py), as they would
for the network; nothing is tuned on the sequence that is scored.

    python bench/baseline.py --data ROOT --seq 02 [--train-seq 01] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset import Sequence  # noqa: E402
from metrics import format_table  # noqa: E402
from plan import fingerprint, make_plan  # noqa: E402
from results import write_tracked_result  # noqa: E402
from tracking import TrackParams  # noqa: E402
from utils import check_accuracy  # noqa: E402


def classical_instances(image: np.ndarray, spacing, radius_um: float, min_size: int) -> np.ndarray:
    """Otsu + distance-transform watershed of one frame (spacing in µm, array order)."""
    sigma = [max(0.5, 0.1 * radius_um / s) for s in spacing]
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    mask = ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))
    distance = ndimage.distance_transform_edt(mask, sampling=spacing)
    footprint = max(1, int(round(0.5 * radius_um / max(spacing))))
    labels_fg, _ = ndimage.label(mask)
    peaks = peak_local_max(distance, min_distance=footprint, labels=labels_fg, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_size] = 0
    out = np.zeros(labels.shape, np.uint16)
    kept = np.flatnonzero(sizes >= min_size)
    kept = kept[kept > 0]
    lut = np.zeros(sizes.size, np.uint16)
    lut[kept] = np.arange(1, kept.size + 1)
    out[:] = lut[labels]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seq", default="02", help="sequence to segment, track and score")
    parser.add_argument("--train-seq", default="01", help="sequence whose GT gives the nucleus size and the gates")
    parser.add_argument("--out", help="result folder (default: a temporary one beside nothing of yours: /tmp)")
    args = parser.parse_args(argv)
    fp = fingerprint(args.data, args.train_seq)
    divisor = (1,) * fp.ndim
    plan = make_plan(fp, divisor)
    seq = Sequence(args.data, args.seq, fp.voxel_size)
    spacing = tuple(reversed(fp.voxel_size))
    radius_um = 0.5 * float(fp.diameter_um["p50"])
    min_size = int(plan.size_limits(native=True)["min_size"])
    out = Path(args.out or f"/tmp/baseline-{Path(args.data).name}-{args.seq}_RES")
    start = time.perf_counter()
    masks = ((t, classical_instances(seq.image(t), spacing, radius_um, min_size)) for t in seq.frames)
    write_tracked_result(masks, seq.frames, out, fp.voxel_size, TrackParams(**plan.tracking_gates()), overwrite=True,
                         inputs=[seq.image_dir, seq.gt_dir])
    seconds = time.perf_counter() - start
    scores = check_accuracy(out, seq.gt_dir, "SEG,DET,TRA")
    print(f"classical baseline (Otsu + distance watershed, no learning) on {seq.image_dir}: {seconds:.1f} s "
          f"({seconds / len(seq.frames):.2f} s per frame)\n{format_table(scores)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
