"""The napari plugin's work without napari: CTC folders as layer data, the labels writer, the widgets'
computations. The same functions run inside the viewer in tests/test_napari.py."""
import numpy as np
import pytest

from dataset import check_track_folder, read_tracks
from dataset.ctc import write_tiff
from dataset.synthetic import SynthConfig, write_dataset
from errors import UserError
from models import build_model
from napari_nuclei3d._ctc import folder_kind, layers_of, tiff_voxel_size
from napari_nuclei3d._reader import get_reader
from napari_nuclei3d._run import image_voxel_size, run_to_end, score, segment_and_track, table_rows
from napari_nuclei3d._writer import voxel_size_from, write_labels
from utils import save_checkpoint

TINY_UNET = dict(features=(4, 8, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
SIM = (0.125, 0.125, 0.2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("n") / "set", SynthConfig(shape=(8, 32, 32), frames=4, radius_xy=(5.0, 7.0)), seed=3)


def tiny_checkpoint(path):
    model = build_model("unet", **TINY_UNET)
    save_checkpoint(path, {"model_name": "unet", "model_config": model.config, "model": model.state_dict(),
                           "crop_size": [8, 32, 32], "voxel_size": list(SIM), "post": {}})
    return path


def as_dict(layers):
    return {meta["name"]: (data, meta, kind) for data, meta, kind in layers}


def check_tracks_against(track_layer, track_file):
    """The Tracks layer's ids are the CTC labels, its graph the parents of the track file."""
    data, meta, kind = track_layer
    rows = read_tracks(track_file)
    assert kind == "tracks"
    assert meta["graph"] == {int(l): [int(p)] for l, _, _, p in rows.tolist() if p}
    for l, b, e, _ in rows.tolist():
        assert sorted(data[data[:, 0] == l, 1].astype(int).tolist()) == list(range(b, e + 1))


def test_folder_kinds(data, tmp_path):
    assert folder_kind(data) == "root"
    assert folder_kind(data / "01") == "sequence"
    assert folder_kind(data / "01_GT") == "tracks" and folder_kind(data / "01_GT" / "TRA") == "tracks"
    assert folder_kind(tmp_path) is None and get_reader(str(tmp_path)) is None
    assert get_reader(str(data / "01" / "t000.tif")) is None  # single files are napari's own business
    assert get_reader(str(data)) is not None and get_reader([str(data)]) is not None


def test_root_gives_images_masks_and_branching_tracks(data):
    layers = as_dict(layers_of(data))
    assert set(layers) == {"01", "01_GT masks", "01_GT tracks", "02", "02_GT masks", "02_GT tracks"}
    image, meta, kind = layers["01"]
    assert kind == "image" and image.shape == (4, 8, 32, 32)
    assert meta["scale"] == (1.0, 0.2, 0.125, 0.125)  # (t, z, y, x) µm: the SIM+ voxel size
    assert np.array_equal(np.asarray(image[2]), __import__("tifffile").imread(data / "01" / "t002.tif"))
    masks, mmeta, mkind = layers["01_GT masks"]
    assert mkind == "labels" and masks.shape == (4, 8, 32, 32) and mmeta["scale"] == meta["scale"]
    tracks = layers["01_GT tracks"]
    check_tracks_against(tracks, data / "01_GT" / "TRA" / "man_track.txt")
    assert tracks[1]["scale"] == meta["scale"] and tracks[0].shape[1] == 5  # id, t, z, y, x


def test_result_folder_and_sequence(data):
    layers = as_dict(layers_of(data / "02_GT" / "TRA"))
    assert set(layers) == {"02_GT masks", "02_GT tracks"}
    (image, meta, kind), = layers_of(data / "02")
    assert kind == "image" and meta["name"] == "02" and image.shape[0] == 4


def test_recorded_voxel_size_wins(tmp_path):
    seq = tmp_path / "root" / "01"
    for t in range(2):
        write_tiff(seq / f"t{t:03d}.tif", np.zeros((4, 8, 8), np.uint16), voxel_size=(0.5, 0.25, 2.0))
    assert tiff_voxel_size(seq / "t000.tif") == pytest.approx((0.5, 0.25, 2.0))
    (_, meta, _), = layers_of(seq)
    assert meta["scale"] == pytest.approx((1.0, 2.0, 0.25, 0.5)) and meta["metadata"]["voxel_size_recorded"]


def test_writer_tracks_labels_into_a_valid_result(data, tmp_path):
    layers = as_dict(layers_of(data / "01_GT"))
    masks, meta, _ = layers["01_GT masks"]
    stack = np.asarray(masks).astype(np.int32)
    stack[stack > 0] += 100  # any labels: the tracker renumbers them
    out = tmp_path / "01_RES"
    assert write_labels(str(out), stack, meta) == [str(out)]
    check_track_folder(out, kind="mask", track_name="res_track.txt")
    assert len(read_tracks(out / "res_track.txt")) >= len(read_tracks(data / "01_GT" / "TRA" / "man_track.txt")) - 1
    with pytest.raises(UserError, match="not empty"):
        write_labels(str(out), stack, meta)
    with pytest.raises(UserError, match="3D\\+t"):
        write_labels(str(tmp_path / "x"), stack[0, 0], meta)
    assert voxel_size_from({"scale": (1, 2.0, 0.5, 0.5)}, 3) == (0.5, 0.5, 2.0)
    assert voxel_size_from({"scale": (1, 1, 1, 1)}, 3) == SIM


def test_segment_and_track_matches_the_predictor(data, tmp_path):
    from predict import Predictor
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path / "m.pt"), "cpu")
    images = np.asarray(as_dict(layers_of(data / "02"))["02"][0])
    seen = []
    labels, graph = run_to_end(segment_and_track(predictor, images), lambda d, n: seen.append((d, n)))
    assert seen[-1] == (5, 5) and len(seen) == 5
    assert labels.shape == images.shape and labels.dtype == np.uint16
    for t in range(4):  # the same instances as the predictor's, up to the tracker's renumbering
        direct = predictor.instances(images[t])
        assert np.array_equal(direct > 0, labels[t] > 0)
    assert set(graph.label.tolist()) == set(np.unique(labels[labels > 0]).tolist())
    with pytest.raises(UserError, match="3D frames"):
        run_to_end(segment_and_track(predictor, images[:, 0, 0]))


def test_image_voxel_size_rules():
    assert image_voxel_size({"metadata": {"voxel_size": (1, 1, 3), "voxel_size_recorded": True}}, 3, SIM) == (1, 1, 3)
    assert image_voxel_size({"metadata": {"voxel_size": SIM, "voxel_size_recorded": False}}, 3, (9, 9, 9)) == (9, 9, 9)
    assert image_voxel_size({"scale": (1, 2.0, 0.5, 0.5), "metadata": {}}, 3, SIM) == (0.5, 0.5, 2.0)


def test_score_and_table(data, tmp_path):
    layers = as_dict(layers_of(data / "01_GT"))
    masks, meta, _ = layers["01_GT masks"]
    out = tmp_path / "gt_as_result"
    write_labels(str(out), np.asarray(masks), meta)
    scores = score(out, data / "01_GT")
    assert scores["TRA"] == pytest.approx(1.0) and scores["DET"] == pytest.approx(1.0)
    rows = dict(table_rows(scores))
    assert rows["TRA"] == "1.0000"
    with pytest.raises(UserError, match="not found"):
        score(tmp_path / "missing", data / "01_GT")


# ----------------------------------------------------------------------------- OME-Zarr
def write_ngff_movie(path, images, labels, voxel_size=(0.5, 0.25, 2.0)):
    """An NGFF 0.4 image (t, c, z, y, x) with labels/nuclei (t, z, y, x), written with plain zarr."""
    zarr = pytest.importorskip("zarr")
    space = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, *space]
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=images.shape, chunks=(1, 1, *images.shape[2:]), dtype=images.dtype)[...] = images
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, *voxel_size[::-1]]}]}]}]
    group = root.create_group("labels")
    group.attrs["labels"] = ["nuclei"]
    label = group.create_group("nuclei")
    label.create_array("0", shape=labels.shape, chunks=(1, *labels.shape[1:]), dtype=labels.dtype)[...] = labels
    label.attrs["multiscales"] = [{"version": "0.4", "axes": [axes[0], *space], "datasets": [{"path": "0",
                                   "coordinateTransformations": [{"type": "scale", "scale": [1.0, *voxel_size[::-1]]}]}]}]
    label.attrs["image-label"] = {"version": "0.4"}
    return path


@pytest.fixture(scope="module")
def movie(data, tmp_path_factory):
    import tifffile
    images = np.stack([np.stack([tifffile.imread(p)] * 2) for p in sorted((data / "01").glob("t*.tif"))])
    images[:, 1] //= 2  # a second channel
    labels = np.stack([tifffile.imread(p) for p in sorted((data / "01_GT" / "SEG").glob("man_seg*.tif"))])
    return write_ngff_movie(tmp_path_factory.mktemp("z") / "movie.ome.zarr", images, labels), images, labels


def test_omezarr_image_and_labels_as_layers(movie):
    from napari_nuclei3d._reader import read_omezarr
    path, images, labels = movie
    assert get_reader(str(path)) is read_omezarr and get_reader(str(path / "labels" / "nuclei")) is read_omezarr
    assert get_reader(str(path / "0")) is None  # an array, not an image: napari's own business
    layers = as_dict(read_omezarr(str(path)))
    assert set(layers) == {"movie [0]", "movie [1]", "nuclei"}
    scale = (1.0, 2.0, 0.25, 0.5)  # (t, z, y, x) µm from the NGFF scale
    for c in range(2):
        data, meta, kind = layers[f"movie [{c}]"]
        assert kind == "image" and meta["scale"] == scale and data.shape == (4, 8, 32, 32)
        assert np.array_equal(np.asarray(data[3]), images[3, c])
    data, meta, kind = layers["nuclei"]
    assert kind == "labels" and meta["scale"] == scale and np.array_equal(np.asarray(data), labels)
    (alone, meta, kind), = read_omezarr(str(path / "labels" / "nuclei"))
    assert kind == "labels" and meta["name"] == "nuclei" and np.array_equal(np.asarray(alone), labels)


def test_our_omezarr_result_opens_with_its_lineage_as_tracks(data, tmp_path):
    pytest.importorskip("zarr")
    from exports.omezarr import write_label_image
    from napari_nuclei3d._reader import read_omezarr
    layers_gt = as_dict(layers_of(data / "01_GT"))
    out = tmp_path / "01_RES"
    write_labels(str(out), np.asarray(layers_gt["01_GT masks"][0]), layers_gt["01_GT masks"][1])
    store = write_label_image(out, voxel_size=SIM)
    layers = as_dict(read_omezarr(str(store)))
    assert set(layers) == {"01_RES", "01_RES tracks"}
    masks, meta, kind = layers["01_RES"]
    assert kind == "labels" and meta["scale"] == (1.0, 0.2, 0.125, 0.125)
    for t in range(4):
        assert np.array_equal(np.asarray(masks[t]), tifffile_read(out / f"mask{t:03d}.tif"))
    check_tracks_against(layers["01_RES tracks"], out / "res_track.txt")


def tifffile_read(path):
    import tifffile
    return tifffile.imread(path)
