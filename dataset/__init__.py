"""Data on disk: Cell Tracking Challenge folders (read, write, validate) and the synthetic SIM+-like generator."""
from .ctc import (VOXEL_SIZE_SIM, CTCFormatError, ResultFolder, Sequence, frame_name, list_frames, read_image,
                  read_labels, read_tracks, write_tiff, write_tracks)
from .validate import check_lineage, check_track_folder, labels_present, lineage_problems

__all__ = ["VOXEL_SIZE_SIM", "CTCFormatError", "ResultFolder", "Sequence", "frame_name", "list_frames", "read_image",
           "read_labels", "read_tracks", "write_tiff", "write_tracks", "check_lineage", "check_track_folder",
           "labels_present", "lineage_problems"]
