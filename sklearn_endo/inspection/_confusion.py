"""Pairs of classes confused far more often one way than the other."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix

__all__ = ["confusion_asymmetry"]

_NORMALIZE = ("true", "pred", "all", None)


def _rates(cm, normalize):
    cm = cm.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        if normalize == "true":
            out = cm / cm.sum(axis=1, keepdims=True)
        elif normalize == "pred":
            out = cm / cm.sum(axis=0, keepdims=True)
        elif normalize == "all":
            out = cm / cm.sum()
        else:
            out = cm
    return np.nan_to_num(out)


def confusion_asymmetry(y_true, y_pred, *, labels=None, normalize="true", as_frame=False):
    """Per-pair confusion rates in both directions, most asymmetric pairs first.

    For each unordered pair of classes {a, b}, ``rate_ab`` is the share of class ``a``
    predicted as ``b`` (with ``normalize="true"``: ``C[a, b] / C[a, :].sum()``) and
    ``rate_ba`` the reverse. Each row is oriented so that ``rate_ab >= rate_ba``
    (``a`` is the class more often taken for ``b``), and rows are sorted by
    ``difference = rate_ab - rate_ba``, largest first. In the layer-wise study,
    normal Z-line read as esophagitis in 23.5% of cases and the reverse in 4.5% gives
    the row ``(z-line, esophagitis, 0.235, 0.045, 0.19, 5.2)``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    labels : array-like or None
        Classes to include, in order; default the sorted union of both.
    normalize : {"true", "pred", "all"} or None, default="true"
        As in ``sklearn.metrics.confusion_matrix``; None uses raw counts.
    as_frame : bool, default=False
        Return a pandas DataFrame instead of a dict of arrays.

    Returns
    -------
    table : dict of ndarray or DataFrame
        Columns ``class_a``, ``class_b``, ``rate_ab``, ``rate_ba``, ``difference``,
        ``ratio`` (``rate_ab / rate_ba``; inf when only one direction occurs, nan when
        neither does), ``count_ab``, ``count_ba``; one row per pair.

    Examples
    --------
    >>> from sklearn_endo.inspection import confusion_asymmetry
    >>> t = confusion_asymmetry(["z", "z", "z", "e"], ["e", "z", "z", "e"])
    >>> str(t["class_a"][0]), str(t["class_b"][0]), round(float(t["rate_ab"][0]), 3)
    ('z', 'e', 0.333)
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize={normalize!r} is invalid; use one of {_NORMALIZE}.")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-d of the same length; got shapes "
                         f"{y_true.shape} and {y_pred.shape}.")
    if labels is None:
        labels = np.unique(np.concatenate([y_true, y_pred]))
    labels = np.asarray(labels)
    if len(labels) < 2:
        raise ValueError(f"confusion_asymmetry needs at least 2 classes; got {labels.tolist()}.")
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    rates = _rates(cm, normalize)
    ia, ib = np.triu_indices(len(labels), k=1)
    swap = rates[ib, ia] > rates[ia, ib]
    a, b = np.where(swap, ib, ia), np.where(swap, ia, ib)
    rate_ab, rate_ba = rates[a, b], rates[b, a]
    diff = rate_ab - rate_ba
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(rate_ba > 0, rate_ab / np.where(rate_ba > 0, rate_ba, 1),
                         np.where(rate_ab > 0, np.inf, np.nan))
    # largest difference first; ties: more confusion overall first
    order = np.lexsort((-(rate_ab + rate_ba), -diff))
    table = {
        "class_a": labels[a][order],
        "class_b": labels[b][order],
        "rate_ab": rate_ab[order],
        "rate_ba": rate_ba[order],
        "difference": diff[order],
        "ratio": ratio[order],
        "count_ab": cm[a, b][order],
        "count_ba": cm[b, a][order],
    }
    if as_frame:
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("as_frame=True requires pandas (pip install pandas).") from exc
        return pd.DataFrame(table)
    return table
