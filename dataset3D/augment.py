"""Augmentation of one training crop (numpy, in the data-loader workers).

Geometry is applied alike to the image and its targets: flips, 90 degree rotations in x/y, small
isotropic scaling. Intensity only to the image: gamma, scale and shift, Gaussian noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class AugmentConfig:
    flip: bool = True                 # random flips along every axis
    rot90: bool = True                # random 90 degree rotations in the x/y plane
    scale_prob: float = 0.2           # chance of a scaling
    scale_range: float = 0.15         # scale factor drawn from [1 - r, 1 + r]
    gamma_range: float = 0.3          # gamma drawn from [1 - r, 1 + r] (log-uniform)
    intensity_scale: float = 0.15     # multiply by [1 - s, 1 + s]
    intensity_shift: float = 0.05     # add [-s, s]
    noise_std: float = 0.05           # additive Gaussian noise, std drawn from [0, noise_std]


def source_size(crop, cfg: AugmentConfig, rng: np.random.Generator):
    """Size of the region to cut before scaling it to `crop` (larger region = zoom out)."""
    if cfg.scale_prob > 0 and rng.random() < cfg.scale_prob:
        s = rng.uniform(1 - cfg.scale_range, 1 + cfg.scale_range)
        return tuple(max(2, int(round(c * s))) for c in crop)
    return tuple(crop)


def resize(arrays, crop, orders):
    """Resample arrays (same shape) to `crop`, each with its interpolation order."""
    factors = [c / s for c, s in zip(crop, arrays[0].shape)]
    if all(f == 1 for f in factors):
        return arrays
    out = []
    for a, order in zip(arrays, orders):
        r = ndimage.zoom(a, factors, order=order, mode="nearest", grid_mode=True)
        out.append(r[tuple(slice(0, c) for c in crop)])
    return out


def geometric(arrays, cfg: AugmentConfig, rng: np.random.Generator):
    """Same random flips and x/y rotations for all arrays (spatial axes last)."""
    ndim = arrays[0].ndim
    if cfg.flip:
        for axis in range(ndim):
            if rng.random() < 0.5:
                arrays = [np.flip(a, axis) for a in arrays]
    if cfg.rot90:
        square = arrays[0].shape[-1] == arrays[0].shape[-2]
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        if k:
            arrays = [np.rot90(a, k, axes=(ndim - 2, ndim - 1)) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def intensity(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Gamma on the clipped [0, 1] range, then scale, shift and noise."""
    if cfg.gamma_range > 0:
        gamma = np.exp(rng.uniform(np.log(1 - cfg.gamma_range), np.log(1 + cfg.gamma_range)))
        image = np.clip(image, 0, None) ** gamma
    image = image * rng.uniform(1 - cfg.intensity_scale, 1 + cfg.intensity_scale)
    image = image + rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)
    if cfg.noise_std > 0:
        image = image + rng.normal(0, rng.uniform(0, cfg.noise_std), image.shape).astype(np.float32)
    return image.astype(np.float32)
