"""metrics.py: choosing measures, the matching cache, the grouped report and the evaluate command, bad input."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

import main
import metrics
from dataset.ctc import CTCFormatError, write_tiff, write_tracks
from errors import UserError
from cli import evaluate_command
from metrics import CACHE_NAME, check_accuracy, format_table
from test_metrics import GT_PARENTS, SHAPE, case_swapped_labels, reference, tracks_from, write_case


@pytest.fixture
def case(tmp_path):
    res, parents = case_swapped_labels()
    return write_case(tmp_path, reference(), res, parents)


@pytest.fixture
def reads(monkeypatch):
    """The files metrics.py reads label images from, in order."""
    seen = []
    real = metrics.read_labels

    def read_labels(path, ndim=3):
        seen.append(os.path.basename(path))
        return real(path, ndim)

    monkeypatch.setattr(metrics, "read_labels", read_labels)
    return seen


# ----------------------------------------------------------------------------- which measures
def test_all_measures_by_default(case):
    scores = check_accuracy(*case)
    for key in ("Valid", "CHOTA", "BC(0)", "BC(1)", "BC(2)", "BC(3)", "CT", "CCA", "TF", "SEG", "TRA", "DET", "MOTA",
                "HOTA", "IDF1", "MT", "ML", "FAF", "LNK", "OP_CTB", "OP_CSB", "BIO", "OP_CLB", "NS", "AOGM"):
        assert key in scores, key
    assert scores["Valid"] == 1
    assert json.loads(json.dumps(scores)) == scores  # plain JSON values


def test_only_the_measures_asked_for_and_their_parts(case):
    assert {"TRA", "DET"} & set(check_accuracy(*case, ["TRA"])) == {"TRA"}
    scores = check_accuracy(*case, "op_clb")  # case-insensitive; made of LNK and BIO = CT, TF, BC, CCA
    assert {"OP_CLB", "LNK", "BIO", "CT", "TF", "BC(2)", "CCA"} <= set(scores)
    assert not {"SEG", "DET", "TRA", "CHOTA", "HOTA", "Valid"} & set(scores)
    scores = check_accuracy(*case, ["BC(5)"])
    assert [k for k in scores if k.startswith("BC(")] == [f"BC({i})" for i in range(6)]
    assert check_accuracy(*case, "SEG, TRA")["TRA"] == check_accuracy(*case)["TRA"]


def test_unknown_measure_names_the_known_ones(case):
    with pytest.raises(metrics.UnknownMeasureError, match=r"unknown measure 'TRAA'.*CHOTA.*OP_CLB"):
        check_accuracy(*case, ["SEG", "TRAA"])
    assert issubclass(metrics.UnknownMeasureError, UserError)
    with pytest.raises(metrics.UnknownMeasureError):
        check_accuracy(*case, "")


def test_tracking_only_measures_skip_the_seg_ground_truth(case, reads):
    check_accuracy(*case, ["TRA", "LNK", "BIO"], cache=False)
    assert reads and not [name for name in reads if name.startswith("man_seg")]


# ----------------------------------------------------------------------------- the cache
def test_rescoring_reads_no_mask(case, reads):
    res_dir, gt_dir = case
    first = check_accuracy(res_dir, gt_dir)
    assert (res_dir / CACHE_NAME).is_file() and not list(res_dir.glob(".*.part"))
    reads.clear()
    assert check_accuracy(res_dir, gt_dir) == first
    assert check_accuracy(res_dir, gt_dir, ["CT", "TF", "LNK"])["CT"] == first["CT"]
    assert reads == []


def test_seg_after_tracking_reads_only_the_seg_frames(tmp_path, reads):
    res, parents = case_swapped_labels()
    gt = reference()
    res_dir, gt_dir = write_case(tmp_path, gt, res, parents, seg={2: gt[2]})
    check_accuracy(res_dir, gt_dir, ["TRA"])
    reads.clear()
    scores = check_accuracy(res_dir, gt_dir, ["SEG"])
    assert sorted(reads) == ["man_seg002.tif", "mask002.tif"]  # no TRA ground truth, one mask
    assert scores["SEG"] == check_accuracy(res_dir, gt_dir, cache=False)["SEG"]
    reads.clear()
    check_accuracy(res_dir, gt_dir)
    assert reads == []


def test_a_changed_result_is_not_scored_from_the_cache(case):
    res_dir, gt_dir = case
    before = check_accuracy(res_dir, gt_dir)
    mask = reference()[3]
    mask[mask == 1] = 0  # cell 1 missed in frame 3: same file size, new content
    write_tiff(res_dir / "mask003.tif", mask)
    write_tracks(res_dir / "res_track.txt", tracks_from([*reference(3), mask], GT_PARENTS))
    after = check_accuracy(res_dir, gt_dir)
    assert after == check_accuracy(res_dir, gt_dir, cache=False)
    assert after["FN"] == before["FN"] + 1


def test_a_changed_ground_truth_is_not_scored_from_the_cache(case):
    res_dir, gt_dir = case
    before = check_accuracy(res_dir, gt_dir)
    frame = reference()[0]
    frame[frame == 2] = 0
    write_tiff(gt_dir / "TRA" / "man_track000.tif", frame)
    write_tracks(gt_dir / "TRA" / "man_track.txt", [[1, 0, 3, 0], [2, 1, 3, 0], [3, 0, 1, 0], [4, 2, 3, 3], [5, 2, 3, 3]])
    after = check_accuracy(res_dir, gt_dir)
    assert after["n_ref_objects"] == before["n_ref_objects"] - 1
    assert after == check_accuracy(res_dir, gt_dir, cache=False)


def test_a_touched_mask_is_matched_again(case, reads):
    res_dir, gt_dir = case
    check_accuracy(res_dir, gt_dir)
    st = os.stat(res_dir / "mask001.tif")
    os.utime(res_dir / "mask001.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    reads.clear()
    check_accuracy(res_dir, gt_dir)
    assert "mask001.tif" in reads


def test_a_broken_cache_file_is_ignored(case):
    res_dir, gt_dir = case
    expected = check_accuracy(res_dir, gt_dir, cache=False)
    (res_dir / CACHE_NAME).write_bytes(b"not a zip file")
    assert check_accuracy(res_dir, gt_dir) == expected
    np.savez(res_dir / CACHE_NAME, format=np.array("something else/9"))
    assert check_accuracy(res_dir, gt_dir) == expected


def test_the_cache_is_never_written_into_the_ground_truth(case):
    res_dir, gt_dir = case
    before = sorted(p.relative_to(gt_dir) for p in gt_dir.rglob("*"))
    check_accuracy(res_dir, gt_dir, cache=gt_dir / "TRA" / "matching.npz")
    check_accuracy(res_dir, gt_dir, cache=gt_dir.parent / "01_GT" / "SEG" / ".." / "x.npz")
    assert sorted(p.relative_to(gt_dir) for p in gt_dir.rglob("*")) == before
    elsewhere = gt_dir.parent / "cache" / "m.npz"
    check_accuracy(res_dir, gt_dir, cache=elsewhere)
    assert elsewhere.is_file() and not (res_dir / CACHE_NAME).exists()


def test_no_cache_where_the_folder_is_not_writable(case, monkeypatch):
    res_dir, gt_dir = case

    def refuse(path):
        raise PermissionError(f"{path}: read-only")

    monkeypatch.setattr(metrics, "atomic_path", refuse)
    assert check_accuracy(res_dir, gt_dir)["TRA"] == check_accuracy(res_dir, gt_dir, cache=False)["TRA"]
    assert not (res_dir / CACHE_NAME).exists()


def test_validation_still_runs_from_the_cache(case):
    """The cache holds the matching, not the verdict: a track file broken after caching is still refused."""
    res_dir, gt_dir = case
    check_accuracy(res_dir, gt_dir)
    res, parents = case_swapped_labels()
    write_tracks(res_dir / "res_track.txt", [r for r in tracks_from(res, parents) if r[0] != 5])
    with pytest.raises(CTCFormatError, match=r"mask002.tif: label 5 is not listed"):
        check_accuracy(res_dir, gt_dir, ["CT"])


# ----------------------------------------------------------------------------- bad input, for every measure
@pytest.mark.parametrize("measures", [None, ["CCA"], ["SEG"], ["CHOTA", "IDF1"]], ids=str)
def test_result_rules_hold_for_every_measure(tmp_path, measures):
    res = reference()
    res_dir, gt_dir = write_case(tmp_path, reference(), res, res_tracks=[r for r in tracks_from(res, GT_PARENTS) if r[0] != 5])
    with pytest.raises(CTCFormatError, match=r"mask002.tif: label 5 is not listed in .*res_track.txt"):
        check_accuracy(res_dir, gt_dir, measures)
    write_tracks(res_dir / "res_track.txt", tracks_from(res, {4: 1, 5: 3}))
    with pytest.raises(CTCFormatError, match=r"res_track.txt: parent 1 ends at frame 3, not before its child 4"):
        check_accuracy(res_dir, gt_dir, measures)
    (res_dir / "mask003.tif").unlink()
    with pytest.raises(CTCFormatError, match="missing mask003.tif"):
        check_accuracy(res_dir, gt_dir, measures)


def test_an_invalid_ground_truth_is_not_scored_against(tmp_path):
    res_dir, gt_dir = write_case(tmp_path, reference(), reference(), GT_PARENTS)
    track_file = gt_dir / "TRA" / "man_track.txt"
    write_tracks(track_file, [r for r in tracks_from(reference(), GT_PARENTS) if r[0] != 2])
    with pytest.raises(CTCFormatError, match=r"(?s)the ground truth .*man_track.txt is invalid.*man_track000.tif: label 2 is not listed"):
        check_accuracy(res_dir, gt_dir)
    write_tracks(track_file, tracks_from(reference(), {4: 3, 5: 9}))
    with pytest.raises(CTCFormatError, match=r"(?s)the ground truth .*man_track.txt is invalid.*label 5 has parent 9"):
        check_accuracy(res_dir, gt_dir, ["TRA"])


def test_result_frames_of_another_shape(tmp_path):
    res_dir, gt_dir = write_case(tmp_path, reference(), reference(), GT_PARENTS)
    write_tiff(res_dir / "mask001.tif", np.zeros((SHAPE[0], 32, 31), np.uint16))
    with pytest.raises(CTCFormatError, match=r"mask001.tif: shape \(8, 32, 31\) differs from the ground truth man_track001.tif"):
        check_accuracy(res_dir, gt_dir, ["LNK"])


# ----------------------------------------------------------------------------- report and CLI
def test_table_groups_the_measures(case):
    table = format_table(check_accuracy(*case))
    lines = table.splitlines()
    heads = [line for line in lines if line.startswith("[")]
    assert heads == ["[technical]", "[biological]", "[tracking]", "[AOGM]"]
    for key in ("SEG", "DET", "TRA", "LNK", "CT", "TF", "BC(0)", "BC(3)", "CCA", "BIO", "OP_CLB", "CHOTA", "HOTA",
                "MOTA", "IDF1", "MT", "ML", "FAF", "NS", "EA"):
        assert any(line.split()[0] == key for line in lines if line.split()), key
    assert "n/a" in table  # CCA: no complete cell cycle in the reference
    assert lines.index("[biological]") > max(i for i, line in enumerate(lines) if line.startswith("LNK"))
    only = format_table(check_accuracy(*case, ["TRA"]))
    assert "[biological]" not in only and "[AOGM]" in only


def test_evaluate_command_with_chosen_measures(case, tmp_path, capsys):
    res_dir, gt_dir = case
    out = tmp_path / "scores.json"
    args = SimpleNamespace(res=str(res_dir), gt=str(gt_dir), json=str(out), metrics="SEG,TRA,LNK,BIO")
    assert evaluate_command(args) == 0
    printed = capsys.readouterr().out
    assert "[technical]" in printed and "[biological]" in printed and "[tracking]" not in printed
    saved = json.loads(out.read_text())
    assert {"SEG", "TRA", "LNK", "BIO", "CT", "TF", "BC(2)", "CCA"} <= set(saved) and "CHOTA" not in saved
    with pytest.raises(metrics.UnknownMeasureError, match="unknown measure 'HOT'"):
        evaluate_command(SimpleNamespace(res=str(res_dir), gt=str(gt_dir), json=None, metrics="HOT"))


def test_cli_without_metrics_writes_every_measure(case, tmp_path, capsys):
    res_dir, gt_dir = case
    out = tmp_path / "all.json"
    assert main.main(["evaluate", "--res", str(res_dir), "--gt", str(gt_dir), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(check_accuracy(res_dir, gt_dir)))
    assert {"CHOTA", "BIO", "OP_CLB", "LNK", "MOTA"} <= set(saved)
    assert "[biological]" in capsys.readouterr().out


def write_dataset(root):
    """A data-set root with 01_RES/01_GT (labels swapped) and 02_RES/02_GT (a perfect result)."""
    res, parents = case_swapped_labels()
    write_case(root / "one", reference(), res, parents)
    write_case(root / "two", reference(), reference(), GT_PARENTS)
    for name, seq in (("one", "01"), ("two", "02")):
        (root / name / "01_GT").rename(root / f"{seq}_GT")
        (root / name / "01_RES").rename(root / f"{seq}_RES")
    return root


def test_a_data_set_root_scores_every_sequence_and_the_mean(tmp_path, capsys):
    root = write_dataset(tmp_path / "set")
    out = tmp_path / "set.json"
    assert main.main(["evaluate", "--res", str(root), "--gt", str(root), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "== 01_RES" in printed and "== 02_RES" in printed and "mean" in printed
    saved = json.loads(out.read_text())
    assert list(saved) == ["01", "02", "mean"]
    one, two = (check_accuracy(root / f"{s}_RES", root / f"{s}_GT") for s in ("01", "02"))
    assert saved["01"]["TRA"] == one["TRA"] and saved["02"]["TRA"] == two["TRA"] == 1.0
    assert saved["mean"]["TRA"] == pytest.approx((one["TRA"] + 1.0) / 2)
    assert saved["mean"]["CCA"] is None  # undefined in both


def test_a_data_set_sequence_without_ground_truth_is_an_error(tmp_path):
    root = write_dataset(tmp_path / "set")
    (root / "02_GT").rename(root / "elsewhere")
    with pytest.raises(CTCFormatError, match=r"02_RES: no ground truth .*02_GT"):
        metrics.check_dataset(root, root)
