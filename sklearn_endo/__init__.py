"""sklearn-endo: scikit-learn estimators for endoscopic and medical image classification.

Features from any layer of a frozen timm encoder (:class:`LayerFeatureTransformer`),
the U-Net-boosted multi-task classifier (:class:`UBCClassifier`), and the evaluation
protocols around them (layer sweeps, probes, CKA, clinical metrics).
"""

__version__ = "0.1.0"

from ._encoders import WeightsUnavailableError
from ._store import FeatureStore, clear_feature_store
from ._transformer import LayerFeatureTransformer

__all__ = [
    "FeatureStore",
    "LayerFeatureTransformer",
    "WeightsUnavailableError",
    "clear_feature_store",
]
