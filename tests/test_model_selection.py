"""Paired tests on CV folds: corrected t-test, Bayesian twin, Holm, searches, sweeps."""

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    RepeatedStratifiedKFold,
    StratifiedKFold,
    cross_validate,
)

from sklearn_endo import LayerSweepResult, layer_sweep, layer_sweep_from_features
from sklearn_endo.model_selection import (
    bayesian_correlated_ttest,
    compare_cv_results,
    compare_estimators,
    compare_fold_scores,
    compare_searches,
    corrected_ttest,
    holm_adjust,
)

# made-up fold scores of two models on 10 folds (2 x 5-fold CV of 150 samples)
A = np.array([0.82, 0.79, 0.85, 0.80, 0.83, 0.81, 0.86, 0.78, 0.84, 0.80])
B = np.array([0.80, 0.78, 0.81, 0.80, 0.79, 0.78, 0.83, 0.79, 0.80, 0.77])


def test_corrected_ttest_equals_the_formula_by_hand():
    d = A - B
    J, n_train, n_test = 10, 120, 30
    mean = sum(d) / J
    var = sum((x - mean) ** 2 for x in d) / (J - 1)
    se = (var * (1 / J + n_test / n_train)) ** 0.5
    t = mean / se
    res = corrected_ttest(A, B, n_train=n_train, n_test=n_test, confidence=0.9)
    assert res.mean_difference == pytest.approx(mean, abs=1e-15)
    assert res.std_error == pytest.approx(se, rel=1e-12)
    assert res.statistic == pytest.approx(t, rel=1e-12)
    assert res.df == J - 1
    assert res.pvalue == pytest.approx(2 * stats.t.sf(abs(t), J - 1), rel=1e-12)
    q = stats.t.ppf(0.95, J - 1)
    assert (res.low, res.high) == pytest.approx((mean - q * se, mean + q * se), rel=1e-12)
    greater = corrected_ttest(A, B, n_train=n_train, n_test=n_test, alternative="greater")
    less = corrected_ttest(A, B, n_train=n_train, n_test=n_test, alternative="less")
    assert greater.pvalue == pytest.approx(stats.t.sf(t, J - 1), rel=1e-12)
    assert less.pvalue == pytest.approx(1 - greater.pvalue, rel=1e-12)
    # differences passed directly give the same test
    assert corrected_ttest(d, n_train=n_train, n_test=n_test) == corrected_ttest(
        A, B, n_train=n_train, n_test=n_test)


def test_without_the_correction_term_it_is_scipys_paired_ttest():
    res = corrected_ttest(A, B, n_train=1e15, n_test=1e-15)
    ref = stats.ttest_rel(A, B)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


def test_corrected_ttest_edge_cases_and_bad_input():
    same = corrected_ttest(A, A, n_train=8, n_test=2)
    assert (same.statistic, same.pvalue, same.low, same.high) == (0.0, 1.0, 0.0, 0.0)
    shifted = corrected_ttest(A + 0.1, A, n_train=8, n_test=2)
    assert shifted.pvalue == 0.0 and shifted.statistic == np.inf
    with pytest.raises(ValueError, match="same folds"):
        corrected_ttest(A, B[:-1], n_train=8, n_test=2)
    with pytest.raises(ValueError, match="at least 2 folds"):
        corrected_ttest([0.5], [0.4], n_train=8, n_test=2)
    with pytest.raises(ValueError, match="n_test must be a positive number"):
        corrected_ttest(A, B, n_train=8, n_test=0)
    with pytest.raises(ValueError, match="NaN"):
        corrected_ttest([0.5, np.nan], [0.4, 0.3], n_train=8, n_test=2)
    with pytest.raises(ValueError, match="alternative"):
        corrected_ttest(A, B, n_train=8, n_test=2, alternative="bigger")


def test_bayesian_correlated_ttest_is_the_student_t_posterior():
    d = A - B
    J, n_train, n_test, rope = 10, 120, 30, 0.01
    scale = np.sqrt(d.var(ddof=1) * (1 / J + n_test / n_train))
    post = stats.t(J - 1, loc=d.mean(), scale=scale)
    res = bayesian_correlated_ttest(A, B, n_train=n_train, n_test=n_test, rope=rope)
    assert res.p_a_better == pytest.approx(1 - post.cdf(rope), rel=1e-10)
    assert res.p_b_better == pytest.approx(post.cdf(-rope), rel=1e-10)
    assert res.p_a_better + res.p_rope + res.p_b_better == pytest.approx(1)
    assert res.scale == pytest.approx(
        corrected_ttest(A, B, n_train=n_train, n_test=n_test).std_error)
    # losses: lower is better, so the roles swap
    loss = bayesian_correlated_ttest(A, B, n_train=n_train, n_test=n_test, rope=rope,
                                     greater_is_better=False)
    assert (loss.p_a_better, loss.p_b_better) == (res.p_b_better, res.p_a_better)
    assert bayesian_correlated_ttest(A, B, n_train=120, n_test=30, rope=0).p_rope == 0
    point = bayesian_correlated_ttest(A, A, n_train=120, n_test=30)
    assert (point.p_a_better, point.p_rope, point.p_b_better) == (0, 1, 0)
    with pytest.raises(ValueError, match="rope"):
        bayesian_correlated_ttest(A, B, n_train=8, n_test=2, rope=-0.1)


def _holm_rejects(p, alpha):
    """The step-down procedure as Holm wrote it: reject in order until one fails."""
    order = np.argsort(p)
    reject = np.zeros(len(p), bool)
    for k, i in enumerate(order):
        if p[i] > alpha / (len(p) - k):
            break
        reject[i] = True
    return reject


def test_holm_adjusted_pvalues_reject_what_the_procedure_rejects():
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.005]),
                               [0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.random(6) ** 3
        for alpha in (0.01, 0.05, 0.2):
            np.testing.assert_array_equal(holm_adjust(p) <= alpha, _holm_rejects(p, alpha))
    adj = holm_adjust([0.01, np.nan, 0.02])
    assert np.isnan(adj[1]) and adj[0] == pytest.approx(0.02) and adj[2] == pytest.approx(0.02)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.5, 1.5])


def _planted(seed=0, n=90):
    """Layers 0 (noise), 1 (weak), 2 and 3 (strong, the same distribution)."""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 2

    def layer(strength, d=5):
        return strength * y[:, None] * np.ones(d) / np.sqrt(d) + rng.normal(size=(n, d))

    return {0: layer(0.0), 1: layer(1.0), 2: layer(2.5), 3: layer(2.5)}, y


def test_planted_best_layer_is_found_and_equal_layers_tie():
    feats, y = _planted()
    res = layer_sweep_from_features(feats, y, probe="logistic", cv=5, n_repeats=4,
                                    random_state=0, verbose=0)
    assert res.n_splits_ == 20 and (res.n_train_, res.n_test_) == (72, 18)
    cmp = res.comparison_
    assert res.best_layer_ in (2, 3) and cmp.best == res.best_layer_
    assert res.tied_layers_ == [2, 3]  # the equal layers are not declared different
    assert res.smallest_tied_layer_ == 2
    assert cmp.pvalue_vs_best_holm[0] < 0.01 and cmp.pvalue_vs_best_holm[1] < 0.05
    assert set(res.one_se_layers_) <= {2, 3} and res.best_layer_ in res.one_se_layers_
    # the comparison is the corrected t-test on the sweep's own fold scores
    s = res.scores["log_loss"][0]
    t = corrected_ttest(s[1], s[cmp.best_index], n_train=72, n_test=18)
    assert cmp.diff_to_best[1] == pytest.approx(t.mean_difference)
    assert cmp.pvalue_vs_best[1] == pytest.approx(t.pvalue)
    assert (cmp.diff_to_best_low[1], cmp.diff_to_best_high[1]) == pytest.approx((t.low, t.high))
    t = corrected_ttest(s[0], s[3], n_train=72, n_test=18)
    assert cmp.last == 3 and cmp.pvalue_vs_last[0] == pytest.approx(t.pvalue)
    assert np.isnan(cmp.pvalue_vs_best[cmp.best_index])
    # the best by accuracy can be compared as well
    acc = res.compare("accuracy")
    assert acc.greater_is_better and acc.metric == "accuracy"
    assert acc.best == res.layers[int(np.argmax(res.mean("accuracy")))]
    assert "not significantly worse than the best" in cmp.summary()


def test_one_se_set_and_best_vs_last_by_hand():
    # best 0.80, se of the best from the formula; 0.79 is inside one SE, 0.70 not
    base = np.array([0.0, 0.02, -0.01, 0.01, -0.02])
    scores = {1: 0.70 + base, 2: 0.80 + base * 1.5, 3: 0.79 + base}
    cmp = compare_fold_scores(scores, n_train=80, n_test=20, param="layer")
    se = np.std(0.80 + base * 1.5, ddof=1) * np.sqrt(1 / 5 + 20 / 80)
    assert cmp.best == 2 and cmp.best_se == pytest.approx(se)
    assert cmp.one_se_candidates == [2, 3] and cmp.smallest_one_se == 2
    bl = cmp.best_vs_last
    t = corrected_ttest(scores[2], scores[3], n_train=80, n_test=20)
    assert bl["difference"] == pytest.approx(t.mean_difference)
    assert (bl["low"], bl["high"]) == pytest.approx((t.low, t.high))
    assert bl["pvalue"] == pytest.approx(t.pvalue)
    assert bl["significant"] == (cmp.pvalue_vs_best_holm[2] <= 0.05)
    # losses: the lowest mean is the best
    loss = compare_fold_scores(scores, n_train=80, n_test=20, greater_is_better=False)
    assert loss.best == 1


def _nearest_centroid_log_loss(F, y, train, test):
    """Log-loss of a softmax nearest-centroid classifier (a fast, hand-written probe)."""
    mu = np.stack([F[train][y[train] == c].mean(0) for c in (0, 1)])
    logits = -0.5 * ((F[test][:, None, :] - mu[None]) ** 2).sum(-1)
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(test)), y[test]].mean()


def test_false_positive_rate_is_near_nominal_where_the_naive_test_is_not():
    """Two layers with the same true score, 10 x 5-fold CV: how often p < 0.05."""
    rng = np.random.RandomState(0)
    reps, n, d = 60, 60, 3
    corrected = naive = 0
    for rep in range(reps):
        y = np.arange(n) % 2
        layers = [0.8 * y[:, None] + rng.normal(size=(n, d)) for _ in range(2)]
        cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=10, random_state=rep)
        splits = list(cv.split(layers[0], y))
        s = np.array([[_nearest_centroid_log_loss(F, y, tr, te) for tr, te in splits]
                      for F in layers])
        corrected += corrected_ttest(s[0], s[1], n_train=48, n_test=12).pvalue < 0.05
        naive += stats.ttest_rel(s[0], s[1]).pvalue < 0.05
    print(f"false positives: corrected {corrected}/{reps}, naive {naive}/{reps}")
    # measured: corrected 2/60, the uncorrected paired t-test 24/60
    assert corrected / reps <= 0.1
    assert naive / reps >= 0.2


def test_layer_sweep_repeats_cost_no_encoder_pass(images, tiny_vit, counter):
    X, y = images
    c = counter(tiny_vit)
    res = layer_sweep(X, y, tiny_vit, layers=[1, 3, 4], cv=2, n_repeats=3, probe="logistic",
                      random_state=0, batch_size=8, verbose=0)
    assert c.images == len(X)  # 3 layers x 2 folds x 3 repeats: one pass over the images
    assert res.n_splits_ == 6 and res.scores["log_loss"].shape == (1, 3, 6)
    assert (res.n_train_, res.n_test_) == (10, 10)
    assert res.comparison_.n_folds == 6 and res.best_layer_ in res.tied_layers_
    expected = list(RepeatedStratifiedKFold(n_splits=2, n_repeats=3, random_state=0).split(
        X, y))
    assert len(expected) == res.n_splits_
    with pytest.raises(ValueError, match="n_repeats=2 needs an int cv"):
        layer_sweep_from_features(_planted()[0], _planted()[1], cv=KFold(3), n_repeats=2)
    with pytest.raises(ValueError, match="n_repeats must be an int >= 1"):
        layer_sweep_from_features(_planted()[0], _planted()[1], cv=3, n_repeats=0)


def test_a_result_built_without_fold_sizes_keeps_working():
    scores = {"accuracy": np.array([[[0.5, 0.6], [0.7, 0.8]]])}
    res = LayerSweepResult([0, 1], [{}], scores, probe_name="x", extraction_seconds=0,
                           probe_seconds=0)
    assert res.best_layer_ == 1 and res.comparison_ is None and res.tied_layers_ is None
    with pytest.raises(ValueError, match="no fold sizes"):
        res.compare()


# ------------------------------------------------------------------ from searches
@pytest.fixture(scope="module")
def data():
    return make_classification(100, n_features=6, n_informative=3, random_state=0)


def test_compare_cv_results_is_compare_fold_scores_on_the_split_columns(data):
    X, y = data
    cv = RepeatedStratifiedKFold(n_splits=4, n_repeats=2, random_state=0)
    search = GridSearchCV(LogisticRegression(), {"C": [0.001, 0.1, 10],
                                                 "fit_intercept": [True, False]},
                          cv=cv, scoring=["accuracy", "neg_log_loss"],
                          refit="neg_log_loss").fit(X, y)
    cmp = compare_cv_results(search, "C", X=X, y=y)
    r = search.cv_results_
    assert cmp.metric == "log_loss" and not cmp.greater_is_better
    assert (cmp.n_train, cmp.n_test, cmp.n_folds) == (75, 25, 8)
    cols = -np.column_stack([r[f"split{i}_test_neg_log_loss"] for i in range(8)])
    # each C is represented by its best candidate over fit_intercept
    rows = [min(np.flatnonzero(r["param_C"] == c), key=lambda i: cols[i].mean())
            for c in (0.001, 0.1, 10)]
    ref = compare_fold_scores(cols[rows], candidates=[0.001, 0.1, 10], n_train=75, n_test=25,
                              greater_is_better=False)
    np.testing.assert_allclose(cmp.pvalue_vs_best, ref.pvalue_vs_best)
    np.testing.assert_allclose(cmp.diff_to_last, ref.diff_to_last)
    assert cmp.best == search.best_params_["C"]
    # the other metric, and the sizes given by hand instead of X
    acc = compare_cv_results(search.cv_results_, "C", metric="accuracy", n_train=75,
                             n_test=25)
    assert acc.greater_is_better and acc.metric == "accuracy"


def test_compare_cv_results_bad_input_is_clear(data):
    X, y = data
    search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1]}, cv=3).fit(X, y)
    with pytest.raises(ValueError, match="needs the fold sizes"):
        compare_cv_results(search, "C")
    with pytest.raises(ValueError, match="Did you mean 'C'"):
        compare_cv_results(search, "clf__C", X=X, y=y)
    with pytest.raises(ValueError, match="recomputed from X gives 5 folds"):
        compare_cv_results(search.cv_results_, "C", X=X, y=y, cv=5)
    with pytest.raises(TypeError, match="Fit the search first"):
        compare_cv_results(LogisticRegression(), "C")
    cmp = compare_cv_results(search, X=X, y=y)  # the only parameter
    assert cmp.param == "C" and cmp.n_folds == 3


def test_compare_cv_results_from_optuna_and_its_fold_check(data):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("optuna_integration")
    from optuna.distributions import CategoricalDistribution
    from optuna_integration import OptunaSearchCV

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X, y = data
    dist = {"C": CategoricalDistribution([0.01, 1.0])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OptunaSearchCV is experimental
        search = OptunaSearchCV(LogisticRegression(), dist, n_trials=6, random_state=0,
                                cv=StratifiedKFold(4, shuffle=True, random_state=0),
                                scoring="neg_log_loss").fit(X, y)
        drifting = OptunaSearchCV(LogisticRegression(), dist, n_trials=3, random_state=0,
                                  cv=KFold(4, shuffle=True), scoring="neg_log_loss").fit(X, y)
    cmp = compare_cv_results(search, "C", X=X, y=y)
    assert sorted(cmp.candidates) == [0.01, 1.0] and cmp.metric == "log_loss"
    assert cmp.n_folds == 4
    with pytest.raises(ValueError, match="different folds on every call"):
        compare_cv_results(drifting, "C", X=X, y=y)


def test_compare_searches_pairs_the_best_rows_and_refuses_other_folds(data):
    X, y = data
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    a = GridSearchCV(LogisticRegression(), {"C": [0.01, 1]}, cv=cv).fit(X, y)
    b = GridSearchCV(LogisticRegression(), {"C": [0.001]}, cv=cv).fit(X, y)
    res = compare_searches(a, b, X=X, y=y)
    r = a.cv_results_
    sa = np.array([r[f"split{i}_test_score"][a.best_index_] for i in range(5)])
    sb = np.array([b.cv_results_[f"split{i}_test_score"][0] for i in range(5)])
    assert res.ttest == corrected_ttest(sa, sb, n_train=80, n_test=20)
    assert res.n_folds == 5 and "P(a better)" in res.summary()
    # without X: the same splitter parameters are accepted silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_searches(a, b, n_train=80, n_test=20)
    other = GridSearchCV(LogisticRegression(), {"C": [1]},
                         cv=StratifiedKFold(5, shuffle=True, random_state=1)).fit(X, y)
    with pytest.raises(ValueError, match="different folds"):
        compare_searches(a, other, X=X, y=y)
    with pytest.raises(ValueError, match="different splitters"):
        compare_searches(a, other, n_train=80, n_test=20)
    fewer = GridSearchCV(LogisticRegression(), {"C": [1]}, cv=4).fit(X, y)
    with pytest.raises(ValueError, match="5 and 4 folds"):
        compare_searches(a, fewer, X=X, y=y)
    unseeded = StratifiedKFold(5, shuffle=True)
    c = GridSearchCV(LogisticRegression(), {"C": [1]}, cv=unseeded).fit(X, y)
    d = GridSearchCV(LogisticRegression(), {"C": [1]}, cv=unseeded).fit(X, y)
    with pytest.raises(ValueError, match="different folds on every call"):
        compare_searches(c, d, X=X, y=y)
    with pytest.raises(ValueError, match="int random_state"):
        compare_searches(c, d, n_train=80, n_test=20)
    e = GridSearchCV(LogisticRegression(), {"C": [1]}, cv=list(cv.split(X, y))).fit(X, y)
    with pytest.warns(UserWarning, match="could not check"):
        compare_searches(a, e, n_train=80, n_test=20)


def test_compare_estimators_uses_one_set_of_folds(data):
    X, y = data
    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=2, random_state=0)
    res = compare_estimators(LogisticRegression(C=1), LogisticRegression(C=0.001), X, y,
                             cv=cv, scoring="neg_log_loss")
    splits = list(cv.split(X, y))
    sa = -cross_validate(LogisticRegression(C=1), X, y, cv=splits,
                         scoring="neg_log_loss")["test_score"]
    sb = -cross_validate(LogisticRegression(C=0.001), X, y, cv=splits,
                         scoring="neg_log_loss")["test_score"]
    np.testing.assert_allclose(res.scores_a, sa)
    np.testing.assert_allclose(res.scores_b, sb)
    assert res.metric == "log_loss" and not res.greater_is_better
    assert res.ttest == corrected_ttest(sa, sb, n_train=80, n_test=20)
    # C=1 has the lower loss here
    assert res.ttest.mean_difference < 0 and res.bayes.p_a_better > res.bayes.p_b_better


def test_best_vs_last_verdict_says_when_only_holm_makes_it_not_significant():
    fold = np.array([0.0, 0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.02, -0.02])
    noise = np.array([0.03, -0.02, 0.01, -0.03, 0.01, 0.02, -0.01, 0.0, -0.01, 0.0])
    # eight layers 0.01 below the best with much noise (p 0.26), the last 0.01 below
    # with little noise: p = 0.006 alone, 9 x 0.006 = 0.054 after Holm
    scores = {k: 0.80 + fold + np.roll(noise, k) for k in range(8)}
    scores[8] = 0.81 + fold
    scores[9] = 0.80 + fold + noise / 3
    cmp = compare_fold_scores(scores, n_train=90, n_test=10)
    bl = cmp.best_vs_last
    assert cmp.best == 8 and cmp.last == 9
    assert bl["pvalue_holm"] == pytest.approx(9 * bl["pvalue"]) and not bl["significant"]
    assert bl["verdict"] == ("not significantly better than the last after Holm's "
                             f"correction for 9 comparisons (p = {bl['pvalue']:.3g} alone)")
    assert bl["verdict"] in cmp.summary() and cmp.tied_candidates == list(range(10))
    scores[9] = 0.79 + fold  # clearly worse now
    assert compare_fold_scores(scores, n_train=90, n_test=10).best_vs_last["verdict"] == (
        "significantly better than the last (Holm over 9 comparisons)")
