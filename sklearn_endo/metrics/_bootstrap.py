"""Stratified bootstrap intervals for held-out ROC AUC, balanced accuracy and Dice.

A proportion (accuracy, sensitivity) has an exact-enough closed-form interval (Wilson);
ROC AUC, balanced accuracy and the mean Dice do not. Their intervals here come from the
percentile bootstrap with resampling *within* each class (for Dice: within images with
and without a lesion), so that every resample keeps the test set's class counts: every
AUC is defined, and the interval reflects the sampling of cases, not of prevalence.
Each statistic is computed for all resamples at once (AUC from ranks), so 2,000
resamples of a few hundred test images cost a fraction of a second.
"""

from __future__ import annotations

import numbers
from collections import namedtuple

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils.multiclass import unique_labels

from ._checks import _check_confidence, _check_targets

__all__ = ["BootstrapCI", "balanced_accuracy_ci", "dice_ci", "roc_auc_ci"]

BootstrapCI = namedtuple("BootstrapCI", ["score", "low", "high"])
BootstrapCI.__doc__ = """A held-out score with its stratified bootstrap interval.

Fields
------
score : float
    The score on the whole test set.
low, high : float
    Percentile bootstrap interval at the requested confidence.
"""

_CHUNK = 256  # resamples per vectorised block: bounds memory at 256 x n_samples


def _check_n_resamples(n_resamples):
    if (not isinstance(n_resamples, numbers.Integral) or isinstance(n_resamples, bool)
            or n_resamples < 1):
        raise ValueError(f"n_resamples must be an int >= 1 (1000 or more for a 95% "
                         f"interval), got {n_resamples!r}.")


def _stratified_indices(strata, n_resamples, rng):
    """(n_resamples, n) indices; each stratum resampled within itself, in fixed columns."""
    blocks = []
    for members in strata:
        blocks.append(members[rng.randint(0, len(members), size=(n_resamples, len(members)))])
    return np.concatenate(blocks, axis=1)


def _percentile(values, score, confidence):
    values = values[np.isfinite(values)]
    if values.size == 0:
        return BootstrapCI(score, float("nan"), float("nan"))
    tail = 50 * (1 - confidence)
    low, high = np.percentile(values, [tail, 100 - tail])
    return BootstrapCI(score, float(low), float(high))


def _bootstrap(statistic, strata, n_resamples, random_state):
    """``statistic(idx)`` for chunks of stratified resamples -> (n_resamples,)."""
    rng = check_random_state(random_state)
    out = []
    for start in range(0, n_resamples, _CHUNK):
        idx = _stratified_indices(strata, min(_CHUNK, n_resamples - start), rng)
        out.append(statistic(idx))
    return np.concatenate(out)


def _rank_auc(scores, positive):
    """Binary ROC AUC of every row of ``scores`` (n_rows, n), ties counted as 1/2."""
    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    rank_sum = (ranks * positive).sum(axis=1)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_auc_ci(y_true, y_score, *, labels=None, pos_label=None, confidence=0.95,
               n_resamples=2000, random_state=None):
    """ROC AUC with a stratified bootstrap confidence interval.

    Binary tasks give the AUC of ``pos_label``; multiclass ones the one-vs-rest macro
    average, as ``roc_auc_score(multi_class="ovr")``. Every resample draws, within each
    class, as many cases as the test set has, with replacement; the interval is the
    percentile interval of the resampled AUCs.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    y_score : array-like of shape (n_samples,) or (n_samples, n_classes)
        As in :func:`classification_summary`: the positive class's score, or
        ``predict_proba(X)`` with columns in the order of ``labels``.
    labels : array-like or None
        The classes (sorted as the columns of ``y_score``); default: those in y_true.
    pos_label : label or None
        Positive class of a binary task; default the greater label.
    confidence : float, default=0.95
    n_resamples : int, default=2000
    random_state : int, RandomState or None
        Seed of the resampling; fix it for a reproducible interval.

    Returns
    -------
    BootstrapCI
        ``(score, low, high)``.

    See Also
    --------
    balanced_accuracy_ci, dice_ci, wilson_interval

    References
    ----------
    B. Efron and R. J. Tibshirani (1993). An Introduction to the Bootstrap. Chapman &
    Hall, ch. 13 (percentile intervals).

    Examples
    --------
    >>> from sklearn_endo.metrics import roc_auc_ci
    >>> y = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    >>> score = [0.1, 0.3, 0.2, 0.6, 0.4, 0.5, 0.9, 0.7, 0.8, 0.35]
    >>> auc, low, high = roc_auc_ci(y, score, random_state=0)
    >>> print(f"{auc:.2f} [{low:.2f}, {high:.2f}]")
    0.88 [0.60, 1.00]
    """
    _check_confidence(confidence)
    _check_n_resamples(n_resamples)
    y_true = column_or_1d(np.asarray(y_true))
    labels = unique_labels(y_true) if labels is None else column_or_1d(labels)
    if len(labels) < 2:
        raise ValueError(f"ROC AUC needs at least two classes, got labels={list(labels)}. "
                         "Pass labels=[...] with all classes.")
    if len(labels) == 2:
        pos_label = labels[1] if pos_label is None else pos_label
    from ._clinical import _roc_auc_inputs

    positives, scores = _roc_auc_inputs(y_true, y_score, list(labels), pos_label)
    if positives is None:  # a class without cases: undefined (warned)
        return BootstrapCI(float("nan"), float("nan"), float("nan"))
    # one-vs-rest macro AUC is the mean of the per-class binary AUCs
    score = float(np.mean([roc_auc_score(p, s) for p, s in zip(positives, scores)]))
    strata = [np.flatnonzero(y_true == lab) for lab in labels]

    def statistic(idx):
        # resampled rows keep their class, so the positives of a block are fixed
        aucs = [_rank_auc(s[idx], p[idx[0]][None, :]) for p, s in zip(positives, scores)]
        return np.mean(aucs, axis=0)

    values = _bootstrap(statistic, strata, n_resamples, random_state)
    return _percentile(values, score, confidence)


def balanced_accuracy_ci(y_true, y_pred, *, confidence=0.95, n_resamples=2000,
                         random_state=None):
    """Balanced accuracy (mean per-class recall) with a stratified bootstrap interval.

    Equals ``sklearn.metrics.balanced_accuracy_score``; each resample draws, within
    each true class, as many cases as the test set has.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    confidence : float, default=0.95
    n_resamples : int, default=2000
    random_state : int, RandomState or None

    Returns
    -------
    BootstrapCI
        ``(score, low, high)``.

    Examples
    --------
    >>> from sklearn_endo.metrics import balanced_accuracy_ci
    >>> y_true = [0] * 30 + [1] * 10
    >>> y_pred = [0] * 27 + [1] * 3 + [1] * 7 + [0] * 3
    >>> bacc, low, high = balanced_accuracy_ci(y_true, y_pred, random_state=0)
    >>> print(f"{bacc:.2f} [{low:.2f}, {high:.2f}]")
    0.80 [0.65, 0.95]
    """
    _check_confidence(confidence)
    _check_n_resamples(n_resamples)
    y_true, y_pred = _check_targets(y_true, y_pred)
    classes = np.unique(y_true)
    strata = [np.flatnonzero(y_true == c) for c in classes]
    correct = (y_true == y_pred).astype(float)
    score = float(np.mean([correct[s].mean() for s in strata]))
    bounds = np.cumsum([0] + [len(s) for s in strata])

    def statistic(idx):
        hits = correct[idx]
        return np.mean([hits[:, a:b].mean(axis=1) for a, b in zip(bounds, bounds[1:])],
                       axis=0)

    return _percentile(_bootstrap(statistic, strata, n_resamples, random_state), score,
                       confidence)


def dice_ci(y_true, y_pred, *, threshold=0.5, smooth=0.0, confidence=0.95,
            n_resamples=2000, random_state=None):
    """Mean per-image Dice with a stratified bootstrap interval.

    The score is ``dice_score(y_true, y_pred, average="samples")``; resamples draw
    images with replacement, separately among images whose true mask has a lesion and
    those whose mask is empty (where Dice is 1 for an empty prediction and 0 otherwise),
    keeping both counts.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples, H, W)
        As in :func:`dice_score`.
    threshold, smooth : float
        As in :func:`dice_score`.
    confidence : float, default=0.95
    n_resamples : int, default=2000
    random_state : int, RandomState or None

    Returns
    -------
    BootstrapCI
        ``(score, low, high)``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.metrics import dice_ci
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.random((20, 16, 16)) > 0.6
    >>> pred = truth ^ (rng.random((20, 16, 16)) > 0.9)   # 10% of pixels flipped
    >>> dice, low, high = dice_ci(truth, pred, random_state=0)
    >>> print(f"{dice:.3f} [{low:.3f}, {high:.3f}]")
    0.878 [0.867, 0.890]
    """
    from ._dice import dice_score

    _check_confidence(confidence)
    _check_n_resamples(n_resamples)
    per_image = dice_score(y_true, y_pred, threshold=threshold, smooth=smooth, average=None)
    lesion = np.asarray(y_true).reshape(len(per_image), -1).any(axis=1)
    strata = [s for s in (np.flatnonzero(lesion), np.flatnonzero(~lesion)) if len(s)]
    score = float(per_image.mean())
    values = _bootstrap(lambda idx: per_image[idx].mean(axis=1), strata, n_resamples,
                        random_state)
    return _percentile(values, score, confidence)
