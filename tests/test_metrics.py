"""Clinical metrics: hand-computed values on tiny arrays, and agreement with sklearn."""

import math
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, f1_score, recall_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate

from sklearn_endo.metrics import (
    AccuracyCI,
    accuracy_ci,
    classification_summary,
    dice_score,
    get_scorers,
    quadratic_weighted_kappa,
    sensitivity_score,
    sensitivity_scorer,
    specificity_score,
    specificity_scorer,
    wilson_interval,
)

Y_TRUE_BIN = [0, 0, 0, 1, 1, 1, 1]
Y_PRED_BIN = [0, 0, 1, 1, 1, 1, 0]  # TP=3 FN=1 TN=2 FP=1
Y_TRUE_MC = [0, 0, 1, 1, 2, 2]
Y_PRED_MC = [0, 1, 1, 2, 2, 2]


def _random_multiclass(seed=0, n=60, k=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, n), rng.integers(0, k, n)


# ------------------------------------------------------------ sensitivity / spec.
def test_binary_sensitivity_specificity_by_hand():
    assert sensitivity_score(Y_TRUE_BIN, Y_PRED_BIN) == pytest.approx(3 / 4)
    assert specificity_score(Y_TRUE_BIN, Y_PRED_BIN) == pytest.approx(2 / 3)
    # with class 0 as the positive class the two swap
    assert sensitivity_score(Y_TRUE_BIN, Y_PRED_BIN, pos_label=0) == pytest.approx(2 / 3)
    assert specificity_score(Y_TRUE_BIN, Y_PRED_BIN, pos_label=0) == pytest.approx(3 / 4)


def test_string_labels():
    y_true = ["healthy", "polyp", "polyp", "healthy"]
    y_pred = ["healthy", "polyp", "healthy", "polyp"]
    assert sensitivity_score(y_true, y_pred, pos_label="polyp") == 0.5
    assert specificity_score(y_true, y_pred, pos_label="polyp") == 0.5


def test_multiclass_specificity_by_hand():
    # class 0: negatives predicted [1, 2, 2, 2] -> TN=4 FP=0; class 1: [0, 1, 2, 2] -> 3/4
    # class 2: [0, 1, 1, 2] -> 3/4
    per_class = specificity_score(Y_TRUE_MC, Y_PRED_MC, average=None)
    np.testing.assert_allclose(per_class, [1.0, 0.75, 0.75])
    assert specificity_score(Y_TRUE_MC, Y_PRED_MC, average="macro") == pytest.approx(2.5 / 3)
    assert specificity_score(Y_TRUE_MC, Y_PRED_MC, average="micro") == pytest.approx(10 / 12)
    np.testing.assert_allclose(
        specificity_score(Y_TRUE_MC, Y_PRED_MC, average=None, labels=[2, 0]), [0.75, 1.0]
    )


def test_weighted_specificity_uses_true_support():
    # class 0 (support 3): spec 1; class 1 (support 1): negatives predicted [0, 0, 1] -> 2/3
    value = specificity_score([0, 0, 0, 1], [0, 0, 1, 1], average="weighted")
    assert value == pytest.approx((3 * 1.0 + 1 * 2 / 3) / 4)


@pytest.mark.parametrize("average", [None, "macro", "weighted", "micro"])
def test_sensitivity_matches_recall_score(average):
    y_true, y_pred = _random_multiclass()
    np.testing.assert_allclose(
        sensitivity_score(y_true, y_pred, average=average),
        recall_score(y_true, y_pred, average=average),
    )


def test_specificity_is_recall_of_the_rest():
    y_true, y_pred = _random_multiclass(seed=1)
    expected = [recall_score(y_true != k, y_pred != k) for k in range(3)]
    np.testing.assert_allclose(specificity_score(y_true, y_pred, average=None), expected)
    y_bin = y_true % 2
    p_bin = y_pred % 2
    assert specificity_score(y_bin, p_bin) == pytest.approx(
        recall_score(y_bin, p_bin, pos_label=0)
    )


def test_specificity_zero_division():
    all_pos = [1, 1, 1]
    with pytest.warns(UndefinedMetricWarning, match="zero_division"):
        assert specificity_score(all_pos, all_pos) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert specificity_score(all_pos, all_pos, zero_division=1.0) == 1.0
        assert math.isnan(specificity_score(all_pos, all_pos, zero_division=np.nan))
        # nan entries are left out of the macro average: class 0 has spec 1, class 1 nan
        value = specificity_score([1, 1], [1, 0], average="macro", zero_division=np.nan)
    assert value == pytest.approx(0.5)


@pytest.mark.parametrize("func", [sensitivity_score, specificity_score])
def test_bad_rate_inputs(func):
    with pytest.raises(ValueError, match="average must be one of"):
        func([0, 1], [0, 1], average="samples")
    with pytest.raises(ValueError, match="average='binary'"):
        func([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="pos_label=2"):
        func([0, 1], [0, 1], pos_label=2)
    with pytest.raises(ValueError, match="zero_division"):
        func([0, 1], [0, 1], zero_division=0.5)
    with pytest.raises(ValueError, match="y_pred must hold class labels"):
        func([0, 1], [0.2, 0.7])
    with pytest.raises(ValueError, match="multilabel"):
        func([0, 1], [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        func([0, 1, 1], [0, 1])


# --------------------------------------------------------------------- Wilson CI
def test_wilson_interval_by_hand():
    # 8 successes out of 10 at 95%: z = 1.959963984540054, p = 0.8
    z, p, n = 1.959963984540054, 0.8, 10
    denominator = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(center - half, rel=1e-12)
    assert high == pytest.approx(center + half, rel=1e-12)
    assert (low, high) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)


def test_wilson_interval_vectorised_and_bounds():
    low, high = wilson_interval(np.array([0, 5, 10]), 10)
    assert low.shape == high.shape == (3,)
    assert low[0] == 0.0 and high[2] == 1.0
    assert high[0] > 0 and low[2] < 1  # never degenerate, unlike the Wald interval
    np.testing.assert_allclose(low[1], 1 - high[1])  # symmetric around 1/2
    low95, high95 = wilson_interval(5, 10)
    low99, high99 = wilson_interval(5, 10, confidence=0.99)
    assert low99 < low95 and high99 > high95


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"successes": 11, "n": 10}, "0 <= successes <= n"),
        ({"successes": -1, "n": 10}, "0 <= successes <= n"),
        ({"successes": 0, "n": 0}, "n must be positive"),
        ({"successes": 1, "n": 2, "confidence": 95}, "confidence must be"),
        ({"successes": np.nan, "n": 2}, "finite"),
    ],
)
def test_wilson_interval_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(**kwargs)


def test_accuracy_ci():
    y_true = [0, 1, 1, 0, 1, 1, 0, 1, 1, 0]
    y_pred = [0, 1, 1, 0, 1, 1, 0, 1, 0, 1]
    result = accuracy_ci(y_true, y_pred)
    assert isinstance(result, AccuracyCI)
    assert result.accuracy == 0.8
    assert (result.low, result.high) == pytest.approx(wilson_interval(8, 10))


# ------------------------------------------------------------------------- Dice
def test_dice_by_hand():
    y_true = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    y_pred = np.array([[[0.9, 0.3], [0.1, 0.0]], [[0.0, 0.2], [0.5, 0.0]]])
    # sample 0: |T&P| = 1, |T| + |P| = 3 -> 2/3; sample 1: both empty (0.5 is not > 0.5) -> 1
    np.testing.assert_allclose(dice_score(y_true, y_pred, average=None), [2 / 3, 1.0])
    assert dice_score(y_true, y_pred) == pytest.approx((2 / 3 + 1) / 2)
    assert dice_score(y_true, y_pred, average="micro") == pytest.approx(2 / 3)
    assert dice_score(y_true, y_pred, threshold=0.2, average=None)[0] == pytest.approx(1.0)
    assert dice_score(y_true[0], y_pred[0], smooth=1.0) == pytest.approx(3 / 4)
    assert dice_score(y_true.astype(bool), y_pred > 0.5) == pytest.approx(5 / 6)


def test_dice_empty_vs_empty_is_one_and_disjoint_is_zero():
    empty = np.zeros((3, 4, 4), dtype=bool)
    assert dice_score(empty, empty) == 1.0
    assert dice_score(empty, empty, average="micro") == 1.0
    full = np.ones((4, 4))
    assert dice_score(full, np.zeros((4, 4))) == 0.0


@pytest.mark.parametrize(
    "y_true, y_pred, kwargs, match",
    [
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), {}, "same shape"),
        (np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 4)), {}, "Squeeze a channel"),
        (np.full((4, 4), 2), np.zeros((4, 4)), {}, "y_true must be a binary mask"),
        (np.zeros((4, 4)), np.full((4, 4), 3.0), {}, "sigmoid"),
        (np.zeros((4, 4)), np.full((4, 4), np.nan), {}, "NaN"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"average": "macro"}, "average must be"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"threshold": 1.5}, "threshold"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"smooth": -1}, "smooth"),
    ],
)
def test_dice_bad_input(y_true, y_pred, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dice_score(y_true, y_pred, **kwargs)


# ------------------------------------------------------------------------- kappa
def test_qwk_matches_sklearn():
    y_true, y_pred = _random_multiclass(seed=2, k=5)
    assert quadratic_weighted_kappa(y_true, y_pred) == pytest.approx(
        cohen_kappa_score(y_true, y_pred, weights="quadratic")
    )
    labels = [0, 1, 2, 3, 4, 5]
    assert quadratic_weighted_kappa(y_true, y_pred, labels=labels) == pytest.approx(
        cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=labels)
    )


def test_qwk_fixed_labels_keep_grade_distances():
    # grade 2 is missing from this fold: without labels, 1 vs 3 counts as one step
    y_true, y_pred = [0, 1, 3, 4, 4], [0, 3, 1, 4, 4]
    full = quadratic_weighted_kappa(y_true, y_pred, labels=[0, 1, 2, 3, 4])
    assert full != pytest.approx(quadratic_weighted_kappa(y_true, y_pred))
    remapped = {0: 0, 1: 1, 3: 3, 4: 4}
    assert full == pytest.approx(
        cohen_kappa_score(
            [remapped[v] for v in y_true], y_pred, weights="quadratic", labels=range(5)
        )
    )


def test_qwk_bad_and_undefined():
    with pytest.raises(ValueError, match=r"grades \[7\]"):
        quadratic_weighted_kappa([0, 7], [0, 1], labels=[0, 1, 2])
    with pytest.warns(UndefinedMetricWarning, match="undefined"):
        assert math.isnan(quadratic_weighted_kappa([2, 2], [2, 2]))


# ----------------------------------------------------------------------- summary
def test_binary_summary_by_hand_and_against_sklearn():
    y_score = np.array([0.1, 0.4, 0.6, 0.7, 0.8, 0.3, 0.2])
    summary = classification_summary(Y_TRUE_BIN, Y_PRED_BIN, y_score)
    assert summary.n_samples == 7
    assert summary.accuracy == pytest.approx(5 / 7)
    assert (summary.accuracy_low, summary.accuracy_high) == pytest.approx(
        wilson_interval(5, 7)
    )
    assert summary.sensitivity == pytest.approx(3 / 4)
    assert summary.specificity == pytest.approx(2 / 3)
    assert summary.f1_macro == pytest.approx(f1_score(Y_TRUE_BIN, Y_PRED_BIN, average="macro"))
    assert summary.roc_auc == pytest.approx(roc_auc_score(Y_TRUE_BIN, y_score))
    proba = np.column_stack([1 - y_score, y_score])
    assert classification_summary(Y_TRUE_BIN, Y_PRED_BIN, proba).roc_auc == summary.roc_auc
    assert "roc_auc" not in classification_summary(Y_TRUE_BIN, Y_PRED_BIN)
    flipped = classification_summary(Y_TRUE_BIN, Y_PRED_BIN, proba, pos_label=0)
    assert flipped.sensitivity == pytest.approx(2 / 3)
    assert flipped.roc_auc == pytest.approx(summary.roc_auc)


def test_multiclass_summary_against_sklearn():
    rng = np.random.default_rng(3)
    y_true = np.tile([0, 1, 2], 10)
    proba = rng.dirichlet(np.ones(3), size=30)
    y_pred = proba.argmax(axis=1)
    summary = classification_summary(y_true, y_pred, proba)
    assert summary.average == "macro"
    assert summary.sensitivity == pytest.approx(recall_score(y_true, y_pred, average="macro"))
    assert summary.specificity == pytest.approx(
        specificity_score(y_true, y_pred, average="macro")
    )
    assert summary.roc_auc == pytest.approx(roc_auc_score(y_true, proba, multi_class="ovr"))


def test_summary_missing_class_and_bad_input():
    with pytest.warns(UndefinedMetricWarning, match="no true samples"):
        summary = classification_summary(
            [0, 0, 1, 1], [0, 0, 1, 2], np.full((4, 3), 1 / 3), labels=[0, 1, 2]
        )
    assert math.isnan(summary.roc_auc)
    with pytest.raises(ValueError, match="shape"):
        classification_summary([0, 1, 2], [0, 1, 2], np.ones((3, 2)))
    with pytest.raises(ValueError, match="at least two classes"):
        classification_summary([1, 1], [1, 1])
    with pytest.raises(ValueError, match="not in labels"):
        classification_summary([0, 1, 5], [0, 1, 1], labels=[0, 1])


# ----------------------------------------------------------------------- scorers
def test_scorers_in_grid_search_and_cross_validate():
    X, y = make_classification(n_samples=60, n_features=5, random_state=0)
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scoring = {"sens": sensitivity_scorer, "spec": specificity_scorer}
    search = GridSearchCV(
        LogisticRegression(), {"C": [0.1, 1.0]}, scoring=scoring, refit="sens", cv=cv
    )
    search.fit(X, y)
    assert {"mean_test_sens", "mean_test_spec"} <= set(search.cv_results_)
    assert 0 <= search.best_score_ <= 1

    result = cross_validate(
        LogisticRegression(), X, y, cv=cv, scoring=scoring, return_estimator=True
    )
    _train, test = next(cv.split(X, y))
    y_pred = result["estimator"][0].predict(X[test])
    assert result["test_sens"][0] == pytest.approx(recall_score(y[test], y_pred))
    assert result["test_spec"][0] == pytest.approx(specificity_score(y[test], y_pred))


def test_get_scorers_multiclass():
    X, y = make_classification(
        n_samples=90, n_features=6, n_informative=4, n_classes=3, random_state=0
    )
    scorers = get_scorers(labels=[0, 1, 2])
    assert set(scorers) == {
        "sensitivity", "specificity", "sensitivity_macro", "specificity_macro",
        "quadratic_weighted_kappa",
    }
    keys = ["sensitivity_macro", "specificity_macro", "quadratic_weighted_kappa"]
    result = cross_validate(
        LogisticRegression(), X, y, cv=3, scoring={k: scorers[k] for k in keys}
    )
    for key in keys:
        assert np.all(np.isfinite(result[f"test_{key}"]))
    assert get_scorers() is not get_scorers()
