"""Whole-volume prediction and instance extraction.

`sliding_window` runs a two-head model (seg logits [B,3,...]: background / boundary / interior, marker
logits [B,1,...]) over a volume of any size in overlapping windows, blends the window logits with a
Gaussian importance map exactly as MONAI's `sliding_window_inference(mode="gaussian")` does, and returns
probabilities. `instances` turns those probabilities into a label image with a marker-controlled
watershed; `tune_postprocessing` grid-searches its thresholds for the best SEG on frames with ground truth.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed
from tqdm import tqdm

import metrics
from errors import UserError

#: Accumulators stay on a CUDA device only while they take less than this share of its free memory.
_GPU_ACCUMULATOR_SHARE = 0.25


# ----------------------------------------------------------------------------- sliding window
def model_in_channels(predictor) -> int | None:
    """The input channel count of `predictor`: its `in_channels` attribute or its first layer's; None if unknown."""
    if isinstance(predictor, torch.nn.Module):
        for module in predictor.modules():
            channels = getattr(module, "in_channels", None)
            if isinstance(channels, int):
                return channels
    return None


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window start positions along one axis, placed like MONAI: step int(roi * (1 - overlap)), last window flush."""
    if roi >= size:
        return [0]
    step = max(int(roi * (1 - overlap)), 1)
    starts = list(range(0, size - roi, step))
    return starts + [size - roi]


def gaussian_importance(roi_size, sigma_scale: float = 0.125, device=None) -> torch.Tensor:
    """MONAI's `compute_importance_map(mode="gaussian")`: a product of 1D Gaussians (sigma = sigma_scale * size),
    clamped below at max(its minimum, 1e-3) so that window corners still count."""
    weight = None
    for axis, n in enumerate(roi_size):
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        g = torch.exp(x ** 2 / (-2 * (sigma_scale * n) ** 2))
        weight = g if weight is None else weight.unsqueeze(-1) * g[(None,) * axis]
    return weight.clamp_(min=max(weight.min().item(), 1e-3))


def _weight_sum(weight: torch.Tensor, starts: list[list[int]], size) -> torch.Tensor:
    """Sum of `weight` placed at every window of the grid `starts` (one list per axis), axis by axis: the windows
    are a Cartesian product, so shifting along each axis in turn costs far less than adding every window."""
    total = weight
    for axis, (axis_starts, n) in enumerate(zip(starts, size)):
        shape = list(total.shape)
        shape[axis] = n
        out = torch.zeros(shape, dtype=total.dtype, device=total.device)
        for s in axis_starts:
            out.narrow(axis, s, total.shape[axis]).add_(total)
        total = out
    return total


def _as_volume(volume, n_spatial: int) -> torch.Tensor:
    """`volume` ([C, *spatial], numpy or torch) as a float32 CPU tensor, without a copy when it already is one."""
    if isinstance(volume, torch.Tensor):
        tensor = volume.detach().to("cpu", torch.float32)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if tensor.ndim != n_spatial + 1:
        raise ValueError(f"volume must be [C, {', '.join('DHW'[-n_spatial:])}] for a {n_spatial}D roi_size, "
                         f"got shape {tuple(tensor.shape)}")
    return tensor


def model_device(predictor, device=None) -> torch.device:
    """`device` when given, else the device of the predictor's first parameter or buffer, else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(predictor, torch.nn.Module):
        param = next(itertools.chain(predictor.parameters(), predictor.buffers()), None)
        if param is not None:
            return param.device
    return torch.device("cpu")


def _accumulator_device(device: torch.device, n_bytes: int) -> torch.device:
    """Blend on the GPU when the accumulators fit comfortably there, else on the CPU."""
    if device.type == "cuda" and n_bytes < _GPU_ACCUMULATOR_SHARE * torch.cuda.mem_get_info(device)[0]:
        return device
    return torch.device("cpu")


def _two_heads(out) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"the predictor must return (seg_logits, marker_logits), got {type(out).__name__}"
                        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    return out[0], out[1]


def _forward(predictor, batch: torch.Tensor, mirror_axes: list[tuple[int, ...]], autocast) -> list[torch.Tensor]:
    """The predictor's two heads on `batch`, averaged over the flips in `mirror_axes` (each flipped back), float32."""
    total = None
    for axes in mirror_axes:
        with autocast:
            heads = _two_heads(predictor(batch.flip(axes) if axes else batch))
        heads = [h.float().flip(axes) if axes else h.float() for h in heads]
        total = heads if total is None else [t.add_(h) for t, h in zip(total, heads)]
    if len(mirror_axes) > 1:
        total = [t.div_(len(mirror_axes)) for t in total]
    return total


def sliding_window(predictor, volume, roi_size, overlap: float = 0.5, sw_batch_size: int = 4,
                   sigma_scale: float = 0.125, device=None, amp: bool = False, mirror: bool = False,
                   progress: bool = False, in_channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict a whole volume in overlapping windows; return (seg_prob [3, *spatial], marker_prob [1, *spatial]).

    volume: [C, D, H, W] (or [C, H, W] with a 2D roi_size), numpy or torch. The window logits of both heads are
    blended with MONAI's Gaussian importance map (the same windows, padding and weights as
    `monai.inferers.sliding_window_inference(mode="gaussian")`), then turned into probabilities: softmax over
    the 3 seg classes, sigmoid for the marker. Both are float32 CPU tensors of the volume's spatial size.

    A volume smaller than roi_size is zero-padded symmetrically and cropped back. Windows are computed on
    `device` (default: the predictor's) in batches of sw_batch_size, under bf16 autocast when `amp` and the
    device is CUDA (amp is ignored on the CPU); the accumulators stay on the GPU only when they fit easily.
    `mirror` averages the logits over all 2**ndim flips of the spatial axes (test-time augmentation).
    The channel count is checked against `in_channels` (default: read from the predictor's first layer)
    and a mismatch raises UserError.
    """
    roi_size = tuple(int(r) for r in roi_size)
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    n_spatial = len(roi_size)
    vol = _as_volume(volume, n_spatial)
    expected = in_channels if in_channels is not None else model_in_channels(predictor)
    if expected is not None and vol.shape[0] != expected:
        raise UserError(f"the image has {vol.shape[0]} channel(s) but the model expects {expected} "
                        f"(volume shape {tuple(vol.shape)})")

    size = tuple(vol.shape[1:])
    pad = [max(r - s, 0) for r, s in zip(roi_size, size)]
    if any(pad):
        vol = F.pad(vol, [p for d in reversed(pad) for p in (d // 2, d - d // 2)])
    padded = tuple(vol.shape[1:])
    starts = [window_starts(n, r, overlap) for n, r in zip(padded, roi_size)]
    windows = list(itertools.product(*starts))

    device = model_device(predictor, device)
    n_voxels = int(np.prod(padded))
    acc_device = _accumulator_device(device, 5 * 4 * n_voxels)
    weight = gaussian_importance(roi_size, sigma_scale, device=acc_device)
    seg_acc = marker_acc = None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda"
                else contextlib.nullcontext())
    mirror_axes = [()]
    if mirror:
        spatial = range(2, 2 + n_spatial)
        mirror_axes = [axes for k in range(n_spatial + 1) for axes in itertools.combinations(spatial, k)]

    batches = range(0, len(windows), sw_batch_size)
    if progress:
        batches = tqdm(batches, desc="windows", unit="batch", leave=False)
    with torch.inference_mode():
        for first in batches:
            chunk = windows[first:first + sw_batch_size]
            crops = [tuple(slice(s, s + r) for s, r in zip(start, roi_size)) for start in chunk]
            batch = torch.stack([vol[(slice(None), *c)] for c in crops]).to(device, non_blocking=True)
            seg, marker = (h.to(acc_device) for h in _forward(predictor, batch, mirror_axes, autocast))
            if seg_acc is None:
                if seg.shape[2:] != roi_size or marker.shape[2:] != roi_size:
                    raise ValueError(f"the predictor must keep the window size {roi_size}, got seg "
                                     f"{tuple(seg.shape[2:])} and marker {tuple(marker.shape[2:])}")
                seg_acc = torch.zeros((seg.shape[1], *padded), dtype=torch.float32, device=acc_device)
                marker_acc = torch.zeros((marker.shape[1], *padded), dtype=torch.float32, device=acc_device)
            for i, crop in enumerate(crops):
                seg_acc[(slice(None), *crop)].addcmul_(seg[i], weight)
                marker_acc[(slice(None), *crop)].addcmul_(marker[i], weight)
        norm = _weight_sum(weight, starts, padded)
        seg_acc.div_(norm)
        marker_acc.div_(norm)
        del norm
        if any(pad):
            keep = tuple(slice(d // 2, d // 2 + n) for d, n in zip(pad, size))
            seg_acc = seg_acc[(slice(None), *keep)].contiguous()
            marker_acc = marker_acc[(slice(None), *keep)].contiguous()
        seg_acc.sub_(seg_acc.amax(0, keepdim=True)).exp_()  # softmax in place: no second full-size copy
        seg_acc.div_(seg_acc.sum(0, keepdim=True))
        marker_acc.sigmoid_()
    return seg_acc.cpu(), marker_acc.cpu()


# ----------------------------------------------------------------------------- instances
@dataclass(frozen=True)
class PostParams:
    """Thresholds of `instances`. The defaults suit calibrated probabilities; on synthetic SIM+-like probability
    maps (bench/inference.py's, smoothed and noisy) a grid over fg/marker threshold 0.4-0.6 and min_marker_size
    1-50 found nothing better, and on trained checkpoints fg 0.5 beat a foreground threshold tuned on the training
    frames (bench/tune_source.py, README). `tune_postprocessing` (`main.py predict --tune`) fits them to a sequence's GT.

    fg_threshold: foreground where 1 - P(background) exceeds it.
    marker_threshold: seeds where the marker probability exceeds it (inside the foreground).
    marker_interior: seeds must also have P(interior) above this (0 turns the requirement off).
    min_marker_size: seed components smaller than this (voxels) are dropped.
    min_size: objects smaller than this (voxels) are removed.
    keep_unmarked: a foreground component without any seed becomes one object (else it is dropped).
    elevation: the watershed surface: "interior" (-P(interior): cuts along the predicted boundary class) or
        "distance" (-distance to the outside of P(interior) > 0.5, in physical units: cuts at the necks).
    marker_split: split a seed component that holds two distance peaks (two touching nuclei whose predicted
        markers ran together) where its own distance map dips between them by more than this fraction of its
        highest value (h-maxima, h = marker_split x peak); 0 turns it off. See `split_markers`. 0.3 by default: it
        cut merges on every preset (demo, sim+, hard) and 0.1-0.2 over-split (README).
    """

    fg_threshold: float = 0.5
    marker_threshold: float = 0.5
    marker_interior: float = 0.0
    min_marker_size: int = 10
    min_size: int = 100
    keep_unmarked: bool = True
    elevation: str = "interior"
    marker_split: float = 0.3

    def __post_init__(self):
        if self.elevation not in ("interior", "distance"):
            raise ValueError(f"elevation must be 'interior' or 'distance', got {self.elevation!r}")
        if not 0 <= self.marker_split < 1:
            raise ValueError(f"marker_split must be in [0, 1), got {self.marker_split!r}")


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def _elevation(interior: np.ndarray, region: np.ndarray, kind: str, sampling) -> np.ndarray:
    if kind == "interior":
        return -interior
    return -ndimage.distance_transform_edt((interior > 0.5) & region, sampling=sampling)


def split_markers(markers: np.ndarray, h_fraction: float, sampling=None, min_size: int = 1) -> tuple[np.ndarray, int]:
    """Split seed components with more than one distance peak; returns (relabelled markers, their count).

    A merged marker of two touching nuclei is two blobs joined by a neck: its distance transform (to the
    outside of the component, physical units with `sampling`) has two maxima with a saddle between them.
    Each component's maxima of dynamic above h = h_fraction x its highest distance (the regional maxima of
    the h-maxima transform, which also tells two equally high peaks from one) seed a watershed on the negative distance inside the component; a component with one such maximum, or pieces
    that would be under min_size voxels, stay whole. Components are handled in their bounding boxes.
    """
    out = np.zeros(markers.shape, np.int32)
    count = 0
    sizes = np.bincount(markers.ravel())
    for box_id, box in enumerate(ndimage.find_objects(markers), 1):
        if box is None:
            continue
        mine = markers[box] == box_id
        # no two pieces of min_size fit a smaller component: whole, without the transforms
        pieces = _neck_pieces(mine, h_fraction, sampling, min_size) if sizes[box_id] >= 2 * min_size else None
        if pieces is None:
            out[box][mine] = count + 1
            count += 1
        else:
            out[box][mine] = pieces[mine] + count
            count += int(pieces.max())
    return out, count


def _neck_pieces(mine: np.ndarray, h_fraction: float, sampling, min_size: int) -> np.ndarray | None:
    """The pieces (labels 1..n, on mine's box) of one marker component cut at its necks, or None where it
    stays whole (one peak of dynamic above h, or a piece under min_size voxels): see split_markers."""
    padded = np.pad(mine, 1)  # a component touching the box edge still has its outside there
    dist = ndimage.distance_transform_edt(padded, sampling=sampling)
    flooded = reconstruction(dist - h_fraction * float(dist.max()), dist)  # each peak lowered by h ...
    peaks, n_peaks = ndimage.label(local_maxima(flooded) & padded)  # ... the maxima left have dynamic > h
    if n_peaks < 2:
        return None
    pieces = watershed(-dist, peaks, mask=padded)[tuple(slice(1, -1) for _ in mine.shape)]
    return None if np.bincount(pieces[mine])[1:].min() < min_size else pieces


def _paste(target: np.ndarray, pieces: np.ndarray, free: np.ndarray, min_size: int, next_label: int) -> int:
    """Write each piece of the label box `pieces` with at least min_size voxels into `target` as next_label,
    next_label + 1, ..., its holes filled where `free` (outside the foreground); return the next unused label."""
    sizes = np.bincount(pieces.ravel())
    for piece, sub in enumerate(ndimage.find_objects(pieces), 1):
        if sub is None or sizes[piece] < min_size:
            continue
        mine = pieces[sub] == piece
        filled = ndimage.binary_fill_holes(mine)
        filled &= mine | free[sub]
        if next_label > np.iinfo(target.dtype).max:
            raise ValueError(f"more than {np.iinfo(target.dtype).max} objects do not fit a {target.dtype} label image")
        target[sub][filled] = next_label
        next_label += 1
    return next_label


def instances(seg_prob, marker_prob, params: PostParams | None = None, voxel_size=None) -> np.ndarray:
    """Label image (uint16, labels 1..N, 0 background) from seg probabilities [3, *spatial] and marker
    probabilities [1, *spatial] (numpy or torch).

    Foreground = 1 - P(background) > fg_threshold. Seeds = connected components of marker > marker_threshold
    inside the foreground, those under min_marker_size voxels dropped. A foreground component with one seed
    is one object; one with several is split by a watershed from the seeds on the elevation (see PostParams),
    computed only inside that component's bounding box (pieces under min_size voxels go to their neighbours
    by a second flood); one with none is kept whole if `keep_unmarked`. Components under min_size voxels
    are dropped, holes inside each object filled, labels numbered 1..N in
    raster order of their components. voxel_size (x, y[, z], as the CTC states it) scales the distance
    transform of elevation="distance"; default isotropic.
    """
    p = params or PostParams()
    seg = _numpy(seg_prob)
    marker = _numpy(marker_prob)[0]
    if seg.shape[0] != 3 or seg.shape[1:] != marker.shape:
        raise ValueError(f"expected seg_prob [3, *S] and marker_prob [1, *S], got {seg.shape} and "
                         f"{(1, *marker.shape)}")
    if voxel_size is not None and len(voxel_size) != marker.ndim:
        raise ValueError(f"voxel_size {tuple(voxel_size)} needs one value per axis of a {marker.ndim}D image")
    sampling = None if voxel_size is None else tuple(float(v) for v in reversed(voxel_size))
    interior = seg[2]
    foreground = seg[0] < 1 - p.fg_threshold
    seeds = marker > p.marker_threshold
    seeds &= foreground
    if p.marker_interior > 0:
        seeds &= interior > p.marker_interior
    markers, n_markers = ndimage.label(seeds)
    if p.marker_split > 0 and n_markers:
        markers, n_markers = split_markers(markers, p.marker_split, sampling, max(1, p.min_marker_size))
    components, n_components = ndimage.label(foreground)

    # which seeds are big enough, and the component each lies in: one pass over the seed voxels
    seed_ids, seed_components = markers[seeds], components[seeds]
    good = np.bincount(seed_ids, minlength=n_markers + 1) >= p.min_marker_size
    good[0] = False
    component_of = np.zeros(n_markers + 1, np.int64)
    component_of[seed_ids] = seed_components
    seeds_per_component = np.bincount(component_of[good], minlength=n_components + 1)
    good_ids = np.flatnonzero(good)
    seeds_by_component = good_ids[np.argsort(component_of[good_ids], kind="stable")]
    first_seed = np.concatenate(([0], np.cumsum(seeds_per_component)))  # component c: [first_seed[c], [c + 1])
    component_sizes = np.bincount(components[foreground], minlength=n_components + 1)
    seed_index = np.zeros(n_markers + 1, np.int32)  # a seed's number within its component, 0 for dropped ones

    labels = np.zeros(foreground.shape, np.uint16)
    next_label = 1
    for comp_id, box in enumerate(ndimage.find_objects(components), 1):
        if box is None or component_sizes[comp_id] < p.min_size:  # too small to hold an object
            continue
        n_seeds = seeds_per_component[comp_id]
        if n_seeds == 0 and not p.keep_unmarked:
            continue
        region = components[box] == comp_id
        if n_seeds <= 1:
            pieces = region.view(np.uint8)
        else:
            ids = seeds_by_component[first_seed[comp_id]:first_seed[comp_id + 1]]
            seed_index[ids] = np.arange(1, len(ids) + 1)
            seeds_here = seed_index[markers[box]]
            seeds_here[~region] = 0
            seed_index[ids] = 0
            surface = _elevation(interior[box], region, p.elevation, sampling)
            pieces = watershed(surface, seeds_here, mask=region)
            small = np.bincount(pieces.ravel()) < p.min_size
            small[0] = False
            if small.any():  # give too-small pieces to their neighbours: flood again from the others
                pieces[small[pieces]] = 0
                pieces = watershed(surface, pieces, mask=region) if pieces.any() else region.view(np.uint8)
        next_label = _paste(labels[box], pieces, components[box] == 0, p.min_size, next_label)
    return labels


# ----------------------------------------------------------------------------- tuning
DEFAULT_GRID = {
    "fg_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "marker_threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "marker_split": (0.0, 0.3, 0.5),         # searched: SEG 0.454 -> 0.586 on hard, 0.849 -> 0.852 demo, 2D neutral (README)
}


#: What a run tunes on its own training frames (Trainer, tune_frames): the marker threshold alone. The network is
#: over-confident on frames it has fit, so a foreground threshold tuned there (0.7 on every checkpoint measured)
#: cuts nuclei short on new data; the marker threshold, which decides what is split, transfers (README).
TRAINING_FRAMES_GRID = {"marker_threshold": (0.3, 0.4, 0.5, 0.6, 0.7)}


def tracked_score(masks: dict, tracks, tra_gt: dict, gt_tracks, seg_gt: dict, measure: str = "OP_CTB") -> float:
    """A tracking measure (default OP_CTB) of tracked candidate masks {t: labels} (track rows `tracks`) against
    the TRA ground truth of the same consecutive frames; `gt_tracks` is the whole sequence's table, cut here
    to those frames (metrics.clip_tracks). The scorer of Predictor.tune(objective="OP_CTB")."""
    frames = sorted(tra_gt)
    window = metrics.clip_tracks(gt_tracks, frames[0], frames[-1])
    return metrics.check_arrays(masks, tracks, tra_gt, window, seg_gt, metrics=(measure,))[measure]


def tune_postprocessing(prob_pairs, gt_labels_list, grid: dict | None = None,
                        base: PostParams | None = None, voxel_size=None, score=None) -> tuple[PostParams, float]:
    """Grid-search PostParams for the best SEG over frames whose probabilities are already predicted.

    prob_pairs: [(seg_prob, marker_prob), ...]; gt_labels_list: the GT of the same frames, each a label
    volume or {z: 2D label slice} (CTC SEG ground truth given as slices); None with `score`.
    grid: {PostParams field: candidate values} (default DEFAULT_GRID); fields not in it keep `base`'s values
    (default PostParams()). `base` itself is tried first, so the result is never worse than it; ties keep
    the earlier candidate. SEG is pooled over all GT objects of all frames, as the CTC does.
    voxel_size is passed on to `instances`. score: instead of SEG, a function of the list of label images
    (one per frame) to maximise, e.g. OP_CTB after tracking them (Predictor.tune). Returns (best params, its score).
    """
    prob_pairs = list(prob_pairs)
    gt_labels_list = None if gt_labels_list is None else list(gt_labels_list)
    if not prob_pairs or (score is None and (gt_labels_list is None or len(prob_pairs) != len(gt_labels_list))):
        raise ValueError(f"need as many GT images as predicted frames (>0), got {len(gt_labels_list or ())} "
                         f"and {len(prob_pairs)}")
    grid = DEFAULT_GRID if grid is None else grid
    base = base or PostParams()
    unknown = set(grid) - {f.name for f in dataclasses.fields(PostParams)}
    if unknown:
        raise ValueError(f"unknown PostParams fields in grid: {sorted(unknown)}")
    candidates = [base] + [dataclasses.replace(base, **dict(zip(grid, values)))
                           for values in itertools.product(*grid.values())]

    def seg(labels) -> float:
        parts = [metrics.seg_score(lab, gt) for lab, gt in zip(labels, gt_labels_list)]
        count = sum(n for _, n in parts)
        if count == 0:
            raise UserError("no ground-truth objects to tune the post-processing on")
        return sum(j for j, _ in parts) / count

    score = score or seg
    best, best_score = base, -np.inf
    for params in candidates:
        value = score([instances(s, m, params, voxel_size) for s, m in prob_pairs])
        if value > best_score:
            best, best_score = params, value
    return best, float(best_score)
