"""Command line: train a model (default), make synthetic data, predict, track, evaluate.

    python main.py --model vit_unet [--data ROOT] ...      train (same as `python main.py train ...`)
    python main.py synth --out DIR [--frames N] [--shape Z,Y,X] [--seed S]
    python main.py predict --checkpoint CKPT --data ROOT --seq 02 [01 ...] [--out DIR] [--resume]
    python main.py track --masks DIR --out DIR [--voxel-size X Y Z]
    python main.py evaluate --res RES_DIR --gt GT_DIR [--json OUT]
    python main.py export --res RES_DIR --format geff|trackmate|napari
    python main.py export-model --checkpoint CKPT --format onnx|torchscript|bioimageio --out DIR

Parsing and dispatch only: each command's work lives in the module named below.
"""
from __future__ import annotations

import argparse
import sys

from errors import UserError
from tracking import TrackParams

MODELS = {"vit_unet": "train_vit2", "swinunetr": "train_swin", "unet": "train3D"}
COMMANDS = ("train", "synth", "predict", "track", "evaluate", "export", "export-model")


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: `error: argument --lr: must be > 0, got 0` and exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _number(kind, low=None, low_open=False, high=None, high_open=False):
    """An argparse type: a finite number of `kind` within the given bounds."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text!r}")
        if high is not None and (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high}, got {text!r}")
        return value
    return parse


POSITIVE_INT, NON_NEGATIVE_INT = _number(int, 1), _number(int, 0)
POSITIVE, FRACTION = _number(float, 0, low_open=True), _number(float, 0, high=1)
OVERLAP = _number(float, 0, high=1, high_open=True)

_SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def SIZE(text: str) -> int:
    """An argparse type: a size in bytes such as 512M, 8G, 1.5G or 4096 (K/M/G/T are powers of 1024; KB,
    KiB and the like read the same)."""
    import re
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size like 512M or 8G, got {text!r}")
    value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X (integers), got {text!r}")
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected 2 or 3 positive sizes Z,Y,X, got {text!r}")
    return shape


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Flags common to the three training scripts; each overrides a value at the top of the script."""
    p.add_argument("--data", help="CTC data set root, or an OME-Zarr image with a label image (default: the synthetic "
                                   "set, generated once under data/)")
    p.add_argument("--train-seq", help="training sequence id (default 01)")
    p.add_argument("--val-seq", help="validation sequence id (default 02)")
    p.add_argument("--labels", metavar="NAME|PATH", help="OME-Zarr --data: its label image, a name in its labels/ "
                                                         "group or a path (default: the first it lists)")
    p.add_argument("--val-data", help="validate on this data set root or OME-Zarr image (default: --data; an OME-Zarr "
                                      "--data validates on itself)")
    p.add_argument("--epochs", type=POSITIVE_INT)
    p.add_argument("--steps-per-epoch", type=POSITIVE_INT, help="optimiser steps per epoch")
    p.add_argument("--batch-size", type=POSITIVE_INT)
    p.add_argument("--lr", type=POSITIVE)
    p.add_argument("--crop-size", type=_shape, help="training crop Z,Y,X (default: the data plan's)")
    p.add_argument("--voxel-size", type=POSITIVE, nargs="+", metavar="S",
                   help="x y [z] in micrometres (default: the TIFFs' metadata, else Fluo-N3DH-SIM+'s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--augment", choices=("default", "strong"),
                   help="augmentation recipe instead of the script's TrainConfig.augment: default (AugmentConfig(), the "
                        "tables' recipe) or strong (nnU-Net's pipeline: blur, low resolution, gamma, brightness, contrast, "
                        "noise, gradient, rotation; AugmentConfig.strong)")
    p.add_argument("--out", help="run folder (default runs/<model>-<time>/)")
    p.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue a run: a checkpoint file, or (no value) last.pt in --out")
    p.add_argument("--seed", type=NON_NEGATIVE_INT)
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an existing run folder of this tool (the old run is kept until the new one's first checkpoint)")


def build_parser() -> argparse.ArgumentParser:
    import exports
    parser = Parser(prog="main.py", description="3D nucleus segmentation and tracking (Cell Tracking Challenge format).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("train", help="train a model and report SEG/DET/TRA (the default command: `main.py --model NAME`)")
    p.add_argument("--model", choices=sorted(MODELS), default="vit_unet")
    add_train_arguments(p)

    p = sub.add_parser("synth", help="write a synthetic SIM+-like CTC data set (sequences 01 and 02 with GT)")
    p.add_argument("--out", required=True, help="data set root to create")
    from dataset.synthetic import PRESETS
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="medium (default, the set `main.py --model NAME` trains on without --data): the demo's nuclei of "
                        "uneven brightness on an uneven, hazy background; demo: 32x128x128 frames, nuclei ~13x21x21 "
                        "voxels, evenly bright; sim+: the real Fluo-N3DH-SIM+ scale, 59x350x330 frames, nuclei "
                        "~32x50x50 voxels; hard: the demo dimmer, blurrier, hazy, irregular and crowded")
    p.add_argument("--frames", type=POSITIVE_INT, default=None, help="frames per sequence")
    p.add_argument("--shape", type=_shape, default=None, help="volume size Z,Y,X")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set written by this command")

    p = sub.add_parser("predict", help="segment and track a sequence with a trained checkpoint, write CTC results")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="CTC data set root, or an OME-Zarr image (T, [C,] [Z,] Y, X): then "
                                                 "--seq does not apply, the voxel size is its metadata's, the default --out is <stem>_RES beside it")
    p.add_argument("--seq", nargs="+", metavar="SEQ", help="sequence id(s), e.g. 02 or 01 02: several share one pool "
                                                        "of torchrun processes, each into ROOT/<seq>_RES (default 02)")
    p.add_argument("--out", help="result folder (default ROOT/<seq>_RES; with one --seq only)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--overlap", type=OVERLAP, help="sliding-window overlap in [0, 1) (default: the training run's)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over all mirror flips (2^ndim x slower)")
    p.add_argument("--window-batch", type=POSITIVE_INT, help="windows per forward pass (default 4)")
    p.add_argument("--voxel-size", type=POSITIVE, nargs="+", metavar="S",
                   help="x y [z] in micrometres (default: the training data's, stored in the checkpoint)")
    p.add_argument("--tune", nargs="?", const="SEG", choices=("SEG", "OP_CTB"), metavar="SEG|OP_CTB",
                   help="tune the watershed thresholds on this sequence's GT first (writes <OUT>.postprocessing.json): "
                        "for SEG (the default), or for OP_CTB = (SEG + TRA) / 2 on the tracked masks of every frame")
    p.add_argument("--post", metavar="JSON", help="use the thresholds of this post-processing record (from --tune)")
    p.add_argument("--figures", action="store_true", help="also write PNG projections and a lineage tree")
    p.add_argument("--resume", action="store_true",
                   help="after a crash or kill -9: reuse the frames already segmented into the hidden .<OUT>.cache/ "
                        "beside the result (frames whose settings or files changed are segmented again)")
    p.add_argument("--max-memory", type=SIZE, metavar="SIZE",
                   help="memory one frame's prediction may take, e.g. 512M or 8G; larger frames are predicted in "
                        "overlapping blocks that fit (default: half the memory available)")
    exports.add_result_output_arguments(p)

    p = sub.add_parser("track", help="track existing per-frame instance masks into CTC results")
    p.add_argument("--masks", required=True, help="folder of per-frame instance masks (*.tif, frame number in the name), "
                                                  "or an OME-Zarr label image (or an image with a labels/ group)")
    p.add_argument("--out", required=True)
    p.add_argument("--voxel-size", type=POSITIVE, nargs="+", default=None, metavar="S", help="x y [z] in micrometres")
    gates = TrackParams()
    p.add_argument("--max-distance", type=POSITIVE, metavar="UM",
                   help=f"largest centroid move between frames for a link, µm (default {gates.max_distance})")
    p.add_argument("--min-iou", type=FRACTION, metavar="F",
                   help=f"pairs overlapping at least this (IoU, 0-1) link at any distance (default {gates.min_iou})")
    p.add_argument("--division-distance", type=POSITIVE, metavar="UM",
                   help=f"largest mother-to-daughter centroid distance, µm (default {gates.division_distance})")
    p.add_argument("--max-gap", type=NON_NEGATIVE_INT, metavar="FRAMES",
                   help=f"most frames an object may be missing before its track continues (default {gates.max_gap})")
    p.add_argument("--gap-distance", type=POSITIVE, metavar="UM",
                   help=f"largest centroid distance across a gap, µm (default {gates.gap_distance})")
    p.add_argument("--force", action="store_true", help="track masks even where they look like intensity images")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--figures", action="store_true")
    exports.add_result_output_arguments(p)

    p = sub.add_parser("evaluate", help="score a CTC result: every challenge measure (technical, biological, tracking) and the AOGM parts")
    p.add_argument("--res", required=True, help="result folder (maskNNN.tif, res_track.txt), or a data-set root with NN_RES folders")
    p.add_argument("--gt", required=True, help="ground-truth folder, e.g. ROOT/01_GT (or the root holding NN_GT for a root --res)")
    p.add_argument("--metrics", help="only these measures, comma-separated, e.g. SEG,TRA,LNK,BIO (default: all)")
    p.add_argument("--json", help="also write the scores to this JSON file")

    p = sub.add_parser("export", help="write a result's (or GT's) tracks as GEFF, TrackMate XML or a napari tracks CSV")
    exports.add_export_arguments(p)
    p = sub.add_parser("export-model", help="export a checkpoint as ONNX, TorchScript or a bioimage.io model package")
    exports.add_export_model_arguments(p)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    # `main.py --model vit_unet ...` is `main.py train --model vit_unet ...`
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["train", *argv]
    return build_parser().parse_args(argv)


def run(args: argparse.Namespace, config=None) -> int:
    """Run one parsed command; `config` (train only): the TrainConfig to train, default the --model script's."""
    if args.command == "train":
        import importlib

        from training import train_from_cli
        return train_from_cli(config or importlib.import_module(MODELS[args.model]).CONFIG, args)
    if args.command == "synth":
        from cli import synth_command
        return synth_command(args)
    if args.command == "predict":
        from cli import predict_command
        return predict_command(args)
    if args.command == "track":
        from cli import track_command
        return track_command(args)
    if args.command == "evaluate":
        from cli import evaluate_command
        return evaluate_command(args)
    if args.command == "export":
        from exports import export_tracks_command
        return export_tracks_command(args)
    if args.command == "export-model":
        from exports import export_model_command
        return export_model_command(args)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None, config=None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # a bad flag (one line on stderr) or --help: return its code, as for a UserError
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return run(args, config)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system said no: one line naming the file, never a traceback
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def describe_os_error(err: OSError) -> str:
    """`path: what went wrong` for a file-system error (a full disk, a read-only folder, a folder given as a file)."""
    import errno
    where = err.filename or "a file"
    if err.errno == errno.ENOSPC:
        return f"{where}: the disk is full (no space left on device); files written before are intact"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: not allowed to write or read there ({err.strerror})"
    if err.errno == errno.EISDIR:
        return f"{where}: is a folder, expected a file"
    return f"{where}: {err.strerror or err}"


def run_script(config) -> int:
    """`python train_X.py [flags]` is `python main.py --model X [flags]` with that script's CONFIG (so a copy of
    a train script, edited, trains its own values)."""
    return main(["train", "--model", config.model, *sys.argv[1:]], config)


if __name__ == "__main__":
    sys.exit(main())
