"""Tests of models/: shapes, parameter counts, gradients, determinism, (de)serialisation and `config`, 2D forms,
gradient checkpointing, torch.compile, the channels-last decoder path, docstrings, and MONAI as an oracle (same
weights → same outputs).

All models here are tiny so that the suite runs in seconds on two CPU cores."""
from __future__ import annotations

import inspect
import io
import json
import re

import pytest
import torch
import torch.nn.functional as F

import models
from models import MODEL_NAMES, MODELS, PRESETS, build_model
from models.blocks import (_ChannelsLastInstanceNorm, _is_channels_last, channels_last, constructor_config, conv,
                           up_conv)
from models.swin import WindowAttention, relative_position_index, shift_mask, window_partition, window_reverse
from models.unetr import decoder_scales, skip_layers

TINY = {
    "vit_unet": dict(img_size=(8, 16, 16), patch_size=(4, 8, 8), hidden_size=32, mlp_dim=64, num_heads=2,
                     num_layers=4, feature_size=4),
    "swinunetr": dict(feature_size=6, window_size=4, depths=(2, 2, 2, 2)),
    "unet": dict(features=(4, 8, 16), strides=(1, (1, 2, 2), 2)),
}
TINY_INPUT = {"vit_unet": (8, 16, 16), "swinunetr": (32, 64, 64), "unet": (8, 16, 16)}
TINY_2D = {
    "vit_unet": dict(img_size=(16, 16), patch_size=8, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=4,
                     feature_size=4),
    "swinunetr": dict(feature_size=6, window_size=4),
    "unet": dict(features=(4, 8, 16)),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: with several threads on shared cores, OpenMP synchronisation dominates (3x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(name, **{**TINY[name], **overrides})


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- interface
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_model_runs_on_default_crop_with_two_heads(name):
    model = build_model(name).eval()
    assert model.name == name
    size = (32, 64, 64)
    assert all(s % d == 0 for s, d in zip(size, model.size_divisor))
    with torch.no_grad():
        seg, marker = model(torch.randn(1, 1, *size))
    assert seg.shape == (1, 3, *size) and marker.shape == (1, 1, *size)


def test_odd_anisotropic_sizes():
    vit = tiny("vit_unet").eval()                     # trained grid 2x2x2, run on 5x9x11 patches
    assert vit.size_divisor == (4, 8, 8)
    swin = tiny("swinunetr").eval()
    assert swin.size_divisor == (1, 1, 1)
    unet = tiny("unet").eval()
    assert unet.size_divisor == (1, 1, 1)
    with torch.no_grad():
        for model, size in ((vit, (20, 72, 88)), (swin, (33, 65, 70)), (unet, (9, 17, 30))):
            seg, marker = model(torch.randn(1, 1, *size))
            assert seg.shape == (1, 3, *size) and marker.shape == (1, 1, *size)
            assert torch.isfinite(seg).all() and torch.isfinite(marker).all()


def test_default_unet_takes_any_size():
    """20x72x88 is no multiple of the default U-Net's total stride (8, 16, 16): padded inside, cropped back."""
    model = build_model("unet").eval()
    with torch.no_grad():
        seg, marker = model(torch.randn(1, 1, 20, 72, 88))
    assert seg.shape == (1, 3, 20, 72, 88) and marker.shape == (1, 1, 20, 72, 88)
    assert seg.is_contiguous() and marker.is_contiguous()


def test_unet_padding_is_invisible_on_sizes_that_fit():
    """On a multiple of the strides nothing is padded; on other sizes the output is that of the zero-padded
    input, cropped."""
    model = tiny("unet").eval()
    x = torch.randn(1, 1, 7, 13, 14)
    with torch.no_grad():
        seg, marker = model(x)
        padded = model(F.pad(x, (0, 2, 0, 3, 0, 1)))          # to 8x16x16, a multiple of (2, 4, 4)
    torch.testing.assert_close(seg, padded[0][..., :7, :13, :14])
    torch.testing.assert_close(marker, padded[1][..., :7, :13, :14])


def test_vit_unet_sizes_that_do_not_fit_are_refused():
    model = tiny("vit_unet")
    with pytest.raises(ValueError, match="multiple"):
        model(torch.randn(1, 1, 20, 72, 90))


def test_pad_multiple_of_unet_is_product_of_strides():
    assert tiny("unet").pad_multiple == (2, 4, 4)
    assert build_model("unet").pad_multiple == (8, 16, 16)   # default: z kept at the first down-sampling
    assert build_model("unet").size_divisor == (1, 1, 1)


def test_build_model_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("unet", preset="huge")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_is_json_and_rebuilds_the_same_architecture(name):
    model = tiny(name, use_checkpoint=True)
    config = json.loads(json.dumps(model.config))
    rebuilt = build_model(name, **config)
    assert rebuilt.config == model.config
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == \
           [(k, v.shape) for k, v in model.state_dict().items()]


CONFIGS = [(name, preset, overrides) for name in MODEL_NAMES for preset in (None, *PRESETS[name])
           for overrides in ({}, TINY[name], dict(TINY_2D[name], spatial_dims=2))]


@pytest.mark.parametrize("name,preset,overrides", CONFIGS)
def test_config_round_trip_for_every_model_and_preset(name, preset, overrides):
    """Through JSON (as a checkpoint stores it) and back: the same config, parameters and buffers."""
    with torch.device("meta"):
        model = build_model(name, preset=preset, **overrides)
        rebuilt = build_model(name, **json.loads(json.dumps(model.config)))
    assert rebuilt.config == model.config
    assert rebuilt.size_divisor == model.size_divisor
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == \
           [(k, v.shape) for k, v in model.state_dict().items()]


def missing_from_config(model) -> set:
    """Constructor arguments of the model's class that its config does not record."""
    return set(inspect.signature(type(model).__init__).parameters) - {"self"} - set(model.config)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_records_every_constructor_argument(name):
    model = tiny(name)
    assert not missing_from_config(model)
    assert set(model.config) == set(inspect.signature(MODELS[name].__init__).parameters) - {"self"}


def test_a_constructor_argument_left_out_of_config_is_caught():
    """A subclass that adds an argument but keeps its parent's config fails the check above; one that derives
    its config from its own constructor (constructor_config) passes, with the argument in it."""
    class Forgetful(models.UNet):
        def __init__(self, width_factor: int = 2, **kwargs):
            super().__init__(**kwargs)

    class Recording(models.UNet):
        def __init__(self, width_factor: int = 2, features=(4, 8, 16), strides=(1, (1, 2, 2), 2)):
            super().__init__(features=[width_factor * f for f in features], strides=strides)
            self.config = constructor_config(Recording.__init__, locals())

    assert missing_from_config(Forgetful(features=(4, 8), strides=(1, 2))) == {"width_factor", "kwargs"}
    recording = Recording(width_factor=3)
    assert not missing_from_config(recording)
    assert recording.config == {"width_factor": 3, "features": [4, 8, 16], "strides": [1, [1, 2, 2], 2]}


def test_constructor_config_follows_the_signature_and_normalised_values():
    def init(self, a, b=(1, 2), *, c=None):
        pass
    assert constructor_config(init, {"self": None, "a": 1, "b": ((1, 2), 3), "c": "x", "other": 0}) == \
        {"a": 1, "b": [[1, 2], 3], "c": "x"}
    with pytest.raises(KeyError):
        constructor_config(init, {"a": 1, "b": 2})        # an argument the constructor did not record


def public_classes():
    for module in (models.blocks, models.vit, models.unetr, models.swin, models.swin_unetr, models.unet):
        for name, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, torch.nn.Module) and cls.__module__ == module.__name__
                    and not name.startswith("_") and "__init__" in vars(cls)):
                yield cls


@pytest.mark.parametrize("cls", list(public_classes()), ids=lambda c: c.__name__)
def test_every_public_constructor_documents_its_arguments(cls):
    """MONAI's manner: an Args: block in the constructor's docstring naming every argument."""
    doc = inspect.getdoc(cls.__init__) or ""
    assert "Args:" in doc, f"{cls.__name__}.__init__ has no Args: block"
    for arg in set(inspect.signature(cls.__init__).parameters) - {"self"}:
        assert re.search(rf"^\s+{arg}:", doc, re.M), f"{cls.__name__}.__init__ does not document {arg}"


def test_public_classes_are_found():
    found = {c.__name__ for c in public_classes()}
    assert {"UNETR", "SwinUNETR", "UNet", "ViT", "ResBlock", "WindowAttention", "PatchMerging"} <= found


def test_models_docstring_states_the_parameter_counts_build_model_gives():
    """models/__init__'s docstring lists each default and paper model's size; they must be what is built."""
    lines = models.__doc__.splitlines()
    start = {preset: next(i for i, line in enumerate(lines) if line.strip().startswith(head))
             for preset, head in ((None, "build_model(name), for"), ("paper", 'build_model(name, preset="paper")'))}
    for preset in (None, "paper"):
        block = lines[start[preset] + 1:]
        for name in MODEL_NAMES:
            line = next(i for i, text in enumerate(block) if text.split()[:1] == [name])
            text = " ".join(block[line:line + 2]) if not re.search(r"M( parameters)?$", block[line]) else block[line]
            stated = float(re.search(r"([\d.]+) M", text).group(1))
            with torch.device("meta"):
                built = n_params(build_model(name, preset=preset)) / 1e6
            assert stated == round(built, 2), (name, preset, stated, built)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_round_trip_reproduces_outputs(name):
    model = tiny(name, seed=1).eval()
    buffer = io.BytesIO()
    torch.save({"name": model.name, "config": model.config, "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    torch.manual_seed(2)                              # different initial weights, then overwritten
    loaded = build_model(saved["name"], **saved["config"]).eval()
    loaded.load_state_dict(saved["model"])
    x = torch.randn(1, 1, *TINY_INPUT[name])
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_mode_is_deterministic(name):
    model = tiny(name, **({"dropout_rate": 0.3} if name == "vit_unet" else
                          {"drop_rate": 0.3, "dropout_path_rate": 0.3} if name == "swinunetr" else {})).eval()
    x = torch.randn(1, 1, *TINY_INPUT[name])
    with torch.no_grad():
        first, second = model(x), model(x)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_backward_reaches_every_parameter(name, batch):
    model = tiny(name).train()
    seg, marker = model(torch.randn(batch, 1, *TINY_INPUT[name]))
    (seg.square().mean() + marker.square().mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_marker_loss_alone_trains_the_shared_network(name):
    model = tiny(name).train()
    _, marker = model(torch.randn(1, 1, *TINY_INPUT[name]))
    marker.square().mean().backward()
    for pname, p in model.named_parameters():
        assert (p.grad is None) == pname.startswith("heads.seg."), pname


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradient_checkpointing_changes_nothing(name):
    plain = tiny(name).train()
    checkpointed = tiny(name, use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, *TINY_INPUT[name])
    outputs = []
    for model in (plain, checkpointed):
        seg, marker = model(x)
        (seg.square().mean() + marker.square().mean()).backward()
        outputs.append((seg, marker))
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b)
    for (pname, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=pname)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("spatial_dims,kernel,bias", [(3, 3, False), (3, 1, True), (2, 3, True)])
def test_onednn_convolution_matches_pytorch_forward_and_backward(spatial_dims, kernel, bias, layout):
    """Batch-1 float32 CPU convolutions of maps PyTorch would send to im2col take our oneDNN route (and a 1x1
    conv of a channels-last map a matrix product): values and gradients must match a float64 PyTorch
    convolution to float32 accuracy (oneDNN's, which PyTorch itself uses for batches > 1), in the input's
    layout."""
    torch.manual_seed(0)
    layer = conv(spatial_dims, 5, 7, kernel, bias=bias)
    x = torch.randn(1, 5, *(6, 12, 13)[-spatial_dims:])
    x = (channels_last(x) if layout == "channels_last" else x).requires_grad_()
    out = layer(x)
    pointwise = layout == "channels_last" and kernel == 1
    assert out.grad_fn.name().startswith("PermuteBackward" if pointwise else "_OneDnnConv")   # movedim
    assert _is_channels_last(out) == (layout == "channels_last")
    params = [x, layer.weight] + ([layer.bias] if bias else [])
    params64 = [p.detach().double().contiguous().requires_grad_() for p in params]
    reference = (F.conv3d if spatial_dims == 3 else F.conv2d)
    expected = reference(params64[0], params64[1], params64[2] if bias else None, padding=kernel // 2)
    grad = torch.randn_like(out)
    got = (out, *torch.autograd.grad(out, params, grad))
    want = (expected, *torch.autograd.grad(expected, params64, grad.double()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=0, atol=2e-5 * w.abs().max().item())


def test_large_channels_last_maps_keep_pytorchs_onednn_path():
    """Above N*C*D*H = 20480 PyTorch's own channels-last oneDNN convolution is the faster one: not rerouted."""
    layer = conv(3, 16, 16, 3)
    big = channels_last(torch.randn(1, 16, 32, 64, 64, requires_grad=True))
    assert layer(big).grad_fn.name() == "ConvolutionBackward0"
    small = channels_last(torch.randn(1, 16, 16, 32, 32, requires_grad=True))
    assert layer(small).grad_fn.name().startswith("_OneDnnConv")


@pytest.mark.parametrize("batch", [1, 2])
def test_transposed_convolution_keeps_the_channels_last_layout(batch):
    up = up_conv(3, 8, 4, (1, 2, 2))
    x = channels_last(torch.randn(batch, 8, 3, 4, 5))
    out = up(x)
    assert out.shape == (batch, 4, 3, 8, 10) and _is_channels_last(out)
    torch.testing.assert_close(out, up(x.contiguous()))


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_channels_last_instance_norm_matches_the_group_norm_kernel(offset):
    """Forward and backward of the channels-last instance norm against GroupNorm with one channel per group:
    in float64 to rounding, and in float32 as accurate as the GroupNorm kernel (offset: maps whose mean is far
    from 0 relative to their spread)."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 9, 11, dtype=torch.float64) + offset * torch.randn(1, 6, 1, 1, 1, dtype=torch.float64)
    grad = torch.randn_like(x)
    x64 = x.clone().requires_grad_()
    want = torch.group_norm(x64, 6, eps=1e-5)
    want_grad, = torch.autograd.grad(want, x64, grad)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-6)):
        xc = channels_last(x.to(dtype)).requires_grad_()
        got = _ChannelsLastInstanceNorm.apply(xc, 1e-5)
        got_grad, = torch.autograd.grad(got, xc, channels_last(grad.to(dtype)))
        assert _is_channels_last(got) and _is_channels_last(got_grad)
        for g, w in ((got, want), (got_grad, want_grad)):
            assert (g.double() - w).abs().max() <= tol * w.abs().max(), dtype
        with torch.no_grad():                                  # the inference path: same values
            torch.testing.assert_close(models.blocks.InstanceNorm()(xc), got.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("batch", [1, 2])
def test_unetr_decoder_runs_channels_last_and_returns_channels_first(batch):
    model = tiny("vit_unet", feature_size=8)
    seen = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) and not name.startswith("vit."):
            module.register_forward_hook(lambda m, i, o, name=name: seen.append((name, _is_channels_last(i[0]),
                                                                                  _is_channels_last(o))))
    seg, marker = model(torch.randn(batch, 1, 16, 32, 32))
    assert len(seen) > 20 and all(i and o for _, i, o in seen), [s for s in seen if not (s[1] and s[2])]
    assert seg.is_contiguous() and marker.is_contiguous()


@pytest.mark.parametrize("batch", [1, 2])
def test_unetr_in_float32_channels_last_matches_float64(batch):
    """The float32 forward and gradients (channels-last decoder, oneDNN) against the same weights in float64:
    the forward to float32 accuracy, the gradients as a whole to 1e-4
    (relative L2 distance over all parameters; single small gradients such as encoder1.conv3's are ill-conditioned
    sums, good to ~1e-3 only, in the channels-first float32 network as well)."""
    torch.manual_seed(0)
    model = build_model("vit_unet", img_size=(16, 32, 32), patch_size=(8, 16, 16), hidden_size=48, mlp_dim=96,
                        num_heads=4, num_layers=4, feature_size=8)
    x = torch.randn(batch, 1, 16, 32, 32)
    results = []
    for dtype in (torch.float32, torch.float64):
        model.to(dtype).zero_grad()
        seg, marker = model(x.to(dtype))
        (seg.square().mean() + marker.square().mean()).backward()
        results.append(([seg.detach(), marker.detach()], torch.cat([p.grad.flatten() for p in model.parameters()])))
    (out32, grads32), (out64, grads64) = results
    for a, b in zip(out32, out64):
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max()
    assert (grads32.double() - grads64).norm() <= 1e-4 * grads64.norm()


# --------------------------------------------------------------------------- 2D and compile
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_2d_forms(name):
    torch.manual_seed(0)
    model = build_model(name, spatial_dims=2, **TINY_2D[name])
    assert len(model.size_divisor) == 2
    size = (40, 48) if name == "vit_unet" else (37, 50)       # unet and swinunetr: any size
    seg, marker = model(torch.randn(2, 1, *size))
    assert seg.shape == (2, 3, *size) and marker.shape == (2, 1, *size)
    (seg.mean() + marker.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["vit_unet", "swinunetr"])
def test_torch_compile_traces_without_graph_breaks(name):
    model = tiny(name).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)   # fullgraph: a graph break raises
    x = torch.randn(1, 1, *TINY_INPUT[name])
    with torch.no_grad():
        for a, b in zip(compiled(x), model(x)):
            torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- paper configurations
@pytest.mark.parametrize("name,expected", [("vit_unet", 92.8e6), ("swinunetr", 62.2e6)])
def test_paper_presets_have_the_papers_parameter_counts(name, expected):
    with torch.device("meta"):
        model = build_model(name, preset="paper")
    assert abs(n_params(model) - expected) / expected < 0.01, n_params(model)


def test_paper_unetr_grid_and_decoder():
    with torch.device("meta"):
        model = build_model("vit_unet", preset="paper")
    assert model.vit.patch_embedding.grid_size == (6, 6, 6)
    assert model.skip_layers == (2, 5, 8)                  # z3, z6, z9 (0-based), z12 is the bottleneck


def test_skip_layers_are_blocks_l4_l2_3l4():
    """1-based: blocks floor(L/4), floor(L/2), floor(3L/4) (at least block 1) feed the 1/2, 1/4, 1/8 skips."""
    assert skip_layers(12) == (2, 5, 8)                    # z3, z6, z9
    assert skip_layers(6) == (0, 2, 3)                     # z1, z3, z4 (train_vit2.py's 6 layers)
    assert skip_layers(8) == (1, 3, 5)                     # z2, z4, z6
    assert skip_layers(4) == (0, 1, 2)
    assert skip_layers(2) == (0, 0, 0)
    assert tiny("vit_unet", num_layers=6).skip_layers == (0, 2, 3)


def test_decoder_scales_spread_the_patch_over_four_stages():
    assert decoder_scales((16, 16, 16)) == [(2, 2, 2)] * 4
    assert decoder_scales((4, 16, 16)) == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert decoder_scales((32,)) == [(2,), (2,), (2,), (4,)]
    with pytest.raises(ValueError, match="power of two"):
        decoder_scales((12, 16, 16))


def test_position_embedding_is_interpolated_only_for_other_grids():
    model = tiny("vit_unet")
    embedding = model.vit.patch_embedding
    assert embedding.position_embedding((2, 2, 2)) is embedding.position_embeddings
    assert embedding.position_embedding((5, 9, 11)).shape == (1, 5 * 9 * 11, 32)


# --------------------------------------------------------------------------- Swin windows
def test_window_partition_round_trip_and_layout():
    x = torch.arange(2 * 4 * 6 * 3, dtype=torch.float).view(2, 4, 6, 3, 1).expand(-1, -1, -1, -1, 5)
    windows = window_partition(x.contiguous(), (2, 3, 3))
    assert windows.shape == (2 * 2 * 2 * 1, 18, 5)
    assert torch.equal(windows[1, :, 0], x[0, :2, 3:6, :3, 0].flatten())   # window (0, 1, 0) of sample 0
    assert torch.equal(window_reverse(windows, (2, 3, 3), 2, (4, 6, 3)), x)


def test_relative_position_index_of_shrunk_windows_is_geometric():
    table = (7, 7, 7)
    index = relative_position_index((2, 4, 3), table)
    coords = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(4), torch.arange(3), indexing="ij")).flatten(1)
    i, j = 5, 17
    d = (coords[:, i] - coords[:, j] + 6).tolist()
    assert index[i, j] == (d[0] * 13 + d[1]) * 13 + d[2]
    assert relative_position_index(table, table).max() == 13 ** 3 - 1


def test_shift_mask_separates_tokens_brought_together_by_the_roll():
    mask = shift_mask((8, 8), (4, 4), (2, 2), "cpu")       # 2x2 windows of 16 tokens
    assert mask.shape == (4, 16, 16)
    assert mask[0].abs().sum() == 0                        # the first window holds no wrapped-around token
    assert (mask[3] == -100).any() and (mask.diagonal(dim1=1, dim2=2) == 0).all()
    assert torch.equal(mask, mask.transpose(1, 2))


@pytest.mark.parametrize("shifted", [False, True])
def test_fused_and_written_out_window_attention_agree(shifted):
    """Inference (and CUDA training) use F.scaled_dot_product_attention, CPU training the written-out form:
    same result for a batch of 2 maps of 4 windows, with and without the shift mask."""
    torch.manual_seed(0)
    attention = WindowAttention(8, 2, (2, 2, 2), qkv_bias=True, attn_drop=0.0, proj_drop=0.0)
    x = torch.randn(2 * 4, 8, 8)                            # [B * nW, N, C]
    mask = shift_mask((4, 4, 2), (2, 2, 2), (1, 1, 0), "cpu") if shifted else None
    assert mask is None or (mask != 0).any()
    with torch.no_grad():
        fused = attention(x, (2, 2, 2), mask)
    written_out = attention(x, (2, 2, 2), mask)              # learnt bias needs a gradient: CPU written-out path
    torch.testing.assert_close(written_out, fused)
    written_out.sum().backward()
    assert attention.relative_position_bias_table.grad.abs().sum() > 0


# --------------------------------------------------------------------------- MONAI as the oracle
def _monai_key(key: str) -> str:
    """A MONAI UNETR / SwinUNETR state-dict key → ours (MONAI wraps convs in `.conv`, blocks in `.layer`)."""
    key = key.replace("out.conv.conv.", "heads.seg.").replace("swinViT.", "swin_vit.")
    key = key.replace("patch_embed.proj.", "patch_embed.").replace(".layer.", ".")
    key = re.sub(r"layers(\d)\.0\.", lambda m: f"layers.{int(m.group(1)) - 1}.", key)
    return re.sub(r"\.conv\.(weight|bias)$", r".\1", key)


def _load_monai_weights(ours, monai_model) -> dict:
    """Copy MONAI's weights into ours; returns {our parameter name: MONAI parameter}."""
    names = {k: _monai_key(k) for k in monai_model.state_dict()
             if "norm_cross_attn" not in k and "relative_position_index" not in k}
    state = monai_model.state_dict()
    missing, unexpected = ours.load_state_dict({ours_k: state[k] for k, ours_k in names.items()}, strict=False)
    assert unexpected == [] and missing == ["heads.marker.weight", "heads.marker.bias"]
    monai_params = dict(monai_model.named_parameters())
    return {ours_k: monai_params[k] for k, ours_k in names.items() if k in monai_params}


def _assert_same_gradients(ours, pairs: dict) -> None:
    for name, p in ours.named_parameters():
        if name in pairs:
            torch.testing.assert_close(p.grad, pairs[name].grad, msg=name)


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_swinunetr_equals_monai_with_the_same_weights(spatial_dims):
    """Outputs (inference: fused attention) and gradients (training: written-out attention). In float64, where
    both use the same convolution kernels: float32 gradients of these randomly initialised networks are only
    good to ~1e-3 (instance norms of near-constant maps), which would hide nothing and flag kernel choices."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    reference = nets.SwinUNETR(in_channels=1, out_channels=3, feature_size=12, window_size=2,
                               spatial_dims=spatial_dims)
    ours = build_model("swinunetr", feature_size=12, window_size=2, spatial_dims=spatial_dims)
    # same architecture: MONAI's parameters plus our marker head (a 1x1 conv with bias)
    assert n_params(ours) == n_params(reference) + 12 + 1
    pairs = _load_monai_weights(ours, reference)
    ours, reference = ours.double(), reference.double()
    x = torch.randn(1, 1, *(64, 32, 32)[:spatial_dims], dtype=torch.float64)   # shifted windows at 3 stages
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x)[0], reference.eval()(x))
    ours_out, reference_out = ours.train()(x)[0], reference.train()(x)
    torch.testing.assert_close(ours_out, reference_out)
    ours_out.square().mean().backward()
    reference_out.square().mean().backward()
    _assert_same_gradients(ours, pairs)


def test_unetr_equals_monai_with_the_same_weights():
    nets = pytest.importorskip("monai.networks.nets")
    pytest.importorskip("einops")                            # MONAI's ViT needs it
    torch.manual_seed(0)
    size, hidden, f = (32, 32, 32), 48, 8
    reference = nets.UNETR(in_channels=1, out_channels=3, img_size=size, feature_size=f, hidden_size=hidden,
                           mlp_dim=96, num_heads=4)
    ours = build_model("vit_unet", img_size=size, patch_size=16, feature_size=f, hidden_size=hidden, mlp_dim=96,
                       num_heads=4, num_layers=12)
    # MONAI's blocks carry an unused LayerNorm (norm_cross_attn); we carry the marker head
    assert n_params(ours) == n_params(reference) - 12 * 2 * hidden + f + 1
    pairs = _load_monai_weights(ours, reference)
    ours, reference = ours.double(), reference.double()       # see the Swin-UNETR test
    x = torch.randn(1, 1, *size, dtype=torch.float64)
    last, hidden_states = reference.vit(x)
    our_last, our_hidden_states, _ = ours.vit(x)
    torch.testing.assert_close(our_last, last)
    for a, b in zip(our_hidden_states, hidden_states):
        torch.testing.assert_close(a, b)
    # MONAI taps blocks 4, 7, 10; the paper (and we) z3, z6, z9: run MONAI's modules with the paper's taps
    feat = reference.proj_feat
    enc2, enc3, enc4 = (encoder(feat(hidden_states[i])) for encoder, i in
                        zip((reference.encoder2, reference.encoder3, reference.encoder4), (2, 5, 8)))
    out = reference.decoder5(feat(last), enc4)
    out = reference.decoder2(reference.decoder3(reference.decoder4(out, enc3), enc2), reference.encoder1(x))
    reference_out, ours_out = reference.out(out), ours(x)[0]
    torch.testing.assert_close(ours_out, reference_out)
    ours_out.square().mean().backward()
    reference_out.square().mean().backward()
    _assert_same_gradients(ours, pairs)
