"""Train swinunetr (Swin-UNETR: shifted-window transformer encoder, residual U-Net decoder). Edit the values below.

    python train_swin.py [--data ROOT] [--epochs N] ...     (same as: python main.py --model swinunetr ...)

The defaults fit the default run: the synthetic data set, 2 CPU cores. For the real data on a GPU, see the README.
"""
import sys

from dataset3D import AugmentConfig
from losses import LossWeights
from training import TrainConfig, train_from_cli

CONFIG = TrainConfig(
    model="swinunetr",
    model_args=dict(
        feature_size=12,          # embedding width of the first stage (doubles per stage); paper: 48
        depths=(2, 2, 2, 2),      # Swin blocks per stage
        num_heads=(3, 6, 12, 24), # attention heads per stage
        window_size=4,            # attention window in tokens per axis; paper: 7
    ),
    crop_size=(32, 64, 64),       # training crop (Z, Y, X); any size works (padded inside to a multiple of 32)
    batch_size=2,                 # crops per step
    epochs=16,                    # epochs of steps_per_epoch steps
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
