"""Display classes (matplotlib is imported only when plotting)."""

from ._cka import CKADisplay

__all__ = ["CKADisplay"]

from ._confusion import ConfusionAsymmetryDisplay
from ._embedding import EmbeddingDisplay
from ._layer_curve import LayerCurveDisplay
from ._segmentation import SegmentationDisplay

__all__ += ["ConfusionAsymmetryDisplay", "EmbeddingDisplay", "LayerCurveDisplay",
            "SegmentationDisplay"]
