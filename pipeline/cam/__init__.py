"""The CAM engine: CAM, Grad-CAM and Grad-CAM++ for many layers and classes in one backward."""
from pipeline.cam.engine import METHODS, compute_cams, fuse_layers, normalise_max

__all__ = ["METHODS", "compute_cams", "fuse_layers", "normalise_max"]
