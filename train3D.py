"""Train unet (the plain 3D U-Net baseline, nnU-Net style). Edit the values below.

    python train3D.py [--data ROOT] [--epochs N] ...     (same as: python main.py --model unet ...)

Only what differs for this model is set here; every other value is TrainConfig's default in
training.py, shared by the three models. The architecture is models.build_model("unet")'s default
(see models/unet.py); set model_args to change it.
"""
import sys

from training import TrainConfig

CONFIG = TrainConfig(
    model="unet",
    model_args=dict(),            # e.g. features=(16, 32, 64, 128, 256) for a wider network
    epochs=40,                    # epochs of steps_per_epoch steps (about 12 min on 2 CPU cores on the default set: README)
)

if __name__ == "__main__":
    import main
    sys.exit(main.run_script(CONFIG))
