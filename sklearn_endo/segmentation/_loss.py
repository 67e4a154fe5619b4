"""The segmentation loss: ``ce_weight * CE + dice_weight * (1 - Dice)`` per sample."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..ubc._loss import _weighted_mean, mask_dice


class SegmentationLoss(nn.Module):
    """``ce_weight * CE + dice_weight * (1 - Dice)``, each a mean over samples.

    Binary masks (``n_classes=1``): the pixel-mean binary cross-entropy of the logits
    and the soft Dice of their sigmoid. Label maps (``n_classes=K >= 2``): the pixel-mean
    cross-entropy over K classes and the mean soft Dice of the softmax over the
    foreground classes 1..K-1 (class 0 is background). Dice is UBC's smoothed
    ``(2 sum(p g) + s) / (sum(p) + sum(g) + s)`` per sample.

    With ``sample_weight`` both terms are weighted means over the batch
    (``sum(w_i * l_i) / sum(w_i)``); samples with ``has_mask`` False are left out. A
    term whose weights sum to 0 is 0.
    """

    def __init__(self, dice_weight=1.0, ce_weight=1.0, dice_smooth=1.0, n_classes=1):
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.dice_smooth = float(dice_smooth)
        self.n_classes = int(n_classes)

    def terms(self, logits, masks, has_mask=None, sample_weight=None):
        """``(ce, dice_loss)`` scalars for logits (B, K, h, w) and masks (B, h, w)."""
        if self.n_classes > 1:
            ce = F.cross_entropy(logits, masks.long(), reduction="none")
        else:
            ce = F.binary_cross_entropy_with_logits(logits[:, 0], masks.to(logits.dtype),
                                                    reduction="none")
        ce = ce.flatten(1).mean(1)
        included = (ce.new_ones(ce.shape) if has_mask is None
                    else has_mask.to(ce.dtype))
        ce = _weighted_mean(ce, included, sample_weight)
        dice = mask_dice(logits, masks, self.n_classes, self.dice_smooth)
        return ce, _weighted_mean(1.0 - dice, included, sample_weight)

    def forward(self, logits, masks, has_mask=None, sample_weight=None):
        ce, dice_loss = self.terms(logits, masks, has_mask, sample_weight)
        return self.ce_weight * ce + self.dice_weight * dice_loss
