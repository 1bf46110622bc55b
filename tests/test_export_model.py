"""Model exports checked by independent runtimes: onnxruntime and torch.jit against PyTorch's forward
(1e-4), and the bioimage.io package against bioimageio.core's model test."""
import argparse
import json

import numpy as np
import pytest
import torch

import exports
from errors import UserError
from exports.model import export_copy, export_model, load_exportable, write_onnx, write_torchscript
from models import build_model
from utils import save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

TINY = {  # name: (config, training crop)
    "unet": (dict(features=(4, 8, 16), strides=(1, (1, 2, 2), 2)), [8, 16, 16]),
    "vit_unet": (dict(img_size=(8, 16, 16), patch_size=(4, 8, 8), hidden_size=32, mlp_dim=64, num_heads=2,
                      num_layers=4, feature_size=4), [8, 16, 16]),
    "swinunetr": (dict(feature_size=6, window_size=4, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)), [32, 32, 32]),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name, (config, crop) in TINY.items():
        torch.manual_seed(0)
        model = build_model(name, **config)
        out[name] = folder / f"{name}.pt"
        save_checkpoint(out[name], {"model_name": name, "model_config": model.config, "model": model.state_dict(),
                                    "crop_size": crop, "voxel_size": [0.125, 0.125, 0.2], "post": {}})
    return out


def reference(checkpoint, x):
    """PyTorch's forward of the checkpoint's model as the project runs it (oneDNN convolutions included)."""
    from predict import Predictor
    model = Predictor.from_checkpoint(checkpoint, "cpu").model
    with torch.no_grad():
        return [o.numpy() for o in model(x)]


def max_error(outputs, expected):
    return max(float(np.abs(np.asarray(o) - e).max()) for o, e in zip(outputs, expected))


@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_and_torchscript_match_pytorch(name, checkpoints, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    exportable = load_exportable(checkpoints[name])
    x = exportable.example(batch=2, seed=1)
    expected = reference(checkpoints[name], x)
    session = ort.InferenceSession(str(write_onnx(exportable, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["seg_logits", "marker_logits"]
    assert max_error(session.run(None, {"raw": x.numpy()}), expected) < 1e-4
    traced = torch.jit.load(str(write_torchscript(exportable, tmp_path / "m.pt")))
    with torch.no_grad():
        assert max_error([o.numpy() for o in traced(x[:1])], [e[:1] for e in expected]) < 1e-4
    if exportable.dynamic:  # another size, multiple of size_divisor: the same graph takes it
        y = torch.rand(1, 1, *[w + 2 * d for w, d in zip(exportable.window, exportable.size_divisor)])
        bigger = reference(checkpoints[name], y)
        assert max_error(session.run(None, {"raw": y.numpy()}), bigger) < 1e-4
        with torch.no_grad():
            assert max_error([o.numpy() for o in traced(y)], bigger) < 1e-4
    else:
        shape = session.get_inputs()[0].shape
        assert shape[2:] == list(exportable.window)


def test_export_copy_is_the_same_function(checkpoints):
    from predict import Predictor
    model = Predictor.from_checkpoint(checkpoints["unet"], "cpu").model
    copy = export_copy(model)
    x = torch.rand(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # float32 rounding of re-ordered sums: the 1e-4 (1e-5 failed once at 1.01e-5)
        assert max_error([o.numpy() for o in copy(x)], [o.numpy() for o in model(x)]) < 1e-4
    assert all(type(m).__module__ != "models.blocks" or not isinstance(m, torch.nn.modules.conv._ConvNd) for m in copy.modules())


def test_bioimageio_package_passes_bioimageio_core(checkpoints, tmp_path):
    core = pytest.importorskip("bioimageio.core")
    out = export_model(checkpoints["unet"], "bioimageio", tmp_path / "pkg", authors=["A. Tester"])
    for name in ("rdf.yaml", "model.pt", "model.onnx", "test_input.npy", "test_output_seg_logits.npy",
                 "test_output_marker_logits.npy", "cover.png", "README.md"):
        assert (out / name).is_file(), name
    summary = core.test_model(out / "rdf.yaml")
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    from bioimageio.spec import load_model_description
    rdf = load_model_description(out / "rdf.yaml")
    assert [t.id for t in rdf.outputs] == ["seg_logits", "marker_logits"]
    assert rdf.inputs[0].preprocessing[-1].id in ("scale_range", "ensure_dtype")
    assert rdf.weights.torchscript is not None and rdf.weights.onnx is not None
    # the test tensors reproduce with onnxruntime on our own normalisation
    ort = pytest.importorskip("onnxruntime")
    from dataset3D import normalize
    raw = np.load(out / "test_input.npy")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"raw": normalize(raw[0, 0])[None, None]})
    assert max_error(outputs, [np.load(out / "test_output_seg_logits.npy"), np.load(out / "test_output_marker_logits.npy")]) < 1e-4


def test_command_writes_a_described_folder_and_keeps_foreign_ones(checkpoints, tmp_path, capsys):
    p = argparse.ArgumentParser()
    exports.add_export_model_arguments(p)
    out = tmp_path / "onnx"
    args = p.parse_args(["--checkpoint", str(checkpoints["unet"]), "--format", "onnx", "--out", str(out)])
    assert exports.export_model_command(args) == 0 and str(out) in capsys.readouterr().out
    info = json.loads((out / "export.json").read_text())
    assert info["model_name"] == "unet" and info["input"]["dynamic_spatial"] and info["format"] == "onnx"
    with pytest.raises(UserError, match="already exists"):
        exports.export_model_command(args)
    exports.export_model_command(p.parse_args([*map(str, ["--checkpoint", checkpoints["unet"], "--format", "torchscript",
                                                          "--out", out, "--overwrite"])]))
    assert (out / "model.pt").is_file() and not (out / "model.onnx").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not written by this tool"):
        export_model(checkpoints["unet"], "onnx", foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_bad_inputs_are_one_line(checkpoints, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        export_model(tmp_path / "missing.pt", "onnx", tmp_path / "o")
    with pytest.raises(UserError, match="--format"):
        export_model(checkpoints["unet"], "tflite", tmp_path / "o")
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(UserError, match="needs the onnx package") as err:
        export_model(checkpoints["unet"], "onnx", tmp_path / "o")
    assert "\n" not in str(err.value) and not (tmp_path / "o").exists()
