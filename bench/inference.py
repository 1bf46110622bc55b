"""Benchmark of inference.py (and tracking.link): prints one markdown table.

    python bench/inference.py

1. sliding-window time, ours vs MONAI's `sliding_window_inference` (same model, volume, roi, overlap,
   Gaussian blending), alternating runs, medians; and their largest difference;
2. peak resident memory of ours predicting a 59x650x650 volume on the CPU, in a fresh subprocess;
3. post-processing (`instances`) time per SIM+-sized frame (59x350x330, 30-90 nuclei) from smoothed, noisy
   probability maps made from synthetic nuclei, with the SEG it reaches;
4. tracking time per frame (`tracking.link`) on a few such frames.
MONAI is a benchmark-only dependency. Runs in a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import inference  # noqa: E402
import metrics  # noqa: E402

ROI = (32, 128, 128)
SW_VOLUME = (59, 256, 256)
BIG_VOLUME = (59, 650, 650)
FRAME = (59, 350, 330)
VOXEL_SIZE = (0.125, 0.125, 0.2)  # x, y, z in µm, as the CTC states Fluo-N3DH-SIM+'s
RSS_LIMIT_GB = 4.0


# ----------------------------------------------------------------------------- model
class _SmallUNet(torch.nn.Module):
    """Fallback when models/ has no build_model yet: a 3-level 3D U-Net (8 base channels), two heads."""

    def __init__(self, in_channels=1, features=8):
        super().__init__()
        f = features

        def block(i, o):
            return torch.nn.Sequential(torch.nn.Conv3d(i, o, 3, padding=1), torch.nn.InstanceNorm3d(o),
                                       torch.nn.LeakyReLU(inplace=True))

        self.e1, self.e2, self.e3 = block(in_channels, f), block(f, 2 * f), block(2 * f, 4 * f)
        self.u2, self.d2 = torch.nn.ConvTranspose3d(4 * f, 2 * f, 2, 2), block(4 * f, 2 * f)
        self.u1, self.d1 = torch.nn.ConvTranspose3d(2 * f, f, 2, 2), block(2 * f, f)
        self.seg, self.marker = torch.nn.Conv3d(f, 3, 1), torch.nn.Conv3d(f, 1, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(torch.nn.functional.max_pool3d(a, 2))
        c = self.e3(torch.nn.functional.max_pool3d(b, 2))
        b = self.d2(torch.cat([self.u2(c), b], 1))
        a = self.d1(torch.cat([self.u1(b), a], 1))
        return self.seg(a), self.marker(a)


def small_model() -> tuple[torch.nn.Module, str]:
    """(model in eval mode, its description): models.build_model("unet") small if it exists, else _SmallUNet."""
    torch.manual_seed(0)
    try:
        from models import build_model
    except ImportError:
        return _SmallUNet().eval(), "bench _SmallUNet (8 base channels; models.build_model not available)"
    config = {"in_channels": 1, "features": (8, 16, 32, 64)}
    return build_model("unet", **config).eval(), f'models.build_model("unet", **{config})'


# ----------------------------------------------------------------------------- synthetic nuclei
def nuclei(shape, centres, radii, anisotropy=1.6) -> np.ndarray:
    """Label image of ellipsoid nuclei (z semi-axis = r / anisotropy, as SIM+'s coarser z sampling gives);
    a voxel inside several goes to the one whose surface is farthest (touching nuclei share a face)."""
    labels = np.zeros(shape, np.uint16)
    best = np.full(shape, np.inf, np.float32)
    scale = np.array([anisotropy, 1.0, 1.0])
    for i, (c, r) in enumerate(zip(centres, radii), 1):
        lo = np.maximum(np.floor(c - r / scale).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(c + r / scale).astype(int) + 2, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.ogrid[box]
        d = sum(((g - ci) * s) ** 2 for g, ci, s in zip(grid, c, scale)).astype(np.float32) / r ** 2
        take = (d < 1) & (d < best[box])
        labels[box][take] = i
        best[box][take] = d[take]
    return labels


def random_nuclei(rng, n, shape=FRAME):
    centres = np.stack([rng.uniform(0, s, n) for s in shape], 1)
    return centres, rng.uniform(14, 24, n)


def noisy_probabilities(labels, rng, sigma=1.5, noise=0.15):
    """Probability maps a decent model might give: one-hot background / boundary / interior and a marker on the
    inner half of each nucleus, Gaussian-smoothed, with uniform noise, renormalised."""
    boundary = find_boundaries(labels, mode="inner") & (labels > 0)
    seg = np.stack([labels == 0, boundary, (labels > 0) & ~boundary]).astype(np.float32)
    marker = np.zeros(labels.shape, np.float32)
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        if box is not None:
            depth = ndimage.distance_transform_edt(labels[box] == i, sampling=(1.6, 1, 1))
            marker[box][depth > 0.5 * depth.max()] = 1
    for c in range(3):
        seg[c] = ndimage.gaussian_filter(seg[c], sigma) + noise * rng.random(labels.shape, np.float32)
    seg /= seg.sum(0, keepdims=True)
    marker = ndimage.gaussian_filter(marker, sigma) + noise * (rng.random(labels.shape, np.float32) - 0.5)
    return seg, np.clip(marker, 0, 1)[None]


# ----------------------------------------------------------------------------- measurements
def _elementwise(x):
    """A predictor that costs almost nothing: times the sliding-window machinery alone."""
    return torch.cat([x, -x, 0.5 * x], 1), 2 * x


def bench_sliding_window(predictor, repeats: int):
    """Median (wall s, CPU s) of ours and of MONAI's over `repeats` alternating runs, and the largest
    difference of their probabilities. CPU time (all threads) is steadier than wall time on a shared machine."""
    monai_inferers = __import__("monai.inferers", fromlist=["sliding_window_inference"])
    x = torch.randn(1, *SW_VOLUME)

    def ours(volume):
        return inference.sliding_window(predictor, volume, ROI, overlap=0.5, sw_batch_size=4)

    def monai(volume):
        with torch.inference_mode():
            return monai_inferers.sliding_window_inference(volume[None], ROI, 4, predictor, overlap=0.5,
                                                           mode="gaussian", sigma_scale=0.125)

    ours(x[:, :ROI[0], :ROI[1], :ROI[2]])  # warm-up: one window each
    monai(x[:, :ROI[0], :ROI[1], :ROI[2]])
    times = {ours: [], monai: []}
    for _ in range(repeats):
        for run in (ours, monai):
            wall, cpu = time.perf_counter(), time.process_time()
            result = run(x)
            times[run].append((time.perf_counter() - wall, time.process_time() - cpu))
            if run is ours:
                seg, marker = result
    ref_seg, ref_marker = result
    diff = max((seg - ref_seg[0].softmax(0)).abs().max().item(),
               (marker - ref_marker[0].sigmoid()).abs().max().item())
    medians = {run: tuple(statistics.median(t[i] for t in times[run]) for i in (0, 1)) for run in times}
    return medians[ours], medians[monai], diff


def _status_gb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in GB. Unlike getrusage's ru_maxrss, VmHWM starts afresh at
    exec, so a child does not report the size of the parent it was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_child() -> None:
    """Run in a subprocess: predict a BIG_VOLUME frame, print {"base_gb", "peak_gb", "seconds"} as JSON.
    Overlap 0: memory does not depend on it (accumulators + one window batch), the run time does."""
    model, _ = small_model()
    volume = np.random.default_rng(0).standard_normal(BIG_VOLUME, dtype=np.float32)[None]
    base = _status_gb("VmRSS")
    t = time.perf_counter()
    seg, marker = inference.sliding_window(model, volume, ROI, overlap=0.0, sw_batch_size=4)
    seconds = time.perf_counter() - t
    print(json.dumps({"base_gb": base, "peak_gb": _status_gb("VmHWM"), "seconds": seconds}))


def bench_rss():
    out = subprocess.run([sys.executable, __file__, "--rss-child"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_instances(rng, counts=(30, 60, 90), repeats=3):
    rows = []
    for n in counts:
        labels = nuclei(FRAME, *random_nuclei(rng, n))
        seg, marker = noisy_probabilities(labels, rng)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = inference.instances(seg, marker, voxel_size=VOXEL_SIZE)
            times.append(time.perf_counter() - t)
        total, n_gt = metrics.seg_score(out, labels)
        rows.append((n_gt, statistics.median(times), total / n_gt, int(out.max())))
    return rows


def bench_tracking(rng, n_frames=5, n=60):
    try:
        import tracking
    except ImportError:
        return None
    centres, radii = random_nuclei(rng, n)
    frames = []
    for _ in range(n_frames):
        frames.append(nuclei(FRAME, centres, radii))
        centres = centres + rng.normal(0, 1.5, centres.shape)  # voxels per frame
    t = time.perf_counter()
    lineage = tracking.link(iter(frames), VOXEL_SIZE)
    return (time.perf_counter() - t) / n_frames, len(lineage.tracks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each sliding window (default 3)")
    args = parser.parse_args()
    if args.rss_child:
        return rss_child()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    model, name = small_model()
    sw = bench_sliding_window(model, args.repeats)
    machinery = bench_sliding_window(_elementwise, 5)
    rss = bench_rss()
    post = bench_instances(rng)
    track = bench_tracking(rng)

    size = "x".join(map(str, SW_VOLUME))
    print(f"\nmodel: {name}; roi {ROI}, overlap 0.5, sw_batch_size 4, float32 on CPU; "
          f"times are medians of alternating runs, wall (CPU of all threads)\n")
    print("| measurement | ours | reference | ratio / limit |")
    print("| --- | --- | --- | --- |")
    for label, ((ow, oc), (mw, mc), diff), n in ((f"sliding window {size}, U-Net", sw, args.repeats),
                                                  (f"sliding window {size}, machinery only (elementwise predictor)",
                                                   machinery, 5)):
        print(f"| {label}, {n} runs | {ow:.2f} s ({oc:.2f} s) | MONAI {mw:.2f} s ({mc:.2f} s) | "
              f"{mw / ow:.2f}x ({mc / oc:.2f}x) faster (need >= 1.0); max prob. diff {diff:.1e} |")
    print(f"| peak RSS predicting {'x'.join(map(str, BIG_VOLUME))} with the U-Net (overlap 0, subprocess) | "
          f"{rss['peak_gb']:.2f} GB ({rss['base_gb']:.2f} GB before predicting; {rss['seconds']:.0f} s) | "
          f"limit {RSS_LIMIT_GB:.0f} GB | {'ok' if rss['peak_gb'] < RSS_LIMIT_GB else 'OVER'} |")
    for n_gt, seconds, seg, found in post:
        print(f"| instances per frame {'x'.join(map(str, FRAME))}, {n_gt} nuclei, median of 3 | {seconds:.2f} s "
              f"| {found} objects, SEG {seg:.3f} | aim <= 1 s |")
    if track is None:
        print("| tracking.link per frame | absent: tracking.py not importable | | |")
    else:
        print(f"| tracking.link per frame (5 frames, 60 nuclei) | {track[0]:.2f} s | {track[1]} tracks | "
              f"aim <= 1 s with instances |")


if __name__ == "__main__":
    main()
