"""The networks: UNETR (`vit_unet`), Swin-UNETR (`swinunetr`) and an nnU-Net-style U-Net (`unet`).

Every model maps [B, in_channels, *S] (S = (D, H, W), or (H, W) with spatial_dims=2) to
(seg_logits [B, 3, *S], marker_logits [B, 1, *S]) — classes background / boundary / interior — and carries
  model.name          its name here,
  model.config        JSON-serialisable constructor arguments: build_model(model.name, **model.config)
                      rebuilds the same architecture (checkpoints store name + config),
  model.size_divisor  per spatial axis, the number every input side must be a multiple of: patch_size for
                      vit_unet; 1 for unet and swinunetr, which zero-pad inside to a multiple of
                      model.pad_multiple (the cheapest input sizes) and crop the outputs back.

`build_model(name)` gives a small configuration that trains on a CPU in minutes (the class defaults);
`build_model(name, preset="paper")` the configuration of the paper; keyword overrides apply on top of either
(the train scripts override some defaults: see their CONFIG). What build_model builds (tests/test_models.py
checks these counts):

  build_model(name), for 32x64x64 crops:
    vit_unet   img_size (32, 64, 64), patch_size (8, 16, 16), hidden 192, MLP 768, 3 heads, 12 layers,
               feature_size 16 (a ViT-Tiny encoder, the paper's decoder): 8.29 M parameters
    swinunetr  feature_size 12, patch 2, window 4, depths (2, 2, 2, 2), heads (3, 6, 12, 24): 3.91 M
    unet       features (8, 16, 32, 64, 128), strides 1, (1, 2, 2), 2, 2, 2: 1.41 M
  build_model(name, preset="paper"):
    vit_unet   96^3, patch 16, ViT-B (hidden 768, MLP 3072, 12 heads, 12 layers): 92.78 M
    swinunetr  feature size 48, window 7: 62.19 M
    unet       nnU-Net's 3d_fullres topology (features 32 .. 320, six levels): 31.17 M

Speed against MONAI's UNETR and SwinUNETR: bench/models.py.
"""
from __future__ import annotations

from torch import nn

from .swin_unetr import SwinUNETR
from .unet import UNet
from .unetr import UNETR

MODELS = {"vit_unet": UNETR, "swinunetr": SwinUNETR, "unet": UNet}
MODEL_NAMES = tuple(MODELS)

PRESETS = {
    # Hatamizadeh et al. 2021: 96^3 crops, 16^3 patches, ViT-B (768 hidden, 3072 MLP, 12 heads, 12 layers)
    "vit_unet": {"paper": dict(img_size=96, patch_size=16, hidden_size=768, mlp_dim=3072, num_heads=12,
                               num_layers=12, feature_size=16)},
    # Hatamizadeh et al. 2022: feature size 48, depths (2, 2, 2, 2), heads (3, 6, 12, 24), window 7
    "swinunetr": {"paper": dict(feature_size=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=7)},
    # nnU-Net's 3d_fullres topology: 32 base features doubling to a cap of 320, six levels
    "unet": {"paper": dict(features=(32, 64, 128, 256, 320, 320))},
}


def build_model(name: str, preset: str | None = None, **overrides) -> nn.Module:
    """Build model `name` from its CPU-sized defaults, or from `preset` ("paper"), with `overrides` on top."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if preset is not None and preset not in PRESETS[name]:
        raise ValueError(f"unknown preset {preset!r} for {name}; choose one of {', '.join(PRESETS[name])}")
    kwargs = {**PRESETS[name][preset], **overrides} if preset else overrides
    return MODELS[name](**kwargs)
