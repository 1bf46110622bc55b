"""napari plugin of nuclei3d: open CTC folders (images, masks, branching tracks), save labels as a tracked
CTC result, run a checkpoint from a dock widget, score a result against ground truth.

Registered through the npe2 manifest `napari.yaml` (entry point `napari.manifest` in pyproject.toml:
`pip install -r requirements-napari.txt` installs napari and this plugin). Importing this package does
not import napari: the reader and writer work on plain layer-data tuples.
"""
MANIFEST = "napari.yaml"
