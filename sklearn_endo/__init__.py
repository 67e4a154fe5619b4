"""sklearn-endo: scikit-learn estimators for endoscopic and medical image classification.

Features from any layer of a frozen timm encoder (:class:`LayerFeatureTransformer`),
the U-Net-boosted multi-task classifier (:class:`UBCClassifier`), polyp segmentation
(:class:`Segmenter`), and the evaluation protocols around them (layer sweeps, probes,
CKA, clinical metrics).
"""

__version__ = "0.1.0"

from . import (
    datasets,
    finetune,
    inspection,
    metrics,
    model_selection,
    plotting,
    probes,
    segmentation,
    ubc,
)
from ._encoders import WeightsUnavailableError
from ._store import FeatureStore, clear_feature_store
from ._sweep import LayerSweepResult, layer_sweep, layer_sweep_from_features
from ._transformer import LayerFeatureTransformer
from .finetune import FineTuneClassifier, bit_hyperrule
from .probes import KNNProbeClassifier, LinearProbeClassifier, MultiLayerLinearProbe
from .segmentation import Segmenter
from .ssl import SelfSupervisedPretrainer
from .ubc import UBCClassifier

__all__ = [
    "FeatureStore",
    "FineTuneClassifier",
    "KNNProbeClassifier",
    "LayerFeatureTransformer",
    "LayerSweepResult",
    "LinearProbeClassifier",
    "MultiLayerLinearProbe",
    "Segmenter",
    "SelfSupervisedPretrainer",
    "UBCClassifier",
    "WeightsUnavailableError",
    "bit_hyperrule",
    "clear_feature_store",
    "datasets",
    "finetune",
    "inspection",
    "layer_sweep",
    "layer_sweep_from_features",
    "metrics",
    "model_selection",
    "plotting",
    "probes",
    "segmentation",
    "ssl",
    "ubc",
]
