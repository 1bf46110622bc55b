"""Augmentation: each transform does what it says, targets move with the image, the default recipe is unchanged."""
from dataclasses import fields, replace

import numpy as np
import pytest
from scipy import ndimage

from dataset3D import AugmentConfig, CropDataset, Volume, marker_core, three_class
from dataset3D.augment import (additive_noise, blur, contrast, gamma_transform, gradient, intensity, low_resolution,
                               multiplicative_noise, resize, rotated_size, rotation_angle)

#: Every transform off: one field at a time is switched on below.
OFF = AugmentConfig(flip=False, rot90=False, scale_prob=0.0, gamma_range=0.0, intensity_scale=0.0, intensity_shift=0.0,
                    noise_std=0.0)


def only(**changes) -> AugmentConfig:
    return replace(OFF, **changes)


def hf_energy(a: np.ndarray) -> float:
    """Mean squared difference of neighbouring voxels, summed over the axes: the high-frequency energy."""
    return float(sum(np.mean(np.diff(a.astype(np.float64), axis=k) ** 2) for k in range(a.ndim)))


def noise_image(seed=0, shape=(16, 32, 32)):
    return np.random.default_rng(seed).normal(0.5, 0.2, shape).astype(np.float32)


def old_intensity(image, cfg, rng):
    """The intensity augmentation as it was before the nnU-Net transforms: the default must keep making this."""
    if cfg.gamma_range > 0:
        gamma = np.exp(rng.uniform(np.log(1 - cfg.gamma_range), np.log(1 + cfg.gamma_range)))
        image = np.clip(image, 0, None) ** gamma
    image = image * rng.uniform(1 - cfg.intensity_scale, 1 + cfg.intensity_scale)
    image = image + rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)
    if cfg.noise_std > 0:
        image = image + rng.normal(0, rng.uniform(0, cfg.noise_std), image.shape).astype(np.float32)
    return image.astype(np.float32)


def test_default_recipe_draws_and_makes_exactly_what_it_did_before():
    cfg = AugmentConfig()
    for seed in range(20):
        image = noise_image(seed)
        new_rng, old_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        assert rotation_angle(cfg, new_rng) == 0.0  # no rotation, and no number drawn for it
        np.testing.assert_array_equal(intensity(image, cfg, new_rng), old_intensity(image, cfg, old_rng))
        assert new_rng.bit_generator.state == old_rng.bit_generator.state
    assert rotated_size((8, 16, 16), 0.0) == (8, 16, 16)
    strong = AugmentConfig.strong()
    on = [f.name for f in fields(AugmentConfig) if f.name.endswith("_prob") and getattr(cfg, f.name) == 0]
    assert on and all(getattr(strong, name) > 0 for name in on)  # strong switches on every transform the default lacks


def test_blur_lowers_high_frequency_energy_along_the_blurred_axes():
    image = noise_image()
    for seed in range(5):
        out = intensity(image, only(blur_prob=1.0), np.random.default_rng(seed))
        assert hf_energy(out) < 0.3 * hf_energy(image)
        assert out.mean() == pytest.approx(image.mean(), abs=1e-3)
    along_x = blur(image, (0.0, 0.0, 1.5))  # anisotropic, x only: noise stays rough along z and y, smooth along x
    energy = [np.mean(np.diff(along_x, axis=k) ** 2) for k in range(3)]
    assert energy[2] < 0.2 * energy[0] and energy[0] == pytest.approx(energy[1], rel=0.1)


def test_brightness_scales_mean_and_std_alike_and_contrast_keeps_the_mean():
    image = np.random.default_rng(1).uniform(0.1, 0.9, (8, 16, 16)).astype(np.float32)
    factors = []
    for seed in range(20):
        out = intensity(image, only(brightness_prob=1.0, brightness_range=(0.75, 1.25)), np.random.default_rng(seed))
        f = out.mean() / image.mean()
        assert 0.75 <= f <= 1.25 and out.std() / image.std() == pytest.approx(f, rel=1e-4)
        factors.append(f)
        out = intensity(image, only(contrast_prob=1.0, contrast_range=(0.75, 1.25)), np.random.default_rng(seed))
        assert out.mean() == pytest.approx(image.mean(), abs=1e-5)
        assert 0.75 - 1e-5 <= out.std() / image.std() <= 1.25 + 1e-5
    assert np.ptp(factors) > 0.2  # drawn anew each time
    np.testing.assert_allclose(contrast(image, 0.5).std(), 0.5 * image.std(), rtol=1e-5)


def test_gamma_and_its_inversion():
    x = np.linspace(0, 1, 101, dtype=np.float64)
    np.testing.assert_allclose(gamma_transform(x, 2.0), x ** 2)
    inverted = gamma_transform(x, 2.0, invert=True)
    np.testing.assert_allclose(inverted, 1 - (1 - x) ** 2)
    assert inverted[0] == 0 and inverted[-1] == 1 and (inverted[1:-1] > x[1:-1]).all()  # brightens where x**2 darkens
    ramp = np.linspace(0.05, 0.95, 64, dtype=np.float32).reshape(4, 4, 4)
    for invert in (False, True):
        cfg = only(gamma_range=0.3, gamma_invert_prob=1.0 if invert else 0.0)
        out = intensity(ramp, cfg, np.random.default_rng(3)).astype(np.float64)
        exponent = np.log(1 - out) / np.log(1 - ramp) if invert else np.log(out) / np.log(ramp)
        assert np.ptp(exponent) < 1e-3 and 0.7 <= exponent.mean() <= 1.3  # one gamma for all voxels, in range
        assert abs(exponent.mean() - 1) > 1e-3
    np.testing.assert_array_equal(intensity(ramp, only(gamma_range=0.3, gamma_prob=0.0), np.random.default_rng(3)), ramp)


def test_noise_raises_the_std_of_a_flat_image_by_its_level():
    flat = np.full((16, 64, 64), 0.5, np.float32)
    rng = np.random.default_rng(0)
    assert additive_noise(flat, 0.07, rng).std() == pytest.approx(0.07, rel=0.03)
    assert multiplicative_noise(flat, 0.1, rng).std() == pytest.approx(0.05, rel=0.03)  # grows with the signal
    for name, cfg in (("additive", only(noise_std=0.1)),
                      ("multiplicative", only(multiplicative_noise_prob=1.0, multiplicative_noise_std=0.2))):
        stds = [intensity(flat, cfg, np.random.default_rng(s)).std() for s in range(30)]
        assert max(stds) <= 0.1 * 1.05 and min(stds) < 0.03 and max(stds) > 0.07, (name, stds)  # a random level
    assert intensity(flat, only(noise_std=0.1, noise_prob=0.0), np.random.default_rng(0)).std() == 0


def test_low_resolution_keeps_shape_and_place_but_loses_high_frequencies():
    image = noise_image(shape=(16, 32, 32))
    image[4:12, 8:20, 10:24] += 1.0  # a bright box
    out = low_resolution(image, (0.5, 0.5, 0.5))
    assert out.shape == image.shape and out.dtype == image.dtype
    assert hf_energy(out) < 0.6 * hf_energy(image)
    box = lambda a: np.array(ndimage.center_of_mass(a > 1.0))  # noqa: E731
    assert np.abs(box(out) - box(image)).max() < 1.0 and out.mean() == pytest.approx(image.mean(), rel=0.05)
    np.testing.assert_array_equal(low_resolution(image, (1.0, 1.0, 1.0)), image)
    for seed in range(5):
        drawn = intensity(image, only(lowres_prob=1.0, lowres_zoom=(0.5, 0.6)), np.random.default_rng(seed))
        assert drawn.shape == image.shape and hf_energy(drawn) < 0.7 * hf_energy(image)


def test_gradient_is_a_smooth_monotone_ramp_along_its_direction():
    ones = np.ones((8, 16, 16), np.float32)
    ramp = gradient(ones, (0.0, 0.0, 1.0), 0.3)
    assert ramp[..., 0] == pytest.approx(0.7) and ramp[..., -1] == pytest.approx(1.3)
    assert (np.diff(ramp, axis=2) > 0).all() and np.ptp(ramp, axis=(0, 1)).max() < 1e-6  # along x only
    for seed in range(10):
        field = intensity(ones, only(gradient_prob=1.0, gradient_strength=0.3), np.random.default_rng(seed))
        assert 0.7 - 1e-6 <= field.min() and field.max() <= 1.3 + 1e-6
        for axis in range(3):
            steps = np.diff(field.astype(np.float64), axis=axis)
            assert (steps >= -1e-6).all() or (steps <= 1e-6).all()                  # monotone along every axis
            assert np.abs(np.diff(steps, axis=axis)).max() < 1e-5                    # and linear: smooth
        assert np.ptp(field) > 0 or seed  # (a strength of 0 may be drawn, but not every time)


def test_rotation_about_z_turns_image_and_targets_alike():
    """A box off-centre, turned by 12 degrees: the image's, the classes' and the marker's centroids land where
    the rotation puts the box's centre; z is untouched."""
    crop, angle = (8, 40, 40), np.deg2rad(12.0)
    region = rotated_size(crop, angle)
    labels = np.zeros(region, np.uint16)
    lo = np.array([2, 10, 22]) + (np.array(region) - crop) // 2
    labels[lo[0]:lo[0] + 4, lo[1]:lo[1] + 8, lo[2]:lo[2] + 10] = 1
    classes, marker = three_class(labels), marker_core(labels)
    image = classes.astype(np.float32)
    out = resize([image, classes, marker], crop, (1, 0, 0), source=crop, angle=angle)
    assert [a.shape for a in out] == [crop] * 3 and out[1].dtype == classes.dtype and out[2].dtype == marker.dtype
    assert set(np.unique(out[1])) <= {0, 1, 2} and set(np.unique(out[2])) <= {0, 1}
    centre_in = np.array(ndimage.center_of_mass(labels > 0)) - (np.array(region) - 1) / 2
    c, s = np.cos(angle), np.sin(angle)
    # output -> input is the turn [[c, -s], [s, c]]: input -> output is its transpose
    expected = np.array([centre_in[0], c * centre_in[1] + s * centre_in[2], -s * centre_in[1] + c * centre_in[2]])
    expected += (np.array(crop) - 1) / 2
    for a in out:
        got = np.array(ndimage.center_of_mass(a > 0.5))
        assert np.abs(got - expected).max() < 0.6, (got, expected)
    assert np.abs(np.array(ndimage.center_of_mass(out[2])) - expected).max() < 0.6
    unturned = np.array(ndimage.center_of_mass(resize([image], crop, (1,), source=crop, angle=1e-9)[0] > 0.5))
    assert np.linalg.norm(unturned - expected) > 1.5  # the turn really moved it (by about 1.9 voxels)


def crops_of_encoded_volume(cfg, n=24, crop=(8, 24, 24)):
    """Crops of a volume whose image encodes its targets: image = classes + 3 * marker."""
    lab = np.zeros((12, 48, 48), np.uint16)
    lab[2:10, 5:22, 6:24] = 1
    lab[2:10, 22:40, 10:30] = 2   # touching the first
    lab[3:9, 30:44, 34:46] = 3
    classes, marker = three_class(lab), marker_core(lab)
    code = (classes + 3 * marker).astype(np.float16)
    ds = CropDataset([Volume(code, classes, marker, np.flatnonzero(lab))], crop, n, cfg, seed=2)
    return [ds[i] for i in range(n)]


def test_every_geometric_transform_moves_the_targets_exactly_as_the_image():
    cfg = replace(OFF, flip=True, rot90=True, scale_prob=1.0, scale_range=0.3, rotate_prob=1.0, rotate_degrees=15.0)
    fractional, checked = 0, np.zeros(6, int)
    crops = crops_of_encoded_volume(cfg)
    for i, (image, classes, marker) in enumerate(crops):
        image, classes, marker = image[0].numpy().astype(np.float64), classes.numpy(), marker[0].numpy()
        assert set(np.unique(classes)) <= {0, 1, 2} and set(np.unique(marker)) <= {0.0, 1.0}
        # where the image is one code all around (no blend of neighbours), the nearest-neighbour targets carry it
        code = np.rint(image)
        same = np.abs(image - code) < 1e-3
        for axis in range(3):
            for shift in (1, -1):
                same &= np.roll(code, shift, axis) == code
        same[[0, -1]] = same[:, [0, -1]] = same[..., [0, -1]] = False
        assert same.mean() > 0.1
        np.testing.assert_array_equal(classes[same], code[same] % 3)
        np.testing.assert_array_equal(marker[same], code[same] // 3)
        if (code[same] > 0).sum() > 50:  # the targets of another crop (another transform) would not fit
            assert not np.array_equal(crops[i - 1][1].numpy()[same], code[same] % 3)
        checked += np.bincount(code[same].astype(int), minlength=6)
        fractional += (np.abs(image - code) > 1e-3).sum()
    assert checked[0] > 5000 and checked[5] > 2000  # background and marker cores (interior, marker 1) checked
    assert fractional > 0  # the image was interpolated: rotations and scalings did happen


def test_strong_recipe_makes_valid_crops_in_3d_and_2d():
    for crop in ((8, 24, 24), (24, 24)):
        if len(crop) == 2:
            lab = np.zeros((48, 48), np.uint16)
            lab[5:22, 6:24], lab[22:40, 10:30] = 1, 2
            classes, marker = three_class(lab), marker_core(lab)
            ds = CropDataset([Volume((lab > 0).astype(np.float16), classes, marker, np.flatnonzero(lab))], crop, 16,
                             AugmentConfig.strong(), seed=0)
            crops = [ds[i] for i in range(16)]
        else:
            crops = crops_of_encoded_volume(AugmentConfig.strong(), n=16, crop=crop)
        for image, classes, marker in crops:
            assert tuple(image.shape) == (1, *crop) and tuple(classes.shape) == crop and tuple(marker.shape) == (1, *crop)
            assert np.isfinite(image.numpy()).all()
            assert set(np.unique(classes.numpy())) <= {0, 1, 2} and set(np.unique(marker.numpy())) <= {0.0, 1.0}
