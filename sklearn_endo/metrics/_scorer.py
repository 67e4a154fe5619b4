"""Ready-made scorers for GridSearchCV / cross_validate."""

from sklearn.metrics import make_scorer

from ._clinical import quadratic_weighted_kappa, sensitivity_score, specificity_score

__all__ = ["get_scorers", "sensitivity_scorer", "specificity_scorer"]

#: Binary sensitivity of class 1, for ``scoring=`` in model selection.
sensitivity_scorer = make_scorer(sensitivity_score)
#: Binary specificity with class 1 as positive, for ``scoring=`` in model selection.
specificity_scorer = make_scorer(specificity_score)


def get_scorers(*, pos_label=1, labels=None):
    """Scorers for the clinical metrics, keyed by name, for ``scoring=``.

    Parameters
    ----------
    pos_label : int, float, bool or str, default=1
        Positive (diseased) class of the binary scorers.

    labels : array-like, default=None
        All classes (grades, in ordinal order). Passed to the macro and kappa
        scorers so that every cross-validation fold is scored on the same label set,
        even when a fold misses a class.

    Returns
    -------
    scorers : dict of str to callable
        ``"sensitivity"``, ``"specificity"`` (binary, of ``pos_label``),
        ``"sensitivity_macro"``, ``"specificity_macro"`` (one-vs-rest macro
        averages) and ``"quadratic_weighted_kappa"``. Each call returns a new dict.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import cross_validate
    >>> from sklearn_endo.metrics import get_scorers
    >>> X, y = make_classification(n_samples=60, random_state=0)
    >>> scorers = get_scorers()
    >>> cv = cross_validate(LogisticRegression(), X, y, cv=3,
    ...                     scoring={k: scorers[k] for k in ("sensitivity", "specificity")})
    >>> sorted(k for k in cv if k.startswith("test_"))
    ['test_sensitivity', 'test_specificity']
    """
    return {
        "sensitivity": make_scorer(sensitivity_score, pos_label=pos_label),
        "specificity": make_scorer(specificity_score, pos_label=pos_label),
        "sensitivity_macro": make_scorer(sensitivity_score, average="macro", labels=labels),
        "specificity_macro": make_scorer(specificity_score, average="macro", labels=labels),
        "quadratic_weighted_kappa": make_scorer(quadratic_weighted_kappa, labels=labels),
    }
