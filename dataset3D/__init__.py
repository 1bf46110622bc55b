"""Training data: targets from instance labels, augmentation, the torch Dataset of random crops, and resampling
between the native and the working grid."""
from .augment import AugmentConfig
from .crops import CropDataset, Volume, load_volumes
from .resample import resample_image, resample_labels, resample_probabilities
from .targets import BACKGROUND, BOUNDARY, INTERIOR, marker_core, normalize, three_class

__all__ = ["AugmentConfig", "CropDataset", "Volume", "load_volumes", "BACKGROUND", "BOUNDARY", "INTERIOR",
           "marker_core", "normalize", "three_class", "resample_image", "resample_labels", "resample_probabilities"]
