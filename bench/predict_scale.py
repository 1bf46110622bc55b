"""Prediction at scale.

    python bench/predict_scale.py --memory [--budget 2G] [--sizes 59x350x330,59x700x660,...]
    python bench/predict_scale.py --fps [--procs 1 2] [--checkpoint best.pt --data ROOT --seq 02]

--memory (`memory_table`): peak memory (VmHWM of a child process per run) against frame size, for the
in-memory path (a frame predicted in one piece) and the tiled path (`--max-memory`: overlapping blocks,
tiled.py). Frames are synthetic SIM+-preset frames (59x350x330, nuclei ~32x50x50 voxels), tiled up to the
larger sizes, written as uncompressed TIFFs and read lazily (memory-mapped box by box). The model is
`smooth_model`, logits from the 3x3x3 box-smoothed image: this table is about the memory that grows with the
frame, and an untrained network of the default size costs the same memory per window but hours of CPU per
frame. The plan is SIM+'s: working grid half the native one on every axis, window 32x64x64 there.
"baseline" is the same child predicting a one-window frame (interpreter, torch, the model, one window
batch): what neither path can go below. A frame whose in-memory estimate (predict.BYTES_PER_VOXEL per
voxel) exceeds half of the available memory is run on the tiled path only.

--fps (`fps_table`): frames per second of `main.py predict` on 1 and on N processes (torchrun, scaleout.py).
Each configuration runs the real command on the same sequence into its own result folder, the machine's
cores shared out (1 process x C threads, N processes x C/N threads, as torchrun's OMP_NUM_THREADS); the time
is the segmentation phase the command reports ("segmented F frames in S s"), so interpreter start, model
loading and the final linking (rank 0 alone) are left out; the whole command's wall time is shown beside it.
Every result must be byte-identical to the one-process result. Default: the default-size `unet` (1.4 M
parameters, untrained and seeded: the network's cost is what is measured) on a synthetic demo-size sequence.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = ((59, 350, 330), (59, 700, 660), (118, 1400, 1320))
WINDOW = (32, 64, 64)
NATIVE_SPACING = (0.2, 0.125, 0.125)  # z, y, x um (SIM+)

_CHILD = r'''
import json, sys, time
sys.path.insert(0, {root!r})
import torch
sys.path.insert(0, {bench!r})
from predict_scale import smooth_model, sim_plan
import predict
from dataset.frames import TiffFrame
from inference import PostParams
torch.set_num_threads(2)
frame = TiffFrame({path!r}, 3)
p = predict.Predictor(smooth_model(), {window!r}, plan=sim_plan(frame.shape), voxel_size=(0.125, 0.125, 0.2),
                      post=PostParams(min_size=100, min_marker_size=10), max_memory={budget})
layout = p.block_layout(frame.shape)
start = time.perf_counter()
labels = p.instances(frame, scratch={scratch!r})
seconds = time.perf_counter() - start
hwm = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(json.dumps({{"hwm": hwm, "seconds": seconds, "objects": int(labels.max()),
                  "layout": layout.describe() if layout else "one piece", "need": p.memory_need(frame.shape)}}))
'''


def smooth_model():
    """Logits from the 3x3x3 box-smoothed image: foreground above 0.3, seeds above 0.6 (normalised units)."""
    import torch
    from torch import nn

    class _Smooth(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 1, 3, padding=1, bias=False)
            nn.init.constant_(self.conv.weight, 1 / 27)

        def forward(self, x):
            x = self.conv(x)
            fg = 20 * (x - 0.3)
            return torch.cat([-fg, torch.full_like(fg, -8.0), fg], 1), 20 * (x - 0.6)

    return _Smooth()


def sim_plan(shape):
    """SIM+'s plan: the working grid is half the native one on every axis, the window WINDOW there."""
    from plan import Plan
    spacing = [2 * s for s in NATIVE_SPACING]
    return Plan(ndim=3, native_spacing=list(NATIVE_SPACING), spacing=spacing, native_shape=list(shape),
                shape=[max(1, round(n / 2)) for n in shape], divisor=[16, 16, 16], crop_size=list(WINDOW),
                window=list(WINDOW), patch_size=None, min_size=12, min_marker_size=1, max_distance=6.4,
                division_distance=7.7, gap_distance=7.7, sources={}, measured={"diameter_um": 6.4})


def _frame(shape, base: np.ndarray) -> np.ndarray:
    """`base` tiled (mirrored every other time, so no seam cuts a nucleus in a straight line) to `shape`."""
    reps = [-(-n // b) for n, b in zip(shape, base.shape)]
    out = base
    for axis, r in enumerate(reps):
        out = np.concatenate([out if i % 2 == 0 else np.flip(out, axis) for i in range(r)], axis=axis)
    return np.ascontiguousarray(out[tuple(slice(0, n) for n in shape)])


def _run_child(path: Path, budget: int, scratch: Path) -> dict:
    code = _CHILD.format(root=str(ROOT), bench=str(ROOT / "bench"), path=str(path), window=WINDOW, budget=budget,
                         scratch=str(scratch))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed on {path.name}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_table(sizes=SIZES, budget: int = 2 * 2**30, workdir: str | None = None) -> list[dict]:
    """Peak RSS of predicting one frame of each size in one piece and in blocks under `budget`; prints a table."""
    from dataset.ctc import write_tiff
    from dataset.synthetic import PRESETS, generate_sequence
    from predict import DEFAULT_MEMORY_SHARE, available_memory
    base = generate_sequence(replace(PRESETS["sim+"], frames=1), 1)[0][0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="predict_scale-", dir=workdir) as tmp:
        tmp = Path(tmp)
        write_tiff(tmp / "window.tif", base[:WINDOW[0] * 2, :WINDOW[1] * 2, :WINDOW[2] * 2])
        baseline = _run_child(tmp / "window.tif", 64 * 2**30, tmp)
        print(f"baseline (one {WINDOW[0] * 2}x{WINDOW[1] * 2}x{WINDOW[2] * 2} frame): {baseline['hwm'] / 2**20:.0f} MiB", flush=True)
        for shape in sizes:
            path = tmp / "frame.tif"
            write_tiff(path, _frame(shape, base), (0.125, 0.125, 0.2))
            row = {"shape": "x".join(map(str, shape)), "voxels": int(np.prod(shape))}
            tiled = _run_child(path, budget, tmp)
            row.update(need=tiled["need"], tiled_hwm=tiled["hwm"], tiled_s=tiled["seconds"], layout=tiled["layout"],
                       tiled_objects=tiled["objects"])
            free = available_memory() or 0
            if tiled["need"] <= DEFAULT_MEMORY_SHARE * free:
                whole = _run_child(path, 64 * 2**30, tmp)
                row.update(whole_hwm=whole["hwm"], whole_s=whole["seconds"], whole_objects=whole["objects"])
            rows.append(row)
            print(_line(row), flush=True)
            path.unlink()
    print(f"\nbudget {budget / 2**20:.0f} MiB; baseline {baseline['hwm'] / 2**20:.0f} MiB; model smooth_model, SIM+ plan "
          f"(working grid 1/2, window {'x'.join(map(str, WINDOW))}); 2 threads\n")
    print("| frame | voxels | estimated need in one piece | in one piece: peak RSS (s) | in blocks: peak RSS (s) | blocks |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        whole = (f"{row['whole_hwm'] / 2**20:.0f} MiB ({row['whole_s']:.0f} s)" if "whole_hwm" in row
                 else "not run (over half the memory)")
        print(f"| {row['shape']} | {row['voxels'] / 1e6:.1f} M | {row['need'] / 2**30:.2f} GiB | {whole} | "
              f"{row['tiled_hwm'] / 2**20:.0f} MiB ({row['tiled_s']:.0f} s) | {row['layout']} |")
    return rows


def _line(row: dict) -> str:
    whole = f"one piece {row['whole_hwm'] / 2**20:.0f} MiB in {row['whole_s']:.1f} s ({row['whole_objects']} objects)" \
        if "whole_hwm" in row else "one piece: not run"
    return (f"{row['shape']}: {whole}; blocks {row['tiled_hwm'] / 2**20:.0f} MiB in {row['tiled_s']:.1f} s "
            f"({row['tiled_objects']} objects; {row['layout']})")


# ----------------------------------------------------------------------------- frames per second, 1 vs N processes
SEGMENTED = re.compile(r"segmented (\d+) frames in ([\d.]+) s on (\d+) process")


def default_checkpoint(path: Path, window=WINDOW) -> Path:
    """The default `unet`, untrained (seeded), with `window` as its crop: the network's cost is what is measured."""
    import torch

    from models import build_model
    from utils import save_checkpoint
    torch.manual_seed(0)
    model = build_model("unet")
    save_checkpoint(path, {"model_name": "unet", "model_config": model.config, "model": model.state_dict(),
                           "crop_size": list(window), "voxel_size": [0.125, 0.125, 0.2], "post": {}})
    return path


def _predict(procs: int, threads: int, checkpoint, data, seq: str, out: Path, device: str) -> dict:
    """One `main.py predict` on `procs` processes of `threads` threads each, and its timings."""
    command = [sys.executable, str(ROOT / "main.py"), "predict", "--checkpoint", str(checkpoint), "--data", str(data),
               "--seq", seq, "--out", str(out), "--overwrite", "--device", device]
    if procs > 1:
        command[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", str(ROOT / "main.py")]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    match = SEGMENTED.search(proc.stdout)
    frames, seconds = int(match.group(1)), float(match.group(2))
    return {"procs": procs, "threads": threads, "frames": frames, "seconds": seconds, "fps": frames / seconds,
            "wall": wall}


def _result_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".ctc_matching")}


def fps_table(procs=(1, 2), checkpoint=None, data=None, seq: str = "02", frames: int = 8, shape=(32, 128, 128),
              cores: int | None = None, repeats: int = 1, device: str = "cpu") -> list[dict]:
    """Frames per second of `main.py predict` on each process count of `procs` (the first is the base), the
    ratio, and whether each result is byte-identical to the first; prints a table."""
    from dataset.synthetic import SynthConfig, write_dataset
    cores = cores or os.cpu_count() or 1
    rows, reference = [], None
    with tempfile.TemporaryDirectory(prefix="predict_scale-") as tmp:
        tmp = Path(tmp)
        checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(tmp / "unet.pt")
        data = Path(data) if data else write_dataset(tmp / "set", SynthConfig(shape=tuple(shape), frames=frames), seed=0)
        for n in procs:
            out = tmp / f"res-{n}"
            runs = [_predict(n, max(1, cores // n), checkpoint, data, seq, out, device) for _ in range(repeats)]
            best = min(runs, key=lambda r: r["seconds"])
            got = _result_bytes(out)
            reference = reference or got
            rows.append({**best, "identical": got == reference})
    base = rows[0]["fps"]
    print(f"{rows[0]['frames']} frames of {data.name}/{seq}, {checkpoint.name}, {device}, {cores} cores; best of {repeats}\n")
    print("| processes | threads each | segmenting (s) | frames/s | vs 1 process | command wall (s) | result identical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['procs']} | {r['threads']} | {r['seconds']:.1f} | {r['fps']:.2f} | {r['fps'] / base:.2f}x | "
              f"{r['wall']:.1f} | {'yes' if r['identical'] else 'NO'} |")
    return rows


def _size(text: str) -> int:
    import main
    return main.SIZE(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="peak memory against frame size, in one piece and in blocks")
    parser.add_argument("--budget", type=_size, default=2 * 2**30,
                        help="--max-memory of the tiled runs (default 2G; SIM+'s windows need about 1.4G a block)")
    parser.add_argument("--sizes", default=",".join("x".join(map(str, s)) for s in SIZES),
                        help="frame shapes ZxYxX, comma-separated")
    parser.add_argument("--workdir", help="where the frames are written (default: the system's temporary folder)")
    parser.add_argument("--fps", action="store_true", help="frames per second on 1 and on N processes (torchrun)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="--fps: process counts (the first is the base)")
    parser.add_argument("--checkpoint", help="--fps: a checkpoint (default: the default-size unet, untrained)")
    parser.add_argument("--data", help="--fps: a CTC data set root (default: a synthetic demo-size set)")
    parser.add_argument("--seq", default="02", help="--fps: the sequence (default 02)")
    parser.add_argument("--frames", type=int, default=8, help="--fps: frames of the synthetic set (default 8)")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128), metavar=("Z", "Y", "X"),
                        help="--fps: frame size of the synthetic set (default 32 128 128)")
    parser.add_argument("--cores", type=int, help="--fps: cores shared out among the processes (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="--fps: runs per process count, the fastest kept")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="--fps: device (default cpu)")
    args = parser.parse_args(argv)
    if not args.memory and not args.fps:
        parser.error("choose a table: --memory or --fps")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    start = time.perf_counter()
    if args.fps:
        fps_table(args.procs, args.checkpoint, args.data, args.seq, args.frames, args.shape, args.cores, args.repeats,
                  args.device)
    if args.memory:
        memory_table(sizes, args.budget, args.workdir)
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
