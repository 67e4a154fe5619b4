"""Confidence intervals for proportions: Wilson score intervals and accuracy with CI."""

from collections import namedtuple

import numpy as np
from scipy.stats import norm

from ._checks import _check_confidence, _check_targets

__all__ = ["AccuracyCI", "accuracy_ci", "wilson_interval"]

AccuracyCI = namedtuple("AccuracyCI", ["accuracy", "low", "high"])
AccuracyCI.__doc__ = """Accuracy with its Wilson score confidence interval.

Fields
------
accuracy : float
    Fraction of correct predictions.
low, high : float
    Bounds of the Wilson score interval at the requested confidence.
"""


# ------------------------------------------------------------- confidence intervals
def wilson_interval(successes, n, *, confidence=0.95):
    """Wilson score confidence interval for a binomial proportion.

    Unlike the normal-approximation (Wald) interval, the Wilson interval stays inside
    [0, 1] and keeps close to its nominal coverage for the small test sets and
    extreme proportions (sensitivity near 1) common in medical imaging. With
    :math:`\\hat p = k / n` and :math:`z` the standard-normal quantile at
    ``(1 + confidence) / 2``::

        center = (p + z**2 / (2 n)) / (1 + z**2 / n)
        half   = z / (1 + z**2 / n) * sqrt(p (1 - p) / n + z**2 / (4 n**2))

    Parameters
    ----------
    successes : int, float or array-like
        Number of successes k (e.g. correct predictions), ``0 <= k <= n``.

    n : int, float or array-like
        Number of trials; must be positive. Broadcast against ``successes``.

    confidence : float, default=0.95
        Confidence level, strictly between 0 and 1.

    Returns
    -------
    low, high : float or ndarray
        Interval bounds; arrays when the inputs are arrays.

    See Also
    --------
    accuracy_ci : Accuracy with its Wilson interval.

    References
    ----------
    E. B. Wilson (1927). "Probable inference, the law of succession, and statistical
    inference". Journal of the American Statistical Association 22(158):209-212.

    Examples
    --------
    >>> from sklearn_endo.metrics import wilson_interval
    >>> low, high = wilson_interval(8, 10)
    >>> print(f"{low:.4f} {high:.4f}")
    0.4902 0.9433
    >>> low, high = wilson_interval([0, 5], [10, 10])
    >>> low.round(4), high.round(4)
    (array([0.    , 0.2366]), array([0.2775, 0.7634]))
    """
    _check_confidence(confidence)
    k = np.asarray(successes, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(n_arr))):
        raise ValueError(
            f"successes and n must be finite, got successes={successes!r}, n={n!r}."
        )
    if np.any(n_arr <= 0):
        raise ValueError(
            f"n must be positive, got n={n!r}. An interval needs at least one trial."
        )
    if np.any(k < 0) or np.any(k > n_arr):
        raise ValueError(
            f"successes must satisfy 0 <= successes <= n, got successes={successes!r} "
            f"and n={n!r}."
        )
    z = norm.ppf(0.5 + confidence / 2.0)
    p = k / n_arr
    denominator = 1.0 + z**2 / n_arr
    center = (p + z**2 / (2.0 * n_arr)) / denominator
    half = z / denominator * np.sqrt(p * (1.0 - p) / n_arr + z**2 / (4.0 * n_arr**2))
    # exact at the ends (the formula gives 0 and 1 there, up to rounding)
    low = np.where(k == 0, 0.0, np.clip(center - half, 0.0, 1.0))
    high = np.where(k == n_arr, 1.0, np.clip(center + half, 0.0, 1.0))
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def accuracy_ci(y_true, y_pred, *, confidence=0.95):
    """Accuracy with its Wilson score confidence interval.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True class labels.

    y_pred : array-like of shape (n_samples,)
        Predicted class labels.

    confidence : float, default=0.95
        Confidence level, strictly between 0 and 1.

    Returns
    -------
    result : AccuracyCI
        Named tuple ``(accuracy, low, high)``.

    See Also
    --------
    wilson_interval : The interval used here.

    Examples
    --------
    >>> from sklearn_endo.metrics import accuracy_ci
    >>> acc, low, high = accuracy_ci([0, 1, 1, 0, 1, 1, 0, 1, 1, 0],
    ...                              [0, 1, 1, 0, 1, 1, 0, 1, 0, 1])
    >>> print(f"{acc:.2f} [{low:.3f}, {high:.3f}]")
    0.80 [0.490, 0.943]
    """
    _check_confidence(confidence)
    y_true, y_pred = _check_targets(y_true, y_pred)
    n_correct = int(np.sum(y_true == y_pred))
    low, high = wilson_interval(n_correct, y_true.shape[0], confidence=confidence)
    return AccuracyCI(n_correct / y_true.shape[0], low, high)


# ------------------------------------------------------------------------------ QWK
