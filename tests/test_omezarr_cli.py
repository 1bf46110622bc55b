"""OME-Zarr in the commands: `predict --data X.ome.zarr`, `track --masks X.ome.zarr`, `--out-format ome-zarr`
(read back with plain zarr, not our reader), `--export` on predict/track, and training from an OME-Zarr with a
label image. The OME-Zarr inputs are written here with plain zarr from a tiny synthetic CTC set, so each
command can be compared with the same data given as TIFF frames."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

import main
import training
from dataset import Sequence, check_track_folder, read_labels, read_tracks
from dataset.synthetic import SynthConfig, write_dataset
from models import build_model
from utils import save_checkpoint

zarr = pytest.importorskip("zarr")

TINY_UNET = dict(features=(4, 8, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
SIM = (0.125, 0.125, 0.2)  # x, y, z µm
SPACE = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]


def write_movie(path, images, labels=None, voxel_size=SIM, label_name="nuclei", zarr_format=2):
    """An NGFF image (t, c, z, y, x), chunked per frame, and optionally labels/<label_name> (t, z, y, x)."""
    scale = [1.0, *voxel_size[::-1]]
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    array = root.create_array("0", shape=images.shape, chunks=(1, 1, *images.shape[2:]), dtype=images.dtype)
    array[...] = images
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, *SPACE]
    ms = {"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, *voxel_size[::-1]]}]}]}
    root.attrs["multiscales"] = [ms]
    if labels is not None:
        group = root.create_group("labels")
        group.attrs["labels"] = [label_name]
        image = group.create_group(label_name)
        image.create_array("0", shape=labels.shape, chunks=(1, *labels.shape[1:]), dtype=labels.dtype)[...] = labels
        image.attrs["multiscales"] = [{"version": "0.4", "axes": [axes[0], *SPACE], "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
        image.attrs["image-label"] = {"version": "0.4"}
    return Path(path)


def tiny_checkpoint(path):
    model = build_model("unet", **TINY_UNET)
    save_checkpoint(path, {"model_name": "unet", "model_config": model.config, "model": model.state_dict(),
                           "crop_size": [8, 32, 32], "voxel_size": list(SIM), "post": {}})
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("oz") / "set", SynthConfig(shape=(8, 32, 32), frames=3, radius_xy=(5.0, 7.0)), seed=5)


def stacks(data, seq="02"):
    """(images (T, 1, Z, Y, X), SEG labels (T, Z, Y, X)) of a CTC sequence, as the TIFFs hold them."""
    s = Sequence(data, seq)
    images = np.stack([tifffile.imread(s.files[t]) for t in s.frames])[:, None]
    labels = np.stack([tifffile.imread(s.seg_files[t]) for t in s.frames])
    return images, labels


@pytest.fixture(scope="module")
def movie(data, tmp_path_factory):
    """Sequence 02 with its SEG GT as one OME-Zarr, in a folder of its own."""
    return write_movie(tmp_path_factory.mktemp("movie") / "02.ome.zarr", *stacks(data))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt")


def same_files(a: Path, b: Path):
    """The same CTC result, byte for byte (a scoring cache, .ctc_matching*, aside)."""
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in b.iterdir() if not p.name.startswith(".")) and "res_track.txt" in names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_predict_omezarr_is_byte_identical_to_tiff_frames(data, movie, ckpt, tmp_path, capsys):
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "02", "--out",
                      str(tmp_path / "from_tiff"), "--device", "cpu"]) == 0
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(movie), "--device", "cpu"]) == 0
    out = movie.parent / "02_RES"  # the default: <stem>_RES beside the store, never inside it
    assert f"wrote {out}" in capsys.readouterr().out
    same_files(tmp_path / "from_tiff", out)
    assert not any(p.name.endswith("_RES") for p in movie.iterdir())
    shutil.rmtree(out)


def test_predict_takes_the_voxel_size_of_the_omezarr(data, ckpt, tmp_path):
    images, _ = stacks(data)
    coarse = write_movie(tmp_path / "coarse.ome.zarr", images, voxel_size=(0.5, 0.5, 1.0))
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(coarse), "--device", "cpu",
                      "--out-format", "ome-zarr"]) == 0
    label = zarr.open_group(str(tmp_path / "coarse_RES.ome.zarr"), mode="r")["labels/coarse_RES"]
    scale = label.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, 1.0, 0.5, 0.5]  # the metadata's, not the checkpoint's SIM+ size
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(coarse), "--device", "cpu", "--voxel-size",
                      "0.25", "0.25", "2", "--out", str(tmp_path / "flag"), "--out-format", "ome-zarr"]) == 0
    label = zarr.open_group(str(tmp_path / "flag.ome.zarr"), mode="r")["labels/flag"]
    assert label.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.25, 0.25]


def test_track_omezarr_masks_equals_track_on_tiffs(data, movie, tmp_path):
    gt = Sequence(data, "02")
    masks = tmp_path / "masks"
    masks.mkdir()
    for t, path in gt.seg_files.items():
        shutil.copy(path, masks / path.name)
    assert main.main(["track", "--masks", str(masks), "--out", str(tmp_path / "a")]) == 0
    assert main.main(["track", "--masks", str(movie), "--out", str(tmp_path / "b")]) == 0  # its labels/ group
    assert main.main(["track", "--masks", str(movie / "labels" / "nuclei"), "--out", str(tmp_path / "c")]) == 0
    same_files(tmp_path / "a", tmp_path / "b")
    same_files(tmp_path / "a", tmp_path / "c")
    check_track_folder(tmp_path / "b", kind="mask", track_name="res_track.txt")


def test_out_format_omezarr_round_trips_through_plain_zarr(movie, tmp_path, capsys):
    out = tmp_path / "res"
    assert main.main(["track", "--masks", str(movie), "--out", str(out), "--voxel-size", "0.5", "0.25", "2",
                      "--out-format", "ome-zarr"]) == 0
    store = tmp_path / "res.ome.zarr"
    assert f"wrote {store}" in capsys.readouterr().out
    root = zarr.open_group(str(store), mode="r")
    assert root["labels"].attrs["labels"] == ["res"]
    label = root["labels/res"]
    meta = label.attrs["multiscales"][0]
    assert meta["version"] == "0.4"
    assert [(a["name"], a["type"], a.get("unit")) for a in meta["axes"]] == [
        ("t", "time", None), ("z", "space", "micrometer"), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    assert meta["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, 2.0, 0.25, 0.5]}]
    array = label[meta["datasets"][0]["path"]]
    assert array.dtype == np.uint16 and array.shape == (3, 8, 32, 32) and array.chunks == (1, 8, 32, 32)
    for t in range(3):
        assert np.array_equal(array[t], read_labels(out / f"mask{t:03d}.tif"))
    rows = read_tracks(out / "res_track.txt")
    props = label.attrs["image-label"]["properties"]
    assert label.attrs["image-label"]["version"] == "0.4"
    assert sorted((p["label-value"], p["begin"], p["end"], p["parent"]) for p in props) == sorted(map(tuple, rows.tolist()))
    # overwrite rules: refused without --overwrite, replaced with it (ours), never a folder of someone else's
    argv = ["track", "--masks", str(movie), "--out", str(tmp_path / "other"), "--out-format", "ome-zarr"]
    foreign = tmp_path / "other.ome.zarr"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert main.main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "other.ome.zarr" in err and "not written by this tool" in err and err.count("\n") == 1
    assert (foreign / "keep.txt").read_text() == "mine" and not (tmp_path / "other").exists()  # refused before work
    assert main.main(["track", "--masks", str(movie), "--out", str(out), "--out-format", "ome-zarr"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main.main(["track", "--masks", str(movie), "--out", str(out), "--out-format", "ome-zarr", "--overwrite"]) == 0
    assert zarr.open_group(str(store), mode="r")["labels/res"].attrs["multiscales"][0]["datasets"][0][
        "coordinateTransformations"][0]["scale"] == [1.0, 0.2, 0.125, 0.125]  # the label image's own voxel size now
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial or lock left


def test_our_label_image_tracks_back_to_the_same_result(movie, tmp_path):
    """`--out-format ome-zarr` output given back as `--masks`: the same CTC result."""
    assert main.main(["track", "--masks", str(movie), "--out", str(tmp_path / "a"), "--out-format", "ome-zarr"]) == 0
    assert main.main(["track", "--masks", str(tmp_path / "a.ome.zarr"), "--out", str(tmp_path / "b")]) == 0
    same_files(tmp_path / "a", tmp_path / "b")


def same_export(a: Path, b: Path):
    if a.is_dir():
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    else:
        assert a.read_bytes() == b.read_bytes()


def test_export_on_track_and_predict_writes_what_main_export_writes(data, movie, ckpt, tmp_path, capsys):
    out = tmp_path / "trk"
    assert main.main(["track", "--masks", str(movie), "--out", str(out), "--voxel-size", "0.5", "0.25", "2",
                      "--export", "geff", "trackmate", "--export", "napari"]) == 0
    printed = capsys.readouterr().out
    for fmt, suffix in (("geff", ".geff"), ("trackmate", "_trackmate.xml"), ("napari", "_tracks.csv")):
        ours = Path(str(out) + suffix)
        assert f"wrote {ours}" in printed
        assert main.main(["export", "--res", str(out), "--format", fmt, "--out", str(tmp_path / f"ref{suffix}"),
                          "--voxel-size", "0.5", "0.25", "2"]) == 0
        same_export(ours, tmp_path / f"ref{suffix}")
    res = tmp_path / "pred"
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "02", "--out", str(res),
                      "--device", "cpu", "--export", "trackmate"]) == 0
    assert main.main(["export", "--res", str(res), "--format", "trackmate", "--out", str(tmp_path / "p.xml"),
                      "--voxel-size", *map(str, SIM)]) == 0
    same_export(Path(str(res) + "_trackmate.xml"), tmp_path / "p.xml")
    # a file there that this tool did not write: refused before any work, naming it
    (tmp_path / "new_tracks.csv").write_text("my notes\n")
    capsys.readouterr()
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "02", "--out",
                      str(tmp_path / "new"), "--device", "cpu", "--export", "napari", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "new_tracks.csv" in err and "--export napari" in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists() and (tmp_path / "new_tracks.csv").read_text() == "my notes\n"
    assert main.main(["track", "--masks", str(movie), "--out", str(tmp_path / "x"), "--export", "gif"]) == 2


def tiny(data, out, **kw):
    from dataclasses import replace
    cfg = training.TrainConfig(model="unet", model_args=TINY_UNET, crop_size=(8, 32, 32), spacing=(0.2, 0.125, 0.125),
                               batch_size=2, epochs=1, steps_per_epoch=2, val_every=1, val_frames=1, tune_frames=1,
                               num_workers=0, data=str(data), out=str(out), device="cpu")
    return replace(cfg, **kw)


def test_training_from_an_omezarr_with_labels(data, tmp_path):
    images, labels = stacks(data, "01")
    first = write_movie(tmp_path / "01.ome.zarr", images, labels)
    images, labels = stacks(data, "02")
    labels[1] = 0  # an unlabelled frame: not used as ground truth
    held_out = write_movie(tmp_path / "02.ome.zarr", images, labels, label_name="cells")
    # --labels as a PATH names the training image's label image; the held-out movie uses its first
    scores = training.train(tiny(first, tmp_path / "run", val_data=str(held_out), labels=str(first / "labels" / "nuclei")))
    run = tmp_path / "run"
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    check_track_folder(run / "02_RES", kind="mask", track_name="res_track.txt")
    assert 0 <= scores["SEG"] <= 1 and "TRA" not in scores  # a label image holds no lineage to score tracking
    assert json.loads((run / "scores.json").read_text())["SEG"] == scores["SEG"]
    assert json.loads((run / "plan.json").read_text())["measured"]["voxel_size_source"] == "metadata"
    assert not (first / ".nuclei3d").exists() and sorted(p.name for p in first.iterdir()) == [".zattrs", ".zgroup", "0", "labels"]
    # one movie: validated on itself
    scores = training.train(tiny(first, tmp_path / "self"))
    assert (tmp_path / "self" / "01_RES" / "res_track.txt").is_file() and 0 <= scores["SEG"] <= 1


def test_training_needs_labels_one_line_before_any_work(data, tmp_path, capsys):
    images, labels = stacks(data, "01")
    bare = write_movie(tmp_path / "bare.ome.zarr", images)
    run = tmp_path / "run"
    assert main.main(["--model", "unet", "--data", str(bare), "--out", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(bare) in err and "no label image" in err and "--labels" in err and err.count("\n") == 1
    assert not run.exists()
    labelled = write_movie(tmp_path / "l.ome.zarr", images, labels)
    assert main.main(["--model", "unet", "--data", str(labelled), "--labels", "cells", "--out", str(run)]) == 2
    assert "--labels cells" in capsys.readouterr().err
    assert main.main(["--model", "unet", "--data", str(labelled), "--train-seq", "01", "--out", str(run)]) == 2
    assert "--train-seq" in capsys.readouterr().err and not run.exists()
    empty = write_movie(tmp_path / "e.ome.zarr", images, np.zeros_like(labels))
    assert main.main(["--model", "unet", "--data", str(empty), "--out", str(run)]) == 2
    assert "no labels in any frame" in capsys.readouterr().err and not run.exists()


def test_2d_label_image_and_a_missing_zarr_package(tmp_path, no_zarr, capsys):
    labels = np.zeros((3, 24, 20), np.uint16)
    for t in range(3):
        labels[t, 4 + t:10 + t, 3:9] = 1
        labels[t, 14:20, 10 + t:16 + t] = 2
    root = zarr.open_group(str(tmp_path / "l2.ome.zarr"), mode="w", zarr_format=3)  # NGFF 0.5
    root.create_array("0", shape=labels.shape, chunks=(1, 24, 20), dtype="uint16")[...] = labels
    axes = [{"name": "t", "type": "time"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5, 0.25]}]}]}],
        "image-label": {}}
    assert main.main(["track", "--masks", str(tmp_path / "l2.ome.zarr"), "--out", str(tmp_path / "r"),
                      "--out-format", "ome-zarr"]) == 0
    label = zarr.open_group(str(tmp_path / "r.ome.zarr"), mode="r")["labels/r"]
    meta = label.attrs["multiscales"][0]
    assert [a["name"] for a in meta["axes"]] == ["t", "y", "x"]
    assert meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.25]
    assert np.array_equal(label["0"][...], np.stack([read_labels(tmp_path / "r" / f"mask{t:03d}.tif", 2) for t in range(3)]))
    assert sorted(p["label-value"] for p in label.attrs["image-label"]["properties"]) == [1, 2]
    no_zarr()
    capsys.readouterr()
    masks = tmp_path / "r"  # the CTC result as TIFF masks: only the OME-Zarr output needs zarr
    assert main.main(["track", "--masks", str(masks), "--out", str(tmp_path / "s"), "--out-format", "ome-zarr"]) == 2
    err = capsys.readouterr().err
    assert "needs the zarr package" in err and err.count("\n") == 1 and not (tmp_path / "s").exists()
