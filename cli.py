"""The commands behind `main.py predict`, `track`, `evaluate` and `synth`: flags in, library calls, a summary out.

`main.py` parses and dispatches; each function here turns the parsed flags into the library's objects
(the Predictor, the tracker's gates, the result writer), checks every input before work starts, and
prints what it wrote. Library code raises `errors.UserError` (and its kinds); `main.py` prints it.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

from dataset.ctc import VOXEL_SIZE_SIM, CTCFormatError, ResultFolder, check_consecutive, list_mask_files, read_labels, tiff_shape
from dataset.omezarr import OmeZarrImage, is_omezarr, omezarr_masks, open_sequence
from dataset.validate import label_image_problem
from errors import UserError
from exports import ResultOutputs
from figures import check_free
from results import figures_dir_for, write_tracked_result
from tracking import TrackParams, axis_spacing


def _given(**flags) -> dict:
    return {k: v for k, v in flags.items() if v is not None}


def predict_command(args) -> int:
    """`main.py predict`: checkpoint + sequences → ROOT/<seq>_RES each (or --out for one), scored when GT exists.
    Under torchrun the frames of all the sequences are shared among the processes; --resume reuses the frames a
    killed run left in its cache (scaleout.py)."""
    from distributed import Distributed
    from metrics import format_table
    from predict import Predictor, load_post_record, save_post_record
    from scaleout import TIMEOUT, PredictJob, predict_sequences, sequence_ids
    from utils import check_accuracy
    seq_ids = sequence_ids(args.data, args.seq, args.out, tune=args.tune)
    overrides = _given(overlap=args.overlap, tta=args.tta or None, window_batch=args.window_batch,
                       voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
                       max_memory=getattr(args, "max_memory", None))
    if args.post:
        post, owner = load_post_record(args.post)
        overrides["post"] = post
    if is_omezarr(args.data) and not args.voxel_size:  # an OME-Zarr states its voxel size: it wins over the checkpoint's
        overrides["voxel_size"] = OmeZarrImage(args.data).voxel_size
    ddp = Distributed(args.device, timeout=TIMEOUT)  # torchrun: one process of several (WORLD_SIZE > 1)
    predictor = Predictor.from_checkpoint(args.checkpoint, ddp.device, **overrides)
    if args.post and owner != predictor.checkpoint_id:
        warnings.warn(f"{args.post}: tuned for another checkpoint than {args.checkpoint}", stacklevel=1)
    jobs, extras = [], []
    for seq_id in seq_ids:  # every input and output checked before any work
        seq = open_sequence(args.data, seq_id, predictor.voxel_size, need_labels=args.tune, option=None)
        predictor.check_image(seq.shape, 1, str(seq.image_dir))
        check_consecutive(seq.frames, str(seq.image_dir))
        out = Path(args.out) if args.out else seq.root / f"{seq.seq}_RES"
        inputs = [seq.image_dir, seq.gt_dir, Path(args.checkpoint), *([Path(args.post)] if args.post else [])]
        ResultFolder.check(out, args.overwrite, inputs)
        figures_dir = figures_dir_for(out) if args.figures else None
        if figures_dir is not None:
            check_free(figures_dir, args.overwrite, inputs)
        extras.append(ResultOutputs.from_args(args, out, inputs))  # --export, --out-format: checked now, written after
        jobs.append(PredictJob(seq, out, inputs, figures_dir))
    if args.tune:
        seq, out = jobs[0].seq, jobs[0].out
        if not seq.has_gt:
            raise UserError(f"--tune needs ground truth: {seq.gt_dir} not found")
        tracked = args.tune == "OP_CTB"
        if tracked and not seq.tra_files:
            raise UserError(f"--tune OP_CTB needs TRA ground truth: {seq.gt_dir / 'TRA'} has no man_track files")
        frames = sorted(seq.tra_files) if tracked else seq.seg_frames
        if ddp.main:  # rank 0 tunes; the others take its thresholds
            post, seg = predictor.tune(seq, frames, objective=args.tune)
            record = save_post_record(out.with_name(out.name + ".postprocessing.json"), post, seg, predictor.checkpoint_id,
                                      {"data": str(seq.image_dir), "frames": frames, "objective": args.tune})
            print(f"wrote {record} (use it with --post {record})")
        predictor.post = ddp.broadcast(predictor.post)
    predict_sequences(predictor, jobs, ddp, overwrite=args.overwrite, resume=getattr(args, "resume", False))
    if not ddp.main:
        return 0
    for job, extra in zip(jobs, extras):
        seq, out = job.seq, job.out
        print(f"wrote {out} ({len(seq.frames)} frames) with {predictor}")
        for path in extra.write(predictor.spacing(len(seq.shape))):
            print(f"wrote {path}")
        if seq.has_gt and (seq.gt_dir / "TRA").is_dir():
            print(format_table(check_accuracy(out, seq.gt_dir)))
    return 0


def track_params(args) -> TrackParams:
    """The tracker's gates from `main.py track`'s flags (the defaults where a flag is not given)."""
    return TrackParams(**_given(max_distance=args.max_distance, min_iou=args.min_iou,
                                division_distance=args.division_distance, max_gap=args.max_gap,
                                gap_distance=args.gap_distance))


def track_command(args) -> int:
    """`main.py track --masks DIR|LABELS.ome.zarr --out DIR [--voxel-size X Y [Z]] [gates] [--overwrite] [--figures]
    [--export ...] [--out-format ome-zarr]`."""
    if is_omezarr(args.masks):  # a label image: frames 0..T-1, read chunk by chunk; the voxel size of its metadata
        files, load, default_voxel_size, shape = omezarr_masks(args.masks)
        first = next(iter(files.values()))
    else:
        files, default_voxel_size = list_mask_files(args.masks), VOXEL_SIZE_SIM
        first = files[next(iter(files))]
        shape = tiff_shape(first)
        for path in files.values():
            other = tiff_shape(path)
            if other != shape:
                raise CTCFormatError(f"{path}: shape {other} differs from {first.name} {shape} (all masks must have one shape)")
        load = lambda t: read_labels(files[t], len(shape))  # noqa: E731
    frames = list(files)
    if len(shape) not in (2, 3):
        raise CTCFormatError(f"{first}: expected 2D or 3D masks, found shape {shape}")
    ndim = len(shape)
    voxel_size = tuple(args.voxel_size) if args.voxel_size else default_voxel_size
    axis_spacing(voxel_size, ndim)  # fail before reading any frame
    params = track_params(args)
    out = Path(args.out)
    figures_dir = figures_dir_for(out) if args.figures else None
    extra = ResultOutputs.from_args(args, out, [Path(args.masks)])  # --export, --out-format: checked now, written after

    def read(t: int):
        mask = load(t)
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
    for path in extra.write(voxel_size[:ndim]):
        print(f"wrote {path}")
    return 0


def synth_command(args) -> int:
    """`main.py synth --out DIR [--preset medium|demo|sim+|hard] [--frames N] [--shape Z,Y,X] [--seed S] [--overwrite]`.

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
