"""FineTuneClassifier: frozen or fine-tuned transfer of a timm encoder, on skorch."""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import os
import time
import weakref

import numpy as np
import torch
from sklearn.base import ClassifierMixin, clone
from sklearn.metrics import accuracy_score
from sklearn.utils import check_random_state
from skorch import NeuralNet
from skorch.callbacks import EarlyStopping, EpochTimer, PassthroughScoring, PrintLog
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from .._encoders import no_class_token_message, resolve_device, resolve_encoder
from .._images import check_images, load_image, resize_image
from .._iterators import skorch_image_iterator
from ._augment import AUGMENTS, make_augment
from ._hyperrule import bit_hyperrule
from ._network import HEADS, POOLINGS, FineTuneNet, LinearHead, TransformerHead, Trunk
from ._schedules import BitSchedule, WarmupPlateau
from ._stored import StoredFeaturesMixin, _StoredDataset

__all__ = ["FineTuneClassifier"]

SCHEDULES = (None, "bit", "warmup_plateau")
_RESIZED = weakref.WeakKeyDictionary()  # frozen source module -> {size: resized copy}


class _AutoDevice(str):
    """The device that ``device='auto'`` resolved to, while a method runs."""


class ImageDataset(torch.utils.data.Dataset):
    """Image ``i`` decoded and resized on access (memory bounded by the batch)."""

    def __init__(self, images, size, interpolation, y=None):
        self.images = images
        self.size = tuple(size)
        self.interpolation = interpolation
        self.y = y

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = load_image(self.images, i)
        if tuple(x.shape[1:]) != self.size:  # (resizing to the same size is the identity)
            x = resize_image(x, self.size, interpolation=self.interpolation)
        return x, (0 if self.y is None else int(self.y[i]))


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




class FineTuneClassifier(StoredFeaturesMixin, ClassifierMixin, NeuralNet):
    """A timm encoder cut at ``layer``, partly or wholly frozen, with a trained head.

    One estimator covers the transfer protocols of fine-tuning studies as
    hyperparameters: frozen encoder + linear head (``freeze="all"``, "local"
    fine-tuning), unfrozen (``freeze="none"``, "global"), progressive freezing
    (``freeze=k``), beheading (``layer=k``), a DeiT-style transformer head
    (``head="transformer"``), another resolution (``img_size``) and the
    BiT-HyperRule (``schedule="bit"``). GridSearchCV or Optuna sweep them like any
    other parameter.

    Training runs on skorch: ``lr``, ``max_epochs``, ``batch_size``, ``optimizer__*``,
    ``callbacks``, ``history``, ``train_split`` and ``verbose`` behave as in any skorch
    net.

    Parameters
    ----------
    encoder : str, torch.nn.Module or callable
        A timm model name, a module or a zero-argument callable returning one, resolved
        as in :class:`~sklearn_endo.LayerFeatureTransformer`. The resolved encoder is
        never modified: the network trains a copy. ``clone()`` copies no weights.
    head : "linear", "transformer" or a timm ViT name, default="linear"
        ``"linear"``: a linear layer on pooled features (see ``pooling``).
        ``"transformer"``: a DeiT-style classifier on the patch tokens of ``layer``
        (prefix tokens dropped; CNN maps flattened to tokens): a linear projection to
        ``head_width``, its own class token and learned position embedding,
        ``head_depth`` timm ``Block``s, a LayerNorm; its class token classifies.
        A timm ViT name (e.g. ``"deit_tiny_patch16_224"``): that model's class token,
        position embedding (resampled bicubically to the token grid), all its blocks
        and its norm form the classifier, the tokens projected to its width (its patch
        embedding bypassed), pretrained when ``pretrained=True`` (offline without
        cached weights: ``WeightsUnavailableError``).
    layer : int, default=-1
        The cut: ``0`` is the embedding, ``i`` the output of block ``i``, negative
        counts from the end, exactly as ``LayerFeatureTransformer.layer``. Blocks after
        it are neither copied nor computed.
    freeze : "none", "all" or int, default="none"
        ``"none"``: everything trains. ``"all"``: the whole trunk is frozen and only the
        head trains. An int ``k`` in ``0..layer``: the embedding (everything that runs
        before block 1, e.g. patch embedding, position embedding and class token, or a
        CNN stem) and blocks ``1..k`` are frozen. Frozen parts stay in eval mode while
        training: BatchNorm statistics are not updated and dropout is off.
    pooling : {"mean", "max", "cls", "cls+mean"}, default="mean"
        Pooling for the linear head, with ``LayerFeatureTransformer``'s rules (``mean``
        skips class/register tokens; ``cls`` needs a class token).
    img_size : int, (int, int) or None, default=None
        Input size; default the encoder's pretrained config. A ViT's position embedding
        is interpolated bicubically from its pretrained grid; the size must be a
        multiple of its patch size.
    pretrained : bool, default=True
        Pretrained weights for a named encoder; offline with nothing cached this raises
        ``WeightsUnavailableError`` (never random weights silently).
    checkpoint_path : str or None, default=None
        Local weights for a named encoder.
    head_width, head_depth, head_heads : int, default=192, 1, 3
        Width, number of blocks and attention heads of ``head="transformer"``.
    dropout : float, default=0.0
        Dropout before the final linear layer.
    layer_decay : float in (0, 1] or None, default=None
        Layer-wise lr decay: the head trains at ``lr``, block ``i`` at
        ``lr * layer_decay ** (layer + 1 - i)``, the embedding at
        ``lr * layer_decay ** (layer + 1)``, set as explicit per-group lrs of the
        optimizer, so that skorch's ``LRScheduler`` and the schedules here keep the
        ratios. Modules between blocks (a CNN's downsamplers) go with the block
        before them.
    augment : None, "endoscopy" or callable, default=None
        Training-time augmentation of each image (after resizing, before
        normalisation), with ``torchvision.transforms.v2``. ``"endoscopy"``: horizontal
        and vertical flips, rotations by 0/90/180/270 degrees (0/180 for non-square
        inputs), brightness scaled by a factor in [0.8, 1.5] and, half of the time, a
        Gaussian blur with sigma in [0.1, 5]. Validation batches and prediction are not
        augmented. A callable maps one (3, H, W) float tensor in [0, 1] to another.
    schedule : {None, "bit", "warmup_plateau"}, default=None
        ``None``: the optimizer as given and only the callbacks you pass.
        ``"bit"``: the BiT-HyperRule (:func:`bit_hyperrule` of the training-set size,
        the input size and ``batch_size``): SGD with momentum 0.9 and no weight decay,
        the final linear layer initialised to zero, lr ``0.003 * batch_size / 512``
        (``lr`` is ignored) with linear warm-up and x0.1 decays stepped per batch, and
        ``ceil(steps / batches per epoch)`` epochs (``max_epochs`` is ignored; steps past
        the rule's end keep its last lr). The rule's MixUp alpha is used unless
        ``mixup`` is given. The rule's resolution is *not* applied: set ``img_size``.
        ``"warmup_plateau"``: AdamW (``optimizer__weight_decay``, default 0.05), linear
        warm-up over ``warmup_epochs``, lr x0.1 when ``valid_loss`` has not improved for
        ``patience`` epochs, and the weights of the best ``valid_loss`` epoch restored at
        the end; needs ``train_split``.
    warmup_epochs : float, default=1
        Warm-up length of ``schedule="warmup_plateau"``, in epochs.
    patience : int, default=3
        Plateau patience of ``schedule="warmup_plateau"``, in epochs.
    mixup : float or None, default=None
        MixUp alpha (0: off). ``None``: the BiT rule's alpha with ``schedule="bit"``,
        otherwise off.
    feature_store : "memory", str path or None, default="memory"
        Where the pooled rows of a frozen trunk are kept (a directory is shared by
        ``n_jobs`` workers and later runs; see Notes); ``None`` always trains through
        the encoder.
    classes : array-like or None, default=None
        All class labels, when ``y`` may not show all of them.
    random_state : int, RandomState or None, default=None
        Seeds head initialisation, shuffling, dropout and MixUp.
    optimizer : default=torch.optim.AdamW
    lr : float, default=1e-4
    max_epochs : int, default=10
    batch_size : int, default=32
    train_split : callable or None, default=None
        No validation split by default; pass e.g.
        ``skorch.dataset.ValidSplit(0.2, stratified=True)``.
    callbacks : list or None, default=None
        Added to the defaults (``epoch_timer``, ``train_loss``, ``valid_loss``, the
        schedule's callbacks, ``print_log``).
    warm_start, verbose, device, criterion, **kwargs
        As in skorch (``device="auto"`` picks cuda, then mps, then cpu).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    module_ : FineTuneNet
        The network: ``trunk`` (the beheaded encoder copy) and ``head``.
    encoder_ : torch.nn.Module
        The fine-tuned encoder as a plain timm module (a frozen copy of the original
        with the trained trunk weights loaded; blocks after ``layer`` keep the original
        weights), e.g. for ``LayerFeatureTransformer(encoder=clf.encoder_)``.
    layer_ : int
        The cut as a non-negative index; ``n_layers_`` the encoder's number of blocks.
    freeze_ : int
        Number of frozen blocks (``layer_`` for ``"all"``, -1 for ``"none"``).
    n_params_, n_trainable_params_ : int
        Parameters the network uses, and those that train.
    param_depths_ : dict
        Depth (0 embedding, ``i`` block ``i``) of each trunk parameter, used by
        ``layer_decay``.
    stored_features_ : {"pooled", "tokens", "boundary"} or False
        What of the frozen part the network was trained on (and ``predict`` reads):
        pooled rows from the feature store, float16 token maps at the cut, float16
        maps at the input of block ``freeze + 1`` (partial freezing), or neither.
    train_time_per_epoch_ : float
        Mean seconds per training epoch (without the one-off feature pass).
    feature_time_ : float
        Seconds spent computing stored features in ``fit`` (0 when not stored).
    inference_time_per_image_ : float
        Seconds per image of the latest ``predict``/``predict_proba`` call.
    history_ : skorch.history.History

    Notes
    -----
    **Frozen parts are computed once.** With no augmentation, no MixUp and
    ``feature_store`` set, the frozen part gives the same output every epoch and every
    candidate, so it is computed once per image:

    - ``freeze="all"`` (or ``freeze=layer``): one pass of the frozen trunk leaves both
      the pooled rows of the cut (every pooling, float32, in the feature store) and its
      token maps (float16, in a process-wide store bounded by
      ``SKLEARN_ENDO_TOKEN_BYTES``, 1 GiB by default; kept when the training set's maps
      fit). A linear head trains on the rows, a transformer head on the maps, so a
      search over heads and lrs encodes each image once whichever head comes first.
      Linear head: equal to training through the encoder to float32 round-off
      (tested to 1e-5); transformer head: to the float16 rounding of the tokens (tested
      to 5e-3 in probability). A transformer head whose maps do not fit trains through
      the encoder, with a warning.
    - ``freeze=k`` below the cut: the input of block ``k + 1`` is stored as float16 in
      the same bounded store and blocks ``k+1..layer`` and the head train on it. This
      needs the blocks to form a chain (nothing else runs between them), which ``fit``
      checks on a probe image; where it does not hold (e.g. a ConvNeXt downsampler
      between the stored block and the cut), or the maps do not fit, it trains through
      the encoder, with a warning. Equal to training through the encoder to the
      float16 rounding of the maps (tested: parameters within 1% of their scale,
      probabilities to 1e-4, after 6 epochs of SGD).

    ``predict`` reads the same stores.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.finetune import FineTuneClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    >>> y = np.array([0, 1] * 4)
    >>> clf = FineTuneClassifier("resnet18", pretrained=False, img_size=32, layer=4,
    ...                          freeze=2, max_epochs=1, batch_size=4, random_state=0)
    >>> clf.fit(X, y).predict(X[:2]).shape
    (2,)
    >>> clf.n_layers_, clf.layer_, clf.freeze_
    (8, 4, 2)
    """

    def __init__(self, encoder, *, head="linear", layer=-1, freeze="none", pooling="mean",
                 img_size=None, pretrained=True, checkpoint_path=None, head_width=192,
                 head_depth=1, head_heads=3, dropout=0.0, layer_decay=None, augment=None,
                 schedule=None, warmup_epochs=1,
                 patience=3, mixup=None, feature_store="memory", classes=None,
                 random_state=None, criterion=torch.nn.CrossEntropyLoss,
                 optimizer=torch.optim.AdamW, lr=1e-4, max_epochs=10, batch_size=32,
                 train_split=None, callbacks=None, warm_start=False, verbose=0,
                 device="auto", **kwargs):
        self.encoder = encoder
        self.head = head
        self.layer = layer
        self.freeze = freeze
        self.pooling = pooling
        self.img_size = img_size
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        self.head_width = head_width
        self.head_depth = head_depth
        self.head_heads = head_heads
        self.dropout = dropout
        self.layer_decay = layer_decay
        self.augment = augment
        self.schedule = schedule
        self.warmup_epochs = warmup_epochs
        self.patience = patience
        self.mixup = mixup
        self.feature_store = feature_store
        self.classes = classes
        self.random_state = random_state
        super().__init__(None, criterion, optimizer=optimizer, lr=lr,
                         max_epochs=max_epochs, batch_size=batch_size,
                         train_split=train_split, callbacks=callbacks,
                         warm_start=warm_start, verbose=verbose, device=device, **kwargs)

    # ------------------------------------------------------------ sklearn protocol
    def __sklearn_clone__(self):
        # the encoder spec (a module may hold hundreds of MB) is shared, never copied
        params = self.get_params(deep=False)
        shared = params.pop("encoder")
        params.pop("module", None)  # the network is built by initialize_module
        params = {k: clone(v, safe=False) for k, v in params.items()}
        return type(self)(shared, **params)

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_handle_", "_encoder_cache_", "augment_"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        spec = state.get("device")
        if spec == "auto":
            state = dict(state, device=resolve_device("auto").type)
        super().__setstate__(state)
        if spec == "auto":
            self.device = "auto"

    # ------------------------------------------------------------ validation
    def _check_params(self):
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

    # ------------------------------------------------------------ skorch hooks
    @property
    def _default_callbacks(self):
        cbs = [
            ("epoch_timer", EpochTimer()),
            ("train_loss", PassthroughScoring(name="train_loss", on_train=True)),
            ("valid_loss", PassthroughScoring(name="valid_loss")),
        ]
        plan = getattr(self, "_plan_", None) or {}
        if self.schedule == "bit" and "rule" in plan:
            cbs.append(("bit_schedule", BitSchedule(plan["rule"])))
        elif self.schedule == "warmup_plateau":
            cbs.append(("warmup_plateau", WarmupPlateau(plan.get("warmup_steps", 0),
                                                        patience=self.patience)))
            cbs.append(("best_checkpoint", EarlyStopping(
                monitor="valid_loss", patience=10**9, load_best=True, sink=lambda *a: None)))
        cbs.append(("print_log", PrintLog()))
        return cbs

    def initialize(self):
        with self._resolved_device(), self._seeded():
            return super().initialize()

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

    def get_iterator(self, dataset, training=False):
        return skorch_image_iterator(self, dataset, training)

    def train_step_single(self, batch, **fit_params):
        alpha = getattr(self, "mixup_", 0.0)
        augment = getattr(self, "augment_", None)
        if not alpha and augment is None:
            return super().train_step_single(batch, **fit_params)
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        Xi = to_tensor(Xi, device=self.device)
        yi = to_tensor(yi, device=self.device)
        if augment is not None:
            Xi = torch.stack([augment(x) for x in Xi])
        if not alpha:
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        else:
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            perm = torch.randperm(Xi.shape[0], device=Xi.device)
            y_pred = self.infer(lam * Xi + (1 - lam) * Xi[perm], **fit_params)
            loss = (lam * self.get_loss(y_pred, yi, X=Xi, training=True)
                    + (1 - lam) * self.get_loss(y_pred, yi[perm], X=Xi, training=True))
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}

    # ------------------------------------------------------------ fitting
    def fit(self, X, y, **fit_params):
        """Train on images ``X`` and labels ``y``.

        Parameters
        ----------
        X : array-like of images
            ``(N, H, W[, C])`` uint8 in [0, 255] or floats in [0, 1], a list of image
            paths (decoded batch by batch) or a list of PIL images.
        y : array-like of shape (N,)
        **fit_params
            Passed to skorch.

        Returns
        -------
        self
        """
        self._check_params()
        images = check_images(X, name="X", min_samples=2)
        y_enc, classes_ = self._encode_labels(y, len(images))
        if (self.warm_start and self.initialized_
                and getattr(self, "classes_", None) is not None
                and not np.array_equal(self.classes_, classes_)):
            raise ValueError(
                f"warm_start=True but y has classes {classes_.tolist()} and the net was "
                f"fitted on {self.classes_.tolist()}; pass classes=[...] to fix them.")
        self.classes_ = classes_
        with self._resolved_device(), self._seeded():
            if not (self.warm_start and self.initialized_):
                self._plan_ = self._make_plan(images)
                self.initialize()
            else:
                self._plan_ = self._make_plan(images)
            self.mixup_ = self._plan_["mixup"]
            self.augment_ = make_augment(self.augment, self.input_size_)
            t0 = time.perf_counter()
            # a DataLoader draws from the global RNG: keep the training's draws as they
            # are without stored features
            with torch.random.fork_rng(devices=[]):
                self.stored_features_ = self._stored_kind(images)
                self.module_.stored_input = self._stored_input()
                if self.stored_features_:
                    data = _StoredDataset(self._stored(images), y_enc)
            if self.stored_features_:
                self.feature_time_ = time.perf_counter() - t0
            else:
                data = ImageDataset(images, self.input_size_, self._interp(), y_enc)
                self.feature_time_ = 0.0
            epochs = self._plan_.get("epochs", self.max_epochs)
            self.partial_fit(data, y_enc, epochs=epochs, **fit_params)
        durs = [d for d in self.history[:, "dur"]] if len(self.history) else []
        self.train_time_per_epoch_ = float(np.mean(durs[-epochs:])) if durs else 0.0
        self._encoder_cache_ = None
        return self

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Train more epochs without re-initialising (X as in ``fit``)."""
        if isinstance(X, (ImageDataset, _StoredDataset)):  # from fit
            if not self.initialized_:
                self.initialize()
            self.notify("on_train_begin", X=X, y=y)
            try:
                self.fit_loop(X, y, **fit_params)
            except KeyboardInterrupt:
                pass
            self.notify("on_train_end", X=X, y=y)
            return self
        if not getattr(self, "initialized_", False):
            return self.fit(X, y, **fit_params)
        warm = self.warm_start
        self.warm_start = True
        try:
            return self.fit(X, y, **fit_params)
        finally:
            self.warm_start = warm

    def _make_plan(self, images):
        n = len(images)
        plan = {"mixup": float(self.mixup) if self.mixup is not None else 0.0}
        n_train = n
        split = self.train_split
        if split is not None:
            frac = getattr(split, "cv", 5)
            frac = 1 / frac if isinstance(frac, numbers.Integral) else float(frac)
            n_train = max(1, int(round(n * (1 - frac))))
        bs = n_train if self.batch_size == -1 else min(self.batch_size, n_train)
        per_epoch = max(1, n_train // bs if n_train % bs == 1 else math.ceil(n_train / bs))
        if self.schedule == "bit":
            size = self._input_hint(images)
            rule = bit_hyperrule(n_train, size, bs)
            plan["rule"] = rule
            plan["epochs"] = math.ceil(rule.steps / per_epoch)
            if self.mixup is None:
                plan["mixup"] = rule.mixup_alpha
        elif self.schedule == "warmup_plateau":
            if split is None:
                raise ValueError(
                    "schedule='warmup_plateau' lowers the lr on a validation plateau and "
                    "keeps the best validation epoch, so it needs train_split; pass e.g. "
                    "train_split=skorch.dataset.ValidSplit(0.2, stratified=True).")
            plan["warmup_steps"] = int(round(float(self.warmup_epochs) * per_epoch))
        return plan

    @staticmethod
    def _input_hint(images):
        if images.kind == "array":
            return tuple(images.data.shape[1:3])
        item = load_image(images, 0)
        return tuple(item.shape[1:])

    def _interp(self):
        return self._get_handle().data_config["interpolation"]

    def _encode_labels(self, y, n):
        if y is None:
            raise ValueError("y is None; FineTuneClassifier needs one label per image.")
        y = np.asarray(y)
        y = y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"y has shape {y.shape} but X has {n} images; pass one label "
                             f"per image.")
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise ValueError("y contains NaN; drop those samples or give them a label.")
        if self.classes is not None:
            classes_ = np.asarray(self.classes)
            unseen = np.setdiff1d(y, classes_)
            if unseen.size:
                raise ValueError(f"y has labels {unseen[:5].tolist()} that are not in "
                                 f"classes={classes_.tolist()}.")
        else:
            classes_ = np.unique(y)
            if classes_.size < 2:
                raise ValueError(f"y has a single class {classes_[0]!r}; a classifier "
                                 f"needs at least 2 (or pass classes=[...]).")
        return np.searchsorted(classes_, y).astype(np.int64), classes_

    # ------------------------------------------------------------ prediction
    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns as ``classes_``."""
        self.check_is_fitted()
        images = check_images(X, name="X")
        t0 = time.perf_counter()
        out = []
        with self._resolved_device(), torch.inference_mode():
            self._set_training(False)
            if getattr(self, "stored_features_", False):
                self.module_.stored_input = self._stored_input()
                out.extend(self._predict_stored(images))
            else:
                self.module_.stored_input = None
                dataset = ImageDataset(images, self.input_size_, self._interp())
                for xb, _ in self.get_iterator(dataset, training=False):
                    xb = to_tensor(xb, device=self.device)
                    out.append(self.module_(xb).float().softmax(1).cpu().numpy())
        self.inference_time_per_image_ = (time.perf_counter() - t0) / len(images)
        return np.concatenate(out)

    def predict(self, X):
        """Class labels, from ``classes_``."""
        return self.classes_[self.predict_proba(X).argmax(1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy."""
        return accuracy_score(y, self.predict(X), sample_weight=sample_weight)

    @property
    def encoder_(self):
        """The fine-tuned encoder as a plain, frozen timm module (built on first use)."""
        self.check_is_fitted()
        cached = getattr(self, "_encoder_cache_", None)
        if cached:  # a list: skorch refuses modules set outside initialize
            return cached[0]
        handle = self._get_handle()
        full = copy.deepcopy(self._source(handle))
        state = self.module_.trunk.encoder.state_dict()
        own = full.state_dict()
        # dropped blocks are placeholders in the trunk: load only what the trunk kept
        full.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        for p in full.parameters():
            p.requires_grad_(False)
        self._encoder_cache_ = [full.eval()]
        return full

    # ------------------------------------------------------------ plumbing
    def set_params(self, **kwargs):
        with self._resolved_device():
            super().set_params(**kwargs)
        return self

    def load_params(self, *args, **kwargs):
        with self._resolved_device():
            return super().load_params(*args, **kwargs)

    @contextlib.contextmanager
    def _resolved_device(self):
        spec = self.device
        if not (isinstance(spec, str) and spec == "auto") or isinstance(spec, _AutoDevice):
            yield
            return
        marker = self.device = _AutoDevice(resolve_device("auto").type)
        try:
            yield
        finally:
            if self.device is marker:
                self.device = spec

    @contextlib.contextmanager
    def _seeded(self):
        if self.random_state is None:
            yield
            return
        rs = self.random_state
        seed = (int(rs) if isinstance(rs, numbers.Integral)
                else int(check_random_state(rs).randint(2**31 - 1)))
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
