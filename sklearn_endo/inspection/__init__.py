"""Inspecting probes and representations: confusion asymmetry, patch-similarity
variance, trainable-parameter counts."""

from ._confusion import confusion_asymmetry
from ._parameters import count_trainable_parameters
from ._patch_similarity import patch_similarity_variance

__all__ = ["confusion_asymmetry", "count_trainable_parameters", "patch_similarity_variance"]
