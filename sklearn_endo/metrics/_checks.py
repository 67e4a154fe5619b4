"""Input checks shared by the metrics."""

import numbers

import numpy as np
from sklearn.utils import check_consistent_length, column_or_1d
from sklearn.utils.multiclass import type_of_target


def _check_targets(y_true, y_pred):
    """Return 1-D label arrays of a binary or multiclass task, or raise ValueError."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.ndim == 0 or y.size == 0:
            raise ValueError(
                f"{name} must be a non-empty 1-D array of class labels, got {y!r}. "
                "Pass one label per sample."
            )
        if y.ndim == 2 and y.shape[1] > 1:
            raise ValueError(
                f"{name} has shape {y.shape}: multilabel or one-hot targets are not "
                "supported. Pass one class label per sample, e.g. y.argmax(axis=1)."
            )
    check_consistent_length(y_true, y_pred)
    y_true = column_or_1d(y_true)
    y_pred = column_or_1d(y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        kind = type_of_target(y, input_name=name)
        if kind not in ("binary", "multiclass"):
            raise ValueError(
                f"{name} must hold class labels (binary or multiclass), but its type is "
                f"{kind!r}. Pass predicted labels (estimator.predict), not scores."
            )
    return y_true, y_pred


def _check_confidence(confidence):
    if not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(
            f"confidence must be a float strictly between 0 and 1, got {confidence!r}. "
            "Use e.g. confidence=0.95 for a 95% interval."
        )
