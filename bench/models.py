"""Speed and memory of our networks against MONAI's UNETR and SwinUNETR at the same configuration.

    python bench/models.py [--device cpu|cuda] [--batch 1 2] [--repeats N] [--threads T] [--models NAME ...]
                           [--max-others CORES]

CPU (default 2 threads): a B x 1 x 32x64x64 input for each --batch (default 1 and 2; 2 is the default training
batch), UNETR with hidden 384 (MLP 1536, 6 heads, 12 layers, patch 16, feature size 16), Swin-UNETR with
feature size 24 (window 7, depths 2, 2, 2, 2, heads 3, 6, 12, 24) and our default U-Net.
CUDA: the paper configurations on 96^3 under bf16 autocast.

Forward is timed in eval mode without gradients, forward+backward in train mode. Ours and MONAI's run on the
same input in the same process, alternating (who goes first swaps every repeat); the table gives the median of
`--repeats` runs and, as the ratio MONAI time / our time (> 1: ours is faster), the median of the ratios of the
two runs of each repeat, which a load that drifts during the benchmark cancels out of. Our models carry one
extra 1x1 conv head (the marker map).

On a shared machine: each run records the CPU time other processes used meanwhile (Linux /proc/stat, in cores);
with --max-others a repeat during which others used more is run again (up to 5x --repeats tries in all), and
the header reports how many were. Peak memory: CUDA max_memory_allocated during one pass; on CPU the growth of
the peak RSS (VmHWM) during one pass, measured in a fresh subprocess per model, mode and batch (--no-memory
skips it). MONAI (and einops, which its UNETR needs) is a benchmark-only dependency.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import build_model  # noqa: E402

# name: (our build_model arguments, MONAI class name, MONAI arguments) per device
CONFIGS = {
    "cpu": {
        "size": (32, 64, 64),
        "vit_unet": (dict(img_size=(32, 64, 64), patch_size=16, hidden_size=384, mlp_dim=1536, num_heads=6,
                          num_layers=12, feature_size=16),
                     "UNETR", dict(img_size=(32, 64, 64), hidden_size=384, mlp_dim=1536, num_heads=6,
                                   feature_size=16)),                  # MONAI's UNETR has 12 layers, fixed
        "swinunetr": (dict(feature_size=24, window_size=7), "SwinUNETR", dict(feature_size=24, window_size=7)),
        "unet": (dict(), None, None),
    },
    "cuda": {
        "size": (96, 96, 96),
        "vit_unet": (dict(preset="paper"), "UNETR", dict(img_size=96, feature_size=16)),
        "swinunetr": (dict(preset="paper"), "SwinUNETR", dict(feature_size=48)),
        "unet": (dict(preset="paper"), None, None),
    },
}


def build(name: str, impl: str, device: str) -> torch.nn.Module:
    ours, monai_name, monai_args = CONFIGS[device][name]
    if impl == "ours":
        return build_model(name, **ours)
    import monai.networks.nets as nets
    return getattr(nets, monai_name)(in_channels=1, out_channels=3, **monai_args)


def run_pass(model, x, mode: str, device: str) -> None:
    """One forward (eval, no grad) or forward+backward (train) pass, synchronised on CUDA."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    if mode == "fwd":
        model.eval()
        with torch.no_grad(), autocast:
            model(x)
    else:
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast:
            out = model(x)
        loss = sum(o.float().mean() for o in out) if isinstance(out, tuple) else out.float().mean()
        loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()


def _busy_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process) so far; (0, 0) off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    own = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def timed(model, x, mode: str, device: str) -> tuple[float, float]:
    """(wall seconds of one pass, cores that other processes kept busy meanwhile)."""
    busy, own = _busy_seconds()
    start = time.perf_counter()
    run_pass(model, x, mode, device)
    wall = time.perf_counter() - start
    busy_after, own_after = _busy_seconds()
    return wall, max(0.0, (busy_after - busy) - (own_after - own)) / wall


def peak_memory_mb(name: str, impl: str, mode: str, device: str, batch: int) -> float:
    """Peak memory of one pass in MiB (see the module docstring for how)."""
    if device == "cuda":
        model = build(name, impl, device).to(device)
        x = torch.randn(batch, 1, *CONFIGS[device]["size"], device=device)
        run_pass(model, x, mode, device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_pass(model, x, mode, device)
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    out = subprocess.run([sys.executable, __file__, "--rss", name, impl, mode, "--batch", str(batch),
                          "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def peak_rss_kib() -> int:
    """Peak resident memory of this process (Linux VmHWM: unlike ru_maxrss, not inherited across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(name: str, impl: str, mode: str, batch: int) -> None:
    """Subprocess body: print the growth of the peak RSS (MiB) over one pass after building model and input."""
    torch.manual_seed(0)
    model = build(name, impl, "cpu")
    x = torch.randn(batch, 1, *CONFIGS["cpu"]["size"])
    before = peak_rss_kib()
    run_pass(model, x, mode, "cpu")
    print((peak_rss_kib() - before) / 1024)


def measure(models: dict, x, mode: str, device: str, repeats: int, max_others: float | None) -> dict:
    """Median times (ms), median paired ratio MONAI / ours, others' load and repeats run again, for one mode."""
    impls = list(models)
    for impl in impls:                                          # warm-up
        run_pass(models[impl], x, mode, device)
    times, ratios, loads, redone = {impl: [] for impl in impls}, [], [], 0
    r = 0
    while len(ratios if len(impls) > 1 else times[impls[0]]) < repeats and r < 5 * repeats:
        order = impls if r % 2 == 0 else impls[::-1]           # alternate who goes first
        got = {impl: timed(models[impl], x, mode, device) for impl in order}
        r += 1
        busiest = max(load for _, load in got.values())
        if max_others is not None and busiest > max_others:
            redone += 1
            continue
        loads.append(busiest)
        for impl, (wall, _) in got.items():
            times[impl].append(wall)
        if len(impls) > 1:
            ratios.append(got["monai"][0] / got["ours"][0])
    return {"ms": {impl: statistics.median(t) * 1000 for impl, t in times.items() if t},
            "ratio": statistics.median(ratios) if ratios else None,
            "others": statistics.median(loads) if loads else float("nan"), "redone": redone, "runs": len(loads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=9, help="timed passes per model, batch and mode (median kept)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["vit_unet", "swinunetr", "unet"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 2 on CPU)")
    parser.add_argument("--max-others", type=float, metavar="CORES",
                        help="run a repeat again when other processes kept more than CORES cores busy during it")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory columns")
    parser.add_argument("--rss", nargs=3, metavar=("NAME", "IMPL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device
    if device == "cpu" or args.threads:
        torch.set_num_threads(args.threads or 2)
    if args.rss:
        return rss_child(*args.rss, args.batch[0])
    print(f"# {' '.join(sys.argv)}\n# torch {torch.__version__}, {device} "
          f"({torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), input B x 1 x {'x'.join(map(str, CONFIGS[device]['size']))}, "
          f"{args.repeats} repeats, median\n")
    rows, notes = [], []
    for name in args.models:
        impls = ["ours"] + (["monai"] if CONFIGS[device][name][1] else [])
        torch.manual_seed(0)
        models = {impl: build(name, impl, device).to(device) for impl in impls}
        params = {impl: sum(p.numel() for p in m.parameters()) for impl, m in models.items()}
        for batch in args.batch:
            torch.manual_seed(0)
            x = torch.randn(batch, 1, *CONFIGS[device]["size"], device=device)
            result = {mode: measure(models, x, mode, device, args.repeats, args.max_others)
                      for mode in ("fwd", "fwd+bwd")}
            memory = {(impl, mode): (float("nan") if args.no_memory else
                                     peak_memory_mb(name, impl, mode, device, batch))
                      for impl in impls for mode in ("fwd", "fwd+bwd")}
            rows.append((name, batch, params, result, memory))
            notes.append(f"{name} batch {batch}: others' load median "
                         + ", ".join(f"{m} {r['others']:.2f} cores ({r['redone']} repeats run again)"
                                     for m, r in result.items()))
            print(f"done {name} batch {batch}", file=sys.stderr)
        del models

    print("| model | batch | params | fwd ms | fwd+bwd ms | MONAI / ours fwd | MONAI / ours fwd+bwd "
          "| peak MiB fwd | peak MiB fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, batch, params, result, memory in rows:
        fwd, fb = result["fwd"], result["fwd+bwd"]
        ratios = (f"**{fwd['ratio']:.2f}x** | **{fb['ratio']:.2f}x**" if fwd["ratio"] is not None else " | ")
        print(f"| {name} (ours) | {batch} | {params['ours'] / 1e6:.2f} M | {fwd['ms']['ours']:.0f} | "
              f"{fb['ms']['ours']:.0f} | {ratios} | {memory['ours', 'fwd']:.0f} | {memory['ours', 'fwd+bwd']:.0f} |")
        if "monai" in params:
            print(f"| MONAI {CONFIGS[device][name][1]} | {batch} | {params['monai'] / 1e6:.2f} M | "
                  f"{fwd['ms']['monai']:.0f} | {fb['ms']['monai']:.0f} | | | {memory['monai', 'fwd']:.0f} | "
                  f"{memory['monai', 'fwd+bwd']:.0f} |")
    print("\n# " + "\n# ".join(notes))


if __name__ == "__main__":
    main()
