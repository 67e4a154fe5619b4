"""The transformer inside the tools users already have: Pipeline, searches, Optuna."""

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    RandomizedSearchCV,
    StratifiedKFold,
    cross_val_score,
    cross_validate,
)
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer


def _pipe(**kw):
    # a named encoder so that loky workers (n_jobs=2) rebuild it instead of unpickling
    params = dict(layer=-1, pretrained=False, img_size=32)
    params.update(kw)
    return make_pipeline(LayerFeatureTransformer("resnet18", **params),
                         LogisticRegression(max_iter=300))


def test_grid_search_n_jobs_2_with_disk_store_matches_n_jobs_1(images, tmp_path):
    X, y = images
    grid = {"layerfeaturetransformer__layer": [1, 4, 8],
            "layerfeaturetransformer__pooling": ["mean", "max"]}
    kw = dict(cv=StratifiedKFold(3), scoring="neg_log_loss")
    one = GridSearchCV(_pipe(), grid, n_jobs=1, **kw).fit(X, y)
    two = GridSearchCV(_pipe(feature_store=str(tmp_path)), grid, n_jobs=2, **kw).fit(X, y)
    np.testing.assert_allclose(one.cv_results_["mean_test_score"],
                               two.cv_results_["mean_test_score"], atol=1e-6)
    assert one.best_params_ == two.best_params_
    assert any(tmp_path.rglob("*.npy"))


def test_randomized_search_and_cross_validate(images):
    X, y = images
    search = RandomizedSearchCV(
        _pipe(), {"layerfeaturetransformer__layer": list(range(9))}, n_iter=4,
        cv=3, scoring="neg_log_loss", random_state=0).fit(X, y)
    assert search.best_estimator_.predict_proba(X).shape == (20, 2)
    res = cross_validate(_pipe(layer=3), X, y, cv=3, scoring=["neg_log_loss", "accuracy"])
    assert res["test_accuracy"].shape == (3,)


def test_joblib_round_trip_of_fitted_search(images, tmp_path):
    X, y = images
    search = GridSearchCV(_pipe(), {"layerfeaturetransformer__layer": [2, 5]}, cv=2)
    search.fit(X, y)
    joblib.dump(search, tmp_path / "s.joblib")
    loaded = joblib.load(tmp_path / "s.joblib")
    np.testing.assert_allclose(loaded.predict_proba(X), search.predict_proba(X), atol=1e-6)


def test_optuna_study_on_layer(images, tiny_vit, counter):
    optuna = pytest.importorskip("optuna")
    X, y = images
    c = counter(tiny_vit)
    pipe = make_pipeline(LayerFeatureTransformer(tiny_vit), LogisticRegression(max_iter=300))

    def objective(trial):
        pipe.set_params(layerfeaturetransformer__layer=trial.suggest_int("layer", 0, 4))
        return cross_val_score(pipe, X, y, cv=3, scoring="neg_log_loss").mean()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=6)
    assert 0 <= study.best_params["layer"] <= 4
    assert c.images == len(X)  # six trials x three folds, one encoder pass


# OptunaSearchCV reports each trial through optuna.terminator (deprecated since optuna
# 4.9, with no replacement API yet) and announces that it is experimental: not ours.
@pytest.mark.filterwarnings("ignore:.optuna.terminator. module has been deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:OptunaSearchCV is experimental")
def test_optuna_search_cv(images):
    pytest.importorskip("optuna_integration")
    import optuna
    from optuna_integration import OptunaSearchCV

    X, y = images
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = OptunaSearchCV(
        _pipe(), {"layerfeaturetransformer__layer": optuna.distributions.IntDistribution(0, 8)},
        cv=3, n_trials=4, scoring="neg_log_loss", random_state=0).fit(X, y)
    assert "layerfeaturetransformer__layer" in search.best_params_
