"""The CAM engine: CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM and LayerCAM for many layers,
classes and methods from one forward and one backward."""
from pipeline.cam.augment import augmented_cams
from pipeline.cam.engine import (METHODS, LayerGradients, cams_from, compute_cams, compute_method_cams,
                                 fuse_layers, layer_gradients, normalise_max)
from pipeline.cam.head import fit_cam_heads, fit_linear_head

__all__ = ["METHODS", "LayerGradients", "augmented_cams", "cams_from", "compute_cams", "compute_method_cams",
           "fit_cam_heads", "fit_linear_head", "fuse_layers", "layer_gradients", "normalise_max"]
