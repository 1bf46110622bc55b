"""Track exports (GEFF, TrackMate XML, napari CSV) checked against independent readers: the `geff`
package (its reader and validators), xml.etree for TrackMate, csv for napari; the same graph in all three."""
import argparse
import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import exports
from dataset.ctc import ResultFolder, read_tracks
from dataset.synthetic import SynthConfig, write_dataset
from errors import UserError
from exports.geff import write_geff
from exports.graph import read_track_graph
from exports.trackmate import SPOT_FEATURES, write_trackmate
from exports.tracks_csv import write_tracks_csv

VOXEL = (0.5, 0.5, 2.0)  # x, y, z in µm: anisotropic, so a swapped axis shows


def _ball(mask, label, centre, r=2):
    z, y, x = np.ogrid[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    cz, cy, cx = centre
    mask[((z - cz) / max(r / 2, 1)) ** 2 + ((y - cy) / r) ** 2 + ((x - cx) / r) ** 2 <= 1] = label


#: label: (B, E, P, centre per frame)
LINEAGE = {
    1: (0, 1, 0, {0: (2, 8, 8), 1: (2, 8, 9)}),
    2: (2, 4, 1, {2: (2, 5, 9), 3: (2, 4, 9), 4: (2, 4, 10)}),  # daughters of 1: a division
    3: (2, 4, 1, {2: (2, 11, 9), 3: (2, 12, 9), 4: (2, 12, 10)}),
    4: (0, 1, 0, {0: (1, 20, 20), 1: (1, 20, 21)}),
    5: (3, 4, 4, {3: (1, 21, 21), 4: (1, 21, 22)}),  # 4 continued after a gap at frame 2
    6: (4, 4, 0, {4: (2, 26, 4)}),  # one frame, no links
}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A hand-made result folder with a division, a closed gap and a single-frame track."""
    out = tmp_path_factory.mktemp("res") / "01_RES"
    with ResultFolder(out, n_frames=5) as res:
        for t in range(5):
            mask = np.zeros((4, 32, 32), np.uint16)
            for label, (b, e, _, centres) in LINEAGE.items():
                if b <= t <= e:
                    _ball(mask, label, centres[t])
            res.write_mask(t, mask)
        res.write_tracks([(l, b, e, p) for l, (b, e, p, _) in LINEAGE.items()])
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("s") / "set", SynthConfig(shape=(8, 48, 48), frames=6, radius_xy=(5.0, 7.0)), seed=3)


def expected_edges():
    """((t, label), (t, label)) edges the lineage above must give."""
    edges = set()
    for label, (b, e, p, _) in LINEAGE.items():
        edges |= {((t, label), (t + 1, label)) for t in range(b, e)}
        if p:
            edges.add(((LINEAGE[p][1], p), (b, label)))
    return edges


def test_graph_nodes_and_edges(result):
    g = read_track_graph(result, VOXEL)
    assert len(g) == sum(e - b + 1 for b, e, _, _ in LINEAGE.values())
    assert g.edge_set() == expected_edges()
    node = {(t, l): i for i, (t, l) in enumerate(zip(g.t.tolist(), g.label.tolist()))}
    # the ball is symmetric about its centre: the centroid is the centre (voxels, then µm)
    assert np.allclose(g.position[node[(3, 2)]], (2, 4, 9))
    assert np.allclose(g.positions("um")[node[(3, 2)]], (2 * 2.0, 4 * 0.5, 9 * 0.5))
    lineage = dict(zip(g.label.tolist(), g.lineage_ids().tolist()))
    assert lineage == {1: 1, 2: 1, 3: 1, 4: 4, 5: 4, 6: 6}
    tracklet = dict(zip(g.label.tolist(), g.tracklet_ids().tolist()))
    assert tracklet == {1: 1, 2: 2, 3: 3, 4: 4, 5: 4, 6: 6}  # a closed gap is one unbranched path


def test_geff_read_back_by_the_geff_package(result, tmp_path):
    geff = pytest.importorskip("geff")
    from geff.validate.data import ValidationConfig
    out = write_geff(read_track_graph(result, VOXEL), tmp_path / "tracks.geff")
    geff.validate_structure(out)
    G, meta = geff.read(out, data_validation=ValidationConfig(graph=True, lineage=True, tracklet=True))
    assert meta.directed
    assert [(a.name, a.type, a.unit) for a in meta.axes] == [("t", "time", "frame"), ("z", "space", "micrometer"),
                                                             ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    key = {n: (d["t"], d["track_id"]) for n, d in G.nodes(data=True)}
    assert sorted(key.values()) == sorted((t, l) for l, (b, e, _, _) in LINEAGE.items() for t in range(b, e + 1))
    assert {(key[a], key[b]) for a, b in G.edges} == expected_edges()
    for n, d in G.nodes(data=True):
        t, label = key[n]
        z, y, x = LINEAGE[label][3][t]
        assert (d["z"], d["y"], d["x"]) == pytest.approx((z * 2.0, y * 0.5, x * 0.5))
        assert d["seg_id"] == label
    kinds = {(key[a], key[b]): d["kind"] for a, b, d in G.edges(data=True)}
    assert kinds[((1, 1), (2, 2))] == 1 and kinds[((1, 4), (3, 5))] == 2 and kinds[((0, 1), (1, 1))] == 0


def test_geff_in_voxels_records_the_voxel_size(result, tmp_path):
    geff = pytest.importorskip("geff")
    out = write_geff(read_track_graph(result, VOXEL), tmp_path / "vox.geff", units="voxel")
    G, meta = geff.read(out)
    axes = {a.name: a for a in meta.axes}
    assert axes["z"].unit == "pixel" and axes["z"].scale == 2.0 and axes["z"].scaled_unit == "micrometer"
    assert axes["x"].scale == 0.5
    d = next(d for _, d in G.nodes(data=True) if (d["t"], d["track_id"]) == (3, 2))
    assert (d["z"], d["y"], d["x"]) == pytest.approx((2, 4, 9))


def test_trackmate_xml_parses_back_to_the_same_graph(result, tmp_path):
    out = write_trackmate(read_track_graph(result, VOXEL), tmp_path / "tm.xml")
    root = ET.parse(out).getroot()
    assert root.tag == "TrackMate" and root.get("version")
    model = root.find("Model")
    assert model.get("spatialunits") == "µm" and model.get("timeunits") == "frame"
    declared = {f.get("feature") for f in model.find("FeatureDeclarations/SpotFeatures")}
    assert declared == set(SPOT_FEATURES)
    spots = {}
    for frame in model.find("AllSpots"):
        for spot in frame.findall("Spot"):
            assert int(spot.get("FRAME")) == int(frame.get("frame"))
            for name, value in spot.attrib.items():  # TrackMate parses every other attribute as a number
                if name not in ("ID", "name"):
                    assert name in declared
                    float(value)
            spots[int(spot.get("ID"))] = spot
    assert int(model.find("AllSpots").get("nspots")) == len(spots) == 13
    key = {i: (int(s.get("FRAME")), int(s.get("CTC_LABEL"))) for i, s in spots.items()}
    spot = spots[next(i for i, k in key.items() if k == (3, 2))]
    assert [float(spot.get(f"POSITION_{a}")) for a in "XYZ"] == pytest.approx([9 * 0.5, 4 * 0.5, 2 * 2.0])
    edges, components = set(), []
    for track in model.find("AllTracks"):
        pairs = [(int(e.get("SPOT_SOURCE_ID")), int(e.get("SPOT_TARGET_ID"))) for e in track.findall("Edge")]
        edges |= {(key[a], key[b]) for a, b in pairs}
        components.append({key[i][1] for pair in pairs for i in pair})
    assert edges == expected_edges()
    assert sorted(map(sorted, components)) == [[1, 2, 3], [4, 5]]  # a TrackMate track is a whole lineage
    filtered = {int(e.get("TRACK_ID")) for e in model.find("FilteredTracks")}
    assert filtered == {int(t.get("TRACK_ID")) for t in model.find("AllTracks")}
    splits = {t.get("name"): int(t.get("NUMBER_SPLITS")) for t in model.find("AllTracks")}
    assert splits == {"Track_1": 1, "Track_4": 0}
    image = root.find("Settings/ImageData")
    assert (image.get("pixelwidth"), image.get("voxeldepth"), image.get("nslices")) == ("0.5", "2.0", "4")
    for tag in ("InitialSpotFilter", "SpotFilterCollection", "TrackFilterCollection", "DetectorSettings", "TrackerSettings"):
        assert root.find(f"Settings/{tag}") is not None  # TmXmlReader dereferences these


def _read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows


def test_same_graph_in_geff_trackmate_and_napari_csv(synth, tmp_path):
    """GT of a synthetic sequence with divisions: the three exports describe one graph."""
    geff = pytest.importorskip("geff")
    gt = synth / "01_GT"
    tracks = read_tracks(gt / "TRA" / "man_track.txt")
    assert (np.bincount(tracks[:, 3])[1:] >= 2).any(), "the fixture must hold a division"
    g = read_track_graph(gt, (0.125, 0.125, 0.2))
    want_nodes = {(t, l) for t, l in zip(g.t.tolist(), g.label.tolist())}
    want_pos = {k: p for k, p in zip(zip(g.t.tolist(), g.label.tolist()), g.positions("um").round(6).tolist())}

    G, _ = geff.read(write_geff(g, tmp_path / "g.geff"))
    key = {n: (d["t"], d["track_id"]) for n, d in G.nodes(data=True)}
    assert set(key.values()) == want_nodes
    assert {(key[a], key[b]) for a, b in G.edges} == g.edge_set()
    assert {key[n]: [round(d[a], 6) for a in "zyx"] for n, d in G.nodes(data=True)} == want_pos

    root = ET.parse(write_trackmate(g, tmp_path / "t.xml")).getroot()
    spots = {s.get("ID"): s for s in root.iter("Spot")}
    tm_key = {i: (int(s.get("FRAME")), int(s.get("CTC_LABEL"))) for i, s in spots.items()}
    assert set(tm_key.values()) == want_nodes
    assert {(tm_key[e.get("SPOT_SOURCE_ID")], tm_key[e.get("SPOT_TARGET_ID")]) for e in root.iter("Edge")} == g.edge_set()
    assert {tm_key[i]: [round(float(s.get(f"POSITION_{a}")), 6) for a in "ZYX"] for i, s in spots.items()} == want_pos

    rows = _read_csv(write_tracks_csv(g, tmp_path / "n.csv"))
    assert {(int(r["t"]), int(r["track_id"])) for r in rows} == want_nodes
    assert {(int(r["t"]), int(r["track_id"])): [round(float(r[a]), 6) for a in "zyx"] for r in rows} == want_pos
    # napari's edges: consecutive rows of one track id, and parent_id -> the track's first row
    by_track = {}
    for r in rows:
        by_track.setdefault(int(r["track_id"]), []).append((int(r["t"]), int(r["parent_id"])))
    last = {l: max(t for t, _ in v) for l, v in by_track.items()}
    csv_edges = set()
    for l, v in by_track.items():
        ts = sorted(t for t, _ in v)
        csv_edges |= {((a, l), (b, l)) for a, b in zip(ts, ts[1:])}
        if v[0][1]:
            csv_edges.add(((last[v[0][1]], v[0][1]), (ts[0], l)))
    assert csv_edges == g.edge_set()


def _parse(argv):
    p = argparse.ArgumentParser()
    exports.add_export_arguments(p)
    return p.parse_args(argv)


def test_main_dispatches_export(result, tmp_path, capsys):
    import main
    out = tmp_path / "tracks.csv"
    assert main.main(["export", "--res", str(result), "--format", "napari", "--out", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert len(rows) - 1 == len(read_track_graph(result).t)  # one row per node, after the header
    assert main.main(["export", "--res", str(tmp_path / "missing"), "--format", "geff"]) == 2
    assert "missing" in capsys.readouterr().err


def test_command_default_output_and_overwrite_rules(result, capsys):
    res = str(result)
    for fmt, suffix in exports.TRACK_FORMATS.items():
        assert exports.export_tracks_command(_parse(["--res", res, "--format", fmt])) == 0
        out = Path(res + suffix)
        assert out.exists() and str(out) in capsys.readouterr().out
        with pytest.raises(UserError, match="already exists"):  # never silently replaced
            exports.export_tracks_command(_parse(["--res", res, "--to", fmt]))
        exports.export_tracks_command(_parse(["--res", res, "--to", fmt, "--overwrite"]))  # ours: replaced


def test_refuses_to_replace_what_it_did_not_write(result, tmp_path):
    foreign = tmp_path / "notes.xml"
    foreign.write_text("<notes>mine</notes>")
    folder = tmp_path / "data.geff"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    for fmt, out in (("trackmate", foreign), ("geff", folder), ("napari", foreign)):
        with pytest.raises(UserError, match="not written by this tool"):
            exports.export_tracks(result, fmt, out, overwrite=True)
    assert foreign.read_text() == "<notes>mine</notes>" and (folder / "keep.txt").is_file()


def test_bad_input_is_one_line_naming_the_file(result, tmp_path):
    with pytest.raises(UserError, match="not a CTC track folder") as err:
        exports.export_tracks(tmp_path, "geff")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in result.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "res_track.txt").write_text("1 0 1 0\n2 2 4 1\n")  # labels 3..6 missing from the track file
    with pytest.raises(UserError, match="not listed") as err:
        exports.export_tracks(broken, "trackmate", tmp_path / "x.xml")
    assert "\n" not in str(err.value) and "mask" in str(err.value)
    with pytest.raises(UserError, match="--voxel-size"):
        exports.export_tracks(result, "geff", tmp_path / "y.geff", voxel_size=(1.0, 1.0))
    assert not (tmp_path / "x.xml").exists() and not (tmp_path / "y.geff").exists()


def test_geff_metadata_is_plain_json_with_provenance(result, tmp_path):
    out = write_geff(read_track_graph(result, VOXEL), tmp_path / "m.geff")
    meta = json.loads((out / ".zattrs").read_text())["geff"]
    assert meta["extra"]["written_by"] == "nuclei3d" and meta["extra"]["voxel_size_xyz_um"] == [0.5, 0.5, 2.0]
    assert meta["track_node_props"] == {"lineage": "lineage_id", "tracklet": "tracklet_id"}
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
