"""Paired tests on cross-validation fold scores: corrected t-test, Bayesian twin, Holm.

Fold scores of two models evaluated on the same folds are paired, and they are not
independent: the training sets of k-fold cross-validation overlap, so the per-fold
differences are positively correlated and the plain paired t-test's variance is far too
small (its false-positive rate on cross-validation reaches 20-40% at a nominal 5%).
Nadeau and Bengio's correction inflates the variance of the mean difference from
``var / J`` to ``var * (1 / J + n_test / n_train)`` (J folds in all, repeats included),
with ``J - 1`` degrees of freedom; Bouckaert and Frank showed that with it repeated
cross-validation (e.g. 10 x 10-fold) has a false-positive rate near the nominal one and
more power than one k-fold. scikit-learn's example "Statistical comparison of models
using grid search" does the same by hand. The Bayesian correlated t-test of Benavoli et
al. uses the same corrected variance as the scale of a Student-t posterior of the mean
difference.
"""

from __future__ import annotations

import numbers
from collections import namedtuple

import numpy as np
from scipy import stats

__all__ = [
    "BayesianTTestResult",
    "CorrectedTTestResult",
    "bayesian_correlated_ttest",
    "corrected_ttest",
    "holm_adjust",
]

CorrectedTTestResult = namedtuple(
    "CorrectedTTestResult",
    ["mean_difference", "std_error", "statistic", "df", "pvalue", "low", "high"])
CorrectedTTestResult.__doc__ = """Result of :func:`corrected_ttest`.

Fields
------
mean_difference : float
    Mean over folds of ``scores_a - scores_b``, in the units of the score.
std_error : float
    Corrected standard error ``sqrt(var * (1 / J + n_test / n_train))``.
statistic : float
    ``mean_difference / std_error``.
df : int
    Degrees of freedom, ``J - 1``.
pvalue : float
    p-value of the chosen ``alternative``.
low, high : float
    Confidence interval of the mean difference (two-sided, at ``confidence``).
"""

BayesianTTestResult = namedtuple(
    "BayesianTTestResult", ["p_a_better", "p_rope", "p_b_better", "mean", "scale", "df"])
BayesianTTestResult.__doc__ = """Result of :func:`bayesian_correlated_ttest`.

Fields
------
p_a_better, p_rope, p_b_better : float
    Posterior probabilities that model a is better by more than ``rope``, that the two
    are practically equivalent (difference within ``[-rope, rope]``), and that b is
    better by more than ``rope``. They sum to 1.
mean, scale, df : float
    The posterior of the mean difference ``a - b``: a Student-t with ``df`` degrees of
    freedom, location ``mean`` and scale ``scale`` (the corrected standard error).
"""


def _check_sizes(n_train, n_test):
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                or not np.isfinite(value) or value <= 0):
            raise ValueError(
                f"{name} must be a positive number (the samples in one fold's "
                f"{name[2:]} set; the mean over folds when they differ), got {value!r}.")
    return float(n_train), float(n_test)


def _differences(scores_a, scores_b):
    a = np.asarray(scores_a, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"scores_a must be 1-d (one score per fold), got shape {a.shape}.")
    if scores_b is None:
        d = a
    else:
        b = np.asarray(scores_b, dtype=float)
        if b.shape != a.shape:
            raise ValueError(
                f"scores_a and scores_b must hold one score per fold of the same folds; got "
                f"shapes {a.shape} and {b.shape}. Evaluate both on the same splits.")
        d = a - b
    if d.shape[0] < 2:
        raise ValueError(f"A paired test needs scores of at least 2 folds, got {d.shape[0]}.")
    if not np.all(np.isfinite(d)):
        raise ValueError("The fold scores contain NaN or infinity (a failed fit?); drop "
                         "those folds from both models or fix the fits.")
    return d


def _corrected_moments(d, n_train, n_test):
    """(mean, corrected standard error, df) of the differences ``d``."""
    n_train, n_test = _check_sizes(n_train, n_test)
    j = d.shape[0]
    var = d.var(ddof=1)
    # exactly equal differences (e.g. identical predictions): no spread, no rounding noise
    if np.ptp(d) == 0:
        var = 0.0
    return float(d.mean()), float(np.sqrt(var * (1.0 / j + n_test / n_train))), j - 1


def corrected_ttest(scores_a, scores_b=None, *, n_train, n_test, confidence=0.95,
                    alternative="two-sided"):
    """Nadeau-Bengio corrected resampled t-test on paired fold scores.

    Tests whether two models evaluated on the same cross-validation folds have the same
    expected score. With ``d_j`` the per-fold differences ``scores_a - scores_b`` over
    ``J`` folds (all repeats of a repeated cross-validation together)::

        t = mean(d) / sqrt(var(d, ddof=1) * (1 / J + n_test / n_train)),  df = J - 1

    The ``n_test / n_train`` term accounts for the overlap of the training sets (Nadeau
    and Bengio 2003); without it the test's false-positive rate on cross-validation is
    several times its nominal level.

    Parameters
    ----------
    scores_a : array-like of shape (n_folds,)
        Test scores of model a, one per fold (``split<i>_test_<metric>`` of a search).
    scores_b : array-like of shape (n_folds,) or None, default=None
        Test scores of model b on the same folds, in the same order; None means
        ``scores_a`` already holds the differences.
    n_train, n_test : float
        Training and test samples of one fold (their means when folds differ): for
        5-fold cross-validation on 100 samples, 80 and 20.
    confidence : float, default=0.95
        Level of the interval ``low, high`` of the mean difference.
    alternative : {"two-sided", "greater", "less"}, default="two-sided"
        "greater" tests whether a's expected score exceeds b's (use it when the
        direction was fixed before seeing the scores).

    Returns
    -------
    CorrectedTTestResult
        ``(mean_difference, std_error, statistic, df, pvalue, low, high)``. When all
        differences are equal the standard error is 0: p is 1 if they are 0, else 0.

    See Also
    --------
    bayesian_correlated_ttest : The Bayesian counterpart, with a region of practical
        equivalence.
    sklearn_endo.model_selection.compare_cv_results : This test for every candidate of a
        search.

    References
    ----------
    C. Nadeau and Y. Bengio (2003). "Inference for the generalization error". Machine
    Learning 52(3):239-281.

    R. R. Bouckaert and E. Frank (2004). "Evaluating the replicability of significance
    tests for comparing learning algorithms". PAKDD, LNCS 3056:3-12.

    Examples
    --------
    >>> from sklearn_endo.model_selection import corrected_ttest
    >>> a = [0.81, 0.84, 0.79, 0.86, 0.83]      # 5-fold CV accuracies, 100 samples
    >>> b = [0.78, 0.80, 0.80, 0.82, 0.79]
    >>> res = corrected_ttest(a, b, n_train=80, n_test=20)
    >>> print(f"{res.mean_difference:.3f} [{res.low:.3f}, {res.high:.3f}] "
    ...       f"t={res.statistic:.2f} p={res.pvalue:.3f}")
    0.028 [-0.012, 0.068] t=1.93 p=0.126
    """
    if not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}.")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got "
                         f"{alternative!r}.")
    d = _differences(scores_a, scores_b)
    mean, se, df = _corrected_moments(d, n_train, n_test)
    if se == 0:
        statistic = 0.0 if mean == 0 else np.copysign(np.inf, mean)
    else:
        statistic = mean / se
    if alternative == "two-sided":
        pvalue = 2 * stats.t.sf(abs(statistic), df)
    elif alternative == "greater":
        pvalue = stats.t.sf(statistic, df)
    else:
        pvalue = stats.t.cdf(statistic, df)
    if se == 0 and mean == 0:
        pvalue = 1.0
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    return CorrectedTTestResult(mean, se, float(statistic), df, float(min(pvalue, 1.0)),
                                mean - half, mean + half)


def bayesian_correlated_ttest(scores_a, scores_b=None, *, n_train, n_test, rope=0.01,
                              greater_is_better=True):
    """Bayesian correlated t-test of paired fold scores (Benavoli et al. 2017).

    The posterior of the mean difference ``a - b`` is a Student-t with ``J - 1``
    degrees of freedom, located at the mean fold difference, with the corrected
    standard error of :func:`corrected_ttest` as its scale (Corani and Benavoli's
    correlation ``rho = n_test / (n_train + n_test)`` gives ``rho / (1 - rho) =
    n_test / n_train``). Instead of a p-value it gives the probabilities that a is
    better, that the two are practically equivalent (their difference lies in the
    region of practical equivalence ``[-rope, rope]``), and that b is better.

    Parameters
    ----------
    scores_a : array-like of shape (n_folds,)
        Test scores of model a, one per fold.
    scores_b : array-like of shape (n_folds,) or None, default=None
        Test scores of model b on the same folds; None means ``scores_a`` holds the
        differences.
    n_train, n_test : float
        Training and test samples of one fold (their means when folds differ).
    rope : float, default=0.01
        Half-width of the region of practical equivalence, in the units of the score
        (0.01 is one percentage point of accuracy). 0 makes ``p_rope`` 0.
    greater_is_better : bool, default=True
        False for losses (``log_loss``): a is then better when its score is lower.

    Returns
    -------
    BayesianTTestResult
        ``(p_a_better, p_rope, p_b_better, mean, scale, df)``.

    See Also
    --------
    corrected_ttest : The frequentist test with the same variance.

    References
    ----------
    A. Benavoli, G. Corani, J. Demsar and M. Zaffalon (2017). "Time for a change: a
    tutorial for comparing multiple classifiers through Bayesian analysis". Journal of
    Machine Learning Research 18(77):1-36.

    G. Corani and A. Benavoli (2015). "A Bayesian approach for comparing cross-validated
    algorithms on multiple data sets". Machine Learning 100(2):285-304.

    Examples
    --------
    >>> from sklearn_endo.model_selection import bayesian_correlated_ttest
    >>> a = [0.81, 0.84, 0.79, 0.86, 0.83]
    >>> b = [0.78, 0.80, 0.80, 0.82, 0.79]
    >>> res = bayesian_correlated_ttest(a, b, n_train=80, n_test=20, rope=0.01)
    >>> print(f"a better {res.p_a_better:.2f}, equivalent {res.p_rope:.2f}, "
    ...       f"b better {res.p_b_better:.2f}")
    a better 0.86, equivalent 0.11, b better 0.03
    """
    if (not isinstance(rope, numbers.Real) or isinstance(rope, bool)
            or not np.isfinite(rope) or rope < 0):
        raise ValueError(f"rope must be a finite number >= 0 in the units of the score "
                         f"(e.g. 0.01 for one point of accuracy), got {rope!r}.")
    d = _differences(scores_a, scores_b)
    mean, scale, df = _corrected_moments(d, n_train, n_test)
    if scale == 0:  # a point mass at the mean difference
        above, below = float(mean > rope), float(mean < -rope)
    else:
        post = stats.t(df, loc=mean, scale=scale)
        above, below = float(post.sf(rope)), float(post.cdf(-rope))
    inside = max(0.0, 1.0 - above - below)
    if greater_is_better:
        return BayesianTTestResult(above, inside, below, mean, scale, df)
    return BayesianTTestResult(below, inside, above, mean, scale, df)


def holm_adjust(pvalues):
    """Holm's step-down adjusted p-values (family-wise error control).

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted
    value of the i-th is ``max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting every
    hypothesis whose adjusted p-value is at most ``alpha`` keeps the probability of any
    false rejection at most ``alpha``, whatever the dependence between the tests (Holm
    1979), and rejects at least what Bonferroni rejects. NaN entries are left out of
    the family and stay NaN.

    Parameters
    ----------
    pvalues : array-like of shape (m,)

    Returns
    -------
    ndarray of shape (m,)
        Adjusted p-values, in the input order.

    References
    ----------
    S. Holm (1979). "A simple sequentially rejective multiple test procedure".
    Scandinavian Journal of Statistics 6(2):65-70.

    Examples
    --------
    >>> from sklearn_endo.model_selection import holm_adjust
    >>> holm_adjust([0.01, 0.04, 0.03, 0.005])
    array([0.03, 0.06, 0.06, 0.02])
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-d, got shape {p.shape}.")
    keep = ~np.isnan(p)
    if np.any((p[keep] < 0) | (p[keep] > 1)):
        raise ValueError(f"pvalues must lie in [0, 1], got {p.tolist()}.")
    out = np.full_like(p, np.nan)
    q = p[keep]
    m = q.shape[0]
    if m:
        order = np.argsort(q, kind="stable")
        scaled = np.minimum(1.0, (m - np.arange(m)) * q[order])
        adjusted = np.empty(m)
        adjusted[order] = np.maximum.accumulate(scaled)
        out[keep] = adjusted
    return out
