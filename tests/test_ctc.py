"""The CTC data layer: reading, writing, lineage rules and every bad input named in issue 3."""
import numpy as np
import pytest
import tifffile

from errors import UserError

import main
from dataset import (CTCFormatError, ResultFolder, Sequence, check_lineage, check_track_folder, labels_present,
                     lineage_problems, read_labels, read_tracks, write_tiff, write_tracks)


def ball(shape, center, radius):
    zz, yy, xx = np.ogrid[tuple(slice(0, s) for s in shape)]
    return (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= radius ** 2


def make_set(root, frames=3, shape=(8, 24, 24), seq="01"):
    """A tiny valid CTC set: one nucleus (label 1) through all frames, label 2 from frame 1 on."""
    rng = np.random.default_rng(0)
    (root / seq).mkdir(parents=True)
    (root / f"{seq}_GT" / "SEG").mkdir(parents=True)
    (root / f"{seq}_GT" / "TRA").mkdir(parents=True)
    images, labels = [], []
    for t in range(frames):
        lab = np.zeros(shape, np.uint16)
        lab[ball(shape, (4, 6 + t, 6), 3)] = 1
        if t >= 1:
            lab[ball(shape, (4, 17, 17), 3)] = 2
        img = (rng.poisson(100, shape) + 500 * (lab > 0)).astype(np.uint16)
        tifffile.imwrite(root / seq / f"t{t:03d}.tif", img)
        tifffile.imwrite(root / f"{seq}_GT" / "SEG" / f"man_seg{t:03d}.tif", lab)
        tifffile.imwrite(root / f"{seq}_GT" / "TRA" / f"man_track{t:03d}.tif", lab)
        images.append(img)
        labels.append(lab)
    write_tracks(root / f"{seq}_GT" / "TRA" / "man_track.txt", [[1, 0, frames - 1, 0], [2, 1, frames - 1, 0]])
    return images, labels


def test_sequence_reads_frames_and_gt(tmp_path):
    images, labels = make_set(tmp_path)
    seq = Sequence(tmp_path, "01")
    assert seq.frames == [0, 1, 2] and seq.shape == (8, 24, 24) and seq.ndim == 3 and seq.has_gt
    for t in seq.frames:
        np.testing.assert_array_equal(seq.image(t), images[t])
        np.testing.assert_array_equal(seq.seg(t), labels[t])
        np.testing.assert_array_equal(seq.tra(t), labels[t])
    np.testing.assert_array_equal(seq.tracks, [[1, 0, 2, 0], [2, 1, 2, 0]])
    check_track_folder(tmp_path / "01_GT" / "TRA")


def test_frames_sorted_numerically_with_four_digits_and_gaps_reported(tmp_path):
    (tmp_path / "01").mkdir()
    for t in (0, 2, 10, 1001):
        tifffile.imwrite(tmp_path / "01" / (f"t{t:04d}.tif" if t > 999 else f"t{t:03d}.tif"), np.zeros((2, 4, 5), np.uint16))
    with pytest.warns(UserWarning, match="frames missing"):
        seq = Sequence(tmp_path, "01")
    assert seq.frames == [0, 2, 10, 1001]
    assert seq.gaps[:3] == [1, 3, 4] and len(seq.gaps) == 1002 - 4


def test_seg_slices_and_partial_seg(tmp_path):
    make_set(tmp_path)
    seg_dir = tmp_path / "01_GT" / "SEG"
    for f in seg_dir.glob("man_seg*.tif"):
        f.unlink()
    full = read_labels(tmp_path / "01_GT" / "TRA" / "man_track002.tif")
    tifffile.imwrite(seg_dir / "man_seg_002_004.tif", full[4])
    tifffile.imwrite(seg_dir / "man_seg_002_005.tif", full[5])
    seq = Sequence(tmp_path, "01")
    assert seq.seg_frames == [2]
    slices = seq.seg(2)
    assert sorted(slices) == [4, 5]
    np.testing.assert_array_equal(slices[4], full[4])
    with pytest.raises(CTCFormatError, match="no SEG ground truth for frame 0"):
        seq.seg(0)


def test_result_folder_round_trip_and_fiji_metadata(tmp_path):
    _, labels = make_set(tmp_path)
    out = tmp_path / "01_RES"
    with ResultFolder(out, n_frames=3) as res:
        for t, lab in enumerate(labels):
            res.write_mask(t, lab)
        res.write_tracks([[1, 0, 2, 0], [2, 1, 2, 0]])
    assert sorted(p.name for p in out.iterdir()) == ["mask000.tif", "mask001.tif", "mask002.tif", "res_track.txt"]
    for t, lab in enumerate(labels):
        back = read_labels(out / f"mask{t:03d}.tif")
        assert back.dtype == np.uint16
        np.testing.assert_array_equal(back, lab)
        with tifffile.TiffFile(out / f"mask{t:03d}.tif") as tif:  # opens as a Z stack in Fiji/napari
            assert tif.is_imagej and tif.series[0].axes == "ZYX"
    check_track_folder(out, kind="mask", track_name="res_track.txt")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_interrupted_result_folder_leaves_nothing_that_looks_complete(tmp_path):
    out = tmp_path / "01_RES"
    with pytest.raises(RuntimeError):
        with ResultFolder(out, n_frames=2) as res:
            res.write_mask(0, np.ones((2, 3, 3), np.uint16))
            raise RuntimeError("killed")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_result_folder_refuses_non_empty_output_and_replaces_only_a_result_folder(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        ResultFolder(out, 1).__enter__()
    with pytest.raises(UserError, match="replaces only a result folder this tool wrote"):
        ResultFolder(out, 1, overwrite=True).__enter__()
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not list(tmp_path.glob(".*"))
    (out / "keep.txt").unlink()
    for t in range(2):  # a result folder (its content rule) is replaced, and holds only the CTC files
        with ResultFolder(out, 1, overwrite=True) as res:
            res.write_mask(t, np.zeros((2, 2, 2), np.uint16))
            res.write_tracks([])
        assert sorted(p.name for p in out.iterdir()) == [f"mask{t:03d}.tif", "res_track.txt"]
    assert not list(tmp_path.glob(".*"))  # no lock, no partial folder left


def test_write_tiff_is_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a.tif"
    write_tiff(target, np.ones((2, 3, 3), np.uint16))

    def broken(path, *a, **k):
        path.write_bytes(b"II*\x00half")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError):
        write_tiff(target, np.zeros((2, 3, 3), np.uint16))
    np.testing.assert_array_equal(read_labels(target), np.ones((2, 3, 3)))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"]


def test_labels_present_matches_unique():
    rng = np.random.default_rng(1)
    lab = rng.choice([0, 3, 7, 400], size=(5, 6, 7)).astype(np.uint16)
    np.testing.assert_array_equal(labels_present(lab), [3, 7, 400])
    np.testing.assert_array_equal(labels_present(lab.astype(np.int32)), [3, 7, 400])


# ---------------------------------------------------------------------------- lineage rules
def test_lineage_rules_each_violation_is_named():
    present = {0: np.array([1]), 1: np.array([2, 3]), 2: np.array([2, 3, 9])}
    ok = [[1, 0, 0, 0], [2, 1, 2, 1], [3, 1, 2, 1]]
    assert lineage_problems(ok, {0: [1], 1: [2, 3], 2: [2, 3]}) == []
    problems = lineage_problems(ok, present)
    assert problems == ["frame 2: label 9 is not listed in track file"]
    assert any("absent" in p and "label 3" in p for p in lineage_problems(ok, {0: [1], 1: [2], 2: [2, 3]}))
    assert any("parent 1 ends at frame 1" in p for p in lineage_problems([[1, 0, 1, 0], [2, 1, 2, 1]], {0: [1], 1: [1, 2], 2: [2]}))
    assert any("more than once" in p for p in lineage_problems([[1, 0, 0, 0], [1, 0, 0, 0]], {0: [1]}))
    assert any("not a listed track" in p for p in lineage_problems([[1, 0, 0, 5]], {0: [1]}))
    assert any("outside its track" in p for p in lineage_problems([[1, 0, 0, 0]], {0: [1], 1: [1]}))
    with pytest.raises(CTCFormatError, match="label 9"):
        check_lineage(ok, present)


# ---------------------------------------------------------------------------- bad input
def run_cli(argv, capsys):
    code = main.main(argv)
    return code, capsys.readouterr().err


def test_missing_sequence_folder(tmp_path):
    with pytest.raises(CTCFormatError, match=r"02: sequence folder not found"):
        Sequence(tmp_path, "02")


def test_no_frames(tmp_path):
    (tmp_path / "01").mkdir()
    with pytest.raises(CTCFormatError, match=r"01: no frames"):
        Sequence(tmp_path, "01")


def test_frames_of_different_shapes(tmp_path):
    make_set(tmp_path)
    tifffile.imwrite(tmp_path / "01" / "t001.tif", np.zeros((8, 24, 20), np.uint16))
    with pytest.raises(CTCFormatError, match=r"t001.tif: shape \(8, 24, 20\) differs"):
        Sequence(tmp_path, "01")


def test_corrupt_and_truncated_tiff(tmp_path):
    make_set(tmp_path)
    path = tmp_path / "01" / "t002.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: header fine, pixels missing
    with pytest.raises(CTCFormatError, match="t002.tif: truncated or corrupt TIFF"):  # found before any work
        Sequence(tmp_path, "01")
    path.write_bytes(b"this is not a tiff at all")
    with pytest.raises(CTCFormatError, match="t002.tif: not a readable TIFF"):
        Sequence(tmp_path, "01")


def test_2d_image_where_3d_expected(tmp_path):
    make_set(tmp_path)
    seq = Sequence(tmp_path, "01")
    tifffile.imwrite(tmp_path / "01_GT" / "SEG" / "man_seg001.tif", np.zeros((24, 24), np.uint16))
    with pytest.raises(CTCFormatError, match=r"man_seg001.tif: expected a 3D image, found shape \(24, 24\)"):
        seq.seg(1)


def test_float_and_negative_labels(tmp_path):
    make_set(tmp_path)
    seq = Sequence(tmp_path, "01")
    tifffile.imwrite(tmp_path / "01_GT" / "SEG" / "man_seg000.tif", np.full((8, 24, 24), 1.5, np.float32))
    with pytest.raises(CTCFormatError, match="man_seg000.tif: label image has dtype float32"):
        seq.seg(0)
    lab = np.zeros((8, 24, 24), np.int16)
    lab[0, 0, 0] = -3
    tifffile.imwrite(tmp_path / "01_GT" / "TRA" / "man_track000.tif", lab)
    with pytest.raises(CTCFormatError, match="man_track000.tif: label image has negative values"):
        seq.tra(0)


@pytest.mark.parametrize("line", ["1 0 2", "1 0 x 0", "0 0 2 0", "1 0 2 -1", "1 0 2 0 7"])
def test_malformed_track_line(tmp_path, line):
    path = tmp_path / "man_track.txt"
    path.write_text(f"2 0 1 0\n{line}\n")
    with pytest.raises(CTCFormatError, match=r"man_track.txt, line 2: expected 'L B E P'"):
        read_tracks(path)


def test_track_file_names_label_absent_from_its_frames(tmp_path):
    make_set(tmp_path)
    write_tracks(tmp_path / "01_GT" / "TRA" / "man_track.txt", [[1, 0, 2, 0], [2, 0, 2, 0]])
    with pytest.raises(CTCFormatError, match=r"man_track000.tif: label 2 \(track 0-2 in .*man_track.txt\) is absent"):
        check_track_folder(tmp_path / "01_GT" / "TRA")


def test_cli_bad_input_exits_2_with_the_file_named(tmp_path, capsys):
    make_set(tmp_path)
    (tmp_path / "01" / "t001.tif").write_bytes(b"garbage")
    code, err = run_cli(["evaluate", "--res", str(tmp_path / "nope"), "--gt", str(tmp_path / "01_GT")], capsys)
    assert code == 2 and "nope" in err and "Traceback" not in err
