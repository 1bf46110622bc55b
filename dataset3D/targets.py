"""Training targets from instance labels: three classes and marker (seed) maps.

Classes: 0 background, 1 boundary (the inner one-voxel rim of each nucleus, which also separates
touching nuclei), 2 interior (the rest of the nucleus).

Marker: the distance-transform core of each nucleus: voxels whose distance to the nucleus surface
(in micrometres, so anisotropic z counts right) is at least `core_fraction` of that nucleus's largest
distance. Cores of touching nuclei never touch, so connected components of the predicted marker map
seed exactly one watershed basin per nucleus; unlike a fixed erosion, the core scales with nucleus size.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

BACKGROUND, BOUNDARY, INTERIOR = 0, 1, 2


def three_class(labels: np.ndarray) -> np.ndarray:
    """uint8 map: 0 background, 1 inner boundary of each instance, 2 interior."""
    classes = (labels > 0).astype(np.uint8) * INTERIOR
    classes[find_boundaries(labels, connectivity=1, mode="inner")] = BOUNDARY
    return classes


def marker_core(labels: np.ndarray, spacing=None, core_fraction: float = 0.35) -> np.ndarray:
    """uint8 map, 1 on the distance-transform core of each instance (see module docstring).

    spacing: voxel size per array axis (z, y, x), in any unit.
    """
    if not labels.any():
        return np.zeros(labels.shape, np.uint8)
    inside = (labels > 0) & ~find_boundaries(labels, connectivity=1, mode="inner")
    dist = ndimage.distance_transform_edt(inside, sampling=spacing)
    n = int(labels.max())
    peak = np.zeros(n + 1, np.float64)
    peak[1:] = ndimage.maximum(dist, labels, index=np.arange(1, n + 1))
    return ((dist >= core_fraction * peak[labels]) & (dist > 0)).astype(np.uint8)


def normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Per-volume percentile normalisation to about [0, 1] (float32): robust to hot pixels and to
    the brightness differences between sequences and microscopes."""
    image = np.asarray(image, np.float32)
    lo, hi = (float(v) for v in np.percentile(image, [low, high]))  # Python floats keep float32
    return (image - lo) / max(hi - lo, 1e-6)
