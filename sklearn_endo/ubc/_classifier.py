"""UBCClassifier: the U-Net-boosted multi-task classifier as a skorch estimator."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.metrics import accuracy_score
from skorch import NeuralNet
from skorch.callbacks import EpochTimer, LRScheduler, PassthroughScoring, PrintLog
from skorch.utils import to_tensor

from .._images import check_images
from .._iterators import skorch_image_iterator
from .._skorch import SkorchEstimatorMixin
from ._data import UBCDataset, check_sample_weight, encode_labels
from ._loss import UNLABELED, UBCLoss
from ._masks import check_masks
from ._model import POOLINGS, UBCNet, load_encoder_checkpoint, pretrained_kwargs

__all__ = ["UBCClassifier", "NoMasksWarning", "UBCDataset"]


class NoMasksWarning(UserWarning):
    """``fit`` got no mask at all while ``alpha < 1``: the Dice term is zero."""



class UBCClassifier(SkorchEstimatorMixin, ClassifierMixin, NeuralNet):
    """U-Net-boosted classifier: an encoder shared by a classification head and a decoder.

    One network is trained on ``alpha * CE + (1 - alpha) * (1 - Dice)``: the
    cross-entropy of the class head on the deepest encoder features, and the smoothed
    Sorensen-Dice of the decoder's mask. Pixel masks add supervision where labels are
    few. A sample without a mask (``None`` in ``masks``) contributes only the CE term; a
    sample without a label (``y = -1``, see ``unlabeled``) contributes only the Dice term.
    ``alpha=1`` is the plain classifier baseline (the decoder is not trained), ``alpha=0``
    trains segmentation only.

    Training runs on skorch: ``lr``, ``max_epochs``, ``batch_size``, ``optimizer__*``,
    ``callbacks`` (``EarlyStopping``, ``Checkpoint``, ...), ``history``, ``train_split``,
    ``save_params``/``load_params`` and ``verbose`` behave as in any skorch net.

    Parameters
    ----------
    encoder : str, default="resnet34"
        A segmentation_models_pytorch encoder (``"resnet34"``: the paper's model, 24.4M
        parameters with the U-Net decoder), ``"tu-<timm name>"`` or a timm CNN name
        (used through smp's timm universal encoder).
    architecture : str, default="unet"
        smp decoder architecture: ``"unet"``, ``"fpn"``, ``"unetplusplus"``, ...
    alpha : float in [0, 1], default=0.5
        Weight of the classification term; ``1 - alpha`` weighs the Dice term.
    pooling : {"auto", "mask", "avg"}, default="auto"
        Class head input. ``"avg"``: global average of the deepest features (the
        paper). ``"mask"``: that average concatenated with the average weighted by the
        predicted mask (mask-guided pooling; the mask is detached, so the decoder is
        trained by the Dice term only). ``"auto"``: ``"mask"`` when ``alpha < 1`` and
        ``"avg"`` when ``alpha == 1``, so that ``alpha=1`` stays the plain classifier.
        Mask-guided pooling is the default because it measured better: on
        ``make_lesions(task="presence", n_distractors=3)`` with 50 images per class
        (resnet18 from scratch, 64 px, 40 epochs, 8 seeds, 200 test images) test
        accuracy was 0.84 against 0.73 for average pooling and 0.61 for ``alpha=1``
        (``examples/ubc_small_sample.py``); with 20 or fewer per class all three were
        at chance.
    pretrained : bool, default=True
        Start from ImageNet encoder weights. Offline and without cached weights this
        raises :class:`~sklearn_endo._encoders.WeightsUnavailableError` at once; use
        ``pretrained=False`` for random weights. Ignored with ``checkpoint_path``.
    checkpoint_path : str, os.PathLike or None, default=None
        Encoder weights to start from instead: a timm state dict of the encoder's timm
        model, such as ``SelfSupervisedPretrainer.save_encoder`` writes
        (``.safetensors``; other suffixes are read with
        ``torch.load(weights_only=True)``). The file must hold exactly the timm
        model's weights, names and shapes (its classifier head may be there or not);
        every weight of the smp encoder is set from it (smp's ResNets share timm's
        names; for ``"tu-"`` encoders timm's ``stages_1``-style names are mapped back)
        at every ``initialize``, that is, at the start of every ``fit`` without
        ``warm_start``. Anything else is a ``ValueError`` that names the keys. With
        ``in_chans=1`` the first convolution's weights are summed over colour, as for
        pretrained weights.
    freeze_encoder : bool, default=False
        Train the decoder and head only (encoder weights and BatchNorm statistics fixed).
    in_chans : {1, 3}, default=3
        Channels the network sees: 3 for endoscopy, 1 for grey scans (MRI/CT slices;
        colour inputs are averaged to grey).
    image_size : int or (int, int), default=256
        Size every image (and mask) is resized to; divisible by ``2 ** encoder_depth``.
    encoder_depth : int in [3, 5], default=5
        Number of encoder stages used.
    n_mask_classes : int, default=1
        1: binary masks (bool or {0, 1}). K >= 2: integer label maps 0..K-1 (0 is
        background; the Dice term is the mean over classes 1..K-1).
    dice_smooth : float, default=1.0
        Epsilon of the smoothed Dice ``(2 sum(pg) + eps) / (sum(p) + sum(g) + eps)``.
    dropout : float, default=0.0
        Dropout before the class head's linear layer.
    unlabeled : scalar or None, default=-1
        The value of ``y`` that marks a sample without a label. ``None`` entries in
        ``y`` are always unlabeled (use them with string labels).
    classes : array-like or None, default=None
        All class labels, if ``y`` may not show every class (as in skorch); needed to
        ``initialize()`` a net before ``load_params`` without fitting.
    deep_supervision : bool or sequence of float, default=False
        Auxiliary mask losses on the decoder's intermediate blocks (``"unet"`` and
        ``"manet"``): a 1x1 convolution per block but the last, its logits upsampled
        to the mask size, each adding a Dice term. The Dice term becomes
        ``(L + sum_k w_k L_k) / (1 + sum_k w_k)``; True takes ``w = 0.5`` for the block
        before the last, ``0.25`` for the one before, ... (halving towards the coarsest);
        a sequence gives the ``encoder_depth - 1`` weights, coarsest first. Training
        only: prediction uses the main mask head.
    random_state : int, RandomState or None, default=None
        Seeds weight initialisation, shuffling and dropout (reproducible on CPU).
    module, criterion : default=UBCNet, UBCLoss
        The network and loss classes (skorch's ``module__*``/``criterion__*`` override
        their arguments).
    optimizer : default=torch.optim.Adam
    lr : float, default=1e-3
    max_epochs : int, default=40
    batch_size : int, default=16
    train_split : callable or None, default=None
        No internal validation split by default (sets are small); pass e.g.
        ``skorch.dataset.ValidSplit(5, stratified=True)`` for a ``valid_loss`` column
        and early stopping.
    callbacks : list or None, default=None
        Added to the defaults: ``epoch_timer``, ``train_loss``, ``valid_loss``,
        ``lr_scheduler`` (StepLR, gamma 0.9 every 5 epochs, as in the paper; change it
        with ``callbacks__lr_scheduler__gamma=...`` or drop it with
        ``callbacks__lr_scheduler=None``) and ``print_log``.
    warm_start : bool, default=False
    verbose : int, default=1
        1 prints skorch's epoch table, a row per epoch as it ends (train loss, valid
        loss with a ``train_split``, seconds); 0 prints nothing.
    device : str, default="auto"
        ``"auto"`` picks cuda, then mps, then cpu.
    **kwargs
        Other skorch arguments (``iterator_train__num_workers``, ``optimizer__*``...).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    module_ : UBCNet
        The trained network.
    pooling_ : {"avg", "mask"}
        The class-head pooling in use (``pooling`` with ``"auto"`` resolved).
    history_ : skorch.history.History
        Per-epoch and per-batch records.

    See Also
    --------
    sklearn_endo.LayerFeatureTransformer : features of a frozen encoder for linear probes.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo import UBCClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    >>> y = np.array(["polyp", "normal"] * 4)
    >>> masks = rng.random((8, 32, 32)) > 0.5
    >>> clf = UBCClassifier("resnet18", pretrained=False, image_size=32,
    ...                     encoder_depth=3, max_epochs=1, batch_size=4,
    ...                     random_state=0, verbose=0).fit(X, y, masks=masks)
    >>> clf.predict(X[:2]).shape, clf.predict_masks(X[:2]).shape
    ((2,), (2, 32, 32))
    """

    def __init__(self, encoder="resnet34", *, architecture="unet", alpha=0.5,
                 pooling="auto", pretrained=True, checkpoint_path=None,
                 freeze_encoder=False, in_chans=3,
                 image_size=256, encoder_depth=5, n_mask_classes=1, dice_smooth=1.0,
                 dropout=0.0, unlabeled=-1, classes=None, deep_supervision=False,
                 random_state=None, module=UBCNet, criterion=UBCLoss,
                 optimizer=torch.optim.Adam, lr=1e-3, max_epochs=40, batch_size=16,
                 train_split=None, callbacks=None, warm_start=False, verbose=1,
                 device="auto", **kwargs):
        self.encoder = encoder
        self.architecture = architecture
        self.alpha = alpha
        self.pooling = pooling
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        self.freeze_encoder = freeze_encoder
        self.in_chans = in_chans
        self.image_size = image_size
        self.encoder_depth = encoder_depth
        self.n_mask_classes = n_mask_classes
        self.dice_smooth = dice_smooth
        self.dropout = dropout
        self.unlabeled = unlabeled
        self.classes = classes
        self.deep_supervision = deep_supervision
        self.random_state = random_state
        super().__init__(module, criterion, optimizer=optimizer, lr=lr,
                         max_epochs=max_epochs, batch_size=batch_size,
                         train_split=train_split, callbacks=callbacks,
                         warm_start=warm_start, verbose=verbose, device=device, **kwargs)

    # ------------------------------------------------------------ skorch hooks
    @property
    def _default_callbacks(self):
        return [
            ("epoch_timer", EpochTimer()),
            ("train_loss", PassthroughScoring(name="train_loss", on_train=True)),
            ("valid_loss", PassthroughScoring(name="valid_loss")),
            ("lr_scheduler", LRScheduler(policy=torch.optim.lr_scheduler.StepLR,
                                         step_size=5, gamma=0.9)),
            ("print_log", PrintLog()),
        ]

    def initialize_module(self):
        if getattr(self, "classes_", None) is None:
            if self.classes is None:
                raise ValueError(
                    "UBCClassifier needs its classes to build the class head: call fit, or "
                    "pass classes=[...] before initialize() and load_params()."
                )
            self.classes_ = np.asarray(self.classes)
        self._check_settings(warn=False)
        self.pooling_ = self.pooling
        if self.pooling == "auto":
            self.pooling_ = "avg" if self.alpha == 1 else "mask"
        weights = pretrained_kwargs(self.encoder,
                                    self.pretrained and self.checkpoint_path is None)
        kwargs = dict(
            encoder=self.encoder, n_classes=len(self.classes_),
            architecture=self.architecture, encoder_depth=self.encoder_depth,
            encoder_weights=weights.pop("encoder_weights"), encoder_kwargs=weights,
            in_chans=self.in_chans, n_mask_classes=self.n_mask_classes,
            pooling=self.pooling_, dropout=self.dropout,
            deep_supervision=bool(self.deep_supervision),
        )
        kwargs.update(self.get_params_for("module"))
        self.module_ = self.initialized_instance(self.module, kwargs)
        if self.checkpoint_path is not None:
            load_encoder_checkpoint(self.module_.seg.encoder, self.encoder,
                                    self.checkpoint_path, in_chans=self.in_chans)
        if self.freeze_encoder:
            self.module_.seg.freeze_encoder()
        return self

    def initialize_criterion(self):
        kwargs = dict(alpha=self.alpha, dice_smooth=self.dice_smooth,
                      n_mask_classes=self.n_mask_classes, aux_weights=self._aux_weights())
        kwargs.update(self.get_params_for("criterion"))
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        return self

    def get_iterator(self, dataset, training=False):
        return skorch_image_iterator(self, dataset, training)

    def infer(self, x, **fit_params):
        x = to_tensor(x, device=self.device)
        with_masks = self.alpha < 1 or not self.module_.training
        return self.module_(x, with_masks=with_masks, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        logits, mask_logits, *aux = y_pred
        t = to_tensor(y_true, device=self.device)
        args = (logits, mask_logits, t["y"], t["mask"], t["has_mask"])
        kw = {"aux_mask_logits": aux[0]} if aux else {}
        if "weight" in t:  # only then, so that a criterion without sample_weight works
            kw["sample_weight"] = t["weight"]
        return self.criterion_(*args, **kw)

    def _aux_weights(self):
        """Weights of the deep-supervision Dice terms (() without it)."""
        if not self.deep_supervision:
            return ()
        from ._deep import resolve_weights

        module = getattr(self, "module_", None)
        n = len(module.aux.heads) if getattr(module, "aux", None) is not None else (
            self.encoder_depth - 1)
        return resolve_weights(self.deep_supervision, n)

    # ------------------------------------------------------------ fitting
    def fit(self, X, y, masks=None, sample_weight=None, **fit_params):
        """Train on images ``X``, labels ``y`` and optional pixel ``masks``.

        Parameters
        ----------
        X : array-like of images
            ``(N, H, W[, C])`` uint8 in [0, 255] or floats in [0, 1], a list of image
            paths (decoded lazily, batch by batch) or a list of PIL images.
        y : array-like of shape (N,)
            Labels of any type; ``unlabeled`` (default -1) or None marks a sample
            without a label (it then contributes the Dice term only).
        masks : array (N, H, W), sequence of N entries, or None
            Binary masks (bool/{0, 1}) or label maps, the same size as their image;
            in a sequence, entries are mask paths (JPEG masks are thresholded), 2-D
            arrays or None (no mask: the sample contributes the CE term only).
            A fit parameter, so GridSearchCV slices it per fold and a Pipeline routes
            it as ``ubcclassifier__masks``.
        sample_weight : array-like of shape (N,) or None, default=None
            Non-negative weight of each sample in both loss terms: each batch's CE
            and Dice terms become weighted means (see :class:`UBCLoss`). Sliced per
            fold by GridSearchCV and routed as ``ubcclassifier__sample_weight`` by a
            Pipeline, like ``masks``. Scoring in a search stays unweighted unless
            metadata routing is enabled (``set_score_request``).
        **fit_params
            Passed to skorch (module forward and ``train_split``).

        Returns
        -------
        self
        """
        dataset, y_enc = self._prepare(X, y, masks, None, sample_weight)
        with self._resolved_device(), self._seeded():
            super().fit(dataset, y_enc, **fit_params)
        return self

    def partial_fit(self, X, y=None, classes=None, masks=None, sample_weight=None,
                    **fit_params):
        """Train for ``max_epochs`` more epochs without re-initialising (see fit)."""
        if isinstance(X, UBCDataset):  # called by NeuralNet.fit
            return super().partial_fit(X, y, classes, **fit_params)
        dataset, y_enc = self._prepare(X, y, masks, classes, sample_weight)
        with self._resolved_device(), self._seeded():
            super().partial_fit(dataset, y_enc, **fit_params)
        return self

    def _prepare(self, X, y, masks, classes, sample_weight=None):
        self._check_settings()
        images = check_images(X, name="X", min_samples=2)
        y_enc, classes_ = encode_labels(
            y, len(images), classes if classes is not None else self.classes, self.unlabeled)
        weights = check_sample_weight(sample_weight, len(images))
        mask_set = check_masks(masks, images, n_mask_classes=self.n_mask_classes)
        n_labelled, n_masks = int((y_enc != UNLABELED).sum()), int(mask_set.has.sum())
        if self.alpha > 0 and n_labelled == 0:
            raise ValueError(
                f"y has no labelled sample (all are unlabeled={self.unlabeled!r}) but "
                f"alpha={self.alpha} weighs a classification term; label some samples or "
                f"set alpha=0 with classes=[...] to train segmentation only."
            )
        if n_masks == 0 and self.alpha < 1:
            if self.alpha == 0:
                raise ValueError(
                    "masks is None or has no mask at all, but alpha=0 trains segmentation "
                    "only: pass masks, or raise alpha."
                )
            warnings.warn(
                f"No sample has a mask (masks={'None' if masks is None else '...'}) while "
                f"alpha={self.alpha} < 1: the Dice term is 0 and the decoder is not "
                f"trained, so this is the alpha=1 classifier with its loss scaled by "
                f"alpha. Pass masks, or set alpha=1 to silence this warning.",
                NoMasksWarning, stacklevel=3,
            )
        if self.warm_start and self.initialized_ and getattr(self, "classes_", None) is not None:
            if not np.array_equal(self.classes_, classes_):
                raise ValueError(
                    f"warm_start=True but y has classes {classes_.tolist()} and the net was "
                    f"fitted on {self.classes_.tolist()}; pass classes=[...] to fix them."
                )
        self.classes_ = classes_
        return UBCDataset(images, self._size(), y_enc, mask_set, weights), y_enc

    def _size(self):
        s = self.image_size
        return (int(s), int(s)) if isinstance(s, numbers.Integral) else tuple(map(int, s))

    def _check_settings(self, warn=True):
        self._validate_constraints()  # lr, max_epochs, dropout (shared)
        if not isinstance(self.alpha, numbers.Real) or not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha={self.alpha!r} must be a number in [0, 1].")
        if self.pooling != "auto" and self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} must be 'auto' or one of "
                             f"{POOLINGS}.")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans={self.in_chans!r} must be 1 (grey) or 3 (colour).")
        if self.encoder_depth not in (3, 4, 5):
            raise ValueError(f"encoder_depth={self.encoder_depth!r} must be 3, 4 or 5.")
        if not isinstance(self.n_mask_classes, numbers.Integral) or self.n_mask_classes < 1:
            raise ValueError(
                f"n_mask_classes={self.n_mask_classes!r} must be 1 (binary masks) or the "
                f"number of labels in multi-class masks.")
        if self.dice_smooth < 0:
            raise ValueError(f"dice_smooth={self.dice_smooth!r} must be >= 0.")
        size = self.image_size
        ok = (isinstance(size, numbers.Integral)
              or (isinstance(size, (tuple, list)) and len(size) == 2))
        stride = 2 ** self.encoder_depth
        if not ok or any(int(s) <= 0 or int(s) % stride for s in
                         ([size] if isinstance(size, numbers.Integral) else size)):
            raise ValueError(
                f"image_size={size!r} must be an int or (height, width) divisible by "
                f"2 ** encoder_depth = {stride}, e.g. {stride * max(1, 256 // stride)}."
            )
        if warn and self.pooling == "mask" and self.alpha == 1:
            warnings.warn(
                "pooling='mask' with alpha=1: the decoder is not trained, so the pooling "
                "weights come from an untrained mask. Use pooling='avg' for the baseline.",
                UserWarning, stacklevel=4,
            )

    # ------------------------------------------------------------ prediction
    def _forward_batches(self, X, fn, with_masks):
        self._check_fitted()
        images = check_images(X, name="X")
        dataset = UBCDataset(images, self._size())
        out = []
        with self._resolved_device(), torch.inference_mode():
            self._set_training(False)
            for xb, _ in self.get_iterator(dataset, training=False):
                xb = to_tensor(xb, device=self.device)
                out.append(fn(*self.module_(xb, with_masks=with_masks)))
        return out

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns as ``classes_``."""
        out = self._forward_batches(X, lambda lg, _: lg.softmax(1).cpu().numpy(), False)
        return np.concatenate(out)

    def predict(self, X):
        """Class labels, from ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]

    def predict_masks(self, X, threshold=0.5):
        """Predicted masks at ``image_size``.

        Parameters
        ----------
        X : array-like of images
        threshold : float or None, default=0.5
            Binary masks: None gives foreground probabilities (N, h, w) float32, a float
            gives bool masks ``prob > threshold``. Multi-class: None gives class
            probabilities (N, K, h, w), otherwise label maps (N, h, w) by argmax.
        """
        def to_masks(_, mask_logits):
            if self.n_mask_classes > 1:
                p = mask_logits.softmax(1)
                return (p if threshold is None else p.argmax(1)).cpu().numpy()
            p = mask_logits[:, 0].sigmoid()
            return (p if threshold is None else p > threshold).cpu().numpy()

        return np.concatenate(self._forward_batches(X, to_masks, True))

    def score(self, X, y, sample_weight=None):
        """Accuracy; raises ValueError for labels not seen in fit."""
        self._check_fitted()
        y = np.asarray(y)
        unseen = [v for v in np.unique(y.astype(object)).tolist()
                  if not np.isin([v], self.classes_.astype(object)).any()]
        if unseen:
            raise ValueError(
                f"y has labels {unseen[:5]} that were not seen in fit (classes_="
                f"{self.classes_.tolist()}); drop those samples or refit."
            )
        return accuracy_score(y, self.predict(X), sample_weight=sample_weight)

    def dice_score(self, X, masks, *, threshold=0.5):
        """Mean Dice of the predicted masks over the samples that have a mask.

        ``masks`` is given as in ``fit`` and resized (nearest) to ``image_size``. An
        empty mask predicted empty scores 1. Multi-class: the mean over classes 1..K-1.
        """
        from ..metrics import dice_score

        self._check_fitted()
        images = check_images(X, name="X")
        mask_set = check_masks(masks, images, n_mask_classes=self.n_mask_classes)
        idx = np.flatnonzero(mask_set.has)
        if idx.size == 0:
            raise ValueError("masks has no mask at all; the Dice score needs some.")
        sub = images.data[idx] if images.kind != "list" else [images.data[i] for i in idx]
        pred = self.predict_masks(sub, threshold=threshold)
        true = np.stack([mask_set.get(i, self._size())[0].numpy() for i in idx])
        if self.n_mask_classes == 1:
            return float(dice_score(true, pred))
        return float(np.mean([dice_score(true == k, pred == k)
                              for k in range(1, self.n_mask_classes)]))

    # ------------------------------------------------------------ sklearn API
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # X is a batch of images (N, H, W[, C]) or a list of paths, never a table:
        # scikit-learn's tabular checks do not apply (tests/test_ubc_contract.py runs
        # the API checks and image versions of the others)
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = self.random_state is None
        return tags

    def set_params(self, **kwargs):
        with self._resolved_device():
            super().set_params(**kwargs)
            if self.initialized_ and {"alpha", "dice_smooth"} & set(kwargs):
                self._initialize_criterion()
        return self
