"""Tests of models/: shapes, paper parameter counts, gradients, determinism, (de)serialisation, 2D forms,
gradient checkpointing, torch.compile, and MONAI as an oracle (same weights → same outputs).

All models here are tiny so that the suite runs in seconds on two CPU cores."""
from __future__ import annotations

import io
import json
import re

import pytest
import torch
import torch.nn.functional as F

from models import MODEL_NAMES, build_model
from models.blocks import conv
from models.swin import WindowAttention, relative_position_index, shift_mask, window_partition, window_reverse
from models.unetr import decoder_scales

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
    with torch.no_grad():
        for model, size in ((vit, (20, 72, 88)), (swin, (33, 65, 70))):
            seg, marker = model(torch.randn(1, 1, *size))
            assert seg.shape == (1, 3, *size) and marker.shape == (1, 1, *size)
            assert torch.isfinite(seg).all() and torch.isfinite(marker).all()


@pytest.mark.parametrize("name,size", [("vit_unet", (20, 72, 90)), ("unet", (8, 16, 18))])
def test_sizes_that_do_not_fit_are_refused(name, size):
    model = tiny(name)
    with pytest.raises(ValueError, match="multiple"):
        model(torch.randn(1, 1, *size))


def test_size_divisor_of_unet_is_product_of_strides():
    assert tiny("unet").size_divisor == (2, 4, 4)
    assert build_model("unet").size_divisor == (8, 16, 16)   # default: z kept at the first down-sampling


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


@pytest.mark.parametrize("spatial_dims,kernel,bias", [(3, 3, False), (3, 1, True), (2, 3, True)])
def test_onednn_convolution_matches_pytorch_forward_and_backward(spatial_dims, kernel, bias):
    """Batch-1 float32 CPU convolutions take our oneDNN route: values and gradients must match a float64
    PyTorch convolution to float32 accuracy (oneDNN's, which PyTorch itself uses for batches > 1)."""
    torch.manual_seed(0)
    layer = conv(spatial_dims, 5, 7, kernel, bias=bias)
    x = torch.randn(1, 5, *(6, 12, 13)[-spatial_dims:], requires_grad=True)
    out = layer(x)
    assert out.grad_fn.name().startswith("_OneDnnConv")
    params = [x, layer.weight] + ([layer.bias] if bias else [])
    params64 = [p.detach().double().requires_grad_() for p in params]
    reference = (F.conv3d if spatial_dims == 3 else F.conv2d)
    expected = reference(params64[0], params64[1], params64[2] if bias else None, padding=kernel // 2)
    grad = torch.randn_like(out)
    got = (out, *torch.autograd.grad(out, params, grad))
    want = (expected, *torch.autograd.grad(expected, params64, grad.double()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=0, atol=2e-5 * w.abs().max().item())


# --------------------------------------------------------------------------- 2D and compile
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_2d_forms(name):
    torch.manual_seed(0)
    model = build_model(name, spatial_dims=2, **TINY_2D[name])
    assert len(model.size_divisor) == 2
    size = (40, 48) if name != "swinunetr" else (37, 50)
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
