"""Prediction at scale (scaleout.py): frames shared among torchrun processes, and --resume from the frame cache
after a kill -9 — both byte-identical to one uninterrupted process."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main
import predict
import scaleout
from dataset.synthetic import SynthConfig, write_dataset
from test_predict import checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun gives each process; also keeps timings steady


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs on one thread, as torchrun's processes (fast and steady on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt")


def files(folder: Path) -> dict[str, bytes]:
    """Every file of a result folder and its bytes (the matching cache `evaluate` keeps there aside)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".ctc_matching")}


def predict_argv(ckpt, data, *flags) -> list[str]:
    return ["predict", "--checkpoint", str(ckpt), "--data", str(data), "--device", "cpu", *map(str, flags)]


def count_segmented(monkeypatch) -> list:
    """Record every frame the predictor segments (each call of Predictor.instances)."""
    calls = []
    real = predict.Predictor.instances

    def instances(self, image, *args, **kwargs):
        calls.append(image)
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(predict.Predictor, "instances", instances)
    return calls


def test_two_processes_give_the_result_of_one_byte_for_byte(ckpt, tmp_path, capsys):
    data = write_dataset(tmp_path / "set", SynthConfig(shape=(8, 32, 32), frames=6, radius_xy=(5.0, 7.0)), seed=5)
    assert main.main(predict_argv(ckpt, data, "--seq", "01", "02")) == 0  # one process, both sequences
    assert "segmented 12 frames" in capsys.readouterr().out
    reference = {seq: files(data / f"{seq}_RES") for seq in ("01", "02")}
    assert all(len(ref) == 7 and "res_track.txt" in ref for ref in reference.values())
    for seq in ("01", "02"):
        shutil.rmtree(data / f"{seq}_RES")

    def torchrun(*flags):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(ROOT / "main.py"), *predict_argv(ckpt, data, *flags)],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    proc = torchrun("--seq", "02", "--out", tmp_path / "res02")  # one sequence, an --out of its own
    assert "segmented 6 frames" in proc.stdout and "on 2 processes" in proc.stdout
    assert files(tmp_path / "res02") == reference["02"]

    proc = torchrun("--seq", "01", "02")  # two sequences, one pool of two ranks: 6 frames each
    assert "segmented 12 frames" in proc.stdout and "on 2 processes" in proc.stdout
    assert "rank 1: 100%" in proc.stderr and "6/6" in proc.stderr and "12/12" in proc.stderr  # a bar per rank
    for seq in ("01", "02"):
        assert files(data / f"{seq}_RES") == reference[seq], seq
        assert proc.stdout.count(f"wrote {data / f'{seq}_RES'} (6 frames)") == 1  # rank 0 alone writes
    assert not list(data.glob(".*cache")) and not list(tmp_path.glob(".*cache"))  # caches removed when done


def test_killed_run_resumes_without_segmenting_its_cached_frames_again(ckpt, tmp_path, capsys, monkeypatch):
    data = write_dataset(tmp_path / "set", SynthConfig(shape=(16, 64, 64), frames=6, radius_xy=(5.0, 7.0)), seed=3)
    ref, res = tmp_path / "ref", tmp_path / "res"
    assert main.main(predict_argv(ckpt, data, "--seq", "02", "--out", ref)) == 0  # uninterrupted
    capsys.readouterr()

    cache = tmp_path / ".res.cache"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *predict_argv(ckpt, data, "--seq", "02", "--out", res)],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.time()
    while not list(cache.glob("t*.npy")):  # kill -9 once a frame is in the cache
        assert proc.poll() is None, "finished before it could be killed"
        assert time.time() - start < 120
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    cached = len(list(cache.glob("t*.npy")))
    assert 1 <= cached < 6 and not res.exists()  # killed mid-way: some frames cached, some not
    saved = tmp_path / "saved"
    shutil.copytree(cache, saved)  # the killed run's cache, for the two runs below

    calls = count_segmented(monkeypatch)
    assert main.main(predict_argv(ckpt, data, "--seq", "02", "--out", res, "--resume")) == 0
    out = capsys.readouterr().out
    assert f"resumed: {cached} of 6 frames" in out and len(calls) == 6 - cached  # the cached ones are not redone
    assert files(res) == files(ref) and not cache.exists()

    shutil.copytree(saved, cache)  # a changed setting: every frame is segmented again
    calls.clear()
    assert main.main(predict_argv(ckpt, data, "--seq", "02", "--out", res, "--overwrite", "--resume", "--overlap", "0.25")) == 0  # not the run's 0.5
    out = capsys.readouterr().out
    assert "resumed: 0 of 6 frames" in out and f"{cached} cached under other settings" in out and len(calls) == 6

    shutil.copytree(saved, cache)  # without --resume: the leftover cache is emptied, not used
    calls.clear()
    assert main.main(predict_argv(ckpt, data, "--seq", "02", "--out", res, "--overwrite")) == 0
    assert "emptied the frame cache" in capsys.readouterr().out and len(calls) == 6
    assert files(res) == files(ref) and not cache.exists()


def test_bad_scaleout_input_is_one_line_before_any_work(ckpt, tmp_path, capsys):
    data = write_dataset(tmp_path / "set", SynthConfig(shape=(8, 32, 32), frames=2, radius_xy=(5.0, 7.0)), seed=1)
    before = sorted(p.name for p in tmp_path.iterdir())
    for flags, message in ((["--seq", "01", "02", "--out", tmp_path / "res"], "names one result folder"),
                           (["--seq", "02", "02"], "02 given twice"),
                           (["--seq", "01", "02", "--tune"], "tunes the thresholds on one sequence")):
        assert main.main(predict_argv(ckpt, data, *flags)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not list(data.glob("*_RES"))

    cache = tmp_path / ".res.cache"  # a folder of the user's where the cache would go: refused, untouched
    cache.mkdir()
    (cache / "notes.txt").write_text("mine")
    assert main.main(predict_argv(ckpt, data, "--seq", "02", "--out", tmp_path / "res")) == 2
    assert "not written by this tool" in capsys.readouterr().err and (cache / "notes.txt").read_text() == "mine"
    shutil.rmtree(cache)

    scaleout.FrameCache(tmp_path / "res").open(resume=False, keep=set())  # a live run (pid 1) holds the cache
    (cache / scaleout.LOCK).write_text("1\n")
    assert main.main(predict_argv(ckpt, data, "--seq", "02", "--out", tmp_path / "res")) == 2
    assert "another run (pid 1) is predicting into it" in capsys.readouterr().err
    assert not (tmp_path / "res").exists() and (cache / scaleout.LOCK).read_text() == "1\n"


def test_frames_are_shared_by_voxel_count_and_entries_follow_every_setting(ckpt, tmp_path):
    # two sequences in one pool: 3 large frames and 6 small ones over 2 ranks
    work = [((0, t), 8) for t in range(3)] + [((1, t), 2) for t in range(6)]
    shares = scaleout.share(work, 2)
    loads = [sum(dict(work)[item] for item in s) for s in shares]
    assert sorted(item for s in shares for item in s) == sorted(item for item, _ in work)  # each frame exactly once
    assert max(loads) - min(loads) <= 2 and all(s == sorted(s) for s in shares)
    assert scaleout.share(work[:1], 3) == [[(0, 0)], [], []]

    data = write_dataset(tmp_path / "set", SynthConfig(shape=(8, 32, 32), frames=2, radius_xy=(5.0, 7.0)), seed=1)
    from dataset import Sequence
    seq = Sequence(data, "01")
    predictor = predict.Predictor.from_checkpoint(ckpt, "cpu")
    settings = scaleout.mask_settings(predictor)
    names = {t: scaleout.entry_name(t, settings, i) for t, i in scaleout.frame_identities(seq).items()}
    assert names == {t: scaleout.entry_name(t, settings, i) for t, i in scaleout.frame_identities(seq).items()}
    for change in (dict(overlap=0.25), dict(tta=True), dict(window=(8, 16, 16)), dict(voxel_size=(0.2, 0.2, 0.5))):
        other = scaleout.mask_settings(predict.Predictor.from_checkpoint(ckpt, "cpu", **change))
        assert scaleout.entry_name(0, other, scaleout.frame_identities(seq)[0]) != names[0], change
    predictor.post = predict.PostParams(min_size=7)
    assert scaleout.entry_name(0, scaleout.mask_settings(predictor), scaleout.frame_identities(seq)[0]) != names[0]
    stat = seq.files[1].stat()
    os.utime(seq.files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # frame 1's file changed
    changed = {t: scaleout.entry_name(t, settings, i) for t, i in scaleout.frame_identities(seq).items()}
    assert changed[0] == names[0] and changed[1] != names[1]
