"""Explaining a classifier: where each method and layer finds the evidence for each class.

    from pipeline.explain import explain, overlay_figure, preprocess
    result = explain(model, preprocess([photo], 224), top_k=3)   # maps, fused maps, classes, scores
    overlay_figure(photo, result, index=0, target=0)             # a matplotlib Figure

`python -m pipeline explain` (`pipeline.explain.command`) writes grids, raw maps, a summary and
an HTML page for folders of images.
"""
from pipeline.explain.anatomy import Anatomy, inspect_model
from pipeline.explain.figures import heat_overlay, overlay_figure
from pipeline.explain.maps import Explanation, explain, preprocess
from pipeline.explain.ranking import faithfulness_scores

__all__ = ["Anatomy", "Explanation", "explain", "faithfulness_scores", "heat_overlay", "inspect_model",
           "overlay_figure", "preprocess"]
