"""Fine-tuning a timm encoder: :class:`FineTuneClassifier` and :func:`bit_hyperrule`."""

from ._classifier import FineTuneClassifier
from ._hyperrule import bit_hyperrule

__all__ = ["FineTuneClassifier", "bit_hyperrule"]
