"""A torch Dataset of random training crops from CTC sequences.

Volumes, targets and normalisation are computed once, before the dataset is built (`load_volumes`);
each step only cuts, augments and converts a crop. Sample i of epoch e is drawn from a generator
seeded by (seed, e, i), so a resumed run sees exactly the crops the interrupted one would have.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from dataset import Sequence
from dataset.ctc import CTCFormatError

from .augment import AugmentConfig, geometric, intensity, resize, rotated_size, rotation_angle, source_size
from .resample import resample_image, resample_labels
from .targets import marker_core, normalize, three_class


@dataclass
class Volume:
    """One training frame: normalised image (float16 to halve memory) and its two targets (uint8)."""
    image: np.ndarray
    classes: np.ndarray
    marker: np.ndarray
    foreground: np.ndarray = field(repr=False)  # flat indices of nucleus voxels, for biased crops


def load_volumes(seq: Sequence, frames=None, core_fraction: float = 0.35, progress: bool = True,
                 shape=None, spacing=None) -> list[Volume]:
    """Read the frames with full SEG ground truth and compute their targets once.

    shape, spacing: the working grid (array order; spacing in µm) when it differs from the native one: images
    and labels are resampled to it once here (`resample`), and the marker core is measured there.
    """
    available = seq.seg_files if seq.has_gt else {}
    if not available:
        raise CTCFormatError(f"{seq.gt_dir / 'SEG'}: training sequence {seq.seq} has no full 3D SEG ground truth (man_segNNN.tif)")
    frames = sorted(available) if frames is None else [t for t in frames if t in available]
    native = tuple(reversed(seq.voxel_size))[-seq.ndim:]  # (z, y, x) order of the arrays
    spacing = native if spacing is None else tuple(spacing)
    resampled = shape is not None and tuple(shape) != tuple(seq.shape)
    volumes = []
    for t in tqdm(frames, desc=f"targets {seq.seq}", disable=not progress, leave=False):
        labels = seq.seg(t)
        image = normalize(seq.image(t))
        if resampled:
            image, labels = resample_image(image, shape), resample_labels(labels, shape)
        volumes.append(Volume(image.astype(np.float16), three_class(labels), marker_core(labels, spacing, core_fraction),
                              np.flatnonzero(labels)))
    return volumes


class CropDataset(Dataset):
    """Random crops (image [1, *crop], classes [*crop] int64, marker [1, *crop] float32).

    fg_fraction of the crops are centred on a random nucleus voxel; the rest anywhere. Crops larger
    than a volume are padded (image with 0, the normalised background; targets with background).
    """

    def __init__(self, volumes: list[Volume], crop_size, samples_per_epoch: int, augment: AugmentConfig | None = None,
                 fg_fraction: float = 0.67, seed: int = 0):
        self.volumes = volumes
        self.crop = tuple(int(c) for c in crop_size)
        self.samples_per_epoch = samples_per_epoch
        self.augment = augment
        self.fg_fraction = fg_fraction
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        vol = self.volumes[int(rng.integers(len(self.volumes)))]
        size = source_size(self.crop, self.augment, rng) if self.augment else self.crop
        angle = rotation_angle(self.augment, rng) if self.augment else 0.0
        centre = None
        if len(vol.foreground) and rng.random() < self.fg_fraction:
            centre = np.unravel_index(vol.foreground[rng.integers(len(vol.foreground))], vol.image.shape)
        arrays = cut([vol.image, vol.classes, vol.marker], rotated_size(size, angle), centre, rng)
        arrays[0] = arrays[0].astype(np.float32)
        if self.augment:  # scaled (and turned) alike: the image linearly, the targets to the nearest voxel
            arrays = resize(arrays, self.crop, orders=(1, 0, 0), source=size, angle=angle)
            arrays = geometric(arrays, self.augment, rng)
            arrays[0] = intensity(arrays[0], self.augment, rng)
        image, classes, marker = arrays
        return (torch.from_numpy(np.ascontiguousarray(image))[None],
                torch.from_numpy(classes.astype(np.int64)),
                torch.from_numpy(marker.astype(np.float32))[None])


def cut(arrays, size, centre, rng: np.random.Generator):
    """Cut `size` from each array around `centre` (random if None), padding where the volume is smaller."""
    shape = arrays[0].shape
    starts = []
    for axis, (n, c) in enumerate(zip(shape, size)):
        if centre is None:
            lo = int(rng.integers(min(0, n - c), max(0, n - c) + 1))
        else:
            lo = int(centre[axis]) - c // 2 + int(rng.integers(-(c // 4), c // 4 + 1))
        starts.append(min(max(lo, min(0, n - c)), max(0, n - c)) if n >= c else (n - c) // 2)
    out = []
    for a in arrays:
        region = tuple(slice(max(s, 0), min(s + c, n)) for s, c, n in zip(starts, size, shape))
        piece = a[region]
        pad = [(max(0, -s), c - p - max(0, -s)) for s, c, p in zip(starts, size, piece.shape)]
        out.append(np.pad(piece, pad) if any(sum(p) for p in pad) else np.array(piece))
    return out
