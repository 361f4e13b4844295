"""Turning seeds into pseudo-masks: background scores, dense CRF, confidence thresholds."""
from pipeline.refine.crf import PRESETS, crf_params, dense_crf

__all__ = ["PRESETS", "crf_params", "dense_crf"]
