"""Semantic segmentation: :class:`Segmenter` (masks in, masks out) on smp decoders.

Shares UBC's plumbing (:mod:`sklearn_endo.ubc`): encoder names and weights, checkpoint
loading, mask reading (JPEG noise thresholded) and the soft Dice.
"""

from ..plotting._segmentation import SegmentationDisplay
from ._augment import JointEndoscopyAugment
from ._estimator import Segmenter
from ._loss import SegmentationLoss
from ._metrics import dice_scorer, iou_scorer
from ._network import SegNet

__all__ = ["JointEndoscopyAugment", "SegNet", "SegmentationDisplay", "SegmentationLoss",
           "Segmenter", "dice_scorer", "iou_scorer"]
