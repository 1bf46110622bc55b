"""Dock widgets: run a checkpoint on an image layer (segment + track), and score a result against GT.

Both do their work in a worker thread (napari.qt.threading), so the viewer stays responsive; the
work itself is in `_run.py`. A run that fails shows its one-line message in the widget's status line.
"""
from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton, Table

from ._run import graph_layers, image_voxel_size, score, segment_and_track, table_rows


def add_layers(viewer, layer_data: list[tuple]) -> list:
    """Add (data, metadata, layer type) tuples to `viewer`; returns the layers."""
    return [getattr(viewer, f"add_{kind}")(data, **meta) for data, meta, kind in layer_data]


class PredictWidget(Container):
    """Checkpoint + image layer → Run → Labels and Tracks layers, with a progress bar.

    Args:
        napari_viewer: the viewer the widget is docked in (napari passes it).
    """

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt")
        self.image = ComboBox(label="image layer", choices=self._image_layers)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.run_button = PushButton(text="Run")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        super().__init__(widgets=[self.checkpoint, self.image, self.device, self.run_button, self.progress, self.status])
        self.worker = None
        self.running = False
        self.added: list = []
        self.run_button.changed.connect(self.run)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _=None: self.image.reset_choices())

    def _image_layers(self, _widget=None) -> list[str]:
        from napari.layers import Image
        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]

    def run(self, _=None):
        """Start the worker; returns it (None when nothing to run)."""
        if self.running:
            return None
        from napari.qt.threading import create_worker
        if not self.image.value or not str(self.checkpoint.value) or not self.checkpoint.value.is_file():
            self.status.value = "choose a checkpoint file and an image layer first"
            return None
        layer = self.viewer.layers[self.image.value]
        meta = {"scale": tuple(layer.scale), "metadata": dict(layer.metadata)}
        first = int(round(float(layer.translate[0]))) if layer.ndim > 3 else 0
        path, device, data, name = self.checkpoint.value, self.device.value, layer.data, layer.name

        def job():
            from predict import Predictor
            predictor = Predictor.from_checkpoint(path, device)
            voxel_size = image_voxel_size(meta, len(predictor.window), predictor.voxel_size)
            labels, graph = yield from segment_and_track(predictor, data, first, voxel_size)
            return labels, graph

        self.running = True
        self.status.value = f"running {path.name} on {name} ..."
        self.progress.value = 0
        worker = create_worker(job)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_done(result, name, first))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return worker

    def _on_progress(self, value):
        done, total = value
        self.progress.max = total
        self.progress.value = done

    def _on_done(self, result, name: str, first: int):
        labels, graph = result
        self.added = add_layers(self.viewer, graph_layers(labels, graph, f"{name} predicted", first))
        children = np.bincount(graph.tracks[:, 3], minlength=1)[1:]
        self.status.value = f"{len(graph.tracks)} tracks, {int((children >= 2).sum())} divisions"

    def _on_error(self, err):
        self.status.value = f"error: {err}"

    def _on_finished(self):
        self.running = False


class ScoreWidget(Container):
    """Result folder + GT folder → Score → the CTC measures as a table.

    Args:
        napari_viewer: the viewer the widget is docked in (napari passes it).
    """

    def __init__(self, napari_viewer=None):
        self.viewer = napari_viewer
        self.result = FileEdit(label="result folder", mode="d")
        self.gt = FileEdit(label="GT folder", mode="d")
        self.measures = LineEdit(label="measures", value="SEG,DET,TRA")
        self.score_button = PushButton(text="Score")
        self.status = Label(value="")
        self.table = Table(value={"measure": [], "value": []})
        super().__init__(widgets=[self.result, self.gt, self.measures, self.score_button, self.status, self.table])
        self.worker = None
        self.running = False
        self.scores: dict | None = None
        self.score_button.changed.connect(self.run)

    def run(self, _=None):
        if self.running:
            return None
        from napari.qt.threading import create_worker
        self.running = True
        self.status.value = "scoring ..."
        worker = create_worker(score, str(self.result.value), str(self.gt.value), self.measures.value.strip() or None)
        worker.returned.connect(self._on_done)
        worker.errored.connect(lambda err: setattr(self.status, "value", f"error: {err}"))
        worker.finished.connect(lambda: setattr(self, "running", False))
        self.worker = worker
        worker.start()
        return worker

    def _on_done(self, scores: dict):
        self.scores = scores
        rows = table_rows(scores)
        self.table.value = {"measure": [r[0] for r in rows], "value": [r[1] for r in rows]}
        self.status.value = "  ".join(f"{k} {v}" for k, v in rows if k in ("SEG", "DET", "TRA"))
