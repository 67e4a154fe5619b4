"""layer_sweep: one encoder pass, per-layer CV scores equal to a hand-written loop."""

import sys
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
)
from sklearn.model_selection import GroupKFold, StratifiedKFold

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo._sweep import (
    LayerSweepResult,
    _default_metrics,
    layer_sweep,
    layer_sweep_from_features,
)
from sklearn_endo.probes import KNNProbeClassifier, LinearProbeClassifier

METRICS = ["accuracy", "f1_macro", "precision_macro", "recall_macro", "balanced_accuracy",
           "log_loss"]
FAST = {"solver": "adam", "lr": 1e-2, "max_epochs": 3}


def _features(n=30, dims=(4, 6, 5), seed=0):
    rng = np.random.RandomState(seed)
    y = np.array(["polyp", "normal", "ulcer"])[np.arange(n) % 3]
    codes = np.unique(y, return_inverse=True)[1]
    feats = {}
    for i, d in enumerate(dims):
        centers = rng.normal(scale=float(i), size=(3, d))  # layer 0 uninformative
        feats[i] = centers[codes] + rng.normal(size=(n, d))
    return feats, y


def test_sweep_runs_the_encoder_once_for_all_layers(images, tiny_vit, counter):
    X, y = images
    c = counter(tiny_vit)
    res = layer_sweep(X, y, tiny_vit, cv=2, probe_params=FAST, random_state=0, batch_size=8)
    assert c.images == len(X)  # one pass over the images for 5 layers x 2 folds
    assert res.layers == [0, 1, 2, 3, 4]
    for m in METRICS:
        assert res.scores[m].shape == (1, 5, 2)
        assert res.mean(m).shape == res.std(m).shape == (5,)
    assert res.best_layer_ == res.layers[int(np.argmin(res.mean("log_loss")))]
    assert res.extraction_seconds_ > 0 and res.probe_seconds_ > 0
    assert "best_layer_=" in repr(res)


def test_sweep_scores_equal_a_hand_written_cv_loop(images, tiny_vit):
    X, y = images
    t = LayerFeatureTransformer(tiny_vit, batch_size=8).fit(X)
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    res = layer_sweep(X, y, t, layers=[-1, 2], probe="linear", probe_params=FAST, cv=cv,
                      random_state=3)
    assert res.layers == [4, 2]
    feats = t.layer_features(X, layers=[4, 2])
    for li, layer in enumerate([4, 2]):
        for fi, (tr, te) in enumerate(cv.split(feats[layer], y)):
            clf = LinearProbeClassifier(random_state=3, **FAST).fit(feats[layer][tr], y[tr])
            proba = clf.predict_proba(feats[layer][te])
            pred = clf.classes_[proba.argmax(1)]
            assert res.scores["accuracy"][0, li, fi] == pytest.approx(
                accuracy_score(y[te], pred), abs=1e-12)
            assert res.scores["f1_macro"][0, li, fi] == pytest.approx(
                f1_score(y[te], pred, average="macro"), abs=1e-12)
            assert res.scores["log_loss"][0, li, fi] == pytest.approx(
                log_loss(y[te], proba), abs=1e-12)


def test_batched_sweep_equals_one_by_one_sweep():
    feats, y = _features()
    kw = dict(probe_params=FAST, cv=3, random_state=0)
    batched = layer_sweep_from_features(feats, y, probe="batched-linear", **kw)
    seq = layer_sweep_from_features(feats, y, probe="linear", **kw)
    for m in METRICS:
        np.testing.assert_allclose(batched.scores[m], seq.scores[m], atol=1e-5)
    assert batched.best_layer_ == seq.best_layer_


def test_lbfgs_sweep_equals_a_logistic_regression_sweep():
    """probe_params={"solver": "lbfgs"}: every layer and fold is LogisticRegression's fit."""
    feats, y = _features()
    ours = layer_sweep_from_features(
        feats, y, probe="batched-linear", cv=3, verbose=0,
        probe_params={"solver": "lbfgs", "C": 0.3, "tol": 1e-7, "max_iter": 1000,
                      "standardize": False})
    ref = layer_sweep_from_features(
        feats, y, probe=LogisticRegression(C=0.3, solver="newton-cholesky", tol=1e-10),
        cv=3, verbose=0)
    for m in METRICS:  # probabilities agree within 1e-6 (test_probes), so do the scores
        np.testing.assert_allclose(ours.scores[m], ref.scores[m], atol=1e-5)
    assert ours.best_layer_ == ref.best_layer_


def test_default_sweep_equals_a_scaled_logistic_regression_sweep():
    """The default probe of layer_sweep converges: per layer and fold it scores what
    StandardScaler + LogisticRegression(C=1) scores (docs/evaluation.md's quick start
    was at chance on 12 of 17 layers with the Adam recipe as the default)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats, y = _features(n=45)
    ours = layer_sweep_from_features(feats, y, cv=3, verbose=0)
    ref = layer_sweep_from_features(feats, y, cv=3, verbose=0, probe=make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-10)))
    # tol=1e-4 on the gradient: log-losses within 2e-4 measured
    np.testing.assert_allclose(ours.scores["log_loss"], ref.scores["log_loss"], atol=1e-3)
    np.testing.assert_allclose(ours.scores["accuracy"], ref.scores["accuracy"])


def test_lbfgs_sweep_iterations_default_to_1000_unless_given():
    from sklearn_endo._sweep import _make_probe

    assert _make_probe("batched-linear", {"solver": "lbfgs"}, 0)[1].max_iter == 1000
    assert _make_probe("linear", {"solver": "lbfgs"}, 0)[1].max_iter == 1000
    assert _make_probe("batched-linear", {"solver": "lbfgs", "max_iter": 7}, 0)[1].max_iter == 7
    assert _make_probe("batched-linear", None, 0)[1].max_iter == 1000  # the default
    assert _make_probe("batched-linear", {"solver": "adam"}, 0)[1].max_iter == 100  # unused


def test_knn_sweep_evaluates_several_k():
    feats, y = _features()
    res = layer_sweep_from_features(feats, y, probe="knn", cv=3,
                                    probe_params={"n_neighbors": [1, 5], "weighting": "uniform"})
    assert res.variants == [{"n_neighbors": 1}, {"n_neighbors": 5}]
    assert res.scores["accuracy"].shape == (2, 3, 3)
    for vi, k in enumerate([1, 5]):
        for fi, (tr, te) in enumerate(StratifiedKFold(3).split(feats[2], y)):
            knn = KNNProbeClassifier(n_neighbors=k, weighting="uniform").fit(feats[2][tr], y[tr])
            assert res.scores["accuracy"][vi, 2, fi] == knn.score(feats[2][te], y[te])
    frame = res.to_frame()
    assert list(frame["n_neighbors"]) == [1, 1, 1, 5, 5, 5]
    assert set(res.best_variant_) == {"n_neighbors"}


def test_any_sklearn_classifier_and_groups():
    feats, y = _features()
    groups = np.arange(len(y)) // 3  # three images per patient
    res = layer_sweep_from_features(feats, y, probe=LogisticRegression(max_iter=500),
                                    cv=GroupKFold(3), groups=groups)
    assert res.probe_name == "LogisticRegression"
    assert res.mean("accuracy")[2] > res.mean("accuracy")[0]  # informative beats noise
    res2 = layer_sweep_from_features(feats, y, probe="logistic", cv=GroupKFold(3),
                                     groups=groups)
    np.testing.assert_allclose(res.scores["log_loss"], res2.scores["log_loss"], rtol=1e-6)


def test_class_missing_from_a_training_fold_keeps_columns_aligned():
    feats, y = _features()
    train = np.flatnonzero(y != "ulcer")
    cv = [(train, np.arange(len(y)))]
    res = layer_sweep_from_features(feats, y, probe="logistic", cv=cv)
    # the probe never predicts "ulcer": it gets probability 0, clipped in log-loss
    assert res.mean("accuracy")[2] <= 2 / 3 + 1e-12
    assert np.isfinite(res.scores["log_loss"]).all()


def test_custom_scoring_and_best_layer_without_log_loss():
    feats, y = _features()
    res = layer_sweep_from_features(
        feats, y, probe="logistic", cv=3,
        scoring={"top_proba": lambda yt, yp, proba, labels: proba.max(axis=1).mean()})
    assert res.metrics == ["top_proba"]
    assert res.best_layer_ == int(np.argmax(res.mean("top_proba")))
    res = layer_sweep_from_features(feats, y, probe="logistic", cv=3, scoring=["accuracy"])
    assert res.metrics == ["accuracy"]


def test_to_frame_and_to_dict(monkeypatch):
    feats, y = _features()
    res = layer_sweep_from_features(feats, y, probe="logistic", cv=3)
    frame = res.to_frame()
    assert list(frame["layer"]) == [0, 1, 2]
    assert {f"{m}_{s}" for m in METRICS for s in ("mean", "std")} <= set(frame.columns)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="to_dict"):
        res.to_frame()
    np.testing.assert_allclose(res.to_dict()["accuracy_mean"], res.mean("accuracy"))


def test_bad_arguments_are_clear():
    feats, y = _features()
    with pytest.raises(ValueError, match="probe='svm'"):
        layer_sweep_from_features(feats, y, probe="svm")
    with pytest.raises(ValueError, match="Unknown metric 'auc'"):
        layer_sweep_from_features(feats, y, probe="logistic", scoring=["auc"])
    with pytest.raises(ValueError, match="probe_params"):
        layer_sweep_from_features(feats, y, probe=LogisticRegression(), probe_params={"C": 1})
    with pytest.raises(ValueError, match=r"features\[1\] has shape"):
        layer_sweep_from_features({0: feats[0], 1: feats[1][:-1]}, y)
    with pytest.raises(TypeError, match="non-empty dict"):
        layer_sweep_from_features([feats[0]], y)
    res = layer_sweep_from_features(feats, y, probe="logistic", cv=3)
    with pytest.raises(ValueError, match="was not computed"):
        res.mean("roc_auc")
    assert isinstance(res, LayerSweepResult)


def test_sweep_layer_out_of_range_is_the_transformers_error(images, tiny_vit):
    X, y = images
    with pytest.raises(ValueError, match="out of range"):
        layer_sweep(X, y, tiny_vit, layers=[7], cv=2)


@pytest.mark.parametrize("seed", range(4))
def test_fast_metrics_equal_sklearn(seed):
    """Including folds where some classes are never true or never predicted."""
    rng = np.random.RandomState(seed)
    k, n = 5, 23
    labels = np.arange(k)
    y_true = rng.choice(k - seed % 2, n)  # class 4 absent from y_true when seed is odd
    proba = rng.dirichlet(np.ones(k), n)
    proba[:, 2] *= 0.01 * seed  # class 2 rarely or never predicted
    proba[0] = np.eye(k)[(y_true[0] + 1) % k]  # a zero probability for the true class
    proba /= proba.sum(axis=1, keepdims=True)
    pred = proba.argmax(1)
    got = _default_metrics(y_true, proba)
    kw = dict(labels=labels, average="macro", zero_division=0)
    expected = {
        "accuracy": accuracy_score(y_true, pred),
        "f1_macro": f1_score(y_true, pred, **kw),
        "precision_macro": precision_score(y_true, pred, **kw),
        "recall_macro": recall_score(y_true, pred, **kw),
        "log_loss": log_loss(y_true, proba, labels=labels),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # y_pred classes absent from y_true
        expected["balanced_accuracy"] = balanced_accuracy_score(y_true, pred)
    for m, v in expected.items():
        assert got[m] == pytest.approx(v, abs=1e-12), m


@pytest.mark.parametrize("probe", ["batched-linear", "logistic"])
def test_progress_bar_by_default_and_verbose_0_silences_it(probe, monkeypatch, capsys):
    from sklearn_endo import _sweep

    monkeypatch.setattr(_sweep, "PROGRESS_DELAY", 0)  # show at once, however quick
    feats, y = _features()
    params = FAST if probe == "batched-linear" else None
    layer_sweep_from_features(feats, y, probe=probe, probe_params=params, cv=3)
    err = capsys.readouterr().err
    assert "layer_sweep 3 layers x 3 folds" in err and "9/9" in err  # every fit counted
    layer_sweep_from_features(feats, y, probe=probe, probe_params=params, cv=3, verbose=0)
    assert capsys.readouterr() == ("", "")


def test_verbose_0_silences_the_encoder_pass_without_touching_the_transformer(
        images, tiny_vit, monkeypatch, capsys):
    from sklearn_endo import _sweep

    monkeypatch.setattr(_sweep, "PROGRESS_DELAY", 0)
    X, y = images
    t = LayerFeatureTransformer(tiny_vit, batch_size=8, verbose=True).fit(X)
    layer_sweep(X, y, t, probe="logistic", cv=2, verbose=0)
    assert capsys.readouterr() == ("", "")
    assert t.verbose is True
    layer_sweep(X, y, tiny_vit, probe="logistic", cv=2, batch_size=8, verbose=0)
    assert capsys.readouterr() == ("", "")
