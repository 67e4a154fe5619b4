"""Model selection with uncertainty: which layer, encoder or setting is really better.

Cross-validated fold scores of candidates evaluated on the same folds are paired, and
correlated through their overlapping training sets. The tests here account for both:

- :func:`corrected_ttest`: Nadeau and Bengio's corrected resampled t-test;
- :func:`bayesian_correlated_ttest`: its Bayesian counterpart (Benavoli et al. 2017),
  with a region of practical equivalence;
- :func:`holm_adjust`: Holm's step-down correction for multiple comparisons;
- :func:`compare_fold_scores`, :func:`compare_cv_results`: every candidate (e.g. every
  layer of a sweep, or of a ``GridSearchCV`` / ``OptunaSearchCV``) against the best and
  the last, the set of candidates not significantly worse than the best, the
  one-standard-error set;
- :func:`compare_searches`, :func:`compare_estimators`: two models on the same folds
  (ImageNet vs self-supervised weights, frozen vs fine-tuned).

The module sits where scikit-learn keeps its searches and splitters, and where its
example "Statistical comparison of models using grid search" lives.
"""

from ._compare import CVComparison, compare_fold_scores
from ._search import PairedComparison, compare_cv_results, compare_estimators, compare_searches
from ._stats import (
    BayesianTTestResult,
    CorrectedTTestResult,
    bayesian_correlated_ttest,
    corrected_ttest,
    holm_adjust,
)

__all__ = [
    "BayesianTTestResult",
    "CVComparison",
    "CorrectedTTestResult",
    "PairedComparison",
    "bayesian_correlated_ttest",
    "compare_cv_results",
    "compare_estimators",
    "compare_fold_scores",
    "compare_searches",
    "corrected_ttest",
    "holm_adjust",
]
