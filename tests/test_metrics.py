"""metrics.py: the CTC measures against hand-counted values and against py-ctcmetrics, and result validation.

The cases here (one per AOGM operation) and in test_metrics_lineage.py (the biological measures) are
compared with py-ctcmetrics on every measure."""
import contextlib
import io
import json
import warnings

import numpy as np
import pytest

import main
import metrics
from dataset.ctc import CTCFormatError, write_tiff, write_tracks
from metrics import check_accuracy, format_table, match_objects, seg_measure, seg_score

SHAPE = (8, 32, 32)


# ----------------------------------------------------------------------------- fixtures
def boxes(objects, shape=SHAPE):
    """A label volume with one box per label: {label: (z0, z1, y0, y1, x0, x1)}."""
    out = np.zeros(shape, np.uint16)
    for label, (z0, z1, y0, y1, x0, x1) in objects.items():
        out[z0:z1, y0:y1, x0:x1] = label
    return out


def gt_objects(t):
    """The reference: cell 1 moves right, cell 2 stays, cell 3 divides into 4 and 5 at frame 2."""
    objects = {1: (1, 5, 2, 8, 2 + t, 8 + t), 2: (1, 5, 12, 18, 2, 8)}
    if t < 2:
        objects[3] = (2, 6, 20, 28, 14, 22)
    else:
        objects[4] = (2, 6, 20, 24, 14, 22)
        objects[5] = (2, 6, 24, 28, 14, 22)
    return objects


GT_PARENTS = {4: 3, 5: 3}


def tracks_from(frames, parents=None):
    """Track rows (L, B, E, P) from the first and last frame each label appears in."""
    parents = parents or {}
    span = {}
    for t, frame in enumerate(frames):
        for label in np.unique(frame[frame > 0]).tolist():
            b, _ = span.get(label, (t, t))
            span[label] = (b, t)
    return [[label, b, e, parents.get(label, 0)] for label, (b, e) in sorted(span.items())]


def write_case(root, gt, res, parents=None, gt_parents=GT_PARENTS, seg=None, seg_slices=None, res_tracks=None):
    """Write `root/01_GT` (TRA = gt, SEG = `seg` {t: volume} or a copy of every TRA frame, or `seg_slices`
    {(t, z): 2D}) and `root/01_RES` (masks `res`, tracks from the masks unless given); return both paths."""
    gt_dir, res_dir = root / "01_GT", root / "01_RES"
    for t, frame in enumerate(gt):
        write_tiff(gt_dir / "TRA" / f"man_track{t:03d}.tif", frame.astype(np.uint16))
    write_tracks(gt_dir / "TRA" / "man_track.txt", tracks_from(gt, gt_parents))
    (gt_dir / "SEG").mkdir()
    if seg_slices is not None:
        for (t, z), plane in seg_slices.items():
            write_tiff(gt_dir / "SEG" / f"man_seg_{t:03d}_{z:03d}.tif", plane.astype(np.uint16))
    else:
        for t, frame in (seg if seg is not None else dict(enumerate(gt))).items():
            write_tiff(gt_dir / "SEG" / f"man_seg{t:03d}.tif", frame.astype(np.uint16))
    for t, frame in enumerate(res):
        write_tiff(res_dir / f"mask{t:03d}.tif", frame.astype(np.uint16))
    write_tracks(res_dir / "res_track.txt", res_tracks if res_tracks is not None else tracks_from(res, parents))
    return res_dir, gt_dir


def reference(n=4):
    return [boxes(gt_objects(t)) for t in range(n)]


def py_ctcmetrics(res_dir, gt_dir, metrics=None):
    """py-ctcmetrics' measures (default: every one, ALL_METRICS) on the same folders, single process."""
    evaluate = pytest.importorskip("ctc_metrics.scripts.evaluate")
    from ctc_metrics.metrics import ALL_METRICS
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        out = evaluate.evaluate_sequence(str(res_dir), str(gt_dir), metrics=list(metrics or ALL_METRICS), threads=1)
    assert out.get("Valid", 1) == 1, "py-ctcmetrics found the result invalid"
    return out


#: Our name -> py-ctcmetrics' name where they differ (BIO and OP_CLB: the challenge's i = 2).
ORACLE_NAME = {"BIO": "BIO(2)", "OP_CLB": "OP_CLB(2)", **{k: f"AOGM_{k}" for k in ("NS", "FN", "FP", "ED", "EA", "EC")}}
#: What both report: every measure of ALL_METRICS (MTML as MT, ML; BC as BC(i)) and the AOGM parts.
COMPARED = ("Valid", "CHOTA", "CT", "CCA", "TF", "SEG", "TRA", "DET", "MOTA", "IDSW", "HOTA", "IDF1", "IDP", "IDR",
            "MT", "ML", "FAF", "LNK", "OP_CTB", "OP_CSB", "BIO", "OP_CLB", "BC(0)", "BC(1)", "BC(2)", "BC(3)",
            "NS", "FN", "FP", "ED", "EA", "EC", "AOGM", "AOGM_0")


def assert_all_agree(scores, res_dir, gt_dir, skip=(), metrics=None):
    """Every measure both report is equal to 1e-6, and None where py-ctcmetrics gives None; `skip`: the
    measures a test shows we define differently; `metrics`: ask py-ctcmetrics for these only."""
    expected = py_ctcmetrics(res_dir, gt_dir, metrics)
    for key in COMPARED:
        if key in skip or ORACLE_NAME.get(key, key) not in expected:
            continue
        ours, theirs = scores[key], expected[ORACLE_NAME.get(key, key)]
        if theirs is None:
            assert ours is None, key
        else:
            assert ours == pytest.approx(float(theirs), abs=1e-6), key
    if "gt_divisions" in expected:
        assert scores["gt_divisions"] == expected["gt_divisions"]


# ----------------------------------------------------------------------------- the AOGM operations, each case
def case_perfect():
    return reference(), GT_PARENTS


def case_missing_cell():  # FN: cell 2 missed in frame 1, its track continues as a new label
    res = reference()
    res[1][res[1] == 2] = 0
    for t in (2, 3):
        res[t][res[t] == 2] = 6
    return res, {**GT_PARENTS, 6: 2}


def case_extra_cell():  # FP: a spurious object in frames 1-2
    res = reference()
    for t in (1, 2):
        res[t][6:8, 28:31, 28:31] = 9
    return res, GT_PARENTS


def case_merged_cells():  # NS: the daughters 4 and 5 merged into one object in frame 3
    res = reference()
    res[3][res[3] == 5] = 4
    return res, GT_PARENTS


def case_split_cell():  # cell 2 cut into 2/3 (still its match) and 1/3 (a false positive) in frame 2
    res = reference()
    part = res[2][:, :, :4] == 2
    res[2][:, :, :4][part] = 7
    return res, GT_PARENTS


def case_shifted_cell():  # cell 1 shifted in frame 2 so that it covers less than half of its reference
    res = reference()
    res[2][res[2] == 1] = 0
    res[2][1:5, 2:8, 8:14] = 1
    return res, GT_PARENTS


def case_swapped_labels():  # cells 1 and 2 exchange labels from frame 2 on (ED, EA)
    res = reference()
    for t in (2, 3):
        one, two = res[t] == 1, res[t] == 2
        res[t][one], res[t][two] = 2, 1
    return res, GT_PARENTS


def case_division_wrong_parent():  # cell 2 ends at frame 1 (then goes on as 12); the daughters are linked to it
    res = reference()
    for t in (2, 3):
        res[t][res[t] == 2] = 12
    return res, {4: 2, 5: 2}


def case_division_missed():  # no parent links: two missing edges (EA)
    return reference(), {}


def case_division_continued():  # cell 3 keeps its label into one daughter: a track link where GT has a parent link (EC)
    res = reference()
    for t in (2, 3):
        res[t][res[t] == 4] = 3
    return res, {}


def case_empty_frames():  # the result has nothing in frame 1
    res = reference()
    res[1][:] = 0
    for t in (2, 3):
        for old, new in ((1, 11), (2, 12), (4, 14), (5, 15)):
            res[t][res[t] == old] = new
    return res, {}


def case_nonconsecutive_labels():  # result labels far apart, and an FP
    res = []
    for frame in reference():
        out = np.zeros_like(frame)
        for old, new in ((1, 30000), (2, 9), (3, 1000), (4, 1000 + 7), (5, 4001)):
            out[frame == old] = new
        res.append(out)
    res[1][6:8, 28:31, 28:31] = 17
    return res, {1007: 1000, 4001: 1000}


CASES = [case_perfect, case_missing_cell, case_extra_cell, case_merged_cells, case_split_cell, case_shifted_cell,
         case_swapped_labels, case_division_wrong_parent, case_division_missed, case_division_continued,
         case_empty_frames, case_nonconsecutive_labels]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_every_measure_agrees_with_py_ctcmetrics(tmp_path, case):
    res, parents = case()
    res_dir, gt_dir = write_case(tmp_path, reference(), res, parents)
    scores = check_accuracy(res_dir, gt_dir)
    assert_all_agree(scores, res_dir, gt_dir)
    assert scores["OP_CSB"] == pytest.approx((scores["SEG"] + scores["DET"]) / 2)
    assert scores["OP_CTB"] == pytest.approx((scores["SEG"] + scores["TRA"]) / 2)


def test_every_operation_is_exercised(tmp_path):
    """The cases above do cover each AOGM operation, with the counts worked out by hand."""
    expected = {  # NS FN FP ED EA EC
        case_perfect: (0, 0, 0, 0, 0, 0),
        case_missing_cell: (0, 1, 0, 1, 2, 0),  # res link 2@0 -> 6@2 is not a GT edge; GT 2@0->2@1, 2@1->2@2 missing
        case_extra_cell: (0, 0, 2, 0, 0, 0),
        case_merged_cells: (1, 0, 0, 0, 2, 0),  # the merged vertex loses its edges: 4@2->4@3, 5@2->5@3 missing
        case_split_cell: (0, 0, 1, 0, 0, 0),
        case_shifted_cell: (0, 1, 1, 0, 2, 0),
        case_swapped_labels: (0, 0, 0, 2, 2, 0),
        case_division_wrong_parent: (0, 0, 0, 2, 3, 0),  # 2@1->4@2, 2@1->5@2 wrong; 3@1->4,5@2, 2@1->2@2 missing
        case_division_missed: (0, 0, 0, 0, 2, 0),
        case_division_continued: (0, 0, 0, 0, 1, 1),
    }
    for i, (case, counts) in enumerate(expected.items()):
        res, parents = case()
        scores = check_accuracy(*write_case(tmp_path / str(i), reference(), res, parents))
        assert tuple(scores[k] for k in ("NS", "FN", "FP", "ED", "EA", "EC")) == counts, case.__name__


def test_hand_counted_aogm(tmp_path):
    """Swapped labels: 14 reference vertices, 11 edges (9 track links, 2 parent links); ED = EA = 2."""
    res, parents = case_swapped_labels()
    scores = check_accuracy(*write_case(tmp_path, reference(), res, parents))
    assert scores["n_ref_objects"] == 14 and scores["n_ref_edges"] == 11
    assert scores["AOGM_0"] == 10 * 14 + 1.5 * 11 and scores["AOGM"] == 2 * 1 + 2 * 1.5
    assert scores["TRA"] == pytest.approx(1 - 5 / 156.5, abs=1e-12)
    assert scores["DET"] == 1.0 and scores["SEG"] == 1.0


def test_hand_counted_det_and_seg_for_a_merge(tmp_path):
    res, parents = case_merged_cells()
    scores = check_accuracy(*write_case(tmp_path, reference(), res, parents))
    assert scores["DET"] == pytest.approx(1 - 5 / 140, abs=1e-12)
    # frame 3: the merged object (2 x 128 voxels) matches 4 and 5, each with Jaccard 128 / 256; 14 SEG objects
    assert scores["SEG"] == pytest.approx((12 + 0.5 + 0.5) / 14, abs=1e-12)


def test_partial_seg_ground_truth(tmp_path):
    """SEG only for frames 0 and 2, with its own labels; frames without SEG GT are skipped."""
    res, parents = case_shifted_cell()
    gt = reference()
    seg = {0: gt[0] * 2, 2: gt[2]}  # label values need not match the TRA ones
    res_dir, gt_dir = write_case(tmp_path, gt, res, parents, seg=seg)
    scores = check_accuracy(res_dir, gt_dir)
    assert scores["seg_frames"] == 2 and scores["n_seg_objects"] == 7
    assert scores["SEG"] == pytest.approx(6 / 7, abs=1e-12)  # the shifted cell in frame 2 scores 0
    assert_all_agree(scores, res_dir, gt_dir)


def test_slice_seg_ground_truth_agrees_with_py_ctcmetrics(tmp_path):
    """One annotated slice per frame: SEG is computed on that slice of the result."""
    res, parents = case_split_cell()
    gt = reference()
    slices = {(0, 3): gt[0][3], (2, 2): gt[2][2]}
    res_dir, gt_dir = write_case(tmp_path, gt, res, parents, seg_slices=slices)
    scores = check_accuracy(res_dir, gt_dir)
    # frame 0, z=3: cells 1-3 exact; frame 2, z=2: cells 1, 4, 5 exact, cell 2 has 36 pixels, its result 24
    assert scores["n_seg_objects"] == 7 and scores["seg_frames"] == 2
    assert scores["SEG"] == pytest.approx((6 + 24 / 36) / 7, abs=1e-12)
    assert_all_agree(scores, res_dir, gt_dir)


def test_several_slices_of_a_frame_are_scored_as_separate_images(tmp_path):
    """Like the challenge's SEG software, each `man_seg_T_Z.tif` is its own image: an object annotated in
    two slices counts twice, each against the result's area in that slice (py-ctcmetrics stacks the slices
    and counts it once, so it differs here)."""
    gt = reference(2)
    res = [f.copy() for f in gt]
    res[0][3, 2:8, 2:5] = 0  # cell 1 loses half of its pixels in slice 3 only
    slices = {(0, 2): gt[0][2], (0, 3): gt[0][3]}
    scores = check_accuracy(*write_case(tmp_path, gt, res, {}, gt_parents={}, seg_slices=slices))
    # slice 2: cells 1, 2, 3 exact; slice 3: cell 1 has 18 of 36 pixels (not matched), cells 2 and 3 exact
    assert scores["n_seg_objects"] == 6
    assert scores["SEG"] == pytest.approx(5 / 6, abs=1e-12)
    # py-ctcmetrics: one stacked image, cell 1 has 54 of 72 pixels (matched, Jaccard 3/4): (1 + 1 + 3/4) / 3
    theirs = py_ctcmetrics(*write_case(tmp_path / "py", gt, res, {}, gt_parents={}, seg_slices=slices), ["SEG"])
    assert theirs["SEG"] == pytest.approx(11 / 12, abs=1e-12)


def relabel(frames, mapping):
    lut = np.arange(max(max(mapping), 6) + 1, dtype=np.uint16)
    lut[list(mapping)] = list(mapping.values())
    return [lut[f] for f in frames]


def test_nonconsecutive_reference_labels(tmp_path):
    """Reference labels 3, 17, 250, 4000, 4002 (a merge in the result on top)."""
    mapping = {1: 3, 2: 17, 3: 250, 4: 4000, 5: 4002}
    res, _ = case_merged_cells()
    res_dir, gt_dir = write_case(tmp_path, relabel(reference(), mapping), relabel(res, mapping),
                                 {4000: 250}, gt_parents={4000: 250, 4002: 250})
    scores = check_accuracy(res_dir, gt_dir)
    assert (scores["NS"], scores["EA"]) == (1, 3)  # the merge as before, and 250@1->4002@2 missing
    assert_all_agree(scores, res_dir, gt_dir)


def test_empty_reference_frame(tmp_path):
    """A ground-truth frame without objects (and the result empty there too). py-ctcmetrics fails on CHOTA,
    HOTA, IDF1 and MTML here (an IndexError from an empty frame); the others agree, and ours are as without
    the empty frame (FAF: 2 false positives in 5 frames)."""
    gt = reference() + [np.zeros(SHAPE, np.uint16)]
    res, parents = case_extra_cell()
    res = res + [np.zeros(SHAPE, np.uint16)]
    res_dir, gt_dir = write_case(tmp_path, gt, res, parents)
    scores = check_accuracy(res_dir, gt_dir)
    assert scores["tra_frames"] == 5 and scores["n_ref_objects"] == 14
    assert_all_agree(scores, res_dir, gt_dir, metrics=["Valid", "BC", "CT", "CCA", "TF", "SEG", "TRA", "DET", "MOTA",
                                                       "FAF", "LNK", "OP_CTB", "OP_CSB", "BIO", "OP_CLB"])
    without = check_accuracy(*write_case(tmp_path / "4", reference(), case_extra_cell()[0], parents))
    for key in ("CHOTA", "HOTA", "IDF1", "MT", "ML"):
        assert scores[key] == without[key], key
    assert scores["FAF"] == 2 / 5


def test_reference_without_any_object_is_an_error(tmp_path):
    empty = [np.zeros(SHAPE, np.uint16)] * 2
    res_dir, gt_dir = write_case(tmp_path, empty, empty, res_tracks=[])
    with pytest.raises(CTCFormatError, match="no object"):
        check_accuracy(res_dir, gt_dir)


def test_no_seg_ground_truth_gives_no_seg(tmp_path):
    res_dir, gt_dir = write_case(tmp_path, reference(), reference(), GT_PARENTS, seg={})
    scores = check_accuracy(res_dir, gt_dir)
    assert scores["SEG"] is None and scores["OP_CSB"] is None and scores["OP_CTB"] is None
    assert scores["DET"] == 1.0 and scores["TRA"] == 1.0
    assert "n/a" in format_table(scores)


# ----------------------------------------------------------------------------- array helpers, by hand
def test_two_cubes_of_known_overlap():
    gt = np.zeros((6, 6, 8), np.uint16)
    gt[1:5, 1:5, 0:4] = 3
    res = np.zeros_like(gt)
    res[1:5, 1:5, 1:5] = 8  # shifted by one: 48 shared voxels, 80 in the union
    m = match_objects(gt, res)
    assert m.gt_labels.tolist() == [3] and m.matched.tolist() == [8] and m.intersection.tolist() == [48]
    assert m.jaccard[0] == pytest.approx(0.6) and seg_measure(res, gt) == pytest.approx(0.6)
    assert seg_score(res, gt) == (pytest.approx(0.6), 1)
    res2 = np.zeros_like(gt)
    res2[1:5, 1:5, 2:6] = 8  # exactly half covered: not a match (the rule is strictly more than half)
    assert seg_measure(res2, gt) == 0.0 and match_objects(gt, res2).fn == 1 and match_objects(gt, res2).fp == 1
    assert np.isnan(seg_measure(res, np.zeros_like(gt)))


def test_match_objects_counts_splits_and_handles_huge_labels():
    gt = np.zeros((4, 10, 10), np.int64)
    gt[:, :5, :] = 7
    gt[:, 5:, :] = 9
    res = np.where(gt > 0, 2, 0)
    m = match_objects(gt, res)
    assert m.ns == 1 and m.fn == 0 and m.fp == 0 and m.hits.tolist() == [2]
    big = match_objects(gt * 10**9, res * 10**12)  # labels beyond any lookup table: the np.unique path
    assert big.ns == 1 and big.matched.tolist() == [2 * 10**12] * 2
    np.testing.assert_allclose(big.jaccard, m.jaccard)
    with pytest.raises(ValueError, match="shape"):
        match_objects(gt, res[:2])
    assert match_objects(gt > 0, res[:, :, ::-1] > 0).jaccard.tolist() == [1.0]  # boolean masks: one object each


def test_track_assignment_is_the_optimal_one():
    """IDF1's one-to-one assignment of result to reference tracks (solved per component, by a Hungarian
    algorithm) has the value SciPy's linear_sum_assignment finds."""
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, m = rng.integers(1, 15, 2)
        w = rng.integers(0, 9, (n, m)) * (rng.random((n, m)) < rng.uniform(0.05, 0.8))
        rows, cols = optimize.linear_sum_assignment(w, maximize=True)
        assert metrics._max_assignment(w.astype(float)) == w[rows, cols].sum()


def test_sparse_pair_counting_gives_the_same_scores(tmp_path, monkeypatch):
    res, parents = case_nonconsecutive_labels()
    res_dir, gt_dir = write_case(tmp_path, reference(), res, parents)
    dense = check_accuracy(res_dir, gt_dir, cache=False)
    monkeypatch.setattr(metrics, "_LUT_LIMIT", 4)  # every frame through np.unique
    assert check_accuracy(res_dir, gt_dir, cache=False) == dense


# ----------------------------------------------------------------------------- validation
def invalid(tmp_path, res, res_tracks):
    res_dir, gt_dir = write_case(tmp_path, reference(), res, res_tracks=res_tracks)
    with pytest.raises(CTCFormatError) as err:
        check_accuracy(res_dir, gt_dir)
    return str(err.value)


def test_label_missing_from_track_file(tmp_path):
    res = reference()
    rows = [r for r in tracks_from(res, GT_PARENTS) if r[0] != 5]
    msg = invalid(tmp_path, res, rows)
    assert "mask002.tif" in msg and "label 5" in msg and "res_track.txt" in msg


def test_track_label_absent_between_begin_and_end(tmp_path):
    res = reference()
    res[1][res[1] == 2] = 0
    msg = invalid(tmp_path, res, tracks_from(reference(), GT_PARENTS))
    assert "mask001.tif" in msg and "label 2" in msg


def test_parent_must_end_before_child_begins(tmp_path):
    res = reference()
    rows = tracks_from(res, {4: 1, 5: 3})
    msg = invalid(tmp_path, res, rows)
    assert "res_track.txt" in msg and "parent 1" in msg and "child 4" in msg


def test_duplicate_labels(tmp_path):
    res = reference()
    rows = tracks_from(res, GT_PARENTS) + [[2, 0, 3, 0]]
    msg = invalid(tmp_path, res, rows)
    assert "res_track.txt" in msg and "label 2 listed more than once" in msg


def test_mask_count_differs_from_ground_truth(tmp_path):
    res_dir, gt_dir = write_case(tmp_path, reference(), reference(), GT_PARENTS)
    (res_dir / "mask003.tif").unlink()
    write_tracks(res_dir / "res_track.txt", tracks_from(reference(3), GT_PARENTS))
    with pytest.raises(CTCFormatError, match="missing mask003.tif"):
        check_accuracy(res_dir, gt_dir)


def test_mask_shape_differs_from_ground_truth(tmp_path):
    res_dir, gt_dir = write_case(tmp_path, reference(), reference(), GT_PARENTS)
    write_tiff(res_dir / "mask002.tif", np.zeros((8, 32, 30), np.uint16))
    with pytest.raises(CTCFormatError, match=r"mask002.tif: shape \(8, 32, 30\) differs"):
        check_accuracy(res_dir, gt_dir)


# ----------------------------------------------------------------------------- CLI
def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    res, parents = case_swapped_labels()
    res_dir, gt_dir = write_case(tmp_path, reference(), res, parents)
    out = tmp_path / "scores" / "eval.json"
    assert main.main(["evaluate", "--res", str(res_dir), "--gt", str(gt_dir), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for key in ("SEG", "DET", "TRA", "OP_CSB", "OP_CTB", "AOGM", "NS", "EA"):
        assert key in printed
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(check_accuracy(res_dir, gt_dir)))
    assert saved["ED"] == 2 and not list(out.parent.glob(".*.part"))


def test_cli_exits_2_on_invalid_results(tmp_path, capsys):
    res = reference()
    res_dir, gt_dir = write_case(tmp_path, reference(), res, res_tracks=tracks_from(res, GT_PARENTS)[1:])
    assert main.main(["evaluate", "--res", str(res_dir), "--gt", str(gt_dir)]) == 2
    assert "label 1" in capsys.readouterr().err


def test_volume_ratio_counts_the_result_size_against_the_reference(tmp_path):
    """Every result box one voxel wider in x than its reference; the merge leaves its two objects at 2x. The
    percentiles are those of the hand-counted |S| / |R| of the matched SEG objects, and they survive the cache."""
    gt = reference()
    res = []
    for t in range(4):
        objects = {k: (z0, z1, y0, y1, x0, x1 + 1) for k, (z0, z1, y0, y1, x0, x1) in gt_objects(t).items()}
        res.append(boxes(objects))
    res[3][res[3] == 5] = 4  # the daughters merged in frame 3
    expected = []
    for t in range(4):
        for k, (z0, z1, y0, y1, x0, x1) in gt_objects(t).items():
            size = (z1 - z0) * (y1 - y0) * (x1 - x0)
            grown = (z1 - z0) * (y1 - y0) * (x1 + 1 - x0)
            expected.append(2 * grown / size if t == 3 and k in (4, 5) else grown / size)
    res_dir, gt_dir = write_case(tmp_path, gt, res)
    for cached in (False, True, True):  # computed, cached, read from the cache
        scores = check_accuracy(res_dir, gt_dir, cache=cached)
        assert scores["VOL_median"] == pytest.approx(np.median(expected), abs=1e-12)
        assert scores["VOL_p10"] == pytest.approx(np.percentile(expected, 10), abs=1e-12)
        assert scores["VOL_p90"] == pytest.approx(np.percentile(expected, 90), abs=1e-12)
    assert scores["VOL_median"] > 1.1 and scores["VOL_p90"] > 1.9
    assert "result / reference" in format_table(scores)
    perfect = check_accuracy(*write_case(tmp_path / "p", gt, gt))
    assert perfect["VOL_p10"] == perfect["VOL_median"] == perfect["VOL_p90"] == 1.0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_scores_in_memory_equal_the_scores_of_the_written_folders(tmp_path, case):
    """metrics.check_arrays (the tuning search's scorer) gives every measure check_accuracy gives for the files."""
    res, parents = case()
    gt = reference()
    res_dir, gt_dir = write_case(tmp_path, gt, res, parents)
    on_disk = check_accuracy(res_dir, gt_dir, cache=False)
    in_memory = metrics.check_arrays(dict(enumerate(res)), tracks_from(res, parents), dict(enumerate(gt)),
                                     tracks_from(gt, GT_PARENTS), dict(enumerate(gt)), metrics=None)
    assert in_memory.keys() == on_disk.keys()
    for k, v in on_disk.items():
        assert in_memory[k] == (pytest.approx(v, abs=1e-12) if isinstance(v, float) else v), k


def test_tracks_clipped_to_a_window_score_as_that_window_written_alone(tmp_path):
    """Frames 1..3 of the reference (the division at 2 inside, cell 3 beginning before the window): clip_tracks
    keeps what a data set of those frames alone holds, so the scores equal those of that data set's files."""
    res, parents = case_swapped_labels()
    gt = reference()
    window = [1, 2, 3]
    clipped = metrics.clip_tracks(tracks_from(gt, GT_PARENTS), 1, 3)
    assert sorted(map(tuple, clipped.tolist())) == [(1, 1, 3, 0), (2, 1, 3, 0), (3, 1, 1, 0), (4, 2, 3, 3), (5, 2, 3, 3)]
    assert metrics.clip_tracks([[7, 0, 0, 0], [8, 1, 4, 7]], 1, 3).tolist() == [[8, 1, 3, 0]]  # parent left the window
    in_memory = metrics.check_arrays({t: res[t] for t in window}, metrics.clip_tracks(tracks_from(res, parents), 1, 3),
                                     {t: gt[t] for t in window}, clipped, {t: gt[t] for t in window})
    shifted_res, shifted_gt = [res[t] for t in window], [gt[t] for t in window]
    alone = check_accuracy(*write_case(tmp_path, shifted_gt, shifted_res, parents, gt_parents=GT_PARENTS), cache=False,
                           metrics=("SEG", "DET", "TRA", "OP_CTB"))
    for k in ("SEG", "DET", "TRA", "OP_CTB", "NS", "FN", "FP", "ED", "EA", "EC"):
        assert in_memory[k] == pytest.approx(alone[k], abs=1e-12), k
    with pytest.raises(ValueError, match="consecutive"):
        metrics.check_arrays({1: res[1], 3: res[3]}, [], {1: gt[1], 3: gt[3]}, [])
