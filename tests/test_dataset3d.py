"""Training data and loss: targets against hand-counted oracles, crops, augmentation, the loss terms."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from dataset3D import AugmentConfig, CropDataset, Volume, marker_core, normalize, three_class
from dataset3D.crops import cut
from losses import LossWeights, combined_loss, soft_dice_loss


def two_touching_boxes():
    lab = np.zeros((10, 30, 30), np.uint16)
    lab[2:8, 5:15, 5:15] = 1
    lab[2:8, 15:25, 5:15] = 2  # shares the face y=14|15 with box 1
    return lab


def test_three_class_counts_match_hand_computed_rims():
    classes = three_class(two_touching_boxes())
    # each 6x10x10 box: interior 4x8x8 = 256, inner rim 600 - 256 = 344; the shared face is a rim of both
    assert np.bincount(classes.ravel(), minlength=3).tolist() == [9000 - 1200, 2 * 344, 2 * 256]
    assert classes[4, 14, 8] == 1 and classes[4, 15, 8] == 1  # both sides of the contact are boundary


def test_marker_core_is_one_central_blob_per_nucleus_and_cores_do_not_touch():
    lab = two_touching_boxes()
    core = marker_core(lab, spacing=(0.2, 0.125, 0.125))
    comps, n = ndimage.label(core)
    assert n == 2
    assert {int(np.unique(lab[comps == i])[0]) for i in (1, 2)} == {1, 2}
    assert core[5, 10, 10] and core[5, 20, 10]  # near the centres
    assert not core[lab == 0].any()


def test_marker_core_of_a_ball_is_a_concentric_ball():
    zz, yy, xx = np.mgrid[:41, :41, :41]
    r = np.sqrt((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2)
    lab = (r <= 15).astype(np.uint16)
    core = marker_core(lab, core_fraction=0.5).astype(bool)
    # distance to the surface (inside the 1-voxel rim) is about 14 - r: core is r <= ~7
    assert core[r <= 6].all() and not core[r >= 8.5].any()


def test_normalize_maps_percentiles_to_zero_and_one():
    rng = np.random.default_rng(0)
    image = rng.integers(100, 5000, size=(8, 32, 32)).astype(np.uint16)
    out = normalize(image)
    assert out.dtype == np.float32
    assert np.percentile(out, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert np.percentile(out, 99.8) == pytest.approx(1.0, abs=1e-6)


def volume(shape=(10, 30, 30)):
    lab = two_touching_boxes()[: shape[0], : shape[1], : shape[2]]
    image = (lab > 0).astype(np.float16)
    return Volume(image, three_class(lab), marker_core(lab), np.flatnonzero(lab))


def test_crops_are_deterministic_per_seed_epoch_and_index():
    ds = CropDataset([volume()], (8, 16, 16), 8, AugmentConfig(), seed=1)
    a, b = ds[3], ds[3]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ds.set_epoch(1)
    c = ds[3]
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (1, 8, 16, 16) and a[1].shape == (8, 16, 16) and a[1].dtype == torch.int64
    assert a[2].shape == (1, 8, 16, 16) and a[2].dtype == torch.float32


def test_crop_larger_than_the_volume_is_padded_with_background():
    vol = volume()
    image, classes, marker = cut([vol.image, vol.classes, vol.marker], (16, 40, 40), None, np.random.default_rng(0))
    assert image.shape == classes.shape == marker.shape == (16, 40, 40)
    assert classes.sum() == vol.classes.sum() and marker.sum() == vol.marker.sum()  # all of it, centred, padded


def test_crops_are_biased_toward_nuclei():
    lab = np.zeros((16, 128, 128), np.uint16)
    lab[4:12, 100:120, 100:120] = 1  # one small nucleus in a corner
    vol = Volume((lab > 0).astype(np.float16), three_class(lab), marker_core(lab), np.flatnonzero(lab))
    with_fg = [CropDataset([vol], (8, 32, 32), 200, None, fg_fraction=f, seed=0) for f in (0.0, 1.0)]
    share = [np.mean([bool(ds[i][1].any()) for i in range(200)]) for ds in with_fg]
    assert share[1] == 1.0 and share[0] < 0.5


def test_geometric_augmentation_moves_image_and_targets_alike():
    no_intensity = AugmentConfig(scale_prob=0.0, gamma_range=0.0, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)
    vol = volume()
    vol = Volume(vol.classes.astype(np.float16), vol.classes, vol.marker, vol.foreground)  # image := classes
    ds = CropDataset([vol], (8, 16, 16), 32, no_intensity, seed=0)
    for i in range(32):
        image, classes, _ = ds[i]
        assert torch.equal(image[0].round().long(), classes)


def test_loss_is_near_zero_for_perfect_logits_and_large_for_wrong_ones():
    classes = torch.from_numpy(three_class(two_touching_boxes()).astype(np.int64))[None]
    marker = torch.from_numpy(marker_core(two_touching_boxes()).astype(np.float32))[None, None]
    perfect_seg = torch.nn.functional.one_hot(classes, 3).movedim(-1, 1).float() * 40 - 20
    perfect_marker = marker * 40 - 20
    loss, parts = combined_loss(perfect_seg, perfect_marker, classes, marker, LossWeights())
    assert loss.item() < 1e-3 and parts.shape == (4,)
    wrong, _ = combined_loss(-perfect_seg, -perfect_marker, classes, marker, LossWeights())
    assert wrong.item() > 10


def test_soft_dice_hand_computed():
    prob = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    # Dice = (2 * 0.5 + 1) / (1.0 + 1.0 + 1) = 2/3 with eps = 1
    assert soft_dice_loss(prob, target).item() == pytest.approx(1 - 2 / 3)
