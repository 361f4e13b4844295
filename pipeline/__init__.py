"""camseg: weakly supervised semantic segmentation from image-level labels."""
