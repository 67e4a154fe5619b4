"""How ``FineTuneClassifier`` builds its network: parameter checks, the encoder handle,
the cut and freeze, the trunk copy at the input size, the head and the optimizer."""

from __future__ import annotations

import copy
import math
import numbers
import os
import weakref

import numpy as np
import torch

from .._encoders import no_class_token_message, resolve_device, resolve_encoder
from .._images import load_resized
from ._augment import AUGMENTS, make_augment
from ._network import HEADS, POOLINGS, FineTuneNet, LinearHead, TransformerHead, Trunk

__all__ = ["ImageDataset", "NetworkBuildMixin", "SCHEDULES", "STRUCTURE", "target"]

#: Parameters that define the fitted network: changing one after fit needs a refit.
STRUCTURE = ("encoder", "head", "layer", "freeze", "pooling", "img_size", "pretrained",
             "checkpoint_path", "head_width", "head_depth", "head_heads")

SCHEDULES = (None, "bit", "warmup_plateau")
_RESIZED = weakref.WeakKeyDictionary()  # frozen source module -> {size: resized copy}


class ImageDataset(torch.utils.data.Dataset):
    """Image ``i`` decoded and resized on access (memory bounded by the batch)."""

    def __init__(self, images, size, interpolation, y=None, sample_weight=None):
        self.images = images
        self.size = tuple(size)
        self.interpolation = interpolation
        self.y = y
        self.sample_weight = sample_weight

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = load_resized(self.images, i, self.size, interpolation=self.interpolation)
        return x, (0 if self.y is None else target(self.y, self.sample_weight, i))


def target(y, sample_weight, i):
    """Label ``i``, or ``{"y": label, "weight": weight}`` with sample weights."""
    if sample_weight is None:
        return int(y[i])
    return {"y": torch.tensor(int(y[i])),
            "weight": torch.tensor(float(sample_weight[i]), dtype=torch.float32)}


def _is_timm_vit_name(head):
    if not isinstance(head, str):
        return False
    import timm

    return timm.is_model(head)


def _resizable(module, img_size):
    """A fixed-size ViT module asked for another size: resized by us, not rejected."""
    pe = getattr(module, "patch_embed", None)
    fixed = getattr(pe, "img_size", None)
    if img_size is None or fixed is None or getattr(pe, "dynamic_img_size", False):
        return False
    size = (img_size, img_size) if isinstance(img_size, numbers.Integral) else tuple(img_size)
    return tuple(int(s) for s in size) != tuple(int(s) for s in fixed) and hasattr(
        module, "set_input_size")





class NetworkBuildMixin:
    """Network building of ``FineTuneClassifier`` (the estimator provides the
    parameters, ``classes_``, ``device`` and skorch's ``get_params_for``)."""

    # ------------------------------------------------------------ validation
    def _check_params(self):
        self._validate_constraints()
        if self.head not in HEADS and not _is_timm_vit_name(self.head):
            raise ValueError(f"head={self.head!r} is not supported; use 'linear', "
                             f"'transformer' or a timm ViT name such as "
                             f"'deit_tiny_patch16_224'.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not supported; use one of "
                             f"{list(POOLINGS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not supported; use one of "
                             f"{list(SCHEDULES)}.")
        f = self.freeze
        if not (f in ("none", "all") or (isinstance(f, numbers.Integral)
                                         and not isinstance(f, bool) and f >= 0)):
            raise ValueError(f"freeze={f!r} must be 'none', 'all' or an int k >= 0 (the "
                             f"embedding and blocks 1..k frozen).")
        for name in ("head_width", "head_depth", "head_heads", "batch_size", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer.")
        if not 0 <= float(self.dropout) < 1:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1).")
        if self.layer_decay is not None and not 0 < float(self.layer_decay) <= 1:
            raise ValueError(f"layer_decay={self.layer_decay!r} must be None or in (0, 1], "
                             f"e.g. 0.75.")
        if self.mixup is not None and float(self.mixup) < 0:
            raise ValueError(f"mixup={self.mixup!r} must be None or an alpha >= 0.")
        if float(self.warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs={self.warmup_epochs!r} must be >= 0.")
        if not (callable(self.augment) or any(
                self.augment is a or (isinstance(a, str) and self.augment == a)
                for a in AUGMENTS)):
            make_augment(self.augment, (32, 32))  # raises the error
        fs = self.feature_store
        if not (fs is None or fs == "memory" or isinstance(fs, (str, os.PathLike))):
            raise ValueError(f"feature_store={fs!r} must be 'memory', a directory path or "
                             f"None.")
        resolve_device(self.device)

    def _get_handle(self):
        handle = getattr(self, "_handle_", None)
        if handle is None:
            size = self.img_size
            if isinstance(self.encoder, torch.nn.Module) and _resizable(self.encoder, size):
                size = None  # resolve the module as it is; _source resizes a copy
            # first use may come inside predict's inference mode (after unpickling):
            # the encoder is built with ordinary tensors, whose version counters the
            # weights check reads
            with torch.inference_mode(False):
                handle = resolve_encoder(self.encoder, pretrained=self.pretrained,
                                         checkpoint_path=self.checkpoint_path,
                                         img_size=size, device=self.device)
            self._handle_ = handle
        return handle

    def _input_size(self, handle):
        if self.img_size is None:
            return tuple(int(s) for s in handle.data_config["input_size"])
        size = self.img_size
        return (int(size), int(size)) if isinstance(size, numbers.Integral) else tuple(
            int(s) for s in size)

    def _resolve_layer(self, n):
        layer = self.layer
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"layer={layer!r} must be an int (0 = embedding, i = block i, "
                            f"-1 = last block).")
        if not -n <= layer <= n:
            raise ValueError(
                f"layer={layer} is out of range for this encoder with {n} blocks: valid "
                f"layers are 0 (embedding) to {n}, or -{n} to -1 counting from the end.")
        return int(layer) if layer >= 0 else n + 1 + int(layer)

    def _resolve_freeze(self, layer):
        if self.freeze == "none":
            return -1
        if self.freeze == "all":
            return layer
        if self.freeze > layer:
            raise ValueError(
                f"freeze={self.freeze} is larger than the cut layer={self.layer} (block "
                f"{layer}): the trunk has only {layer} blocks. Use freeze <= {layer}, or "
                f"freeze='all' to freeze the whole trunk.")
        return int(self.freeze)

    def _source(self, handle):
        """The frozen module the trunk is copied from, at the input size ``input_size_``."""
        size = self.input_size_
        module = handle.module
        pe = getattr(module, "patch_embed", None)
        if pe is None or getattr(pe, "patch_size", None) is None:
            return module
        patch = tuple(int(p) for p in pe.patch_size)
        if any(s % p for s, p in zip(size, patch)):
            ok = [max(p, round(s / p) * p) for s, p in zip(size, patch)]
            raise ValueError(
                f"img_size={self.img_size!r} gives an input of {size}, which the patch grid "
                f"of {handle.name!r} (patch size {patch}) cannot take; use a multiple of the "
                f"patch size, e.g. img_size={tuple(ok) if ok[0] != ok[1] else ok[0]}.")
        current = tuple(int(s) for s in getattr(pe, "img_size", None) or size)
        if current == size or getattr(pe, "dynamic_img_size", False):
            return module
        cache = _RESIZED.setdefault(module, {})
        if size not in cache:
            if not hasattr(module, "set_input_size"):
                raise ValueError(
                    f"img_size={self.img_size!r}: encoder {handle.name!r} is built for "
                    f"{current} and cannot be resized (no set_input_size); pass img_size="
                    f"{current[0]} or an encoder created at the size you need.")
            resized = copy.deepcopy(module)
            resized.set_input_size(img_size=size)  # bicubic pos-embed resampling
            for p in resized.parameters():
                p.requires_grad_(False)
            cache[size] = resized.eval()
        return cache[size]

    def initialize_module(self):
        if getattr(self, "classes_", None) is None:
            if self.classes is None:
                raise ValueError(
                    "FineTuneClassifier needs its classes to build the head: call fit, or "
                    "pass classes=[...] before initialize() and load_params().")
            self.classes_ = np.asarray(self.classes)
        self._check_params()
        self._handle_ = None
        handle = self._get_handle()
        if "cls" in self.pooling and self.head == "linear" and not handle.has_class_token:
            raise ValueError(no_class_token_message(self.pooling, handle))
        self.n_layers_ = handle.n_layers
        self.layer_ = self._resolve_layer(handle.n_layers)
        self.freeze_ = self._resolve_freeze(self.layer_)
        self.input_size_ = self._input_size(handle)
        source = self._source(handle)
        device = torch.device(self.device)
        trunk = Trunk(source, [n for n, _ in handle.blocks], self.layer_,
                      handle.output_fmt).to(device)
        probe = torch.zeros(1, 3, *self.input_size_, device=device)
        order, out = trunk.trace(probe)
        trunk.freeze(None if self.freeze_ < 0 else self.freeze_, order)
        n_classes = len(self.classes_)
        npt = handle.num_prefix_tokens
        from ._network import to_tokens

        self._cut_shapes_ = {"raw": tuple(out.shape[1:]),
                             "tokens": tuple(to_tokens(out, npt).shape[1:])}
        if self.head == "linear":
            from ._network import pool

            head = LinearHead(pool(out, self.pooling, npt).shape[1], n_classes,
                              self.dropout)
        elif self.head != "transformer":
            head = self._timm_head(out, npt, n_classes)
        else:
            from ._network import to_tokens

            tokens = to_tokens(out, npt)
            head = TransformerHead(tokens.shape[2], tokens.shape[1], n_classes,
                                   width=self.head_width, depth=self.head_depth,
                                   num_heads=self.head_heads, dropout=self.dropout)
        if self.schedule == "bit":  # BiT: the classifier starts at zero
            torch.nn.init.zeros_(head.classifier().weight)
            torch.nn.init.zeros_(head.classifier().bias)
        cfg = handle.data_config
        kwargs = dict(trunk=trunk, head=head, head_kind=self.head, pooling=self.pooling,
                      num_prefix_tokens=npt, mean=cfg["mean"], std=cfg["std"])
        self.module_ = FineTuneNet(**kwargs).to(device)
        used = {id(p) for name, mod in trunk.encoder.named_modules() if name in order
                for p in mod.parameters(recurse=False)}
        trunk_used = [p for p in trunk.parameters() if id(p) in used]
        self.n_params_ = sum(p.numel() for p in trunk_used) + sum(
            p.numel() for p in head.parameters())
        self.n_trainable_params_ = sum(p.numel() for p in self.module_.parameters()
                                       if p.requires_grad)
        self.param_depths_ = {f"trunk.encoder.{k}": v for k, v in trunk.depths(order).items()}
        self.fitted_structure_ = {k: getattr(self, k) for k in STRUCTURE}
        self._encoder_cache_ = None
        return self

    def _timm_head(self, out, npt, n_classes):
        from ._network import TimmViTHead, to_tokens

        tokens = to_tokens(out, npt)
        if out.ndim == 4:
            grid = tuple(out.shape[2:])
        else:
            side = math.isqrt(tokens.shape[1])
            if side * side != tokens.shape[1]:
                raise ValueError(
                    f"head={self.head!r} needs a square grid of tokens to place its "
                    f"position embedding, but the cut gives {tokens.shape[1]}; use a "
                    f"square img_size or head='transformer'.")
            grid = (side, side)
        vit = resolve_encoder(self.head, pretrained=self.pretrained, device="cpu").module
        if getattr(vit, "cls_token", None) is None or getattr(vit, "pos_embed", None) is None:
            raise ValueError(f"head={self.head!r} has no class token or absolute position "
                             f"embedding to classify with; use a ViT/DeiT name such as "
                             f"'deit_tiny_patch16_224', or head='transformer'.")
        return TimmViTHead(vit, tokens.shape[2], grid, n_classes, dropout=self.dropout)

    def get_all_learnable_params(self):
        for name, p in super().get_all_learnable_params():
            if p.requires_grad:
                yield name, p

    def initialize_optimizer(self, *args, **kwargs):
        named = list(self.get_all_learnable_params())
        args, kw = self.get_params_for_optimizer("optimizer", named)
        optimizer = self.optimizer
        if self.schedule == "bit":
            rule = (getattr(self, "_plan_", None) or {}).get("rule")
            optimizer = torch.optim.SGD
            kw = dict(lr=rule.lr if rule is not None else self.lr, momentum=0.9,
                      weight_decay=0.0)
        elif (self.schedule == "warmup_plateau" and optimizer is torch.optim.AdamW
              and "weight_decay" not in self.get_params_for("optimizer")):
            kw.setdefault("weight_decay", 0.05)
        if self.layer_decay is not None:
            args = (self._decay_groups(named, kw["lr"]),)
        self.optimizer_ = optimizer(*args, **kw)
        return self

    def _decay_groups(self, named, lr):
        """One parameter group per depth, lr * layer_decay ** (head depth - depth)."""
        top = self.layer_ + 1  # the head
        groups = {}
        for name, p in named:
            depth = self.param_depths_.get(name, top)
            groups.setdefault(depth, []).append(p)
        return [{"params": ps, "lr": lr * float(self.layer_decay) ** (top - d)}
                for d, ps in sorted(groups.items())]

    def _check_structure(self):
        """Raise when a parameter that defines the network changed since it was built."""
        fitted = getattr(self, "fitted_structure_", None) or {}
        for name, old in fitted.items():
            new = getattr(self, name)
            if not _same_spec(new, old):
                raise ValueError(
                    f"{name}={new!r} was set after fit, but the network was built with "
                    f"{name}={old!r}: predictions would not follow it. Refit (fit with "
                    f"warm_start=False), or set {name}={old!r} back.")


def _same_spec(a, b):
    if a is b:
        return True
    if isinstance(a, torch.nn.Module) or callable(a) or type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 (an == that fails differs)
        return False
