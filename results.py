"""The tracked-result writer: instance masks of consecutive frames → link → relabel → CTC result folder.

One writer for every caller (`main.py predict`, `main.py track`, the training run's final report, the
tests), so that one policy holds everywhere:

- frames are CTC frame numbers, and `res_track.txt` holds them (B and E are frame numbers, never
  positions in a list);
- the frames must be consecutive: a gap (t000, t001, t003) is refused before any work, naming the
  missing frames, because a CTC track cannot skip a frame that has no mask;
- the masks wait in a scratch folder inside the hidden partial result between the two passes of the
  tracker (link, then relabel), so memory holds one frame at a time whatever the sequence length (masks
  already on disk, as `main.py predict`'s frame cache holds them, are read from there instead); the
  result appears only when complete (`dataset.ResultFolder`), and the scratch goes with it on any exit.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset.ctc import CTCFormatError, ResultFolder, check_consecutive
from dataset.validate import check_lineage, labels_present
from tracking import TrackParams, track_sequence


def write_tracked_result(masks: Iterable[tuple[int, np.ndarray]], frames, out: str | Path, voxel_size,
                         params: TrackParams | None = None, overwrite: bool = False, figures_dir: str | Path | None = None,
                         image: Callable[[int], np.ndarray] | None = None, names: dict[int, str] | None = None,
                         inputs=(), progress: bool = True, desc: str = "linking",
                         load: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
    """Track the instance masks `masks` ((t, mask) pairs in the order of `frames`) into the CTC result `out`.

    voxel_size: (x, y[, z]) µm for the tracker's gates; figures_dir: also write a PNG projection per frame
    (over `image(t)` when given) and a lineage tree there; names: frame -> file, for messages; inputs: folders
    and files that neither output may be, hold or lie inside (with `overwrite`, only folders this project
    wrote are replaced).
    load: frame t's mask read from where it already lies on disk (the prediction's frame cache, scaleout.py); then
    `masks` is not used, and the tracker's two passes read the masks through `load` instead of a scratch copy.
    Returns the track rows (L, B, E, P). The result folder is checked against the CTC rules before it appears.
    """
    out = Path(out)
    frames = check_consecutive(frames, str(out))
    # entering both folders checks them (inputs, overwrite rules) before the first mask is asked for
    with ResultFolder(out, frames[-1] + 1, overwrite, inputs) as result, _figure_folder(figures_dir, overwrite, inputs) as fig_dir:
        scratch = result.tmp / ".masks"
        scratch.mkdir()
        try:
            if load is None:
                for i, (t, mask) in enumerate(tqdm(masks, total=len(frames), desc=desc, unit="frame", disable=not progress)):
                    if i >= len(frames) or t != frames[i]:
                        raise CTCFormatError(f"{out}: got frame {t} where frame {frames[i] if i < len(frames) else None} was due")
                    np.save(scratch / f"{t}.npy", mask)
                load = lambda t: np.load(scratch / f"{t}.npy")  # noqa: E731
            relabelled, tracks = track_sequence(load, frames, voxel_size, params)
            present = {}
            for t, mask in tqdm(relabelled, total=len(frames), desc="writing", unit="frame", disable=not progress, leave=False):
                present[t] = labels_present(mask)
                result.write_mask(t, mask)
                if fig_dir is not None:
                    from figures import save_projection
                    save_projection(fig_dir / f"projection_{t:03d}.png", image(t) if image else None, mask,
                                    title=f"{Path(names[t]).name if names else out.name}: frame {t}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        check_lineage(tracks, present, {t: str(p) for t, p in names.items()} if names else None, "tracks")
        result.write_tracks(tracks)
        if fig_dir is not None:
            from figures import save_lineage_tree
            save_lineage_tree(fig_dir / "lineage.png", tracks, title=f"lineage of {out.name}")
    return tracks


def _figure_folder(path, overwrite: bool, inputs):
    if path is None:
        return nullcontext()
    from figures import FigureFolder
    return FigureFolder(path, overwrite, inputs)


def figures_dir_for(result_dir: str | Path) -> Path:
    """Where `--figures` writes PNGs: `<OUT>_figures` next to the result folder, which must hold only
    the CTC files (`maskNNN.tif`, `res_track.txt`)."""
    result_dir = Path(result_dir)
    return result_dir.with_name(f"{result_dir.name}_figures")
