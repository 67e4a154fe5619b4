"""Deep supervision of the UBC decoder: auxiliary mask heads on its intermediate blocks.

Every decoder block but the last (whose output feeds the segmentation head) gets a
1x1 convolution to mask logits. In training their logits are upsampled bilinearly to
the mask size and each adds a Dice term:

    dice_loss = (L_main + sum_k w_k L_k) / (1 + sum_k w_k)

with ``L = 1 - Dice`` per sample (averaged like the main term). By default the weights
halve with each block away from the output: ``w = 0.5`` for the block just before the
last, ``0.25`` for the one before, ... (``default_weights``), so the finest auxiliary
output weighs most and the Dice term keeps its scale (a weighted mean of Dice losses).
"""

from __future__ import annotations

import numbers

import torch.nn.functional as F
from torch import nn


def default_weights(n):
    """``(0.5 ** n, ..., 0.25, 0.5)``: weights of ``n`` auxiliary outputs, coarsest first."""
    return tuple(0.5 ** (n - k) for k in range(n))


def resolve_weights(deep_supervision, n):
    """The auxiliary weights for ``deep_supervision`` (False, True or n floats), or ()."""
    if deep_supervision is False or deep_supervision is None:
        return ()
    if deep_supervision is True:
        return default_weights(n)
    try:
        w = tuple(float(v) for v in deep_supervision)
    except TypeError:
        w = None
    if w is None or len(w) != n or any(not v >= 0 for v in w) or isinstance(
            deep_supervision, (str, numbers.Number)):
        raise ValueError(
            f"deep_supervision={deep_supervision!r} must be False, True or {n} weights "
            f">= 0 (one per decoder block but the last, coarsest first).")
    return w


def _out_channels(block):
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"cannot tell the output channels of decoder block "
                         f"{type(block).__name__}")
    return convs[-1].out_channels


class AuxiliaryHeads(nn.Module):
    """1x1 convolutions on the outputs of ``blocks[:-1]``, collected by forward hooks."""

    def __init__(self, blocks, n_mask_classes):
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(_out_channels(b), n_mask_classes, 1)
                                   for b in list(blocks)[:-1])
        self._features = []
        for b in list(blocks)[:-1]:
            b.register_forward_hook(self._keep)

    def _keep(self, module, args, output):
        if self.training:
            self._features.append(output)

    def reset(self):
        self._features = []

    def forward(self):
        """Logits of every intermediate block of the last decoder pass (training)."""
        feats, self._features = self._features, []
        return [head(f) for head, f in zip(self.heads, feats)]

    def __getstate__(self):
        state = super().__getstate__()
        state["_features"] = []
        return state


def decoder_blocks(seg, architecture):
    blocks = getattr(seg.decoder, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) < 2:
        raise ValueError(
            f"deep_supervision needs a decoder made of a list of blocks (architecture="
            f"'unet' or 'manet'); architecture={architecture!r} has none.")
    return blocks


def upsampled(aux_logits, size):
    return [F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            for a in aux_logits]
