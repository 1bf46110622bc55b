"""Prediction at scale: the frames of one or several sequences shared among torchrun processes, and a
per-frame cache of instance masks from which a killed run resumes.

    torchrun --standalone --nproc_per_node=4 main.py predict --checkpoint best.pt --data ROOT --seq 01 02
    python main.py predict --checkpoint best.pt --data ROOT --seq 02 --resume     # after a crash or kill -9

One mechanism serves both. Every run, of one process or many, writes each frame's instance mask as soon as
it is segmented into a hidden cache folder beside its result, `.<OUT name>.cache/` (this tool's marker
inside, one `.npy` per frame, each written atomically). An entry is named by a digest of everything that
decides the mask (`mask_settings`): the checkpoint (its id, else a hash of its weights), the settings that
change masks (window, overlap, TTA, window batch, AMP and device kind, memory budget, thresholds, voxel
size, data plan, torch version) and the frame file (path, size and modification time; an OME-Zarr frame by
its store's files). Then:

- rank 0 lists the frames still missing from the caches and shares them among the ranks, balanced by
  voxel count, every sequence of the call in one pool; each rank segments its share into the caches; once
  all are done (a barrier) rank 0 alone links, relabels and writes each CTC result from the cached masks,
  so the result is byte-identical to a one-process run;
- with `--resume`, frames already in the cache are read back, not segmented again; a changed setting or
  frame file changes the digest, so that frame is segmented anew (the stale entry is dropped);
- without `--resume`, a cache left by an earlier run is emptied first.

The cache is removed once its result is written: it is as large as the result uncompressed, and a finished
result needs nothing of it. It is kept when the run stops before that (kill -9, a crash, an error on a frame,
Ctrl-C), which is what `--resume` is for, except after a file-system error (a full disk), where it would
only take the space the user has to free. A lock file inside, naming rank 0's pid, stops two live runs from
sharing one cache; under several machines the cache must lie on a file system they all see.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset.fileio import MARK, atomic_path, mark, owner_kind, pid_alive
from dataset.frames import lazy_frame
from distributed import Distributed
from errors import OutputError, UserError
from results import write_tracked_result

#: The marker kind of a cache folder, and the version of what its entries' digests cover.
CACHE_KIND = "frame-cache"
CACHE_FORMAT = "nuclei3d-frame-cache/1"
#: A cache entry (`t0003.<digest>.npy`), and the temporary files of entries being written (fileio.atomic_path).
ENTRY = re.compile(r"t\d+\.[0-9a-f]+\.npy")
PARTIAL = re.compile(r"\..*\.part")
LOCK = ".lock"
#: How long a process waits at a collective step for the others: while rank 0 tunes the thresholds, or
#: the other ranks segment their last frames (torch's default, 30 min, is short for large frames).
TIMEOUT = timedelta(hours=6)


@dataclass
class PredictJob:
    """One sequence to predict into one CTC result folder.

    seq: a `dataset.Sequence` or an `OmeZarrSequence`; out: its result folder; inputs: paths neither output
    may be, hold or lie inside (the sequence, its GT, the checkpoint); figures_dir: also write PNGs there.
    """
    seq: object
    out: Path
    inputs: list = field(default_factory=list)
    figures_dir: Path | None = None


def sequence_ids(data, seqs, out, tune: bool = False, default: str = "02") -> list[str]:
    """The sequence ids of `main.py predict --seq` (default: one, `default`), checked before any work: no id
    twice, one id for an OME-Zarr image (it is one movie), and with several no `--out` (each result goes to
    ROOT/<seq>_RES beside its sequence) and no `--tune` (thresholds are tuned on one sequence)."""
    from dataset.omezarr import is_omezarr
    ids = [seqs] if isinstance(seqs, str) else list(seqs) if seqs else [default]
    twice = sorted({s for s in ids if ids.count(s) > 1})
    if twice:
        raise UserError(f"--seq {' '.join(ids)}: {', '.join(twice)} given twice")
    if len(ids) > 1 and is_omezarr(data):
        raise UserError(f"--seq {' '.join(ids)}: an OME-Zarr image ({data}) is one sequence; --seq does not apply")
    if len(ids) > 1 and out:
        raise UserError(f"--out {out}: names one result folder, but --seq gives {len(ids)} sequences; drop --out "
                        f"(each result goes to ROOT/<seq>_RES) or predict one sequence per call")
    if len(ids) > 1 and tune:
        raise UserError(f"--tune: tunes the thresholds on one sequence, but --seq gives {len(ids)}; tune on one first, "
                        f"then predict them all with --post <OUT>.postprocessing.json")
    return ids


# ----------------------------------------------------------------------------- what decides a mask
def mask_settings(predictor) -> dict:
    """Everything besides the frame that decides a frame's instance mask under `predictor` (plain JSON)."""
    model = predictor.checkpoint_id
    if model is None:  # a checkpoint without an id, or a model built in code: its weights say what it is
        digest = hashlib.sha256()
        for name, tensor in predictor.model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        model = f"weights:{digest.hexdigest()}"
    plan = getattr(predictor, "plan", None)
    return {"format": CACHE_FORMAT, "model": model, "window": list(predictor.window), "overlap": predictor.overlap,
            "tta": predictor.tta, "window_batch": predictor.window_batch, "amp": predictor.amp,
            "device": predictor.device.type, "max_memory": getattr(predictor, "max_memory", None),
            "post": dataclasses.asdict(predictor.post), "voxel_size": list(predictor.voxel_size),
            "plan": plan.to_json() if plan is not None else None, "torch": torch.__version__}


def frame_identities(seq) -> dict[int, dict]:
    """What identifies each frame's input: a frame file by its path, size and modification time; a frame of a
    store folder (OME-Zarr) by its index, channel and the size and modification time of every file in the
    store; any other by a hash of its voxels."""
    files = getattr(seq, "files", None) or {}
    store = None
    out = {}
    for t in seq.frames:
        path = Path(files[t]) if t in files else None
        if path is not None and path.is_file():
            stat = path.stat()
            out[t] = {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        elif Path(seq.image_dir).is_dir():
            if store is None:
                store = _tree_digest(Path(seq.image_dir))
            out[t] = {"store": str(Path(seq.image_dir).resolve()), "files": store, "t": t,
                      "channel": getattr(seq, "channel", None)}
        else:
            out[t] = {"t": t, "voxels": hashlib.sha256(np.ascontiguousarray(seq.image(t)).tobytes()).hexdigest()}
    return out


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            stat = os.stat(os.path.join(root, name))
            digest.update(f"{os.path.relpath(os.path.join(root, name), folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def entry_name(t: int, settings: dict, identity: dict) -> str:
    """The cache entry of frame t: its number and a digest of the settings and of its input's identity."""
    key = json.dumps({"settings": settings, "frame": identity}, sort_keys=True, default=str)
    return f"t{t:04d}.{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"


# ----------------------------------------------------------------------------- the cache folder
def cache_folder(out: str | Path) -> Path:
    """Where the frame cache of the result folder `out` lives: `.<name>.cache` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.cache")


class FrameCache:
    """The per-frame mask cache of one result folder (see the module docstring). Rank 0 opens, locks,
    prunes and removes it; every rank puts entries into it."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.folder = cache_folder(out)
        self.lock = self.folder / LOCK
        self._locked = False

    @property
    def locked(self) -> bool:
        """Whether this run holds the cache (opened it, and has not released or removed it)."""
        return self._locked

    def ours(self) -> bool:
        """Whether the folder may be used as this result's cache: absent, empty, marked as a frame cache, or
        holding nothing but what a cache holds (a marker cut short by a kill)."""
        if not self.folder.exists():
            return True
        if not self.folder.is_dir():
            return False
        if owner_kind(self.folder) == CACHE_KIND:
            return True
        return all(p.name in (MARK, LOCK) or ENTRY.fullmatch(p.name) or PARTIAL.fullmatch(p.name)
                   for p in self.folder.iterdir())

    def open(self, resume: bool, keep: set[str]) -> tuple[list[str], int]:
        """Take the cache for this run: refuse a folder this tool did not write and one a live run holds;
        without `resume` empty it, with `resume` keep only the entries named in `keep`.
        Returns (entries kept, number of entries removed)."""
        if not self.ours():
            raise OutputError(f"{self.folder}: exists and was not written by this tool (the frame cache of {self.out} "
                              f"goes there); move it away")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        if owner_kind(self.folder) != CACHE_KIND:
            mark(self.folder, CACHE_KIND)
        kept, removed = [], 0
        for entry in self.folder.iterdir():
            if entry.name in (MARK, LOCK):
                continue
            if resume and entry.name in keep:
                kept.append(entry.name)
                continue
            removed += bool(ENTRY.fullmatch(entry.name))
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return kept, removed

    def _take_lock(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                try:
                    pid = int(self.lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and pid_alive(pid):
                    raise OutputError(f"{self.out}: another run (pid {pid}) is predicting into it now (lock "
                                      f"{self.lock}); wait for it or choose another --out") from None
                self.lock.unlink(missing_ok=True)  # left by a run that died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self._locked = True
            return
        raise OutputError(f"{self.out}: could not take the lock {self.lock}")

    def release(self) -> None:
        """Give the lock back (the entries stay, for --resume)."""
        if self._locked:
            self.lock.unlink(missing_ok=True)
            self._locked = False

    def remove(self) -> None:
        """Remove the whole cache (its result is written, or a file-system error makes it a burden)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._locked = False

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def put(self, name: str, mask: np.ndarray) -> None:
        """Store one frame's mask atomically: a kill leaves the entry whole or absent."""
        with atomic_path(self.folder / name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(mask))

    def load(self, name: str) -> np.ndarray:
        return np.load(self.folder / name)


# ----------------------------------------------------------------------------- sharing the work
def share(work: list[tuple[object, int]], world: int) -> list[list]:
    """Split `work` ((item, voxels) pairs) among `world` ranks so that each gets about as many voxels: largest
    first, each to the least loaded rank (ties to the lower rank). Each share keeps the items' order."""
    loads, shares = [0] * world, [[] for _ in range(world)]
    for k in sorted(range(len(work)), key=lambda k: -work[k][1]):
        rank = min(range(world), key=lambda r: (loads[r], r))
        shares[rank].append(k)
        loads[rank] += work[k][1]
    return [[work[k][0] for k in sorted(s)] for s in shares]


def _describe(frames: list[int]) -> str:
    """0-3, 5, 7-8"""
    runs, start = [], None
    for i, t in enumerate(frames):
        if start is None:
            start = t
        if i + 1 == len(frames) or frames[i + 1] != t + 1:
            runs.append(f"{start}" if start == t else f"{start}-{t}")
            start = None
    return ", ".join(runs)


def _prepare(jobs: list[PredictJob], caches: list[FrameCache], settings: dict, resume: bool, world: int) -> dict:
    """Rank 0: open the caches, name every frame's entry, say what is resumed, share what is left."""
    names, work = [], []
    for i, (job, cache) in enumerate(zip(jobs, caches)):
        seq = job.seq
        job_names = {t: entry_name(t, settings, identity) for t, identity in frame_identities(seq).items()}
        kept, removed = cache.open(resume, set(job_names.values()))
        names.append(job_names)
        cached = sorted(t for t, name in job_names.items() if name in kept)
        if resume:
            line = f"resumed: {len(cached)} of {len(seq.frames)} frames of {seq.image_dir} from the cache {cache.folder}"
            if cached:
                line += f" ({'frame' if len(cached) == 1 else 'frames'} {_describe(cached)} reused, not segmented again)"
            if removed:
                line += f"; {removed} cached under other settings or frame files are segmented again"
            print(line, flush=True)
        elif removed:
            print(f"note: emptied the frame cache {cache.folder} of an earlier run ({removed} frames; --resume reuses "
                  f"those still valid)", flush=True)
        voxels = int(np.prod(seq.shape))
        work += [((i, t), voxels) for t in seq.frames if t not in cached]
    return {"names": names, "shares": share(work, world)}


# ----------------------------------------------------------------------------- the whole call
def predict_sequences(predictor, jobs: list[PredictJob], ddp: Distributed | None = None, overwrite: bool = False,
                      resume: bool = False, progress: bool = True) -> dict:
    """Segment every frame of every job's sequence into the frame caches — shared among the torchrun processes
    — then (rank 0) link, relabel and write each CTC result folder from them, and remove the caches.

    The jobs' inputs and outputs must have been checked already (`ResultFolder.check`, `Predictor.check_image`,
    `check_consecutive`). resume: reuse the frames already cached (see the module docstring).
    Returns on rank 0 {"segmented": frames segmented by this call, "reused": frames read from caches,
    "seconds": time segmenting them, "world": processes}; {} on the other ranks.
    """
    ddp = ddp or Distributed(predictor.device, timeout=TIMEOUT)
    settings = mask_settings(predictor)
    caches = [FrameCache(job.out) for job in jobs]
    bar = None
    try:
        work = _prepare(jobs, caches, settings, resume, ddp.world) if ddp.main else None
        work = ddp.broadcast(work)
        names, shares = work["names"], work["shares"]
        pending = [item for s in shares for item in s]
        mine = shares[ddp.rank]
        bar = tqdm(total=len(pending) if ddp.main else len(mine), unit="frame", position=ddp.rank,
                   disable=not progress, dynamic_ncols=True,
                   desc=f"segmenting on {ddp.world} processes" if ddp.main and ddp.world > 1 else
                   f"rank {ddp.rank}" if ddp.world > 1 else "segmenting")

        def advance() -> None:  # rank 0's bar counts every rank's frames, as they appear in the caches
            if not progress:
                return
            done = sum(caches[i].has(names[i][t]) for i, t in pending) if ddp.world > 1 else bar.n + 1
            bar.update(done - bar.n)

        start = time.perf_counter()
        for i, t in mine:
            mask = predictor.instances(lazy_frame(jobs[i].seq, t), scratch=caches[i].folder)
            caches[i].put(names[i][t], mask)
            if ddp.main:
                advance()
            else:
                bar.update(1)
        ddp.barrier(while_waiting=advance if ddp.main and progress else None)
        seconds = time.perf_counter() - start
        bar.close()
        if not ddp.main:
            return {}
        if pending:
            print(f"segmented {len(pending)} frames in {seconds:.1f} s on {ddp.world} process"
                  f"{'es' if ddp.world > 1 else ''}: {len(pending) / max(seconds, 1e-9):.2f} frames/s", flush=True)
        for job, cache, job_names in zip(jobs, caches, names):
            seq = job.seq
            write_tracked_result(None, seq.frames, job.out, predictor.spacing(len(seq.shape)), predictor.track,
                                 overwrite, job.figures_dir, image=seq.image,
                                 names={t: Path(p).name for t, p in seq.files.items()}, inputs=job.inputs,
                                 progress=False, load=lambda t, c=cache, n=job_names: c.load(n[t]))
            cache.remove()
        total = sum(len(job.seq.frames) for job in jobs)
        return {"segmented": len(pending), "reused": total - len(pending), "seconds": seconds, "world": ddp.world}
    except OSError:  # a full disk, a folder that cannot be written: the caches would only take space
        for cache in caches:
            if cache.locked:
                cache.remove()
        raise
    except BaseException:  # kill -9 never gets here; an error on a frame or Ctrl-C keeps what was segmented
        if bar is not None:
            bar.close()
        kept = []
        for cache in caches:
            if cache.locked and any(cache.folder.glob("t*.npy")):
                kept.append(str(cache.folder))
            elif cache.locked:
                cache.remove()  # nothing to resume from
        if kept:
            print(f"note: the frames segmented so far are kept in {', '.join(kept)}; run the same command with "
                  f"--resume to continue", file=sys.stderr, flush=True)
        raise
    finally:
        for cache in caches:
            cache.release()
