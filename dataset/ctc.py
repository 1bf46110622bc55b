"""Cell Tracking Challenge folders on disk: read sequences and ground truth, write results.

Layout (https://celltrackingchallenge.net/datasets/):

    ROOT/01/t000.tif ...                  raw frames (3D stacks Z,Y,X or 2D Y,X)
    ROOT/01_GT/SEG/man_seg000.tif ...     instance masks of some frames (or 2D slices man_seg_000_012.tif)
    ROOT/01_GT/TRA/man_track000.tif ...   tracking markers of every frame
    ROOT/01_GT/TRA/man_track.txt          one track per line: L B E P
    ROOT/01_RES/mask000.tif ...           results; res_track.txt

Every bad input raises `CTCFormatError`, whose message names the file and what is wrong.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import tifffile

from errors import UserError

from .fileio import MARK, OutputFolder, atomic_path, check_output  # noqa: F401  (atomic_path: older imports)

#: Voxel size of Fluo-N3DH-SIM+ in micrometres, in (x, y, z) order as the CTC states it.
VOXEL_SIZE_SIM = (0.125, 0.125, 0.200)

PATTERNS = {
    "image": re.compile(r"^t(\d{3,4})\.tif$"),
    "seg": re.compile(r"^man_seg(\d{3,4})\.tif$"),
    "seg_slice": re.compile(r"^man_seg_(\d{3,4})_(\d{3,4})\.tif$"),
    "tra": re.compile(r"^man_track(\d{3,4})\.tif$"),
    "mask": re.compile(r"^mask(\d{3,4})\.tif$"),
}


class CTCFormatError(UserError, ValueError):
    """A file or folder does not follow the CTC format; the message names it."""


# ----------------------------------------------------------------------------- listing
def list_frames(folder: str | Path, kind: str = "image") -> dict[int, Path]:
    """Frame number -> file for the files of `kind` (see PATTERNS) in `folder`, sorted by number."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CTCFormatError(f"{folder}: folder not found")
    pattern = PATTERNS[kind]
    frames: dict[int, Path] = {}
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match:
            t = int(match.group(1))
            if t in frames:
                raise CTCFormatError(f"{path}: frame {t} also given as {frames[t].name}")
            frames[t] = path
    return dict(sorted(frames.items()))


def frame_gaps(frames) -> list[int]:
    """Frame numbers missing between the first and the last of `frames`."""
    frames = sorted(frames)
    if not frames:
        return []
    return sorted(set(range(frames[0], frames[-1] + 1)) - set(frames))


def check_consecutive(frames, where: str) -> list[int]:
    """`frames` as a sorted list of frame numbers; a gap in the numbering raises CTCFormatError naming the
    missing frames. CTC tracking needs consecutive frames: a track cannot skip a frame that is not there,
    so a gap is refused rather than guessed."""
    frames = sorted(int(t) for t in frames)
    if not frames:
        raise CTCFormatError(f"{where}: no frames")
    missing = frame_gaps(frames)
    if missing:
        shown = ", ".join(str(t) for t in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise CTCFormatError(f"{where}: frame{'s' if len(missing) > 1 else ''} {shown} missing "
                             f"(CTC tracking needs consecutive frames {frames[0]}..{frames[-1]})")
    return frames


_LAST_NUMBER = re.compile(r"(\d+)\D*$")


def list_mask_files(folder: str | Path) -> dict[int, Path]:
    """Frame number -> file for the `*.tif` masks of `folder` (the last number in each name, any prefix),
    which must be consecutive (see `check_consecutive`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CTCFormatError(f"{folder}: masks folder not found")
    files: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
            continue
        match = _LAST_NUMBER.search(path.stem)
        if not match:
            raise CTCFormatError(f"{path}: no frame number in the file name (expected e.g. mask000.tif)")
        t = int(match.group(1))
        if t in files:
            raise CTCFormatError(f"{path}: frame {t} also given as {files[t].name}")
        files[t] = path
    if not files:
        raise CTCFormatError(f"{folder}: no *.tif masks found")
    files = dict(sorted(files.items()))
    numbers = list(files)
    for before, after in zip(numbers, numbers[1:]):
        if after != before + 1:
            missing = f"{before + 1}" if after == before + 2 else f"{before + 1}-{after - 1}"
            raise CTCFormatError(f"{folder}: frame {missing} missing between {files[before].name} and {files[after].name}"
                                 " (CTC tracking needs consecutive frames)")
    return files


def list_seg_slices(folder: str | Path) -> dict[int, dict[int, Path]]:
    """Frame -> {z: file} for SEG ground truth given as 2D slices `man_seg_T_Z.tif`."""
    out: dict[int, dict[int, Path]] = {}
    for path in Path(folder).iterdir():
        match = PATTERNS["seg_slice"].match(path.name)
        if match:
            out.setdefault(int(match.group(1)), {})[int(match.group(2))] = path
    return {t: dict(sorted(z.items())) for t, z in sorted(out.items())}


# ----------------------------------------------------------------------------- reading
def tiff_shape(path: str | Path) -> tuple[int, ...]:
    """Shape of the first series of a TIFF, read from its header only; refuses, naming the file, a
    truncated or corrupt file and a multi-sample (RGB) image, which is not a grey frame."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(s) for s in _squeeze_shape(series.shape))
            _check_complete(path, tif, series)
            if tif.pages[0].samplesperpixel > 1 or "S" in series.axes:
                raise CTCFormatError(f"{path}: a {tif.pages[0].samplesperpixel}-sample (RGB) image of shape {series.shape}; "
                                     "expected a single-channel grey frame (convert it to 8/16-bit grey first)")
            return shape
    except (OSError, ValueError, IndexError, EOFError, tifffile.TiffFileError) as err:
        if isinstance(err, CTCFormatError):
            raise
        raise CTCFormatError(f"{path}: not a readable TIFF ({err})") from err


def _check_complete(path: Path, tif: tifffile.TiffFile, series) -> None:
    """Truncated files read as fewer pages, or with their data past the end of the file: say so."""
    size = path.stat().st_size
    truncated = False
    if tif.is_imagej and tif.imagej_metadata:
        expected = int(tif.imagej_metadata.get("images", 1))
        truncated = expected > 1 and int(np.prod(series.shape[:-2])) < expected
    if series.dataoffset is not None:
        truncated |= series.dataoffset + series.nbytes > size
    else:
        last = tif.pages[-1] if len(tif.pages) else None
        if last is not None and getattr(last, "dataoffsets", None):
            truncated |= last.dataoffsets[-1] + last.databytecounts[-1] > size
    if truncated:
        raise CTCFormatError(f"{path}: truncated or corrupt TIFF (the file ends before its image data; "
                             f"{size} bytes); copy it again")


def _squeeze_shape(shape):
    return tuple(s for s in shape if s != 1) if len(shape) > 3 else tuple(shape)


def read_image(path: str | Path, ndim: int | None = 3) -> np.ndarray:
    """Read one raw frame; `ndim` (2 or 3) is checked unless None."""
    path = Path(path)
    if not path.is_file():
        raise CTCFormatError(f"{path}: file not found")
    try:
        array = tifffile.imread(path)
    except Exception as err:  # tifffile raises many kinds on corrupt files; all mean the same here
        raise CTCFormatError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from err
    if array.ndim > 3:  # e.g. a singleton channel or time axis written by Fiji
        array = array.reshape(_squeeze_shape(array.shape))
    if ndim is not None and array.ndim != ndim:
        raise CTCFormatError(f"{path}: expected a {ndim}D image, found shape {array.shape}")
    if array.size == 0:
        raise CTCFormatError(f"{path}: image is empty (shape {array.shape})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise CTCFormatError(f"{path}: {bad} voxels are NaN or infinite; a frame must hold finite intensities")
    if array.dtype.kind == "c" or array.dtype == bool:
        raise CTCFormatError(f"{path}: dtype {array.dtype} is not an intensity image")
    return array


def read_labels(path: str | Path, ndim: int | None = 3) -> np.ndarray:
    """Read one label image (instance mask); labels must be non-negative integers."""
    path = Path(path)
    array = read_image(path, ndim)
    if not np.issubdtype(array.dtype, np.integer):
        raise CTCFormatError(f"{path}: label image has dtype {array.dtype}; labels must be integers")
    if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
        raise CTCFormatError(f"{path}: label image has negative values (min {array.min()})")
    return array


def read_tracks(path: str | Path) -> np.ndarray:
    """Read a `man_track.txt` / `res_track.txt` as an int64 array of rows (L, B, E, P)."""
    path = Path(path)
    if not path.is_file():
        raise CTCFormatError(f"{path}: track file not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [int(f) for f in fields]
        except ValueError:
            values = []
        if len(values) != 4 or min(values) < 0 or values[0] == 0:
            raise CTCFormatError(f"{path}, line {number}: expected 'L B E P' (4 non-negative integers, L > 0), found {line!r}")
        rows.append(values)
    tracks = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return tracks


# ----------------------------------------------------------------------------- writing
def write_tiff(path: str | Path, array: np.ndarray, voxel_size=None) -> None:
    """Write an image atomically as an ImageJ-compatible TIFF (opens as a Z stack in Fiji and napari).

    voxel_size: optional (x, y, z) in micrometres, stored as ImageJ resolution and spacing.
    """
    kwargs = {}
    axes = "ZYX" if array.ndim == 3 else "YX"
    metadata = {"axes": axes}
    if voxel_size is not None:
        kwargs["resolution"] = (1.0 / voxel_size[0], 1.0 / voxel_size[1])
        metadata["unit"] = "um"
        if array.ndim == 3:
            metadata["spacing"] = voxel_size[2]
    imagej = array.dtype in (np.uint8, np.uint16, np.float32) and array.ndim in (2, 3)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, imagej=imagej, metadata=metadata if imagej else None, **kwargs)


def write_tracks(path: str | Path, tracks) -> None:
    """Write rows (L, B, E, P) atomically as a CTC track file."""
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{l} {b} {e} {p}\n" for l, b, e, p in tracks))


def frame_name(prefix: str, t: int, n_frames: int) -> str:
    """CTC file name of frame t: three digits, four when the sequence has 1000 frames or more."""
    digits = 4 if n_frames > 1000 else 3
    return f"{prefix}{t:0{digits}d}.tif"


def is_result_folder(folder: Path) -> bool:
    """The content rule of a CTC result folder: only `maskNNN.tif` files and `res_track.txt` (and the
    matching cache that `metrics` keeps there, `.ctc_matching*`)."""
    names = [p.name for p in Path(folder).iterdir() if p.name != MARK and not p.name.startswith(".ctc_matching")]
    return bool(names) and all(PATTERNS["mask"].match(n) or n == "res_track.txt" for n in names)


class ResultFolder:
    """Writes a CTC result folder (`maskNNN.tif`, `res_track.txt`) that appears only when complete.

    Files go to a hidden sibling folder; on a clean exit of the `with` block it is renamed into
    place, so an interrupted run never leaves a folder that looks like a finished result. With
    `overwrite` it replaces only a result folder this project wrote, never one of `inputs`.

        with ResultFolder(out, n_frames=len(frames), overwrite=True, inputs=[seq.image_dir]) as res:
            for t, mask in ...: res.write_mask(t, mask)
            res.write_tracks(tracks)

    Args:
        path: the result folder to write.
        n_frames: the number of frames of the sequence (file names get 4 digits past 1000).
        overwrite: replace an existing result folder written by this project.
        inputs: folders and files the result must not be, hold or lie inside (raw frames, GT, masks).
        track_name: the track file's name.
    """

    def __init__(self, path: str | Path, n_frames: int, overwrite: bool = False, inputs=(),
                 track_name: str = "res_track.txt"):
        self.path = Path(path)
        self.n_frames = n_frames
        self.track_name = track_name
        self.folder = OutputFolder(self.path, "result", overwrite, inputs, is_result_folder, marked=False)
        self.tmp: Path | None = None
        self._tracks_written = False

    @staticmethod
    def check(path: str | Path, overwrite: bool, inputs=()) -> None:
        """Refuse an output that would lose data (see `fileio.check_output`); call it before long work starts."""
        check_output(path, overwrite, "result", inputs, is_result_folder)

    def __enter__(self) -> "ResultFolder":
        self.tmp = self.folder.__enter__()
        return self

    def write_mask(self, t: int, mask: np.ndarray, prefix: str = "mask") -> Path:
        if mask.size and mask.max() > np.iinfo(np.uint16).max:
            raise CTCFormatError(f"{prefix}{t}: label {mask.max()} does not fit in uint16")
        path = self.tmp / frame_name(prefix, t, self.n_frames)
        write_tiff(path, np.ascontiguousarray(mask, dtype=np.uint16))
        return path

    def write_tracks(self, tracks) -> None:
        write_tracks(self.tmp / self.track_name, tracks)
        self._tracks_written = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._tracks_written:
            err = CTCFormatError(f"{self.path}: result folder closed without a track file")
            self.folder.__exit__(CTCFormatError, err, None)
            raise err
        self.folder.__exit__(exc_type, exc, tb)


# ----------------------------------------------------------------------------- sequences
class Sequence:
    """One CTC sequence (`ROOT/01`) and its ground truth (`ROOT/01_GT`), read lazily frame by frame.

    voxel_size: (x, y, z) in micrometres; the CTC does not store it in the files.
    """

    def __init__(self, root: str | Path, seq: str = "01", voxel_size=VOXEL_SIZE_SIM, ndim: int | None = None):
        self.root = Path(root)
        self.seq = seq
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.image_dir = self.root / seq
        self.gt_dir = self.root / f"{seq}_GT"
        if not self.root.is_dir():
            raise CTCFormatError(f"{self.root}: data set folder not found")
        if not self.image_dir.is_dir():
            raise CTCFormatError(f"{self.image_dir}: sequence folder not found (a CTC data set has {self.root}/{seq}/t000.tif ...)")
        self.files = list_frames(self.image_dir, "image")
        if not self.files:
            raise CTCFormatError(f"{self.image_dir}: no frames named tNNN.tif")
        self.frames = list(self.files)
        self.gaps = frame_gaps(self.frames)
        if self.gaps:
            warnings.warn(f"{self.image_dir}: frames missing: {self.gaps}", stacklevel=2)
        shapes = {t: tiff_shape(p) for t, p in self.files.items()}
        first = self.frames[0]
        self.shape = shapes[first]
        self.ndim = ndim or len(self.shape)
        if len(self.shape) != self.ndim:
            raise CTCFormatError(f"{self.files[first]}: expected a {self.ndim}D image, found shape {self.shape}")
        for t, shape in shapes.items():
            if shape != self.shape:
                raise CTCFormatError(f"{self.files[t]}: shape {shape} differs from {self.files[first].name} {self.shape}")

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return f"Sequence({str(self.image_dir)!r}, frames={len(self)}, shape={self.shape}, gt={self.has_gt})"

    def image(self, t: int) -> np.ndarray:
        return read_image(self.files[t], self.ndim)

    # ground truth -------------------------------------------------------------
    @property
    def has_gt(self) -> bool:
        return self.gt_dir.is_dir()

    def _gt_subdir(self, name: str) -> Path:
        path = self.gt_dir / name
        if not path.is_dir():
            raise CTCFormatError(f"{path}: ground-truth folder not found")
        return path

    @property
    def seg_files(self) -> dict[int, Path]:
        """Frames with full SEG masks (man_segNNN.tif)."""
        return list_frames(self._gt_subdir("SEG"), "seg")

    @property
    def seg_slice_files(self) -> dict[int, dict[int, Path]]:
        """Frames with SEG given as 2D slices (man_seg_NNN_ZZZ.tif): t -> {z: file}."""
        return list_seg_slices(self._gt_subdir("SEG"))

    @property
    def seg_frames(self) -> list[int]:
        return sorted(set(self.seg_files) | set(self.seg_slice_files))

    def seg(self, t: int):
        """SEG ground truth of frame t: a full label volume, or {z: 2D label slice} where only slices are annotated."""
        files = self.seg_files
        if t in files:
            labels = read_labels(files[t], self.ndim)
            self._check_gt_shape(files[t], labels.shape)
            return labels
        slices = self.seg_slice_files.get(t)
        if not slices:
            raise CTCFormatError(f"{self.gt_dir / 'SEG'}: no SEG ground truth for frame {t}")
        out = {}
        for z, path in slices.items():
            out[z] = read_labels(path, 2)
            if out[z].shape != self.shape[1:]:
                raise CTCFormatError(f"{path}: slice shape {out[z].shape} differs from the image plane {self.shape[1:]}")
            if not 0 <= z < self.shape[0]:
                raise CTCFormatError(f"{path}: slice z={z} outside the image depth {self.shape[0]}")
        return out

    @property
    def tra_files(self) -> dict[int, Path]:
        return list_frames(self._gt_subdir("TRA"), "tra")

    def tra(self, t: int) -> np.ndarray:
        files = self.tra_files
        if t not in files:
            raise CTCFormatError(f"{self.gt_dir / 'TRA'}: no man_track file for frame {t}")
        labels = read_labels(files[t], self.ndim)
        self._check_gt_shape(files[t], labels.shape)
        return labels

    @property
    def tracks(self) -> np.ndarray:
        return read_tracks(self._gt_subdir("TRA") / "man_track.txt")

    def _check_gt_shape(self, path: Path, shape) -> None:
        if tuple(shape) != self.shape:
            raise CTCFormatError(f"{path}: shape {tuple(shape)} differs from the image shape {self.shape}")
