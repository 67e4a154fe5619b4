"""The U-Net-boosted classifier (UBC): classification boosted by pixel masks."""

from ._classifier import NoMasksWarning, UBCClassifier
from ._loss import UBCLoss, soft_dice
from ._model import UBCNet

__all__ = ["NoMasksWarning", "UBCClassifier", "UBCLoss", "UBCNet", "soft_dice"]
