"""OME-Zarr (NGFF) input: a (T, [C,] [Z,] Y, X) multiscale image read lazily, frame by frame, with `zarr`.

    image = OmeZarrImage("movie.ome.zarr")          # level 0 of the first multiscale
    image.axes, image.shape, image.voxel_size       # ('t', 'c', 'z', 'y', 'x'), ..., (x, y, z) µm
    frame = image.frame(3)                          # [Z,] Y, X of frame 3, channel 0: only its chunks are read
    seq = OmeZarrSequence("movie.ome.zarr")         # the reading side of dataset.ctc.Sequence, for predicting
    seq = OmeZarrSequence("movie.ome.zarr", labels=label_image_of("movie.ome.zarr"))   # + SEG GT, for training
    seq = open_sequence("movie.ome.zarr" or "ROOT", "02", voxel_size)   # either kind of input, by its path

Spec (https://ngff.openmicroscopy.org/0.4/): the group's attributes hold `multiscales` (NGFF 0.4, zarr v2)
or `ome.multiscales` (0.5, zarr v3); `axes` name each array axis (types time, channel, space) with a unit;
`datasets[0]` is the full resolution, its `coordinateTransformations` a `scale` (and maybe a
`translation`) per axis, multiplied by the multiscale's own `coordinateTransformations` when given.
The voxel size is that scale on the space axes, converted to micrometres. Label images (`labels/NAME`)
are multiscale images too: open them by path, or find them through the image's `labels` group
(`label_names`, `label_image_of`, `masks_image`).

zarr is optional (the CTC TIFF folders need none): a missing package is a one-line error.
"""
from __future__ import annotations

import warnings
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
        raise OmeZarrError("OME-Zarr (reading or writing) needs the zarr package: pip install zarr") from None
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
    voxel_size, and with a label image the SEG side: has_gt, seg_frames, seg_files, seg(t)), so that the
    predictor, the tracker and training take it as they take a CTC sequence folder.

    Every frame of a label image counts as annotated that holds at least one label (an all-zero frame is
    taken as not annotated, so a movie labelled on a few frames trains on those alone). A label image
    holds no lineage, so it gives no TRA ground truth: the tracking gates of a plan made from it come
    from the nucleus size alone.

    Args:
        path: the OME-Zarr image.
        channel: which channel to read where the image has several.
        voxel_size: (x, y[, z]) µm to use instead of the one in the metadata.
        labels: a label image of the same frames (its path, e.g. `movie.ome.zarr/labels/nuclei`; see
            `label_image_of`), read as the SEG ground truth.
    """

    def __init__(self, path: str | Path, channel: int = 0, voxel_size=None, labels: str | Path | None = None):
        self.source = OmeZarrImage(path)
        if not 0 <= channel < self.source.n_channels:
            raise OmeZarrError(f"{path}: channel {channel} outside 0..{self.source.n_channels - 1}")
        self.channel = channel
        if self.source.n_channels > 1:
            warnings.warn(f"{path}: {self.source.n_channels} channels; reading channel {channel}", stacklevel=2)
        self.image_dir = self.source.path
        self.root = self.source.path.parent  # outputs go beside the store (e.g. movie_RES/), never into it
        self.seq = store_stem(self.source.path)
        self.frames = list(range(self.source.n_frames))
        self.gaps: list[int] = []
        self.shape = self.source.frame_shape
        self.ndim = len(self.shape)
        self.voxel_size = tuple(float(v) for v in (voxel_size or self.source.voxel_size))
        self.files = {t: self.source.path / f"t={t}" for t in self.frames}  # names for messages and figures
        self.labels = None if labels is None else OmeZarrImage(labels)
        if self.labels is not None:
            check_labels_match(self.labels, self.source)
        self.gt_dir = self.labels.path if self.labels is not None else self.source.path  # outputs stay out of both
        self._seg_frames: list[int] | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        labels = f", labels={str(self.labels.path)!r}" if self.labels is not None else ""
        return f"OmeZarrSequence({str(self.source.path)!r}, frames={len(self)}, shape={self.shape}{labels})"

    def image(self, t: int) -> np.ndarray:
        return self.source.frame(t, self.channel)

    # ground truth (from the label image) -------------------------------------
    @property
    def has_gt(self) -> bool:
        return self.labels is not None

    @property
    def seg_frames(self) -> list[int]:
        """Frames whose label image holds at least one label (read once, frame by frame, on first use)."""
        if self._seg_frames is None:
            if self.labels is None:
                raise OmeZarrError(f"{self.source.path}: no label image given (no SEG ground truth)")
            self._seg_frames = [t for t in self.frames if np.any(self.labels.frame(t))]
        return list(self._seg_frames)

    @property
    def seg_files(self) -> dict[int, Path]:
        """Frame -> a name for the labels of that frame, for the frames with labels (as Sequence.seg_files)."""
        return {t: self.labels.path / f"t={t}" for t in self.seg_frames}

    @property
    def seg_slice_files(self) -> dict:
        return {}  # a label image labels whole frames

    def seg(self, t: int) -> np.ndarray:
        """The label image's frame t (a full label volume, as Sequence.seg)."""
        if self.labels is None:
            raise OmeZarrError(f"{self.source.path}: no label image given (no SEG ground truth)")
        return checked_labels(self.labels.frame(t), f"{self.labels.path} (frame {t})")


def store_stem(path: Path) -> str:
    """`movie` of `movie.ome.zarr` (or `movie.zarr`): the name outputs beside the store are built from."""
    name = Path(path).name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def checked_labels(frame: np.ndarray, where: str) -> np.ndarray:
    """`frame` when it is a label frame (non-negative integers); else a one-line error naming `where`."""
    if not np.issubdtype(frame.dtype, np.integer):
        raise OmeZarrError(f"{where}: label image has dtype {frame.dtype}; labels must be integers")
    if np.issubdtype(frame.dtype, np.signedinteger) and frame.size and frame.min() < 0:
        raise OmeZarrError(f"{where}: label image has negative values (min {frame.min()})")
    return frame


def check_labels_match(labels: OmeZarrImage, image: OmeZarrImage) -> None:
    """Refuse a label image that does not cover the image's frames voxel for voxel (checked on the metadata)."""
    if labels.frame_shape != image.frame_shape or labels.n_frames != image.n_frames:
        raise OmeZarrError(f"{labels.path}: {labels.n_frames} frames of {labels.frame_shape} do not match the image "
                           f"{image.path} ({image.n_frames} frames of {image.frame_shape})")
    if not np.issubdtype(labels.dtype, np.integer):
        raise OmeZarrError(f"{labels.path}: label image has dtype {labels.dtype}; labels must be integers")


# ----------------------------------------------------------------------------- finding images and labels
def is_omezarr(path: str | Path) -> bool:
    """Whether `path` names a zarr store (`*.zarr`, or a folder holding `.zgroup` / `zarr.json`), not a CTC folder."""
    path = Path(path)
    return path.name.lower().endswith(".zarr") or (path.is_dir() and any(
        (path / name).is_file() for name in (".zgroup", "zarr.json")))


def group_attrs(path: str | Path) -> dict:
    """The attributes of the zarr group at `path` ({} where there is none)."""
    zarr = _zarr()
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # not a group: no attributes to read
        return {}


def _ome(attrs: dict, key: str):
    """An NGFF key of a group's attributes: top level (0.4) or under `ome` (0.5)."""
    return attrs.get(key, (attrs.get("ome") or {}).get(key))


def label_names(path: str | Path) -> list[str]:
    """Names of the label images of the OME-Zarr image `path`, as its `labels` group lists them ([] if none)."""
    group = Path(path) / "labels"
    if not group.is_dir():
        return []
    names = _ome(group_attrs(group), "labels") or []
    return [str(n) for n in names] if isinstance(names, list) else []


def label_image_of(path: str | Path, labels: str | Path | None = None, option: str | None = "--labels") -> Path:
    """The label image that annotates the OME-Zarr image `path`: `labels` as a PATH to a label image or a
    NAME in `path/labels/`; None: the first label image its `labels` group lists. A one-line error naming
    `path` (and the flag `option` that names one) when there is none."""
    path = Path(path)
    names = label_names(path)
    if labels is not None:
        given = Path(labels)
        if str(labels) in names:
            return path / "labels" / str(labels)
        if given.is_dir():
            return given
        listed = f"its labels group lists {', '.join(names)}" if names else "it has no labels group"
        raise OmeZarrError(f"{option} {labels}: neither a label image nor a label name of {path} ({listed})")
    if not names:
        hint = f"; name one with {option} PATH" if option else ""
        raise OmeZarrError(f"{path}: no label image (no labels/ group listing one, as NGFF lays them out){hint}")
    return path / "labels" / names[0]


def masks_image(path: str | Path) -> Path:
    """The label image of an OME-Zarr given as masks (`track --masks`): `path` itself when it is a label
    image (or a multiscale image without labels), else the first label image of its `labels` group."""
    path = Path(path)
    attrs = group_attrs(path)
    names = label_names(path)
    if _ome(attrs, "image-label") is not None or (_ome(attrs, "multiscales") and not names):
        return path
    if names:
        return path / "labels" / names[0]
    if not path.exists():
        raise OmeZarrError(f"{path}: OME-Zarr label image not found")
    raise OmeZarrError(f"{path}: neither an OME-Zarr label image nor an image with a labels/ group")


def omezarr_masks(path: str | Path):
    """The label image of `path` (see `masks_image`) as masks to track: (frame -> name for messages,
    read(t) -> label frame, voxel size (x, y[, z]) µm of its metadata, frame shape). Refuses, before any
    frame is read, a label image that is not of integers or holds no frames."""
    labels = OmeZarrImage(masks_image(path))
    if not np.issubdtype(labels.dtype, np.integer):
        raise OmeZarrError(f"{labels.path}: dtype {labels.dtype}; masks to track must be integer labels")
    if labels.n_frames < 1:
        raise OmeZarrError(f"{labels.path}: no frames")
    names = {t: labels.path / f"t={t}" for t in range(labels.n_frames)}
    return names, lambda t: checked_labels(labels.frame(t), str(names[t])), labels.voxel_size, labels.frame_shape


def open_sequence(data: str | Path, seq: str = "01", voxel_size=None, labels: str | Path | None = None,
                  need_labels: bool = False, option: str | None = "--labels"):
    """The sequence `seq` of the CTC data set `data` (a `dataset.Sequence`), or the OME-Zarr image `data`
    (an `OmeZarrSequence`; one movie, so `seq` does not apply).

    voxel_size: (x, y[, z]) µm; None: SIM+'s for a CTC folder, the metadata's for an OME-Zarr.
    labels: for an OME-Zarr, its label image as SEG ground truth (PATH or NAME, see `label_image_of`);
    need_labels: the same with its first label image when `labels` is None, refusing an OME-Zarr without
    labelled frames (training, tuning). Without either, no label image is opened. option: the flag that
    names a label image, for messages.
    """
    from .ctc import VOXEL_SIZE_SIM, Sequence
    if not is_omezarr(data):
        return Sequence(data, seq, voxel_size or VOXEL_SIZE_SIM)
    if labels is None and not need_labels:
        return OmeZarrSequence(data, voxel_size=voxel_size)
    sequence = OmeZarrSequence(data, voxel_size=voxel_size, labels=label_image_of(data, labels, option))
    if need_labels and not sequence.seg_frames:
        raise OmeZarrError(f"{sequence.labels.path}: the label image holds no labels in any frame (nothing to train on)")
    return sequence
