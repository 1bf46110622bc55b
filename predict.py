"""From a trained model and a raw sequence to a CTC result: probabilities (sliding window), instances
(marker-controlled watershed), tracks, and the result folder `maskNNN.tif` + `res_track.txt`.

The pieces live where their concern is: inference.py (sliding window, watershed), tracking.py
(linking), dataset/ctc.py (the result folder). This module strings them together for one frame
(`probabilities`, `instances`), for a sequence (`predict_sequence`) and for `main.py predict`.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import inference
import tracking
from dataset import ResultFolder, Sequence
from dataset3D import normalize
from errors import UserError
from figures import FigureFolder, check_free, save_lineage_tree, save_projection
from inference import PostParams, instances  # noqa: F401  (re-exported: the post-processing of one frame)


def probabilities(model, image: np.ndarray, roi_size, device, amp: bool = False, overlap: float = 0.25,
                  sw_batch_size: int = 4, mirror: bool = False):
    """(seg_prob [3, *S], marker_prob [1, *S]) numpy float32 of one raw frame, whole volume."""
    model.eval()
    volume = torch.from_numpy(normalize(image))[None]
    seg, marker = inference.sliding_window(model, volume, roi_size, overlap=overlap, sw_batch_size=sw_batch_size,
                                           device=device, amp=amp, mirror=mirror)
    return seg.float().cpu().numpy(), marker.float().cpu().numpy()


def tune(model, seq: Sequence, frames, roi_size, device, amp: bool, overlap: float) -> PostParams:
    """Watershed thresholds that maximise SEG on `frames` of `seq` (predicted once, post-processing searched)."""
    pairs, gts = [], []
    for t in tqdm(frames, desc="tuning thresholds", leave=False):
        pairs.append(probabilities(model, seq.image(t), roi_size, device, amp, overlap))
        gts.append(seq.seg(t))
    params, best = inference.tune_postprocessing(pairs, gts)
    tqdm.write(f"tuned post-processing on {len(frames)} frames of {seq.image_dir}: SEG {best:.4f} with {params}")
    return params


def predict_sequence(model, seq: Sequence, out_dir, post: PostParams, roi_size, device, amp: bool = False,
                     overlap: float = 0.25, overwrite: bool = False, figures_dir=None, progress: bool = True) -> Path:
    """Segment every frame, track, and write the CTC result folder atomically (and PNGs to figures_dir).

    Instance masks wait in a temporary folder between the two passes of the tracker (link, then
    relabel), so memory holds one frame at a time whatever the sequence length.
    """
    out_dir = Path(out_dir)
    if figures_dir is not None:
        check_free(figures_dir, overwrite)
    with ResultFolder(out_dir, n_frames=len(seq.frames), overwrite=overwrite) as result, \
            (FigureFolder(figures_dir, overwrite) if figures_dir else nullcontext()) as fig_dir:
        scratch = Path(tempfile.mkdtemp(prefix=".instances-", dir=out_dir.parent))
        try:
            def segmented():
                for t in tqdm(seq.frames, desc=f"predicting {seq.image_dir.name}", unit="frame", disable=not progress):
                    labels = instances(*probabilities(model, seq.image(t), roi_size, device, amp, overlap), post)
                    np.save(scratch / f"{t}.npy", labels)
                    yield labels

            lineage = tracking.link(segmented(), seq.voxel_size, first_frame=seq.frames[0])
            for i, t in enumerate(tqdm(seq.frames, desc="writing", unit="frame", disable=not progress, leave=False)):
                mask = tracking.relabel(np.load(scratch / f"{t}.npy"), lineage.luts[i])
                result.write_mask(t, mask)
                if fig_dir is not None:
                    save_projection(fig_dir / f"projection_{t:03d}.png", seq.image(t), mask, title=f"{seq.seq}: frame {t}")
            result.write_tracks(lineage.tracks)
            if fig_dir is not None:
                save_lineage_tree(fig_dir / "lineage.png", lineage.tracks, title=f"lineage of {seq.image_dir}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return out_dir


def load_model(path, device):
    """Rebuild a trained model from one of our checkpoints (no flags needed): (model, checkpoint dict)."""
    from models import build_model
    from utils import load_checkpoint
    state = load_checkpoint(path)
    try:
        model = build_model(state["model_name"], **state["model_config"])
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise UserError(f"{path}: checkpoint does not hold a model this project can rebuild ({err})") from err
    return model.to(device).eval(), state


def predict_command(args) -> int:
    """`main.py predict`: checkpoint + sequence → ROOT/<seq>_RES (or --out), scores when GT exists."""
    from metrics import format_table
    from utils import check_accuracy, select_device
    device = select_device(args.device)
    model, state = load_model(args.checkpoint, device)
    seq = Sequence(args.data, args.seq, state.get("voxel_size", (0.125, 0.125, 0.2)))
    in_channels = int(state["model_config"].get("in_channels", 1))
    if in_channels != 1:
        raise UserError(f"{args.checkpoint}: the model expects {in_channels} input channels, but {seq.image_dir} "
                        f"holds single-channel {seq.ndim}D frames")
    roi = tuple(state["crop_size"])
    if len(roi) != seq.ndim:
        raise UserError(f"{args.checkpoint}: model trained on {len(roi)}D crops, {seq.image_dir} holds {seq.ndim}D frames")
    amp = device.type == "cuda"
    post = PostParams(**state.get("post", {}))
    if args.tune:
        if not seq.has_gt:
            raise UserError(f"--tune needs ground truth: {seq.gt_dir} not found")
        post = tune(model, seq, seq.seg_files, roi, device, amp, 0.25)
    out = Path(args.out) if args.out else seq.root / f"{seq.seq}_RES"
    figures_dir = tracking.figures_dir_for(out) if args.figures else None
    predict_sequence(model, seq, out, post, roi, device, amp, overwrite=args.overwrite, figures_dir=figures_dir)
    print(f"wrote {out} ({len(seq.frames)} frames) with post-processing {asdict(post)}")
    if seq.has_gt and (seq.gt_dir / "TRA").is_dir():
        print(format_table(check_accuracy(out, seq.gt_dir)))
    return 0
