"""The comparisons from what scikit-learn and Optuna searches leave: ``cv_results_``.

:func:`compare_cv_results` analyses the candidates of one search (e.g. its layers);
:func:`compare_searches` and :func:`compare_estimators` compare two models on the same
folds (ImageNet vs self-supervised weights, frozen vs fine-tuned).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
from sklearn.base import is_classifier
from sklearn.model_selection import check_cv, cross_validate
from sklearn.model_selection._search import BaseSearchCV

from ._compare import _num, compare_fold_scores
from ._stats import _check_sizes, bayesian_correlated_ttest, corrected_ttest

__all__ = ["PairedComparison", "compare_cv_results", "compare_estimators", "compare_searches"]


# ------------------------------------------------------------------ reading a search
def _lower_is_better(name):
    return "loss" in name or "error" in name


def _unpack(search):
    """(cv_results dict, the search or None, a params list)."""
    if hasattr(search, "cv_results_"):
        results = search.cv_results_
        params = results.get("params")
        if params is None and hasattr(search, "trials_"):  # OptunaSearchCV
            params = [t.params for t in search.trials_]
        return results, search, params
    if isinstance(search, dict):
        return search, None, search.get("params")
    raise TypeError(f"Expected a fitted GridSearchCV / RandomizedSearchCV / OptunaSearchCV or "
                    f"its cv_results_ dict; got {type(search).__name__}. Fit the search first.")


def _metric_key(results, search, metric):
    """(column suffix, metric name in its own units, greater_is_better, sign)."""
    names = sorted({m.group(1) for k in results
                    if (m := re.fullmatch(r"split\d+_test_(.+)", k))})
    if not names:
        raise ValueError("cv_results_ holds no split<i>_test_<metric> columns (per-fold "
                         "scores); a paired test needs them.")
    scoring = getattr(search, "scoring", None)
    if metric is None:
        if names == ["score"]:
            metric = "score"
        elif isinstance(getattr(search, "refit", None), str):
            metric = search.refit
        else:
            raise ValueError(f"The search scored several metrics {names}; pass metric= one "
                             "of them.")
    key = metric.removeprefix("mean_test_").removeprefix("test_")
    if key not in names:
        if names == ["score"] and key == scoring:
            key = "score"
        else:
            raise ValueError(f"metric={metric!r} has no per-fold columns in cv_results_; "
                             f"choose from {names}.")
    name = key
    if key == "score" and isinstance(scoring, str):
        name = scoring
    if name.startswith("neg_"):
        return key, name.removeprefix("neg_"), False, -1.0
    return key, name, not _lower_is_better(name), 1.0


def _fold_scores(results, key, sign, rows=None):
    n = 0
    while f"split{n}_test_{key}" in results:
        n += 1
    cols = np.column_stack([np.asarray(results[f"split{i}_test_{key}"], dtype=float)
                            for i in range(n)])
    if rows is not None:
        cols = cols[rows]
    return sign * cols


def _find_param(params, param):
    keys = sorted({k for p in params for k in p})
    if param is None:
        found = [k for k in keys if re.search(r"(^|__)layers?$", k)]
        if len(found) != 1 and len(keys) == 1:
            found = keys
        if len(found) != 1:
            raise ValueError(f"Could not pick the parameter to compare from {keys}; pass "
                             "param='<step>__layer' (or another name).")
        return found[0]
    if param not in keys:
        close = [k for k in keys if k.endswith(param) or param.endswith(k)]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"param={param!r} is not a parameter of the search ({keys})." + hint)
    return param


def _splits(search, cv, X, y, groups):
    """The search's folds recomputed from X, y, groups, or None without X."""
    if X is None:
        return None
    if cv is None:
        if search is None:
            raise ValueError("Pass cv= (the search's cv) with X, or n_train= and n_test=, "
                             "when giving cv_results_ without the search.")
        cv = search.cv
    n = X if isinstance(X, (int, np.integer)) else len(X)
    idx = getattr(search, "sample_indices_", None)  # OptunaSearchCV(subsample=...)
    y_arr = None if y is None else np.asarray(y)
    groups_arr = None if groups is None else np.asarray(groups)
    if idx is not None and len(idx) < n:
        n = len(idx)
        y_arr = None if y_arr is None else y_arr[idx]
        groups_arr = None if groups_arr is None else groups_arr[idx]
    estimator = getattr(search, "estimator", None)
    splitter = check_cv(cv, y_arr, classifier=estimator is not None and is_classifier(estimator))
    placeholder = np.zeros((n, 1))
    return [(tr, te) for tr, te in splitter.split(placeholder, y_arr, groups_arr)]


def _same_folds(a, b):
    return len(a) == len(b) and all(
        np.array_equal(ta, tb) and np.array_equal(ea, eb) for (ta, ea), (tb, eb) in zip(a, b))


def _sizes(splits, n_train, n_test, n_folds, what):
    if n_train is not None or n_test is not None:
        if n_train is None or n_test is None:
            raise ValueError("Pass both n_train and n_test, or neither (then X and y).")
        return _check_sizes(n_train, n_test)
    if splits is None:
        raise ValueError(f"{what}: the corrected t-test needs the fold sizes. Pass X and y "
                         "(as given to fit; groups too for a group splitter) to recompute "
                         "the search's folds, or n_train= and n_test= (samples in one "
                         "fold's training and test sets).")
    if len(splits) != n_folds:
        raise ValueError(f"{what}: the cv recomputed from X gives {len(splits)} folds but "
                         f"cv_results_ has {n_folds}; pass the X, y and groups the search "
                         "was fitted on, or n_train= and n_test=.")
    return (float(np.mean([len(tr) for tr, _ in splits])),
            float(np.mean([len(te) for _, te in splits])))


def _reproducible(search, cv, X, y, groups):
    """The folds, or raise when two calls of the splitter give different folds."""
    first = _splits(search, cv, X, y, groups)
    if first is not None and not _same_folds(first, _splits(search, cv, X, y, groups)):
        raise ValueError(
            "The search's cv gives different folds on every call (shuffle=True without an "
            "int random_state), so its candidates (Optuna trials) or two searches were not "
            "evaluated on the same folds and cannot be paired. Rerun with e.g. "
            "cv=StratifiedKFold(5, shuffle=True, random_state=0).")
    return first


def compare_cv_results(search, param=None, *, metric=None, X=None, y=None, groups=None,
                       cv=None, n_train=None, n_test=None, alpha=0.05, confidence=0.95,
                       rope=0.01, reference=None):
    """Which values of a parameter (e.g. the layer) tie with the best, from a search.

    The analysis of :func:`compare_fold_scores` (corrected t-test and Bayesian
    correlated t-test of every value against the best and the last, Holm's correction,
    the tied and one-standard-error sets) on the per-fold test scores that a fitted
    ``GridSearchCV``, ``RandomizedSearchCV`` or ``OptunaSearchCV`` stores
    (``split<i>_test_<metric>``), without fitting anything again. When the search has
    other parameters too, each value is represented by its best candidate (highest mean
    score), which makes every value look a little better than it is.

    The corrected variance needs the fold sizes: pass the ``X`` and ``y`` (and
    ``groups``) given to ``fit``, from which the search's ``cv`` is split again (only
    ``len(X)`` is used, so a list of paths is fine), or ``n_train`` and ``n_test``
    directly. scikit-learn's searches evaluate every candidate on the same folds;
    Optuna's evaluate each trial on a new ``cv.split``, which is the same folds only
    when the splitter is deterministic (an int, or ``shuffle=True`` with an int
    ``random_state``): given ``X``, a splitter that is not is refused.

    Parameters
    ----------
    search : fitted search or dict
        The search, or its ``cv_results_`` (then pass ``cv`` with ``X``, or the sizes).
    param : str or None
        The parameter to compare, e.g. ``"layerfeaturetransformer__layer"``; None finds
        the one parameter whose name ends in ``layer``, or the only parameter.
    metric : str or None
        Scorer name of a multi-metric search (``"neg_log_loss"``); None takes the single
        score, or the search's ``refit`` metric. ``neg_*`` scores are negated back into
        losses (lower is better) and reported in their own units.
    X, y, groups : optional
        As given to the search's ``fit``; ``X`` may be its length.
    cv : int, splitter or None
        The search's ``cv``, when ``search`` is a dict.
    n_train, n_test : float, optional
        Samples in one fold's training and test sets (means when they differ).
    alpha, confidence, rope, reference
        See :func:`compare_fold_scores`.

    Returns
    -------
    CVComparison

    See Also
    --------
    compare_fold_scores : The same on an array of fold scores.
    compare_searches : Two searches (e.g. two encoders) on the same folds.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold
    >>> from sklearn_endo.model_selection import compare_cv_results
    >>> X, y = make_classification(120, n_features=10, n_informative=3, random_state=0)
    >>> cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=4, random_state=0)
    >>> search = GridSearchCV(LogisticRegression(), {"C": [0.001, 0.01, 0.1, 1, 10]},
    ...                       cv=cv, scoring="neg_log_loss").fit(X, y)
    >>> cmp = compare_cv_results(search, "C", X=X, y=y)
    >>> cmp.n_folds, cmp.n_train, cmp.n_test
    (20, 96.0, 24.0)
    >>> cmp.metric, cmp.best, cmp.tied_candidates
    ('log_loss', 0.1, [0.01, 0.1, 1, 10])
    >>> cmp.to_frame()[["C", "mean", "diff_to_best", "pvalue_vs_best_holm", "tied"]].round(3)
            C   mean  diff_to_best  pvalue_vs_best_holm   tied
    0   0.001  0.676         0.118                0.020  False
    1   0.010  0.606         0.047                0.220   True
    2   0.100  0.558         0.000                  NaN   True
    3   1.000  0.582         0.024                0.459   True
    4  10.000  0.592         0.034                0.459   True
    """
    results, fitted, params = _unpack(search)
    if params is None:
        raise ValueError("cv_results_ holds no 'params'; pass the fitted search.")
    if "iter" in results and "n_resources" in results:
        raise ValueError("A successive-halving search (HalvingGridSearchCV) scores its "
                         "candidates on different numbers of samples, so their fold scores "
                         "are not paired; compare the candidates of one iteration with "
                         "compare_fold_scores, or use GridSearchCV.")
    param = _find_param(params, param)
    key, name, greater, sign = _metric_key(results, fitted, metric)
    all_scores = _fold_scores(results, key, sign)
    if all_scores.shape[0] != len(params):
        raise ValueError(f"cv_results_ has {all_scores.shape[0]} rows of fold scores but "
                         f"{len(params)} parameter sets.")
    values = [p.get(param) for p in params]
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
        raise ValueError(f"{param} holds lists (e.g. concatenated layers); compare one value "
                         "per candidate.")
    direction = 1.0 if greater else -1.0
    uniq, rows = [], []
    for v in values:
        if not any(v == u and type(v) is type(u) for u in uniq):
            uniq.append(v)
    for u in uniq:
        idx = np.flatnonzero([v == u and type(v) is type(u) for v in values])
        means = direction * np.nanmean(all_scores[idx], axis=1) if len(idx) else []
        finite = np.isfinite(means)
        rows.append(idx[int(np.argmax(np.where(finite, means, -np.inf)))])
    if fitted is not None and not isinstance(fitted, BaseSearchCV):
        # Optuna draws each trial's folds from a new cv.split: paired only if repeatable
        splits = _reproducible(fitted, cv, X, y, groups)
    else:  # scikit-learn splits once per fit: every candidate saw the same folds
        splits = _splits(fitted, cv, X, y, groups)
    n_train, n_test = _sizes(splits, n_train, n_test, all_scores.shape[1],
                             "compare_cv_results")
    return compare_fold_scores(all_scores[rows], candidates=uniq, n_train=n_train,
                               n_test=n_test, greater_is_better=greater, metric=name,
                               param=param, alpha=alpha, confidence=confidence, rope=rope,
                               reference=reference)


# ------------------------------------------------------------------ two models
class PairedComparison:
    """Two models on the same folds: the corrected t-test and the Bayesian one.

    Attributes
    ----------
    scores_a, scores_b : ndarray of shape (n_folds,)
        Fold scores, in the metric's own units (losses positive).
    metric : str
    greater_is_better : bool
    n_train, n_test : float
    ttest : CorrectedTTestResult
        Of ``a - b`` (two-sided).
    bayes : BayesianTTestResult
        ``p_a_better``, ``p_rope``, ``p_b_better``.
    names : tuple of str
    """

    def __init__(self, scores_a, scores_b, *, n_train, n_test, metric, greater_is_better,
                 confidence=0.95, rope=0.01, names=("a", "b")):
        self.scores_a = np.asarray(scores_a, dtype=float)
        self.scores_b = np.asarray(scores_b, dtype=float)
        self.metric, self.greater_is_better = metric, bool(greater_is_better)
        self.n_train, self.n_test = _check_sizes(n_train, n_test)
        self.confidence, self.rope, self.names = confidence, rope, tuple(names)
        sizes = {"n_train": self.n_train, "n_test": self.n_test}
        self.ttest = corrected_ttest(self.scores_a, self.scores_b, confidence=confidence,
                                     **sizes)
        self.bayes = bayesian_correlated_ttest(self.scores_a, self.scores_b, rope=rope,
                                               greater_is_better=self.greater_is_better,
                                               **sizes)

    @property
    def n_folds(self):
        return self.scores_a.shape[0]

    def summary(self):
        a, b = self.names
        t, p = self.ttest, self.bayes
        return (f"{a} - {b}: {self.metric} {_num(self.scores_a.mean())} vs "
                f"{_num(self.scores_b.mean())}, difference {_num(t.mean_difference, True)} "
                f"[{100 * self.confidence:g}% CI {_num(t.low, True)}, {_num(t.high, True)}], "
                f"p = {t.pvalue:.3g} (corrected t-test, {self.n_folds} folds); P({a} better) "
                f"= {p.p_a_better:.2f}, P(equivalent within {self.rope:g}) = {p.p_rope:.2f}, "
                f"P({b} better) = {p.p_b_better:.2f}")

    def __repr__(self):
        return (f"PairedComparison(metric={self.metric!r}, folds={self.n_folds}, "
                f"difference={self.ttest.mean_difference:.4g}, pvalue={self.ttest.pvalue:.3g})")


def _best_row(results, key, sign, greater, index):
    scores = _fold_scores(results, key, sign)
    if index is None:
        means = (1 if greater else -1) * np.nanmean(scores, axis=1)
        index = int(np.argmax(np.where(np.isfinite(means), means, -np.inf)))
    return scores[index]


def _cv_of(search):
    return getattr(search, "cv", None)


def _check_same_cv(cv_a, cv_b):
    """Refuse two cv specifications that are known to split differently (without X)."""
    if cv_a is None or cv_b is None:
        return False
    if isinstance(cv_a, (int, np.integer)) and isinstance(cv_b, (int, np.integer)):
        if cv_a != cv_b:
            raise ValueError(f"The searches used cv={cv_a} and cv={cv_b}: not the same folds.")
        return True
    if type(cv_a) is not type(cv_b) or not hasattr(cv_a, "split") or not hasattr(
            cv_a, "random_state"):
        return False
    # scikit-learn's splitters list all their parameters in their repr
    if repr(cv_a) != repr(cv_b):
        raise ValueError(f"The searches used different splitters, {cv_a!r} and {cv_b!r}: not "
                         "the same folds. Use one cv object for both.")
    if getattr(cv_a, "shuffle", True) and not isinstance(cv_a.random_state,
                                                         (int, np.integer)):
        raise ValueError(f"The searches' cv {cv_a!r} shuffles without an int random_state, so "
                         "each search drew its own folds. Use e.g. StratifiedKFold(5, "
                         "shuffle=True, random_state=0) for both.")
    return True


def compare_searches(search_a, search_b, *, metric=None, X=None, y=None, groups=None,
                     index_a=None, index_b=None, n_train=None, n_test=None,
                     confidence=0.95, rope=0.01, names=("a", "b")):
    """Paired test of two searches' best candidates evaluated on the same folds.

    For "is the self-supervised encoder better on my data than the ImageNet one?" or
    "does fine-tuning beat the frozen probe?": run both searches with the same ``cv``
    (a deterministic one: an int, or a splitter with an int ``random_state``) on the
    same X and y, then compare their fold scores with the corrected t-test and the
    Bayesian correlated t-test. The folds are checked where possible: with ``X`` and
    ``y`` both ``cv`` are split again and must give the same folds; without them, two
    ints or two splitters of one type must have the same parameters, and a shuffling
    splitter without an int seed is refused (each search drew other folds). Anything
    else cannot be checked and warns.

    Both candidates were chosen as the best of their own search on these folds, so
    both look a little better than they are; the comparison is fair when both searches
    had comparable numbers of candidates, and exact for ``index_a``/``index_b`` fixed
    beforehand.

    Parameters
    ----------
    search_a, search_b : fitted searches
        ``GridSearchCV``, ``RandomizedSearchCV`` or ``OptunaSearchCV``.
    metric : str or None
        As in :func:`compare_cv_results`; the same scorer for both.
    X, y, groups : optional
        As given to both ``fit`` calls (X may be its length).
    index_a, index_b : int or None
        Rows of ``cv_results_`` to compare; None takes each search's best mean score.
    n_train, n_test : float, optional
        Fold sizes, when X is not given.
    confidence, rope : float
        See :func:`corrected_ttest`, :func:`bayesian_correlated_ttest`.
    names : tuple of two str
        Labels in :meth:`PairedComparison.summary`.

    Returns
    -------
    PairedComparison

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import GridSearchCV, StratifiedKFold
    >>> from sklearn_endo.model_selection import compare_searches
    >>> X, y = make_classification(150, n_features=8, random_state=0)
    >>> cv = StratifiedKFold(5, shuffle=True, random_state=0)
    >>> lin = GridSearchCV(LogisticRegression(), {"C": [0.1, 1]}, cv=cv).fit(X, y)
    >>> rf = GridSearchCV(RandomForestClassifier(n_estimators=20, random_state=0),
    ...                   {"max_depth": [2, 4]}, cv=cv).fit(X, y)
    >>> res = compare_searches(lin, rf, X=X, y=y, names=("logistic", "forest"))
    >>> print(res.summary())  # doctest: +NORMALIZE_WHITESPACE
    logistic - forest: score 0.907 vs 0.933, difference -0.027 [95% CI -0.079, +0.025],
    p = 0.227 (corrected t-test, 5 folds); P(logistic better) = 0.06, P(equivalent
    within 0.01) = 0.15, P(forest better) = 0.79
    """
    res_a, fit_a, _ = _unpack(search_a)
    res_b, fit_b, _ = _unpack(search_b)
    key_a, name, greater, sign = _metric_key(res_a, fit_a, metric)
    key_b, name_b, greater_b, sign_b = _metric_key(res_b, fit_b, metric)
    if (name, greater) != (name_b, greater_b):
        raise ValueError(f"The searches scored different metrics ({name!r} and {name_b!r}); "
                         "pass metric= a scorer both computed.")
    scores_a = _best_row(res_a, key_a, sign, greater, index_a)
    scores_b = _best_row(res_b, key_b, sign_b, greater, index_b)
    if scores_a.shape != scores_b.shape:
        raise ValueError(f"The searches have {scores_a.shape[0]} and {scores_b.shape[0]} folds:"
                         " not the same folds. Run both with the same cv.")
    splits = None
    if X is not None and fit_a is not None and fit_b is not None:
        splits = _reproducible(fit_a, None, X, y, groups)
        if not _same_folds(splits, _reproducible(fit_b, None, X, y, groups)):
            raise ValueError("The two searches' cv split X into different folds; a paired "
                             "test needs the same folds. Use one deterministic cv object for "
                             "both (e.g. StratifiedKFold(5, shuffle=True, random_state=0)).")
    elif not _check_same_cv(_cv_of(fit_a), _cv_of(fit_b)):
        warnings.warn("compare_searches could not check that both searches used the same "
                      "folds; pass X and y (as given to fit) to check it.", UserWarning,
                      stacklevel=2)
    n_train, n_test = _sizes(splits, n_train, n_test, scores_a.shape[0], "compare_searches")
    return PairedComparison(scores_a, scores_b, n_train=n_train, n_test=n_test, metric=name,
                            greater_is_better=greater, confidence=confidence, rope=rope,
                            names=names)


def compare_estimators(estimator_a, estimator_b, X, y, *, cv=5, scoring=None, groups=None,
                       n_jobs=None, params=None, confidence=0.95, rope=0.01,
                       names=("a", "b")):
    """Cross-validate two estimators on the same folds and compare them.

    The folds are drawn once (``check_cv(cv).split(X, y, groups)``) and given to
    ``cross_validate`` for both estimators, so they are the same by construction, even
    for a shuffling splitter without a seed.

    Parameters
    ----------
    estimator_a, estimator_b : estimators
        E.g. two pipelines that differ only in the encoder's weights, or a frozen probe
        and a ``FineTuneClassifier``.
    X, y : array-like
    cv : int or splitter, default=5
        An int means ``StratifiedKFold`` for classifiers; pass
        ``RepeatedStratifiedKFold`` for more folds (the test then has more power).
    scoring : str, callable or None
        One scorer for both (None: the estimators' ``score``); ``neg_*`` scores are
        reported as losses.
    groups, n_jobs, params
        Passed to ``cross_validate`` (``params``: fit parameters such as ``masks``).
    confidence, rope, names
        See :func:`compare_searches`.

    Returns
    -------
    PairedComparison

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import RepeatedStratifiedKFold
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> from sklearn_endo.model_selection import compare_estimators
    >>> X, y = make_classification(120, n_features=8, random_state=1)
    >>> res = compare_estimators(LogisticRegression(), KNeighborsClassifier(15), X, y,
    ...                          cv=RepeatedStratifiedKFold(n_splits=5, n_repeats=2,
    ...                                                     random_state=0),
    ...                          scoring="neg_log_loss", names=("logistic", "knn"))
    >>> print(res.summary())  # doctest: +NORMALIZE_WHITESPACE
    logistic - knn: log_loss 0.353 vs 0.462, difference -0.109 [95% CI -0.222, +0.004],
    p = 0.0575 (corrected t-test, 10 folds); P(logistic better) = 0.96, P(equivalent
    within 0.01) = 0.02, P(knn better) = 0.02
    """
    y_arr = np.asarray(y)
    splitter = check_cv(cv, y_arr, classifier=is_classifier(estimator_a))
    splits = list(splitter.split(X, y_arr, groups))
    if not callable(scoring) and scoring is not None and not isinstance(scoring, str):
        raise ValueError(f"scoring must be one scorer (a name or a callable), got {scoring!r}.")
    scores = []
    for est in (estimator_a, estimator_b):
        out = cross_validate(est, X, y_arr, groups=groups, cv=splits, scoring=scoring,
                             n_jobs=n_jobs, params=params, error_score="raise")
        scores.append(np.asarray(out["test_score"], dtype=float))
    name = scoring if isinstance(scoring, str) else getattr(scoring, "__name__", "score")
    sign = 1.0
    if name.startswith("neg_"):
        name, sign = name.removeprefix("neg_"), -1.0
    greater = sign > 0 and not _lower_is_better(name)
    return PairedComparison(sign * scores[0], sign * scores[1],
                            n_train=float(np.mean([len(tr) for tr, _ in splits])),
                            n_test=float(np.mean([len(te) for _, te in splits])),
                            metric=name, greater_is_better=greater, confidence=confidence,
                            rope=rope, names=names)
