"""The UBC loss: ``alpha * CE + (1 - alpha) * (1 - Dice)`` with partial supervision."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UNLABELED = -1  # encoded target of a sample without a class label


def soft_dice(probs, target, smooth):
    """Smoothed Sorensen-Dice per sample: ``(2 sum(p g) + s) / (sum(p) + sum(g) + s)``.

    Args:
        probs: (B, ...) predicted foreground probabilities.
        target: (B, ...) {0, 1} ground truth of the same shape.
        smooth: the epsilon of the paper's formula (> 0 keeps empty masks finite).

    Returns:
        (B,) Dice coefficients.
    """
    p = probs.flatten(1)
    g = target.flatten(1).to(p.dtype)
    return (2.0 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)


def mask_dice(mask_logits, masks, n_mask_classes, smooth):
    """(B,) soft Dice of mask logits (B, K, h, w) against masks (B, h, w).

    Binary (``n_mask_classes == 1``): the sigmoid of channel 0 against {0, 1} masks.
    Multi-class: the mean over foreground classes 1..K-1 of the softmax against the
    one-hot label map (class 0 is background).
    """
    if n_mask_classes > 1:
        probs = mask_logits.softmax(1)[:, 1:]
        onehot = F.one_hot(masks.long(), n_mask_classes).permute(0, 3, 1, 2)[:, 1:]
        b, k = probs.shape[:2]
        return soft_dice(probs.reshape(b * k, -1), onehot.reshape(b * k, -1),
                         smooth).view(b, k).mean(1)
    return soft_dice(mask_logits[:, 0].sigmoid(), masks, smooth)


class UBCLoss(nn.Module):
    """``alpha * CE + (1 - alpha) * DiceLoss`` over a batch with partial labels/masks.

    The CE term averages over samples whose label is not ``-1``; the Dice term
    (``1 - Dice`` per sample, of the sigmoid of the mask logits, or for
    ``n_mask_classes > 1`` the mean over foreground classes of the softmax) averages over
    samples that have a mask. A term with no contributing sample in the batch is 0, and
    samples without a mask send no gradient to the decoder.

    With ``sample_weight`` both averages are weighted means: the CE term is
    ``sum(w_i * ce_i) / sum(w_i)`` over labelled samples and the Dice term
    ``sum(w_i * (1 - dice_i)) / sum(w_i)`` over samples with a mask, so an integer
    weight counts like repeating the sample within its batch, and a zero weight removes
    it. A term whose contributing weights sum to 0 is 0.

    Args:
        alpha: weight of the classification term, in [0, 1].
        dice_smooth: epsilon of the smoothed Dice.
        n_mask_classes: 1 for binary masks, K >= 2 for integer label maps 0..K-1.
        aux_weights: weights of the auxiliary (deep supervision) mask logits, coarsest
            first; their Dice losses join the main one as
            ``(L + sum w_k L_k) / (1 + sum w_k)`` (see :mod:`sklearn_endo.ubc._deep`).
    """

    def __init__(self, alpha=0.5, dice_smooth=1.0, n_mask_classes=1, aux_weights=()):
        super().__init__()
        self.aux_weights = tuple(float(w) for w in aux_weights or ())
        self.alpha = float(alpha)
        self.dice_smooth = float(dice_smooth)
        self.n_mask_classes = int(n_mask_classes)

    def terms(self, class_logits, mask_logits, y, masks, has_mask, sample_weight=None,
              aux_mask_logits=None):
        """Return ``(ce, dice_loss)``, each a scalar tensor.

        Args:
            sample_weight: optional (B,) non-negative per-sample weights; None weighs
                every sample 1.
        """
        ce = F.cross_entropy(class_logits, y.clamp(min=0), reduction="none")
        ce = _weighted_mean(ce, (y != UNLABELED).to(ce.dtype), sample_weight)
        if mask_logits is None:
            return ce, ce.new_zeros(())
        dice = mask_dice(mask_logits, masks, self.n_mask_classes, self.dice_smooth)
        dice_loss = _weighted_mean(1.0 - dice, has_mask.to(dice.dtype), sample_weight)
        if aux_mask_logits and self.aux_weights:
            from ._deep import upsampled

            total = dice_loss
            for w, aux in zip(self.aux_weights, upsampled(aux_mask_logits, masks.shape[-2:])):
                d = mask_dice(aux, masks, self.n_mask_classes, self.dice_smooth)
                total = total + w * _weighted_mean(1.0 - d, has_mask.to(d.dtype),
                                                   sample_weight)
            dice_loss = total / (1.0 + sum(self.aux_weights))
        return ce, dice_loss

    def forward(self, class_logits, mask_logits, y, masks, has_mask, sample_weight=None,
                aux_mask_logits=None):
        ce, dice_loss = self.terms(class_logits, mask_logits, y, masks, has_mask,
                                   sample_weight, aux_mask_logits)
        if self.alpha == 1.0:
            return ce
        if self.alpha == 0.0:
            return dice_loss
        return self.alpha * ce + (1.0 - self.alpha) * dice_loss


def _weighted_mean(values, included, sample_weight):
    """``sum(w * values) / sum(w)`` over the ``included`` samples; 0 when ``sum(w) == 0``.

    ``included`` is a {0, 1} float mask; ``w`` is ``included * sample_weight``.
    """
    weights = included if sample_weight is None else included * sample_weight.to(
        values.dtype)
    total = weights.sum()
    # divide by 1 where the weights sum to 0 (the numerator is then 0 too): a
    # torch.where over num / 0 would send NaN gradients back
    return (values * weights).sum() / torch.where(total > 0, total, total.new_ones(()))
