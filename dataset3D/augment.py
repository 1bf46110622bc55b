"""Augmentation of one training crop (numpy/scipy, in the data-loader workers).

Geometry is applied alike to the image (linear interpolation) and its targets (nearest, so they stay
integer classes): flips, 90 degree rotations in x/y, scaling, small rotations about z. Intensity only to
the image: a smooth multiplicative gradient, blur, simulated low resolution, gamma (optionally of the
inverted image), scale and shift, brightness and contrast, additive and multiplicative noise.

`AugmentConfig()` is the default recipe; every transform added after it has probability 0 there and
draws no random number, so the default crops stay exactly what they were. `AugmentConfig.strong()`
is nnU-Net's default pipeline at its probabilities and ranges, for data unlike the training set
(dimmer, blurrier, unevenly lit). Crops are small, so each transform is one scipy.ndimage call or less.
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
    # Added later; off (or, for the two probabilities of 1, as before) by default.
    rotate_prob: float = 0.0          # chance of a rotation about z (in the y/x plane), image and targets alike
    rotate_degrees: float = 15.0      # its angle, drawn from [-d, d]
    gamma_prob: float = 1.0           # chance of the gamma (1: always, drawing nothing)
    gamma_invert_prob: float = 0.0    # chance that the gamma is applied to the inverted image (1 - x, then back)
    noise_prob: float = 1.0           # chance of the additive noise (1: always, drawing nothing)
    multiplicative_noise_prob: float = 0.0   # chance of multiplying by 1 + N(0, s), s drawn from [0, std]
    multiplicative_noise_std: float = 0.1
    blur_prob: float = 0.0            # chance of a Gaussian blur ...
    blur_sigma: tuple = (0.5, 1.5)    # ... its sigma in voxels, drawn per axis from this range (anisotropic)
    brightness_prob: float = 0.0      # chance of multiplying by a factor drawn from brightness_range
    brightness_range: tuple = (0.75, 1.25)
    contrast_prob: float = 0.0        # chance of scaling the deviations from the mean by a factor from contrast_range
    contrast_range: tuple = (0.75, 1.25)
    lowres_prob: float = 0.0          # chance of down-sampling (nearest) and up-sampling (linear) ...
    lowres_zoom: tuple = (0.5, 1.0)   # ... by a zoom drawn per axis from this range
    gradient_prob: float = 0.0        # chance of a smooth multiplicative ramp across the crop ...
    gradient_strength: float = 0.3    # ... from 1 - s to 1 + s (s drawn from [0, strength]), along a random direction

    @classmethod
    def strong(cls) -> "AugmentConfig":
        """nnU-Net's default intensity and spatial augmentation at its probabilities, sized for small crops:
        its probabilistic gamma, brightness, contrast and noise replace the default's always-on gamma, scale
        and noise (the small shift stays); blur, low resolution, a gradient and rotations are added."""
        return cls(scale_prob=0.2, scale_range=0.3, rotate_prob=0.2, rotate_degrees=15.0,
                   gamma_prob=0.3, gamma_range=0.3, gamma_invert_prob=0.1, intensity_scale=0.0,
                   noise_prob=0.1, noise_std=0.1, multiplicative_noise_prob=0.1, multiplicative_noise_std=0.1,
                   blur_prob=0.2, blur_sigma=(0.5, 1.5), brightness_prob=0.15, brightness_range=(0.75, 1.25),
                   contrast_prob=0.15, contrast_range=(0.75, 1.25), lowres_prob=0.25, lowres_zoom=(0.5, 1.0),
                   gradient_prob=0.2, gradient_strength=0.3)


def _chance(p: float, rng: np.random.Generator) -> bool:
    """True with probability p; p <= 0 and p >= 1 decide without drawing, keeping the random stream of a
    config that does not use the transform."""
    return p >= 1 or (p > 0 and rng.random() < p)


# ----------------------------------------------------------------------------- geometry
def source_size(crop, cfg: AugmentConfig, rng: np.random.Generator):
    """Size of the region to cut before scaling it to `crop` (larger region = zoom out)."""
    if cfg.scale_prob > 0 and rng.random() < cfg.scale_prob:
        s = rng.uniform(1 - cfg.scale_range, 1 + cfg.scale_range)
        return tuple(max(2, int(round(c * s))) for c in crop)
    return tuple(crop)


def rotation_angle(cfg: AugmentConfig, rng: np.random.Generator) -> float:
    """Angle in radians of the rotation about z, or 0.0 (nothing drawn where rotate_prob is 0)."""
    if _chance(cfg.rotate_prob, rng):
        return float(np.deg2rad(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees)))
    return 0.0


def rotated_size(size, angle: float):
    """The region that holds a `size` region turned by `angle` in its last two axes (plus a voxel for the
    interpolation), so a rotated crop never reaches past what was cut."""
    if not angle:
        return tuple(size)
    c, s = abs(np.cos(angle)), abs(np.sin(angle))
    h, w = size[-2:]
    return (*size[:-2], int(np.ceil(c * h + s * w)) + 1, int(np.ceil(s * h + c * w)) + 1)


def resize(arrays, crop, orders, source=None, angle: float = 0.0):
    """Resample arrays (same shape) to `crop`, each with its interpolation order.

    With an angle, the arrays are the `rotated_size(source, angle)` region and the centred `source` region
    turned by `angle` about z (y/x voxels taken as square, as in CTC data) is scaled to `crop`; without, the
    whole arrays are scaled to `crop` (grid-mode zoom: voxel edges map onto voxel edges).
    """
    if not angle:
        factors = [c / s for c, s in zip(crop, arrays[0].shape)]
        if all(f == 1 for f in factors):
            return arrays
        out = []
        for a, order in zip(arrays, orders):
            r = ndimage.zoom(a, factors, order=order, mode="nearest", grid_mode=True)
            out.append(r[tuple(slice(0, c) for c in crop)])
        return out
    ndim = len(crop)
    source = tuple(crop) if source is None else tuple(source)
    turn = np.eye(ndim)
    c, s = np.cos(angle), np.sin(angle)
    turn[-2:, -2:] = [[c, -s], [s, c]]
    matrix = turn @ np.diag([a / b for a, b in zip(source, crop)])   # output voxel -> input voxel, about the centres
    offset = (np.array(arrays[0].shape) - 1) / 2 - matrix @ ((np.array(crop) - 1) / 2)
    return [ndimage.affine_transform(a, matrix, offset, output_shape=tuple(crop), order=order, mode="nearest")
            for a, order in zip(arrays, orders)]


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


# ----------------------------------------------------------------------------- intensity transforms
def gradient(image: np.ndarray, direction, strength: float) -> np.ndarray:
    """Multiply by a linear ramp from 1 - strength to 1 + strength across the crop along `direction`
    (a vector in array-axis order; illumination falling off with depth, uneven lighting)."""
    direction = np.asarray(direction, float)
    grids = np.ix_(*(np.linspace(-1, 1, n) if n > 1 else np.zeros(1) for n in image.shape))
    ramp = sum(g * d for g, d in zip(grids, direction)) / max(np.abs(direction).sum(), 1e-12)
    return (image * (1 + strength * ramp)).astype(np.float32)


def blur(image: np.ndarray, sigma) -> np.ndarray:
    """Gaussian blur with one sigma (voxels) per axis: a wider, anisotropic PSF."""
    return ndimage.gaussian_filter(image, sigma, mode="nearest")


def low_resolution(image: np.ndarray, zoom) -> np.ndarray:
    """Down-sample by `zoom` (< 1, per axis; nearest) and back up to the same shape (linear): coarser sampling."""
    small = ndimage.zoom(image, zoom, order=0, mode="nearest", grid_mode=True)
    up = ndimage.zoom(small, [n / m for n, m in zip(image.shape, small.shape)], order=1, mode="nearest", grid_mode=True)
    return up[tuple(slice(0, n) for n in image.shape)]


def gamma_transform(image: np.ndarray, gamma: float, invert: bool = False) -> np.ndarray:
    """x ** gamma on the non-negative part; inverted, hi - (hi - x) ** gamma rescaled to [0, hi] (hi = max(1, max x)),
    which brightens where the plain gamma darkens. Both keep 0 (and 1, or hi) in place."""
    image = np.clip(image, 0, None)
    if not invert:
        return image ** gamma
    hi = max(1.0, float(image.max()))
    return hi * (1 - (1 - image / hi) ** gamma)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale the deviations from the mean by `factor`: the mean stays, the std is multiplied by it."""
    mean = image.mean()
    return (image - mean) * factor + mean


def additive_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise of the given std."""
    return image + rng.normal(0, std, image.shape).astype(np.float32)


def multiplicative_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Multiply every voxel by 1 + N(0, std): noise that grows with the signal."""
    return image * (1 + rng.normal(0, std, image.shape).astype(np.float32))


def intensity(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """The image transforms in the order a microscope would make them: gradient, blur, low resolution, then
    gamma on the clipped [0, 1] range, scale, shift, brightness, contrast, additive and multiplicative noise."""
    if _chance(cfg.gradient_prob, rng):
        image = gradient(image, rng.standard_normal(image.ndim), rng.uniform(0, cfg.gradient_strength))
    if _chance(cfg.blur_prob, rng):
        image = blur(image, rng.uniform(*cfg.blur_sigma, image.ndim))
    if _chance(cfg.lowres_prob, rng):
        image = low_resolution(image, rng.uniform(*cfg.lowres_zoom, image.ndim))
    if cfg.gamma_range > 0 and _chance(cfg.gamma_prob, rng):
        gamma = np.exp(rng.uniform(np.log(1 - cfg.gamma_range), np.log(1 + cfg.gamma_range)))
        image = gamma_transform(image, gamma, invert=_chance(cfg.gamma_invert_prob, rng))
    image = image * rng.uniform(1 - cfg.intensity_scale, 1 + cfg.intensity_scale)
    image = image + rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)
    if _chance(cfg.brightness_prob, rng):
        image = image * rng.uniform(*cfg.brightness_range)
    if _chance(cfg.contrast_prob, rng):
        image = contrast(image, rng.uniform(*cfg.contrast_range))
    if cfg.noise_std > 0 and _chance(cfg.noise_prob, rng):
        image = additive_noise(image, rng.uniform(0, cfg.noise_std), rng)
    if _chance(cfg.multiplicative_noise_prob, rng):
        image = multiplicative_noise(image, rng.uniform(0, cfg.multiplicative_noise_std), rng)
    return image.astype(np.float32)
