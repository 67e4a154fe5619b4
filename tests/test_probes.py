"""Linear, batched multi-layer and k-NN probes."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import SkipTestWarning
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils import check_random_state, get_tags
from sklearn.utils import estimator_checks as ec
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks

from sklearn_endo.probes import KNNProbeClassifier, LinearProbeClassifier, MultiLayerLinearProbe

# Per-layer probabilities of the batched probe vs one-by-one probes (measured ~1e-7).
BATCHED_ATOL = 1e-5


def _layered_data(n=60, dims=(5, 12, 7), n_classes=3, seed=0):
    rng = np.random.RandomState(seed)
    y = rng.randint(0, n_classes, n)
    feats = {}
    for i, d in enumerate(dims):
        centers = rng.normal(scale=2.0, size=(n_classes, d))
        feats[2 * i + 1] = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    return feats, y


# ---------------------------------------------------------------- sklearn's checks
@parametrize_with_checks(
    [
        # (the default, solver="lbfgs", is checked below) the Adam recipe with a larger
        # step than its 1e-4, so that the accuracy checks on small blobs converge within
        # the default 30 epochs; the API is the same
        LinearProbeClassifier(solver="adam", lr=1e-2, random_state=0),
        KNNProbeClassifier(n_neighbors=5),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- linear probe
def test_linear_probe_matches_plain_torch_loop():
    """The recipe, written independently: nn.Linear + autograd CE + torch Adam."""
    rng = np.random.RandomState(1)
    X = rng.normal(size=(37, 6)).astype(np.float32)
    y = rng.randint(0, 3, 37)
    clf = LinearProbeClassifier(solver="adam", lr=1e-3, max_epochs=4, batch_size=8,
                                random_state=5).fit(X, y)

    init_seed, shuffle_seed = check_random_state(5).randint(0, 2**31 - 1, size=2)
    lin = torch.nn.Linear(6, 3)
    gen = torch.Generator().manual_seed(int(init_seed))
    bound = 1 / np.sqrt(6)
    with torch.no_grad():
        lin.weight.copy_((torch.rand(3, 6, generator=gen) * 2 - 1) * bound)
        lin.bias.copy_((torch.rand(3, generator=gen) * 2 - 1) * bound)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    order_gen = torch.Generator().manual_seed(int(shuffle_seed))
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
    for _ in range(4):
        perm = torch.randperm(37, generator=order_gen)
        for s in range(0, 37, 8):
            idx = perm[s : s + 8]
            loss = torch.nn.functional.cross_entropy(lin(Xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        expected = torch.softmax(lin(Xt).double(), dim=1).numpy()
    np.testing.assert_allclose(clf.predict_proba(X), expected, atol=1e-5)
    np.testing.assert_allclose(clf.coef_, lin.weight.detach().numpy(), atol=1e-5)


def test_linear_probe_defaults():
    """L-BFGS on standardized features by default; solver="adam" is the study's recipe."""
    p = LinearProbeClassifier().get_params()
    assert (p["solver"], p["standardize"], p["C"]) == ("lbfgs", "auto", 1.0)
    assert (p["lr"], p["max_epochs"], p["batch_size"], p["weight_decay"]) == (1e-4, 30, 8, 0.0)
    assert MultiLayerLinearProbe().get_params() == p


def test_linear_probe_reproducible_and_leaves_global_rng_alone():
    feats, y = _layered_data()
    X = feats[1]
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a = LinearProbeClassifier(solver="adam", max_epochs=3, random_state=3).fit(X, y)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state[1], np.random.get_state()[1])
    b = LinearProbeClassifier(solver="adam", max_epochs=3, random_state=3).fit(X, y)
    c = LinearProbeClassifier(solver="adam", max_epochs=3, random_state=4).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert not np.allclose(a.coef_, c.coef_)


def test_linear_probe_string_labels_and_shapes():
    feats, y = _layered_data(n_classes=2)
    labels = np.array(["normal-z-line", "esophagitis"])[y]
    clf = LinearProbeClassifier(solver="adam", lr=1e-2, random_state=0,
                                standardize=True).fit(feats[3], labels)
    assert list(clf.classes_) == ["esophagitis", "normal-z-line"]
    assert clf.decision_function(feats[3]).shape == (60,)
    proba = clf.predict_proba(feats[3])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.score(feats[3], labels) > 0.9
    assert clf.coef_.shape == (2, 12) and clf.n_features_in_ == 12
    assert len(clf.loss_curve_) == 30 and clf.loss_curve_[-1] < clf.loss_curve_[0]


@pytest.mark.parametrize(
    "params, name",
    [({"lr": 0}, "lr"), ({"max_epochs": 0}, "max_epochs"), ({"batch_size": 2.5}, "batch_size"),
     ({"weight_decay": -1.0}, "weight_decay"), ({"standardize": "yes"}, "standardize"),
     ({"device": "gpu7"}, "device")],
)
def test_linear_probe_bad_params(params, name):
    X, y = np.random.RandomState(0).normal(size=(10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError, match=name):
        LinearProbeClassifier(**params).fit(X, y)


def test_linear_probe_one_class_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearProbeClassifier().fit(np.ones((4, 2)), [1, 1, 1, 1])


# ---------------------------------------------------------------- batched probes
@pytest.mark.parametrize(
    "params",
    [
        {"solver": "adam", "lr": 1e-3, "max_epochs": 5},
        {"solver": "adam", "lr": 1e-3, "max_epochs": 3, "batch_size": 7, "standardize": True,
         "weight_decay": 1e-2},
    ],
)
def test_batched_probe_matches_sequential_probes(params):
    feats, y = _layered_data()
    labels = np.array(["a", "b", "c"])[y]
    batched = MultiLayerLinearProbe(random_state=11, **params).fit(feats, labels)
    probas = batched.predict_proba(feats)
    assert batched.keys_ == [1, 3, 5]
    worst = 0.0
    for X, proba, est in zip(feats.values(), probas, batched.estimators_):
        seq = LinearProbeClassifier(random_state=11, **params).fit(X, labels)
        worst = max(worst, np.abs(seq.predict_proba(X) - proba).max())
        np.testing.assert_allclose(est.coef_, seq.coef_, atol=BATCHED_ATOL)
        np.testing.assert_allclose(est.intercept_, seq.intercept_, atol=BATCHED_ATOL)
        np.testing.assert_array_equal(est.predict(X), seq.predict(X))
    assert worst < BATCHED_ATOL
    # the summed training loss is the sum of the one-by-one losses
    seq_loss = sum(
        np.asarray(LinearProbeClassifier(random_state=11, **params).fit(X, labels).loss_curve_)
        for X in feats.values()
    )
    np.testing.assert_allclose(batched.loss_curve_, seq_loss, rtol=1e-5)


def test_batched_probe_heads_are_independent():
    """Adding a layer does not change the other layers' heads."""
    feats, y = _layered_data()
    adam = dict(solver="adam", max_epochs=2, random_state=0)
    both = MultiLayerLinearProbe(**adam).fit([feats[1], feats[3]], y)
    one = MultiLayerLinearProbe(**adam).fit([feats[1]], y)
    np.testing.assert_allclose(both.estimators_[0].coef_, one.estimators_[0].coef_,
                               atol=BATCHED_ATOL)


def test_batched_probe_float32_inputs_equal_float64_inputs():
    """float32 features are not cast to float64 for training; the results are the same."""
    feats, y = _layered_data()
    params = dict(solver="adam", lr=1e-3, max_epochs=2, batch_size=7, random_state=0)
    f32 = MultiLayerLinearProbe(**params).fit(feats, y)
    f64 = MultiLayerLinearProbe(**params).fit({k: v.astype(np.float64) for k, v in feats.items()},
                                              y)
    for a, b, X in zip(f32.estimators_, f64.estimators_, feats.values()):
        np.testing.assert_array_equal(a.coef_, b.coef_)
        np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(f32.loss_curve_, f64.loss_curve_)


def test_batched_probe_input_errors():
    feats, y = _layered_data()
    probe = MultiLayerLinearProbe(solver="adam", max_epochs=1, random_state=0)
    with pytest.raises(TypeError, match="list of feature arrays"):
        probe.fit(feats[1], y)
    with pytest.raises(ValueError, match="same number of samples"):
        probe.fit([feats[1], feats[3][:-1]], y)
    with pytest.raises(ValueError, match="y must be 1-d"):
        probe.fit([feats[1]], y[:-1])
    probe.fit(feats, y)
    with pytest.raises(ValueError, match="fitted on"):
        probe.predict_proba({1: feats[1]})
    with pytest.raises(ValueError, match="features"):
        probe.predict_proba({1: feats[1], 3: feats[1], 5: feats[5]})


def _fold_rows(n):
    """Five k-fold training sets; with 61 rows the folds have 48 or 49 rows (two groups)."""
    from sklearn.model_selection import KFold

    return [train for train, _ in KFold(5, shuffle=True, random_state=0).split(np.zeros(n))]


@pytest.mark.parametrize(
    "params",
    [
        {"solver": "adam", "lr": 1e-3, "max_epochs": 3, "random_state": 11},
        {"solver": "adam", "lr": 1e-3, "max_epochs": 2, "batch_size": 7, "weight_decay": 1e-2,
         "random_state": np.random.RandomState(4)},
        {"solver": "adam", "lr": 1e-3, "max_epochs": 2, "standardize": True, "random_state": 2},
    ],
)
def test_fit_folds_equals_one_fit_per_fold(params):
    """All folds in one model = a clone fitted on each fold's rows (unequal fold sizes)."""

    from sklearn_endo.probes import fit_folds

    feats, y = _layered_data(n=61)
    labels = np.array(["a", "b", "c"])[y]
    folds = _fold_rows(61)
    assert len({len(f) for f in folds}) == 2
    probe = MultiLayerLinearProbe(**params)
    together = fit_folds(probe, feats, labels, folds)
    assert not hasattr(probe, "estimators_")  # the template is not fitted
    for rows, fitted in zip(folds, together):
        alone = clone(probe).fit({k: v[rows] for k, v in feats.items()}, labels[rows])
        assert fitted.keys_ == alone.keys_ == [1, 3, 5]
        np.testing.assert_array_equal(fitted.classes_, alone.classes_)
        for a, b, X in zip(fitted.estimators_, alone.estimators_, feats.values()):
            np.testing.assert_allclose(a.coef_, b.coef_, atol=BATCHED_ATOL)
            np.testing.assert_allclose(a.intercept_, b.intercept_, atol=BATCHED_ATOL)
            np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X),
                                       atol=BATCHED_ATOL)
        np.testing.assert_allclose(fitted.loss_curve_, alone.loss_curve_, rtol=1e-5)


def test_fit_folds_matches_a_plain_torch_loop_per_fold():
    """Independent reference: per fold, nn.Linear + autograd CE + torch Adam."""
    from sklearn_endo.probes import fit_folds

    rng = np.random.RandomState(0)
    X = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.randint(0, 2, 30)
    folds = [np.arange(0, 20), np.arange(10, 30)]
    fitted = fit_folds(MultiLayerLinearProbe(solver="adam", lr=1e-2, max_epochs=3,
                                             batch_size=6, random_state=7), [X], y, folds)
    init_seed, shuffle_seed = check_random_state(7).randint(0, 2**31 - 1, size=2)
    for rows, probe in zip(folds, fitted):
        lin = torch.nn.Linear(4, 2)
        gen = torch.Generator().manual_seed(int(init_seed))
        with torch.no_grad():
            lin.weight.copy_((torch.rand(2, 4, generator=gen) * 2 - 1) / 2)
            lin.bias.copy_((torch.rand(2, generator=gen) * 2 - 1) / 2)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
        order_gen = torch.Generator().manual_seed(int(shuffle_seed))
        Xt, yt = torch.from_numpy(X[rows]), torch.from_numpy(y[rows]).long()
        for _ in range(3):
            perm = torch.randperm(20, generator=order_gen)
            for s in range(0, 20, 6):
                idx = perm[s : s + 6]
                loss = torch.nn.functional.cross_entropy(lin(Xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        np.testing.assert_allclose(probe.estimators_[0].coef_, lin.weight.detach().numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose(probe.estimators_[0].intercept_,
                                   lin.bias.detach().numpy(), atol=1e-5)


def test_fit_folds_errors():
    from sklearn_endo.probes import fit_folds

    feats, y = _layered_data(n=20)
    probe = MultiLayerLinearProbe(solver="adam", max_epochs=1, random_state=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_folds(probe, feats, y, [np.flatnonzero(y == 0)])
    with pytest.raises(ValueError, match=r"train_folds\[1\]"):
        fit_folds(probe, feats, y, [np.arange(10), np.array([], dtype=int)])
    with pytest.raises(ValueError, match="lr"):
        fit_folds(MultiLayerLinearProbe(lr=-1), feats, y, [np.arange(20)])


# ---------------------------------------------------------------- k-NN probe
def _knn_data():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 6))
    y = rng.randint(0, 3, 40)
    return X[:30], y[:30], X[30:]


@pytest.mark.parametrize("check", [
    ec.check_estimator_cloneable, ec.check_estimator_tags_renamed,
    ec.check_valid_tag_types, ec.check_estimator_repr, ec.check_no_attributes_set_in_init,
    ec.check_estimators_unfitted, ec.check_do_not_raise_errors_in_init_or_set_params,
    ec.check_mixin_order, ec.check_parameters_default_constructible,
    ec.check_get_params_invariance, ec.check_set_params,
], ids=lambda c: c.__name__)
def test_batched_probe_api_checks(check):
    """The API checks that need no table (the others cannot feed a list of layers)."""
    check("MultiLayerLinearProbe", MultiLayerLinearProbe(random_state=0))


def test_batched_probe_declares_layered_input():
    tags = get_tags(MultiLayerLinearProbe())
    assert tags.input_tags.two_d_array is False and tags.input_tags.dict is True
    assert tags.target_tags.required is True
    with pytest.warns(SkipTestWarning, match="Can't test estimator MultiLayerLinearProbe"):
        results = check_estimator(MultiLayerLinearProbe(), on_fail=None)
    assert [(r["check_name"], r["status"]) for r in results] == [
        ("check_estimator_cloneable", "passed")]
    feats, _ = _layered_data(n=20)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        MultiLayerLinearProbe().fit(feats, np.linspace(0.1, 2.0, 20))


def test_knn_dino_weighting_by_hand():
    Xtr, ytr, Xte = _knn_data()
    k, T = 7, 0.1
    proba = KNNProbeClassifier(n_neighbors=k, temperature=T).fit(Xtr, ytr).predict_proba(Xte)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    expected = np.zeros((len(Xte), 3))
    for i, q in enumerate(unit(Xte)):
        sims = unit(Xtr) @ q
        nn = np.argsort(-sims)[:k]
        for j in nn:
            expected[i, ytr[j]] += np.exp(sims[j] / T)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba, expected, rtol=1e-10)


@pytest.mark.parametrize("weighting, weights", [("uniform", "uniform"), ("distance", "distance")])
def test_knn_matches_sklearn_cosine_neighbors(weighting, weights):
    Xtr, ytr, Xte = _knn_data()
    ours = KNNProbeClassifier(n_neighbors=5, weighting=weighting).fit(Xtr, ytr)
    ref = KNeighborsClassifier(n_neighbors=5, metric="cosine", weights=weights,
                               algorithm="brute").fit(Xtr, ytr)
    np.testing.assert_allclose(ours.predict_proba(Xte), ref.predict_proba(Xte), atol=1e-10)


def test_knn_several_k_from_one_search():
    Xtr, ytr, Xte = _knn_data()
    ytr = np.array(["x", "y", "z"])[ytr]
    knn = KNNProbeClassifier().fit(Xtr, ytr)
    multi = knn.predict_proba_for_k(Xte, [1, 5, 50])
    for k in (1, 5):
        single = KNNProbeClassifier(n_neighbors=k).fit(Xtr, ytr).predict_proba(Xte)
        np.testing.assert_allclose(multi[k], single)
    # k above the training size is clipped to it
    np.testing.assert_allclose(multi[50], KNNProbeClassifier(n_neighbors=30).fit(
        Xtr, ytr).predict_proba(Xte))
    assert knn.predict(Xte).dtype.kind == "U"


def test_knn_small_temperature_does_not_overflow():
    Xtr, ytr, Xte = _knn_data()
    proba = KNNProbeClassifier(temperature=1e-4).fit(Xtr, ytr).predict_proba(Xte)
    assert np.isfinite(proba).all()


@pytest.mark.parametrize("params, name", [({"n_neighbors": 0}, "n_neighbors"),
                                          ({"temperature": -1}, "temperature"),
                                          ({"weighting": "gauss"}, "weighting")])
def test_knn_bad_params(params, name):
    Xtr, ytr, _ = _knn_data()
    with pytest.raises(ValueError, match=name):
        KNNProbeClassifier(**params).fit(Xtr, ytr)


# ---------------------------------------------------------------- solver="lbfgs"
# Against scikit-learn's LogisticRegression solved to high precision (newton-cholesky,
# tol=1e-10), ours at tol=1e-8 in float64: coefficients measured within 1e-5,
# probabilities within 1e-7.
LBFGS_COEF_ATOL = 1e-4
LBFGS_PROBA_ATOL = 1e-6


def _reference_logistic(X, y, C):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, solver="newton-cholesky", tol=1e-10,
                              max_iter=1000).fit(X, y)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("C", [0.05, 20.0])
def test_lbfgs_probe_equals_sklearn_logistic_regression(n_classes, C):
    feats, y = _layered_data(n=61, n_classes=n_classes)
    X = feats[3].astype(np.float64)
    ours = LinearProbeClassifier(solver="lbfgs", C=C, tol=1e-8, max_iter=1000,
                                 standardize=False).fit(X, y)
    ref = _reference_logistic(X, y, C)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X),
                               atol=LBFGS_PROBA_ATOL)
    if n_classes == 2:  # scikit-learn's binary model: one row, class 0's logit is 0
        np.testing.assert_array_equal(ours.coef_[0], 0.0)
        np.testing.assert_allclose(ours.coef_[1], ref.coef_[0], atol=LBFGS_COEF_ATOL)
        np.testing.assert_allclose(ours.intercept_[1], ref.intercept_[0], atol=LBFGS_COEF_ATOL)
        np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(X),
                                   atol=10 * LBFGS_COEF_ATOL)
    else:  # the intercepts are defined up to a constant: compare them centred
        np.testing.assert_allclose(ours.coef_, ref.coef_, atol=LBFGS_COEF_ATOL)
        np.testing.assert_allclose(ours.intercept_ - ours.intercept_.mean(),
                                   ref.intercept_ - ref.intercept_.mean(),
                                   atol=LBFGS_COEF_ATOL)
    assert 1 <= ours.n_iter_ < 1000
    assert ours.loss_curve_[-1] <= ours.loss_curve_[0]


def test_lbfgs_fit_folds_equals_sklearn_per_layer_and_fold():
    """One joint solve of 3 layers x 5 folds of unequal size: each head is its own fit."""
    from sklearn_endo.probes import fit_folds

    feats, y = _layered_data(n=61)
    f64 = {k: v.astype(np.float64) for k, v in feats.items()}
    folds = _fold_rows(61)
    probe = MultiLayerLinearProbe(solver="lbfgs", C=0.5, tol=1e-8, max_iter=1000,
                                  standardize=False)
    fitted = fit_folds(probe, f64, y, folds)
    for rows, fold_probe in zip(folds, fitted):
        for X, est in zip(f64.values(), fold_probe.estimators_):
            ref = _reference_logistic(X[rows], y[rows], 0.5)
            np.testing.assert_allclose(est.coef_, ref.coef_, atol=LBFGS_COEF_ATOL)
            np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X),
                                       atol=LBFGS_PROBA_ATOL)
    # the same heads as MultiLayerLinearProbe.fit on one fold
    alone = clone(probe).fit({k: v[folds[0]] for k, v in f64.items()}, y[folds[0]])
    for a, b, X in zip(alone.estimators_, fitted[0].estimators_, f64.values()):
        np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X),
                                   atol=2 * LBFGS_PROBA_ATOL)


def test_lbfgs_heads_left_by_the_joint_solve_are_solved_alone():
    """A joint solve stopped early (joint_max_iter=2) leaves heads above tol; each is
    solved again alone, so every head still equals its own LogisticRegression fit."""
    import warnings

    from sklearn_endo.probes._lbfgs import train_heads_lbfgs

    feats, y = _layered_data(n=61)
    Xs = [v.astype(np.float64) for v in feats.values()]
    folds = _fold_rows(61)[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning: all heads converged
        heads, _, n_iter = train_heads_lbfgs(Xs, y, 3, C=0.5, max_iter=1000, tol=1e-8,
                                             device="cpu", folds=folds, joint_max_iter=2)
    assert n_iter == 2
    for f, rows in enumerate(folds):
        for layer, X in enumerate(Xs):
            ref = _reference_logistic(X[rows], y[rows], 0.5)
            w, b = heads[f][layer]
            logits = X @ w.T + b
            proba = np.exp(logits - logits.max(axis=1, keepdims=True))
            proba /= proba.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(proba, ref.predict_proba(X), atol=LBFGS_PROBA_ATOL)
    # the same joint solve without the second pass would be far off: it did stop early
    with pytest.warns(Warning):
        train_heads_lbfgs(Xs, y, 3, C=0.5, max_iter=2, tol=1e-8, device="cpu", folds=folds)


def test_lbfgs_float32_features():
    """The store's float32 features (float32 matmuls) reach the default tol=1e-4 and
    the float64 solution within 1e-3; a tol they cannot reach warns and says why
    (standardize=False: standardized features are float64)."""
    from sklearn.exceptions import ConvergenceWarning

    feats, y = _layered_data()
    f32 = MultiLayerLinearProbe(solver="lbfgs", C=0.5, standardize=False).fit(feats, y)
    f64 = MultiLayerLinearProbe(solver="lbfgs", C=0.5, tol=1e-8, max_iter=1000,
                                standardize=False).fit(
        {k: v.astype(np.float64) for k, v in feats.items()}, y)
    for a, b, X in zip(f32.estimators_, f64.estimators_, feats.values()):
        assert a.coef_.dtype == b.coef_.dtype == np.float64
        np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-3)
    with pytest.warns(ConvergenceWarning, match="Pass float64 features"):
        MultiLayerLinearProbe(solver="lbfgs", C=0.5, tol=1e-9, max_iter=1000,
                              standardize=False).fit(feats, y)


def test_lbfgs_not_converged_warns():
    from sklearn.exceptions import ConvergenceWarning

    feats, y = _layered_data()
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        LinearProbeClassifier(solver="lbfgs", max_iter=2, C=100.0).fit(feats[3], y)
    with pytest.warns(ConvergenceWarning, match="3 of 3 heads"):
        MultiLayerLinearProbe(solver="lbfgs", max_iter=1, C=100.0).fit(feats, y)


@pytest.mark.parametrize(
    "params, name",
    [({"solver": "sgd"}, "solver"), ({"solver": "lbfgs", "C": 0}, "C"),
     ({"solver": "lbfgs", "max_iter": 0}, "max_iter"), ({"solver": "lbfgs", "tol": -1.0}, "tol"),
     ({"solver": "lbfgs", "weight_decay": 1e-3}, "weight_decay"),
     ({"solver": "adam", "C": 0.1}, "C=0.1"),
     # the Adam recipe's settings with the default solver: an error, never ignored
     ({"lr": 1e-3}, "lr=0.001 is a setting of solver='adam'"),
     ({"max_epochs": 100}, "max_epochs=100 .*pass solver='adam'"),
     ({"batch_size": 16}, "batch_size"), ({"standardize": "always"}, "'auto'")],
)
def test_lbfgs_bad_params(params, name):
    X, y = np.random.RandomState(0).normal(size=(10, 3)), np.arange(10) % 2
    for est in (LinearProbeClassifier(**params), MultiLayerLinearProbe(**params)):
        with pytest.raises(ValueError, match=name):
            est.fit(X if isinstance(est, LinearProbeClassifier) else [X], y)


@parametrize_with_checks([LinearProbeClassifier()])  # the default, solver="lbfgs"
def test_lbfgs_sklearn_compatible(estimator, check):
    check(estimator)


def test_default_probe_reaches_logistic_regression():
    """The default probe is StandardScaler + LogisticRegression(C=1), solved to its
    optimum: the same training log-loss and probabilities (the Adam recipe, lr 1e-4 and
    30 epochs, stays far from it on small data)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats, y = _layered_data(n=61)
    for X in (feats[3], feats[5].astype(np.float64)):  # the store's float32, and float64
        ref = make_pipeline(StandardScaler(), LogisticRegression(
            C=1.0, solver="newton-cholesky", tol=1e-10, max_iter=1000)).fit(X, y)
        ours = LinearProbeClassifier().fit(X, y)
        assert log_loss(y, ours.predict_proba(X)) == pytest.approx(
            log_loss(y, ref.predict_proba(X)), abs=1e-4)
        np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-3)
        multi = MultiLayerLinearProbe().fit([X], y)
        np.testing.assert_allclose(multi.predict_proba([X])[0], ref.predict_proba(X),
                                   atol=1e-3)
