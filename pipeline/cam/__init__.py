"""The CAM engine: CAM, Grad-CAM and Grad-CAM++ for many layers and classes in one backward."""
from pipeline.cam.augment import augmented_cams
from pipeline.cam.engine import METHODS, compute_cams, fuse_layers, normalise_max
from pipeline.cam.head import fit_cam_heads, fit_linear_head

__all__ = ["METHODS", "augmented_cams", "compute_cams", "fit_cam_heads", "fit_linear_head", "fuse_layers",
           "normalise_max"]
