"""Training: a tiny run end to end, kill -9 and resume, DDP with two CPU processes, and bad input."""
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import inference
import main
import training
from errors import UserError
from dataset import check_track_folder
from dataset.synthetic import SynthConfig, preset_config, write_dataset
from inference import PostParams
from predict import Predictor
from training import TrainConfig
from utils import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = dict(features=(4, 8, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "set"
    return write_dataset(root, SynthConfig(shape=(8, 32, 32), frames=3, radius_xy=(5.0, 7.0)), seed=3)


def tiny(data, out, **kw) -> TrainConfig:
    cfg = TrainConfig(model="unet", model_args=TINY_UNET, crop_size=(8, 32, 32), spacing=(0.2, 0.125, 0.125), batch_size=2, epochs=2,
                      steps_per_epoch=2, val_every=1, val_frames=1, tune_frames=1, num_workers=0, data=str(data),
                      out=str(out), device="cpu")
    return replace(cfg, **kw)


def test_tiny_run_writes_checkpoints_history_and_a_valid_ctc_result(data, tmp_path):
    scores = training.train(tiny(data, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt", "history.csv", "config.json", "scores.json", "figures/curves.png",
                 "figures/validation.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(float(r["val_seg"]) >= 0 for r in rows)
    state = load_checkpoint(run / "best.pt")  # weights_only=True inside
    assert state["model_name"] == "unet" and state["epoch"] in (1, 2) and state["id"].endswith(f"epoch{state['epoch']}")
    # the thresholds tuned at the end are their own record beside best.pt, and a Predictor built from
    # best.pt alone uses exactly them
    record = json.loads((run / "best.postprocessing.json").read_text())
    assert record["post"] == scores["post"] and record["checkpoint_id"] == state["id"]
    assert Predictor.from_checkpoint(run / "best.pt", "cpu").post == PostParams(**scores["post"])
    check_track_folder(run / "02_RES", kind="mask", track_name="res_track.txt")
    assert 0 <= scores["SEG"] <= 1 and 0 <= scores["TRA"] <= 1 and "DET" in scores


def test_a_run_tunes_only_the_marker_threshold_on_its_training_frames(data, tmp_path, monkeypatch):
    # the foreground threshold is not tuned on frames the network has fit (it transfers badly: README); the marker
    # threshold is, by default on 3 frames
    assert TrainConfig().tune_frames == 3
    grids, real = [], Predictor.tune
    monkeypatch.setattr(Predictor, "tune", lambda self, *a, grid=None, **k: grids.append(grid) or real(self, *a, grid=grid, **k))
    scores = training.train(tiny(data, tmp_path / "run", tune_frames=2))
    assert grids == [inference.TRAINING_FRAMES_GRID] and set(grids[0]) == {"marker_threshold"}
    assert scores["post"]["fg_threshold"] == PostParams().fg_threshold and scores["post"]["marker_split"] == 0.3
    assert scores["post"]["marker_threshold"] in inference.TRAINING_FRAMES_GRID["marker_threshold"] + (0.5,)


def test_with_tune_frames_0_the_final_report_keeps_the_default_thresholds(data, tmp_path, monkeypatch):
    monkeypatch.setattr(Predictor, "tune", lambda *a, **k: pytest.fail("tuned although tune_frames is 0"))
    scores = training.train(tiny(data, tmp_path / "run", tune_frames=0))
    run = tmp_path / "run"
    assert not (run / "best.postprocessing.json").exists()
    predictor = Predictor.from_checkpoint(run / "best.pt", "cpu")
    assert predictor.post == PostParams(**predictor.plan.size_limits(native=True))
    assert scores["post"] == dataclasses.asdict(predictor.post) and scores["post"]["marker_split"] == 0.3


def test_tiny_run_learns_above_a_floor(data, tmp_path):
    """200 steps of a 0.02 M-parameter U-Net (about 10 s) must segment and track the tiny set far better than an
    untrained network (SEG ~0.02 on it) — a broken loss, target or post-processing falls under the floor."""
    scores = training.train(tiny(data, tmp_path / "run", epochs=5, steps_per_epoch=40, lr=1e-2, val_every=100))
    assert scores["SEG"] > 0.35 and scores["DET"] > 0.8 and scores["TRA"] > 0.75, scores


def test_the_plan_resamples_large_nuclei_and_results_keep_the_native_shape(tmp_path, monkeypatch):
    """Nuclei of ~48 px across (the real SIM+ scale in x/y) are planned at a coarser working spacing: training
    crops come from resampled volumes, prediction resamples and comes back, and every value's source is
    recorded in plan.json and in the checkpoint."""
    big = write_dataset(tmp_path / "big", replace(preset_config("sim+"), shape=(40, 128, 128), frames=2), seed=2)
    cfg = replace(tiny(big, tmp_path / "run"), crop_size=None, spacing=None)
    seen, make_plan = {}, training.make_plan
    monkeypatch.setattr(training, "make_plan", lambda *a, **k: seen.update(k) or make_plan(*a, **k))
    scores = training.train(cfg, flags={"epochs": 2})
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    assert state["plan"] == plan and plan["sources"]["crop_size"] == "plan" and plan["sources"]["spacing"] == "plan"
    assert plan["spacing"][1] > 0.125 * 1.5  # coarser in x/y than the native 0.125 µm
    assert state["train_config"]["crop_size"] == plan["crop_size"]
    assert seen["cheap_multiple"] == (2, 4, 4)  # the U-Net's pad_multiple: crops it does not pad (test_plan)
    masks = sorted((tmp_path / "run" / "02_RES").glob("mask*.tif"))
    assert masks and all(tifffile.imread(m).shape == (40, 128, 128) for m in masks) and 0 <= scores["SEG"] <= 1
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "best.pt", "cpu")
    assert predictor.working_shape((40, 128, 128)) != (40, 128, 128)
    seg, marker = predictor.probabilities(tifffile.imread(big / "02" / "t000.tif"))
    assert seg.shape == (3, 40, 128, 128) and marker.shape == (1, 40, 128, 128)
    np.testing.assert_allclose(seg.sum(0), 1, atol=1e-4)


def test_lr_schedule_warms_up_then_decays_to_zero():
    f = [training.lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:])) and f[-1] < 0.01


def test_killed_run_resumes_at_the_right_epoch(data, tmp_path, capsys):
    """kill -9 part-way, --resume, and the run ends at the configured epoch with a loadable best checkpoint."""
    run = tmp_path / "run"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import training, tests.test_training as t; "
              f"from pathlib import Path; training.train(t.tiny(Path({str(data)!r}), Path({str(run)!r}), epochs=40, "
              f"final_predict=False, val_every=2))")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if (run / "last.pt").exists() and load_checkpoint(run / "last.pt")["epoch"] >= 3:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = load_checkpoint(run / "last.pt")["epoch"]
    assert 3 <= killed_at < 40
    (run / ".last.pt.junk.part").write_bytes(b"half a checkpoint")  # a save interrupted by the kill
    code = main.main(["--model", "unet", "--out", str(run), "--resume", "--data", str(data), "--epochs", "6",
                      "--device", "cpu", "--crop-size", "8,32,32"])
    # the train script's own model is bigger than the one in last.pt: resume must refuse, not mix them
    assert code == 2 and "differs from the configured one" in capsys.readouterr().err
    cfg = tiny(data, run, epochs=max(6, killed_at + 2), final_predict=False, val_every=2)
    training.train(cfg, resume="last")
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == cfg.epochs
    assert [row["epoch"] for row in last["history"]] == list(range(1, cfg.epochs + 1))
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] <= cfg.epochs and best["best_seg"] >= 0


def test_resume_is_exact(data, tmp_path):
    """Resuming from epoch 1 gives the same weights at epoch 2 as an uninterrupted run."""
    a = tiny(data, tmp_path / "a", final_predict=False, val_every=5)
    training.train(a)
    b = replace(a, out=str(tmp_path / "b"), epochs=1)
    training.train(b)
    training.train(replace(b, epochs=2), resume="last")
    wa, wb = load_checkpoint(tmp_path / "a" / "last.pt")["model"], load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_ddp_two_cpu_processes(data, tmp_path):
    run = tmp_path / "ddp"
    script = tmp_path / "ddp_train.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
                      "import training, test_training as t\nfrom pathlib import Path\n"
                      f"training.train(t.tiny(Path({str(data)!r}), Path({str(run)!r}), final_predict=False))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # saved unwrapped, loadable without DDP
    assert len(list(csv.DictReader(open(run / "history.csv")))) == 2  # rank 0 alone logs


# ---------------------------------------------------------------------------- bad input
def cli(argv, capsys):
    code = main.main(argv)
    return code, capsys.readouterr().err


def test_data_that_is_not_a_ctc_layout(tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    code, err = cli(["--model", "unet", "--data", str(tmp_path), "--device", "cpu"], capsys)
    assert code == 2 and "01: sequence folder not found" in err


def test_training_sequence_without_gt(data, tmp_path, capsys):
    root = tmp_path / "nogt"
    root.mkdir()
    for seq in ("01", "02"):
        os.symlink(data / seq, root / seq)
    code, err = cli(["--model", "unet", "--data", str(root), "--device", "cpu", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "01_GT" in err and "no ground truth" in err


def test_crop_size_the_model_cannot_take(data, tmp_path):
    """A ViT with an explicit patch cannot take a crop that is not a multiple of it: refused before any training."""
    cfg = replace(tiny(data, tmp_path / "r"), model="vit_unet", model_args={"patch_size": (8, 16, 16)}, crop_size=(30, 64, 64))
    with pytest.raises(UserError, match=r"crop.*\(30, 64, 64\).*multiple"):
        training.train(cfg)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_resume_with_another_models_checkpoint_or_a_corrupt_file(data, tmp_path, capsys):
    run = tmp_path / "run"
    save_checkpoint(run / "last.pt", {"model_name": "swinunetr"})
    code, err = cli(["--model", "unet", "--data", str(data), "--out", str(run), "--resume", "--device", "cpu"], capsys)
    assert code == 2 and "checkpoint of model 'swinunetr', not 'unet'" in err
    (run / "last.pt").write_bytes(b"\x80\x02garbage")
    code, err = cli(["--model", "unet", "--data", str(data), "--out", str(run), "--resume", "--device", "cpu"], capsys)
    assert code == 2 and "last.pt: not a readable checkpoint" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu(data, capsys):
    code, err = cli(["--model", "unet", "--data", str(data), "--device", "cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err


def test_non_finite_losses_stop_the_run_without_saving_a_nan_model(data, tmp_path, monkeypatch):
    import losses
    real = losses.combined_loss

    def poisoned(*a, **k):
        loss, parts = real(*a, **k)
        return loss * float("nan"), parts

    monkeypatch.setattr(training, "combined_loss", poisoned)
    with pytest.raises(main.UserError, match="non-finite losses in a row"):
        training.train(tiny(data, tmp_path / "nan", max_bad_steps=2))
    assert not (tmp_path / "nan" / "best.pt").exists()


@pytest.mark.parametrize("script,model", [("train_vit2.py", "vit_unet"), ("train_swin.py", "swinunetr"),
                                          ("train3D.py", "unet")])
def test_each_train_script_trains_on_its_own_with_its_own_model(script, model, data, tmp_path):
    """`python train3D.py --data X ...` is `main.py --model unet --data X ...`: it trains its own model with its
    own CONFIG (flags on top), and bad data gives exit 2 naming it."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / script), "--data", str(data), "--device", "cpu", "--epochs", "1",
                           "--steps-per-epoch", "1", "--crop-size", "8,32,32", "--out", str(run)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_checkpoint(run / "best.pt")
    config = __import__(script.removesuffix(".py")).CONFIG
    trained_args = state["train_config"]["model_args"]
    assert state["model_name"] == model and json.loads(json.dumps(config.model_args)).items() <= trained_args.items()
    assert state["train_config"]["epochs"] == 1 and state["train_config"]["steps_per_epoch"] == 1
    assert "SEG" in json.loads((run / "scores.json").read_text())
    proc = subprocess.run([sys.executable, str(ROOT / script), "--data", str(tmp_path / "missing"), "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "missing: data set folder not found" in proc.stderr
    assert main.MODELS[model] == script.removesuffix(".py")


def test_a_copied_train_script_trains_its_own_config(monkeypatch):
    """A copy of train3D.py with an edited CONFIG (a user's experiment) trains that CONFIG, not train3D.py's;
    `main.py --model unet` still trains train3D.py's."""
    import train3D
    seen = []
    monkeypatch.setattr(training, "train_from_cli", lambda cfg, args: seen.append((cfg, args.epochs)) or 0)
    edited = replace(train3D.CONFIG, epochs=train3D.CONFIG.epochs + 7, model_args={**train3D.CONFIG.model_args, "features": (8, 16)})
    monkeypatch.setattr(sys, "argv", ["my_train.py", "--epochs", "2"])
    assert main.run_script(edited) == 0
    assert seen[-1][0] is edited and seen[-1][1] == 2  # its CONFIG, the flags on top as for any script
    assert main.main(["--model", "unet"]) == 0 and seen[-1][0] is train3D.CONFIG


@pytest.fixture(scope="module")
def data_2d(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth2d") / "set", SynthConfig(shape=(64, 64), frames=3), seed=4)


@pytest.mark.parametrize("model", ["unet", "vit_unet", "swinunetr"])
def test_a_2d_data_set_trains_predicts_and_tracks_with_the_same_command(model, data_2d, tmp_path, capsys):
    """The dimensionality comes from the data: `main.py --model M --data ROOT_2D` needs no script edit."""
    run = tmp_path / "run"
    assert main.main(["--model", model, "--data", str(data_2d), "--out", str(run), "--epochs", "1", "--steps-per-epoch", "2",
                      "--device", "cpu"]) == 0, capsys.readouterr().err
    plan = json.loads((run / "plan.json").read_text())
    assert len(plan["crop_size"]) == 2 and len(plan["window"]) == 2
    check_track_folder(run / "02_RES", kind="mask", track_name="res_track.txt")
    assert tifffile.imread(run / "02_RES" / "mask000.tif").shape == (64, 64)
    assert "SEG" in json.loads((run / "scores.json").read_text())


def test_augment_flag_picks_a_recipe_over_the_scripts_and_rejects_others(capsys):
    """--augment strong replaces the script's augmentation by AugmentConfig.strong() (blur, low resolution, ...
    switched on), --augment default by AugmentConfig(); without the flag the script's value stays; another name
    is a one-line usage error naming the option."""
    from dataset3D import AugmentConfig
    script = TrainConfig(augment=AugmentConfig(blur_prob=0.5))
    parser = main.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "augment")
    assert set(train.choices) == set(training.AUGMENT_RECIPES)  # the flag offers exactly the recipes training knows
    strong = training.apply_overrides(script, parser.parse_args(["train", "--augment", "strong"]))
    assert strong.augment == AugmentConfig.strong() and strong.augment.blur_prob > 0 and strong.augment.lowres_prob > 0
    assert training.apply_overrides(script, parser.parse_args(["train", "--augment", "default"])).augment == AugmentConfig()
    assert training.apply_overrides(script, parser.parse_args(["train"])).augment.blur_prob == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--augment", "heavy"])
    assert "--augment" in capsys.readouterr().err
