"""File helpers every writer of the project uses: atomic files, folders that appear only when complete and
replace only what this project wrote, JSON.

A file is written to a temporary sibling and renamed into place, so a reader (or a kill -9) only ever
sees the old file or the complete new one. A folder (`OutputFolder`) is built in a hidden sibling and
swapped in with two renames; it carries a small marker file, `.nuclei3d-folder.json`, so that `--overwrite` can
tell a folder this project wrote (which it may replace) from anything else (which it refuses), and it
never equals, holds or lies inside one of the inputs it is given. Files and folders get the user's
umask, like any file a program creates.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from errors import OutputError

#: The marker file inside every folder this project writes (JSON: what kind of folder, which program).
MARK = ".nuclei3d-folder.json"
_UMASK: int | None = None


def umask() -> int:
    """The process umask (read once: os.umask can only be read by setting it)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


@contextmanager
def atomic_path(path: str | Path):
    """A temporary path beside `path` to write to; renamed to `path` when the block ends cleanly,
    removed when it raises, so `path` is always either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data) -> None:
    """`data` as indented JSON, written atomically (numpy scalars become floats)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, default=float) + "\n")


# ----------------------------------------------------------------------------- ownership
def mark(folder: str | Path, kind: str) -> None:
    """Write the marker that says `folder` was written by this project (kind: result, figures, run, dataset)."""
    (Path(folder) / MARK).write_text(json.dumps({"kind": kind, "written_by": "nuclei3d", "time": time.time()}) + "\n")


def owner_kind(folder: str | Path) -> str | None:
    """The kind recorded in `folder`'s marker, or None when it has none (or it cannot be read)."""
    try:
        return json.loads((Path(folder) / MARK).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _relation(a: Path, b: Path) -> str | None:
    """How `a` stands to `b`: 'is', 'holds', 'lies inside' or None."""
    if a == b:
        return "is"
    if a in b.parents:
        return "holds"
    if b in a.parents:
        return "lies inside"
    return None


def check_output(path: str | Path, overwrite: bool, kind: str, inputs=(), recognise=None, what: str = "output folder") -> None:
    """Refuse an output folder that would lose anything, before any work starts.

    Refused: a path that is a file; a folder that is, holds or lies inside one of `inputs` (raw frames,
    ground truth, masks being tracked, the checkpoint in use); a non-empty folder without `overwrite`;
    and with `overwrite`, a folder this project did not write (no marker of this `kind`, and not
    recognised by `recognise(folder) -> bool`, the content rule of older folders of that kind).
    """
    path = Path(path)
    target = path.resolve()
    for given in inputs:
        if given is None:
            continue
        relation = _relation(target, Path(given).resolve())
        if relation:
            raise OutputError(f"{path}: the {what} {relation} the input {given}; choose an --out apart from the inputs")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise OutputError(f"{path}: {what} is not empty (use --overwrite to replace it)")
        if owner_kind(path) != kind and not (recognise and recognise(path)):
            found = owner_kind(path)
            why = f"it is a {found} folder, not a {kind} folder" if found else "it was not written by this tool"
            raise OutputError(f"{path}: --overwrite replaces only a {kind} folder this tool wrote, and {why}; "
                              f"choose another --out or move it away yourself")
    parent = next((p for p in [target, *target.parents] if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write there ({parent} is not writable)")


# ----------------------------------------------------------------------------- folders
def pid_alive(pid: int) -> bool:
    """Whether process `pid` is running (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_of(name: str, prefix: str) -> int | None:
    try:
        return int(name[len(prefix):].split(".")[0])
    except ValueError:
        return None


def clean_stale(path: Path) -> None:
    """Remove what a killed writer of `path` left beside it: partial folders, and a half-done swap
    (the old folder moved aside but the new one not yet in place: then the old one is put back)."""
    parent, name = path.parent, path.name
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        for prefix, tail in ((f".{name}.", ".partial"), (f".{name}.old-", "")):
            if entry.name.startswith(prefix) and entry.name.endswith(tail) and entry.is_dir():
                pid = _pid_of(entry.name, prefix)
                if pid is None or pid == os.getpid() or pid_alive(pid):
                    continue
                if tail == "" and not path.exists():
                    os.replace(entry, path)  # the swap was cut between its two renames: restore the old folder
                else:
                    shutil.rmtree(entry, ignore_errors=True)


def replace_folder(complete: Path, path: Path) -> None:
    """Move the finished folder `complete` to `path`, replacing what is there with two renames."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(complete, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(complete, path)


class OutputFolder:
    """A folder that appears only when complete, carries this project's marker, and replaces only a folder
    of its kind that this project wrote (see `check_output`).

        with OutputFolder(out, "result", overwrite=True, inputs=[seq.image_dir]) as tmp:
            ... write files into tmp ...

    A lock file beside it (`.NAME.lock`, holding the writer's pid) stops two runs writing the same folder
    at once; what a killed writer left (partial folder, stale lock) is cleaned up by the next one.

    Args:
        path: the folder to write.
        kind: what it is ("result", "figures", "dataset", ...), recorded in its marker.
        overwrite: replace an existing folder of this kind that this project wrote.
        inputs: paths the folder must not be, hold or lie inside.
        recognise: content rule of folders of this kind (for kinds without a marker, and older folders).
        what: how messages name the folder ("output folder", "figures folder", ...).
        marked: write the marker file (result folders are recognised by their content alone, so that
            they hold only the CTC files).
    """

    def __init__(self, path: str | Path, kind: str, overwrite: bool = False, inputs=(), recognise=None,
                 what: str = "output folder", marked: bool = True):
        self.path, self.kind, self.overwrite, self.marked = Path(path), kind, overwrite, marked
        self.inputs, self.recognise, self.what = list(inputs), recognise, what
        self.tmp: Path | None = None
        self.lock = self.path.with_name(f".{self.path.name}.lock")

    def check(self) -> None:
        check_output(self.path, self.overwrite, self.kind, self.inputs, self.recognise, self.what)

    def __enter__(self) -> Path:
        self.check()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            clean_stale(self.path)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.{os.getpid()}.", suffix=".partial",
                                             dir=self.path.parent))
            os.chmod(self.tmp, 0o777 & ~umask())
            if self.marked:
                mark(self.tmp, self.kind)
        except BaseException:
            self._release_lock()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.check()  # nothing else took the place meanwhile
                replace_folder(self.tmp, self.path)
        finally:
            if self.tmp is not None and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)
            self._release_lock()

    def _take_lock(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~umask())
            except FileExistsError:
                try:
                    pid = int(self.lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid_alive(pid) and pid != os.getpid():
                    raise OutputError(f"{self.path}: another run (pid {pid}) is writing this folder now "
                                      f"(lock {self.lock}); wait for it or choose another --out") from None
                self.lock.unlink(missing_ok=True)  # left by a run that died
                continue
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                    raise OutputError(f"{self.path}: cannot write there ({err.strerror})") from err
                raise
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return
        raise OutputError(f"{self.path}: could not take the lock {self.lock}")

    def _release_lock(self) -> None:
        try:
            if int(self.lock.read_text().strip() or 0) == os.getpid():
                self.lock.unlink()
        except (OSError, ValueError):
            pass
