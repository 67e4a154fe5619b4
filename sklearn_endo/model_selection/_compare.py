"""Every candidate of a cross-validated search against the best one and the last one.

:func:`compare_fold_scores` is the analysis on a (candidates x folds) array;
:class:`CVComparison` holds its result. ``layer_sweep``'s result, the CLI and
:func:`~sklearn_endo.model_selection.compare_cv_results` all go through it.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._stats import (
    _check_sizes,
    _corrected_moments,
    bayesian_correlated_ttest,
    corrected_ttest,
    holm_adjust,
)

__all__ = ["CVComparison", "compare_fold_scores"]


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _num(x, signed=False):
    """Three decimals for the usual scores and losses, significant digits otherwise."""
    spec = "+" if signed else ""
    return f"{x:{spec}.3f}" if abs(x) < 100 else f"{x:{spec}.4g}"


def _format_values(values):
    """``[3, 4, 5, 7]`` -> ``"3-5, 7"`` for integers; a comma list otherwise."""
    if not values:
        return "none"
    if not all(isinstance(v, numbers.Integral) for v in values):
        return ", ".join(str(v) for v in values)
    values = sorted(int(v) for v in values)
    runs, start = [], values[0]
    for prev, cur in zip(values, [*values[1:], None]):
        if cur is None or cur != prev + 1:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(runs)


class CVComparison:
    """Paired comparison of cross-validated candidates (e.g. the layers of a sweep).

    Built by :func:`compare_fold_scores`, :func:`compare_cv_results` or a
    ``LayerSweepResult``; every array is aligned with :attr:`candidates`.
    Differences are ``candidate - best`` and ``candidate - last`` in the units of the
    metric (for a loss, a positive difference to the best means worse).

    Attributes
    ----------
    candidates : list
        The compared values (layers, or any parameter's values), in input order.
    param : str or None
        The parameter they are values of (``"layer"``, ``"clf__C"``).
    metric : str
        Name of the score; losses are in their own units (``log_loss``, not negated).
    greater_is_better : bool
    scores : ndarray of shape (n_candidates, n_folds)
        Test score of every candidate on every fold (the same folds for all).
    mean, std : ndarray of shape (n_candidates,)
    n_folds, n_train, n_test : int, float, float
        Folds in all (repeats included) and the mean training and test set sizes that
        the corrected variance uses.
    alpha, confidence, rope : float
        Level of the Holm-corrected tests, of the intervals, and the half-width of the
        region of practical equivalence of the Bayesian test.
    best, last : value of ``candidates``
        The candidate with the best mean score (the first of equal ones) and the
        reference, by default the largest value (the last layer).
    diff_to_best, diff_to_best_low, diff_to_best_high : ndarray
        Mean fold difference to the best candidate and its ``confidence`` interval
        (corrected t-test, per comparison).
    pvalue_vs_best, pvalue_vs_best_holm : ndarray
        Two-sided p-value of the corrected t-test against the best, and Holm-adjusted
        over the ``n_candidates - 1`` comparisons with the best (NaN for the best).
    prob_best_better, prob_equivalent, prob_candidate_better : ndarray
        Bayesian correlated t-test against the best: posterior probabilities that the
        best is better by more than ``rope``, that the two are within ``rope``, and
        that the candidate is better.
    diff_to_last, diff_to_last_low, diff_to_last_high, pvalue_vs_last : ndarray
        The same against ``last`` (unadjusted: one planned comparison per candidate).
    tied : ndarray of bool
        Not significantly worse than the best: Holm-adjusted p-value above ``alpha``
        (the best itself included).
    one_se : ndarray of bool
        Mean within one corrected standard error (:attr:`best_se`) of the best mean.
    best_se : float
        Corrected standard error of the best candidate's mean score,
        ``std(ddof=1) * sqrt(1 / n_folds + n_test / n_train)``.
    tied_candidates, one_se_candidates : list
    smallest_tied, smallest_one_se : value or None
        The smallest value in each set (the cheapest encoder cut that is as good); None
        when the candidates are not numbers.
    best_vs_last : dict
        ``difference`` (best - last), ``low``, ``high``, ``pvalue``, ``pvalue_holm``,
        ``significant`` (the last is significantly worse than the best, after Holm)
        and ``verdict`` (that in words).
    """

    def __init__(self, candidates, scores, *, n_train, n_test, greater_is_better=True,
                 metric="score", param=None, alpha=0.05, confidence=0.95, rope=0.01,
                 reference=None):
        self.candidates = list(candidates)
        self.scores = np.asarray(scores, dtype=float)
        self.n_train, self.n_test = _check_sizes(n_train, n_test)
        self.greater_is_better = bool(greater_is_better)
        self.metric, self.param = metric, param
        self.alpha, self.confidence, self.rope = alpha, confidence, rope
        if not (isinstance(alpha, numbers.Real) and 0 < alpha < 1):
            raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha!r}.")
        s = self.scores
        if s.ndim != 2 or s.shape[0] != len(self.candidates) or s.shape[0] < 1:
            raise ValueError(f"scores must have shape (n_candidates={len(self.candidates)}, "
                             f"n_folds); got {s.shape}.")
        if s.shape[1] < 2:
            raise ValueError(f"scores hold {s.shape[1]} fold; a paired test needs at least "
                             "2 folds of cross-validation.")
        if len(set(map(repr, self.candidates))) != len(self.candidates):
            raise ValueError(f"candidates must be distinct, got {self.candidates}.")
        self.n_folds = s.shape[1]
        finite = np.all(np.isfinite(s), axis=1)
        if not finite.any():
            raise ValueError("Every candidate has a NaN or infinite fold score; nothing to "
                             "compare (failed fits?).")
        self.mean = s.mean(axis=1)
        self.std = s.std(axis=1)
        sign = 1.0 if self.greater_is_better else -1.0
        masked = np.where(finite, sign * self.mean, -np.inf)
        self.best_index = int(np.argmax(masked))  # the first of equal means
        self.best = self.candidates[self.best_index]
        self.last_index = self._reference_index(reference)
        self.last = self.candidates[self.last_index]
        n = len(self.candidates)
        nan = np.full(n, np.nan)
        self.diff_to_best, self.diff_to_best_low, self.diff_to_best_high = (
            nan.copy(), nan.copy(), nan.copy())
        self.pvalue_vs_best = nan.copy()
        self.prob_best_better, self.prob_equivalent, self.prob_candidate_better = (
            nan.copy(), nan.copy(), nan.copy())
        self.diff_to_last, self.diff_to_last_low, self.diff_to_last_high = (
            nan.copy(), nan.copy(), nan.copy())
        self.pvalue_vs_last = nan.copy()
        sizes = {"n_train": self.n_train, "n_test": self.n_test}
        b, ref = self.best_index, self.last_index
        for i in np.flatnonzero(finite):
            t = corrected_ttest(s[i], s[b], confidence=confidence, **sizes)
            self.diff_to_best[i], self.diff_to_best_low[i], self.diff_to_best_high[i] = (
                t.mean_difference, t.low, t.high)
            bayes = bayesian_correlated_ttest(s[b], s[i], rope=rope,
                                              greater_is_better=self.greater_is_better,
                                              **sizes)
            self.prob_best_better[i] = bayes.p_a_better
            self.prob_equivalent[i] = bayes.p_rope
            self.prob_candidate_better[i] = bayes.p_b_better
            if i != b:
                self.pvalue_vs_best[i] = t.pvalue
            if finite[ref]:
                t = corrected_ttest(s[i], s[ref], confidence=confidence, **sizes)
                self.diff_to_last[i], self.diff_to_last_low[i] = t.mean_difference, t.low
                self.diff_to_last_high[i] = t.high
                if i != ref:
                    self.pvalue_vs_last[i] = t.pvalue
        self.pvalue_vs_best_holm = holm_adjust(self.pvalue_vs_best)
        self.tied = finite & ~(self.pvalue_vs_best_holm <= alpha)
        self.best_se = _corrected_moments(s[b], self.n_train, self.n_test)[1]
        self.one_se = finite & (sign * (self.mean - self.mean[b]) >= -self.best_se)
        self.tied_candidates = [c for c, t in zip(self.candidates, self.tied) if t]
        self.one_se_candidates = [c for c, t in zip(self.candidates, self.one_se) if t]
        numeric = all(_is_number(c) for c in self.candidates)
        self.smallest_tied = min(self.tied_candidates) if numeric else None
        self.smallest_one_se = min(self.one_se_candidates) if numeric else None
        self.best_vs_last = {
            "difference": float(self.diff_to_last[b]) if b != ref else 0.0,
            "low": float(self.diff_to_last_low[b]) if b != ref else 0.0,
            "high": float(self.diff_to_last_high[b]) if b != ref else 0.0,
            "pvalue": float(self.pvalue_vs_last[b]) if b != ref else 1.0,
            "pvalue_holm": float(self.pvalue_vs_best_holm[ref]) if b != ref else 1.0,
            "significant": bool(not self.tied[ref]),
        }
        self.best_vs_last["verdict"] = self._verdict()

    def _verdict(self):
        bl, m = self.best_vs_last, int(np.isfinite(self.pvalue_vs_best).sum())
        if self.best_index == self.last_index:
            return f"the best is the last {self._name}"
        if bl["significant"]:
            return f"significantly better than the last (Holm over {m} comparisons)"
        if bl["pvalue"] <= self.alpha:
            return (f"not significantly better than the last after Holm's correction for "
                    f"{m} comparisons (p = {bl['pvalue']:.3g} alone)")
        return "not significantly better than the last"

    def _reference_index(self, reference):
        if reference is not None:
            for i, c in enumerate(self.candidates):
                if c == reference:
                    return i
            raise ValueError(f"reference={reference!r} is not one of the candidates "
                             f"{self.candidates}.")
        if not all(_is_number(c) for c in self.candidates):
            return len(self.candidates) - 1
        values = np.asarray(self.candidates, dtype=float)
        if (values < 0).any() and (values >= 0).any() and -1 in self.candidates:
            return self.candidates.index(-1)  # -1 is the last block
        return int(np.argmax(values))

    @property
    def _name(self):
        return self.param.rsplit("__", 1)[-1] if self.param else "candidate"

    def to_dict(self):
        """Columns: the candidate, mean, std and every per-candidate statistic."""
        cols = {self._name: np.asarray(self.candidates, dtype=object if not all(
            _is_number(c) for c in self.candidates) else None)}
        for key in ("mean", "std", "diff_to_best", "diff_to_best_low", "diff_to_best_high",
                    "pvalue_vs_best", "pvalue_vs_best_holm", "prob_best_better",
                    "prob_equivalent", "prob_candidate_better", "diff_to_last",
                    "diff_to_last_low", "diff_to_last_high", "pvalue_vs_last", "tied",
                    "one_se"):
            cols[key] = np.asarray(getattr(self, key))
        return cols

    def to_frame(self):
        """A pandas DataFrame of :meth:`to_dict`, one row per candidate."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("CVComparison.to_frame requires pandas (pip install pandas); "
                              "use .to_dict() for a dict of numpy arrays.") from exc
        return pd.DataFrame(self.to_dict())

    def summary(self):
        """Three lines of text: best vs last, the tied set, the one-SE set."""
        name = self._name
        pct = f"{100 * self.confidence:g}%"
        b = self.best_index
        lines = [f"best {name} {self.best}: {self.metric} {_num(self.mean[b])}"]
        if self.best_index == self.last_index:
            lines[0] += f"; it is the last {name}"
        else:
            bl = self.best_vs_last
            lines[0] += (f"; vs the last {name} {self.last} "
                         f"({_num(self.mean[self.last_index])}): difference "
                         f"{_num(bl['difference'], True)} [{pct} CI {_num(bl['low'], True)}, "
                         f"{_num(bl['high'], True)}], p = {bl['pvalue']:.3g} (Holm over "
                         f"{int(np.isfinite(self.pvalue_vs_best).sum())}: "
                         f"{bl['pvalue_holm']:.3g}): {bl['verdict']}")
        smallest = ("" if self.smallest_tied is None
                    else f"; the smallest: {self.smallest_tied}")
        lines.append(f"not significantly worse than the best (corrected t-test, Holm, "
                     f"alpha={self.alpha:g}): {_format_values(self.tied_candidates)}"
                     f"{smallest}")
        smallest = ("" if self.smallest_one_se is None
                    else f"; the smallest: {self.smallest_one_se}")
        lines.append(f"within one standard error ({_num(self.best_se)}) of the best: "
                     f"{_format_values(self.one_se_candidates)}{smallest}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"CVComparison({self._name}s={len(self.candidates)}, folds={self.n_folds}, "
                f"metric={self.metric!r}, best={self.best!r}, tied={self.tied_candidates!r})")


def compare_fold_scores(scores, *, n_train, n_test, candidates=None, greater_is_better=True,
                        metric="score", param=None, alpha=0.05, confidence=0.95, rope=0.01,
                        reference=None):
    """Compare every candidate with the best and the last, on paired fold scores.

    For every candidate: the mean difference to the best candidate and to the
    reference (the last layer) with its confidence interval and the two-sided p-value
    of the Nadeau-Bengio corrected t-test (:func:`corrected_ttest`); the Bayesian
    correlated t-test against the best; then the set of candidates not significantly
    worse than the best, with Holm's correction over the ``n_candidates - 1``
    comparisons with the best, and the one-standard-error set.

    The best candidate is chosen on the same folds that test it, so its advantage is
    optimistic; the two-sided p-values (twice the one-sided ones) and Holm's
    correction make the tied set conservative, not exact. For an unbiased estimate of
    the chosen candidate's score, use nested cross-validation or a held-out test set.

    Parameters
    ----------
    scores : array-like of shape (n_candidates, n_folds) or dict
        Test score of each candidate on each fold, the same folds for all; or a dict
        ``{candidate: fold scores}``.
    n_train, n_test : float
        Training and test samples of one fold (their means when folds differ).
    candidates : list or None
        Names of the rows (e.g. layers); None uses the dict's keys or ``0..n-1``.
    greater_is_better : bool, default=True
        False for losses.
    metric, param : str
        Names used in the text of :meth:`CVComparison.summary`.
    alpha : float, default=0.05
        Family-wise level of the comparisons with the best.
    confidence : float, default=0.95
        Level of the intervals.
    rope : float, default=0.01
        Region of practical equivalence of the Bayesian test, in the metric's units.
    reference : value or None
        The candidate called "last"; None picks the largest value (-1 when negative
        and non-negative layer indices mix), or the last candidate if they are not
        numbers.

    Returns
    -------
    CVComparison

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.model_selection import compare_fold_scores
    >>> rng = np.random.default_rng(0)
    >>> fold_effect = rng.normal(0, 0.03, 10)       # 2 x 5-fold CV: shared per fold
    >>> scores = {layer: 0.7 + gain + fold_effect + rng.normal(0, 0.01, 10)
    ...           for layer, gain in [(2, 0.0), (4, 0.10), (6, 0.11), (8, 0.09)]}
    >>> cmp = compare_fold_scores(scores, n_train=80, n_test=20, param="layer",
    ...                           metric="accuracy")
    >>> cmp.best, cmp.tied_candidates, cmp.smallest_tied
    (6, [4, 6, 8], 4)
    >>> print(cmp.summary())  # doctest: +NORMALIZE_WHITESPACE
    best layer 6: accuracy 0.814; vs the last layer 8 (0.801): difference +0.012
    [95% CI -0.002, +0.026], p = 0.0771 (Holm over 3: 0.143): not significantly
    better than the last
    not significantly worse than the best (corrected t-test, Holm, alpha=0.05): 4, 6, 8;
    the smallest: 4
    within one standard error (0.011) of the best: 6; the smallest: 6
    """
    if isinstance(scores, dict):
        if candidates is not None:
            raise ValueError("Pass candidates only with an array of scores; a dict's keys "
                             "are the candidates.")
        candidates = list(scores)
        rows = [np.asarray(v, dtype=float) for v in scores.values()]
        if len({r.shape for r in rows}) != 1:
            raise ValueError(f"Every candidate needs a score on every fold; got shapes "
                             f"{[r.shape for r in rows]}.")
        scores = np.stack(rows)
    scores = np.asarray(scores, dtype=float)
    if candidates is None:
        candidates = list(range(scores.shape[0])) if scores.ndim == 2 else []
    return CVComparison(candidates, scores, n_train=n_train, n_test=n_test,
                        greater_is_better=greater_is_better, metric=metric, param=param,
                        alpha=alpha, confidence=confidence, rope=rope, reference=reference)
