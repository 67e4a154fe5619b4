"""FineTuneClassifier: frozen or fine-tuned transfer of a timm encoder, on skorch."""

from __future__ import annotations

import copy
import math
import numbers
import time
import warnings

import numpy as np
import torch
from sklearn.base import ClassifierMixin, clone
from sklearn.metrics import accuracy_score
from skorch import NeuralNet
from skorch.callbacks import EarlyStopping, EpochTimer, PassthroughScoring, PrintLog
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from .._images import check_images, image_sizes
from .._iterators import skorch_image_iterator
from .._skorch import SkorchEstimatorMixin, check_sample_weight
from ._augment import make_augment
from ._build import ImageDataset, NetworkBuildMixin
from ._hyperrule import bit_hyperrule
from ._schedules import BitSchedule, WarmupPlateau
from ._stored import StoredFeaturesMixin, _StoredDataset

__all__ = ["FineTuneClassifier", "ImageDataset"]

#: schedule="bit" warns when its steps make more epochs than this
BIT_EPOCHS_WARN = 50


class FineTuneClassifier(SkorchEstimatorMixin, NetworkBuildMixin, StoredFeaturesMixin,
                         ClassifierMixin, NeuralNet):
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
        ``mixup`` is given. Above 50 epochs (a small set) ``fit`` warns. The rule's
        resolution is *not* applied: set ``img_size``.
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
    verbose : int, default=1
        1 shows progress: a bar over the one-off feature pass of a frozen part (when
        ``fit`` computes stored features) and skorch's epoch table, a row per epoch as
        it ends (train loss, valid loss with a ``train_split``, seconds); 0 prints
        nothing.
    warm_start, device, criterion, **kwargs
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
    fitted_structure_ : dict
        The parameters the network was built with (``encoder``, ``head``, ``layer``,
        ``freeze``, ``pooling``, ``img_size``, ...): changing one after ``fit``
        makes ``predict`` raise until a refit.
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
    ...                          freeze=2, max_epochs=1, batch_size=4, random_state=0,
    ...                          verbose=0)
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
                 train_split=None, callbacks=None, warm_start=False, verbose=1,
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

    def _get_param_names(self):
        # the network is built by initialize_module: ``module`` is not a parameter
        return [k for k in super()._get_param_names() if k != "module"]

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_handle_", "_encoder_cache_", "augment_"):
            state.pop(key, None)
        return state

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
            yp = ({k: v[perm] for k, v in yi.items()} if isinstance(yi, dict)
                  else yi[perm])
            loss = (lam * self.get_loss(y_pred, yi, X=Xi, training=True)
                    + (1 - lam) * self.get_loss(y_pred, yp, X=Xi, training=True))
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}

    def get_loss(self, y_pred, y_true, X=None, training=False):
        if not isinstance(y_true, dict):
            return super().get_loss(y_pred, y_true, X=X, training=training)
        # with sample weights: the batch's weighted mean of the per-sample loss
        y = to_tensor(y_true["y"], device=self.device)
        w = to_tensor(y_true["weight"], device=self.device).float()
        crit = self.criterion_
        reduction = getattr(crit, "reduction", None)
        if reduction is None:
            raise ValueError(
                f"sample_weight needs a criterion with a 'reduction' attribute (a torch "
                f"loss), not {type(crit).__name__}; drop sample_weight or use one.")
        crit.reduction = "none"
        try:
            per_sample = crit(y_pred, y).float()
        finally:
            crit.reduction = reduction
        return (w * per_sample).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)

    # ------------------------------------------------------------ fitting
    def fit(self, X, y, sample_weight=None, **fit_params):
        """Train on images ``X`` and labels ``y``.

        Parameters
        ----------
        X : array-like of images
            ``(N, H, W[, C])`` uint8 in [0, 255] or floats in [0, 1], a list of image
            paths (decoded batch by batch) or a list of PIL images.
        y : array-like of shape (N,)
        sample_weight : array-like of shape (N,) or None, default=None
            Non-negative weight of each image in the loss: each batch's loss is the
            weighted mean ``sum(w_i * loss_i) / sum(w_i)`` (a weight counts like
            repeating the image within its batch). Sliced per fold by GridSearchCV.
        **fit_params
            Passed to skorch.

        Returns
        -------
        self
        """
        return self._fit(X, y, None, sample_weight, fit_params)

    def _fit(self, X, y, classes, sample_weight, fit_params):
        self._check_params()
        images = check_images(X, name="X", min_samples=2)
        y_enc, classes_ = self._encode_labels(y, len(images), classes)
        weights = check_sample_weight(sample_weight, len(images))
        if self.warm_start and self.initialized_:
            self._check_structure()
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
                    self._feature_progress_ = bool(self.verbose)
                    try:
                        data = _StoredDataset(self._stored(images), y_enc, weights)
                    finally:
                        del self._feature_progress_
            if self.stored_features_:
                self.feature_time_ = time.perf_counter() - t0
            else:
                data = ImageDataset(images, self.input_size_, self._interp(), y_enc,
                                    weights)
                self.feature_time_ = 0.0
            epochs = self._plan_.get("epochs", self.max_epochs)
            self.partial_fit(data, y_enc, epochs=epochs, **fit_params)
        durs = [d for d in self.history[:, "dur"]] if len(self.history) else []
        self.train_time_per_epoch_ = float(np.mean(durs[-epochs:])) if durs else 0.0
        self._encoder_cache_ = None
        return self

    def partial_fit(self, X, y=None, classes=None, sample_weight=None, **fit_params):
        """Train more epochs without re-initialising (X as in ``fit``).

        ``classes`` (all labels, when ``y`` may not show all of them) fixes the classes
        of the first call, as ``classes=`` at construction does.
        """
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
            return self._fit(X, y, classes, sample_weight, fit_params)
        warm = self.warm_start
        self.warm_start = True
        try:
            return self._fit(X, y, classes, sample_weight, fit_params)
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
            if plan["epochs"] > BIT_EPOCHS_WARN:
                warnings.warn(
                    f"schedule='bit' follows BiT's rule for {n_train} training images: "
                    f"{rule.steps} steps of batch_size={bs}, that is {plan['epochs']} "
                    f"epochs over so few images (max_epochs is ignored). To train "
                    f"shorter, use schedule=None or 'warmup_plateau' with max_epochs=..., "
                    f"or a smaller batch_size (more steps per epoch).", UserWarning,
                    stacklevel=3)
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
        return tuple(image_sizes(images, [0])[0])  # headers only, no decoding

    def _interp(self):
        return self._get_handle().data_config["interpolation"]

    def _encode_labels(self, y, n, classes=None):
        if y is None:
            raise ValueError("y is None; FineTuneClassifier needs one label per image.")
        y = np.asarray(y)
        y = y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"y has shape {y.shape} but X has {n} images; pass one label "
                             f"per image.")
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise ValueError("y contains NaN; drop those samples or give them a label.")
        if classes is None:
            classes = self.classes
        if classes is None and getattr(self, "initialized_", False) and self.warm_start:
            classes = getattr(self, "classes_", None)  # more epochs: the fitted classes
        if classes is not None:
            classes_ = np.asarray(classes)
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
        self._check_fitted()
        self._check_structure()
        images = check_images(X, name="X")
        interpolation = self._interp()  # the encoder handle, outside inference mode
        t0 = time.perf_counter()
        out = []
        with self._resolved_device(), torch.inference_mode():
            self._set_training(False)
            # feature_store=None set after a stored fit: through the encoder, which
            # gives the stored path's output (the frozen part is in module_)
            if getattr(self, "stored_features_", False) and self.feature_store is not None:
                self.module_.stored_input = self._stored_input()
                out.extend(self._predict_stored(images))
            else:
                self.module_.stored_input = None
                dataset = ImageDataset(images, self.input_size_, interpolation)
                for xb, _ in self.get_iterator(dataset, training=False):
                    xb = to_tensor(xb, device=self.device)
                    out.append(self.module_(xb).float().softmax(1).cpu().numpy())
        self.inference_time_per_image_ = (time.perf_counter() - t0) / len(images)
        return np.concatenate(out)

    def predict(self, X):
        """Class labels, from ``classes_``."""
        self._check_fitted()
        return self.classes_[self.predict_proba(X).argmax(1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy."""
        self._check_fitted()
        return accuracy_score(y, self.predict(X), sample_weight=sample_weight)

    @property
    def encoder_(self):
        """The fine-tuned encoder as a plain, frozen timm module (built on first use)."""
        self._check_fitted()
        self._check_structure()
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
