"""Exports to the tools biologists use: tracks as GEFF, TrackMate XML and napari tracks; models as
ONNX, TorchScript and bioimage.io packages.

    python main.py export --res ROOT/02_RES --format geff|trackmate|napari [--out F] [--voxel-size X Y Z]
    python main.py export-model --checkpoint best.pt --format onnx|torchscript|bioimageio --out DIR
    python main.py predict|track ... --export geff trackmate napari --out-format ome-zarr   (beside the result)

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


def add_result_output_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `main.py predict` and `track` for outputs beside the CTC result folder (see `ResultOutputs`)."""
    p.add_argument("--export", nargs="+", action="extend", choices=sorted(TRACK_FORMATS), metavar="FORMAT",
                   help="also write the tracks as geff, trackmate and/or napari beside the result, the files "
                        "`main.py export` writes (OUT.geff, OUT_trackmate.xml, OUT_tracks.csv); repeatable")
    p.add_argument("--out-format", choices=("ctc", "ome-zarr"), default="ctc",
                   help="ome-zarr: also write OUT.ome.zarr, the result as an NGFF 0.4 label image (needs zarr); the "
                        "CTC folder is always written (its res_track.txt is the lineage)")


def default_track_output(res: Path, fmt: str) -> Path:
    res = Path(res)
    return res.with_name(res.name + TRACK_FORMATS[fmt])


def _check_format(fmt: str) -> None:
    if fmt not in TRACK_FORMATS:
        from errors import UserError
        raise UserError(f"--format {fmt}: expected one of {', '.join(TRACK_FORMATS)}")


def is_our_export(path: Path, fmt: str) -> bool:
    """Whether `path` is an export of format `fmt` that this tool wrote (what --overwrite may replace)."""
    if fmt == "geff":
        from .geff import is_our_geff
        return is_our_geff(path)
    if fmt == "trackmate":
        from .trackmate import is_our_trackmate
        return is_our_trackmate(path)
    from .tracks_csv import is_our_csv
    return is_our_csv(path)


def write_track_exports(res, outs: dict, voxel_size=None, units: str = "um", overwrite: bool = False) -> dict[str, Path]:
    """Read the lineage of `res` once and write it in each format of `outs` {format: path or None (the
    default beside `res`)}; returns {format: path written}. `main.py export` and `--export` both end here."""
    from dataset.ctc import VOXEL_SIZE_SIM

    from .graph import read_track_graph
    for fmt in outs:
        _check_format(fmt)
    graph = read_track_graph(res, tuple(voxel_size) if voxel_size else VOXEL_SIZE_SIM)
    written = {}
    for fmt, out in outs.items():
        out = Path(out) if out else default_track_output(res, fmt)
        if fmt == "geff":
            from .geff import write_geff
            written[fmt] = write_geff(graph, out, units, overwrite)
        elif fmt == "trackmate":
            from .trackmate import write_trackmate
            written[fmt] = write_trackmate(graph, out, overwrite)
        else:
            from .tracks_csv import write_tracks_csv
            written[fmt] = write_tracks_csv(graph, out, units, overwrite)
    return written


def export_tracks(res, fmt: str, out=None, voxel_size=None, units: str = "um", overwrite: bool = False) -> Path:
    """Read the lineage of `res` and write it in format `fmt`; returns the path written."""
    return write_track_exports(res, {fmt: out}, voxel_size, units, overwrite)[fmt]


class ResultOutputs:
    """What `predict` and `track` write beside their CTC result folder `res`: the track exports of `formats`
    (`--export`, the files `main.py export` writes) and, with `ome_zarr`, `<res>.ome.zarr` (`--out-format
    ome-zarr`). Every target is checked when this is built, before any work; `write` makes them from the
    finished folder.

        extra = ResultOutputs.from_args(args, out, inputs)    # refuses a target now, naming it
        ... write the result folder ...
        extra.write(voxel_size)
    """

    def __init__(self, res, formats=(), ome_zarr: bool = False, overwrite: bool = False, inputs=()):
        from .omezarr import default_label_output
        self.res, self.overwrite, self.inputs = Path(res), bool(overwrite), [Path(i) for i in inputs if i is not None]
        self.formats = {fmt: default_track_output(self.res, fmt) for fmt in dict.fromkeys(formats or ())}
        self.ome_zarr = default_label_output(self.res) if ome_zarr else None
        self.check()

    @classmethod
    def from_args(cls, args, res, inputs=()) -> "ResultOutputs":
        return cls(res, getattr(args, "export", None) or (), getattr(args, "out_format", "ctc") == "ome-zarr",
                   getattr(args, "overwrite", False), inputs)

    def __bool__(self) -> bool:
        return bool(self.formats) or self.ome_zarr is not None

    def check(self) -> None:
        """Refuse a target that is an input, or exists and may not be replaced (see `_output.check_target`)."""
        from ._output import check_target
        from .omezarr import check_label_output
        for fmt, path in self.formats.items():
            _check_format(fmt)
            if any(path.resolve() == i.resolve() for i in self.inputs):
                from errors import UserError
                raise UserError(f"--export {fmt} {path}: is one of the inputs; choose another --out")
            check_target(path, self.overwrite, lambda p, fmt=fmt: is_our_export(p, fmt), option=f"--export {fmt}")
        if self.ome_zarr is not None:
            check_label_output(self.ome_zarr, self.overwrite, [self.res, *self.inputs])

    def write(self, voxel_size) -> list[Path]:
        """Write every target from the finished result folder; voxel_size (x, y[, z]) µm of its masks."""
        written = list(write_track_exports(self.res, self.formats, voxel_size, "um", self.overwrite).values()) if self.formats else []
        if self.ome_zarr is not None:
            from .omezarr import write_label_image
            written.append(write_label_image(self.res, self.ome_zarr, voxel_size, self.overwrite, self.inputs))
        return written


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
