"""OME-Zarr (NGFF) input: a (T, [C,] [Z,] Y, X) multiscale image read lazily, frame by frame, with `zarr`.

    image = OmeZarrImage("movie.ome.zarr")          # level 0 of the first multiscale
    image.axes, image.shape, image.voxel_size       # ('t', 'c', 'z', 'y', 'x'), ..., (x, y, z) µm
    frame = image.frame(3)                          # [Z,] Y, X of frame 3, channel 0: only its chunks are read
    seq = OmeZarrSequence("movie.ome.zarr")         # the reading side of dataset.ctc.Sequence, for predicting

Spec (https://ngff.openmicroscopy.org/0.4/): the group's attributes hold `multiscales` (NGFF 0.4, zarr v2)
or `ome.multiscales` (0.5, zarr v3); `axes` name each array axis (types time, channel, space) with a unit;
`datasets[0]` is the full resolution, its `coordinateTransformations` a `scale` (and maybe a
`translation`) per axis, multiplied by the multiscale's own `coordinateTransformations` when given.
The voxel size is that scale on the space axes, converted to micrometres. Label images (`labels/NAME`)
are multiscale images too: open them by path.

zarr is optional (the CTC TIFF folders need none): a missing package is a one-line error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .ctc import CTCFormatError

#: metres per unit, for the NGFF space units we may meet
_METRES = {"angstrom": 1e-10, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3, "centimeter": 1e-2,
           "meter": 1.0, "picometer": 1e-12}


class OmeZarrError(CTCFormatError):
    """An OME-Zarr store that is missing, not NGFF, or not an image this tool can read; the message names it."""


def _zarr():
    try:
        import zarr
    except ImportError:
        raise OmeZarrError("reading OME-Zarr needs the zarr package: pip install zarr") from None
    return zarr


def multiscales(attrs: dict, where: str) -> list:
    """The `multiscales` list of a group's attributes (NGFF 0.4 top level, 0.5 under `ome`)."""
    found = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not found or not isinstance(found, list):
        raise OmeZarrError(f"{where}: not an OME-Zarr image (no 'multiscales' in its attributes)")
    return found


def scale_of(transforms, n: int, where: str) -> np.ndarray:
    """The per-axis scale of a list of NGFF coordinate transformations (identity if none)."""
    scale = np.ones(n)
    for transform in transforms or []:
        if transform.get("type") == "scale":
            values = transform.get("scale")
            if not isinstance(values, list) or len(values) != n:
                raise OmeZarrError(f"{where}: a scale transformation needs {n} values, got {values!r}")
            scale = scale * np.asarray(values, dtype=np.float64)
    return scale


class OmeZarrImage:
    """Level `level` of multiscale `index` of an OME-Zarr image, read lazily.

    Args:
        path: the image's zarr group (e.g. `movie.ome.zarr`, or `movie.ome.zarr/labels/nuclei`).
        level: resolution level (0: full resolution).
        index: which multiscale of the group (NGFF allows several; 0 in practice).
    """

    def __init__(self, path: str | Path, level: int = 0, index: int = 0):
        zarr = _zarr()
        self.path = Path(path)
        if not self.path.exists():
            raise OmeZarrError(f"{self.path}: OME-Zarr image not found")
        try:
            group = zarr.open_group(str(self.path), mode="r")
        except Exception as err:  # zarr raises several kinds for a folder that is not a group
            raise OmeZarrError(f"{self.path}: not a zarr group ({type(err).__name__}: {err})") from err
        ms = multiscales(dict(group.attrs), str(self.path))
        if not 0 <= index < len(ms):
            raise OmeZarrError(f"{self.path}: multiscale {index} not found ({len(ms)} in the image)")
        meta = ms[index]
        self.version = str(meta.get("version", (group.attrs.get("ome") or {}).get("version", "")))
        axes = meta.get("axes")
        if not axes:
            raise OmeZarrError(f"{self.path}: multiscale has no 'axes' (NGFF 0.4 requires them)")
        self.axes = tuple(str(a["name"] if isinstance(a, dict) else a).lower() for a in axes)
        self.units = {str(a["name"]).lower(): a.get("unit") for a in axes if isinstance(a, dict)}
        datasets = meta.get("datasets") or []
        if not 0 <= level < len(datasets):
            raise OmeZarrError(f"{self.path}: resolution level {level} not found ({len(datasets)} datasets)")
        dataset = datasets[level]
        try:
            self.array = group[dataset["path"]]
        except KeyError as err:
            raise OmeZarrError(f"{self.path}: dataset {dataset.get('path')!r} of the multiscales is missing") from err
        if len(self.array.shape) != len(self.axes):
            raise OmeZarrError(f"{self.path}/{dataset['path']}: {len(self.array.shape)}D array for axes {self.axes}")
        unknown = set(self.axes) - set("tczyx")
        if unknown or len(set(self.axes)) != len(self.axes) or not {"y", "x"} <= set(self.axes):
            raise OmeZarrError(f"{self.path}: axes {self.axes}: expected t, c, z, y, x (y and x required)")
        where = f"{self.path} (level {level})"
        self.scale = scale_of(dataset.get("coordinateTransformations"), len(self.axes), where) * \
            scale_of(meta.get("coordinateTransformations"), len(self.axes), where)

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def spatial_axes(self) -> tuple[str, ...]:
        return tuple(a for a in self.axes if a in "zyx")

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame: the space axes ([Z,] Y, X)."""
        return tuple(self.shape[self.axes.index(a)] for a in self.spatial_axes)

    @property
    def n_frames(self) -> int:
        return self.shape[self.axes.index("t")] if "t" in self.axes else 1

    @property
    def n_channels(self) -> int:
        return self.shape[self.axes.index("c")] if "c" in self.axes else 1

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        return f"OmeZarrImage({str(self.path)!r}, axes={''.join(self.axes)}, shape={self.shape}, voxel_size={self.voxel_size})"

    @property
    def voxel_size(self) -> tuple[float, ...]:
        """(x, y[, z]) in micrometres, from the scale of the space axes and their units."""
        size = []
        for axis in ("x", "y", "z"):
            if axis not in self.axes:
                continue
            value = float(self.scale[self.axes.index(axis)])
            unit = self.units.get(axis) or "micrometer"
            if unit not in _METRES:
                raise OmeZarrError(f"{self.path}: axis {axis} has unit {unit!r}; expected one of {', '.join(_METRES)}")
            size.append(value * _METRES[unit] / 1e-6)
        if min(size) <= 0 or not all(np.isfinite(size)):
            raise OmeZarrError(f"{self.path}: voxel size {tuple(size)} must be positive")
        return tuple(size)

    # ------------------------------------------------------------------ reading
    def frame(self, t: int = 0, channel: int = 0) -> np.ndarray:
        """Frame t (channel `channel`) as a numpy array ([Z,] Y, X); reads only the chunks it covers."""
        index = []
        for axis, size in zip(self.axes, self.shape):
            if axis == "t":
                if not 0 <= t < size:
                    raise OmeZarrError(f"{self.path}: frame {t} outside 0..{size - 1}")
                index.append(int(t))
            elif axis == "c":
                if not 0 <= channel < size:
                    raise OmeZarrError(f"{self.path}: channel {channel} outside 0..{size - 1}")
                index.append(int(channel))
            else:
                index.append(slice(None))
        return np.asarray(self.array[tuple(index)])


class OmeZarrSequence:
    """An OME-Zarr time series with the reading side of `dataset.ctc.Sequence` (frames, image(t), shape,
    voxel_size), so that the predictor and the tracker take it as they take a CTC sequence folder.

    Args:
        path: the OME-Zarr image.
        channel: which channel to read where the image has several.
        voxel_size: (x, y[, z]) µm to use instead of the one in the metadata.
    """

    has_gt = False

    def __init__(self, path: str | Path, channel: int = 0, voxel_size=None):
        self.source = OmeZarrImage(path)
        if not 0 <= channel < self.source.n_channels:
            raise OmeZarrError(f"{path}: channel {channel} outside 0..{self.source.n_channels - 1}")
        self.channel = channel
        self.root = self.image_dir = self.source.path
        self.gt_dir = self.source.path  # no ground truth beside it: outputs must still stay out of the image
        self.seq = self.source.path.name
        self.frames = list(range(self.source.n_frames))
        self.gaps: list[int] = []
        self.shape = self.source.frame_shape
        self.ndim = len(self.shape)
        self.voxel_size = tuple(float(v) for v in (voxel_size or self.source.voxel_size))
        self.files = {t: self.source.path / f"t={t}" for t in self.frames}  # names for messages and figures

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return f"OmeZarrSequence({str(self.source.path)!r}, frames={len(self)}, shape={self.shape})"

    def image(self, t: int) -> np.ndarray:
        return self.source.frame(t, self.channel)
