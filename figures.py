"""PNG figures a person looks at: per-frame projections with track labels, the lineage tree, and
the training curves and prediction panel of a training run.

matplotlib with the Agg canvas (no display, no pyplot state); every PNG is written to a temporary
file and renamed, and `FigureFolder` makes a whole folder of them appear only when complete.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dataset.fileio import MARK, OutputFolder, atomic_path, check_output
from errors import UserError


def label_colors(labels: np.ndarray) -> np.ndarray:
    """A bright RGB colour per label (golden-ratio hues: neighbouring labels differ), shape labels.shape + (3,)."""
    labels = np.asarray(labels, dtype=np.float64)
    hsv = np.stack([(labels * 0.618034) % 1.0, np.full_like(labels, 0.85), np.ones_like(labels)], axis=-1)
    return hsv_to_rgb(hsv)


def outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels of a 2D label image that belong to an object and touch a different label (4-neighbours)."""
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(labels.shape, dtype=bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        edge |= shifted != centre
    return edge & (labels > 0)


def _save(fig: Figure, path: str | Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _normalise(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (1.0, 99.8))
    return np.clip((image.astype(np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def save_projection(path: str | Path, image: np.ndarray | None, labels: np.ndarray, title: str | None = None) -> None:
    """Maximum projection over z of `image` (grey) with the outline of every instance of `labels`
    (track labels, same shape) and its label number at its centroid. image=None: the masks alone."""
    labels = np.asarray(labels)
    flat = labels.max(axis=0) if labels.ndim == 3 else labels
    if image is None:
        grey = (flat > 0) * 0.3
    else:
        if image.shape != labels.shape:
            raise UserError(f"{path}: image shape {image.shape} differs from labels shape {labels.shape}")
        grey = _normalise(image.max(axis=0) if image.ndim == 3 else image)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    edges = outlines(flat)
    rgb[edges] = label_colors(flat[edges])

    h, w = flat.shape
    fig = Figure(figsize=(7.0, 7.0 * h / w + 0.4), dpi=110)
    ax = fig.add_axes((0, 0, 1, 7.0 * h / w / (7.0 * h / w + 0.4)))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    fg = np.flatnonzero(flat)
    values = flat.ravel()[fg]
    present = np.zeros(0, dtype=np.int64)
    if values.size:
        count = np.bincount(values)
        present = np.flatnonzero(count)
        ys, xs = np.unravel_index(fg, flat.shape)
        cy = np.bincount(values, weights=ys)[present] / count[present]
        cx = np.bincount(values, weights=xs)[present] / count[present]
        stroke = [patheffects.withStroke(linewidth=2, foreground="black")]
        for label, x, y in zip(present.tolist(), cx, cy):
            ax.text(x, y, str(label), color="white", fontsize=7, ha="center", va="center", path_effects=stroke)
    fig.suptitle(f"{title or ''}  ({present.size} objects)".strip(), fontsize=10, y=0.995)
    _save(fig, path)


def _tree_layout(tracks: np.ndarray) -> tuple[dict[int, float], dict[int, list[int]], list[int]]:
    """y position of each track: leaves on consecutive rows, a parent midway between its children;
    trees one after another in order of their root's label. Returns (y, children, roots)."""
    labels = set(tracks[:, 0].tolist())
    children: dict[int, list[int]] = {}
    for l, _, _, p in tracks.tolist():
        if p in labels:
            children.setdefault(p, []).append(l)
    roots = [l for l, _, _, p in tracks.tolist() if p not in labels]
    y: dict[int, float] = {}
    row = 0
    for root in sorted(roots):
        stack = [(root, False)]
        while stack:  # iterative post-order: children placed before their parent
            node, done = stack.pop()
            kids = sorted(children.get(node, []))
            if done or not kids:
                if kids:
                    y[node] = float(np.mean([y[k] for k in kids]))
                else:
                    y[node] = float(row)
                    row += 1
                continue
            stack.append((node, True))
            stack.extend((k, False) for k in reversed(kids))
    return y, children, roots


def save_lineage_tree(path: str | Path, tracks, title: str | None = None) -> None:
    """Lineage tree of track rows (L, B, E, P): time on x, one horizontal line per track, a vertical
    connector from each mother to her daughters (dotted: a track continued after a gap), one colour per tree."""
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    y, children, roots = _tree_layout(tracks)
    rows = max(len(set(y.values())), 1)
    fig = Figure(figsize=(9.0, min(2.0 + 0.16 * rows, 60.0)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    span = {l: (b, e) for l, b, e, _ in tracks.tolist()}
    root_of = {}
    for root in roots:
        stack = [root]
        while stack:
            node = stack.pop()
            root_of[node] = root
            stack.extend(children.get(node, []))
    show_text = len(tracks) <= 300
    for l, (b, e) in span.items():
        colour = label_colors(np.array(root_of[l]))
        ax.plot([b, e], [y[l], y[l]], color=colour, linewidth=1.6, solid_capstyle="butt")
        if b == e:
            ax.plot([b], [y[l]], marker="o", markersize=2.5, color=colour)
        if show_text:
            ax.text(b, y[l] - 0.15, str(l), fontsize=6, color="black", ha="left", va="bottom")
        for child in children.get(l, []):
            cb = span[child][0]
            style = ":" if len(children[l]) == 1 else "-"
            ax.plot([e, e, cb], [y[l], y[child], y[child]], color=colour, linewidth=0.9, linestyle=style)
    if not len(tracks):
        ax.text(0.5, 0.5, "no tracks", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("frame")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_title(title or f"lineage: {len(tracks)} tracks, {sum(len(c) >= 2 for c in children.values())} divisions", fontsize=10)
    ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    _save(fig, path)


def is_figures_folder(folder: Path) -> bool:
    """The content rule of a figures folder written before markers existed: PNG files only."""
    names = [p.name for p in Path(folder).iterdir() if p.name != MARK]
    return bool(names) and all(n.endswith(".png") for n in names)


class FigureFolder(OutputFolder):
    """A folder of figures that appears only when complete (written in a hidden sibling, then renamed);
    with `overwrite` it replaces only a figures folder this project wrote.

        with FigureFolder(out_figures, overwrite=True) as folder:
            save_projection(folder / "projection_000.png", image, labels)

    Args:
        path: the figures folder.
        overwrite: replace an existing figures folder written by this project.
        inputs: paths the folder must not be, hold or lie inside.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, inputs=()):
        super().__init__(path, "figures", overwrite, inputs, is_figures_folder, what="figures folder", marked=False)


def check_free(path: str | Path, overwrite: bool, inputs=()) -> None:
    """Refuse a figures folder that would lose anything (see `dataset.fileio.check_output`)."""
    check_output(path, overwrite, "figures", inputs, is_figures_folder, what="figures folder")


# --------------------------------------------------------------------------- training
def save_training_curves(path, history: list[dict]) -> None:
    """Loss terms per epoch (left) and validation SEG (right) of a training run."""
    epochs = [row["epoch"] for row in history]
    ax_loss, ax_seg = Figure(figsize=(10, 3.6)).subplots(1, 2)
    fig = ax_loss.figure
    for key in ("loss", "seg_ce", "seg_dice", "marker_bce", "marker_dice"):
        if any(key in row for row in history):
            ax_loss.plot(epochs, [row.get(key, np.nan) for row in history], label=key, lw=2 if key == "loss" else 1)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    ax_loss.legend(fontsize=8)
    val = [(row["epoch"], row["val_seg"]) for row in history if "val_seg" in row]
    if val:
        ax_seg.plot(*zip(*val), "o-", color="tab:green")
    ax_seg.set(xlabel="epoch", ylabel="SEG", ylim=(0, 1), title="validation SEG")
    ax_seg.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def save_prediction_panel(path, image: np.ndarray, gt, labels: np.ndarray, title: str = "") -> None:
    """Image, ground truth and prediction side by side, at the middle z slice (3D) or as is (2D)."""
    if isinstance(gt, dict):  # SEG given as slices: show the first annotated one
        z = sorted(gt)[0]
        gt_slice = gt[z]
    else:
        z = gt.shape[0] // 2 if gt.ndim == 3 else None
        gt_slice = gt[z] if z is not None else gt
    pick = (lambda a: a[z]) if z is not None else (lambda a: a)
    axes = Figure(figsize=(11, 4)).subplots(1, 3)
    fig = axes[0].figure
    axes[0].imshow(pick(image), cmap="gray")
    for ax, lab, name in ((axes[1], gt_slice, "ground truth"), (axes[2], pick(labels), "prediction")):
        ax.imshow(pick(image), cmap="gray")
        ax.imshow(np.ma.masked_equal(lab % 20, 0) if lab.any() else np.ma.masked_all(lab.shape), cmap="tab20",
                  alpha=0.5, interpolation="nearest", vmin=0, vmax=19)
        ax.set_title(f"{name} ({len(np.unique(lab)) - 1} objects)")
    axes[0].set_title("image" + (f", z={z}" if z is not None else ""))
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
