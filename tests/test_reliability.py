"""Hostile-but-fair input: nothing the user owns is lost, bad input is one line and exit 2 before any work.

Each data-loss case checks that every input file is byte-identical afterwards. The table of these
probes is in tests/README.md.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import main
import predict
from dataset.ctc import write_tiff
from dataset.synthetic import SynthConfig, write_dataset
from models import build_model
from utils import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = dict(features=(4, 8, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))


def digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below `folder` (hidden ones included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("rel") / "set", SynthConfig(shape=(8, 32, 32), frames=3, radius_xy=(5.0, 7.0)), seed=7)


@pytest.fixture
def data(source, tmp_path):
    """A fresh copy of the data set for each test (tests may try to destroy it)."""
    import shutil
    return Path(shutil.copytree(source, tmp_path / "set"))


def checkpoint(path, **extra):
    model = build_model("unet", **TINY_UNET)
    save_checkpoint(path, {"model_name": "unet", "model_config": model.config, "model": model.state_dict(),
                           "crop_size": [8, 32, 32], "voxel_size": [0.125, 0.125, 0.2], **extra})
    return path


def run(capsys, *argv) -> tuple[int, str]:
    code = main.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def one_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- outputs never replace inputs
@pytest.mark.parametrize("where", ["root", "raw", "gt", "inside_raw"])
def test_predict_never_writes_over_or_into_the_data(data, tmp_path, capsys, where):
    ckpt = checkpoint(tmp_path / "m.pt")
    before = digest(data)
    out = {"root": data, "raw": data / "02", "gt": data / "02_GT", "inside_raw": data / "02" / "res"}[where]
    code, err = run(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--seq", "02", "--out", out, "--overwrite",
                    "--device", "cpu")
    line = one_line(err)
    assert code == 2 and str(out) in line and "input" in line
    assert digest(data) == before


def test_predict_overwrite_replaces_only_a_result_folder(data, tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "m.pt")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    code, err = run(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--out", mine, "--overwrite", "--device", "cpu")
    assert code == 2 and "was not written by this tool" in one_line(err)
    assert (mine / "notes.txt").read_text() == "my notes"
    out = tmp_path / "res"
    for _ in range(2):  # a result folder of ours is replaced
        code, err = run(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--out", out, "--overwrite", "--device", "cpu")
        assert code == 0, err
    code, err = run(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--out", ckpt, "--device", "cpu")
    assert code == 2 and "m.pt" in one_line(err)  # the checkpoint is an input, and a file


def test_track_never_deletes_the_masks_it_reads(tmp_path, capsys):
    parent = tmp_path / "P"
    masks = parent / "masks"
    for t in range(3):
        frame = np.zeros((6, 20, 20), np.uint16)
        frame[2:5, 5:12, 5:12] = 1
        write_tiff(masks / f"mask{t:03d}.tif", frame)
    (parent / "unrelated.txt").write_text("keep me")
    before = digest(parent)
    for out in (parent, masks):
        code, err = run(capsys, "track", "--masks", masks, "--out", out, "--overwrite")
        assert code == 2 and "input" in one_line(err)
    assert digest(parent) == before


def test_training_twice_into_one_folder_needs_resume_or_overwrite(data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = ["--model", "unet", "--data", data, "--out", run_dir, "--epochs", "1", "--steps-per-epoch", "1",
             "--crop-size", "8,32,32", "--device", "cpu"]
    assert run(capsys, *flags)[0] == 0
    best = (run_dir / "best.pt").read_bytes()
    code, err = run(capsys, *flags)
    line = one_line(err)
    assert code == 2 and "--resume" in line and "--overwrite" in line and str(run_dir) in line
    assert (run_dir / "best.pt").read_bytes() == best
    assert run(capsys, *flags, "--overwrite", "--seed", "1")[0] == 0
    assert (run_dir / "best.pt").read_bytes() != best  # a new model, and the old run is gone after its first checkpoint
    assert not list(tmp_path.glob("run.previous-*"))
    code, err = run(capsys, *flags[:5], data / "01" / "run", *flags[6:])
    assert code == 2 and "input" in one_line(err)


def test_synth_overwrite_replaces_only_a_data_set_it_wrote(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.tif").write_bytes(b"data")
    code, err = run(capsys, "synth", "--out", mine, "--overwrite", "--frames", "2", "--shape", "8,32,32")
    assert code == 2 and "not written by this tool" in one_line(err)
    assert (mine / "precious.tif").read_bytes() == b"data"
    out = tmp_path / "synth"
    for seed in ("1", "2"):
        assert run(capsys, "synth", "--out", out, "--overwrite", "--frames", "2", "--shape", "8,32,32", "--seed", seed)[0] == 0


# ----------------------------------------------------------------------------- inputs are what they claim
def test_rgb_and_non_finite_frames_are_refused_naming_the_file(data, tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "m.pt")
    frame = data / "02" / "t001.tif"
    tifffile.imwrite(frame, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    code, err = run(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--out", tmp_path / "r", "--device", "cpu")
    assert code == 2 and "t001.tif" in one_line(err) and "RGB" in err
    image = tifffile.imread(data / "02" / "t000.tif").astype(np.float32)
    image[0, 0, 0] = np.nan
    tifffile.imwrite(frame, image)
    code, err = run(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--out", tmp_path / "r", "--device", "cpu")
    assert code == 2 and "t001.tif: 1 voxels are NaN or infinite" in one_line(err)
    assert not (tmp_path / "r").exists()


def test_intensity_images_given_to_track_are_refused_unless_forced(data, tmp_path, capsys):
    code, err = run(capsys, "track", "--masks", data / "01", "--out", tmp_path / "res")
    assert code == 2 and "t000.tif" in one_line(err) and "intensity image" in err and "--force" in err
    assert not (tmp_path / "res").exists()
    assert run(capsys, "track", "--masks", data / "01_GT" / "TRA", "--out", tmp_path / "res")[0] == 0


@pytest.mark.parametrize("argv,option", [
    (["train", "--lr", "0"], "--lr"), (["train", "--epochs", "0"], "--epochs"), (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--seed", "-1"], "--seed"), (["train", "--lr", "nan"], "--lr"),
    (["predict", "--checkpoint", "c", "--data", "d", "--voxel-size", "0.1", "inf", "0.2"], "--voxel-size"),
    (["predict", "--checkpoint", "c", "--data", "d", "--voxel-size", "0", "0.1"], "--voxel-size"),
    (["predict", "--checkpoint", "c", "--data", "d", "--overlap", "1"], "--overlap"),
    (["predict", "--checkpoint", "c", "--data", "d", "--window-batch", "0"], "--window-batch"),
    (["track", "--masks", "m", "--out", "o", "--max-distance", "-1"], "--max-distance"),
    (["track", "--masks", "m", "--out", "o", "--voxel-size", "-0.1"], "--voxel-size"),
    (["synth", "--out", "o", "--seed", "-3"], "--seed"),
])
def test_bad_flags_are_one_line_and_exit_2_before_any_work(argv, option, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, *argv)
    assert code == 2 and option in one_line(err)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("extra,message", [
    ({"crop_size": [8, 0, 32]}, "stored crop size"), ({"crop_size": None}, "stored crop size"),
    ({"post": {"fg_threshold": 0.5, "bogus": 1}}, "unknown post-processing fields"),
    ({"post": {"elevation": "height"}}, "invalid post-processing fields"),
])
def test_checkpoint_with_bad_stored_settings(data, tmp_path, capsys, extra, message):
    ckpt = checkpoint(tmp_path / "m.pt", **extra)
    code, err = run(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--out", tmp_path / "r", "--device", "cpu")
    assert code == 2 and "m.pt" in one_line(err) and message in err


def test_truncated_frame_is_named(data, tmp_path, capsys):
    frame = data / "02" / "t000.tif"
    frame.write_bytes(frame.read_bytes()[:-3000])
    code, err = run(capsys, "predict", "--checkpoint", checkpoint(tmp_path / "m.pt"), "--data", data, "--out", tmp_path / "r",
                    "--device", "cpu")
    assert code == 2 and "t000.tif: truncated or corrupt" in one_line(err)


def test_a_frame_too_large_for_the_memory_is_refused_before_work(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(predict, "available_memory", lambda: 10_000)
    code, err = run(capsys, "predict", "--checkpoint", checkpoint(tmp_path / "m.pt"), "--data", data, "--out", tmp_path / "r",
                    "--device", "cpu")
    assert code == 2 and "needs about" in one_line(err) and "even blocks of" in err and "--max-memory" in err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- file-system faults
def test_output_that_is_a_file_and_json_into_a_folder(data, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("x")
    code, err = run(capsys, "predict", "--checkpoint", checkpoint(tmp_path / "m.pt"), "--data", data, "--out", taken,
                    "--device", "cpu")
    assert code == 2 and "taken: exists and is not a folder" in one_line(err)
    assert run(capsys, "track", "--masks", data / "01_GT" / "TRA", "--out", tmp_path / "res")[0] == 0
    code, err = run(capsys, "evaluate", "--res", tmp_path / "res", "--gt", data / "01_GT", "--json", tmp_path)
    assert code == 2 and str(tmp_path) in one_line(err) and "folder" in err


def test_full_disk_while_writing_masks_keeps_the_old_result(data, tmp_path, capsys, monkeypatch):
    ckpt = checkpoint(tmp_path / "m.pt")
    out = tmp_path / "res"
    assert run(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--out", out, "--device", "cpu")[0] == 0
    before = digest(out)
    real = tifffile.imwrite
    calls = []

    def full(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(tifffile, "imwrite", full)
    code, err = run(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--out", out, "--overwrite", "--device", "cpu")
    assert code == 2 and "the disk is full" in one_line(err)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial folder, no lock


def test_stale_partial_folders_and_locks_of_dead_runs_are_cleaned(data, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".res.{dead.pid}.abc.partial"
    stale.mkdir()
    (stale / "mask000.tif").write_bytes(b"half")
    (tmp_path / ".res.lock").write_text(f"{dead.pid}\n")
    assert run(capsys, "track", "--masks", data / "01_GT" / "TRA", "--out", tmp_path / "res")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res", "set"]


def test_two_runs_into_one_output_cannot_both_succeed(data, tmp_path, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".res.lock").write_text(f"{other.pid}\n")
        code, err = run(capsys, "track", "--masks", data / "01_GT" / "TRA", "--out", tmp_path / "res")
        assert code == 2 and f"another run (pid {other.pid}) is writing" in one_line(err)
        assert not (tmp_path / "res").exists()
    finally:
        other.kill()
        other.wait()


def test_results_get_the_users_umask(data, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        import dataset.fileio as fileio
        fileio._UMASK = None
        assert run(capsys, "track", "--masks", data / "01_GT" / "TRA", "--out", tmp_path / "res")[0] == 0
    finally:
        os.umask(old)
        fileio._UMASK = None
    assert (tmp_path / "res").stat().st_mode & 0o777 == 0o750
    assert all(p.stat().st_mode & 0o777 == 0o640 for p in (tmp_path / "res").iterdir())


# ----------------------------------------------------------------------------- kill -9
def kill_when(proc, condition, timeout=120.0, send=signal.SIGKILL):
    start = time.time()
    while not condition():
        assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
        assert time.time() - start < timeout
        time.sleep(0.02)
    proc.send_signal(send)
    proc.wait(timeout=60)


def frames_cached_by(proc, cache) -> int:
    """Frames in the cache written since `proc` took its lock: the killed run's left-overs, older than the
    lock, are not counted (the new run empties them only after taking the lock)."""
    try:
        lock = cache / ".lock"
        if lock.read_text().strip() != str(proc.pid):
            return 0
        taken = lock.stat().st_mtime_ns
        return sum(1 for p in cache.glob("t*.npy") if p.stat().st_mtime_ns >= taken)
    except (OSError, ValueError):
        return 0  # not there yet, or removed while we looked


def test_kill_9_or_ctrl_c_during_track_predict_and_synth_overwrite_loses_nothing(tmp_path, capsys):
    big = tmp_path / "big"
    assert run(capsys, "synth", "--out", big, "--frames", "30", "--shape", "16,96,96")[0] == 0
    masks = big / "01_GT" / "TRA"
    before = digest(big)
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "track", "--masks", str(masks), "--out", str(tmp_path / "res")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: any(p.name.endswith(".partial") and any(p.rglob("*.npy")) for p in tmp_path.glob(".res.*")))
    assert not (tmp_path / "res").exists() and digest(big) == before
    assert run(capsys, "track", "--masks", masks, "--out", tmp_path / "res")[0] == 0  # cleans up and finishes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "res"]

    # predict --overwrite over that result: kill -9, then Ctrl-C; the old result stays whole both times
    ckpt = checkpoint(tmp_path / "m.pt")
    old = digest(tmp_path / "res")
    argv = [sys.executable, str(ROOT / "main.py"), "predict", "--checkpoint", str(ckpt), "--data", str(big), "--seq", "01",
            "--out", str(tmp_path / "res"), "--overwrite", "--device", "cpu"]
    for sig in (signal.SIGKILL, signal.SIGINT):
        # Ctrl-C reaches the child as it would from a terminal, even where this suite runs as a background job of a
        # non-interactive shell, whose children start with SIGINT ignored (then the predict ran on to its end)
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        cache = tmp_path / ".res.cache"  # the frames segmented so far (scaleout.py), held by this run's pid
        kill_when(proc, lambda: frames_cached_by(proc, cache) > 2, send=sig)
        assert digest(tmp_path / "res") == old and digest(big) == before
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "interrupted" in proc.stderr.read()
            # cleaned up on the way out, but for the frame cache, kept for --resume (tests/test_scaleout.py)
            assert sorted(p.name for p in tmp_path.iterdir()) == [".res.cache", "big", "m.pt", "res"]
            assert not (cache / ".lock").exists()
            shutil.rmtree(cache)
    (tmp_path / "m.pt").unlink()

    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "synth", "--out", str(big), "--overwrite", "--frames", "30",
                             "--shape", "16,96,96", "--seed", "5"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: any(p.name.endswith(".partial") and (p / "01").is_dir() for p in tmp_path.glob(".big.*")))
    assert digest(big) == before  # the old set, whole
    assert run(capsys, "synth", "--out", big, "--overwrite", "--frames", "2", "--shape", "8,32,32")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "res"]


def test_a_folder_that_cannot_be_written_is_one_line_before_work(data, tmp_path, capsys, monkeypatch):
    import dataset.fileio as fileio
    real = fileio.os.access
    monkeypatch.setattr(fileio.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    code, err = run(capsys, "track", "--masks", data / "01_GT" / "TRA", "--out", tmp_path / "res")
    assert code == 2 and "cannot write there" in one_line(err) and str(tmp_path) in err
    assert not (tmp_path / "res").exists()
