"""Frames larger than memory (tiled.py, dataset/frames.py, Predictor's block path, --max-memory): frames read
box by box, percentiles from a subsample, blocks on the frame's own working grid, labels stitched across
block borders, and peak memory that follows the budget, not the frame."""
import dataclasses
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage
from torch import nn

import main
import predict
import tiled
from dataset import read_labels
from dataset.ctc import write_tiff
from dataset.frames import ArrayFrame, TiffFrame, ZarrFrame, subsample_percentiles, subsample_strides
from dataset.synthetic import SynthConfig, generate_sequence, write_dataset
from dataset3D import normalize, resample_image, resample_probabilities
from errors import UserError
from inference import PostParams
from metrics import seg_score
from plan import Plan

ROOT = Path(__file__).resolve().parents[1]


class Smooth(nn.Module):
    """A model whose output is known: logits from the 3x3x3 box-smoothed image (so it has context, and a
    window's zero padding shows at its faces); foreground above 0.3, seeds above 0.6."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 27)

    def forward(self, x):
        x = self.conv(x)
        fg = 20 * (x - 0.3)
        return torch.cat([-fg, torch.full_like(fg, -8.0), fg], 1), 20 * (x - 0.6)


def make_plan(shape, zoom, diameter_um=3.0, window=(32, 32, 32)):
    """A plan whose working grid is `zoom` times the SIM+ native one on every axis."""
    native = [0.2, 0.125, 0.125]
    spacing = [v / zoom for v in native]
    return Plan(ndim=3, native_spacing=native, spacing=spacing, native_shape=list(shape),
                shape=[max(1, round(n * zoom)) for n in shape], divisor=[1, 1, 1], crop_size=list(window),
                window=list(window), patch_size=None, min_size=5, min_marker_size=2, max_distance=5.0,
                division_distance=6.0, gap_distance=6.0, sources={}, measured={"diameter_um": diameter_um})


def predictor(zoom=None, shape=None, **kw):
    plan = None if zoom is None else make_plan(shape, zoom)
    return predict.Predictor(Smooth(), (32, 32, 32), post=PostParams(min_size=10), plan=plan,
                             voxel_size=(0.125, 0.125, 0.2), **kw)


@pytest.fixture(scope="module")
def frame():
    return generate_sequence(SynthConfig(shape=(32, 192, 192), frames=1), 3)[0][0]


def border_planes(layout):
    """Per axis, the positions where one block's core ends and the next one's begins."""
    return [set(range(c, n, c)) for c, n in zip(layout.core, layout.shape)]


def objects_away_from_borders(labels, layout):
    """Labels whose box neither crosses nor touches a core border."""
    planes = border_planes(layout)
    keep = []
    for label, box in enumerate(ndimage.find_objects(labels), 1):
        if box is not None and not any(p in range(s.start, s.stop + 1) for s, axis in zip(box, planes) for p in axis):
            keep.append(label)
    return keep


def same_object_in(other, mask) -> bool:
    values = np.unique(other[mask])
    return len(values) == 1 and values[0] > 0 and np.array_equal(other == values[0], mask)


# ----------------------------------------------------------------------------- --max-memory
def test_size_flag_parses_sizes_and_refuses_bad_ones_naming_the_option(tmp_path, capsys):
    assert main.SIZE("512M") == 512 * 2**20 and main.SIZE("8G") == 8 * 2**30 and main.SIZE("8g") == 8 * 2**30
    assert main.SIZE("1.5G") == 3 * 2**29 and main.SIZE("4096") == 4096 and main.SIZE("64KiB") == 2**16
    for bad in ("lots", "0", "-1G", "8X", "", "1e9"):
        code = main.main(["predict", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(tmp_path), "--max-memory", bad])
        err = capsys.readouterr().err
        assert code == 2 and "--max-memory" in err and err.count("\n") == 1, (bad, err)
    args = main.parse(["predict", "--checkpoint", "m.pt", "--data", "d", "--max-memory", "2G"])
    assert args.max_memory == 2 * 2**30


def test_budget_defaults_to_half_the_available_memory(monkeypatch):
    monkeypatch.setattr(predict, "available_memory", lambda: 10 * 2**30)
    assert predictor().memory_budget() == 5 * 2**30
    assert predictor(max_memory=2**30).memory_budget() == 2**30
    monkeypatch.setattr(predict, "available_memory", lambda: None)
    assert predictor().memory_budget() is None and predictor().block_layout((64, 4096, 4096)) is None


def test_a_budget_too_small_even_for_blocks_is_refused_naming_the_option(frame):
    p = predictor(max_memory=2**20)
    with pytest.raises(UserError, match=r"needs about .* and even blocks of .*\(--max-memory\)"):
        p.check_image(frame.shape, 1, "t000.tif")
    p.check_image((8, 16, 16), 1, "small.tif")  # a frame that fits goes through, in one piece
    assert p.block_layout((8, 16, 16)) is None


# ----------------------------------------------------------------------------- frames read box by box
def test_tiff_frames_read_boxes_mapped_or_page_by_page(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 60000, size=(6, 40, 50), dtype=np.uint16)
    write_tiff(tmp_path / "plain.tif", image, (0.1, 0.1, 0.2))
    tifffile.imwrite(tmp_path / "zlib.tif", image, compression="zlib")
    box = (slice(2, 5), slice(7, 31), slice(0, 50))
    plain, packed = TiffFrame(tmp_path / "plain.tif", 3), TiffFrame(tmp_path / "zlib.tif", 3)
    assert plain.mapped and not packed.mapped
    for f in (plain, packed):
        assert f.shape == image.shape and f.dtype == np.uint16
        assert np.array_equal(f.read(box), image[box]) and np.array_equal(f.read(), image)
    floats = image.astype(np.float32)
    floats[3, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", floats)
    assert np.array_equal(TiffFrame(tmp_path / "nan.tif").read((slice(0, 2), slice(None), slice(None))), floats[:2])
    with pytest.raises(UserError, match="nan.tif: 1 voxels are NaN"):
        TiffFrame(tmp_path / "nan.tif").read()
    with pytest.raises(UserError, match="expected a 2D image"):
        TiffFrame(tmp_path / "plain.tif", 2)


def test_ome_zarr_frames_read_boxes(tmp_path):
    pytest.importorskip("zarr")
    from test_omezarr import write_ngff

    from dataset.omezarr import OmeZarrImage
    data = np.random.default_rng(2).integers(0, 4000, size=(3, 2, 4, 16, 12), dtype=np.uint16)
    image = OmeZarrImage(write_ngff(tmp_path / "m.ome.zarr", data))
    box = (slice(1, 3), slice(4, 9), slice(2, 12))
    assert np.array_equal(ZarrFrame(image, 2, channel=1).read(box), data[2, 1][box])


def test_percentiles_from_a_strided_subsample_are_close_to_the_full_ones(frame):
    full = np.percentile(frame.astype(np.float32), predict.NORMALIZE_PERCENTILES)
    assert np.allclose(subsample_percentiles(frame, predict.NORMALIZE_PERCENTILES), full)  # small: exact
    strides = subsample_strides(frame.shape, 1 << 16)
    assert np.prod(strides) >= 16  # this one is really thinned out ...
    low, high = subsample_percentiles(ArrayFrame(frame), predict.NORMALIZE_PERCENTILES, max_samples=1 << 16)
    spread = full[1] - full[0]  # ... and within one grey level of the full ones (1.3 % of the range here)
    assert abs(low - full[0]) <= 1 and abs(high - full[1]) <= 1 and (low, high) != (0, 0)
    smooth = frame + np.random.default_rng(0).random(frame.shape, dtype=np.float32)  # no grey levels
    full = np.percentile(smooth, predict.NORMALIZE_PERCENTILES)
    low, high = subsample_percentiles(smooth, predict.NORMALIZE_PERCENTILES, max_samples=1 << 18)
    assert abs(low - full[0]) < 0.01 * spread and abs(high - full[1]) < 0.01 * spread
    # the block path normalises as dataset3D.normalize does, with those percentiles
    lo, hi = np.percentile(frame.astype(np.float32), [1.0, 99.8])
    assert np.allclose(normalize(frame), (frame.astype(np.float32) - lo) / (hi - lo))


# ----------------------------------------------------------------------------- blocks on the frame's grid
@pytest.mark.parametrize("zoom,budget", [(None, 40), (0.7, 100), (1.6, 330)])
def test_blocks_tile_the_frame_on_its_own_working_grid_and_windows(frame, zoom, budget):
    p = predictor(zoom, frame.shape, max_memory=budget * 2**20)
    layout = p.block_layout(frame.shape)
    blocks = layout.blocks()
    assert layout.n_blocks >= 2
    cover = np.zeros(frame.shape, np.uint8)
    for b in blocks:
        cover[b.core] += 1
        assert all(e.start <= c.start and c.stop <= e.stop for c, e in zip(b.core, b.extent))
        for axis, w in zip(layout.axes, b.working):  # windows of the block = windows of the frame
            assert w.start % axis.step == 0 or w.start == max(axis.m - axis.roi, 0)
            assert (w.stop - w.start - axis.roi) % axis.step == 0 or w.stop == axis.m
    assert (cover == 1).all()  # the cores tile the frame
    volume = normalize(frame)
    working = resample_image(volume, p.working_shape(frame.shape))
    maps = torch.from_numpy(np.stack([working, 1 - working]))
    back = resample_probabilities(maps, frame.shape)
    for b in blocks[:3]:
        mine = layout.to_working(volume[b.extent], b)
        assert np.allclose(mine, working[b.working], atol=1e-5)
        core = tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(b.core, b.extent))
        native = layout.to_native(maps[(slice(None), *b.working)], b)
        assert np.allclose(native[(slice(None), *core)], back[(slice(None), *b.core)], atol=1e-5)


# (None, 50, 0.5): 12 blocks of cores 32x32x96 at the default overlap; 40 MiB would make cores 16 voxels thin there,
# too thin for a nucleus to lie away from every border.
@pytest.mark.parametrize("zoom,budget,overlap", [(None, 40, 0.25), (None, 50, 0.5), (0.7, 100, 0.5), (1.6, 330, 0.5)])
def test_tiled_labels_are_the_in_memory_ones(frame, zoom, budget, overlap):
    """Objects away from every block border are the very same voxels (where the frame is resampled, or windows
    overlap by half: up to float rounding, which can move the watershed's cut between two touching nuclei; 13 of 15
    here); SEG of tiled against in-memory >= 0.99."""
    reference = predictor(zoom, frame.shape, overlap=overlap).instances(frame)
    p = predictor(zoom, frame.shape, max_memory=budget * 2**20, overlap=overlap)
    layout = p.block_layout(frame.shape)
    assert layout is not None and layout.n_blocks >= (4 if zoom is None else 2), layout.describe()
    exact = zoom is None and overlap == 0.25
    tiled_labels = p.instances(frame)
    assert tiled_labels.dtype == np.uint16 and tiled_labels.shape == frame.shape
    assert np.array_equal(np.unique(tiled_labels), np.arange(tiled_labels.max() + 1))  # numbered 1..N
    away = objects_away_from_borders(reference, layout)
    assert len(away) >= 3
    same = [same_object_in(tiled_labels, reference == label) for label in away]
    assert all(same) if exact else sum(same) >= 0.85 * len(same)
    jaccard, n = seg_score(tiled_labels, reference)
    assert n > 10 and jaccard / n >= 0.99
    crossing = [label for label in range(1, reference.max() + 1) if label not in away]
    assert crossing  # objects cut by a border are joined again
    assert sum(same_object_in(tiled_labels, reference == label) for label in crossing) >= 0.9 * len(crossing)


def test_stitching_on_disk_gives_the_same_labels_and_leaves_nothing(frame, tmp_path):
    p = predictor(max_memory=40 * 2**20)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(tiled, "STITCH_SHARE", 0.0)  # the stitching arrays go to disk
    try:
        on_disk = p.block_layout(frame.shape)
        assert on_disk.on_disk
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        labels = p.instances(frame, scratch=scratch)
    finally:
        monkey.undo()
    in_memory = dataclasses.replace(on_disk, on_disk=False)  # the same blocks, stitched in memory
    reference = p._instances_in_blocks(ArrayFrame(frame), in_memory, p.post, None)
    assert isinstance(labels, np.memmap) and not isinstance(reference, np.memmap)
    assert np.array_equal(labels, reference) and labels.max() > 10
    assert list(scratch.iterdir()) == []  # an unlinked file: nothing to clean up, even after a crash


def test_objects_are_joined_across_many_small_blocks():
    """A rod across every block: one object, however many cores it crosses; far more ids than a frame holds."""
    shape = (8, 40, 200)
    layout = tiled.plan_blocks(shape, (2, 4, 4), lambda e, w: 0 if e[2] <= 20 else 10**9, 300_000)
    assert layout.grid[2] >= 15
    image = np.zeros(shape, np.uint16)
    image[2:6, 10:30, 5:195] = 1
    image[2:6, 35:38, 20:40] = 1

    def segment(raw, block):
        return ndimage.label(raw)[0].astype(np.uint16)

    labels = tiled.segment_in_blocks(ArrayFrame(image), layout, segment)
    assert labels.max() == 2 and (labels[image > 0] > 0).all() and not labels[image == 0].any()
    assert len(np.unique(labels[2:6, 10:30, 5:195])) == 1


def test_more_objects_than_a_ctc_mask_holds_is_one_line():
    shape = (1, 1, 140000)
    layout = tiled.plan_blocks(shape, (0, 0, 2), lambda e, w: int(np.prod(e)), 600_000)
    assert layout.n_blocks >= 4  # each block holds fewer than 65536 objects, the frame more

    def segment(raw, block):
        out = np.zeros(raw.shape, np.uint16)
        out[..., ::2] = 1
        return ndimage.label(out)[0].astype(np.uint16)

    with pytest.raises(UserError, match="more than the 65535 a CTC result mask"):
        tiled.segment_in_blocks(ArrayFrame(np.zeros(shape, np.uint16)), layout, segment)


# ----------------------------------------------------------------------------- main.py predict --max-memory
def test_predict_with_a_small_budget_writes_the_same_masks(tmp_path, capsys):
    """A real (untrained) U-Net: on the frame's own windows, blocks give the masks of the whole frame."""
    from models import build_model
    from utils import save_checkpoint
    data = write_dataset(tmp_path / "set", SynthConfig(shape=(8, 96, 96), frames=2, radius_xy=(5.0, 7.0)), seed=2)
    torch.manual_seed(0)
    model = build_model("unet", features=(4, 8, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model_name": "unet", "model_config": model.config, "model": model.state_dict(),
                           "crop_size": [8, 32, 32], "voxel_size": [0.125, 0.125, 0.2],
                           "post": {"min_size": 5, "min_marker_size": 2}})
    common = ["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "01", "--device", "cpu"]
    assert main.main([*common, "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    assert main.main([*common, "--out", str(tmp_path / "blocks"), "--max-memory", "6M"]) == 0
    err = capsys.readouterr().err
    assert "predicted in" in err and "blocks" in err
    for t in (0, 1):
        whole, blocks = (read_labels(tmp_path / name / f"mask00{t}.tif") for name in ("whole", "blocks"))
        assert whole.max() > 20
        jaccard, n = seg_score(blocks, whole)
        assert jaccard / n >= 0.99


# ----------------------------------------------------------------------------- peak memory
CHILD = '''
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np, torch
from torch import nn
import predict
from dataset.frames import TiffFrame
from inference import PostParams
{model}
torch.set_num_threads(2)
p = predict.Predictor(Smooth(), (16, 32, 32), post=PostParams(min_size=10), voxel_size=(0.125, 0.125, 0.2),
                      max_memory={budget})
frame = TiffFrame({path!r})
layout = p.block_layout(frame.shape)
start = time.perf_counter()
labels = p.instances(frame)
seconds = time.perf_counter() - start
hwm = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
np.save({out!r}, np.asarray(labels))
print(json.dumps({{"hwm": hwm, "blocks": layout.n_blocks if layout else 1, "seconds": seconds,
                  "need": p.memory_need(frame.shape)}}))
'''


def run_child(tmp_path, path, budget, name):
    code = CHILD.format(root=str(ROOT), model=inspect.getsource(Smooth), budget=budget, path=str(path),
                        out=str(tmp_path / f"{name}.npy"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), tmp_path / f"{name}.npy"


def test_peak_memory_follows_the_budget_not_the_frame(tmp_path):
    """A 48x512x512 frame (estimated to need 1.2 GiB in one piece) under a 100 MiB budget: at least 8 blocks,
    the child's peak RSS stays under budget + baseline (the same child on a one-window frame: interpreter,
    torch, the model and one window batch), the in-memory child's does not, and the labels agree (SEG >= 0.99)."""
    tile = generate_sequence(SynthConfig(shape=(48, 128, 128), frames=1), 4)[0][0]
    big = np.tile(tile, (1, 4, 4))
    write_tiff(tmp_path / "big.tif", big, (0.125, 0.125, 0.2))
    write_tiff(tmp_path / "small.tif", tile[:16, :32, :32], (0.125, 0.125, 0.2))
    budget = 100 * 2**20
    started = time.perf_counter()
    baseline, _ = run_child(tmp_path, tmp_path / "small.tif", budget, "small")
    blocks, tiled_path = run_child(tmp_path, tmp_path / "big.tif", budget, "tiled")
    whole, whole_path = run_child(tmp_path, tmp_path / "big.tif", 64 * 2**30, "whole")
    print(f"baseline {baseline['hwm'] / 2**20:.0f} MiB; tiled ({blocks['blocks']} blocks) {blocks['hwm'] / 2**20:.0f} MiB "
          f"in {blocks['seconds']:.1f} s; in memory {whole['hwm'] / 2**20:.0f} MiB in {whole['seconds']:.1f} s; "
          f"{time.perf_counter() - started:.0f} s in all")
    assert blocks["need"] > 10 * budget and blocks["blocks"] >= 8 and whole["blocks"] == 1
    assert blocks["hwm"] <= budget + baseline["hwm"]
    assert whole["hwm"] > budget + baseline["hwm"]  # the budget really is far below the frame's need
    jaccard, n = seg_score(np.load(tiled_path), np.load(whole_path))
    assert n > 100 and jaccard / n >= 0.99


# ----------------------------------------------------------------------------- tuning at the working grid
def test_tuning_runs_on_the_working_grid_and_keeps_the_native_size_limits(tmp_path, monkeypatch):
    """Predictor.tune searches the thresholds where the window ran (the working grid): every candidate's
    watershed sees working-grid shapes, the native min sizes are kept, and the thresholds it picks score at the
    native grid within 0.02 SEG of the best a native-grid search finds."""
    from dataset import Sequence
    root = write_dataset(tmp_path / "set", SynthConfig(shape=(24, 96, 96), frames=2, radius_xy=(7.0, 9.0)), seed=3)
    seq = Sequence(root, "01")
    p = predictor(zoom=0.5, shape=seq.shape)
    p.post = PostParams(min_size=40, min_marker_size=8)
    working = p.working_shape(seq.shape)
    assert p.working_post().min_size == 5 and p.working_post().min_marker_size == 1  # 8 native voxels per working one
    shapes, real = [], predict.inference.instances
    monkeypatch.setattr(predict.inference, "instances",
                        lambda s, m, params, voxel_size=None: shapes.append(s.shape[1:]) or real(s, m, params, voxel_size))
    grid = {"fg_threshold": (0.3, 0.5, 0.7), "marker_threshold": (0.4, 0.6, 0.8)}
    post, _ = p.tune(seq, seq.frames, grid, progress=False)
    assert set(shapes) == {working} and len(shapes) == 2 * 10
    assert (post.min_size, post.min_marker_size) == (40, 8)
    native = [p.probabilities(seq.image(t)) for t in seq.frames]
    gts = [seq.seg(t) for t in seq.frames]
    _, best_native = predict.inference.tune_postprocessing(native, gts, grid, base=PostParams(min_size=40, min_marker_size=8))

    def native_seg(params):
        scores = [seg_score(real(s, m, params), g) for (s, m), g in zip(native, gts)]
        return sum(j for j, _ in scores) / sum(n for _, n in scores)

    assert native_seg(post) >= best_native - 0.02


def test_tuning_for_op_ctb_scores_what_the_written_result_scores(tmp_path):
    """objective="OP_CTB": each candidate's masks are tracked and scored in memory; the score tune returns is
    the OP_CTB that check_accuracy gives the result predicted with the chosen thresholds, and no lower than the
    OP_CTB of the SEG-tuned thresholds (both are in the grid). Frames that are not consecutive are refused."""
    from dataset import Sequence
    from metrics import check_accuracy
    root = write_dataset(tmp_path / "set", SynthConfig(shape=(16, 64, 64), frames=4, radius_xy=(6.0, 8.0)), seed=4)
    seq = Sequence(root, "01")
    grid = {"fg_threshold": (0.3, 0.6), "marker_threshold": (0.5, 0.7, 0.9)}
    results = {}
    for objective in ("SEG", "OP_CTB"):
        p = predictor()
        post, score = p.tune(seq, seq.frames, grid, progress=False, objective=objective)
        out = p.predict_sequence(seq, tmp_path / f"{objective}_RES", progress=False)
        results[objective] = (score, check_accuracy(out, seq.gt_dir, cache=False))
    score, written = results["OP_CTB"]
    assert score == pytest.approx(written["OP_CTB"], abs=1e-12)
    assert written["OP_CTB"] >= results["SEG"][1]["OP_CTB"] - 1e-12
    assert results["SEG"][0] == pytest.approx(results["SEG"][1]["SEG"], abs=1e-12)
    with pytest.raises(UserError, match="OP_CTB tuning"):
        predictor().tune(seq, [0, 2], grid, progress=False, objective="OP_CTB")
    with pytest.raises(UserError, match="expected one of SEG, OP_CTB"):
        predictor().tune(seq, [0], grid, progress=False, objective="TRA")
