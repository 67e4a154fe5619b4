"""LayerCurveDisplay, EmbeddingDisplay and ConfusionAsymmetryDisplay draw with Agg."""

import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from sklearn_endo import LayerFeatureTransformer  # noqa: E402
from sklearn_endo._sweep import layer_sweep_from_features  # noqa: E402
from sklearn_endo.plotting import (  # noqa: E402
    ConfusionAsymmetryDisplay,
    EmbeddingDisplay,
    LayerCurveDisplay,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _blobs(n=24, d=6, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 3
    return rng.normal(scale=3, size=(3, d))[y] + rng.normal(size=(n, d)), y


# ---------------------------------------------------------------- layer curve
def test_layer_curve_draws_and_labels():
    disp = LayerCurveDisplay([0, 2, 1], [0.5, 0.7, 0.8], [0.1, 0.05, 0.02], "accuracy",
                             best_layer=1).plot()
    assert disp.ax_.get_xlabel() == "Layer" and disp.ax_.get_ylabel() == "Accuracy"
    np.testing.assert_array_equal(disp.line_.get_xdata(), [0, 1, 2])  # sorted by layer
    np.testing.assert_array_equal(disp.line_.get_ydata(), [0.5, 0.8, 0.7])
    assert disp.band_ is not None and disp.best_line_.get_xdata()[0] == 1
    assert disp.figure_ is disp.ax_.figure
    _, ax = plt.subplots()
    assert LayerCurveDisplay([0, 1], [1, 2]).plot(ax=ax).ax_ is ax


def test_layer_curve_bad_shapes():
    with pytest.raises(ValueError, match="same length"):
        LayerCurveDisplay([0, 1, 2], [0.5, 0.6])
    with pytest.raises(ValueError, match="scores_std"):
        LayerCurveDisplay([0, 1], [0.5, 0.6], [0.1])


def test_layer_curve_from_sweep_and_result_plot():
    feats = {i: _blobs(seed=i)[0] for i in range(3)}
    y = _blobs()[1]
    res = layer_sweep_from_features(feats, y, probe="logistic", cv=3)
    disp = res.plot("f1_macro")
    assert isinstance(disp, LayerCurveDisplay)
    assert disp.ax_.get_ylabel() == "Macro F1"
    np.testing.assert_allclose(disp.line_.get_ydata(), res.mean("f1_macro"))
    disp = LayerCurveDisplay.from_sweep(res, metric="log_loss")
    assert disp.best_line_.get_xdata()[0] == res.best_layer_
    with pytest.raises(ValueError, match="was not computed"):
        LayerCurveDisplay.from_sweep(res, metric="auc")
    with pytest.raises(TypeError, match="LayerSweepResult"):
        LayerCurveDisplay.from_sweep({"layers": [0]})


def test_layer_curve_from_grid_search_with_negative_layers_and_neg_log_loss(images, tiny_vit):
    X, y = images
    pipe = make_pipeline(LayerFeatureTransformer(tiny_vit, batch_size=8),
                         LogisticRegression(max_iter=200))
    search = GridSearchCV(pipe, {"layerfeaturetransformer__layer": [-1, -2, -4],
                                 "logisticregression__C": [0.1, 1.0]},
                          scoring="neg_log_loss", cv=2).fit(X, y)
    res = search.cv_results_
    disp = LayerCurveDisplay.from_cv_results(res, scoring="neg_log_loss", n_layers=4)
    np.testing.assert_array_equal(disp.line_.get_xdata(), [1, 3, 4])
    assert disp.ax_.get_ylabel() == "Log-loss"
    # each layer: its best (lowest-loss) C, as a positive loss
    layers = np.array([p["layerfeaturetransformer__layer"] for p in res["params"]])
    losses = -res["mean_test_score"]
    expected = [losses[layers == la].min() for la in (-4, -2, -1)]
    np.testing.assert_allclose(disp.line_.get_ydata(), expected)
    best = search.best_params_["layerfeaturetransformer__layer"]
    assert disp.best_line_.get_xdata()[0] == 4 + 1 + best
    # the search itself carries its scoring; negative indices stay without n_layers
    disp = LayerCurveDisplay.from_cv_results(search, param="layerfeaturetransformer__layer")
    np.testing.assert_array_equal(disp.line_.get_xdata(), [-4, -2, -1])
    np.testing.assert_allclose(disp.line_.get_ydata(), expected)
    assert disp.ax_.get_ylabel() == "Log-loss"
    with pytest.raises(ValueError, match="Did you mean 'layerfeaturetransformer__layer'"):
        LayerCurveDisplay.from_cv_results(res, param="layer")
    with pytest.raises(ValueError, match="mean_test_score"):
        LayerCurveDisplay.from_cv_results(res, metric="mean_test_accuracy")


def test_layer_curve_from_cv_results_mixed_signs_need_n_layers():
    res = {"params": [{"layer": -1}, {"layer": 2}], "param_layer": [-1, 2],
           "mean_test_score": [0.8, 0.7], "std_test_score": [0.01, 0.02]}
    with pytest.raises(ValueError, match="n_layers"):
        LayerCurveDisplay.from_cv_results(res)
    disp = LayerCurveDisplay.from_cv_results(res, n_layers=12)
    np.testing.assert_array_equal(disp.line_.get_xdata(), [2, 12])
    assert disp.best_line_.get_xdata()[0] == 12  # higher score is better


# ---------------------------------------------------------------- embedding
@pytest.mark.parametrize("method, axis", [("tsne", "t-SNE"), ("pca", "PC")])
def test_embedding_display(method, axis):
    X, y = _blobs()
    names = np.array(["polyp", "normal", "ulcer"])[y]
    disp = EmbeddingDisplay.from_features(X, names, method=method, random_state=0)
    assert disp.embedding.shape == (24, 2)
    assert len(disp.scatters_) == 3
    assert disp.ax_.get_xlabel() == f"{axis} 1" and disp.ax_.get_ylabel() == f"{axis} 2"
    legend = [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    assert legend == ["normal", "polyp", "ulcer"]


def test_embedding_umap_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    X, y = _blobs()
    with pytest.raises(ImportError, match="umap-learn"):
        EmbeddingDisplay.from_features(X, y, method="umap")


def test_embedding_bad_input():
    X, y = _blobs()
    with pytest.raises(ValueError, match="method='isomap'"):
        EmbeddingDisplay.from_features(X, y, method="isomap")
    with pytest.raises(ValueError, match="one label per row"):
        EmbeddingDisplay.from_features(X, y[:-1], method="pca")
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingDisplay.from_features(np.full((5, 2), np.nan), np.zeros(5), method="pca")


# ---------------------------------------------------------------- confusion asymmetry
def test_confusion_asymmetry_display():
    y_true = np.array(["z"] * 10 + ["e"] * 10)
    y_pred = np.array(["e"] * 3 + ["z"] * 7 + ["z"] * 1 + ["e"] * 9)
    disp = ConfusionAsymmetryDisplay.from_predictions(y_true, y_pred, labels=["z", "e"])
    a = disp.asymmetry
    np.testing.assert_allclose(a, -a.T)
    assert a[0, 1] == pytest.approx(0.3 - 0.1)  # z->e 30%, e->z 10%
    assert disp.ax_.get_xlabel() == "Predicted label" and disp.ax_.get_ylabel() == "True label"
    assert [t.get_text() for t in disp.ax_.get_xticklabels()] == ["z", "e"]
    assert disp.text_[0, 1].get_text() == "0.20"
    assert disp.table["class_a"][0] == "z"
    clf = LogisticRegression().fit(*_blobs())
    X, y = _blobs(seed=5)
    disp = ConfusionAsymmetryDisplay.from_estimator(clf, X, y, include_values=False)
    assert disp.asymmetry.shape == (3, 3) and disp.text_ is None


def test_layer_curve_from_sweep_marks_the_best_of_the_plotted_metric():
    from sklearn_endo._sweep import LayerSweepResult

    # log-loss is best at layer 0 but accuracy at layer 2 (a calibrated shallow layer,
    # an overconfident deep one); f1 ties are broken at the first layer
    folds = np.ones(3)
    scores = {"accuracy": np.array([[0.6, 0.7, 0.9]])[..., None] * folds,
              "log_loss": np.array([[0.5, 0.8, 0.7]])[..., None] * folds,
              "f1_macro": np.array([[0.4, 0.4, np.nan]])[..., None] * folds}
    res = LayerSweepResult([0, 1, 2], [{}], scores, probe_name="x", extraction_seconds=0,
                           probe_seconds=0)
    assert res.best_layer_ == 0
    assert res.plot("accuracy").best_line_.get_xdata()[0] == 2
    assert res.plot("log_loss").best_line_.get_xdata()[0] == 0
    assert res.plot("f1_macro").best_line_.get_xdata()[0] == 0  # NaN skipped
    assert res.plot("accuracy", best=res.best_layer_).best_line_.get_xdata()[0] == 0
    assert res.plot("accuracy", best=None).best_line_ is None


# ---------------------------------------------------------------- titles, ticks, labels (#16)
def test_layer_curve_title_integer_ticks_and_encoder_label():
    disp = LayerCurveDisplay([0, 1], [0.6, 0.7], metric_name="accuracy").plot()
    ticks = disp.ax_.get_xticks()
    assert np.array_equal(ticks, np.round(ticks))  # no 0.5 between two layers
    assert disp.ax_.get_title() == "Accuracy per layer"
    assert disp.ax_.get_xlabel() == "Layer"
    named = LayerCurveDisplay(np.arange(17), np.linspace(0.4, 0.8, 17), metric_name="log_loss",
                              encoder_name="resnet18").plot(title="my curve")
    assert named.ax_.get_title() == "my curve"
    assert named.ax_.get_xlabel() == "Layer (resnet18)"
    ticks = named.ax_.get_xticks()
    assert np.array_equal(ticks, np.round(ticks))
    untitled = LayerCurveDisplay([2, 5], [0.5, 0.6], encoder_name="vit").plot(title="")
    assert untitled.ax_.get_title() == ""
    shown = LayerCurveDisplay([2, 5], [0.5, 0.6], encoder_name="vit").plot()
    assert shown.ax_.get_title() == "Score per layer of vit"


def test_layer_curve_from_a_search_and_a_sweep_names_the_encoder():
    class Search:  # a fitted search, as from_cv_results reads it (nothing fitted here)
        estimator = make_pipeline(LayerFeatureTransformer("resnet18"), LogisticRegression())
        scoring = "neg_log_loss"
        cv_results_ = {"params": [{"layerfeaturetransformer__layer": i} for i in (0, 1)],
                       "param_layerfeaturetransformer__layer": [0, 1],
                       "mean_test_score": [-0.9, -0.7], "std_test_score": [0.1, 0.1]}

    disp = LayerCurveDisplay.from_cv_results(Search())
    assert disp.ax_.get_xlabel() == "Layer (resnet18)"
    assert disp.ax_.get_title() == "Log-loss per layer of resnet18"
    # a module, not a name: no label invented
    Search.estimator = make_pipeline(LayerFeatureTransformer(LogisticRegression()),
                                     LogisticRegression())
    assert LayerCurveDisplay.from_cv_results(Search()).ax_.get_xlabel() == "Layer"

    F, y = _blobs()
    result = layer_sweep_from_features({0: F, 1: F[:, ::-1]}, y, probe="logistic", cv=3)
    assert result.encoder_ is None
    result.encoder_ = "tf_efficientnet_lite0"  # what layer_sweep sets
    disp = result.plot("accuracy")
    assert disp.ax_.get_xlabel() == "Layer (tf_efficientnet_lite0)"
    assert disp.ax_.get_title() == "Accuracy per layer of tf_efficientnet_lite0"


def test_embedding_title_by_default_and_on_request():
    F, y = _blobs()
    disp = EmbeddingDisplay.from_features(F, y, method="pca")
    assert disp.ax_.get_title() == "PCA of the features"
    disp = EmbeddingDisplay.from_features(F, y, method="pca", name="resnet18, layer 3")
    assert disp.ax_.get_title() == "PCA of resnet18, layer 3"
    assert EmbeddingDisplay.from_features(F, y, method="pca", title="").ax_.get_title() == ""
