"""OME-Zarr input: small NGFF images written by hand with zarr, read back; a sequence predicts to the same
masks as the same frames given as CTC TIFFs."""

import numpy as np
import pytest

from dataset.omezarr import OmeZarrError, OmeZarrImage, OmeZarrSequence

zarr = pytest.importorskip("zarr")

SCALE = [1.0, 1.0, 0.2, 0.125, 0.125]  # t c z y x
AXES = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}]


def write_ngff(path, data, axes=AXES, scale=SCALE, version="0.4", zarr_format=2, extra=None):
    """A two-level multiscale image by the NGFF spec: level 1 halves y and x."""
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    levels = [data, data[..., ::2, ::2]]
    datasets = []
    for i, level in enumerate(levels):
        chunks = tuple(1 if a["name"] in "tc" else s for a, s in zip(axes, level.shape))
        array = root.create_array(str(i), shape=level.shape, chunks=chunks, dtype=level.dtype)
        array[...] = level
        factor = [1.0] * (len(axes) - 2) + [2.0 ** i] * 2
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [s * f for s, f in zip(scale, factor)]}]})
    meta = {"version": version, "name": "movie", "axes": axes, "datasets": datasets, **(extra or {})}
    if zarr_format == 2:
        root.attrs["multiscales"] = [meta]
    else:
        meta.pop("version")
        root.attrs["ome"] = {"version": version, "multiscales": [meta]}
    return path


@pytest.fixture
def movie(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(3, 2, 4, 16, 12), dtype=np.uint16)
    return write_ngff(tmp_path / "movie.ome.zarr", data), data


def test_reads_level_zero_axes_and_voxel_size(movie):
    path, data = movie
    image = OmeZarrImage(path)
    assert image.axes == ("t", "c", "z", "y", "x") and image.shape == data.shape
    assert image.voxel_size == pytest.approx((0.125, 0.125, 0.2))  # (x, y, z) µm
    assert image.n_frames == 3 and image.n_channels == 2 and image.frame_shape == (4, 16, 12)
    assert np.array_equal(image.frame(2), data[2, 0]) and np.array_equal(image.frame(1, channel=1), data[1, 1])
    coarse = OmeZarrImage(path, level=1)
    assert coarse.frame_shape == (4, 8, 6) and coarse.voxel_size == pytest.approx((0.25, 0.25, 0.2))


def test_units_and_the_multiscale_transformation(tmp_path):
    axes = [{"name": "t", "type": "time"}, {"name": "z", "type": "space", "unit": "nanometer"},
            {"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}]
    path = write_ngff(tmp_path / "nm.zarr", np.zeros((2, 3, 8, 8), np.uint8), axes, [1, 200, 125, 125],
                      extra={"coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2, 2]}]})
    assert OmeZarrImage(path).voxel_size == pytest.approx((0.25, 0.25, 0.4))


def test_ngff_05_on_zarr_v3(tmp_path):
    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    axes = [{"name": "t", "type": "time"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    image = OmeZarrImage(write_ngff(tmp_path / "v3.zarr", data, axes, [1, 0.5, 0.25], version="0.5", zarr_format=3))
    assert image.version == "0.5" and image.voxel_size == pytest.approx((0.25, 0.5))
    assert np.array_equal(image.frame(1), data[1])


def test_bad_stores_are_one_line_errors(tmp_path, movie, no_zarr):
    with pytest.raises(OmeZarrError, match="not found"):
        OmeZarrImage(tmp_path / "none.zarr")
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    plain.create_array("0", shape=(2, 2), dtype="u1")
    with pytest.raises(OmeZarrError, match="not an OME-Zarr image"):
        OmeZarrImage(tmp_path / "plain.zarr")
    path, _ = movie
    with pytest.raises(OmeZarrError, match="level 5"):
        OmeZarrImage(path, level=5)
    with pytest.raises(OmeZarrError, match="frame 9"):
        OmeZarrImage(path).frame(9)
    no_zarr()
    with pytest.raises(OmeZarrError, match="needs the zarr package") as err:
        OmeZarrImage(path)
    assert "\n" not in str(err.value)


def test_sequence_predicts_the_same_masks_as_tiff_frames(tmp_path):
    """The same frames as a CTC sequence folder and as an OME-Zarr (t, c, z, y, x): identical results."""
    import tifffile

    from dataset import Sequence, read_labels, read_tracks
    from dataset.synthetic import SynthConfig, write_dataset
    from models import build_model
    from predict import Predictor
    from utils import save_checkpoint
    root = write_dataset(tmp_path / "set", SynthConfig(shape=(8, 32, 32), frames=3, radius_xy=(5.0, 7.0)), seed=5)
    tiffs = Sequence(root, "02")
    stack = np.stack([tifffile.imread(tiffs.files[t]) for t in tiffs.frames])[:, None]
    path = write_ngff(tmp_path / "02.ome.zarr", stack)
    omezarr = OmeZarrSequence(path)
    assert omezarr.shape == tiffs.shape and omezarr.voxel_size == pytest.approx(tiffs.voxel_size)
    model = build_model("unet", features=(4, 8, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model_name": "unet", "model_config": model.config, "model": model.state_dict(),
                           "crop_size": [8, 32, 32], "voxel_size": [0.125, 0.125, 0.2], "post": {}})
    predictor = Predictor.from_checkpoint(ckpt, "cpu")
    a = predictor.predict_sequence(tiffs, tmp_path / "from_tiff", progress=False)
    b = predictor.predict_sequence(omezarr, tmp_path / "from_zarr", progress=False)
    for t in tiffs.frames:
        assert np.array_equal(read_labels(a / f"mask{t:03d}.tif"), read_labels(b / f"mask{t:03d}.tif"))
    assert np.array_equal(read_tracks(a / "res_track.txt"), read_tracks(b / "res_track.txt"))
