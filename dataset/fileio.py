"""Small file helpers every writer of the project uses: atomic files, atomic folder replacement, JSON.

A file is written to a temporary sibling and renamed into place, so a reader (or a kill -9) only ever
sees the old file or the complete new one; a folder is built in a hidden sibling and swapped in with
two renames.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """A temporary path beside `path` to write to; renamed to `path` when the block ends cleanly,
    removed when it raises, so `path` is always either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(complete: Path, path: Path) -> None:
    """Move the finished folder `complete` to `path`, replacing what is there with two renames."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(complete, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(complete, path)


def write_json(path: str | Path, data) -> None:
    """`data` as indented JSON, written atomically (numpy scalars become floats)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, default=float) + "\n")
