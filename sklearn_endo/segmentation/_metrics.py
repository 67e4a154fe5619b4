"""Per-image Dice and IoU of a fitted :class:`Segmenter`, and scorers for model selection.

``dice_scorer`` and ``iou_scorer`` are callables ``(estimator, X, y) -> float`` for
``GridSearchCV(scoring=...)`` / ``cross_validate``: ``y`` holds the masks as ``fit``
takes them (an array, or a list of mask files or arrays), which scikit-learn slices per
fold; each image is scored at its own size and the scores are averaged over images.
"""

from __future__ import annotations

import numpy as np

from .._images import check_images
from ..metrics import dice_score, iou_score
from ..ubc._masks import check_masks

__all__ = ["dice_scorer", "iou_scorer", "mask_scores"]

_METRICS = {"dice": dice_score, "iou": iou_score}


def per_image_score(true, pred, n_classes, metric="dice"):
    """Dice or IoU of one predicted mask against one true mask (same (H, W)).

    Binary: the score of the foreground (both empty scores 1). Label maps: the mean
    over classes 1..K-1 of the score of ``true == k`` against ``pred == k``.
    """
    fn = _METRICS[metric]
    if n_classes == 1:
        return fn(np.asarray(true, bool), np.asarray(pred, bool))
    return float(np.mean([fn(true == k, pred == k) for k in range(1, n_classes)]))


def mask_scores(estimator, X, y, metric="dice"):
    """``(scores, idx)``: the per-image ``metric`` of ``estimator.predict(X[idx])``
    against the masks ``y``, for the images ``idx`` that have a mask."""
    if metric not in _METRICS:
        raise ValueError(f"metric={metric!r} must be one of {sorted(_METRICS)}.")
    estimator._check_fitted()
    images = check_images(X, name="X")
    n_classes = estimator.n_classes_
    masks = check_masks(y, images, n_mask_classes=n_classes, name="y",
                        param="n_classes")
    idx = np.flatnonzero(masks.has)
    if idx.size == 0:
        raise ValueError("y has no mask at all (every entry is None); nothing to score.")
    sub = images.data[idx] if images.kind == "array" else [images.data[i] for i in idx]
    pred = estimator.predict(sub)
    scores = []
    for j, i in enumerate(idx):
        p = pred[j]
        true = masks.get(i, p.shape)[0].numpy()  # the image's own size: no resizing
        scores.append(per_image_score(true, p, n_classes, metric))
    return np.asarray(scores, dtype=float), idx


class _MaskScorer:
    """A scorer ``(estimator, X, y, sample_weight=None) -> float`` (mean over images)."""

    def __init__(self, metric):
        self.metric = metric

    def __call__(self, estimator, X, y, sample_weight=None):
        scores, idx = mask_scores(estimator, X, y, self.metric)
        w = None if sample_weight is None else np.asarray(sample_weight, float)[idx]
        return float(np.average(scores, weights=w))

    def __repr__(self):
        return f"{self.metric}_scorer"


#: Mean per-image Dice of a :class:`Segmenter`, for ``scoring=`` in model selection.
dice_scorer = _MaskScorer("dice")
#: Mean per-image IoU (Jaccard) of a :class:`Segmenter`, for ``scoring=``.
iou_scorer = _MaskScorer("iou")
