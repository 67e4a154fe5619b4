"""Stratified bootstrap intervals: every resample's score equals scikit-learn's."""

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.utils import check_random_state

from sklearn_endo.metrics import (
    balanced_accuracy_ci,
    classification_summary,
    dice_ci,
    dice_score,
    roc_auc_ci,
)
from sklearn_endo.metrics._bootstrap import _stratified_indices


def _resamples(strata, n, seed):
    return _stratified_indices(strata, n, check_random_state(seed))


def _percentiles(values, confidence=0.95):
    tail = 50 * (1 - confidence)
    return tuple(np.percentile(values, [tail, 100 - tail]))


@pytest.fixture
def binary():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(15, int)]
    score = rng.normal(size=45) + 1.2 * y
    score[:4] = np.round(score[:4], 1)  # some ties
    return y, score


def test_stratified_resamples_keep_every_class_count(binary):
    y, _ = binary
    strata = [np.flatnonzero(y == c) for c in (0, 1)]
    idx = _resamples(strata, 50, 0)
    assert idx.shape == (50, 45)
    assert (y[idx] == 0).sum(axis=1).tolist() == [30] * 50
    assert len(np.unique(idx)) > 40  # drawn with replacement from all samples


def test_roc_auc_ci_is_the_percentile_of_sklearns_auc_per_resample(binary):
    y, score = binary
    res = roc_auc_ci(y, score, n_resamples=200, random_state=3, confidence=0.9)
    assert res.score == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    strata = [np.flatnonzero(y == c) for c in (0, 1)]
    aucs = [roc_auc_score(y[i], score[i]) for i in _resamples(strata, 200, 3)]
    assert (res.low, res.high) == pytest.approx(_percentiles(aucs, 0.9), abs=1e-12)
    assert res.low < res.score < res.high
    # pos_label=0 flips the score's meaning
    flipped = roc_auc_ci(y, -score, pos_label=0, random_state=3)
    assert flipped.score == pytest.approx(res.score)


def test_multiclass_roc_auc_ci_is_sklearns_ovr_macro():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], [12, 9, 15])
    proba = rng.dirichlet(np.ones(3), size=len(y))
    proba[np.arange(len(y)), y] += 0.3
    proba /= proba.sum(1, keepdims=True)
    res = roc_auc_ci(y, proba, n_resamples=100, random_state=0)
    assert res.score == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)
    strata = [np.flatnonzero(y == c) for c in (0, 1, 2)]
    aucs = [roc_auc_score(y[i], proba[i], multi_class="ovr")
            for i in _resamples(strata, 100, 0)]
    assert (res.low, res.high) == pytest.approx(_percentiles(aucs), abs=1e-12)


def test_balanced_accuracy_ci_by_resample():
    rng = np.random.default_rng(2)
    y = np.repeat(["a", "b", "c"], [20, 8, 12])
    pred = np.where(rng.random(40) < 0.75, y, "a")
    res = balanced_accuracy_ci(y, pred, n_resamples=150, random_state=1)
    assert res.score == pytest.approx(balanced_accuracy_score(y, pred))
    strata = [np.flatnonzero(y == c) for c in ("a", "b", "c")]
    values = [balanced_accuracy_score(y[i], pred[i]) for i in _resamples(strata, 150, 1)]
    assert (res.low, res.high) == pytest.approx(_percentiles(values), abs=1e-12)


def test_dice_ci_resamples_lesion_and_empty_images_apart():
    rng = np.random.default_rng(3)
    truth = rng.random((12, 8, 8)) > 0.7
    truth[8:] = False  # four images without a lesion
    pred = truth ^ (rng.random((12, 8, 8)) > 0.85)
    pred[10:] = False
    res = dice_ci(truth, pred, n_resamples=100, random_state=0)
    per_image = dice_score(truth, pred, average=None)
    assert res.score == pytest.approx(dice_score(truth, pred))
    strata = [np.arange(8), np.arange(8, 12)]
    values = [per_image[i].mean() for i in _resamples(strata, 100, 0)]
    assert (res.low, res.high) == pytest.approx(_percentiles(values), abs=1e-12)


def test_classification_summary_reports_bootstrap_intervals(binary):
    y, score = binary
    pred = (score > 0.6).astype(int)
    s = classification_summary(y, pred, score, random_state=0, n_resamples=300)
    auc = roc_auc_ci(y, score, random_state=0, n_resamples=300)
    bacc = balanced_accuracy_ci(y, pred, random_state=0, n_resamples=300)
    assert (s.roc_auc, s.roc_auc_low, s.roc_auc_high) == auc
    assert (s.balanced_accuracy, s.balanced_accuracy_low, s.balanced_accuracy_high) == bacc
    quick = classification_summary(y, pred, score, n_resamples=0)
    assert quick.roc_auc == s.roc_auc and quick.balanced_accuracy == s.balanced_accuracy
    assert np.isnan(quick.roc_auc_low) and np.isnan(quick.balanced_accuracy_high)
    with pytest.raises(ValueError, match="n_resamples must be an int >= 0"):
        classification_summary(y, pred, n_resamples=-1)


def test_bad_input_and_undefined_auc():
    with pytest.raises(ValueError, match="n_resamples must be an int >= 1"):
        roc_auc_ci([0, 1], [0.2, 0.8], n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        balanced_accuracy_ci([0, 1], [0, 1], confidence=95)
    with pytest.raises(ValueError, match="at least two classes"):
        roc_auc_ci([1, 1, 1], [0.2, 0.3, 0.8])
    with pytest.warns(UndefinedMetricWarning, match="no true samples"):
        res = roc_auc_ci([0, 0, 1, 1], np.full((4, 3), 1 / 3), labels=[0, 1, 2])
    assert np.isnan(res.score) and np.isnan(res.low)
