"""Train vit_unet (UNETR: a ViT encoder with skips into a U-Net decoder). Edit the values below.

    python train_vit2.py [--data ROOT] [--epochs N] ...     (same as: python main.py --model vit_unet ...)

The defaults fit the default run: the synthetic data set, 2 CPU cores, about 10 minutes.
For the real Fluo-N3DH-SIM+ on a GPU, see the README (larger crop, model and batch, more epochs).
"""
import sys

from dataset3D import AugmentConfig
from losses import LossWeights
from training import TrainConfig, train_from_cli

CONFIG = TrainConfig(
    model="vit_unet",
    model_args=dict(
        patch_size=(8, 16, 16),   # ViT patch (Z, Y, X): z is coarser in the data, so fewer z voxels per patch
        hidden_size=192,          # transformer width
        mlp_dim=768,              # transformer MLP width
        num_layers=6,             # transformer blocks (skips taken from blocks 2, 3, 5, 6... evenly spaced)
        num_heads=6,              # attention heads
        feature_size=16,          # channels of the decoder's first level
    ),
    crop_size=(32, 64, 64),       # training crop (Z, Y, X), a multiple of patch_size
    batch_size=2,                 # crops per step
    epochs=18,                    # epochs of steps_per_epoch steps
    steps_per_epoch=50,           # steps per epoch
    lr=1e-3,                      # peak AdamW learning rate
    weight_decay=1e-4,            # AdamW weight decay
    warmup_epochs=1.0,            # linear warm-up, then cosine decay
    grad_clip=1.0,                # gradient norm clip
    loss=LossWeights(seg_ce=1.0, seg_dice=1.0, marker_bce=1.0, marker_dice=2.0, boundary_weight=2.0),
    augment=AugmentConfig(scale_prob=0.2, scale_range=0.15, gamma_range=0.3, noise_std=0.05),
    val_every=5,                  # validate every this many epochs
)


def main(args) -> int:
    return train_from_cli(CONFIG, args)


if __name__ == "__main__":
    import main as cli
    sys.exit(cli.main(["train", "--model", CONFIG.model, *sys.argv[1:]]))
