"""Resampling between the native and the working grid: exact shapes, objects kept, images and maps linear."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import plan
from dataset.synthetic import generate_sequence, preset_config
from dataset3D import resample_image, resample_labels, resample_probabilities


def jaccard_per_object(a, b):
    return {int(v): ((a == v) & (b == v)).sum() / ((a == v) | (b == v)).sum() for v in np.unique(a)[1:]}


def equivalent_diameter(labels, spacing):
    counts = np.bincount(labels.ravel())[1:]
    counts = counts[counts > 0]
    return (6 * counts * np.prod(spacing) / np.pi) ** (1 / labels.ndim) if labels.ndim == 3 else np.sqrt(4 * counts * np.prod(spacing) / np.pi)


@pytest.fixture(scope="module")
def sim_labels():
    """One frame of SIM+-scale nuclei (about 32 x 50 x 50 voxels) in a smaller volume."""
    cfg = replace(preset_config("sim+"), shape=(59, 192, 176), frames=1)
    return generate_sequence(cfg, seed=4)[1][0]


def test_round_trip_through_the_working_grid_keeps_every_object(sim_labels):
    spacing = (0.2, 0.125, 0.125)
    d = equivalent_diameter(sim_labels, spacing)
    fp = plan.Fingerprint(ndim=3, shape=list(sim_labels.shape), frames=1, voxel_size=[0.125, 0.125, 0.2],
                          voxel_size_source="given", objects=len(d), sizes_from="masks", extent_vox={}, extent_um={},
                          diameter_um={"p50": float(np.median(d))}, diameter_vox={}, volume_um3={"p5": 50.0},
                          foreground_fraction=0.1, intensity_inside={}, intensity_outside={})
    p = plan.make_plan(fp, (8, 16, 16))
    working = p.working_shape(sim_labels.shape)
    assert p.resamples and working[1] < sim_labels.shape[1] / 1.8  # about 24 of the 50 voxels
    down = resample_labels(sim_labels, working)
    back = resample_labels(down, sim_labels.shape)
    assert down.shape == working and back.shape == sim_labels.shape and back.dtype == sim_labels.dtype
    assert set(np.unique(back)) == set(np.unique(sim_labels)) == set(np.unique(down))
    j = jaccard_per_object(sim_labels, back)
    sizes = dict(zip(np.unique(sim_labels)[1:].tolist(), d))
    # objects of realistic size (at least 0.8 of the median diameter): Jaccard >= 0.95 each; the smaller
    # ones (daughters, nuclei cut by the border) >= 0.9; 0.96 on average
    assert all(v >= 0.95 for k, v in j.items() if sizes[k] >= 0.8 * np.median(d)), j
    assert min(j.values()) >= 0.9 and np.mean(list(j.values())) >= 0.96
    nearest = resample_labels(resample_labels(sim_labels, working, "nearest"), sim_labels.shape, "nearest")
    assert np.mean(list(jaccard_per_object(sim_labels, nearest).values())) < np.mean(list(j.values()))


@pytest.mark.parametrize("native,working", [((17, 53, 61), (9, 27, 31)), ((5, 33, 33), (5, 64, 17)), ((53, 61), (27, 121))])
def test_shapes_are_exact_for_odd_sizes(native, working):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, native).astype(np.uint16)
    labels = np.zeros(native, np.uint16)
    labels[tuple(slice(n // 4, n // 4 + max(n // 3, 1)) for n in native)] = 7
    labels[tuple(slice(n // 2, n // 2 + max(n // 3, 1)) for n in native)] = 3
    for mode in ("safe", "nearest"):
        out = resample_labels(labels, working, mode)
        assert out.shape == working and out.dtype == np.uint16 and set(np.unique(out)) == {0, 3, 7}
        assert resample_labels(out, native, mode).shape == native
    w = resample_image(image, working)
    assert w.shape == working and w.dtype == np.float32
    assert resample_image(w, native).shape == native
    probs = rng.random((3, *working)).astype(np.float32)
    assert resample_probabilities(probs, native).shape == (3, *native)
    assert resample_probabilities(torch.from_numpy(probs), native).shape == (3, *native)


def test_images_and_maps_are_linear_and_unchanged_at_the_same_shape():
    z, y, x = np.meshgrid(np.arange(20), np.arange(40), np.arange(30), indexing="ij")
    ramp = (2.0 * z + 0.5 * y - x).astype(np.float32)
    up = resample_image(ramp, (40, 80, 60))
    inner = (slice(2, -2),) * 3  # a linear ramp stays linear away from the clamped borders
    zz, yy, xx = np.meshgrid(*(((np.arange(m) + 0.5) * n / m - 0.5) for n, m in zip(ramp.shape, (40, 80, 60))), indexing="ij")
    np.testing.assert_allclose(up[inner], (2 * zz + 0.5 * yy - xx)[inner], atol=1e-4)
    noise = np.random.default_rng(1).normal(100, 10, (32, 128, 128)).astype(np.float32)
    down = resample_image(noise, (16, 62, 62))
    assert abs(down.mean() - noise.mean()) < 0.1 and down.std() < noise.std() / 2  # box average: noise averaged down
    assert np.array_equal(resample_image(noise, noise.shape), noise)
    probs = np.stack([noise, noise / 2])
    assert np.array_equal(resample_probabilities(probs, noise.shape[0:]), probs)
    p = resample_probabilities(np.full((2, 8, 8), 0.25, np.float32), (13, 17))
    np.testing.assert_allclose(p, 0.25)


def test_2d_round_trip():
    labels = generate_sequence(replace(preset_config("sim+"), shape=(200, 180), frames=1), seed=2)[1][0]
    working = (96, 86)
    back = resample_labels(resample_labels(labels, working), labels.shape)
    j = jaccard_per_object(labels, back)
    assert back.shape == labels.shape and set(j) == set(np.unique(labels)[1:].tolist())
    assert min(j.values()) >= 0.9 and np.mean(list(j.values())) >= 0.95


def test_tiny_objects_are_kept_and_touching_objects_share_a_face():
    labels = np.zeros((16, 64, 64), np.uint16)
    labels[8, 30, 30] = 5                       # one voxel: would vanish at a quarter of the size
    labels[2:10, 5:25, 5:15] = 1
    labels[2:10, 5:25, 15:25] = 2               # touches 1
    down = resample_labels(labels, (4, 16, 16))
    assert set(np.unique(down)) == {0, 1, 2, 5}
    up = resample_labels(labels, (32, 128, 128))
    face = (up[:, :, 1:] == 1) & (up[:, :, :-1] == 2) | (up[:, :, 1:] == 2) & (up[:, :, :-1] == 1)
    assert face.any() and set(np.unique(up)) == {0, 1, 2, 5}


def test_bad_input_raises():
    with pytest.raises(ValueError, match="shape"):
        resample_image(np.zeros((4, 4, 4)), (4, 4))
    with pytest.raises(ValueError, match="integers"):
        resample_labels(np.zeros((4, 4)), (8, 8))
    with pytest.raises(ValueError, match="mode"):
        resample_labels(np.zeros((4, 4), np.uint8), (8, 8), mode="cubic")
    with pytest.raises(ValueError, match="C, \\*S"):
        resample_probabilities(np.zeros((4, 4)), (8,))
