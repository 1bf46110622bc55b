"""The Predictor: from raw frames to instances and to a CTC result, with every setting held once.

    predictor = Predictor.from_checkpoint("runs/vit_unet-.../best.pt", device="auto")   # no flags needed
    seg, marker = predictor.probabilities(image)     # [3, *S] background/boundary/interior, [1, *S] seeds
    labels = predictor.instances(image)              # uint16 instance mask of one frame
    predictor.tune(seq, frames)                      # watershed thresholds from frames with ground truth
    predictor.predict_sequence(seq, "ROOT/02_RES")   # every frame, tracked, as a CTC result folder

The settings — model, window, overlap, mirroring (test-time augmentation), window batch, AMP, device,
post-processing and voxel size — live on the object, as in nnU-Net's `nnUNetPredictor` and StarDist's
model object; training's validation, its final report and `main.py predict` all build one, so a setting
means the same thing everywhere. The pieces live where their concern is: inference.py (sliding window,
watershed), results.py (link → relabel → result folder).

Thresholds tuned for a checkpoint are kept as their own record, `<checkpoint stem>.postprocessing.json`
beside it (as StarDist keeps `thresholds.json`), which `from_checkpoint` reads; the checkpoint itself is
never rewritten.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import inference
import tiled
from dataset import VOXEL_SIZE_SIM, Sequence
from dataset.ctc import check_consecutive
from dataset.frames import as_frame, lazy_frame, subsample_percentiles
from dataset.fileio import write_json
from dataset3D import normalize, resample_image, resample_labels, resample_probabilities
from errors import CheckpointError, ConfigError, UserError
from inference import PostParams
from plan import Plan
from results import write_tracked_result
from tracking import TrackParams, track_sequence

POST_RECORD = "nuclei-ctc-postprocessing/1"
#: Sliding-window overlap where neither the caller nor the run says (nnU-Net's; README: 0.5 against 0.25 gave
#: +0.004-0.007 SEG on the default and hard sets for 1.7x the window time).
DEFAULT_OVERLAP = 0.5
#: What Predictor.tune can maximise: SEG alone, or OP_CTB = (SEG + TRA) / 2 of the tracked candidate masks.
TUNE_OBJECTIVES = ("SEG", "OP_CTB")
#: Peak host memory of predicting one frame, per voxel: the float32 frame and its normalised copy, five
#: blended float32 accumulators and their weights, the probabilities as numpy, and the watershed's arrays.
BYTES_PER_VOXEL = 100
#: Without --max-memory, a frame is predicted in one piece while that takes at most this share of the
#: memory available when prediction starts, else in blocks that fit this share (see tiled.py).
DEFAULT_MEMORY_SHARE = 0.5
#: Without a plan (no nucleus size), blocks keep this many prediction windows around their core for the
#: watershed (see Predictor.block_margin; the window is about 3 nucleus diameters).
BLOCK_MARGIN_WINDOWS = 0.5
#: The percentiles of `dataset3D.normalize` (its defaults), used as they are by the block path.
NORMALIZE_PERCENTILES = (1.0, 99.8)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def post_record_path(checkpoint: str | Path) -> Path:
    """Where the tuned thresholds of `checkpoint` are kept: `best.pt` → `best.postprocessing.json`."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.postprocessing.json")


def save_post_record(path: str | Path, post: PostParams, seg: float, checkpoint_id: str | None, tuned_on: dict) -> Path:
    """Write the post-processing record (thresholds, the score they reached as "seg": SEG, or the objective named
    in `tuned_on`, where they were tuned) atomically."""
    write_json(path, {"format": POST_RECORD, "checkpoint_id": checkpoint_id, "post": dataclasses.asdict(post),
                      "seg": float(seg), "tuned_on": tuned_on})
    return Path(path)


def load_post_record(path: str | Path) -> tuple[PostParams, str | None]:
    """(thresholds, id of the checkpoint they were tuned for) from a record written by `save_post_record`."""
    import json
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable post-processing record ({err})") from err
    if not isinstance(record, dict) or record.get("format") != POST_RECORD:
        raise CheckpointError(f"{path}: not a post-processing record of this project (no '{POST_RECORD}' format tag)")
    return post_params(record.get("post"), str(path)), record.get("checkpoint_id")


def post_params(fields, where: str) -> PostParams:
    """PostParams from a stored dict, with a message naming `where` for unknown or invalid fields."""
    if fields is None:
        return PostParams()
    if not isinstance(fields, dict):
        raise CheckpointError(f"{where}: post-processing fields must be a mapping, got {type(fields).__name__}")
    unknown = set(fields) - {f.name for f in dataclasses.fields(PostParams)}
    if unknown:
        raise CheckpointError(f"{where}: unknown post-processing fields {sorted(unknown)}")
    try:
        return PostParams(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: invalid post-processing fields ({err})") from err


class Predictor:
    """Raw frames → probabilities → instances → tracked CTC result, with its settings held once.

    Args:
        model: a two-head network, [B, C, *S] → (seg_logits [B, 3, *S], marker_logits [B, 1, *S]).
        window: sliding-window size (Z, Y, X) or (Y, X), normally the training crop.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        tta: average the logits over all mirror flips of the spatial axes (2**ndim forward passes per window).
        window_batch: windows per forward pass.
        device: where the network runs (default: where the model is).
        amp: bf16 autocast (used on CUDA only; None: on wherever it is used).
        post: thresholds of the watershed (`inference.PostParams`).
        voxel_size: (x, y[, z]) in µm of the frames to predict: the watershed's distance elevation, the
            tracker's gates and, with a plan, the resampling use it.
        track: gates and costs of the tracker (`tracking.TrackParams`; default: the plan's gates).
        plan: the data plan of the training run (`plan.Plan`): each frame is resampled to its working
            spacing, predicted there, and its probabilities brought back to the native grid before the
            watershed; its size limits are the default thresholds' and its gates the tracker's.
        max_memory: bytes a frame's prediction may take (model and interpreter aside); a frame that needs
            more in one piece is predicted in overlapping blocks that fit (`tiled`). None: DEFAULT_MEMORY_SHARE
            of the memory available when a frame is checked (no limit where that is unknown).
    """

    def __init__(self, model: torch.nn.Module, window, overlap: float = DEFAULT_OVERLAP, tta: bool = False, window_batch: int = 4,
                 device=None, amp: bool | None = None, post: PostParams | None = None, voxel_size=VOXEL_SIZE_SIM,
                 track: TrackParams | None = None, plan: Plan | None = None, max_memory: int | None = None):
        window = tuple(int(w) for w in window)
        if len(window) not in (2, 3) or min(window) < 1:
            raise ConfigError(f"window {window}: expected 2 or 3 positive sizes")
        if not 0 <= overlap < 1:
            raise ConfigError(f"overlap {overlap}: must be in [0, 1)")
        if int(window_batch) < 1:
            raise ConfigError(f"window batch {window_batch}: must be at least 1")
        if max_memory is not None and int(max_memory) < 1:
            raise ConfigError(f"memory budget {max_memory}: must be a positive number of bytes")
        voxel_size = tuple(float(v) for v in voxel_size)
        if len(voxel_size) not in (2, 3) or not all(np.isfinite(voxel_size)) or min(voxel_size) <= 0:
            raise ConfigError(f"voxel size {voxel_size}: expected 2 or 3 finite positive values (x y [z]) in µm")
        self.device = torch.device(device) if device is not None else inference.model_device(model)
        self.model = model.to(self.device).eval()
        self.window, self.overlap, self.tta, self.window_batch = window, float(overlap), bool(tta), int(window_batch)
        self.amp = self.device.type == "cuda" if amp is None else bool(amp)
        self.plan = plan
        self.post = post or (PostParams(**plan.size_limits(native=True)) if plan else PostParams())
        self.voxel_size = voxel_size
        self.track = track or (TrackParams(**plan.tracking_gates()) if plan else TrackParams())
        self.max_memory = None if max_memory is None else int(max_memory)
        self.checkpoint_id: str | None = None
        self._announced: set = set()

    def __repr__(self) -> str:
        return (f"Predictor({getattr(self.model, 'name', type(self.model).__name__)}, window={self.window}, "
                f"overlap={self.overlap}, tta={self.tta}, device={self.device}, post={self.post})")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_checkpoint(cls, path: str | Path, device="auto", **overrides) -> "Predictor":
        """Rebuild model and settings from one of our checkpoints; keyword overrides replace any setting.

        The window is the run's crop, the overlap the run's, the voxel size the training data's, and the
        thresholds those of the checkpoint's post-processing record when one exists (else those stored in
        the checkpoint, else the defaults).
        """
        from models import build_model
        from utils import load_checkpoint, select_device
        path = Path(path)
        state = load_checkpoint(path)
        try:
            model = build_model(state["model_name"], **state["model_config"])
            model.load_state_dict(state["model"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path}: checkpoint does not hold a model this project can rebuild ({err})") from err
        window = state.get("crop_size")
        if (not isinstance(window, (list, tuple)) or len(window) not in (2, 3)
                or not all(isinstance(w, int) and w > 0 for w in window)):
            raise CheckpointError(f"{path}: stored crop size {window!r} is not 2 or 3 positive integers")
        data_plan = None
        if state.get("plan") is not None:
            try:
                data_plan = Plan.from_json(state["plan"])
            except (KeyError, TypeError, ValueError, UserError) as err:
                raise CheckpointError(f"{path}: stored data plan is not readable ({err})") from err
            window = state.get("window") or data_plan.window
        settings = dict(window=window, overlap=(state.get("train_config") or {}).get("overlap", DEFAULT_OVERLAP),
                        voxel_size=state.get("voxel_size") or VOXEL_SIZE_SIM, plan=data_plan)
        if state.get("post") is not None:
            settings["post"] = post_params(state["post"], f"{path} (stored post-processing)")
        record = post_record_path(path)
        if record.is_file() and "post" not in overrides:
            post, owner = load_post_record(record)
            if owner == state.get("id"):
                settings["post"] = post
            else:
                warnings.warn(f"{record}: tuned for another checkpoint than {path.name} (ids differ); not used", stacklevel=2)
        settings.update(overrides)
        dev = select_device(device) if isinstance(device, str) else torch.device(device)
        predictor = cls(model, device=dev, **settings)
        predictor.checkpoint_id = state.get("id")
        return predictor

    # ------------------------------------------------------------------ one frame
    def check_image(self, shape, channels: int, where: str) -> None:
        """Refuse frames the model cannot take (dimensionality, channel count) or that do not fit the memory
        budget even in blocks, before any work starts; say so once when frames will be predicted in blocks."""
        if len(shape) != len(self.window):
            raise UserError(f"{where}: model trained on {len(self.window)}D crops, the frames are {len(shape)}D")
        expected = inference.model_in_channels(self.model)
        if expected is not None and expected != channels:
            kind = "single-channel" if channels == 1 else f"{channels}-channel"
            raise UserError(f"{where}: the model expects {expected} input channels, but the frames are {kind} "
                            f"{len(shape)}D images")
        layout = self.block_layout(shape, where)
        if layout is not None and tuple(shape) not in self._announced:
            self._announced.add(tuple(shape))
            print(f"note: {where}: one {'x'.join(map(str, shape))} frame needs about "
                  f"{tiled.format_bytes(self.memory_need(shape))} in one piece, more than the "
                  f"{tiled.format_bytes(self.memory_budget())} memory budget: predicted in {layout.describe()}",
                  file=sys.stderr, flush=True)

    def memory_budget(self) -> int | None:
        """Bytes one frame's prediction may take: `max_memory`, else DEFAULT_MEMORY_SHARE of the memory
        available now (None where that is unknown: no limit)."""
        if self.max_memory is not None:
            return self.max_memory
        free = available_memory()
        return None if free is None else int(free * DEFAULT_MEMORY_SHARE)

    def memory_need(self, shape) -> int:
        """Estimated peak bytes of predicting one frame of `shape` in one piece: BYTES_PER_VOXEL for each voxel
        of the larger of its native and working grids."""
        return BYTES_PER_VOXEL * max(int(np.prod(shape)), int(np.prod(self.working_shape(shape))))

    def block_margin(self, shape) -> tuple[int, ...]:
        """Native voxels around each block's core whose probabilities a block computes as the whole frame does
        (it takes whole every window of the frame that covers them, `tiled.Axis`), so that the watershed sees
        an object cut by the core's border whole: one nucleus diameter (the plan's; without a plan,
        BLOCK_MARGIN_WINDOWS prediction windows)."""
        if self.plan is not None and self.plan.measured.get("diameter_um"):
            native = tuple(reversed(self.spacing(len(shape))))
            return tuple(int(math.ceil(float(self.plan.measured["diameter_um"]) / v)) for v in native)
        per = [n / w for n, w in zip(shape, self.working_shape(shape))]  # native voxels per working voxel
        return tuple(int(math.ceil(BLOCK_MARGIN_WINDOWS * w * p)) for w, p in zip(self.window, per))

    def block_layout(self, shape, where: str = "image") -> tiled.Layout | None:
        """None when a frame of `shape` is predicted in one piece within the memory budget, else the blocks
        it is predicted in (`tiled.Layout`, on the frame's own working grid and windows); UserError naming
        `where` when not even blocks fit."""
        shape = tuple(int(s) for s in shape)
        budget = self.memory_budget()
        need = self.memory_need(shape)
        if budget is None or need <= budget:
            return None
        axes = [tiled.Axis(n, m, w, max(int(w * (1 - self.overlap)), 1))
                for n, m, w in zip(shape, self.working_shape(shape), self.window)]

        def block_need(extent, working) -> int:
            return BYTES_PER_VOXEL * max(int(np.prod(extent)), int(np.prod(working)))

        try:
            return tiled.plan_blocks(axes, self.block_margin(shape), block_need, budget)
        except tiled.BudgetError as err:
            source = "--max-memory" if self.max_memory is not None else \
                f"{DEFAULT_MEMORY_SHARE:.0%} of the available memory; set it with --max-memory"
            raise UserError(f"{where}: predicting one {'x'.join(map(str, shape))} frame needs about "
                            f"{tiled.format_bytes(need)} of memory in one piece, and even {err}; the memory budget is "
                            f"{tiled.format_bytes(budget)} ({source}). Free memory, or crop or bin the frames") from None

    def working_shape(self, shape) -> tuple[int, ...]:
        """The shape a frame of `shape` has at the plan's working spacing (the frame's own without a plan)."""
        if self.plan is None:
            return tuple(shape)
        return self.plan.working_shape(tuple(shape), tuple(reversed(self.spacing(len(shape)))))

    def probabilities(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(seg_prob [3, *S], marker_prob [1, *S]) float32 of one raw frame, the whole volume, on its own grid
        (predicted at the plan's working spacing and interpolated back when that differs)."""
        return self._predict(normalize(image), self.working_shape(image.shape))

    def _predict(self, volume: np.ndarray, working, back: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of a normalised volume on its own grid, predicted on a grid of shape `working`
        (back=False: left on that grid)."""
        self.model.eval()
        shape, working = tuple(volume.shape), tuple(working)
        if working != shape:
            volume = resample_image(volume, working)
        seg, marker = self._sliding_window(volume)
        if working != shape and back:
            return resample_probabilities(seg, shape), resample_probabilities(marker, shape)
        return seg.numpy(), marker.numpy()

    def _sliding_window(self, volume: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return inference.sliding_window(self.model, torch.from_numpy(volume)[None], self.window, overlap=self.overlap,
                                        sw_batch_size=self.window_batch, device=self.device, amp=self.amp,
                                        mirror=self.tta)

    def spacing(self, ndim: int) -> tuple[float, ...]:
        """The voxel size (x, y[, z]) for an ndim-D frame (a 3D size on 2D frames drops z)."""
        return self.voxel_size[:ndim]

    def instances(self, image, post: PostParams | None = None, scratch=None) -> np.ndarray:
        """uint16 instance mask of one raw frame (the watershed of `probabilities`).

        image: an array, or a frame read box by box (`dataset.frames.lazy_frame`). A frame that does not fit
        the memory budget in one piece (`block_layout`) is segmented in overlapping blocks, stitched
        (`tiled.segment_in_blocks`): each block normalised with the frame's percentiles taken from a strided
        subsample (`dataset.frames.subsample_percentiles`), resampled to the working spacing, predicted, brought
        back and cut by the watershed. scratch: the folder for the scratch file of frames whose stitching
        arrays do not fit either (default: the system's temporary folder).
        """
        frame = as_frame(image)
        layout = self.block_layout(frame.shape)
        if layout is None:
            image = frame.read()
            return inference.instances(*self.probabilities(image), post or self.post, voxel_size=self.spacing(image.ndim))
        return self._instances_in_blocks(frame, layout, post or self.post, scratch)

    def _instances_in_blocks(self, frame, layout: tiled.Layout, post: PostParams, scratch) -> np.ndarray:
        low, high = subsample_percentiles(frame, NORMALIZE_PERCENTILES)
        spacing = self.spacing(len(frame.shape))
        resamples = any(a.m != a.n for a in layout.axes)

        def segment(raw: np.ndarray, block: tiled.Block) -> np.ndarray:
            volume = np.asarray(raw, np.float32)  # as dataset3D.normalize, in place
            volume = np.array(volume) if volume is raw else volume
            volume -= low
            volume /= max(high - low, 1e-6)
            if resamples:
                volume = layout.to_working(volume, block)  # on the frame's own working grid
            seg, marker = self._sliding_window(volume)
            del volume
            if resamples:
                seg = layout.to_native(seg, block)
                marker = layout.to_native(marker, block)
            return inference.instances(seg, marker, post, voxel_size=spacing)

        return tiled.segment_in_blocks(frame, layout, segment, scratch)

    # ------------------------------------------------------------------ thresholds
    def tune(self, seq: Sequence, frames, grid: dict | None = None, progress: bool = True,
             objective: str = "SEG") -> tuple[PostParams, float]:
        """Set `post` to the watershed thresholds that maximise `objective` on `frames` of `seq` (predicted
        once, post-processing searched); returns (thresholds, score). Never worse on those frames than the
        current ones.

        objective: "SEG", or "OP_CTB" ((SEG + TRA) / 2: each candidate's masks tracked and scored against the
        TRA ground truth of `frames`, which must then be consecutive), which also weighs merges and lost links.
        Where the plan resamples, the search runs on the working grid (probabilities as the window gave them, GT
        taken there by nearest neighbour, size limits in working voxels): each candidate's watershed is then as
        cheap as in training (about 10x less than at the native grid on SIM+ frames), and only the searched
        thresholds are carried over; the size limits stay the native ones. The score returned is the working grid's.
        """
        if objective not in TUNE_OBJECTIVES:
            raise ConfigError(f"tuning objective {objective!r}: expected one of {', '.join(TUNE_OBJECTIVES)}")
        frames = list(frames)
        if objective == "OP_CTB":
            frames = check_consecutive(frames, f"{seq.image_dir} (OP_CTB tuning)")
        grid = inference.DEFAULT_GRID if grid is None else grid
        seg_frames = set(seq.seg_frames)
        gts = {t: seq.seg(t) for t in frames if t in seg_frames}
        if not gts:
            raise UserError(f"{seq.gt_dir}: no SEG ground truth for the tuning frames {frames}")
        working = self.plan is not None and self.plan.resamples and not any(isinstance(g, dict) for g in gts.values())
        pairs = []
        for t in tqdm(frames, desc="tuning thresholds", leave=False, disable=not progress):
            image = seq.image(t)
            pairs.append(self._predict(normalize(image), self.working_shape(image.shape), back=not working))
        to_grid = (lambda g, t: resample_labels(g, pairs[frames.index(t)][0].shape[1:])) if working else (lambda g, t: g)
        gts = {t: to_grid(g, t) for t, g in gts.items()}
        if working:
            base, voxel_size = self.working_post(), tuple(reversed(self.plan.spacing))
        else:
            base, voxel_size = self.post, self.spacing(len(seq.shape))
        score = None
        if objective == "OP_CTB":
            tra = {t: to_grid(seq.tra(t), t) for t in frames}
            gt_tracks = seq.tracks

            def score(labels):
                relabelled, tracks = track_sequence(labels, frames, voxel_size, self.track)
                return inference.tracked_score(dict(relabelled), tracks, tra, gt_tracks, gts)
        else:  # only the frames with SEG ground truth count
            pairs = [pair for t, pair in zip(frames, pairs) if t in gts]
        best_post, best = inference.tune_postprocessing(pairs, list(gts.values()) if score is None else None,
                                                        grid, base=base, voxel_size=voxel_size, score=score)
        if working:  # the searched values, size limits (when searched) back in native voxels
            found = {name: getattr(best_post, name) for name in grid}
            ratio = self.native_per_working()
            found.update({k: max(1, int(round(v * ratio))) if v else 0 for k, v in found.items()
                          if k in ("min_size", "min_marker_size")})
            best_post = dataclasses.replace(self.post, **found)
        self.post = best_post
        where = " (at the working grid)" if working else ""
        tqdm.write(f"tuned post-processing on {len(frames)} frames of {seq.image_dir}: {objective} {best:.4f}{where} "
                   f"with {self.post}")
        return self.post, best

    def native_per_working(self) -> float:
        """How many native voxels one voxel of the plan's working grid holds."""
        return float(np.prod(self.plan.spacing) / np.prod(self.spacing(self.plan.ndim)))

    def working_post(self) -> PostParams:
        """`post` with its size limits (native voxels) converted to voxels of the plan's working grid."""
        ratio = self.native_per_working()

        def scaled(n: int) -> int:
            return max(1, int(round(n / ratio))) if n else 0

        return dataclasses.replace(self.post, min_size=scaled(self.post.min_size),
                                   min_marker_size=scaled(self.post.min_marker_size))

    # ------------------------------------------------------------------ a sequence
    def predict_sequence(self, seq: Sequence, out: str | Path, overwrite: bool = False, figures_dir=None,
                         progress: bool = True, inputs=()) -> Path:
        """Segment every frame of `seq`, track, and write the CTC result folder `out` atomically
        (and PNG projections and a lineage tree to `figures_dir`). Gaps in the frame numbers are refused;
        so is an output that is, holds or lies inside the sequence, its GT or `inputs` (e.g. the checkpoint)."""
        self.check_image(seq.shape, 1, str(seq.image_dir))
        inputs = [seq.image_dir, seq.gt_dir, *inputs]

        def segmented():
            for t in tqdm(seq.frames, desc=f"predicting {seq.image_dir.name}", unit="frame", disable=not progress):
                yield t, self.instances(lazy_frame(seq, t), scratch=Path(out).parent)  # blocks: read lazily

        write_tracked_result(segmented(), seq.frames, out, self.spacing(len(seq.shape)), self.track, overwrite,
                             figures_dir, image=seq.image, names={t: p.name for t, p in seq.files.items()},
                             inputs=inputs, progress=False)
        return Path(out)
