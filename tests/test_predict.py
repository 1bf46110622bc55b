"""Prediction: checkpoint + sequence → CTC result folder, through the CLI, and its bad input."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

import main
import predict
from dataset import Sequence, check_track_folder, read_labels, read_tracks
from dataset.synthetic import SynthConfig, write_dataset
from inference import PostParams
from models import build_model
from utils import check_accuracy, save_checkpoint

TINY_UNET = dict(features=(4, 8, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("p") / "set", SynthConfig(shape=(8, 32, 32), frames=3, radius_xy=(5.0, 7.0)), seed=5)


def checkpoint(path, **config):
    model = build_model("unet", **{**TINY_UNET, **config})
    save_checkpoint(path, {"model_name": "unet", "model_config": model.config, "model": model.state_dict(),
                           "crop_size": [8, 32, 32], "voxel_size": [0.125, 0.125, 0.2], "post": {}})
    return path


class Oracle(nn.Module):
    """A 'model' that answers with the ground truth of the frame it is shown: ideal probabilities."""

    def __init__(self, seg, marker):
        super().__init__()
        self.seg, self.marker = seg, marker
        self.conv = nn.Conv3d(1, 1, 1)  # gives the predictor a device and an input channel count

    def forward(self, x):
        return self.seg.expand(x.shape[0], -1, -1, -1, -1), self.marker.expand(x.shape[0], -1, -1, -1, -1)


def test_predict_cli_writes_a_valid_result_and_scores_it(data, tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "m.pt")
    out = tmp_path / "res"
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "02", "--out", str(out),
                      "--device", "cpu", "--figures"]) == 0
    printed = capsys.readouterr().out
    assert "SEG" in printed and "TRA" in printed
    check_track_folder(out, kind="mask", track_name="res_track.txt")
    assert sorted(p.name for p in out.glob("mask*.tif")) == ["mask000.tif", "mask001.tif", "mask002.tif"]
    assert read_labels(out / "mask000.tif").shape == Sequence(data, "02").shape
    figures = Path(str(out) + "_figures")
    assert (figures / "lineage.png").is_file() and len(list(figures.glob("projection_*.png"))) == 3
    # a second run refuses to overwrite, then replaces with --overwrite
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "02", "--out", str(out),
                      "--device", "cpu"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_default_output_folder_is_next_to_the_sequence(data, tmp_path):
    ckpt = checkpoint(tmp_path / "m.pt")
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "01", "--device", "cpu",
                      "--overwrite"]) == 0
    assert (data / "01_RES" / "res_track.txt").is_file()


def test_ideal_probabilities_give_perfect_scores(data, tmp_path):
    """With the ground truth as its 'prediction', the whole pipeline (watershed, tracking) must score ~1."""
    from dataset3D import marker_core, three_class
    seq = Sequence(data, "02")
    results = {}
    for t in seq.frames:
        lab = seq.seg(t)
        seg = torch.from_numpy(np.eye(3, dtype=np.float32)[three_class(lab)]).permute(3, 0, 1, 2)[None] * 20 - 10
        marker = torch.from_numpy(marker_core(lab, (0.2, 0.125, 0.125)).astype(np.float32))[None, None] * 20 - 10
        results[t] = Oracle(seg, marker)

    class PerFrame(nn.Module):  # switches to the oracle of the frame being predicted
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 1, 1)
            self.current = None

        def forward(self, x):
            return self.current(x)

    model = PerFrame()
    real_image = seq.image

    def image(t):
        model.current = results[t]
        return real_image(t)

    seq.image = image
    out = predict.Predictor(model, seq.shape, post=PostParams(min_size=10)).predict_sequence(seq, tmp_path / "res",
                                                                                         progress=False)
    scores = check_accuracy(out, seq.gt_dir)
    assert scores["SEG"] > 0.95 and scores["DET"] > 0.99 and scores["TRA"] > 0.99


def test_empty_frame_is_a_valid_result(data, tmp_path):
    seq = Sequence(data, "01")
    shape = seq.shape
    background = torch.zeros(1, 3, *shape)
    background[:, 0] = 10
    model = Oracle(background, torch.full((1, 1, *shape), -10.0))
    out = predict.Predictor(model, shape).predict_sequence(seq, tmp_path / "res", progress=False)
    for t in seq.frames:
        assert not read_labels(out / f"mask{t:03d}.tif").any()
    assert len(read_tracks(out / "res_track.txt")) == 0
    check_track_folder(out, kind="mask", track_name="res_track.txt")


def test_checkpoint_that_is_not_ours(data, tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    code = main.main(["predict", "--checkpoint", str(foreign), "--data", str(data), "--device", "cpu"])
    assert code == 2 and "foreign.pt: not a checkpoint of this project" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file")
    code = main.main(["predict", "--checkpoint", str(garbage), "--data", str(data), "--device", "cpu"])
    assert code == 2 and "garbage.pt: not a readable checkpoint" in capsys.readouterr().err


def test_channel_count_mismatch(data, tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "two.pt", in_channels=2)
    code = main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "expects 2 input channels" in err and "single-channel" in err


def test_tune_needs_ground_truth(data, tmp_path, capsys):
    root = tmp_path / "nogt"
    (root / "02").mkdir(parents=True)
    for f in (data / "02").glob("*.tif"):
        tifffile.imwrite(root / "02" / f.name, tifffile.imread(f))
    code = main.main(["predict", "--checkpoint", str(checkpoint(tmp_path / "m.pt")), "--data", str(root), "--tune",
                      "--device", "cpu"])
    assert code == 2 and "--tune needs ground truth" in capsys.readouterr().err


def test_tune_searches_thresholds_on_a_sequence_with_gt(data, tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "m.pt")
    out = tmp_path / "tuned"
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "02", "--out", str(out),
                      "--device", "cpu", "--tune"]) == 0
    captured = capsys.readouterr()
    assert "tuned post-processing on 3 frames" in captured.out + captured.err
    check_track_folder(out, kind="mask", track_name="res_track.txt")


# ----------------------------------------------------------------------------- the Predictor's wiring
def blob_model(shape):
    """An Oracle that sees one ball in the middle of every frame."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    inside = torch.from_numpy(((zz / 3) ** 2 + (yy / 6) ** 2 + (xx / 6) ** 2 <= 1).astype(np.float32))
    seg = torch.stack([1 - inside, torch.zeros_like(inside), inside])[None] * 20 - 10
    return Oracle(seg, (inside[None, None] * 20 - 10))


def test_from_checkpoint_takes_the_runs_window_overlap_and_voxel_size(tmp_path):
    ckpt = tmp_path / "m.pt"
    model = build_model("unet", **TINY_UNET)
    save_checkpoint(ckpt, {"model_name": "unet", "model_config": model.config, "model": model.state_dict(),
                           "crop_size": [8, 16, 32], "voxel_size": [0.3, 0.3, 1.0], "train_config": {"overlap": 0.5}})
    p = predict.Predictor.from_checkpoint(ckpt, "cpu")
    assert (p.window, p.overlap, p.voxel_size, p.post) == ((8, 16, 32), 0.5, (0.3, 0.3, 1.0), PostParams())
    p = predict.Predictor.from_checkpoint(ckpt, "cpu", overlap=0.1, tta=True, window_batch=2, voxel_size=(1, 1, 2))
    assert (p.overlap, p.tta, p.window_batch, p.voxel_size) == (0.1, True, 2, (1.0, 1.0, 2.0))


def test_voxel_size_reaches_the_watershed(data, monkeypatch):
    """elevation='distance' is in micrometres: the Predictor's voxel size must reach inference.instances."""
    seen = []
    real = predict.inference.instances
    monkeypatch.setattr(predict.inference, "instances", lambda *a, voxel_size=None: seen.append(voxel_size) or real(*a, voxel_size=voxel_size))
    seq = Sequence(data, "02")
    p = predict.Predictor(blob_model(seq.shape), seq.shape, voxel_size=(0.2, 0.25, 1.5), post=PostParams(elevation="distance"))
    labels = p.instances(seq.image(0))
    assert seen == [(0.2, 0.25, 1.5)] and labels.max() == 1


def test_frame_numbers_not_starting_at_zero_go_into_the_track_file(data, tmp_path):
    root = tmp_path / "late"
    (root / "01").mkdir(parents=True)
    for t, f in enumerate(sorted((data / "01").glob("t*.tif"))):
        (root / "01" / f"t{t + 5:03d}.tif").write_bytes(f.read_bytes())
    seq = Sequence(root, "01")
    out = predict.Predictor(blob_model(seq.shape), seq.shape, post=PostParams(min_size=10)).predict_sequence(
        seq, tmp_path / "res", progress=False)
    assert sorted(p.name for p in out.glob("mask*.tif")) == ["mask005.tif", "mask006.tif", "mask007.tif"]
    assert read_tracks(out / "res_track.txt").tolist() == [[1, 5, 7, 0]]
    check_track_folder(out, kind="mask", track_name="res_track.txt")


def test_a_gap_in_the_frames_is_refused_before_any_work(data, tmp_path, capsys):
    root = tmp_path / "gap"
    (root / "01").mkdir(parents=True)
    for t in (0, 1):
        (root / "01" / f"t{t:03d}.tif").write_bytes((data / "01" / f"t{t:03d}.tif").read_bytes())
    (root / "01" / "t003.tif").write_bytes((data / "01" / "t002.tif").read_bytes())
    with pytest.warns(UserWarning, match="frames missing"):
        code = main.main(["predict", "--checkpoint", str(checkpoint(tmp_path / "m.pt")), "--data", str(root), "--seq", "01",
                          "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "frame 2 missing" in err and str(root / "01") in err
    assert sorted(p.name for p in root.iterdir()) == ["01"]  # nothing written


def test_tuned_thresholds_are_a_record_that_predict_then_uses(data, tmp_path, capsys, monkeypatch):
    ckpt = checkpoint(tmp_path / "m.pt")
    before = ckpt.read_bytes()
    out = tmp_path / "tuned"
    found = PostParams(fg_threshold=0.45, marker_threshold=0.65, min_size=7)  # what the search "finds": no default
    monkeypatch.setattr(predict.inference, "tune_postprocessing", lambda pairs, gts, grid, base, voxel_size, score=None: (found, 0.5))
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "02", "--out", str(out),
                      "--device", "cpu", "--tune"]) == 0
    assert ckpt.read_bytes() == before  # the model is never rewritten
    record = tmp_path / "tuned.postprocessing.json"
    tuned, _ = predict.load_post_record(record)
    assert tuned == found
    used = []
    real = predict.inference.instances
    monkeypatch.setattr(predict.inference, "instances", lambda s, m, params, voxel_size=None: used.append(params) or real(s, m, params, voxel_size))
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "02", "--out", str(tmp_path / "again"),
                      "--device", "cpu", "--post", str(record)]) == 0
    assert used and all(p == tuned for p in used)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "nuclei-ctc-postprocessing/1", "post": {"fg_treshold": 0.5}}')
    code = main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "x"), "--device", "cpu",
                      "--post", str(bad)])
    assert code == 2 and "bad.json: unknown post-processing fields ['fg_treshold']" in capsys.readouterr().err


def test_tune_for_op_ctb_from_the_command_line(data, tmp_path, capsys):
    """--tune OP_CTB tunes on every TRA frame (tracked) and says so in the record; an unknown objective is refused."""
    import json
    ckpt = checkpoint(tmp_path / "m.pt")
    out = tmp_path / "tuned"
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--seq", "02", "--out", str(out),
                      "--device", "cpu", "--tune", "OP_CTB"]) == 0
    captured = capsys.readouterr()
    assert "on 3 frames" in captured.out and "OP_CTB" in captured.out
    record = json.loads((tmp_path / "tuned.postprocessing.json").read_text())
    assert record["tuned_on"]["objective"] == "OP_CTB" and record["tuned_on"]["frames"] == [0, 1, 2]
    assert main.main(["predict", "--checkpoint", str(ckpt), "--data", str(data), "--tune", "TRA"]) == 2
    assert "invalid choice: 'TRA'" in capsys.readouterr().err
