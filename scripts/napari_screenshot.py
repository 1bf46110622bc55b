"""The README's napari figure, made from the real viewer: a synthetic CTC data set opened with the
nuclei3d plugin (image, ground-truth masks, branching tracks), drawn in 3D, saved as a PNG.

    xvfb-run -a python scripts/napari_screenshot.py [--data ROOT] [--out bench/out/napari_tracks.png]

Needs requirements-napari.txt and a display (Xvfb headless: napari draws with OpenGL). Without
--data it writes a small synthetic set with divisions under bench/out/ first.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"


def render(viewer, data: Path, seq: str = "01", frame: int | None = None, ndisplay: int = 3):
    """Open `data` in `viewer` with the plugin, show sequence `seq` at `frame` (default: the last) with its
    GT masks and tracks, and return the canvas screenshot (H, W, 4) uint8."""
    layers = viewer.open(str(data), plugin="nuclei3d")
    for layer in layers:
        layer.visible = layer.name.startswith(seq)
    image = viewer.layers[seq]
    low, high = np.percentile(np.asarray(image.data[0]), (50, 99.9))
    image.contrast_limits, image.gamma = (float(low), float(high)), 0.8
    masks = viewer.layers[f"{seq}_GT masks"]
    masks.opacity = 0.3
    tracks = viewer.layers[f"{seq}_GT tracks"]
    tracks.tail_width, tracks.tail_length, tracks.color_by = 6, 1000, "track_id"
    viewer.dims.ndisplay = ndisplay
    last = int(image.data.shape[0]) - 1
    viewer.dims.set_point(0, last if frame is None else frame)
    if ndisplay == 3:
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
        camera.angles = (0, -20, 80)
    return viewer.screenshot(canvas_only=True, flash=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="CTC data set root (default: a synthetic set made here)")
    p.add_argument("--out", type=Path, default=OUT / "napari_tracks.png")
    p.add_argument("--frame", type=int)
    args = p.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb" if os.environ.get("DISPLAY") else "offscreen")
    import imageio.v3 as iio
    import napari

    from dataset.fileio import atomic_path
    data = args.data
    if data is None:
        from dataset.synthetic import SynthConfig, write_dataset
        data = OUT / "napari_synth"
        if not (data / "01").is_dir():
            write_dataset(data, SynthConfig(shape=(24, 96, 96), frames=8), seed=2)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1000, 800)
    image = render(viewer, data, frame=args.frame)
    viewer.close()
    if image[..., :3].std() < 5:
        print("error: the screenshot is blank (no OpenGL drawing; run under xvfb-run)", file=sys.stderr)
        return 1
    with atomic_path(args.out) as tmp:
        iio.imwrite(tmp, image, extension=".png")
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
