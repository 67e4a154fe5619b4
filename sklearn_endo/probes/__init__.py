"""Probes for frozen features: linear (one layer or many at once) and k-NN."""

from ._knn import KNNProbeClassifier
from ._linear import LinearProbeClassifier, MultiLayerLinearProbe, fit_folds

__all__ = ["KNNProbeClassifier", "LinearProbeClassifier", "MultiLayerLinearProbe", "fit_folds"]
