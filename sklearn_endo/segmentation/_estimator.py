"""Segmenter: masks in, masks out, on skorch and segmentation_models_pytorch."""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from skorch import NeuralNet
from skorch.callbacks import EpochTimer, PassthroughScoring, PrintLog
from skorch.utils import to_tensor

from .._images import check_images, image_sizes
from .._iterators import skorch_image_iterator
from .._skorch import SkorchEstimatorMixin
from ..ubc._data import UBCDataset, check_sample_weight
from ..ubc._masks import check_masks
from ..ubc._model import load_encoder_checkpoint, pretrained_kwargs
from ._augment import AUGMENTS, make_joint_augment
from ._loss import SegmentationLoss
from ._metrics import mask_scores
from ._network import SegNet, check_freeze

__all__ = ["Segmenter"]


class SegmentationDataset(UBCDataset):
    """Image ``i`` resized (bilinear) to ``size`` with its mask resized (nearest).

    UBC's dataset without labels: images and mask files are decoded on access, so memory
    is bounded by the batch; without masks (prediction) the target is a placeholder 0.
    """

    def __init__(self, images, size, masks=None, sample_weight=None):
        super().__init__(images, size, masks=masks, sample_weight=sample_weight)


class Segmenter(SkorchEstimatorMixin, NeuralNet):
    """Semantic segmentation estimator: ``fit(X, masks)``, ``predict(X)`` gives masks.

    An encoder (any smp encoder, or any timm model through smp's ``"tu-"`` names) and a
    segmentation_models_pytorch decoder trained on ``ce_weight * CE + dice_weight *
    (1 - Dice)`` (:class:`SegmentationLoss`). Images are resized to ``image_size`` for
    the network; predicted masks come back at each input image's own size (the logits
    are resized bilinearly before thresholding), so images of different sizes can be
    predicted in one call. ``score`` is the mean Dice over images; :data:`dice_scorer`
    and :data:`iou_scorer` are the same for ``GridSearchCV(scoring=...)``.

    Not a scikit-learn classifier (``y`` is masks, not labels): cross-validation splits
    with ``KFold``, and ``score`` is Dice, not accuracy.

    Training runs on skorch: ``lr``, ``max_epochs``, ``batch_size``, ``optimizer__*``,
    ``callbacks``, ``history``, ``train_split``, ``save_params``/``load_params`` and
    ``verbose`` behave as in any skorch net.

    Parameters
    ----------
    encoder : str, default="resnet34"
        An smp encoder name (``"resnet34"``), ``"tu-<timm name>"``, or a timm model name
        (routed through smp's timm universal encoder). ViTs (``"tu-vit_small_patch16_224"``,
        register-token ViTs such as ``"tu-vit_medium_patch16_reg4_gap_256"``) need
        ``architecture="dpt"``: smp's U-Net, FPN and UPerNet need a CNN-like feature
        pyramid and refuse plain ViTs ("Unsupported model downsampling pattern"), and
        smp 0.6's DPT works only for patch sizes 8 and 16 (not DINOv2's 14).
    architecture : str, default="unet"
        smp decoder: ``"unet"``, ``"fpn"``, ``"upernet"`` (CNNs and hierarchical
        transformers), ``"dpt"`` (ViTs), or any other ``smp.create_model`` name.
    n_classes : int, default=1
        1 for binary masks (bool / {0, 1}; files thresholded at 127, so Kvasir-SEG's JPEG
        noise is removed); K >= 2 for integer label maps 0..K-1 (class 0 background).
    pretrained : bool, default=True
        ImageNet encoder weights (offline without cached weights this raises
        ``WeightsUnavailableError`` at once; use ``pretrained=False``). Ignored with
        ``checkpoint_path``.
    checkpoint_path : str, os.PathLike or None, default=None
        Encoder weights to start from, such as ``SelfSupervisedPretrainer.save_encoder``
        writes: a timm state dict of the encoder's timm model, checked and loaded as in
        :class:`~sklearn_endo.UBCClassifier` (a file of another architecture is a
        ``ValueError`` naming the keys that differ). Loaded at every ``initialize``.
    freeze : bool or int, default=False
        True: train the decoder only (encoder weights and BatchNorm statistics fixed).
        An int k: freeze the stem and the encoder's first k blocks, numbered as
        ``LayerFeatureTransformer``'s layers (timm's blocks in forward order).
    in_chans : {1, 3}, default=3
        Channels the network sees (colour inputs are averaged to grey for 1).
    image_size : int or (int, int), default=256
        Network input size (images and masks are resized to it for training). smp's
        CNN decoders accept any size; a ViT (DPT) needs a multiple of its patch size.
    encoder_depth : int or None, default=None
        Encoder stages used by the decoder; None keeps the architecture's default (5
        for U-Net/FPN/UPerNet, 4 for DPT).
    augment : None, "endoscopy" or callable, default=None
        Training-time augmentation of each image and its mask, on the device:
        ``"endoscopy"`` applies the same flips and 90-degree rotations to both, and
        brightness and blur to the image (:class:`JointEndoscopyAugment`); a callable
        maps ``(x, mask)`` to ``(x, mask)``.
    dice_weight, ce_weight : float, default=1.0
        Weights of the ``1 - Dice`` and cross-entropy (BCE for binary masks) terms.
    dice_smooth : float, default=1.0
        Epsilon of the smoothed Dice in the loss.
    threshold : float, default=0.5
        Foreground probability above which ``predict`` marks a pixel (binary masks).
    model_kwargs : dict or None, default=None
        More ``smp.create_model`` arguments, e.g. ``{"decoder_channels": 128}`` or, for
        DPT, ``{"encoder_output_indices": [2, 5, 8, 11]}`` (0-based ViT blocks).
    random_state : int, RandomState or None, default=None
        Seeds initialisation, shuffling and augmentation (reproducible on CPU).
    module, criterion : default=SegNet, SegmentationLoss
    optimizer : default=torch.optim.Adam
    lr : float, default=1e-3
    max_epochs : int, default=40
    batch_size : int, default=16
    train_split : callable or None, default=None
        No internal validation split by default; pass e.g.
        ``skorch.dataset.ValidSplit(5)`` for a ``valid_loss`` column.
    callbacks : list or None, default=None
        Added to the defaults ``epoch_timer``, ``train_loss``, ``valid_loss`` and
        ``print_log``.
    warm_start : bool, default=False
    verbose : int, default=1
        1 prints skorch's epoch table as each epoch ends (progress); 0 prints nothing.
    device : str, default="auto"
        ``"auto"`` picks cuda, then mps, then cpu.
    **kwargs
        Other skorch arguments (``iterator_train__num_workers``, ``optimizer__*``...).

    Attributes
    ----------
    module_ : SegNet
        The trained network (``module_.seg`` is the smp model).
    n_classes_ : int
        Output channels (1 for binary masks).
    history_ : skorch.history.History

    Examples
    --------
    >>> from sklearn_endo.datasets import make_lesions
    >>> from sklearn_endo.segmentation import Segmenter
    >>> X, _, masks = make_lesions(8, image_size=32, return_masks=True, random_state=0)
    >>> seg = Segmenter("resnet18", pretrained=False, image_size=32, encoder_depth=3,
    ...                 max_epochs=1, batch_size=4, random_state=0, verbose=0)
    >>> seg.fit(X, masks).predict(X[:2]).shape
    (2, 32, 32)
    """

    def __init__(self, encoder="resnet34", *, architecture="unet", n_classes=1,
                 pretrained=True, checkpoint_path=None, freeze=False, in_chans=3,
                 image_size=256, encoder_depth=None, augment=None, dice_weight=1.0,
                 ce_weight=1.0, dice_smooth=1.0, threshold=0.5, model_kwargs=None,
                 random_state=None, module=SegNet, criterion=SegmentationLoss,
                 optimizer=torch.optim.Adam, lr=1e-3, max_epochs=40, batch_size=16,
                 train_split=None, callbacks=None, warm_start=False, verbose=1,
                 device="auto", **kwargs):
        self.encoder = encoder
        self.architecture = architecture
        self.n_classes = n_classes
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        self.freeze = freeze
        self.in_chans = in_chans
        self.image_size = image_size
        self.encoder_depth = encoder_depth
        self.augment = augment
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.dice_smooth = dice_smooth
        self.threshold = threshold
        self.model_kwargs = model_kwargs
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
            ("print_log", PrintLog()),
        ]

    def initialize_module(self):
        self._check_settings()
        weights = pretrained_kwargs(self.encoder,
                                    self.pretrained and self.checkpoint_path is None)
        kwargs = dict(
            encoder=self.encoder, n_classes=self.n_classes, architecture=self.architecture,
            encoder_depth=self.encoder_depth,
            encoder_weights=weights.pop("encoder_weights"), encoder_kwargs=weights,
            in_chans=self.in_chans, model_kwargs=self.model_kwargs,
        )
        kwargs.update(self.get_params_for("module"))
        module = self.initialized_instance(self.module, kwargs)
        if self.checkpoint_path is not None:
            load_encoder_checkpoint(module.seg.encoder, self.encoder, self.checkpoint_path,
                                    in_chans=self.in_chans, owner=type(self).__name__)
        if self.freeze:
            module._freeze(_encoder_of(module, self.encoder), self.freeze)
        self._check_input_size(module)
        self.module_ = module
        self.n_classes_ = int(self.n_classes)
        self.augment_ = make_joint_augment(self.augment, self._size())
        return self

    def _check_input_size(self, module):
        check = getattr(module.seg, "check_input_shape", None)
        if check is None:
            return
        try:
            check(torch.empty(1, self.in_chans, *self._size(), device="meta"))
        except RuntimeError as exc:
            raise ValueError(
                f"image_size={self.image_size!r} does not fit encoder={self.encoder!r} "
                f"with architecture={self.architecture!r}: {exc}") from None

    def initialize_criterion(self):
        kwargs = dict(dice_weight=self.dice_weight, ce_weight=self.ce_weight,
                      dice_smooth=self.dice_smooth, n_classes=self.n_classes)
        kwargs.update(self.get_params_for("criterion"))
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        return self

    def get_iterator(self, dataset, training=False):
        return skorch_image_iterator(self, dataset, training)

    def train_step_single(self, batch, **fit_params):
        augment = getattr(self, "augment_", None)
        if augment is not None:
            Xi, yi = batch
            Xi = to_tensor(Xi, device=self.device)
            yi = to_tensor(yi, device=self.device)
            pairs = [augment(x, m) for x, m in zip(Xi, yi["mask"])]
            batch = (torch.stack([p[0] for p in pairs]),
                     dict(yi, mask=torch.stack([p[1] for p in pairs])))
        return super().train_step_single(batch, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        t = to_tensor(y_true, device=self.device)
        args = (y_pred, t["mask"], t["has_mask"])
        if "weight" in t:  # only then, so that a criterion without sample_weight works
            return self.criterion_(*args, sample_weight=t["weight"])
        return self.criterion_(*args)

    # ------------------------------------------------------------ fitting
    def fit(self, X, y, sample_weight=None, **fit_params):
        """Train on images ``X`` and their masks ``y``.

        Parameters
        ----------
        X : array-like of images
            ``(N, H, W[, C])`` uint8 in [0, 255] or floats in [0, 1], a list of image
            paths (decoded lazily, batch by batch) or a list of PIL images; sizes may
            differ between images (each is resized to ``image_size``).
        y : array (N, H, W) or sequence of N masks
            One mask per image, the image's own size: bool / {0, 1} (``n_classes=1``)
            or integer label maps; in a sequence, mask file paths (thresholded at 127
            for binary masks), 2-D arrays, PIL images, or None (the image is left out
            of the loss). Masks are resized with nearest neighbour.
        sample_weight : array-like of shape (N,) or None
            Non-negative weight of each image in both loss terms (weighted batch
            means).
        **fit_params
            Passed to skorch.

        Returns
        -------
        self
        """
        dataset = self._prepare(X, y, sample_weight)
        with self._resolved_device(), self._seeded():
            super().fit(dataset, None, **fit_params)
        return self

    def partial_fit(self, X, y=None, classes=None, sample_weight=None, **fit_params):
        """Train for ``max_epochs`` more epochs without re-initialising (see fit)."""
        if isinstance(X, SegmentationDataset):  # called by NeuralNet.fit
            return super().partial_fit(X, y, classes, **fit_params)
        dataset = self._prepare(X, y, sample_weight)
        with self._resolved_device(), self._seeded():
            super().partial_fit(dataset, None, **fit_params)
        return self

    def _prepare(self, X, y, sample_weight):
        self._check_settings()
        images = check_images(X, name="X", min_samples=2)
        if y is None:
            raise ValueError("y is None; Segmenter.fit needs one mask per image in y.")
        masks = check_masks(y, images, n_mask_classes=self.n_classes, name="y",
                            param="n_classes")
        if not masks.has.any():
            raise ValueError("y has no mask at all (every entry is None); pass masks.")
        weights = check_sample_weight(sample_weight, len(images))
        return SegmentationDataset(images, self._size(), masks, weights)

    def _size(self):
        s = self.image_size
        return (int(s), int(s)) if isinstance(s, numbers.Integral) else tuple(map(int, s))

    def _check_settings(self):
        if not isinstance(self.n_classes, numbers.Integral) or self.n_classes < 1:
            raise ValueError(
                f"n_classes={self.n_classes!r} must be 1 (binary masks) or the number of "
                f"labels K >= 2 of integer label maps.")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans={self.in_chans!r} must be 1 (grey) or 3 (colour).")
        size = self.image_size
        ok = (isinstance(size, numbers.Integral)
              or (isinstance(size, (tuple, list)) and len(size) == 2))
        if not ok or any(int(s) <= 0 for s in
                         ([size] if isinstance(size, numbers.Integral) else size)):
            raise ValueError(
                f"image_size={size!r} must be a positive int or (height, width).")
        for name in ("dice_weight", "ce_weight", "dice_smooth"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}={v!r} must be a finite number >= 0.")
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise ValueError("dice_weight and ce_weight are both 0: nothing to train.")
        if not isinstance(self.threshold, numbers.Real) or not 0 <= self.threshold < 1:
            raise ValueError(f"threshold={self.threshold!r} must be a number in [0, 1).")
        check_freeze(self.freeze)
        if not (callable(self.augment) or any(
                self.augment is a or (isinstance(a, str) and self.augment == a)
                for a in AUGMENTS)):
            make_joint_augment(self.augment, (32, 32))  # raises the error

    # ------------------------------------------------------------ prediction
    def _predict_logits(self, X):
        """Yield ``(i, logits (K, h_i, w_i))`` at each image's own size."""
        self._check_fitted()
        images = check_images(X, name="X")
        sizes = image_sizes(images, range(len(images)))
        dataset = SegmentationDataset(images, self._size())
        i = 0
        with self._resolved_device(), torch.inference_mode():
            self._set_training(False)
            for xb, _ in self.get_iterator(dataset, training=False):
                logits = self.module_(to_tensor(xb, device=self.device)).float()
                for row in logits:
                    size = tuple(sizes[i])
                    if tuple(row.shape[-2:]) != size:
                        row = F.interpolate(row[None], size=size, mode="bilinear",
                                            align_corners=False)[0]
                    yield i, row
                    i += 1

    def _collect(self, X, fn):
        out = [fn(logits).cpu().numpy() for _, logits in self._predict_logits(X)]
        if len({a.shape for a in out}) == 1:
            return np.stack(out)
        return out

    def predict_proba(self, X):
        """Per-pixel probabilities at each image's own size.

        Binary masks: the foreground probability, (N, H, W) float32. Label maps: the
        class probabilities, (N, K, H, W). Images of different sizes give a list of N
        arrays instead of one array.
        """
        self._check_fitted()
        if self.n_classes_ > 1:
            return self._collect(X, lambda lg: lg.softmax(0))
        return self._collect(X, lambda lg: lg[0].sigmoid())

    def predict(self, X):
        """Masks at each image's own size: bool (N, H, W) for binary masks
        (probability > ``threshold``), int64 label maps for K classes; a list of N
        arrays when the images differ in size."""
        self._check_fitted()
        if self.n_classes_ > 1:
            return self._collect(X, lambda lg: lg.argmax(0))
        return self._collect(X, lambda lg: lg[0].sigmoid() > self.threshold)

    def score(self, X, y, sample_weight=None):
        """Mean Dice of ``predict(X)`` against the masks ``y`` (given as in ``fit``),
        per image at its own size, over the images that have a mask (an empty mask
        predicted empty scores 1; for label maps, the mean over classes 1..K-1)."""
        scores, idx = mask_scores(self, X, y, "dice")
        w = None if sample_weight is None else np.asarray(sample_weight, float)[idx]
        return float(np.average(scores, weights=w))

    # ------------------------------------------------------------ sklearn API
    def __sklearn_is_fitted__(self):
        return (bool(getattr(self, "initialized_", False))
                and getattr(self, "n_classes_", None) is not None)

    def _check_fitted(self):
        from sklearn.exceptions import NotFittedError

        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' "
                f"first (or initialize(), then load_params(...)).")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # X is a batch of images and y masks, never a table
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.one_d_labels = False
        tags.target_tags.two_d_labels = False
        tags.non_deterministic = self.random_state is None
        return tags

    def set_params(self, **kwargs):
        super().set_params(**kwargs)
        if getattr(self, "initialized_", False) and {
                "dice_weight", "ce_weight", "dice_smooth"} & set(kwargs):
            with self._resolved_device():
                self._initialize_criterion()
        return self


def _encoder_of(module, encoder):
    from ._network import encoder_module

    return encoder_module(module.seg, encoder)
