"""How ``SelfSupervisedPretrainer`` checks its parameters and builds what it trains: the
encoder copy, the method's network, the optimizer and its lr and weight-decay schedules,
and the settings a checkpoint must share."""

from __future__ import annotations

import copy
import math
import numbers

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._encoders import resolve_device, resolve_encoder
from .._images import image_hashes
from ._augment import make_views
from ._checkpoint import check_checkpoint_dir, data_digest, settings_key
from ._methods import DINO, MAE, BarlowTwins, MoCoV3, cosine_between, is_timm_vit

__all__ = ["METHODS", "PretrainerBuildMixin"]

METHODS = ("barlowtwins", "mocov3", "mae", "dino")


class PretrainerBuildMixin:
    """Parameter checks and building of ``SelfSupervisedPretrainer``."""


    # ------------------------------------------------------------ validation
    def _check_params(self):
        if not (isinstance(self.method, str) and self.method in METHODS):
            raise ValueError(f"method={self.method!r} is not supported; use one of "
                             f"{list(METHODS)}.")
        for name in ("max_epochs", "batch_size", "accumulate", "decoder_dim",
                     "decoder_depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer.")
        nl = self.n_local_crops
        if isinstance(nl, bool) or not isinstance(nl, numbers.Integral) or nl < 0:
            raise ValueError(f"n_local_crops={nl!r} must be an int >= 0.")
        if nl and self.method != "dino":
            raise ValueError(f"n_local_crops={nl!r} is DINO's multi-crop; with "
                             f"method={self.method!r} use n_local_crops=0.")
        lcs = self.local_crop_size
        sizes = lcs if isinstance(lcs, (tuple, list)) else [lcs]
        if lcs is not None and not (
                len(sizes) in (1, 2) and all(isinstance(v, numbers.Integral)
                                             and not isinstance(v, bool) and v >= 8
                                             for v in sizes)):
            raise ValueError(f"local_crop_size={lcs!r} must be None, an int >= 8 or a "
                             f"(height, width) pair of them.")
        if self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size!r}: self-supervised losses "
                             f"compare images within a batch; use batch_size >= 2.")
        pd = self.projection_dim
        if pd is not None and (isinstance(pd, bool) or not isinstance(pd, numbers.Integral)
                               or pd < 1):
            raise ValueError(f"projection_dim={pd!r} must be None or a positive integer.")
        checks = [("lr", self.lr, lambda v: v > 0, "> 0"),
                  ("warmup_epochs", self.warmup_epochs, lambda v: v >= 0, ">= 0"),
                  ("lambda_param", self.lambda_param, lambda v: v > 0, "> 0"),
                  ("temperature", self.temperature, lambda v: v > 0, "> 0"),
                  ("mask_ratio", self.mask_ratio, lambda v: 0 < v < 1, "in (0, 1)")]
        if self.momentum is not None:
            checks.append(("momentum", self.momentum, lambda v: 0 <= v < 1, "in [0, 1)"))
        for name in ("weight_decay", "weight_decay_end"):
            if getattr(self, name) is not None:
                checks.append((name, getattr(self, name), lambda v: v >= 0,
                               ">= 0 (or None)"))
        tt = self.teacher_temp
        temps = list(tt[:2]) if isinstance(tt, (tuple, list)) and len(tt) == 3 else [tt]
        if (isinstance(tt, (tuple, list)) and (
                len(tt) != 3 or isinstance(tt[2], bool)
                or not isinstance(tt[2], numbers.Integral) or tt[2] < 0)) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool)
                and math.isfinite(v) and v > 0 for v in temps):
            raise ValueError(f"teacher_temp={tt!r} must be a number > 0 or a (start, end, "
                             f"epochs) triple, e.g. (0.04, 0.07, 30).")
        for name, v, ok, what in checks:
            if (isinstance(v, bool) or not isinstance(v, numbers.Real)
                    or not math.isfinite(v) or not ok(v)):
                raise ValueError(f"{name}={v!r} must be a number {what}.")
        nw = self.num_workers
        if not (nw == "auto" or (isinstance(nw, numbers.Integral) and not isinstance(nw, bool)
                                 and nw >= 0)):
            raise ValueError(f"num_workers={nw!r} must be 'auto' or an int >= 0.")
        make_views(self.augment, (32, 32), 1)  # raises for a bad augment
        check_checkpoint_dir(self.checkpoint_dir)
        return resolve_device(self.device)

    def _seed(self):
        rs = self.random_state
        if rs is None:
            return int(np.random.randint(2**31 - 1))
        if isinstance(rs, numbers.Integral):
            return int(rs)
        return int(check_random_state(rs).randint(2**31 - 1))

    # ------------------------------------------------------------ building
    def _encoder_copy(self):
        handle = resolve_encoder(self.encoder, pretrained=self.pretrained,
                                 checkpoint_path=self.checkpoint_path,
                                 img_size=self.img_size, device="cpu")
        size = tuple(int(s) for s in handle.data_config["input_size"])
        encoder = copy.deepcopy(handle.module)  # the registry's module stays frozen
        pe = getattr(encoder, "patch_embed", None)
        fixed = getattr(pe, "img_size", None)
        if (fixed is not None and tuple(int(s) for s in fixed) != size
                and not getattr(pe, "dynamic_img_size", False)):
            if not hasattr(encoder, "set_input_size"):
                raise ValueError(
                    f"img_size={self.img_size!r}: encoder {handle.name!r} is built for "
                    f"{tuple(fixed)} and cannot be resized; pass img_size={fixed[0]}.")
            encoder.set_input_size(img_size=size)
        for p in encoder.parameters():
            p.requires_grad_(True)
        encoder.eval()
        with torch.no_grad():
            out = encoder(torch.zeros(2, 3, *size))
            local = self._local_size(size)
            if local is not None:
                try:
                    encoder(torch.zeros(2, 3, *local))
                except Exception as exc:
                    raise ValueError(
                        f"n_local_crops={self.n_local_crops}: encoder {handle.name!r} "
                        f"cannot take the local crops' size {local} "
                        f"({type(exc).__name__}: {str(exc)[:200]}). For a timm ViT pass a "
                        f"factory that creates it with dynamic_img_size=True, or set "
                        f"local_crop_size to a size it takes.") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"encoder {handle.name!r} returns {shape} for a batch of images, not pooled "
                f"(N, D) features; create the timm model with num_classes=0 (pooled "
                f"features), or pass a module whose forward returns (N, D).")
        return encoder.train(), handle, size, int(out.shape[1])

    def _local_size(self, size):
        """(h, w) of DINO's local crops, or None without multi-crop."""
        if not self.n_local_crops:
            return None
        lcs = self.local_crop_size
        if lcs is None:
            return tuple(max(8, int(round(s * 3 / 7 / 8)) * 8) for s in size)
        return (int(lcs), int(lcs)) if isinstance(lcs, numbers.Integral) else tuple(
            int(v) for v in lcs)

    def _build(self, encoder, dim, name):
        m = self.method
        pd = self.projection_dim
        if m == "barlowtwins":
            width = pd or min(8192, 4 * dim)
            return BarlowTwins(encoder, dim, width=width, lambda_param=self.lambda_param)
        if m == "mocov3":
            return MoCoV3(encoder, dim, hidden=min(4096, 4 * dim), out=pd or 256,
                          temperature=self.temperature,
                          momentum=0.99 if self.momentum is None else self.momentum)
        if m == "dino":
            tt = self.teacher_temp
            tt = tuple(tt) if isinstance(tt, (tuple, list)) else (tt, tt, 0)
            return DINO(encoder, dim, hidden=min(2048, 4 * dim), bottleneck=min(256, dim),
                        out=pd or min(65536, 16 * dim),
                        momentum=0.996 if self.momentum is None else self.momentum,
                        teacher_temp=tt, freeze_last_layer=1, clip_grad=3.0)
        if not is_timm_vit(encoder):
            raise ValueError(
                f"method='mae' needs a timm VisionTransformer (it drops masked patch "
                f"tokens), but encoder {name!r} is a {type(encoder).__name__}; use a ViT "
                f"(e.g. 'vit_small_patch16_224') or method='barlowtwins', 'mocov3' or "
                f"'dino', which work for CNNs.")
        return MAE(encoder, mask_ratio=self.mask_ratio, decoder_dim=self.decoder_dim,
                   decoder_depth=self.decoder_depth)

    def _weight_decays(self):
        """(start, end) of the weight decay's cosine schedule."""
        dino = self.method == "dino"
        start = (0.04 if dino else 0.05) if self.weight_decay is None else self.weight_decay
        end = self.weight_decay_end
        if end is None:
            end = 10 * start if dino else start
        return float(start), float(end)

    def _optimizer(self, module):
        decay, no_decay = [], []
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self._weight_decays()[0]},
             {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)

    def _weight_decay_at(self, step, total):
        start, end = self._weight_decays()
        return cosine_between(start, end, step / max(1, total))

    def _lr_at(self, step, total, warmup):
        if step < warmup:
            return self.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        floor = self.lr / 100
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    def _config(self, images):
        """What a checkpoint must share with this fit to be resumed."""
        keys = ("method", "pretrained", "checkpoint_path", "img_size", "n_local_crops",
                "local_crop_size", "projection_dim", "lambda_param", "temperature",
                "teacher_temp", "momentum", "mask_ratio", "decoder_dim", "decoder_depth",
                "lr", "weight_decay", "weight_decay_end", "warmup_epochs", "max_epochs",
                "batch_size", "accumulate")
        cfg = {k: settings_key(getattr(self, k)) for k in keys}
        rs = self.random_state
        cfg.update(encoder=settings_key(self.encoder), augment=settings_key(self.augment),
                   n_images=str(len(images)), data=data_digest(image_hashes(images)),
                   random_state=repr(rs) if isinstance(rs, (numbers.Integral, type(None)))
                   else "rs")
        return cfg
