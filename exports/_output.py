"""Where exports write: atomically, and never over a file or folder this tool did not write.

Each writer marks its output (a `written_by` field, an XML comment, a header) and passes a
predicate that recognises the mark; an existing path is replaced only with `overwrite=True` and
only when the predicate says it is ours.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dataset.fileio import replace_folder
from errors import UserError

#: The mark every export carries.
WRITTEN_BY = "nuclei3d"


def check_target(path: Path, overwrite: bool, is_ours: Callable[[Path], bool], option: str = "--out") -> None:
    """Refuse an existing `path` unless `overwrite` is set and `is_ours(path)` recognises our mark."""
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise UserError(f"{option} {path}: already exists (add --overwrite to replace an export of this tool)")
    try:
        ours = is_ours(path)
    except OSError:
        ours = False
    if not ours:
        raise UserError(f"{option} {path}: exists and was not written by this tool; refusing to replace it")


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A hidden sibling folder to fill; renamed to `path` (replacing it) when the block ends cleanly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, path)


def head(path: Path, size: int = 4096) -> str:
    """The first `size` bytes of a file as text ('' for a folder or unreadable bytes)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        return f.read(size).decode("utf-8", errors="replace")
