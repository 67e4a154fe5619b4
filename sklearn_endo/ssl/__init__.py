"""Self-supervised pretraining of timm encoders on unlabelled images."""

from ._pretrainer import METHODS, SelfSupervisedPretrainer

__all__ = ["METHODS", "SelfSupervisedPretrainer"]
