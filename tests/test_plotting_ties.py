"""LayerCurveDisplay shades the layers not significantly worse than the best."""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sklearn_endo import layer_sweep_from_features  # noqa: E402
from sklearn_endo.plotting import LayerCurveDisplay  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _span_edges(disp):
    edges = []
    for p in disp.tied_spans_:  # a Rectangle (matplotlib >= 3.9) or a Polygon
        xs = ([p.get_x(), p.get_x() + p.get_width()] if hasattr(p, "get_width")
              else np.asarray(p.get_xy())[:, 0])
        edges.append((round(float(min(xs)), 6), round(float(max(xs)), 6)))
    return edges


def test_tied_layers_are_shaded_in_runs_of_adjacent_plotted_layers():
    disp = LayerCurveDisplay([0, 4, 8, 12, 16], [0.5, 0.8, 0.82, 0.7, 0.81], None,
                             "accuracy", best_layer=8, tied_layers=[4, 8, 16]).plot()
    # spans reach half the spacing of the plotted layers (4) either side
    assert _span_edges(disp) == [(2.0, 10.0), (14.0, 18.0)]
    labels = disp.ax_.get_legend_handles_labels()[1]
    assert labels.count("not significantly worse than the best") == 1
    assert LayerCurveDisplay([0, 1], [0.5, 0.6]).plot().tied_spans_ == []


def test_from_sweep_shades_the_tie_set_of_the_plotted_metric():
    rng = np.random.RandomState(0)
    n = 90
    y = np.arange(n) % 2
    feats = {i: s * y[:, None] + rng.normal(size=(n, 4))
             for i, s in enumerate([0.0, 2.0, 2.0, 0.3])}
    res = layer_sweep_from_features(feats, y, probe="logistic", cv=5, n_repeats=2,
                                    random_state=0, verbose=0)
    tied = res.compare("accuracy").tied_candidates
    disp = res.plot("accuracy")
    assert disp.tied_layers == tied and 0 not in tied and {1, 2} <= set(tied)
    assert len(disp.tied_spans_) >= 1
    assert LayerCurveDisplay.from_sweep(res, "log_loss", show_tied=False).tied_spans_ == []
    assert LayerCurveDisplay.from_sweep(res, "log_loss").tied_layers == res.tied_layers_


def test_from_cv_results_takes_the_tie_set_and_places_negative_layers():
    res = {"params": [{"layer": -1}, {"layer": 2}, {"layer": 5}], "param_layer": [-1, 2, 5],
           "mean_test_score": [0.8, 0.7, 0.79], "std_test_score": [0.01, 0.02, 0.01]}
    disp = LayerCurveDisplay.from_cv_results(res, n_layers=12, tied_layers=[-1, 5])
    assert disp.tied_layers == [12, 5]
    # 5 and 12 are adjacent among the plotted layers (2, 5, 12): one span
    assert _span_edges(disp) == [(3.5, 13.5)]
