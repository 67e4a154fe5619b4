"""The UBC network: an smp segmentation model with a classification head.

The encoder feeds both a decoder (the segmentation branch) and a one-layer class head on
its deepest feature map, as in the U-Net-boosted classifier. ``pooling="avg"`` is the
paper's head (smp's ``ClassificationHead`` via ``aux_params``); ``pooling="mask"`` also
pools the deepest features weighted by the predicted mask and concatenates both.
"""

from __future__ import annotations

import difflib
import os

import torch
import torch.nn.functional as F
from torch import nn

from .._pretrained import (
    WeightsUnavailableError,
    _check_reachable,
    _local_pretrained_file,
    read_state_dict,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLINGS = ("avg", "mask")


def smp_encoder_name(encoder):
    """``(smp_name, timm_name)`` for an encoder spec.

    smp's own encoders (``"resnet34"``: the paper's 21.3M-parameter encoder) are used as
    they are; ``"tu-<timm name>"`` and any other timm model name go through smp's timm
    universal encoder. ``timm_name`` is None for smp encoders with no timm counterpart.
    """
    import segmentation_models_pytorch as smp
    import timm

    if not isinstance(encoder, str):
        raise TypeError(
            f"encoder must be an encoder name such as 'resnet34' or 'tu-convnext_tiny'; "
            f"got {type(encoder).__name__}."
        )
    if encoder.startswith("tu-"):
        timm_name = encoder[3:]
        if not timm.is_model(timm_name.split(".")[0]):
            _unknown(encoder, timm.list_models())
        return encoder, timm_name
    if encoder in smp.encoders.get_encoder_names():
        return encoder, encoder if timm.is_model(encoder) else None
    if timm.is_model(encoder.split(".")[0]):
        return "tu-" + encoder, encoder
    _unknown(encoder, smp.encoders.get_encoder_names() + timm.list_models())


def _unknown(encoder, names):
    close = difflib.get_close_matches(encoder.removeprefix("tu-"), names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"encoder={encoder!r} is neither a segmentation_models_pytorch encoder nor a timm "
        f"model name.{hint} See smp.encoders.get_encoder_names() and timm.list_models()."
    )


def pretrained_kwargs(encoder, pretrained):
    """smp keyword arguments for the encoder weights; fails fast when offline.

    Raises WeightsUnavailableError (a ValueError) within seconds when the weights are
    neither cached nor downloadable, instead of a slow failure inside the hub client.
    """
    smp_name, timm_name = smp_encoder_name(encoder)
    if not pretrained:
        return {"encoder_weights": None}
    if smp_name.startswith("tu-"):
        local = _local_pretrained_file(timm_name)
        if local is not None:
            return {"encoder_weights": True, "pretrained_cfg_overlay": {"file": local}}
        try:
            _check_reachable(timm_name)
        except WeightsUnavailableError as exc:
            cmd = f"import timm; timm.create_model('{timm_name}', pretrained=True)"
            raise _unavailable(f"encoder={encoder!r}", _reason(exc), cmd) from None
        return {"encoder_weights": True}
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders[smp_name]["pretrained_settings"]
    tag = "imagenet" if "imagenet" in settings else next(iter(settings), None)
    if tag is None:
        raise WeightsUnavailableError(
            f"encoder={encoder!r} has no pretrained weights in segmentation_models_pytorch; "
            f"pass pretrained=False."
        )
    repo, rev = settings[tag].get("repo_id"), settings[tag].get("revision")
    if repo and _hub_cached(repo, rev):
        return {"encoder_weights": tag}
    reason = _hub_unreachable()
    if reason:
        raise _unavailable(f"encoder={encoder!r} (smp hub repo {repo!r})", reason,
                           f"import segmentation_models_pytorch as smp; "
                           f"smp.Unet('{smp_name}')")
    return {"encoder_weights": tag}


def _reason(exc):
    return str(exc).split("(", 1)[-1].split(")", 1)[0]


def _unavailable(what, reason, cache_cmd):
    return WeightsUnavailableError(
        f"Pretrained weights for {what} are not in the local cache and cannot "
        f"be downloaded ({reason}). Ways out: pretrained=False (random weights); or "
        f"populate the Hugging Face hub cache (HF_HOME) on a machine with network, e.g. "
        f"`python -c \"{cache_cmd}\"`, and copy it here."
    )


def _hub_unreachable(timeout=3.0):
    """None when the Hugging Face hub answers, else the reason."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if getattr(constants, "HF_HUB_OFFLINE", False):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return None
    except OSError as exc:
        return f"{host} cannot be reached: {exc}"


def _hub_cached(repo, revision):
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, "model.safetensors", revision=revision)
        return isinstance(hit, str)
    except Exception:
        return False


class MaskGuidedHead(nn.Module):
    """Average pooling concatenated with pooling weighted by the predicted mask.

    The mask is detached: the decoder learns from the Dice term only, so that samples
    without a mask send it no gradient. An empty predicted mask falls back to the
    average (the weights are smoothed by ``eps`` per position).
    """

    def __init__(self, in_channels, n_classes, dropout=0.0, eps=1e-3):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.linear = nn.Linear(2 * in_channels, n_classes)
        self.eps = eps

    def forward(self, features, mask_logits):
        probs = mask_logits.detach()
        probs = (probs[:, :1].sigmoid() if probs.shape[1] == 1
                 else 1.0 - probs.softmax(1)[:, :1])
        weights = F.adaptive_avg_pool2d(probs, features.shape[-2:]) + self.eps
        weights = weights / weights.sum((2, 3), keepdim=True)
        guided = (features * weights).sum((2, 3))
        pooled = features.mean((2, 3))
        return self.linear(self.dropout(torch.cat([pooled, guided], 1)))


class UBCNet(nn.Module):
    """Encoder + decoder (smp ``architecture``) + classification head.

    ``forward(x)`` takes float images (B, 3, H, W) in [0, 1] (normalised inside with the
    ImageNet statistics; averaged to grey for ``in_chans=1``) and returns
    ``(class_logits, mask_logits)``; ``mask_logits`` is None when ``with_masks=False``
    and the head does not need them (the decoder is then skipped). With
    ``deep_supervision`` (see :mod:`sklearn_endo.ubc._deep`) a training forward that
    decodes returns ``(class_logits, mask_logits, aux_mask_logits)``, the last a list of
    the logits of the decoder's intermediate blocks, coarsest first.
    """

    def __init__(self, encoder="resnet34", n_classes=2, *, architecture="unet",
                 encoder_depth=5, encoder_weights=None, in_chans=3, n_mask_classes=1,
                 pooling="avg", dropout=0.0, encoder_kwargs=None, deep_supervision=False):
        super().__init__()
        import segmentation_models_pytorch as smp

        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} must be one of {POOLINGS}.")
        smp_name, _ = smp_encoder_name(encoder)
        self.pooling = pooling
        self.in_chans = in_chans
        kwargs = dict(encoder_kwargs or {})
        if encoder_depth != 5:
            kwargs["encoder_depth"] = encoder_depth
            if architecture.lower() in ("unet", "unetplusplus", "manet"):
                kwargs["decoder_channels"] = (256, 128, 64, 32, 16)[:encoder_depth]
        aux = {"classes": n_classes, "dropout": dropout} if pooling == "avg" else None
        self.seg = smp.create_model(
            architecture, encoder_name=smp_name, encoder_weights=encoder_weights,
            in_channels=in_chans, classes=n_mask_classes, aux_params=aux, **kwargs,
        )
        if pooling == "mask":
            self.seg.classification_head = MaskGuidedHead(
                self.seg.encoder.out_channels[-1], n_classes, dropout)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        if in_chans == 1:
            mean, std = mean.mean(1, keepdim=True), std.mean(1, keepdim=True)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.aux = None
        if deep_supervision:
            from ._deep import AuxiliaryHeads, decoder_blocks

            self.aux = AuxiliaryHeads(decoder_blocks(self.seg, architecture), n_mask_classes)

    @property
    def decoder_parameters(self):
        """Parameters trained only by the Dice term (decoder and segmentation head)."""
        return [*self.seg.decoder.parameters(), *self.seg.segmentation_head.parameters()]

    def forward(self, x, with_masks=True):
        if self.in_chans == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        x = (x - self.mean) / self.std
        out = self.seg.encoder(x)
        # DPT's encoder also returns the prefix (class) tokens
        features, extra = (out if isinstance(out, tuple) else (out, None))
        mask_logits = None
        if self.aux is not None:
            self.aux.reset()
        if with_masks or self.pooling == "mask":
            decoded = (self.seg.decoder(features) if extra is None
                       else self.seg.decoder(features, extra))
            mask_logits = self.seg.segmentation_head(decoded)
        head = self.seg.classification_head
        logits = head(features[-1]) if self.pooling == "avg" else head(features[-1],
                                                                       mask_logits)
        if self.aux is not None and self.training and mask_logits is not None:
            return logits, mask_logits, self.aux()
        return logits, mask_logits


def _what_differs(n=3, **named):
    """``"missing 2, e.g. ['a', 'b']; unexpected 1, e.g. ['c']"`` for the non-empty lists."""
    return "; ".join(f"{name.replace('_', ' ')} {len(keys)}, e.g. {sorted(keys)[:n]}"
                     for name, keys in named.items() if keys)


def load_encoder_checkpoint(encoder, spec, path, *, in_chans=3, owner="UBCClassifier"):
    """Set every weight of smp ``encoder`` from the timm state dict at ``path``.

    The file is first checked against the timm model of the same name (no classifier):
    the same keys and shapes, bar the classifier's (present or not). Then every key of
    the smp encoder must be found in it (smp's ResNets use timm's names; ``"tu-"``
    encoders hold timm's ``features_only`` model, whose ``stages_1`` is timm's
    ``stages.1``) and is loaded strictly. Raises ValueError naming what does not fit.
    """
    import re

    import timm

    path = os.fspath(path)
    state = read_state_dict(path)
    smp_name, timm_name = smp_encoder_name(spec)
    skip = "num_batches_tracked"
    if timm_name is not None:
        with torch.device("meta"):
            ref = timm.create_model(timm_name, num_classes=0)
        head = str(ref.pretrained_cfg.get("classifier") or "fc")
        ref_sd = ref.state_dict()
        missing = [k for k in ref_sd if k not in state and not k.endswith(skip)]
        extra = [k for k in state if k not in ref_sd and not k.startswith(head + ".")]
        if missing or extra:
            raise ValueError(
                f"checkpoint_path={path!r} is not a state dict of timm's {timm_name!r} "
                f"(num_classes=0): {_what_differs(missing=missing, unexpected=extra)}. "
                f"Save the encoder of the same model name, e.g. "
                f"SelfSupervisedPretrainer({timm_name!r}, ...).save_encoder(path).")
        # a timm head built inside the smp encoder (DPT's ViT) is not the encoder's
        heads = (head + ".",)
    else:
        heads = ()
    target = encoder.model if smp_name.startswith("tu-") else encoder
    load = {}
    missing, bad = [], []
    for key, value in target.state_dict().items():
        if heads and key.startswith(heads) and key not in state:
            load[key] = value
            continue
        src = key if key in state else re.sub(r"^([A-Za-z]+)_(\d+)\.", r"\1.\2.", key)
        if src not in state:
            if not key.endswith(skip):
                missing.append(key)
            continue
        w = state[src]
        if (in_chans == 1 and w.ndim == 4 and value.ndim == 4 and w.shape[1] == 3
                and value.shape[1] == 1 and w.shape[0] == value.shape[0]):
            w = w.sum(dim=1, keepdim=True)  # as smp and timm adapt pretrained weights
        if tuple(w.shape) != tuple(value.shape):
            bad.append(f"{key}: file {tuple(w.shape)}, encoder {tuple(value.shape)}")
            continue
        load[key] = w
    if missing or bad:
        raise ValueError(
            f"checkpoint_path={path!r} does not fit {owner}'s encoder {spec!r}: "
            f"{_what_differs(2, missing=missing, shape_mismatches=bad)}. Use a "
            f"state dict of the timm model of the same name (and in_chans=3 or 1).")
    target.load_state_dict(load, strict=True)
    return encoder
