"""Frames read box by box, for volumes larger than memory: only the part asked for is read.

    frame = lazy_frame(seq, t)          # a CTC Sequence, an OmeZarrSequence, or anything with image(t)
    frame.shape, frame.dtype
    block = frame.read((slice(0, 30), slice(100, 300), slice(0, 200)))   # a numpy copy of that box
    whole = frame.read()                # the whole frame, as the sequence's own image(t) reads it
    lo, hi = subsample_percentiles(frame, (1.0, 99.8))

- An uncompressed, contiguous TIFF (what the CTC and this project's writer produce) is memory-mapped for
  each read and unmapped after it, so the pages read do not stay in the process's memory.
- Any other TIFF (compressed, tiled, strips scattered in the file) is read page by page (one z plane at a
  time), the box cut out of each plane.
- An OME-Zarr frame reads only the chunks the box covers.
- An array already in memory is sliced.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from .ctc import CTCFormatError, _squeeze_shape

#: The percentiles of `subsample_percentiles` come from at most this many voxels (a strided subsample).
MAX_SAMPLES = 1 << 22


def _full(shape) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in shape)


def _box(box, shape) -> tuple[slice, ...]:
    """`box` (slices with explicit or None bounds, step 1) made explicit and checked against `shape`."""
    if box is None:
        return _full(shape)
    if len(box) != len(shape):
        raise ValueError(f"box {box} needs one slice per axis of a frame of shape {tuple(shape)}")
    out = []
    for s, n in zip(box, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"box {box}: steps other than 1 are not supported")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


class ArrayFrame:
    """A frame already in memory (or any numpy-like array), read by slicing."""

    def __init__(self, array, where: str = "image"):
        self.array = array
        self.shape = tuple(int(s) for s in np.shape(array))
        self.dtype = np.dtype(array.dtype)
        self.where = where

    def read(self, box=None) -> np.ndarray:
        if box is None:
            return np.asarray(self.array)
        return np.array(self.array[_box(box, self.shape)])


class TiffFrame:
    """One TIFF frame ([Z,] Y, X, singleton axes dropped), read box by box.

    Contiguous uncompressed data is memory-mapped per read (and unmapped after); other files are read
    page by page. Float voxels that are NaN or infinite are refused when read, naming the file.
    """

    def __init__(self, path: str | Path, ndim: int | None = None):
        self.path = Path(path)
        self.where = str(self.path)
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                self.shape = tuple(int(s) for s in _squeeze_shape(series.shape))
                self.dtype = np.dtype(tif.byteorder + series.dtype.char)
                self.offset = series.dataoffset  # None unless the data is one contiguous uncompressed run
        except (OSError, ValueError, IndexError, EOFError, tifffile.TiffFileError) as err:
            raise CTCFormatError(f"{self.path}: not a readable TIFF ({err})") from err
        if ndim is not None and len(self.shape) != ndim:
            raise CTCFormatError(f"{self.path}: expected a {ndim}D image, found shape {self.shape}")
        if self.dtype.kind == "c" or self.dtype == bool:
            raise CTCFormatError(f"{self.path}: dtype {self.dtype} is not an intensity image")
        if self.offset is not None and self.offset + int(np.prod(self.shape)) * self.dtype.itemsize > self.path.stat().st_size:
            raise CTCFormatError(f"{self.path}: truncated or corrupt TIFF (the file ends before its image data)")

    @property
    def mapped(self) -> bool:
        """Whether reads go through a memory map (else page by page)."""
        return self.offset is not None

    def read(self, box=None) -> np.ndarray:
        box = _box(box, self.shape)
        if self.mapped:
            out = self._read_mapped(box)
        else:
            out = self._read_pages(box)
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise CTCFormatError(f"{self.path}: {int(out.size - np.isfinite(out).sum())} voxels are NaN or infinite; "
                                 "a frame must hold finite intensities")
        return out

    def _read_mapped(self, box) -> np.ndarray:
        """The box through a map of only the z planes (3D) or rows (2D) it covers, unmapped on return."""
        first = box[0]
        row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        if first.stop <= first.start:
            return np.zeros([s.stop - s.start for s in box], self.dtype.newbyteorder("="))
        mapped = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset + first.start * row,
                           shape=(first.stop - first.start, *self.shape[1:]))
        try:
            return np.array(mapped[(slice(None), *box[1:])], dtype=self.dtype.newbyteorder("="))
        finally:
            del mapped

    def _read_pages(self, box) -> np.ndarray:
        out = np.empty([s.stop - s.start for s in box], self.dtype.newbyteorder("="))
        try:
            with tifffile.TiffFile(self.path) as tif:
                if len(self.shape) == 2:
                    out[...] = tif.asarray(key=0, series=0).reshape(self.shape)[box]
                else:
                    for i, z in enumerate(range(box[0].start, box[0].stop)):
                        out[i] = tif.asarray(key=z, series=0).reshape(self.shape[1:])[box[1:]]
        except (OSError, ValueError, IndexError, EOFError, tifffile.TiffFileError) as err:
            raise CTCFormatError(f"{self.path}: not a readable TIFF ({type(err).__name__}: {err})") from err
        return out


class ZarrFrame:
    """Frame t (channel c) of an OME-Zarr image (`dataset.omezarr.OmeZarrImage`): a box reads only its chunks."""

    def __init__(self, image, t: int, channel: int = 0):
        self.image, self.t, self.channel = image, int(t), int(channel)
        self.shape = tuple(image.frame_shape)
        self.dtype = np.dtype(image.dtype)
        self.where = f"{image.path} (t={t})"

    def read(self, box=None) -> np.ndarray:
        box = iter(_box(box, self.shape))
        index = tuple(self.t if a == "t" else self.channel if a == "c" else next(box) for a in self.image.axes)
        return np.asarray(self.image.array[index])


class SequenceFrame:
    """Frame t of a sequence: `read()` of the whole frame is the sequence's own `image(t)` (whatever it
    checks or does), a box goes through `reader` (a TiffFrame or ZarrFrame), opened on first use."""

    def __init__(self, seq, t: int, opener):
        self.seq, self.t, self._opener, self._reader = seq, t, opener, None
        self.shape = tuple(seq.shape)
        self.where = str(seq.files[t]) if hasattr(seq, "files") and t in seq.files else f"frame {t}"

    @property
    def reader(self):
        if self._reader is None:
            self._reader = self._opener()
        return self._reader

    @property
    def dtype(self) -> np.dtype:
        return self.reader.dtype

    def read(self, box=None) -> np.ndarray:
        if box is None:
            return self.seq.image(self.t)
        return self.reader.read(box)


def lazy_frame(seq, t: int):
    """Frame t of `seq` as a frame read box by box: a CTC `Sequence` through its TIFF, an `OmeZarrSequence`
    through its zarr array; any other object with `image(t)` and `shape` is read whole on first use."""
    source = getattr(seq, "source", None)
    if source is not None and hasattr(source, "array") and hasattr(source, "axes"):
        return SequenceFrame(seq, t, lambda: ZarrFrame(source, t, getattr(seq, "channel", 0)))
    files = getattr(seq, "files", None)
    if isinstance(files, dict) and t in files and Path(files[t]).suffix.lower() in (".tif", ".tiff"):
        return SequenceFrame(seq, t, lambda: TiffFrame(files[t], getattr(seq, "ndim", None)))
    return SequenceFrame(seq, t, lambda: ArrayFrame(seq.image(t), f"frame {t}"))


def as_frame(image):
    """`image` as a frame read box by box: frames pass through, arrays are wrapped in an ArrayFrame."""
    return image if hasattr(image, "read") and hasattr(image, "shape") else ArrayFrame(image)


def subsample_strides(shape, max_samples: int = MAX_SAMPLES) -> tuple[int, ...]:
    """Strides per axis such that the strided subsample of a frame of `shape` has at most `max_samples`
    voxels: the axis with the most samples is thinned first, so the subsample stays spread over the frame."""
    strides = [1] * len(shape)
    counts = lambda: [-(-n // s) for n, s in zip(shape, strides)]  # noqa: E731
    while int(np.prod(counts())) > max_samples:
        axis = int(np.argmax(counts()))
        strides[axis] += 1
    return tuple(strides)


def subsample_percentiles(frame, percentiles, max_samples: int = MAX_SAMPLES) -> tuple[float, ...]:
    """Percentiles of a frame's intensities from a strided subsample (every k-th voxel per axis, at most
    `max_samples` voxels, read one plane at a time): no float copy of the whole frame is made. A frame with
    at most `max_samples` voxels gives its exact percentiles."""
    frame = as_frame(frame)
    strides = subsample_strides(frame.shape, max_samples)
    planes = []
    if len(frame.shape) == 2:
        planes.append(_strided_rows(frame, strides))
    else:
        for z in range(0, frame.shape[0], strides[0]):
            planes.append(_strided_rows(frame, strides[1:], z))
    sample = np.concatenate([p.ravel() for p in planes]).astype(np.float32)
    return tuple(float(v) for v in np.percentile(sample, list(percentiles)))


def _strided_rows(frame, strides, z: int | None = None) -> np.ndarray:
    """Every strides-th voxel of plane z (or of a 2D frame), read a band of rows at a time."""
    ny, nx = frame.shape[-2:]
    rows = []
    band = max(strides[0], (1 << 20) // max(nx, 1) // strides[0] * strides[0])  # about 1 M voxels a read
    for y in range(0, ny, band):
        box = (slice(y, min(y + band, ny)), slice(0, nx))
        if z is not None:
            box = (slice(z, z + 1), *box)
        part = frame.read(box)
        rows.append(part.reshape(part.shape[-2:])[::strides[0], ::strides[1]])
    return np.concatenate(rows)
