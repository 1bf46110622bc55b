"""Exports to the tools biologists use: tracks as GEFF, TrackMate XML and napari tracks; models as
ONNX, TorchScript and bioimage.io packages.

    python main.py export --res ROOT/02_RES --format geff|trackmate|napari [--out F] [--voxel-size X Y Z]
    python main.py export-model --checkpoint best.pt --format onnx|torchscript|bioimageio --out DIR

Importing this package is light (numpy only); each format's module is imported when used.
Every output is written atomically and never replaces a file or folder this tool did not write.
"""
from __future__ import annotations

import argparse
from pathlib import Path

TRACK_FORMATS = {"geff": ".geff", "trackmate": "_trackmate.xml", "napari": "_tracks.csv"}
MODEL_FORMATS = ("onnx", "torchscript", "bioimageio")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `main.py export`."""
    p.add_argument("--res", required=True, help="CTC result folder (maskNNN.tif + res_track.txt), or a *_GT / TRA folder")
    p.add_argument("--format", "--to", dest="format", choices=sorted(TRACK_FORMATS), required=True)
    p.add_argument("--out", help="output path (default: next to --res, e.g. 02_RES.geff, 02_RES_trackmate.xml, 02_RES_tracks.csv)")
    p.add_argument("--voxel-size", type=float, nargs="+", default=None, metavar="S",
                   help="x y [z] in micrometres (default: Fluo-N3DH-SIM+'s 0.125 0.125 0.2)")
    p.add_argument("--units", choices=("um", "voxel"), default="um", help="positions in micrometres or voxels (geff, napari)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of this tool")


def add_export_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `main.py export-model`."""
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", choices=MODEL_FORMATS, required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of this tool")
    p.add_argument("--author", action="append", metavar="NAME", help="bioimageio: an author (repeat for several)")
    p.add_argument("--license", default="MIT", help="bioimageio: SPDX license id of the weights (default MIT)")
    p.add_argument("--sample", help="bioimageio: a raw frame (TIFF) whose centre becomes the test input")


def default_track_output(res: Path, fmt: str) -> Path:
    res = Path(res)
    return res.with_name(res.name + TRACK_FORMATS[fmt])


def export_tracks(res, fmt: str, out=None, voxel_size=None, units: str = "um", overwrite: bool = False) -> Path:
    """Read the lineage of `res` and write it in format `fmt`; returns the path written."""
    from dataset.ctc import VOXEL_SIZE_SIM

    from .graph import read_track_graph
    graph = read_track_graph(res, tuple(voxel_size) if voxel_size else VOXEL_SIZE_SIM)
    out = Path(out) if out else default_track_output(res, fmt)
    if fmt == "geff":
        from .geff import write_geff
        return write_geff(graph, out, units, overwrite)
    if fmt == "trackmate":
        from .trackmate import write_trackmate
        return write_trackmate(graph, out, overwrite)
    if fmt == "napari":
        from .tracks_csv import write_tracks_csv
        return write_tracks_csv(graph, out, units, overwrite)
    from errors import UserError
    raise UserError(f"--format {fmt}: expected one of {', '.join(TRACK_FORMATS)}")


def export_tracks_command(args) -> int:
    """`main.py export`."""
    out = export_tracks(args.res, args.format, args.out, args.voxel_size, getattr(args, "units", "um"),
                        getattr(args, "overwrite", False))
    print(f"wrote {out}")
    return 0


def export_model_command(args) -> int:
    """`main.py export-model`."""
    from .model import export_model
    extra = {}
    if args.format == "bioimageio":
        extra = {"authors": getattr(args, "author", None), "license": getattr(args, "license", "MIT")}
        if getattr(args, "sample", None):
            from dataset.ctc import read_image
            extra["sample"] = read_image(args.sample, None)
    out = export_model(args.checkpoint, args.format, args.out, overwrite=getattr(args, "overwrite", False), **extra)
    print(f"wrote {out}")
    return 0
