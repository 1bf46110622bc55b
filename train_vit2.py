"""Train vit_unet (UNETR: a ViT encoder with skips into a U-Net decoder). Edit the values below.

    python train_vit2.py [--data ROOT] [--epochs N] ...     (same as: python main.py --model vit_unet ...)

Only what differs for this model is set here; every other value (crop, batch, learning rate, loss
weights, augmentation, ...) is TrainConfig's default in training.py, shared by the three models, and
can be set here too. The crop, the window and the ViT patch come from the data plan (plan.py) unless set
here, e.g. patch_size=(8, 16, 16) in model_args. For the real Fluo-N3DH-SIM+ on a GPU, see the README.
"""
import sys

from training import TrainConfig

CONFIG = TrainConfig(
    model="vit_unet",
    model_args=dict(
        hidden_size=192,          # transformer width
        mlp_dim=768,              # transformer MLP width
        num_layers=6,             # transformer blocks: 1, 3, 4 feed the skips, block 6 the bottleneck (models.unetr.skip_layers)
        num_heads=6,              # attention heads
        feature_size=16,          # channels of the decoder's first level
    ),
    epochs=32,                    # epochs of steps_per_epoch steps (about 13 min on 2 CPU cores: README)
)

if __name__ == "__main__":
    import main
    sys.exit(main.run_script(CONFIG))
