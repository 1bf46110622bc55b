"""inference.py: sliding-window prediction against a single pass and MONAI, instances, SEG, tuning."""
import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries

import inference
import metrics
from errors import UserError
from inference import PostParams, instances, sliding_window, tune_postprocessing


class TwoHeadNet(torch.nn.Module):
    """A tiny two-head conv net, deterministic from `seed`."""

    def __init__(self, ndim=3, in_channels=2, seed=0, symmetric=False):
        super().__init__()
        torch.manual_seed(seed)
        conv = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
        self.body = conv(in_channels, 6, 3, padding=1)
        self.seg = conv(6, 3, 3, padding=1)
        self.marker = conv(6, 1, 3, padding=1)
        if symmetric:  # kernels invariant under every flip: the net commutes with flips
            axes = range(2, 2 + ndim)
            for layer in (self.body, self.seg, self.marker):
                w = layer.weight.data
                flips = [w.flip(a) if a else w for k in range(ndim + 1) for a in itertools.combinations(axes, k)]
                layer.weight.data = torch.stack(flips).mean(0)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return self.seg(h), self.marker(h)


def _logits(seg_prob, marker_prob):
    """Invert softmax/sigmoid up to the softmax's free constant: (seg logit - class-0 logit, marker logit)."""
    seg = torch.log(seg_prob.double())
    marker = marker_prob.double()
    return seg - seg[:1], torch.log(marker / (1 - marker))


def _single_pass(net, x):
    with torch.no_grad():
        seg, marker = net(x[None])
    return seg[0].softmax(0), marker[0].sigmoid()


# ----------------------------------------------------------------------------- sliding window
def test_one_window_equals_a_single_forward_pass():
    net = TwoHeadNet().eval()
    x = torch.randn(2, 8, 16, 12)
    seg, marker = sliding_window(net, x, roi_size=(8, 16, 12), sw_batch_size=2)
    ref_seg, ref_marker = _single_pass(net, x)
    assert seg.shape == (3, 8, 16, 12) and marker.shape == (1, 8, 16, 12)
    assert torch.allclose(seg, ref_seg, atol=1e-5) and torch.allclose(marker, ref_marker, atol=1e-5)
    assert torch.allclose(seg.sum(0), torch.ones(8, 16, 12), atol=1e-5)


@pytest.mark.parametrize("shape, roi, overlap", [
    ((2, 21, 37, 30), (8, 16, 12), 0.5),
    ((2, 21, 37, 30), (8, 16, 12), 0.25),
    ((2, 13, 33, 41), (7, 10, 11), 0.5),   # odd roi: step int(roi * (1 - overlap)) rounds down
    ((2, 37, 29), (16, 12), 0.5),
    ((2, 37, 29), (16, 12), 0.25),
])
def test_several_windows_agree_with_monai(shape, roi, overlap):
    monai_inferers = pytest.importorskip("monai.inferers")
    net = TwoHeadNet(ndim=len(roi)).eval()
    x = torch.randn(*shape)
    seg, marker = sliding_window(net, x.numpy(), roi, overlap=overlap, sw_batch_size=3)
    with torch.no_grad():
        ref_seg, ref_marker = monai_inferers.sliding_window_inference(
            x[None], roi, 3, net, overlap=overlap, mode="gaussian", sigma_scale=0.125)
    assert seg.shape == (3, *shape[1:]) and marker.shape == (1, *shape[1:])
    assert torch.allclose(seg, ref_seg[0].softmax(0), atol=1e-4)
    assert torch.allclose(marker, ref_marker[0].sigmoid(), atol=1e-4)
    # the blended logits themselves (MONAI blends logits), recovered from the probabilities
    seg_logit, marker_logit = _logits(seg, marker)
    ref = ref_seg[0].double()
    assert torch.allclose(seg_logit, ref - ref[:1], atol=1e-4)
    assert torch.allclose(marker_logit, ref_marker[0].double(), atol=1e-4)


def test_window_placement_matches_monai():
    monai_utils = pytest.importorskip("monai.data.utils")
    for size, roi, overlap in [(59, 32, 0.5), (650, 128, 0.5), (37, 16, 0.25), (33, 10, 0.5), (16, 16, 0.5)]:
        step = max(int(roi * (1 - overlap)), 1) if roi < size else roi
        ref = [s[0].start for s in monai_utils.dense_patch_slices((size,), (roi,), (step,))]
        assert inference.window_starts(size, roi, overlap) == ref


def test_importance_map_matches_monai():
    monai_utils = pytest.importorskip("monai.data.utils")
    for roi in [(8, 16, 12), (7, 10), (32, 128, 128)]:
        ref = monai_utils.compute_importance_map(roi, mode="gaussian", sigma_scale=0.125)
        assert torch.allclose(inference.gaussian_importance(roi, 0.125), ref, rtol=1e-6, atol=0)


def test_volume_smaller_than_the_roi_is_padded_and_cropped_back():
    net = TwoHeadNet().eval()
    x = torch.randn(2, 5, 9, 40)
    seg, marker = sliding_window(net, x, roi_size=(8, 16, 12), overlap=0.5)
    assert seg.shape == (3, 5, 9, 40) and marker.shape == (1, 5, 9, 40)
    monai_inferers = pytest.importorskip("monai.inferers")
    with torch.no_grad():
        ref_seg, ref_marker = monai_inferers.sliding_window_inference(
            x[None], (8, 16, 12), 4, net, overlap=0.5, mode="gaussian")
    assert torch.allclose(seg, ref_seg[0].softmax(0), atol=1e-4)
    assert torch.allclose(marker, ref_marker[0].sigmoid(), atol=1e-4)


def test_mirror_tta_is_a_no_op_for_a_flip_equivariant_predictor():
    net = TwoHeadNet(symmetric=True).eval()
    x = torch.randn(2, 13, 20, 17)
    plain = sliding_window(net, x, (8, 16, 12))
    mirrored = sliding_window(net, x, (8, 16, 12), mirror=True)
    assert torch.allclose(plain[0], mirrored[0], atol=1e-5) and torch.allclose(plain[1], mirrored[1], atol=1e-5)


def test_mirror_tta_averages_the_flipped_logits():
    net = TwoHeadNet(ndim=2).eval()  # not flip-equivariant: mirroring must change the result
    x = torch.randn(2, 10, 12)
    seg, marker = sliding_window(net, x, (10, 12), mirror=True)
    with torch.no_grad():
        outs = [[h.flip(a) for h in net(x[None].flip(a))] if a else net(x[None])
                for a in [(), (2,), (3,), (2, 3)]]
    ref_seg = torch.stack([o[0] for o in outs]).mean(0)[0].softmax(0)
    ref_marker = torch.stack([o[1] for o in outs]).mean(0)[0].sigmoid()
    assert torch.allclose(seg, ref_seg, atol=1e-5) and torch.allclose(marker, ref_marker, atol=1e-5)
    assert not torch.allclose(seg, _single_pass(net, x)[0], atol=1e-3)


def test_channel_mismatch_is_a_user_error_naming_both_counts():
    net = TwoHeadNet(in_channels=2).eval()
    with pytest.raises(UserError, match=r"has 1 channel\(s\) but the model expects 2"):
        sliding_window(net, np.zeros((1, 8, 16, 12), np.float32), (8, 16, 12))
    with pytest.raises(UserError, match=r"has 2 channel\(s\) but the model expects 3"):
        sliding_window(net, np.zeros((2, 8, 16, 12), np.float32), (8, 16, 12), in_channels=3)


def test_a_predictor_with_one_output_is_refused():
    with pytest.raises(TypeError, match="seg_logits, marker_logits"):
        sliding_window(lambda x: x, np.zeros((1, 8, 8), np.float32), (8, 8))


# ----------------------------------------------------------------------------- instances
def _ideal_probabilities(labels, marker_fraction=0.5):
    """Probabilities a perfect model would give: boundary = the objects' inner boundaries (also between touching
    objects), interior = the rest of each object, marker = the voxels deeper than marker_fraction of the
    object's maximum depth."""
    boundary = find_boundaries(labels, mode="inner") & (labels > 0)
    interior = (labels > 0) & ~boundary
    marker = np.zeros(labels.shape, bool)
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        if box is not None:
            depth = ndimage.distance_transform_edt(np.pad(labels[box] == i, 1))[(slice(1, -1),) * labels.ndim]
            marker[box] |= depth > marker_fraction * depth.max()
    seg = np.stack([labels == 0, boundary, interior]).astype(np.float32)
    return seg, marker[None].astype(np.float32)


def _balls(shape, centres, radii):
    """Label image of balls; a voxel inside several belongs to the nearest centre (a flat interface)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    dist = np.stack([np.linalg.norm(grid - c, axis=-1) / r for c, r in zip(centres, radii)])
    labels = (dist.argmin(0) + 1).astype(np.uint16)
    labels[dist.min(0) >= 1] = 0
    return labels


def _jaccard(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


@pytest.mark.parametrize("elevation", ["interior", "distance"])
def test_two_touching_balls_are_split_into_two(elevation):
    gt = _balls((24, 24, 40), [(12, 12, 12), (12, 12, 26)], [8, 8])  # centres 14 apart: they share a disc
    assert ndimage.label(gt > 0)[1] == 1  # one connected foreground blob
    seg, marker = _ideal_probabilities(gt)
    out = instances(seg, marker, PostParams(elevation=elevation), voxel_size=(1, 1, 1))
    assert out.dtype == np.uint16 and sorted(np.unique(out)) == [0, 1, 2]
    for label in (1, 2):
        best = max(_jaccard(out == label, gt == g) for g in (1, 2))
        assert best > 0.9


def test_two_touching_discs_in_2d():
    gt = _balls((30, 44), [(15, 14), (15, 29)], [10, 9])
    seg, marker = _ideal_probabilities(gt)
    out = instances(torch.from_numpy(seg), torch.from_numpy(marker), PostParams(min_size=20))
    assert sorted(np.unique(out)) == [0, 1, 2]
    assert all(max(_jaccard(out == label, gt == g) for g in (1, 2)) > 0.9 for label in (1, 2))


def test_each_component_is_split_by_its_own_seeds_and_tiny_seeds_are_ignored():
    centres = [(10, 10, 10), (10, 10, 24), (10, 30, 10), (10, 30, 24)]  # two separate touching pairs
    gt = _balls((20, 40, 36), centres, [8, 8, 8, 8])
    assert ndimage.label(gt > 0)[1] == 2
    seg, marker = _ideal_probabilities(gt)
    marker[0, 10, 10, 5] = 1  # a one-voxel seed inside object 1: dropped by min_marker_size, else a split
    out = instances(seg, marker, PostParams(min_marker_size=5))
    assert out.max() == 4
    for g in range(1, 5):
        label = np.bincount(out[gt == g]).argmax()
        assert label > 0 and _jaccard(out == label, gt == g) > 0.9
    merged = instances(seg, marker, PostParams(min_marker_size=1, min_size=100))  # its piece: ~30 voxels
    assert merged.max() == 4 and merged[gt > 0].all()  # given back to object 1, not left as a hole
    assert instances(seg, marker, PostParams(min_marker_size=1, min_size=10)).max() == 5


def _merged_marker(shape, centres, radii, fraction=0.35):
    """A marker map in which the cores of touching balls run together along the line between them (what a
    blurred prediction of two nuclei in contact looks like): each core plus a thin bridge between the centres."""
    gt = _balls(shape, centres, radii)
    seg, marker = _ideal_probabilities(gt, 1 - fraction)  # cores of 0.35 x the radius ... deeper than 0.65
    bridge = np.zeros(gt.shape, bool)
    a, b = np.asarray(centres[0]), np.asarray(centres[1])
    for s in np.linspace(0, 1, 50):
        bridge[tuple(np.round(a + s * (b - a)).astype(int))] = True
    marker[0] = np.maximum(marker[0], ndimage.binary_dilation(bridge, iterations=1))
    return gt, seg, marker


def test_split_markers_cuts_two_joined_cores_and_keeps_single_ones_whole():
    ball = _balls((30, 64, 60), [(15, 15, 20)], [8]) > 0
    two = ball | np.roll(ball, 14, axis=2)  # two balls overlapping: one component with a neck
    z, y, x = np.meshgrid(*[np.arange(n) for n in (30, 64, 60)], indexing="ij")
    ellipsoid = ((z - 15) / 6) ** 2 + ((y - 45) / 6) ** 2 + ((x - 30) / 18) ** 2 <= 1  # 3:1, apart in y
    markers = ndimage.label(two | ellipsoid)[0]
    assert markers.max() == 2
    out, n = inference.split_markers(markers, 0.1)
    assert n == 3 and out.max() == 3 and np.array_equal(out > 0, markers > 0)
    left, right = out[15, 15, 20], out[15, 15, 34]
    assert left != right and left > 0 and right > 0
    sizes = np.bincount(out.ravel())
    assert abs(int(sizes[left]) - int(sizes[right])) < 0.1 * sizes[left]  # cut at the neck, near the middle
    assert len(np.unique(out[ellipsoid])) == 1  # the elongated single core stays whole
    assert inference.split_markers(markers, 0.1, min_size=int(sizes[left]) + 1)[1] == 2  # pieces too small
    assert inference.split_markers(markers, 0.9)[1] == 2  # a neck shallower than h is no split


def test_marker_split_separates_touching_nuclei_whose_markers_ran_together():
    gt, seg, marker = _merged_marker((24, 24, 40), [(12, 12, 12), (12, 12, 26)], [8, 8])
    assert ndimage.label(marker[0] > 0.5)[1] == 1  # one seed for two nuclei
    assert instances(seg, marker, PostParams(marker_split=0)).max() == 1  # merged without the split
    for params in (PostParams(marker_split=0.1), PostParams()):  # the default splits too (0.3)
        out = instances(seg, marker, params)
        assert out.max() == 2
        assert all(max(_jaccard(out == label, gt == g) for g in (1, 2)) > 0.85 for label in (1, 2))
    single = _balls((24, 24, 40), [(12, 12, 20)], [9])
    seg1, marker1 = _ideal_probabilities(single)
    assert instances(seg1, marker1, PostParams(marker_split=0.1)).max() == 1
    assert instances(seg1, marker1, PostParams()).max() == 1
    with pytest.raises(ValueError, match="marker_split"):
        PostParams(marker_split=1.0)


def test_empty_probabilities_give_an_empty_label_image():
    seg = np.zeros((3, 6, 10, 12), np.float32)
    seg[0] = 1
    out = instances(seg, np.zeros((1, 6, 10, 12), np.float32))
    assert out.dtype == np.uint16 and out.shape == (6, 10, 12) and not out.any()


def test_small_objects_are_removed_and_labels_are_sequential():
    gt = _balls((20, 40, 60), [(10, 10, 10), (10, 20, 30), (10, 30, 50)], [6, 2, 5])  # the middle one: 33 voxels
    seg, marker = _ideal_probabilities(gt, marker_fraction=0.3)
    out = instances(seg, marker, PostParams(min_size=100, min_marker_size=1))
    assert sorted(np.unique(out)) == [0, 1, 2]
    assert not out[gt == 2].any()
    kept = {int(np.bincount(out[gt == g]).argmax()) for g in (1, 3)}
    assert kept == {1, 2}
    assert instances(seg, marker, PostParams(min_size=10, min_marker_size=1)).max() == 3


def test_holes_inside_an_object_are_filled():
    gt = _balls((20, 20, 20), [(10, 10, 10)], [8])
    seg, marker = _ideal_probabilities(gt)
    hole = _balls((20, 20, 20), [(10, 10, 10)], [2.5]) > 0
    seg[:, hole] = np.array([1, 0, 0], np.float32)[:, None]  # background predicted inside the nucleus
    out = instances(seg, marker)
    assert out.max() == 1 and out[hole].all()


def test_unmarked_components_are_kept_or_dropped_as_asked():
    gt = _balls((20, 20, 40), [(10, 10, 10), (10, 10, 30)], [6, 6])
    seg, marker = _ideal_probabilities(gt)
    marker[0, gt == 2] = 0
    assert instances(seg, marker, PostParams(keep_unmarked=True)).max() == 2
    dropped = instances(seg, marker, PostParams(keep_unmarked=False))
    assert dropped.max() == 1 and not dropped[gt == 2].any()


# ----------------------------------------------------------------------------- SEG and tuning
def test_seg_of_slice_ground_truth_counts_each_annotated_slice():
    labels = np.zeros((3, 4, 10), np.uint16)
    labels[1, :, 0:5] = 7            # covers GT object 1 of slice 1 plus 4 background voxels: J = 16 / 20
    gt_slice = np.zeros((4, 10), np.uint16)
    gt_slice[:, 0:4] = 1
    gt_slice[:, 6:10] = 2            # nothing predicted there: J = 0
    total, n = metrics.seg_score(labels, {1: gt_slice, 2: gt_slice})
    assert n == 4 and total == pytest.approx(16 / 20)


def test_tuning_beats_the_defaults_on_a_badly_calibrated_example():
    rng = np.random.default_rng(0)
    pairs, gts = [], []
    for offset in (0, 3):
        gt = _balls((16, 32, 72), [(8, 16, 12 + offset), (8, 16, 26 + offset), (8, 16, 50)], [8, 8, 9])
        seg, marker = _ideal_probabilities(gt)
        seg = ndimage.gaussian_filter(seg, (0, 1, 1, 1)) + 0.05 * rng.random(seg.shape, np.float32)
        seg /= seg.sum(0, keepdims=True)
        marker = 0.45 * ndimage.gaussian_filter(marker, (0, 1, 1, 1))  # under-confident: never above 0.45
        pairs.append((seg, marker))
        gts.append(gt)
    default_total = sum(metrics.seg_score(instances(s, m), g)[0] for (s, m), g in zip(pairs, gts)) / 6
    params, best = tune_postprocessing(pairs, gts, grid={"fg_threshold": (0.4, 0.5), "marker_threshold": (0.2, 0.5)})
    assert params.marker_threshold == 0.2
    assert best > default_total + 0.1  # the default merges each touching pair
    again = sum(metrics.seg_score(instances(s, m, params), g)[0] for (s, m), g in zip(pairs, gts)) / 6
    assert again == pytest.approx(best)


def test_tuning_refuses_frames_without_ground_truth_objects():
    seg = np.zeros((3, 4, 4, 4), np.float32)
    with pytest.raises(UserError, match="no ground-truth objects"):
        tune_postprocessing([(seg, seg[:1])], [np.zeros((4, 4, 4), np.uint16)])
