"""Training data: targets from instance labels, augmentation, and the torch Dataset of random crops."""
from .augment import AugmentConfig
from .crops import CropDataset, Volume, load_volumes
from .targets import BACKGROUND, BOUNDARY, INTERIOR, marker_core, normalize, three_class

__all__ = ["AugmentConfig", "CropDataset", "Volume", "load_volumes", "BACKGROUND", "BOUNDARY", "INTERIOR",
           "marker_core", "normalize", "three_class"]
