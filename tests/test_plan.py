"""The data plan: the fingerprint measures what the generator made, the plan's sizes are valid for every
model (odd image sizes and 2D included), explicit values win and say so, and the cache behaves."""
import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch

import plan
from dataset import CTCFormatError, Sequence
from dataset.synthetic import SynthConfig, write_dataset
from errors import UserError

# Nuclei of radius 8-12 x/y voxels (0.125 um): the equivalent diameter of an ellipsoid whose semi-axes
# multiply to r^3 is 2 r, so the median is about 2 x 10 x 0.125 = 2.5 um (daughters, at 0.8 r, and
# overlaps pull it a little lower). Speed 0.25 um per frame, capped at twice that.
CFG = SynthConfig(shape=(24, 96, 96), frames=6, radius_xy=(8.0, 12.0))
DIAMETER_UM = 2 * np.mean(CFG.radius_xy) * CFG.voxel_size[0]
DIVISORS = [(8, 16, 16), (2, 4, 4), (16, 32, 32), (1, 1, 1), (4, 8, 8)]


@pytest.fixture(scope="module")
def data3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan") / "set3d"
    write_dataset(root, CFG, seed=1, sequences=("01",))
    return root


@pytest.fixture(scope="module")
def data2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan") / "set2d"
    write_dataset(root, replace(CFG, shape=(96, 96)), seed=1, sequences=("01",))
    return root


def copy_set(src, dst):
    shutil.copytree(src, dst)
    shutil.rmtree(dst / plan.CACHE_DIR, ignore_errors=True)
    return dst


def make_fp(shape, voxel_size, diameter_um, displacement_p99=0.5, volume_p5=None):
    """A Fingerprint with the few numbers the plan reads, for plans of arbitrary data."""
    ndim = len(shape)
    volume = volume_p5 if volume_p5 is not None else (np.pi / 6 * diameter_um ** 3 if ndim == 3 else np.pi / 4 * diameter_um ** 2)
    pct = {f"p{q}": diameter_um for q in plan.PERCENTILES}
    return plan.Fingerprint(
        ndim=ndim, shape=list(shape), frames=10, voxel_size=list(voxel_size), voxel_size_source="given", objects=50,
        sizes_from="masks", extent_vox={}, extent_um={}, diameter_um=pct, diameter_vox={},
        volume_um3={f"p{q}": volume for q in plan.PERCENTILES}, foreground_fraction=0.1, intensity_inside={},
        intensity_outside={}, displacement_um={f"p{q}": displacement_p99 for q in plan.PERCENTILES},
        division_offset_um=None, division_rate=0.01, links=100)


# ----------------------------------------------------------------------------- fingerprint
def test_fingerprint_matches_the_generator(data3d):
    fp = plan.fingerprint(data3d, "01")
    seq = Sequence(data3d, "01")
    assert fp.ndim == 3 and fp.shape == list(CFG.shape) and fp.frames == CFG.frames
    assert fp.voxel_size == list(CFG.voxel_size) and fp.voxel_size_source == "metadata"  # write_tiff stores it
    # sizes: median equivalent diameter within 15 % of 2 r; z extent / y extent about vx / vz = 0.625
    assert fp.diameter_um["p50"] == pytest.approx(DIAMETER_UM, rel=0.15)
    z, y, x = fp.extent_vox["p50"]
    assert 0.5 < z / y < 0.75 and y == pytest.approx(x, rel=0.15)
    assert np.allclose(fp.extent_um["p50"], np.array(fp.extent_vox["p50"]) * fp.spacing)
    assert fp.diameter_vox["p50"][1] == pytest.approx(fp.diameter_um["p50"] / 0.125)
    # motion: median displacement within 50 % of the speed, the largest below the 2x cap plus the pushes
    assert 0.5 * CFG.speed < fp.displacement_um["p50"] < 1.5 * CFG.speed
    assert fp.displacement_um["p99"] < 2.5 * CFG.speed
    assert fp.links > 10 and fp.tra_frames == seq.frames
    # counts that must be exact: division rate from man_track.txt, foreground fraction from the masks
    tracks = seq.tracks
    divisions = len(set(tracks[tracks[:, 3] > 0, 3].tolist()))
    assert divisions > 0
    assert fp.division_rate == pytest.approx(divisions / (tracks[:, 2] - tracks[:, 1] + 1).sum(), abs=1e-6)
    assert fp.foreground_fraction == pytest.approx(np.mean([(seq.seg(t) > 0).mean() for t in seq.frames]), abs=1e-6)
    assert fp.division_offset_um is None or fp.division_offset_um["p50"] < fp.diameter_um["p50"]
    # intensities: nuclei are brighter than the background
    assert fp.intensity_inside["p50"] > fp.intensity_outside["p95"]


def test_fingerprint_of_a_2d_set(data2d):
    fp = plan.fingerprint(data2d, "01")
    assert fp.ndim == 2 and fp.shape == [96, 96] and fp.voxel_size == [0.125, 0.125]
    assert fp.diameter_um["p50"] == pytest.approx(DIAMETER_UM, rel=0.15)
    assert len(fp.extent_vox["p50"]) == 2 and 0.5 * CFG.speed < fp.displacement_um["p50"] < 1.5 * CFG.speed
    p = plan.make_plan(fp, (16, 16))
    assert len(p.spacing) == len(p.crop_size) == len(p.window) == len(p.shape) == 2
    assert all(c % 16 == 0 for c in p.crop_size + p.window)


def test_fingerprint_from_2d_slices_of_3d_frames(data3d, tmp_path):
    root = copy_set(data3d, tmp_path / "slices")
    seg = root / "01_GT" / "SEG"
    full = plan.fingerprint(data3d, "01")
    for path in sorted(seg.glob("man_seg*.tif")):
        labels = tifffile.imread(path)
        t = path.stem[len("man_seg"):]
        for z in (6, 12, 18):  # three annotated slices per frame, as in some CTC sets
            tifffile.imwrite(seg / f"man_seg_{t}_{z:03d}.tif", labels[z])
        path.unlink()
    fp = plan.fingerprint(root, "01")
    assert fp.sizes_from == "slices" and len(fp.extent_vox["p50"]) == 3
    # cross-sections are at most as large as the nuclei: within 30 % below the full masks' diameter
    assert 0.7 * full.diameter_um["p50"] < fp.diameter_um["p50"] <= 1.05 * full.diameter_um["p50"]


def test_voxel_size_given_metadata_or_default(data3d, tmp_path, capsys):
    assert plan.fingerprint(data3d, "01", voxel_size=(0.25, 0.25, 0.4)).voxel_size_source == "given"
    fp = plan.fingerprint(data3d, "01", voxel_size=(0.25, 0.25, 0.4))
    assert fp.voxel_size == [0.25, 0.25, 0.4] and fp.diameter_um["p50"] == pytest.approx(
        2 * plan.fingerprint(data3d, "01").diameter_um["p50"], rel=0.01)
    root = copy_set(data3d, tmp_path / "bare")
    for path in (root / "01").glob("t*.tif"):  # drop the metadata: plain TIFFs
        tifffile.imwrite(path, tifffile.imread(path))
    capsys.readouterr()
    fp = plan.fingerprint(root, "01")
    assert fp.voxel_size_source == "default" and fp.voxel_size == [0.125, 0.125, 0.2]
    assert "no voxel size" in capsys.readouterr().err
    fp = plan.fingerprint(root, "01")  # from the cache: the warning again
    assert "no voxel size" in capsys.readouterr().err


def test_metadata_in_nanometres_and_centimetres(tmp_path):
    image = np.zeros((4, 8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "nm.tif", image, imagej=True, resolution=(1 / 125, 1 / 125),
                     metadata={"unit": "nm", "spacing": 200, "axes": "ZYX"})
    assert plan.read_voxel_size(tmp_path / "nm.tif", 3) == pytest.approx((0.125, 0.125, 0.2))
    tifffile.imwrite(tmp_path / "cm.tif", image[0], resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert plan.read_voxel_size(tmp_path / "cm.tif", 2) == pytest.approx((0.5, 0.5))
    tifffile.imwrite(tmp_path / "dpi.tif", image[0], resolution=(72, 72), resolutionunit="INCH")
    assert plan.read_voxel_size(tmp_path / "dpi.tif", 2) is None
    assert plan.read_voxel_size(tmp_path / "cm.tif", 3) is None  # no z spacing: not known


def test_bad_voxel_size_and_missing_gt_are_user_errors(data3d, tmp_path):
    for bad in [(0.1, 0.1), (0.1, -1, 0.2), (0.1, 0.1, float("nan")), ("a", 1, 1)]:
        with pytest.raises(UserError, match="--voxel-size"):
            plan.fingerprint(data3d, "01", voxel_size=bad)
    root = tmp_path / "nogt"
    (root / "01").mkdir(parents=True)
    shutil.copy(data3d / "01" / "t000.tif", root / "01" / "t000.tif")
    with pytest.raises(CTCFormatError, match="01_GT"):
        plan.fingerprint(root, "01")
    (root / "01_GT" / "TRA").mkdir(parents=True)
    with pytest.raises(CTCFormatError, match="SEG"):
        plan.fingerprint(root, "01")


def test_cache_is_reused_and_invalidated_when_a_file_changes(data3d, tmp_path, monkeypatch):
    root = copy_set(data3d, tmp_path / "cached")
    first = plan.fingerprint(root, "01")
    path = plan.cache_path(root, "01")
    assert path.is_file() and json.loads(path.read_text())["fingerprint"] == first.to_json()
    outside = {q.relative_to(root) for q in root.rglob("*") if plan.CACHE_DIR not in q.parts}
    assert outside == {q.relative_to(data3d) for q in data3d.rglob("*") if plan.CACHE_DIR not in q.parts}  # no user file added

    def no_measure(*args, **kwargs):
        raise AssertionError("measured again")

    with monkeypatch.context() as m:
        m.setattr(plan, "_measure", no_measure)
        assert plan.fingerprint(root, "01") == first  # reused
    seg = root / "01_GT" / "SEG" / "man_seg002.tif"
    labels = tifffile.imread(seg)
    labels[labels == labels.max()] = 0  # one nucleus fewer in one frame
    tifffile.imwrite(seg, labels)
    second = plan.fingerprint(root, "01")
    assert second.objects == first.objects - 1
    stat = seg.stat()
    os.utime(seg, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same content, new mtime: measured again
    calls = []
    real = plan._measure
    monkeypatch.setattr(plan, "_measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert plan.fingerprint(root, "01") == second and calls == [1]
    assert plan.fingerprint(root, "01", voxel_size=(0.125, 0.125, 0.25)).voxel_size_source == "given" and len(calls) == 2
    assert [q.name for q in path.parent.iterdir()] == [path.name]  # atomic writes leave nothing behind


def test_read_only_data_folder_does_not_fail(data3d, tmp_path, monkeypatch, capsys):
    root = copy_set(data3d, tmp_path / "ro")

    def read_only(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(plan, "atomic_path", read_only)
    fp = plan.fingerprint(root, "01")
    assert fp.objects > 0 and not plan.cache_path(root, "01").exists()
    assert "without caching" in capsys.readouterr().err
    monkeypatch.undo()
    if os.geteuid() != 0:  # a real read-only folder (root ignores permissions)
        os.chmod(root, 0o555)
        try:
            assert plan.fingerprint(root, "01").objects == fp.objects
        finally:
            os.chmod(root, 0o755)


# ----------------------------------------------------------------------------- plan
def test_demo_scale_keeps_the_native_grid():
    fp = make_fp((32, 128, 128), (0.125, 0.125, 0.2), 2.37, displacement_p99=0.5, volume_p5=3.48)
    p = plan.make_plan(fp, (1, 1, 1), plan_patch=True)
    assert not p.resamples and p.spacing == [0.2, 0.125, 0.125] and p.shape == [32, 128, 128]
    assert p.patch_size == [4, 8, 8] and p.crop_size == [32, 56, 56] and p.window == [32, 56, 56]
    assert p.min_size == pytest.approx(1000 * plan.MIN_SIZE_FRACTION, rel=0.2)  # p5 volume: about 1000 voxels
    assert p.min_marker_size == pytest.approx(10, rel=0.2)
    assert p.max_distance == pytest.approx(plan.GATE_FLOOR * 2.37) and p.division_distance >= p.max_distance


def test_sim_scale_resamples_to_the_target_size_and_z_stays_coarse():
    fp = make_fp((59, 350, 330), (0.125, 0.125, 0.2), 6.2, displacement_p99=1.0)
    p = plan.make_plan(fp, (8, 16, 16))
    assert p.resamples
    assert 6.2 / p.spacing[1] == pytest.approx(plan.TARGET_DIAMETER) and p.spacing[1] == p.spacing[2]
    assert p.spacing[0] >= 0.2 and 6.2 / p.spacing[0] >= plan.MIN_Z_DIAMETER - 1e-6
    assert p.shape == list(p.working_shape((59, 350, 330))) and p.shape[1] < 350 / 2 + 2
    assert all(c <= s for c, s in zip(p.crop_size, p.shape))  # no larger than the image where avoidable
    # coarse z (1 um) is never up-sampled
    coarse = plan.make_plan(make_fp((20, 350, 330), (0.125, 0.125, 1.0), 6.2), (1, 4, 4))
    assert coarse.spacing[0] == 1.0 and coarse.spacing[1] == pytest.approx(6.2 / plan.TARGET_DIAMETER)
    # small nuclei: up-sampled, at most MAX_ZOOM, z kept
    small = plan.make_plan(make_fp((30, 200, 200), (0.5, 0.5, 1.0), 4.0), (1, 1, 1))
    assert small.zoom[1] == pytest.approx(plan.MAX_ZOOM) and small.zoom[0] == 1.0


@pytest.mark.parametrize("divisor", DIVISORS)
@pytest.mark.parametrize("shape,voxel,diameter", [
    ((59, 350, 330), (0.125, 0.125, 0.2), 6.2),     # SIM+
    ((17, 101, 77), (0.125, 0.125, 0.2), 2.4),      # odd sizes, native grid
    ((33, 257, 129), (0.1, 0.1, 0.3), 5.0),         # odd sizes, resampled
    ((5, 64, 64), (0.125, 0.125, 0.2), 2.4),        # thinner than a crop in z
    ((701, 513), (0.645, 0.645), 12.0),             # 2D
    ((99, 37), (0.125, 0.125), 6.0),                # 2D, narrower than a crop
])
def test_crop_and_window_are_valid_for_every_divisor(divisor, shape, voxel, diameter):
    ndim = len(shape)
    div = divisor[-ndim:]
    p = plan.make_plan(make_fp(shape, voxel, diameter), div)
    nucleus = [diameter / s for s in p.spacing]
    for c, w, k, n, d in zip(p.crop_size, p.window, div, p.shape, nucleus):
        assert c % k == 0 and w % k == 0 and c >= k and w >= c
        if n >= plan._round_up(plan.MIN_CROP_DIAMETERS * d, k):  # the image holds a minimal crop
            assert c <= n and c >= plan.MIN_CROP_DIAMETERS * d
        else:  # the whole image, padded to the divisor
            assert c == plan._round_up(n, k)
    assert len(p.crop_size) == len(p.window) == len(p.spacing) == ndim
    vit = plan.make_plan(make_fp(shape, voxel, diameter), (1,) * ndim, plan_patch=True)
    assert all(q & (q - 1) == 0 for q in vit.patch_size)
    assert all(c % q == 0 and w % q == 0 for c, w, q in zip(vit.crop_size, vit.window, vit.patch_size))


def test_a_model_that_pads_inside_gets_crops_it_computes_on():
    """cheap_multiple (model.pad_multiple): planned crops and windows are its multiples, so none of the model's
    compute goes into its own padding (Swin-UNETR pads to 32: a 72-voxel crop would cost a 96-voxel one); a thin
    z axis is taken whole, padded up; an explicit crop still only needs the size divisor."""
    fp = make_fp((59, 350, 330), (0.125, 0.125, 0.2), 6.2, displacement_p99=1.0)
    free = plan.make_plan(fp, (1, 1, 1))
    swin = plan.make_plan(fp, (1, 1, 1), cheap_multiple=32)
    assert free.crop_size[1] % 32 and swin.crop_size[1] % 32 == 0  # the plain plan would be padded by the model
    assert all(c % 32 == 0 and w % 32 == 0 and w >= c for c, w in zip(swin.crop_size, swin.window))
    assert swin.crop_size[0] == plan._round_up(swin.shape[0], 32) and swin.shape[0] % 32  # z: whole, padded
    cost = lambda crop: np.prod([plan._round_up(c, 32) for c in crop])  # noqa: E731  (what the model computes on)
    assert cost(swin.crop_size) < cost(free.crop_size)
    assert all(c >= plan.MIN_CROP_DIAMETERS * 6.2 / s for c, s in zip(swin.crop_size[1:], swin.spacing[1:]))
    given = plan.make_plan(fp, (1, 1, 1), {"crop_size": (29, 72, 72)}, cheap_multiple=32)
    assert given.crop_size == [29, 72, 72] and given.sources["crop_size"] == "config"


def test_planned_crops_hold_at_most_the_demo_crops_voxels(monkeypatch):
    fp = make_fp((59, 350, 330), (0.125, 0.125, 0.2), 6.2, displacement_p99=1.0)  # SIM+: 3 nuclei make 28 x 72 x 72
    capped = plan.make_plan(fp, (1, 1, 1), plan_patch=True)
    nucleus = [6.2 / s for s in capped.spacing]
    assert np.prod(capped.crop_size) <= plan.MAX_CROP_VOXELS and capped.crop_size[1] == capped.crop_size[2]
    assert all(c >= plan.MIN_CROP_DIAMETERS * d for c, d in zip(capped.crop_size, nucleus))
    assert all(c % q == 0 for c, q in zip(capped.crop_size, capped.patch_size))
    monkeypatch.setattr(plan, "MAX_CROP_VOXELS", 10 ** 9)
    free = plan.make_plan(fp, (1, 1, 1), plan_patch=True)
    assert np.prod(free.crop_size) > 32 * 64 * 64  # uncapped, the SIM+ crop would cost more than the demo's
    assert np.prod(free.crop_size) > np.prod(capped.crop_size) and free.patch_size == capped.patch_size
    # a crop that cannot shrink without going under MIN_CROP_DIAMETERS keeps its floor
    monkeypatch.setattr(plan, "MAX_CROP_VOXELS", 1)
    floor = plan.make_plan(fp, (1, 1, 1), plan_patch=True)
    assert all(c >= plan.MIN_CROP_DIAMETERS * d for c, d in zip(floor.crop_size, nucleus))


def test_choose_patch_size():
    assert plan.choose_patch_size((12, 19, 19)) == (4, 8, 8)   # the demo's nuclei: a third of a nucleus
    assert plan.choose_patch_size((15, 24, 24)) == (4, 8, 8)
    assert plan.choose_patch_size((15, 24, 24), crop=(18, 44, 40)) == (2, 4, 8)  # halved until it divides the crop
    assert plan.choose_patch_size((18, 18)) == (16, 16)  # 2D: two thirds (a crop of 8 nuclei, attention-bound)
    assert plan.choose_patch_size((100, 100)) == (32, 32)
    assert plan.choose_patch_size((1, 2)) == (1, 1)


def test_explicit_values_win_and_are_recorded():
    fp = make_fp((59, 350, 330), (0.125, 0.125, 0.2), 6.2)
    p = plan.make_plan(fp, (8, 16, 16), overrides={"crop_size": (16, 64, 64), "max_distance": 4.0, "min_size": None},
                       flags={"max_distance": 3.0, "window": [32, 96, 96]})
    assert p.crop_size == [16, 64, 64] and p.sources["crop_size"] == "config"
    assert p.max_distance == 3.0 and p.sources["max_distance"] == "flag"  # the flag beats the train script
    assert p.window == [32, 96, 96] and p.sources["window"] == "flag"
    assert p.sources["min_size"] == "plan" and p.sources["spacing"] == "plan" and p.sources["patch_size"] == "default"
    assert set(p.sources) == set(plan.PLANNED) and set(p.sources.values()) <= set(plan.SOURCES)
    assert "[flag]" in p.describe() and "[config]" in p.describe()
    s = plan.make_plan(fp, (1, 1, 1), overrides={"spacing": (0.2, 0.125, 0.125), "patch_size": (4, 16, 16)}, plan_patch=True)
    assert s.spacing == [0.2, 0.125, 0.125] and not s.resamples and s.patch_size == [4, 16, 16]
    assert s.sources["spacing"] == s.sources["patch_size"] == "config" and all(c % 4 == 0 for c in s.crop_size)
    v = plan.make_plan(fp, (1, 1, 1), overrides={"crop_size": (22, 44, 40)}, plan_patch=True)
    assert v.patch_size == [2, 4, 8] and v.sources["patch_size"] == "plan"  # a patch that fits the given crop


@pytest.mark.parametrize("overrides,match", [
    ({"crop_size": (20, 64, 64)}, "crop_size.*multiple"),
    ({"window": (32, 64)}, "window"),
    ({"max_distance": -1}, "max_distance"),
    ({"min_size": 2.5}, "min_size"),
    ({"patch_size": (8, 12, 16)}, "power of two"),
    ({"spacing": (0, 1, 1)}, "spacing"),
    ({"crop": (32, 64, 64)}, "unknown"),
])
def test_bad_overrides_are_user_errors(overrides, match):
    with pytest.raises(UserError, match=match):
        plan.make_plan(make_fp((59, 350, 330), (0.125, 0.125, 0.2), 6.2), (8, 16, 16), overrides=overrides)
    with pytest.raises(UserError, match="divisor"):
        plan.make_plan(make_fp((64, 64), (0.125, 0.125), 2.4), (8, 16, 16))


def test_plan_json_round_trip_and_checkpoint(tmp_path, data3d):
    p = plan.make_plan(plan.fingerprint(data3d, "01"), (1, 1, 1), flags={"gap_distance": 7.5}, plan_patch=True)
    data = p.to_json()
    assert plan.Plan.from_json(json.loads(json.dumps(data))) == p
    torch.save({"plan": data}, tmp_path / "ckpt.pt")
    assert plan.Plan.from_json(torch.load(tmp_path / "ckpt.pt", weights_only=True)["plan"]) == p
    text = p.describe()
    assert 3 <= len(text.splitlines()) <= 8 and "working spacing" in text and "7.50 [flag]" in text
    with pytest.raises(UserError, match="crop_size"):
        plan.Plan.from_json({k: v for k, v in data.items() if k != "crop_size"})


def test_working_shape_and_gates():
    p = plan.make_plan(make_fp((59, 350, 330), (0.125, 0.125, 0.2), 6.2, displacement_p99=5.0), (8, 16, 16))
    assert p.max_distance == pytest.approx(plan.GATE_MARGIN * 5.0)  # fast cells: the displacement decides
    assert p.gap_distance >= p.max_distance and p.division_distance >= p.max_distance
    assert set(p.tracking_gates()) == {"max_distance", "division_distance", "gap_distance"}
    assert p.size_limits() == {"min_size": p.min_size, "min_marker_size": p.min_marker_size}
    native = p.size_limits(native=True)  # the same volume in (smaller) native voxels
    assert native["min_size"] == pytest.approx(p.min_size / np.prod(p.zoom), rel=0.01)
    assert native["min_marker_size"] == pytest.approx(p.min_marker_size / np.prod(p.zoom), rel=0.05)
    assert p.working_shape((59, 350, 330)) == tuple(p.shape)
    assert p.working_shape((59, 350, 330), native_spacing=[s / 2 for s in p.native_spacing]) == tuple(
        max(1, round(n / 2 * z)) for n, z in zip((59, 350, 330), p.zoom))
    with pytest.raises(UserError, match="3D"):
        p.working_shape((350, 330))
