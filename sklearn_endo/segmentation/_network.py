"""The segmentation network: an smp model behind ImageNet normalisation, with freezing.

The encoder name, pretrained weights and checkpoint loading are UBC's
(:mod:`sklearn_endo.ubc._model`); only what a pure segmentation model needs is here.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .._blocks import find_blocks
from ..ubc._model import IMAGENET_MEAN, IMAGENET_STD, smp_encoder_name

#: decoders offered by name (any other smp architecture name is passed through)
ARCHITECTURES = ("unet", "fpn", "upernet", "dpt")
_UNET_LIKE = ("unet", "unetplusplus", "manet")


def encoder_module(seg, encoder):
    """The timm (or smp ResNet) module inside smp model ``seg``'s encoder."""
    smp_name, _ = smp_encoder_name(encoder)
    return seg.encoder.model if smp_name.startswith("tu-") else seg.encoder


class SegNet(nn.Module):
    """smp ``architecture`` on ``encoder``; ``forward(x)`` gives mask logits (B, K, H, W).

    ``x`` is float (B, 3, H, W) in [0, 1], normalised inside with the ImageNet statistics
    (averaged to grey for ``in_chans=1``). ``n_classes`` is 1 for binary masks (one
    logit channel, sigmoid), K >= 2 for label maps (K channels, softmax).

    ``freeze``: False (train everything), True (the whole encoder, BatchNorm statistics
    fixed), or an int k: the encoder's parameters before its block k+1 (the stem and
    blocks 1..k, blocks numbered by :func:`sklearn_endo._blocks.find_blocks` as for
    ``LayerFeatureTransformer(layer=...)``), their BatchNorm statistics fixed too.
    """

    def __init__(self, encoder="resnet34", n_classes=1, *, architecture="unet",
                 encoder_depth=None, encoder_weights=None, in_chans=3, freeze=False,
                 encoder_kwargs=None, model_kwargs=None):
        super().__init__()
        import segmentation_models_pytorch as smp

        smp_name, _ = smp_encoder_name(encoder)
        arch = architecture.lower()
        kwargs = {**(encoder_kwargs or {}), **(model_kwargs or {})}
        if encoder_depth is not None:
            kwargs["encoder_depth"] = encoder_depth
            if arch in _UNET_LIKE and encoder_depth != 5:
                kwargs.setdefault("decoder_channels", (256, 128, 64, 32, 16)[:encoder_depth])
        if arch == "dpt":
            # a ViT of any input size, its position embedding interpolated (the
            # pretrained or checkpoint table keeps its shape)
            kwargs.setdefault("dynamic_img_size", True)
        self.in_chans = in_chans
        self.seg = smp.create_model(arch, encoder_name=smp_name,
                                    encoder_weights=encoder_weights, in_channels=in_chans,
                                    classes=n_classes, **kwargs)
        strides = getattr(self.seg.encoder, "output_strides", None) or ()
        if arch == "dpt" and any(int(st) & (int(st) - 1) for st in strides):
            raise ValueError(
                f"encoder={encoder!r} has patch size {strides[-1]}, but smp "
                f"{smp.__version__}'s DPT decoder rescales its features by patch size / 4 "
                f"and only works for patch sizes that are powers of 2 (8, 16): DINOv2's "
                f"patch-14 ViTs fail inside it. Use a patch-16 ViT (register-token ones "
                f"too, e.g. 'tu-vit_medium_patch16_reg4_gap_256').")
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        if in_chans == 1:
            mean, std = mean.mean(1, keepdim=True), std.mean(1, keepdim=True)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self._frozen_norms = []
        self.n_frozen_ = 0
        if freeze is not False and freeze is not None:
            self._freeze(encoder_module(self.seg, encoder), freeze)

    def _freeze(self, module, freeze):
        if freeze is True:
            names = [n for n, _ in module.named_parameters()]
        else:
            blocks = find_blocks(module)
            k = int(freeze)
            if not 0 <= k <= len(blocks):
                raise ValueError(
                    f"freeze={freeze!r} must be a bool or an int in [0, {len(blocks)}], the "
                    f"number of the encoder's blocks to freeze ({len(blocks)} blocks: "
                    f"{blocks[0][0]!r} ... {blocks[-1][0]!r}).")
            names = []
            stop = blocks[k][0] + "." if k < len(blocks) else None
            for n, _ in module.named_parameters():
                if stop is not None and n.startswith(stop):
                    break
                names.append(n)
        frozen = set(names)
        for n, p in module.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        self.n_frozen_ = len(frozen)
        self._frozen_norms = [
            m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(True for _ in m.parameters())
            and not any(p.requires_grad for p in m.parameters())
        ]
        self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        for m in getattr(self, "_frozen_norms", ()):
            m.eval()  # frozen BatchNorm keeps its statistics
        return self

    def forward(self, x):
        if self.in_chans == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        out = self.seg((x - self.mean) / self.std)
        if out.shape[-2:] != x.shape[-2:]:
            # smp's FPN with encoder_depth < 5 upsamples by a fixed 4 from the wrong
            # stride: logits always come back at the input's size
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear",
                                align_corners=False)
        return out


def check_freeze(freeze):
    if freeze is None or isinstance(freeze, bool):
        return
    if not isinstance(freeze, numbers.Integral) or freeze < 0:
        raise ValueError(
            f"freeze={freeze!r} must be False, True (the whole encoder) or an int k >= 0 "
            f"(the stem and the encoder's first k blocks).")
