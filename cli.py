"""The commands behind `main.py predict`, `track`, `evaluate` and `synth`: flags in, library calls, a summary out.

`main.py` parses and dispatches; each function here turns the parsed flags into the library's objects
(the Predictor, the tracker's gates, the result writer), checks every input before work starts, and
prints what it wrote. Library code raises `errors.UserError` (and its kinds); `main.py` prints it.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

from dataset import Sequence
from dataset.ctc import VOXEL_SIZE_SIM, CTCFormatError, ResultFolder, check_consecutive, list_mask_files, read_labels, tiff_shape
from dataset.validate import label_image_problem
from errors import UserError
from figures import check_free
from results import figures_dir_for, write_tracked_result
from tracking import TrackParams, axis_spacing


def _given(**flags) -> dict:
    return {k: v for k, v in flags.items() if v is not None}


def predict_command(args) -> int:
    """`main.py predict`: checkpoint + sequence → ROOT/<seq>_RES (or --out), scored when GT exists."""
    from metrics import format_table
    from predict import Predictor, load_post_record, save_post_record
    from utils import check_accuracy
    overrides = _given(overlap=args.overlap, tta=args.tta or None, window_batch=args.window_batch,
                       voxel_size=tuple(args.voxel_size) if args.voxel_size else None)
    if args.post:
        post, owner = load_post_record(args.post)
        overrides["post"] = post
    predictor = Predictor.from_checkpoint(args.checkpoint, args.device, **overrides)
    if args.post and owner != predictor.checkpoint_id:
        warnings.warn(f"{args.post}: tuned for another checkpoint than {args.checkpoint}", stacklevel=1)
    seq = Sequence(args.data, args.seq, predictor.voxel_size)
    predictor.check_image(seq.shape, 1, str(seq.image_dir))
    check_consecutive(seq.frames, str(seq.image_dir))
    out = Path(args.out) if args.out else seq.root / f"{seq.seq}_RES"
    inputs = [seq.image_dir, seq.gt_dir, Path(args.checkpoint), *([Path(args.post)] if args.post else [])]
    ResultFolder.check(out, args.overwrite, inputs)
    figures_dir = figures_dir_for(out) if args.figures else None
    if figures_dir is not None:
        check_free(figures_dir, args.overwrite, inputs)
    if args.tune:
        if not seq.has_gt:
            raise UserError(f"--tune needs ground truth: {seq.gt_dir} not found")
        post, seg = predictor.tune(seq, seq.seg_frames)
        record = save_post_record(out.with_name(out.name + ".postprocessing.json"), post, seg, predictor.checkpoint_id,
                                  {"data": str(seq.image_dir), "frames": seq.seg_frames})
        print(f"wrote {record} (use it with --post {record})")
    predictor.predict_sequence(seq, out, overwrite=args.overwrite, figures_dir=figures_dir, inputs=inputs)
    print(f"wrote {out} ({len(seq.frames)} frames) with {predictor}")
    if seq.has_gt and (seq.gt_dir / "TRA").is_dir():
        print(format_table(check_accuracy(out, seq.gt_dir)))
    return 0


def track_params(args) -> TrackParams:
    """The tracker's gates from `main.py track`'s flags (the defaults where a flag is not given)."""
    return TrackParams(**_given(max_distance=args.max_distance, min_iou=args.min_iou,
                                division_distance=args.division_distance, max_gap=args.max_gap,
                                gap_distance=args.gap_distance))


def track_command(args) -> int:
    """`main.py track --masks DIR --out DIR [--voxel-size X Y [Z]] [gates] [--overwrite] [--figures]`."""
    files = list_mask_files(args.masks)
    frames = list(files)
    first = files[frames[0]]
    shape = tiff_shape(first)
    for path in files.values():
        other = tiff_shape(path)
        if other != shape:
            raise CTCFormatError(f"{path}: shape {other} differs from {first.name} {shape} (all masks must have one shape)")
    if len(shape) not in (2, 3):
        raise CTCFormatError(f"{first}: expected 2D or 3D masks, found shape {shape}")
    ndim = len(shape)
    voxel_size = tuple(args.voxel_size) if args.voxel_size else VOXEL_SIZE_SIM
    axis_spacing(voxel_size, ndim)  # fail before reading any frame
    params = track_params(args)
    out = Path(args.out)
    figures_dir = figures_dir_for(out) if args.figures else None

    def read(t: int):
        mask = read_labels(files[t], ndim)
        problem = None if args.force else label_image_problem(mask)
        if problem:
            raise CTCFormatError(f"{files[t]}: {problem} (use --force if these really are labels)")
        return t, mask

    masks = (read(t) for t in frames)
    tracks = write_tracked_result(masks, frames, out, voxel_size, params, args.overwrite, figures_dir, names=files,
                                  inputs=[Path(args.masks)])
    children = {}
    for parent in tracks[:, 3].tolist():
        if parent:
            children[parent] = children.get(parent, 0) + 1
    print(f"{out}: {len(frames)} frames, {len(tracks)} tracks, {sum(c >= 2 for c in children.values())} divisions, "
          f"{sum(c == 1 for c in children.values())} gaps closed" + (f"; figures in {figures_dir}" if figures_dir else ""))
    return 0


def synth_command(args) -> int:
    """`main.py synth --out DIR [--preset demo|sim+] [--frames N] [--shape Z,Y,X] [--seed S] [--overwrite]`.

    --frames and --shape apply on top of the preset (other shapes keep its nucleus size and packing density).
    """
    from dataclasses import replace

    from dataset.synthetic import preset_config, read_meta, write_dataset
    cfg = preset_config(args.preset)
    if args.frames is not None:
        cfg = replace(cfg, frames=args.frames)
    if args.shape is not None:
        cfg = replace(cfg, shape=tuple(args.shape))
    start = time.perf_counter()
    out = write_dataset(args.out, cfg, seed=args.seed, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    meta = read_meta(out)
    shape = "x".join(str(s) for s in cfg.shape)
    print(f"wrote {out} ({len(meta['sequences'])} sequences of {cfg.frames} frames, {shape} voxels) in {elapsed:.1f} s")
    for name, s in meta["sequences"].items():
        print(f"  {name}: {s['nuclei_at_start']} nuclei at start, {s['divisions']} divisions, "
              f"{s['tracks']} tracks, SNR {s['snr']:.1f}")
    return 0


def evaluate_command(args) -> int:
    """`main.py evaluate --res RES --gt GT [--metrics SEG,TRA,...] [--json OUT]`: print the scores, grouped,
    optionally save them as JSON. RES may be a data-set root with NN_RES folders (GT: the root holding
    their NN_GT): then every sequence is scored, with a table per sequence and the mean."""
    from dataset.fileio import write_json
    from metrics import check_accuracy, check_dataset, format_dataset_table, format_table, sequence_folders
    wanted = args.metrics
    if sequence_folders(args.res, args.gt):
        scores = check_dataset(args.res, args.gt, wanted)
        for seq, seq_scores in scores.items():
            if seq != "mean":
                print(f"== {seq}_RES\n{format_table(seq_scores)}\n")
        print(format_dataset_table(scores))
    else:
        scores = check_accuracy(args.res, args.gt, wanted)
        print(format_table(scores))
    if args.json:
        write_json(Path(args.json), scores)
        print(f"scores written to {args.json}")
    return 0
