"""The napari plugin inside a real viewer (napari's make_napari_viewer fixture): reading each kind of CTC
folder (also by a drop event), the labels writer, the two dock widgets, and a screenshot with tracks.

Needs requirements-napari.txt and an X display for OpenGL (headless: `xvfb-run -a python -m pytest -m napari`);
skipped cleanly without them. Qt runs on the display's xcb platform there (offscreen has no OpenGL).
"""
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "xcb" if os.environ.get("DISPLAY") else "offscreen")
napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not os.environ.get("DISPLAY"):
    pytest.skip("napari's canvas needs OpenGL: run under an X server (xvfb-run -a)", allow_module_level=True)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from dataset import check_track_folder, read_tracks  # noqa: E402
from dataset.synthetic import SynthConfig, write_dataset  # noqa: E402
from models import build_model  # noqa: E402
from utils import save_checkpoint  # noqa: E402

pytestmark = pytest.mark.napari
ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "nuclei3d"
SIM_SCALE = (1.0, 0.2, 0.125, 0.125)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("nv") / "set", SynthConfig(shape=(8, 32, 32), frames=4, radius_xy=(5.0, 7.0)), seed=3)


@pytest.fixture(autouse=True)
def plugin_registered():
    """Our manifest, registered with npe2 even where `pip install -e .` has not run."""
    from npe2 import PluginManager, PluginManifest
    pm = PluginManager.instance()
    if PLUGIN not in pm._manifests:
        pm.register(PluginManifest.from_file(ROOT / "napari_nuclei3d" / "napari.yaml"))
    yield


def kinds(viewer):
    return {layer.name: type(layer).__name__ for layer in viewer.layers}


def check_tracks(layer, track_file):
    rows = read_tracks(track_file)
    assert layer.graph == {int(l): [int(p)] for l, _, _, p in rows.tolist() if p}
    assert set(np.unique(layer.data[:, 0]).astype(int).tolist()) == set(rows[:, 0].tolist())


def test_open_data_set_root(make_napari_viewer, data):
    viewer = make_napari_viewer()
    viewer.open(str(data), plugin=PLUGIN)
    assert kinds(viewer) == {"01": "Image", "01_GT masks": "Labels", "01_GT tracks": "Tracks",
                             "02": "Image", "02_GT masks": "Labels", "02_GT tracks": "Tracks"}
    for layer in viewer.layers:
        assert tuple(layer.scale) == pytest.approx(SIM_SCALE)
    assert viewer.layers["01"].data.shape == (4, 8, 32, 32) == viewer.layers["01_GT masks"].data.shape
    check_tracks(viewer.layers["01_GT tracks"], data / "01_GT" / "TRA" / "man_track.txt")
    check_tracks(viewer.layers["02_GT tracks"], data / "02_GT" / "TRA" / "man_track.txt")
    assert len(viewer.layers["01_GT tracks"].graph) >= 2  # a division: two children of one parent


def test_drop_a_sequence_and_a_gt_folder(make_napari_viewer, data):
    """A folder dropped on the canvas, the reader preference set as the 'remember' box of napari's dialog does."""
    from napari.settings import get_settings
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent
    get_settings().plugins.extension2reader = {"*/": PLUGIN}
    viewer = make_napari_viewer()
    for folder in (data / "02", data / "02_GT"):
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(folder))])
        event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
        viewer.window._qt_viewer.dropEvent(event)
    assert kinds(viewer) == {"02": "Image", "02_GT masks": "Labels", "02_GT tracks": "Tracks"}
    check_tracks(viewer.layers["02_GT tracks"], data / "02_GT" / "TRA" / "man_track.txt")


def test_save_labels_layer_as_tracked_result(make_napari_viewer, data, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(data / "01_GT"), plugin=PLUGIN)
    out = tmp_path / "01_RES"
    written = viewer.layers["01_GT masks"].save(str(out), plugin=PLUGIN)
    assert written == [str(out)]
    check_track_folder(out, kind="mask", track_name="res_track.txt")
    viewer.open(str(out), plugin=PLUGIN)  # and it reads back
    assert kinds(viewer)["01_RES tracks"] == "Tracks"


def test_predict_widget_adds_labels_and_tracks(make_napari_viewer, qtbot, data, tmp_path):
    from predict import Predictor
    from tracking import track_sequence
    model = build_model("unet", features=(4, 8, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model_name": "unet", "model_config": model.config, "model": model.state_dict(),
                           "crop_size": [8, 32, 32], "voxel_size": [0.125, 0.125, 0.2], "post": {}})
    viewer = make_napari_viewer()
    viewer.open(str(data / "02"), plugin=PLUGIN)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment and track")
    widget.checkpoint.value = ckpt
    widget.image.value = "02"
    widget.device.value = "cpu"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.status.value and not widget.status.value.startswith("error"), widget.status.value
    assert widget.progress.value == widget.progress.max == 5
    labels = viewer.layers["02 predicted masks"]
    tracks = viewer.layers["02 predicted tracks"]
    assert type(labels).__name__ == "Labels" and type(tracks).__name__ == "Tracks"
    assert labels.data.shape == (4, 8, 32, 32) and tuple(labels.scale) == pytest.approx(SIM_SCALE)
    # the labels are the predictor's instances, tracked by our tracker
    predictor = Predictor.from_checkpoint(ckpt, "cpu")
    images = np.asarray(viewer.layers["02"].data)
    relabelled, rows = track_sequence([predictor.instances(images[t]) for t in range(4)], list(range(4)), (0.125, 0.125, 0.2))
    for t, mask in relabelled:
        assert np.array_equal(labels.data[t], mask)
    assert set(np.unique(tracks.data[:, 0]).astype(int).tolist()) == set(rows[:, 0].tolist())


def test_score_widget_shows_the_measures(make_napari_viewer, qtbot, data, tmp_path):
    import tifffile

    from napari_nuclei3d._writer import write_labels
    out = tmp_path / "gt_as_res"
    stack = np.stack([tifffile.imread(p) for p in sorted((data / "01_GT" / "TRA").glob("man_track*.tif"))])
    write_labels(str(out), stack, {"scale": SIM_SCALE})
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Score against ground truth")
    widget.result.value, widget.gt.value = out, data / "01_GT"
    widget.score_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    columns = widget.table.to_dict("list")
    table = dict(zip(columns["measure"], columns["value"]))
    assert widget.scores["TRA"] == pytest.approx(1.0) and "TRA 1.0000" in widget.status.value
    assert table["TRA"] == table["DET"] == "1.0000"


def test_screenshot_with_tracks_is_not_blank(make_napari_viewer, data, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from napari_screenshot import render
    viewer = make_napari_viewer(show=True)
    shot = render(viewer, data, ndisplay=2, frame=3)
    assert shot.ndim == 3 and shot[..., :3].std() > 5  # drawn, not a blank canvas
    viewer.layers["01_GT tracks"].visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)
    assert np.abs(shot[..., :3].astype(int) - without[..., :3]).sum() > 0  # the tracks are drawn
    viewer.layers["01_GT tracks"].visible = True
    viewer.dims.ndisplay = 3
    assert viewer.screenshot(canvas_only=True, flash=False)[..., :3].std() > 5


def test_open_an_omezarr_image_with_labels(make_napari_viewer, data, tmp_path):
    """An OME-Zarr (written with plain zarr) opens as Image and Labels layers at the NGFF voxel size."""
    import tifffile
    zarr = pytest.importorskip("zarr")
    images = np.stack([tifffile.imread(p) for p in sorted((data / "02").glob("t*.tif"))])[:, None]
    labels = np.stack([tifffile.imread(p) for p in sorted((data / "02_GT" / "SEG").glob("man_seg*.tif"))])
    space = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    root = zarr.open_group(str(tmp_path / "m.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=images.shape, chunks=(1, 1, 8, 32, 32), dtype=images.dtype)[...] = images
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, *space]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.2, 0.125, 0.125]}]}]}]
    group = root.create_group("labels")
    group.attrs["labels"] = ["nuclei"]
    label = group.create_group("nuclei")
    label.create_array("0", shape=labels.shape, chunks=(1, 8, 32, 32), dtype=labels.dtype)[...] = labels
    label.attrs["multiscales"] = [{"version": "0.4", "axes": [axes[0], *space], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.2, 0.125, 0.125]}]}]}]
    label.attrs["image-label"] = {"version": "0.4"}
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "m.ome.zarr"), plugin=PLUGIN)
    assert kinds(viewer) == {"m": "Image", "nuclei": "Labels"}
    for layer in viewer.layers:
        assert tuple(layer.scale) == pytest.approx(SIM_SCALE)
    viewer.dims.set_point(0, 2)
    assert np.array_equal(np.asarray(viewer.layers["nuclei"].data[2]), labels[2])
    assert np.array_equal(np.asarray(viewer.layers["m"].data[1]), images[1, 0])
