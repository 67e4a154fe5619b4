"""Clinical classification metrics: sensitivity, specificity, Wilson intervals, QWK.

Sensitivity is scikit-learn's recall under the name clinicians use; specificity is
the one-vs-rest true-negative rate, which scikit-learn does not provide. Everything
else here is a thin layer over :mod:`sklearn.metrics` so that numbers match it.
"""

import numbers
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    multilabel_confusion_matrix,
    recall_score,
    roc_auc_score,
)
from sklearn.utils import Bunch, column_or_1d
from sklearn.utils.multiclass import unique_labels

from ._checks import _check_confidence, _check_targets
from ._intervals import accuracy_ci

__all__ = [
    "classification_summary",
    "quadratic_weighted_kappa",
    "sensitivity_score",
    "specificity_score",
]

_AVERAGES = (None, "binary", "micro", "macro", "weighted")



# ----------------------------------------------------------------------------- checks

def _check_average(average):
    if average not in _AVERAGES:
        raise ValueError(
            f"average must be one of {_AVERAGES}, got {average!r}. Use 'binary' for the "
            "positive class only, None for one value per class, or 'macro'/'weighted'/"
            "'micro' to combine classes."
        )


def _check_zero_division(zero_division):
    if isinstance(zero_division, str) and zero_division == "warn":
        return 0.0
    if isinstance(zero_division, numbers.Real) and (
        zero_division in (0, 1) or np.isnan(zero_division)
    ):
        return float(zero_division)
    raise ValueError(
        f"zero_division must be 'warn', 0.0, 1.0 or np.nan, got {zero_division!r}."
    )



def _resolve_labels(y_true, y_pred, *, average, pos_label, labels):
    """Labels to score, following sklearn's set-wise rules for ``average``."""
    present = unique_labels(y_true, y_pred)
    if average == "binary":
        if len(present) > 2:
            raise ValueError(
                f"average='binary' needs a binary task, but the targets hold "
                f"{len(present)} classes {present.tolist()}. Choose average=None, "
                "'macro', 'weighted' or 'micro'."
            )
        if pos_label not in present and len(present) == 2:
            raise ValueError(
                f"pos_label={pos_label!r} is not a valid label: it should be one of "
                f"{present.tolist()}. Pass pos_label=<the label of the positive class>."
            )
        return np.asarray([pos_label])
    if labels is None:
        return present
    labels = column_or_1d(np.asarray(labels))
    if labels.size == 0:
        raise ValueError("labels must not be empty. Pass None to use all classes.")
    return labels


# ---------------------------------------------------------------- sensitivity/spec.
def sensitivity_score(
    y_true,
    y_pred,
    *,
    pos_label=1,
    average="binary",
    labels=None,
    sample_weight=None,
    zero_division="warn",
):
    """Sensitivity (true-positive rate, recall): TP / (TP + FN).

    The fraction of diseased cases that the classifier finds. This is exactly
    :func:`sklearn.metrics.recall_score`, exposed under its clinical name so that
    reports read ``sensitivity`` and ``specificity`` side by side.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True class labels.

    y_pred : array-like of shape (n_samples,)
        Predicted class labels.

    pos_label : int, float, bool or str, default=1
        The positive (diseased) class when ``average="binary"``; ignored otherwise.

    average : {"binary", "micro", "macro", "weighted"} or None, default="binary"
        ``"binary"``: sensitivity of ``pos_label``. ``None``: one value per label
        (one-vs-rest). ``"macro"``: unweighted mean over labels. ``"weighted"``: mean
        weighted by each label's support (number of true instances). ``"micro"``:
        computed from pooled counts (equals accuracy for multiclass).

    labels : array-like, default=None
        Labels to include when ``average != "binary"`` and their order for
        ``average=None``. By default all labels in ``y_true`` and ``y_pred``.

    sample_weight : array-like of shape (n_samples,), default=None
        Sample weights.

    zero_division : {"warn", 0.0, 1.0, np.nan}, default="warn"
        Value when a label has no true instances (TP + FN = 0). ``"warn"`` returns
        0.0 and raises an :class:`~sklearn.exceptions.UndefinedMetricWarning`;
        ``np.nan`` values are left out of the averages.

    Returns
    -------
    sensitivity : float or ndarray of shape (n_labels,)
        A float unless ``average=None``.

    See Also
    --------
    specificity_score : True-negative rate, one-vs-rest per class.
    sklearn.metrics.recall_score : The same quantity.

    Examples
    --------
    >>> from sklearn_endo.metrics import sensitivity_score
    >>> y_true = [0, 0, 0, 1, 1, 1, 1]
    >>> y_pred = [0, 0, 1, 1, 1, 1, 0]
    >>> float(sensitivity_score(y_true, y_pred))
    0.75
    >>> sensitivity_score([0, 1, 2, 2], [0, 2, 2, 2], average=None)
    array([1., 0., 1.])
    """
    _check_average(average)
    _check_zero_division(zero_division)
    y_true, y_pred = _check_targets(y_true, y_pred)
    _resolve_labels(y_true, y_pred, average=average, pos_label=pos_label, labels=labels)
    result = recall_score(
        y_true,
        y_pred,
        labels=labels,
        pos_label=pos_label,
        average=average,
        sample_weight=sample_weight,
        zero_division=zero_division,
    )
    return result if average is None else float(result)


def specificity_score(
    y_true,
    y_pred,
    *,
    pos_label=1,
    average="binary",
    labels=None,
    sample_weight=None,
    zero_division="warn",
):
    """Specificity (true-negative rate): TN / (TN + FP).

    The fraction of healthy cases that the classifier correctly calls healthy. For
    more than two classes, specificity of a class is computed one-vs-rest: negatives
    are all samples of the other classes.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True class labels.

    y_pred : array-like of shape (n_samples,)
        Predicted class labels.

    pos_label : int, float, bool or str, default=1
        The positive (diseased) class when ``average="binary"``; ignored otherwise.
        Specificity is then the true-negative rate of the other class.

    average : {"binary", "micro", "macro", "weighted"} or None, default="binary"
        ``"binary"``: specificity with respect to ``pos_label``. ``None``: one value
        per label (one-vs-rest). ``"macro"``: unweighted mean over labels.
        ``"weighted"``: mean weighted by each label's support (number of true
        instances, as in scikit-learn). ``"micro"``: sum of TN over sum of TN + FP.

    labels : array-like, default=None
        Labels to include when ``average != "binary"`` and their order for
        ``average=None``. By default all labels in ``y_true`` and ``y_pred``.

    sample_weight : array-like of shape (n_samples,), default=None
        Sample weights.

    zero_division : {"warn", 0.0, 1.0, np.nan}, default="warn"
        Value when a label has no negatives (TN + FP = 0, every sample is of that
        class). ``"warn"`` returns 0.0 and raises an
        :class:`~sklearn.exceptions.UndefinedMetricWarning`; ``np.nan`` values are
        left out of the averages.

    Returns
    -------
    specificity : float or ndarray of shape (n_labels,)
        A float unless ``average=None``.

    See Also
    --------
    sensitivity_score : True-positive rate (recall).
    sklearn.metrics.multilabel_confusion_matrix : The per-class counts used here.

    Examples
    --------
    >>> from sklearn_endo.metrics import specificity_score
    >>> y_true = [0, 0, 0, 0, 1, 1]
    >>> y_pred = [0, 0, 0, 1, 1, 0]
    >>> float(specificity_score(y_true, y_pred))
    0.75
    >>> specificity_score([0, 1, 2, 2], [0, 2, 2, 2], average=None)
    array([1. , 1. , 0.5])
    """
    _check_average(average)
    zero_value = _check_zero_division(zero_division)
    y_true, y_pred = _check_targets(y_true, y_pred)
    labels = _resolve_labels(
        y_true, y_pred, average=average, pos_label=pos_label, labels=labels
    )
    mcm = multilabel_confusion_matrix(
        y_true, y_pred, labels=labels, sample_weight=sample_weight
    )
    tn, fp = mcm[:, 0, 0].astype(float), mcm[:, 0, 1].astype(float)
    support = (mcm[:, 1, 0] + mcm[:, 1, 1]).astype(float)
    if average == "micro":
        tn, fp = np.array([tn.sum()]), np.array([fp.sum()])

    denominator = tn + fp
    undefined = denominator == 0
    values = tn / np.where(undefined, 1.0, denominator)
    values[undefined] = zero_value
    if undefined.any() and isinstance(zero_division, str):
        warnings.warn(
            "Specificity is ill-defined and being set to 0.0 for labels with no "
            "negative samples (every sample is of that class). Use the "
            "`zero_division` parameter to control this behavior.",
            UndefinedMetricWarning,
            stacklevel=2,
        )

    if average is None:
        return values
    if average in ("binary", "micro"):
        return float(values[0])
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan")
    weights = None if average == "macro" else support[keep]
    if weights is not None and weights.sum() == 0:
        return zero_value
    return float(np.average(values[keep], weights=weights))


def quadratic_weighted_kappa(y_true, y_pred, *, labels=None, sample_weight=None):
    """Quadratic weighted Cohen's kappa for ordinal grades.

    A thin wrapper of ``sklearn.metrics.cohen_kappa_score(weights="quadratic")``,
    which computes the same number. It exists for two reasons:

    - scikit-learn weighs disagreements by the distance between the *positions* of
      the labels in the label set. Without ``labels``, a cross-validation fold that
      misses a grade (say grades ``[0, 1, 3, 4]``) silently treats 1 vs 3 as one
      step apart instead of two, so folds are not comparable. Pass the full ordered
      grade set, e.g. ``labels=[0, 1, 2, 3, 4]``, and every fold scores on one scale.
    - Samples whose label is missing from ``labels`` are silently dropped by
      scikit-learn; here they raise a ValueError instead.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True grades.

    y_pred : array-like of shape (n_samples,)
        Predicted grades.

    labels : array-like of shape (n_grades,), default=None
        All grades, in ordinal order. By default the sorted grades present in
        ``y_true`` and ``y_pred``.

    sample_weight : array-like of shape (n_samples,), default=None
        Sample weights.

    Returns
    -------
    kappa : float
        In [-1, 1]; 1 is perfect agreement, 0 chance agreement. ``nan`` (with an
        :class:`~sklearn.exceptions.UndefinedMetricWarning`) when both raters use a
        single, identical grade, where kappa is undefined.

    See Also
    --------
    sklearn.metrics.cohen_kappa_score : The underlying implementation.

    Examples
    --------
    >>> from sklearn_endo.metrics import quadratic_weighted_kappa
    >>> y_true = [0, 1, 3, 4, 4]
    >>> y_pred = [0, 1, 4, 4, 3]
    >>> round(quadratic_weighted_kappa(y_true, y_pred), 4)
    0.8529
    >>> round(quadratic_weighted_kappa(y_true, y_pred, labels=[0, 1, 2, 3, 4]), 4)
    0.9242
    """
    y_true, y_pred = _check_targets(y_true, y_pred)
    if labels is not None:
        labels = column_or_1d(np.asarray(labels))
        unknown = np.setdiff1d(unique_labels(y_true, y_pred), labels)
        if unknown.size:
            raise ValueError(
                f"y_true or y_pred contain grades {unknown.tolist()} that are not in "
                f"labels={labels.tolist()}. Pass the full ordered grade set as labels."
            )
    if np.unique(np.concatenate([y_true, y_pred])).size == 1:
        warnings.warn(
            "Quadratic weighted kappa is undefined when both raters use one and the "
            "same grade; returning nan.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(
        cohen_kappa_score(
            y_true, y_pred, labels=labels, weights="quadratic", sample_weight=sample_weight
        )
    )


# -------------------------------------------------------------------------- summary
def _roc_auc_inputs(y_true, y_score, labels, pos_label):
    """One binary problem per row: (positives, scores), each (k, n); k=1 when binary.

    (None, None), with a warning, when a class has no true samples (AUC undefined).
    """
    y_score = np.asarray(y_score, dtype=float)
    n = y_true.shape[0]
    if y_score.shape[0] != n:
        raise ValueError(
            f"y_score has {y_score.shape[0]} rows but y_true has {n} samples. Pass one "
            "score row per sample."
        )
    if not np.all(np.isfinite(y_score)):
        raise ValueError("y_score contains NaN or infinity. Pass finite scores.")
    absent = [lab for lab in labels if not np.any(y_true == lab)]
    if absent:
        warnings.warn(
            f"ROC AUC is undefined because classes {absent} have no true samples; "
            "setting roc_auc to nan.",
            UndefinedMetricWarning,
            stacklevel=4,
        )
        return None, None
    if len(labels) == 2:
        if y_score.ndim == 2 and y_score.shape[1] == 2:
            y_score = y_score[:, list(labels).index(pos_label)]
        elif y_score.ndim == 2 and y_score.shape[1] == 1:
            y_score = y_score[:, 0]
        if y_score.ndim != 1:
            raise ValueError(
                f"For a binary task y_score must have shape (n_samples,) or "
                f"(n_samples, 2), got {y_score.shape}. Pass predict_proba(X) or the "
                "score of the positive class."
            )
        return (y_true == pos_label)[None, :], y_score[None, :]
    if y_score.ndim != 2 or y_score.shape[1] != len(labels):
        raise ValueError(
            f"For a task with {len(labels)} classes y_score must have shape "
            f"(n_samples, {len(labels)}), got {y_score.shape}. Pass predict_proba(X) "
            "with columns in the order of labels."
        )
    return (np.stack([y_true == lab for lab in labels]), y_score.T)


def _roc_auc(y_true, y_score, labels, pos_label):
    """ROC AUC of the positive class (binary) or one-vs-rest macro (multiclass)."""
    positives, scores = _roc_auc_inputs(y_true, y_score, labels, pos_label)
    if positives is None:
        return float("nan")
    if len(labels) == 2:
        return float(roc_auc_score(positives[0], scores[0]))
    return float(
        roc_auc_score(y_true, scores.T, multi_class="ovr", average="macro", labels=labels)
    )


def classification_summary(
    y_true,
    y_pred,
    y_score=None,
    *,
    confidence=0.95,
    labels=None,
    pos_label=None,
    n_resamples=2000,
    random_state=None,
):
    """The usual table row of a medical classification study.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True class labels.

    y_pred : array-like of shape (n_samples,)
        Predicted class labels.

    y_score : array-like of shape (n_samples,) or (n_samples, n_classes), default=None
        Scores for ROC AUC, e.g. ``predict_proba(X)``. Binary: the positive class's
        score or the (n_samples, 2) probabilities. Multiclass: (n_samples, n_classes)
        probabilities with columns in the order of ``labels``; the AUC is one-vs-rest,
        macro-averaged.

    confidence : float, default=0.95
        Confidence level of the intervals.

    labels : array-like, default=None
        The classes, sorted as the columns of ``y_score``. By default the sorted
        labels present in ``y_true`` and ``y_pred``. Pass them when a fold may miss
        a class.

    pos_label : int, float, bool or str, default=None
        Positive class of a binary task. By default the greater label (``labels[1]``),
        as in scikit-learn.

    n_resamples : int, default=2000
        Stratified bootstrap resamples for the intervals of balanced accuracy and ROC
        AUC (:func:`balanced_accuracy_ci`, :func:`roc_auc_ci`); 0 skips them (their
        bounds are then nan).

    random_state : int, RandomState or None, default=None
        Seed of the bootstrap; fix it for reproducible intervals.

    Returns
    -------
    summary : :class:`~sklearn.utils.Bunch`
        Keys ``n_samples``, ``accuracy``, ``accuracy_low``, ``accuracy_high`` (Wilson
        interval), ``balanced_accuracy``, ``balanced_accuracy_low``,
        ``balanced_accuracy_high`` (stratified bootstrap), ``confidence``,
        ``f1_macro``, ``sensitivity``, ``specificity``, ``average`` (``"binary"`` or
        ``"macro"``) and, when ``y_score`` is given, ``roc_auc``, ``roc_auc_low``,
        ``roc_auc_high`` (stratified bootstrap).
        Binary tasks report sensitivity and specificity of ``pos_label``; multiclass
        tasks their one-vs-rest macro averages. Undefined per-class values (a class
        with no samples) are left out of the macro averages; an undefined AUC is nan.

    See Also
    --------
    accuracy_ci, sensitivity_score, specificity_score

    Examples
    --------
    >>> from sklearn_endo.metrics import classification_summary
    >>> s = classification_summary([0, 0, 1, 1, 1], [0, 1, 1, 1, 1],
    ...                            y_score=[0.1, 0.6, 0.7, 0.8, 0.9])
    >>> print(f"acc={s.accuracy:.2f} sens={s.sensitivity:.2f} "
    ...       f"spec={s.specificity:.2f} auc={s.roc_auc:.2f}")
    acc=0.80 sens=1.00 spec=0.50 auc=1.00
    >>> y_true = [0] * 20 + [1] * 20
    >>> y_score = [i / 40 for i in range(40)]
    >>> y_score[5], y_score[30] = 0.9, 0.1                  # two confident mistakes
    >>> y_pred = [int(p > 0.5) for p in y_score]
    >>> s = classification_summary(y_true, y_pred, y_score, random_state=0)
    >>> print(f"bacc={s.balanced_accuracy:.3f} [{s.balanced_accuracy_low:.3f}, "
    ...       f"{s.balanced_accuracy_high:.3f}] auc={s.roc_auc:.3f} "
    ...       f"[{s.roc_auc_low:.3f}, {s.roc_auc_high:.3f}]")
    bacc=0.925 [0.825, 1.000] auc=0.922 [0.802, 1.000]
    """
    from ._bootstrap import balanced_accuracy_ci, roc_auc_ci

    _check_confidence(confidence)
    y_true, y_pred = _check_targets(y_true, y_pred)
    labels = unique_labels(y_true, y_pred) if labels is None else column_or_1d(labels)
    if len(labels) < 2:
        raise ValueError(
            f"classification_summary needs at least two classes, got labels="
            f"{np.asarray(labels).tolist()}. Pass labels=[...] with all classes."
        )
    unknown = np.setdiff1d(unique_labels(y_true, y_pred), labels)
    if unknown.size:
        raise ValueError(
            f"y_true or y_pred contain labels {unknown.tolist()} that are not in "
            f"labels={list(labels)}. Pass all classes in labels."
        )
    binary = len(labels) == 2
    if binary:
        pos_label = labels[1] if pos_label is None else pos_label
        if pos_label not in labels:
            raise ValueError(
                f"pos_label={pos_label!r} is not one of labels={list(labels)}."
            )
        rates = {"pos_label": pos_label, "average": "binary"}
    else:
        rates = {"average": "macro", "labels": labels}

    if not isinstance(n_resamples, numbers.Integral) or n_resamples < 0:
        raise ValueError(f"n_resamples must be an int >= 0 (0 skips the bootstrap "
                         f"intervals), got {n_resamples!r}.")
    acc = accuracy_ci(y_true, y_pred, confidence=confidence)
    boot = {"confidence": confidence, "n_resamples": max(n_resamples, 1),
            "random_state": random_state}
    nan = float("nan")
    if n_resamples:
        bacc = balanced_accuracy_ci(y_true, y_pred, **boot)
    else:
        bacc = (float(balanced_accuracy_score(y_true, y_pred)), nan, nan)
    summary = Bunch(
        n_samples=int(y_true.shape[0]),
        accuracy=acc.accuracy,
        accuracy_low=acc.low,
        accuracy_high=acc.high,
        balanced_accuracy=bacc[0],
        balanced_accuracy_low=bacc[1],
        balanced_accuracy_high=bacc[2],
        confidence=float(confidence),
        f1_macro=float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=np.nan)
        ),
        sensitivity=sensitivity_score(y_true, y_pred, zero_division=np.nan, **rates),
        specificity=specificity_score(y_true, y_pred, zero_division=np.nan, **rates),
        average=rates["average"],
    )
    if y_score is not None:
        if n_resamples:
            auc = roc_auc_ci(y_true, y_score, labels=labels, pos_label=pos_label, **boot)
        else:
            auc = (_roc_auc(y_true, y_score, list(labels), pos_label), nan, nan)
        summary["roc_auc"], summary["roc_auc_low"], summary["roc_auc_high"] = auc
    return summary
