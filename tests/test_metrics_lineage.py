"""metrics.py, the biological measures (CT, TF, BC(i), CCA, BIO) and CHOTA, HOTA, MOTA, IDF1, MT/ML, FAF, on a
12-frame sequence with two generations of divisions: against hand-counted values, against py-ctcmetrics,
and on the cases where we follow the challenge (or the published definition) rather than py-ctcmetrics."""
import numpy as np
import pytest

from dataset.ctc import write_tracks
from metrics import check_accuracy
from test_metrics import assert_all_agree, boxes, py_ctcmetrics, write_case

SHAPE = (4, 64, 64)
FRAMES = 12

# Per-frame boxes (z0, z1, y0, y1, x0, x1) of the reference. Cell 1 divides into 2 and 3 at frame 3; 2 into
# 4 and 5 at frame 6; 3 into 6 and 7 at frame 8. Cell 8 moves right through all frames; 9 lives in 2-9.
SPANS = {1: (0, 2), 2: (3, 5), 3: (3, 7), 4: (6, 11), 5: (6, 11), 6: (8, 11), 7: (8, 11), 8: (0, 11), 9: (2, 9)}
LINEAGE = {2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 7: 3}
PLACE = {1: (1, 3, 4, 12, 4, 20), 2: (1, 3, 4, 12, 4, 12), 3: (1, 3, 4, 12, 12, 20), 4: (1, 3, 4, 8, 4, 12),
         5: (1, 3, 8, 12, 4, 12), 6: (1, 3, 4, 8, 12, 20), 7: (1, 3, 8, 12, 12, 20), 9: (1, 3, 50, 58, 30, 38)}


def place(label, t):
    if label == 8:
        return (1, 3, 30, 38, 4 + 2 * t, 12 + 2 * t)
    return PLACE[label]


def lineage_objects():
    """The reference as a list of {label: box}, one per frame."""
    return [{l: place(l, t) for l, (b, e) in SPANS.items() if b <= t <= e} for t in range(FRAMES)]


def volumes(frames):
    return [boxes(objects, SHAPE) for objects in frames]


def relabel_from(frames, old, new, start, end=FRAMES - 1):
    for t in range(start, end + 1):
        if old in frames[t]:
            frames[t][new] = frames[t].pop(old)
    return frames


def union(a, b):
    return tuple(min(p, q) if i % 2 == 0 else max(p, q) for i, (p, q) in enumerate(zip(a, b)))


# ----------------------------------------------------------------------------- perturbed results
def lin_perfect():
    return lineage_objects(), dict(LINEAGE)


def lin_track_broken():  # cell 8 gets a new label from frame 6 on, unlinked: CT and TF drop
    return relabel_from(lineage_objects(), 8, 20, 6), dict(LINEAGE)


def lin_track_relinked():  # the same, with 20 the only child of 8: one cell for CHOTA/HOTA/MOTA/IDF1
    return relabel_from(lineage_objects(), 8, 20, 6), {**LINEAGE, 20: 8}


def lin_division_late_1():  # 2 is seen undivided in frame 6 (covering 4 and 5): a division one frame late
    frames = lineage_objects()
    frames[6][2] = union(frames[6].pop(4), frames[6].pop(5))
    return frames, dict(LINEAGE)


def lin_division_late_3():  # 3 is seen undivided in frames 8-10: a division three frames late
    frames = lineage_objects()
    for t in (8, 9, 10):
        frames[t][3] = union(frames[t].pop(6), frames[t].pop(7))
    return frames, dict(LINEAGE)


def lin_division_missed():  # 3 goes on as daughter 6; daughter 7 appears without a parent
    return relabel_from(lineage_objects(), 6, 3, 8), {2: 1, 3: 1, 4: 2, 5: 2}


def lin_division_spurious():  # 8 "divides" at frame 5 into its continuation 21 and a spurious blob 22
    frames = relabel_from(lineage_objects(), 8, 21, 5)
    for t in (5, 6, 7):
        frames[t][22] = (1, 3, 40, 46, 40, 46)
    return frames, {**LINEAGE, 21: 8, 22: 8}


def lin_division_early():  # 1 divides at frame 2 (each half covers only half of cell 1: one FN, two FPs)
    frames = lineage_objects()
    del frames[2][1]
    frames[2][2], frames[2][3] = PLACE[2], PLACE[3]
    return frames, dict(LINEAGE)


def lin_cycle_shortened():  # 2 divides at frame 5 instead of 6: its cell cycle is 2 frames, not 3
    frames = lineage_objects()
    del frames[5][2]
    frames[5][4], frames[5][5] = PLACE[4], PLACE[5]
    return frames, dict(LINEAGE)


def lin_no_divisions():  # every object right, every parent link missing
    return lineage_objects(), {}


def lin_daughters_swapped():  # 6 and 7 exchange labels from frame 10 on: identity switches
    frames = lineage_objects()
    for t in (10, 11):
        frames[t][6], frames[t][7] = frames[t][7], frames[t][6]
    return frames, dict(LINEAGE)


def lin_daughters_merged():  # 4 and 5 are one object in frames 9-11
    frames = lineage_objects()
    for t in (9, 10, 11):
        frames[t][4] = union(frames[t][4], frames[t].pop(5))
    return frames, {2: 1, 3: 1, 4: 2, 6: 3, 7: 3}


def lin_cell_mostly_missed():  # cell 9 found in 2 of its 8 frames, then 8 lost for frames 4-5
    frames = lineage_objects()
    for t in range(4, 10):
        del frames[t][9]
    frames = relabel_from(frames, 8, 23, 6)
    for t in (4, 5):
        del frames[t][8]
    return frames, dict(LINEAGE)


CASES = [lin_perfect, lin_track_broken, lin_track_relinked, lin_division_late_1, lin_division_late_3,
         lin_division_missed, lin_division_spurious, lin_division_early, lin_cycle_shortened, lin_no_divisions,
         lin_daughters_swapped, lin_daughters_merged, lin_cell_mostly_missed]


def write_lineage_case(root, frames, parents, res_tracks=None):
    return write_case(root, volumes(lineage_objects()), volumes(frames), parents, gt_parents=LINEAGE,
                      res_tracks=res_tracks)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[4:])
def test_every_measure_agrees_with_py_ctcmetrics(tmp_path, case):
    frames, parents = case()
    res_dir, gt_dir = write_lineage_case(tmp_path, frames, parents)
    scores = check_accuracy(res_dir, gt_dir)
    assert_all_agree(scores, res_dir, gt_dir)


def test_the_cases_move_the_biological_measures(tmp_path):
    """Each perturbation changes what it is meant to change (so that the agreement above means something)."""
    got = {}
    for case in CASES:
        frames, parents = case()
        got[case.__name__[4:]] = check_accuracy(*write_lineage_case(tmp_path / case.__name__, frames, parents),
                                                cache=False)
    perfect = got["perfect"]
    assert all(perfect[k] == 1.0 for k in ("CT", "TF", "BC(0)", "BC(3)", "CCA", "BIO", "LNK", "CHOTA", "HOTA"))
    assert got["track_broken"]["CT"] < 1 and got["track_broken"]["TF"] < 1
    assert got["track_relinked"]["HOTA"] == 1.0 > got["track_broken"]["HOTA"]  # joined: one cell again
    late1, late3 = got["division_late_1"], got["division_late_3"]
    assert late1["BC(0)"] < late1["BC(1)"] == 1.0 and late3["BC(2)"] < late3["BC(3)"] == 1.0
    assert got["division_missed"]["BC(3)"] < 1 and got["division_spurious"]["BC(3)"] < 1
    assert got["cycle_shortened"]["CCA"] < 1 and got["division_early"]["CCA"] < 1
    assert got["no_divisions"]["BC(3)"] == 0.0 and got["no_divisions"]["CCA"] == 0.0
    assert got["daughters_swapped"]["IDSW"] == 2 and got["daughters_swapped"]["MOTA"] < 1
    assert got["daughters_merged"]["NS"] == 3


# ----------------------------------------------------------------------------- by hand
def test_hand_counted_division_three_frames_late(tmp_path):
    """3 (frames 3-7) is seen undivided in frames 8-10, covering 6 and 7; its daughters begin at frame 11.

    Reference tracks 1 (0-2), 2 (3-5), 3 (3-7), 4, 5 (6-11), 6, 7 (8-11), 8 (0-11), 9 (2-9): 9 tracks,
    42 track links + 6 parent links = 48 edges. Result: the same labels, 3 spanning 3-10, 6 and 7 only 11.
    - CT: 1, 2, 4, 5, 8, 9 are reconstructed (3, 6, 7 differ in span): 2 * 6 / (9 + 9) = 2/3;
    - TF: 3 is followed 5/5 (frames 3-7); 6 and 7 only in frame 11 (in 8-10 the result 3 matches both, not
      uniquely): 1/4 each; the others 1: (7 + 1/4 + 1/4) / 9 = 5/6;
    - BC(i): 3 divisions on each side; 1 and 2 are right for any i, 3 only when the parents may end 3
      frames apart: BC(0..2) = 2 * 2 / 6 = 2/3, BC(3) = 1;
    - CCA: complete cycles: reference 2 (3 frames), 3 (5); result 2 (3), 3 (8): the CDFs differ by 1/2
      for lengths 5-7: CCA = 1/2;
    - BIO = (2/3 + 5/6 + 2/3 + 1/2) / 4 = 2/3;
    - LNK: the result 3 in frames 8-10 matches two references, so its edges drop out; missing: the
      parent links 3->6, 3->7 and the 3 + 3 track links of 6 and 7: EA = 8, ED = EC = 0:
      1 - 1.5 * 8 / (1.5 * 48) = 5/6; NS = 3 (frames 8, 9, 10).
    """
    frames, parents = lin_division_late_3()
    scores = check_accuracy(*write_lineage_case(tmp_path, frames, parents))
    assert scores["n_ref_edges"] == 48 and (scores["NS"], scores["EA"], scores["ED"], scores["EC"]) == (3, 8, 0, 0)
    expected = {"CT": 2 / 3, "TF": 5 / 6, "BC(0)": 2 / 3, "BC(1)": 2 / 3, "BC(2)": 2 / 3, "BC(3)": 1.0,
                "CCA": 0.5, "BIO": 2 / 3, "LNK": 5 / 6, "OP_CLB": (5 / 6 + 2 / 3) / 2}
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    assert scores["gt_divisions"] == scores["res_divisions"] == 3 and scores["tp_div(3)"] == 3


def test_hand_counted_broken_track(tmp_path):
    """8 (frames 0-11) becomes 20 from frame 6 on, unlinked. 9 reference, 10 result tracks.
    CT: 8 lost: 2 * 8 / 19; TF: 8 is followed 6/12 at best: (8 + 1/2) / 9; LNK: the track link 8@5 -> 8@6
    is missing: 1 - 1.5 / (1.5 * 48) = 47/48; BC and CCA untouched."""
    frames, parents = lin_track_broken()
    scores = check_accuracy(*write_lineage_case(tmp_path, frames, parents))
    assert scores["CT"] == pytest.approx(16 / 19, abs=1e-12)
    assert scores["TF"] == pytest.approx(8.5 / 9, abs=1e-12)
    assert scores["LNK"] == pytest.approx(47 / 48, abs=1e-12)
    assert scores["BC(0)"] == scores["CCA"] == 1.0


def test_hand_counted_cell_cycles(tmp_path):
    """2 divides one frame early (frame 5): result cycles 2 (2 frames), 3 (5 frames) against 3 and 5: the CDFs
    differ by 1/2 at length 2 and agree from 5 on: CCA = 1/2. The early division: BC(0) misses it, BC(1)
    finds it, but in frame 5 the reference 2 is covered half by 4 and half by 5, so it is unmatched: the
    parents are compared in frame 4 (the last both exist), the daughters in frame 6."""
    frames, parents = lin_cycle_shortened()
    scores = check_accuracy(*write_lineage_case(tmp_path, frames, parents))
    assert scores["CCA"] == pytest.approx(0.5, abs=1e-12)
    assert scores["BC(0)"] == pytest.approx(2 * 2 / 6, abs=1e-12) and scores["BC(1)"] == 1.0
    assert scores["FN"] == 1 and scores["FP"] == 2


def test_result_without_divisions(tmp_path):
    """No parent links: BC(i) = 0 (no division found of 3), CCA = 0 (no complete cycle in the result)."""
    frames, parents = lin_no_divisions()
    scores = check_accuracy(*write_lineage_case(tmp_path, frames, parents))
    assert all(scores[f"BC({i})"] == 0.0 for i in range(4)) and scores["CCA"] == 0.0
    assert scores["res_divisions"] == 0 and scores["gt_divisions"] == 3
    assert scores["BIO"] == pytest.approx((scores["CT"] + scores["TF"]) / 4, abs=1e-12)


def test_reference_without_divisions_leaves_bc_and_cca_undefined(tmp_path):
    """Only cells 8 and 9: BC(i) and CCA are None (as py-ctcmetrics gives), BIO is the mean of CT and TF."""
    gt = [{l: b for l, b in f.items() if l in (8, 9)} for f in lineage_objects()]
    res = [dict(f) for f in gt]
    res[3].pop(9)
    res = relabel_from(res, 9, 19, 4)
    res_dir, gt_dir = write_case(tmp_path, volumes(gt), volumes(res), {}, gt_parents={})
    scores = check_accuracy(res_dir, gt_dir)
    assert all(scores[f"BC({i})"] is None for i in range(4)) and scores["CCA"] is None
    assert scores["BIO"] == pytest.approx((scores["CT"] + scores["TF"]) / 2, abs=1e-12)
    assert_all_agree(scores, res_dir, gt_dir)


# ----------------------------------------------------------------------------- where we differ from py-ctcmetrics
def double_division():
    """The reference division 3 -> 6, 7 (3 ends at 7) found twice: by 10 (3's frames 3-5; its daughters 12, 13
    begin at frame 6 off any cell and cover 6 and 7 in frame 8) and by 11 (3's frames 6-7; daughters 14, 15
    cover 6 and 7 in frames 9-11)."""
    frames = relabel_from(lineage_objects(), 3, 10, 3, 5)
    frames = relabel_from(frames, 3, 11, 6, 7)
    for t in (6, 7):
        frames[t][12], frames[t][13] = (1, 3, 40, 44, 40, 44), (1, 3, 40, 44, 50, 54)
    frames = relabel_from(frames, 6, 12, 8, 8)
    frames = relabel_from(frames, 7, 13, 8, 8)
    frames = relabel_from(frames, 6, 14, 9)
    frames = relabel_from(frames, 7, 15, 9)
    return frames, {2: 1, 10: 1, 4: 2, 5: 2, 12: 10, 13: 10, 14: 11, 15: 11}


def test_bc_counts_each_reference_division_once(tmp_path):
    """py-ctcmetrics counts each matching (reference, result) pair of divisions, so two result divisions
    matching one reference division give 4 'true positives' of 3 reference divisions and BC(2) = 8/7 > 1.
    The challenge's program (java-ctcmetrics BCi.java) matches each reference division once: the 4 result
    divisions find 3, BC(2) = 2 * 3 / (3 + 4) = 6/7. With i = 1 only the second one is in reach and the two
    agree."""
    frames, parents = double_division()
    res_dir, gt_dir = write_lineage_case(tmp_path, frames, parents)
    scores = check_accuracy(res_dir, gt_dir)
    theirs = py_ctcmetrics(res_dir, gt_dir)
    assert scores["BC(2)"] == pytest.approx(6 / 7, abs=1e-12) and scores["BC(3)"] == pytest.approx(6 / 7, abs=1e-12)
    assert theirs["BC(2)"] == pytest.approx(8 / 7) and theirs["tp_div(2)"] == 4
    assert scores["BC(1)"] == pytest.approx(theirs["BC(1)"], abs=1e-12) == pytest.approx(6 / 7)
    assert scores["BC(0)"] == pytest.approx(theirs["BC(0)"], abs=1e-12)
    assert_all_agree(scores, res_dir, gt_dir, skip=("BC(2)", "BC(3)", "BIO", "OP_CLB"))


def test_mostly_tracked_counts_only_matched_frames(tmp_path):
    """Cell 9 (frames 2-9) is found in frame 2 only. py-ctcmetrics takes the largest entry of the track's row
    of the track-intersection matrix, its column of unmatched frames (7 of 8) included, so 9 is 'mostly
    tracked' there. MT/ML count the frames a result track covers (motchallenge.net): 1/8, mostly lost."""
    frames = lineage_objects()
    for t in range(3, 10):
        del frames[t][9]
    res_dir, gt_dir = write_lineage_case(tmp_path, frames, dict(LINEAGE))
    scores = check_accuracy(res_dir, gt_dir)
    theirs = py_ctcmetrics(res_dir, gt_dir)
    # 9: one of eight frames found: ours 1/8 (mostly lost), py-ctcmetrics 7/8 (its missed frames: mostly tracked)
    assert scores["MT"] == pytest.approx(8 / 9) and scores["ML"] == pytest.approx(1 / 9)
    assert theirs["MT"] == pytest.approx(1.0) and theirs["ML"] == pytest.approx(0.0)
    assert_all_agree(scores, res_dir, gt_dir, skip=("MT", "ML"))


def test_chota_does_not_depend_on_the_order_of_the_track_file(tmp_path):
    """2 is cut into 2 (frames 3-4) and its only child 12 (frame 5, the parent of 4 and 5): one cell for
    CHOTA, whose lineage is 1 -> (2, 12) -> 4, 5. Listed in label order, py-ctcmetrics and we agree; with
    12 listed before 2, py-ctcmetrics keeps 12's row for the joined track, whose parent (2) is the joined
    track itself, and so cuts the lineage (a lower CHOTA); we keep the parent of the first part."""
    frames = relabel_from(lineage_objects(), 2, 12, 5, 5)
    parents = {**LINEAGE, 12: 2, 4: 12, 5: 12}
    res_dir, gt_dir = write_lineage_case(tmp_path, frames, parents)
    in_order = check_accuracy(res_dir, gt_dir)
    assert_all_agree(in_order, res_dir, gt_dir)
    rows = sorted((np.loadtxt(res_dir / "res_track.txt", dtype=np.int64)).tolist(), key=lambda r: (r[0] != 12, r[0]))
    write_tracks(res_dir / "res_track.txt", rows)
    reordered = check_accuracy(res_dir, gt_dir)
    theirs = py_ctcmetrics(res_dir, gt_dir)
    assert reordered["CHOTA"] == in_order["CHOTA"]
    assert theirs["CHOTA"] < in_order["CHOTA"] - 1e-3
    assert_all_agree(reordered, res_dir, gt_dir, skip=("CHOTA",))
