"""Train swinunetr (Swin-UNETR: a shifted-window transformer encoder with a U-Net decoder). Edit the values below.

    python train_swin.py [--data ROOT] [--epochs N] ...     (same as: python main.py --model swinunetr ...)

Only what differs for this model is set here; every other value is TrainConfig's default in
training.py, shared by the three models. Any crop size works (padded inside to a multiple of 32).
"""
import sys

from training import TrainConfig

CONFIG = TrainConfig(
    model="swinunetr",
    model_args=dict(
        feature_size=12,          # embedding width of the first stage (doubles per stage); paper: 48
        depths=(2, 2, 2, 2),      # Swin blocks per stage
        num_heads=(3, 6, 12, 24), # attention heads per stage
        window_size=4,            # attention window in tokens per axis; paper: 7
    ),
    epochs=16,                    # epochs of steps_per_epoch steps
)

if __name__ == "__main__":
    import main
    sys.exit(main.run_script(CONFIG))
