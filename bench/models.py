"""Speed and memory of our networks against MONAI's UNETR and SwinUNETR at the same configuration.

    python bench/models.py [--device cpu|cuda] [--repeats N] [--batch B] [--threads T] [--models NAME ...]

CPU: a 1x1x32x64x64 input, UNETR with hidden 384 (MLP 1536, 6 heads, 12 layers, patch 16, feature size 16),
Swin-UNETR with feature size 24 (window 7, depths 2, 2, 2, 2, heads 3, 6, 12, 24) and our default U-Net.
CUDA: the paper configurations on 96^3 under bf16 autocast.
Forward is timed in eval mode without gradients, forward+backward in train mode; ours and MONAI's run on the
same input in the same process, alternating, and the median of `--repeats` runs is reported with the ratio
MONAI time / our time (> 1: ours is faster). Our models carry one extra 1x1 conv head (the marker map).
Peak memory: CUDA max_memory_allocated during one pass; on CPU the growth of the peak RSS (VmHWM) during
one pass, measured in a fresh subprocess per model and mode. MONAI (and einops, which its UNETR needs) is a
benchmark-only dependency.
"""
from __future__ import annotations

import argparse
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
                     "UNETR", dict(img_size=(32, 64, 64), hidden_size=384, mlp_dim=1536, num_heads=6, feature_size=16)),
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


def timed(model, x, mode: str, device: str) -> float:
    start = time.perf_counter()
    run_pass(model, x, mode, device)
    return time.perf_counter() - start


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model and mode (median kept)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["vit_unet", "swinunetr", "unet"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's choice)")
    parser.add_argument("--rss", nargs=3, metavar=("NAME", "IMPL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss:
        torch.set_num_threads(args.threads)
        return rss_child(*args.rss, args.batch)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, *CONFIGS[device]["size"], device=device)
    print(f"# {' '.join(sys.argv)}\n# torch {torch.__version__}, {device} "
          f"({torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), input {tuple(x.shape)}, {args.repeats} repeats, median\n")
    rows = []
    for name in args.models:
        impls = ["ours"] + (["monai"] if CONFIGS[device][name][1] else [])
        models = {impl: build(name, impl, device).to(device) for impl in impls}
        result = {impl: {"params": sum(p.numel() for p in m.parameters())} for impl, m in models.items()}
        for mode in ("fwd", "fwd+bwd"):
            times = {impl: [] for impl in impls}
            for impl in impls:                                 # warm-up
                run_pass(models[impl], x, mode, device)
            for r in range(args.repeats):
                for impl in (impls if r % 2 == 0 else impls[::-1]):   # alternate who goes first
                    times[impl].append(timed(models[impl], x, mode, device))
            for impl in impls:
                result[impl][mode] = statistics.median(times[impl]) * 1000
        del models
        for impl in impls:
            for mode in ("fwd", "fwd+bwd"):
                result[impl]["mem " + mode] = peak_memory_mb(name, impl, mode, device, args.batch)
        rows.append((name, CONFIGS[device][name][1], result))
        print(f"done {name}", file=sys.stderr)

    print("| model | params | fwd ms | fwd+bwd ms | MONAI / ours fwd | MONAI / ours fwd+bwd "
          "| peak MiB fwd | peak MiB fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|")
    for name, monai_name, result in rows:
        ours = result["ours"]
        if "monai" in result:
            monai = result["monai"]
            print(f"| {name} (ours) | {ours['params'] / 1e6:.2f} M | {ours['fwd']:.0f} | {ours['fwd+bwd']:.0f} | "
                  f"**{monai['fwd'] / ours['fwd']:.2f}x** | **{monai['fwd+bwd'] / ours['fwd+bwd']:.2f}x** | "
                  f"{ours['mem fwd']:.0f} | {ours['mem fwd+bwd']:.0f} |")
            print(f"| MONAI {monai_name} | {monai['params'] / 1e6:.2f} M | {monai['fwd']:.0f} | "
                  f"{monai['fwd+bwd']:.0f} | | | {monai['mem fwd']:.0f} | {monai['mem fwd+bwd']:.0f} |")
        else:
            print(f"| {name} (ours) | {ours['params'] / 1e6:.2f} M | {ours['fwd']:.0f} | {ours['fwd+bwd']:.0f} | "
                  f"| | {ours['mem fwd']:.0f} | {ours['mem fwd+bwd']:.0f} |")


if __name__ == "__main__":
    main()
