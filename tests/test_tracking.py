"""Tracking: synthetic sequences tracked back from permuted labels (TRA), hand-made divisions, gaps,
empty frames and borders, and the `track` command (bad folders, figures)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import main
from dataset.ctc import ResultFolder, list_frames, read_labels, read_tracks, write_tiff, write_tracks
from dataset.synthetic import SynthConfig, generate_sequence
from dataset.validate import check_lineage, check_track_folder, labels_present
from errors import UserError
from metrics import check_accuracy
from dataset.ctc import list_mask_files
from results import figures_dir_for
from tracking import MAX_INPUT_LABEL, TrackParams, link, relabel, track_sequence

VOXEL_3D = (0.125, 0.125, 0.2)  # x, y, z in µm
VOXEL_2D = (0.125, 0.125)


# ----------------------------------------------------------------------------- helpers
def draw(shape, voxel_size, objects) -> np.ndarray:
    """uint16 mask with balls (label, centre in µm in array order, radius in µm); later ones on top."""
    spacing = np.array(voxel_size[:len(shape)][::-1])
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    mask = np.zeros(shape, np.uint16)
    for label, centre, radius in objects:
        d2 = sum(((g * s) - c) ** 2 for g, s, c in zip(grids, spacing, centre))
        mask[d2 <= radius ** 2] = label
    return mask


def track_rows(tracks) -> dict[int, tuple[int, int, int]]:
    return {int(l): (int(b), int(e), int(p)) for l, b, e, p in np.asarray(tracks).reshape(-1, 4)}


def at(mask, voxel_size, centre) -> int:
    """Label of `mask` at a point given in µm (array order)."""
    spacing = np.array(voxel_size[:mask.ndim][::-1])
    return int(mask[tuple(np.round(np.array(centre) / spacing).astype(int))])


def track(masks, voxel_size, params=None):
    """Track in-memory masks; check the CTC rules; return (relabelled masks, rows by label)."""
    relabelled, tracks = track_sequence(masks, voxel_size=voxel_size, params=params)
    out = [m for _, m in relabelled]
    check_lineage(tracks, {t: labels_present(m) for t, m in enumerate(out)})
    assert all(m.dtype == np.uint16 and m.shape == masks[0].shape for m in out)
    return out, track_rows(tracks)


def divisions(tracks) -> int:
    """Number of tracks with two children."""
    return int((np.bincount(np.asarray(tracks)[:, 3])[1:] == 2).sum())


def permute_labels(labels: list[np.ndarray], rng) -> list[np.ndarray]:
    """Each frame's labels replaced by distinct random values: identity across frames removed."""
    out = []
    for frame in labels:
        present = labels_present(frame)
        lut = np.zeros(int(frame.max()) + 1, np.uint16)
        lut[present] = rng.choice(np.arange(1, 65536), present.size, replace=False)
        out.append(lut[frame])
    return out


# ----------------------------------------------------------------------------- acceptance: synthetic GT
@pytest.mark.parametrize("shape,seed", [((32, 128, 128), 0), ((32, 128, 128), 1), ((128, 128), 2)])
def test_permuted_ground_truth_is_tracked_back(tmp_path, shape, seed):
    cfg = SynthConfig(shape=shape, frames=14, divisions=(3, 4))
    _, labels, gt_tracks = generate_sequence(cfg, seed)
    assert divisions(gt_tracks) >= 2
    gt = tmp_path / "01_GT"
    for t, frame in enumerate(labels):
        write_tiff(gt / "TRA" / f"man_track{t:03d}.tif", frame)
    write_tracks(gt / "TRA" / "man_track.txt", gt_tracks)
    masks = permute_labels(labels, np.random.default_rng(seed))

    res = tmp_path / "01_RES"
    lineage = link(iter(masks), cfg.voxel_size)
    with ResultFolder(res, n_frames=len(masks)) as folder:
        for t, mask in enumerate(masks):
            folder.write_mask(t, relabel(mask, lineage.luts[t]))
        folder.write_tracks(lineage.tracks)

    check_track_folder(res, kind="mask", track_name="res_track.txt")
    scores = check_accuracy(res, gt)
    assert scores["TRA"] >= 0.99, scores
    assert scores["DET"] == 1.0
    assert divisions(read_tracks(res / "res_track.txt")) == divisions(gt_tracks)

    ctc_metrics = pytest.importorskip("ctc_metrics")
    with contextlib.redirect_stdout(io.StringIO()):
        oracle = ctc_metrics.evaluate_sequence(str(res), str(gt), metrics=["TRA"], threads=1)
    assert oracle["TRA"] >= 0.99
    assert oracle["TRA"] == pytest.approx(scores["TRA"], abs=1e-6)


# ----------------------------------------------------------------------------- hand-made cases
@pytest.mark.parametrize("ndim", [2, 3])
def test_single_division(ndim):
    """Mother (frames 0-2) divides into two half-volume daughters (3-4); a bystander stays put."""
    shape, voxel = ((20, 64, 64), VOXEL_3D) if ndim == 3 else ((64, 64), VOXEL_2D)
    z = (2.0,) if ndim == 3 else ()
    mother = [z + (4.0, 3.0 + 0.2 * t) for t in range(3)]
    daughters = [z + (4.0, 2.5), z + (4.0, 4.4)]
    bystander = z + (1.5, 6.5)
    frames = [draw(shape, voxel, [(5, mother[t], 1.2), (9, bystander, 1.1)]) for t in range(3)]
    frames += [draw(shape, voxel, [(2, daughters[0], 0.95), (4, daughters[1], 0.95), (7, bystander, 1.1)]) for _ in range(2)]
    out, rows = track(frames, voxel)

    m = at(out[0], voxel, mother[0])
    b = at(out[0], voxel, bystander)
    d1, d2 = (at(out[3], voxel, d) for d in daughters)
    assert len({m, b, d1, d2}) == 4 and len(rows) == 4
    assert rows[m] == (0, 2, 0)
    assert rows[d1] == (3, 4, m) and rows[d2] == (3, 4, m)
    assert rows[b] == (0, 4, 0)
    assert at(out[4], voxel, daughters[0]) == d1  # daughters keep their labels


@pytest.mark.parametrize("gap", [1, 2, 3])
def test_gap_closing(gap):
    """A nucleus missing for 1 or 2 frames continues under a new label whose parent is the old one; 3 is too long."""
    shape = (64, 96)
    a = lambda t: (4.0, 2.0 + 0.15 * t)  # noqa: E731
    other = (4.0, 10.0)
    n = 3 + gap + 3
    frames = [draw(shape, VOXEL_2D, ([(1, a(t), 1.0)] if not 3 <= t < 3 + gap else []) + [(2, other, 1.0)])
              for t in range(n)]
    out, rows = track(frames, VOXEL_2D)
    before, after = at(out[0], VOXEL_2D, a(0)), at(out[n - 1], VOXEL_2D, a(n - 1))
    assert before != after
    assert rows[before] == (0, 2, 0)
    assert rows[after][:2] == (3 + gap, n - 1)
    assert rows[after][2] == (before if gap <= 2 else 0)
    assert rows[at(out[0], VOXEL_2D, other)] == (0, n - 1, 0)


def test_empty_frame_in_the_middle():
    """Frame 2 has no nuclei: a valid result, and both tracks continue after it with parent links."""
    shape = (64, 96)
    a, b = (3.0, 2.0), (4.5, 9.0)
    frames = [draw(shape, VOXEL_2D, [(3, a, 1.0), (8, b, 1.2)]) for _ in range(5)]
    frames[2][:] = 0
    out, rows = track(frames, VOXEL_2D)
    assert not out[2].any()
    assert len(rows) == 4
    for centre in (a, b):
        first, second = at(out[0], VOXEL_2D, centre), at(out[4], VOXEL_2D, centre)
        assert rows[first] == (0, 1, 0) and rows[second] == (3, 4, first)


def test_all_frames_empty():
    frames = [np.zeros((16, 16), np.uint16) for _ in range(3)]
    lineage = link(frames, VOXEL_2D)
    assert lineage.tracks.shape == (0, 4)
    assert not relabel(frames[1], lineage.luts[1]).any()


def test_appearance_and_disappearance_at_borders():
    """One nucleus leaves across the right border, another enters on the left later: two unrelated tracks,
    no division (the entering one is small and far) and no gap closing (too far)."""
    shape = (64, 96)  # 8 x 12 µm
    leaving = [(4.0, 11.0 + 0.5 * t) for t in range(3)]  # radius 1, cut by the border, gone from frame 3
    entering = {t: (4.0, -0.9 + 0.4 * (t - 4)) for t in range(4, 8)}
    frames = []
    for t in range(8):
        objs = [(6, (2.0, 6.0), 1.0)]
        if t < 3:
            objs.append((4, leaving[t], 1.0))
        if t in entering:
            objs.append((9, entering[t], 1.0))
        frames.append(draw(shape, VOXEL_2D, objs))
    out, rows = track(frames, VOXEL_2D)
    assert len(rows) == 3
    gone = at(out[0], VOXEL_2D, (4.0, 11.5))
    new = at(out[7], VOXEL_2D, (4.0, 0.5))
    assert rows[gone] == (0, 2, 0)
    assert rows[new] == (4, 7, 0)
    assert rows[at(out[0], VOXEL_2D, (2.0, 6.0))] == (0, 7, 0)


def test_label_values_and_dtypes():
    """Any integer labels up to MAX_INPUT_LABEL (int32, uint32, sparse values) track the same (labels follow input order)."""
    base = [draw((48, 48), VOXEL_2D, [(1, (2.0, 1.5 + 0.1 * t), 0.8), (2, (3.5, 4.0), 0.8)]) for t in range(3)]
    big = [np.where(m == 1, 70000, np.where(m == 2, MAX_INPUT_LABEL, 0)).astype(np.uint32) for m in base]
    signed = [m.astype(np.int32) * 3 for m in base]
    expected = [m for _, m in track_sequence(base, voxel_size=VOXEL_2D)[0]]
    for masks in (big, signed):
        relabelled, tracks = track_sequence(lambda t, masks=masks: masks[t], range(3), VOXEL_2D)
        assert all(np.array_equal(a, b) for (_, a), b in zip(relabelled, expected))
    with pytest.raises(UserError, match="larger than"):
        link([big[0].astype(np.int64) + MAX_INPUT_LABEL], VOXEL_2D)
    with pytest.raises(UserError, match="negative"):
        link([-signed[0]], VOXEL_2D)
    with pytest.raises(UserError, match="shape"):
        link([base[0], base[0][:40]], VOXEL_2D)
    with pytest.raises(UserError, match="not seen"):
        relabel(base[0] * 3, link([base[0]], VOXEL_2D).luts[0])


def test_params_and_voxel_size_are_checked():
    with pytest.raises(UserError, match="max_distance"):
        TrackParams(max_distance=0)
    with pytest.raises(UserError, match="voxel size"):
        link([np.zeros((4, 8, 8), np.uint16)], (0.1, 0.1))


def test_distance_gate_uses_physical_units():
    """The same 1.5 µm jump links under max_distance 2 µm but not 1 µm (no overlap either way)."""
    frames = [draw((32, 64), VOXEL_2D, [(1, (2.0, 2.0 + 1.5 * t), 0.5)]) for t in range(2)]
    assert len(link(frames, VOXEL_2D, TrackParams(max_distance=2.0)).tracks) == 1
    assert len(link(frames, VOXEL_2D, TrackParams(max_distance=1.0)).tracks) == 2
    # the same pixels with a 2x coarser voxel are a 3 µm jump
    assert len(link(frames, (0.25, 0.25), TrackParams(max_distance=2.0)).tracks) == 2


# ----------------------------------------------------------------------------- the track command
def division_masks():
    z = (2.0,)
    frames = [draw((20, 48, 64), VOXEL_3D, [(5, z + (3.0, 3.0 + 0.2 * t), 1.2), (9, z + (1.2, 6.5), 1.0)]) for t in range(3)]
    frames += [draw((20, 48, 64), VOXEL_3D, [(2, z + (3.0, 2.5), 0.95), (4, z + (3.0, 4.4), 0.95), (7, z + (1.2, 6.5), 1.0)])
               for _ in range(2)]
    return frames


def write_masks(folder: Path, frames, name=lambda t: f"seg_{t}.tif") -> None:
    for t, frame in enumerate(frames):
        write_tiff(folder / name(t), frame)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main.main(["track", *map(str, argv)])
    return code, capsys.readouterr().err


def test_track_command_writes_valid_results_and_figures(tmp_path, capsys):
    masks, out = tmp_path / "masks", tmp_path / "out" / "01_RES"
    frames = division_masks()
    write_masks(masks, frames, name=lambda t: f"seg_{t}.tif")  # unpadded numbers: sorted numerically
    code, err = run_cli(capsys, "--masks", masks, "--out", out, "--figures")
    assert code == 0, err
    assert sorted(list_frames(out, "mask")) == list(range(5))
    assert sorted(p.name for p in out.iterdir()) == [f"mask{t:03d}.tif" for t in range(5)] + ["res_track.txt"]
    check_track_folder(out, kind="mask", track_name="res_track.txt")
    rows = track_rows(read_tracks(out / "res_track.txt"))
    assert sorted(r[2] for r in rows.values()).count(0) == 2 and len(rows) == 4  # one division
    assert read_labels(out / "mask000.tif").shape == frames[0].shape

    figures = figures_dir_for(out)
    assert figures == tmp_path / "out" / "01_RES_figures"
    pngs = sorted(p.name for p in figures.iterdir())
    assert pngs == ["lineage.png"] + [f"projection_{t:03d}.png" for t in range(5)]
    for name in ("projection_003.png", "lineage.png"):
        image = imread(figures / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 200
        assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 2

    code, err = run_cli(capsys, "--masks", masks, "--out", out)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert run_cli(capsys, "--masks", masks, "--out", out, "--overwrite", "--figures")[0] == 0


def test_track_command_2d_with_voxel_size(tmp_path, capsys):
    masks, out = tmp_path / "masks", tmp_path / "res"
    frames = [draw((32, 128), VOXEL_2D, [(1, (2.0, 1.0 + 6.0 * t), 0.5)]) for t in range(3)]
    write_masks(masks, frames, name=lambda t: f"man_seg{t:03d}.tif")
    assert run_cli(capsys, "--masks", masks, "--out", out, "--voxel-size", 0.125, 0.125)[0] == 0
    assert len(read_tracks(out / "res_track.txt")) == 3  # 6 µm jumps (48 pixels): beyond max_distance, no links
    assert run_cli(capsys, "--masks", masks, "--out", out, "--voxel-size", 0.05, 0.05, "--overwrite")[0] == 0
    assert len(read_tracks(out / "res_track.txt")) == 1  # the same 48 pixels are 2.4 µm at 0.05 µm per pixel
    code, err = run_cli(capsys, "--masks", masks, "--out", out, "--voxel-size", 0.1, "--overwrite")
    assert code == 2 and "voxel size" in err


def test_track_command_refuses_mixed_shapes(tmp_path, capsys):
    masks = tmp_path / "masks"
    frames = division_masks()
    frames[3] = frames[3][:, :40]
    write_masks(masks, frames, name=lambda t: f"mask{t:03d}.tif")
    code, err = run_cli(capsys, "--masks", masks, "--out", tmp_path / "res")
    assert code == 2 and "mask003.tif" in err and "shape" in err
    assert not (tmp_path / "res").exists()


def test_track_command_refuses_gaps_in_frame_numbers(tmp_path, capsys):
    masks = tmp_path / "masks"
    write_masks(masks, division_masks(), name=lambda t: f"t{t:03d}.tif")
    (masks / "t002.tif").unlink()
    code, err = run_cli(capsys, "--masks", masks, "--out", tmp_path / "res")
    assert code == 2 and "t001.tif" in err and "t003.tif" in err and "frame 2 missing" in err


def test_list_mask_files(tmp_path):
    for name in ("a_10.tif", "a_9.tif", "a_11.TIF", ".a_12.tif.part", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_mask_files(tmp_path).values()] == ["a_9.tif", "a_10.tif", "a_11.TIF"]
    (tmp_path / "b_010.tif").write_bytes(b"")
    with pytest.raises(UserError, match="frame 10 also given"):
        list_mask_files(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .*masks found"):
        list_mask_files(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        list_mask_files(tmp_path / "missing")
