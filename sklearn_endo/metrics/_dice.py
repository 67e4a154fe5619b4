"""Dice similarity coefficient for binary segmentation masks."""

import numbers

import numpy as np

__all__ = ["dice_score", "iou_score"]

_DICE_AVERAGES = (None, "samples", "micro")


def _as_mask_batch(mask, name):
    """(N, H, W) float array from a (H, W) or (N, H, W) array-like."""
    mask = np.asarray(mask)
    if mask.dtype == object or not (
        np.issubdtype(mask.dtype, np.number) or mask.dtype == bool
    ):
        raise ValueError(
            f"{name} must be a numeric or boolean array, got dtype {mask.dtype}."
        )
    if mask.ndim == 2:
        mask = mask[np.newaxis]
    elif mask.ndim != 3:
        raise ValueError(
            f"{name} must have shape (H, W) or (n_samples, H, W), got {mask.shape}. "
            "Squeeze a channel axis first, e.g. masks[:, 0] for (N, 1, H, W)."
        )
    if mask.size == 0:
        raise ValueError(f"{name} is empty (shape {mask.shape}). Pass at least one mask.")
    mask = mask.astype(float, copy=False)
    if not np.all(np.isfinite(mask)):
        raise ValueError(f"{name} contains NaN or infinity. Pass finite masks.")
    return mask


def dice_score(y_true, y_pred, *, threshold=0.5, smooth=0.0, average="samples"):
    """Dice similarity coefficient between binary masks.

    ``dice = (2 |T & P| + smooth) / (|T| + |P| + smooth)``. When both masks are empty
    (no foreground in truth or prediction) the prediction is perfect and the score is
    defined as 1.0, whatever ``smooth`` is; many images in lesion datasets have no
    lesion, and scoring them 0 or NaN would punish a correct "nothing here".

    Parameters
    ----------
    y_true : array-like of shape (H, W) or (n_samples, H, W)
        Ground-truth masks: booleans or 0/1 values.

    y_pred : array-like of the same shape as ``y_true``
        Predicted masks: booleans, 0/1 values, or probabilities in [0, 1] that are
        binarised as ``y_pred > threshold``.

    threshold : float, default=0.5
        Probability above which a pixel is foreground. Must be in [0, 1).

    smooth : float, default=0.0
        Non-negative constant added to numerator and denominator (Laplace smoothing).
        0 gives the exact Dice coefficient.

    average : {"samples", "micro"} or None, default="samples"
        ``"samples"``: mean of per-mask scores. ``"micro"``: one score from the
        pixel counts pooled over all masks (large lesions weigh more). ``None``:
        one score per mask.

    Returns
    -------
    dice : float or ndarray of shape (n_samples,)
        A float unless ``average=None``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.metrics import dice_score
    >>> y_true = np.array([[1, 1, 0], [0, 0, 0]])
    >>> y_pred = np.array([[0.9, 0.2, 0.1], [0.7, 0.0, 0.0]])
    >>> round(dice_score(y_true, y_pred), 4)   # 2*1 / (2 + 2)
    0.5
    >>> empty = np.zeros((2, 4, 4))
    >>> dice_score(empty, empty)
    1.0
    """
    true, pred = _check_pair(y_true, y_pred, threshold, smooth, average)
    intersection = np.logical_and(true, pred).sum(axis=1).astype(float)
    total = (true.sum(axis=1) + pred.sum(axis=1)).astype(float)
    if average == "micro":
        intersection, total = intersection.sum(keepdims=True), total.sum(keepdims=True)
    empty = total == 0
    scores = (2.0 * intersection + smooth) / np.where(empty, 1.0, total + smooth)
    scores[empty] = 1.0
    return scores if average is None else float(scores.mean())


def iou_score(y_true, y_pred, *, threshold=0.5, smooth=0.0, average="samples"):
    """Intersection over union (Jaccard index) between binary masks.

    ``iou = (|T & P| + smooth) / (|T | P| + smooth)``, with the conventions of
    :func:`dice_score`: both masks empty scores 1.0, probabilities are binarised as
    ``y_pred > threshold``, and ``average`` is ``"samples"``, ``"micro"`` or None. Per
    mask, ``iou = dice / (2 - dice)`` (for ``smooth=0``).

    Parameters
    ----------
    y_true, y_pred, threshold, smooth, average
        As in :func:`dice_score`.

    Returns
    -------
    iou : float or ndarray of shape (n_samples,)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.metrics import iou_score
    >>> y_true = np.array([[1, 1, 0], [0, 0, 0]])
    >>> y_pred = np.array([[0.9, 0.2, 0.1], [0.7, 0.0, 0.0]])
    >>> round(iou_score(y_true, y_pred), 4)   # 1 / 3
    0.3333
    """
    true, pred = _check_pair(y_true, y_pred, threshold, smooth, average)
    intersection = np.logical_and(true, pred).sum(axis=1).astype(float)
    union = np.logical_or(true, pred).sum(axis=1).astype(float)
    if average == "micro":
        intersection, union = intersection.sum(keepdims=True), union.sum(keepdims=True)
    empty = union == 0
    scores = (intersection + smooth) / np.where(empty, 1.0, union + smooth)
    scores[empty] = 1.0
    return scores if average is None else float(scores.mean())


def _check_pair(y_true, y_pred, threshold, smooth, average):
    """Validated (n, pixels) bool arrays of truth and binarised prediction."""
    if average not in _DICE_AVERAGES:
        raise ValueError(
            f"average must be one of {_DICE_AVERAGES}, got {average!r}. Use 'samples' "
            "for the mean per-mask Dice, 'micro' for pooled pixels, None for per mask."
        )
    if not isinstance(threshold, numbers.Real) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a float in [0, 1), got {threshold!r}.")
    if not isinstance(smooth, numbers.Real) or not (np.isfinite(smooth) and smooth >= 0):
        raise ValueError(f"smooth must be a finite float >= 0, got {smooth!r}.")
    true = _as_mask_batch(y_true, "y_true")
    pred = _as_mask_batch(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape, got {np.shape(y_true)} and "
            f"{np.shape(y_pred)}. Resize predictions to the mask size first."
        )
    if not np.all((true == 0) | (true == 1)):
        raise ValueError(
            "y_true must be a binary mask (booleans or 0/1 values), got values "
            f"{np.unique(true)[:5].tolist()}... Binarise it, e.g. y_true > 0."
        )
    if np.any(pred < 0) or np.any(pred > 1):
        raise ValueError(
            "y_pred must hold booleans, 0/1 values or probabilities in [0, 1], got "
            f"values in [{pred.min():g}, {pred.max():g}]. Apply a sigmoid to logits."
        )
    true = true.astype(bool).reshape(len(true), -1)
    pred = (pred > threshold).reshape(len(pred), -1)
    return true, pred
