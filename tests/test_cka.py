"""CKA: reference formulas, invariances, cka_matrix, and CKADisplay."""

import functools
import sys

import numpy as np
import pytest

from sklearn_endo.metrics import cka_matrix, linear_cka, minibatch_cka, rbf_cka
from sklearn_endo.plotting import CKADisplay

ALL_CKA = [linear_cka, rbf_cka, functools.partial(minibatch_cka, batch_size=40)]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --------------------------------------------- reference (Kornblith et al. 2019 code)
def _center_gram(K, unbiased=False):
    K = K.copy()
    n = K.shape[0]
    if unbiased:
        np.fill_diagonal(K, 0)
        means = K.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        K -= means[:, None]
        K -= means[None, :]
        np.fill_diagonal(K, 0)
    else:
        K -= K.mean(0, keepdims=True)
        K -= K.mean(1, keepdims=True)
    return K


def _gram_cka(K, L, unbiased=False):
    K, L = _center_gram(K, unbiased), _center_gram(L, unbiased)
    return np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L))


def _gram_rbf(X, threshold):
    sq = np.sum(X**2, 1)
    d = sq[:, None] + sq[None, :] - 2 * X @ X.T
    return np.exp(-d / (2 * threshold**2 * np.median(d)))


@pytest.mark.parametrize("shape_x, shape_y", [((50, 4), (50, 6)), ((12, 30), (12, 40))])
def test_linear_cka_matches_gram_formula(rng, shape_x, shape_y):
    # the second case (p > n) takes the Gram path
    X, Y = rng.normal(size=shape_x), rng.normal(size=shape_y)
    Y[:, :2] += X[:, :2]
    assert linear_cka(X, Y) == pytest.approx(_gram_cka(X @ X.T, Y @ Y.T), rel=1e-10)


def test_rbf_cka_matches_reference(rng):
    X = rng.normal(size=(40, 5))
    Y = np.tanh(X @ rng.normal(size=(5, 3)))
    for frac in (0.5, 0.8):
        expected = _gram_cka(_gram_rbf(X, frac), _gram_rbf(Y, frac))
        assert rbf_cka(X, Y, sigma_frac=frac) == pytest.approx(expected, rel=1e-10)


def test_minibatch_cka_single_batch_matches_unbiased_reference(rng):
    X = rng.normal(size=(30, 5))
    Y = X @ rng.normal(size=(5, 7)) + rng.normal(size=(30, 7))
    expected = _gram_cka(X @ X.T, Y @ Y.T, unbiased=True)
    assert minibatch_cka(X, Y, batch_size=30) == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------- invariances
@pytest.mark.parametrize("cka", ALL_CKA)
def test_self_similarity_is_one_and_symmetric(rng, cka):
    X = rng.normal(size=(80, 6))
    Y = np.sin(X @ rng.normal(size=(6, 4)))
    assert cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert cka(X, Y) == pytest.approx(cka(Y, X), rel=1e-12)


@pytest.mark.parametrize("cka", ALL_CKA)
def test_invariant_to_orthogonal_maps_scaling_and_shift(rng, cka):
    X = rng.normal(size=(80, 6))
    Y = np.sin(X @ rng.normal(size=(6, 4))) + 0.1 * rng.normal(size=(80, 4))
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    reference = cka(X, Y)
    assert cka(X, Y @ Q) == pytest.approx(reference, abs=1e-10)
    assert cka(X, 7.5 * Y) == pytest.approx(reference, abs=1e-10)
    assert cka(X + 3.0, Y) == pytest.approx(reference, abs=1e-10)


def test_not_invariant_to_invertible_linear_maps(rng):
    X = rng.normal(size=(300, 10))
    A = rng.normal(size=(10, 10)) @ np.diag(np.logspace(0, 2, 10))  # invertible
    assert abs(np.linalg.det(A)) > 1e-6
    assert linear_cka(X, X @ A) < 0.9
    assert rbf_cka(X[:100], X[:100] @ A) < 0.9


def test_independent_data_near_zero(rng):
    # n >> p: E[linear CKA] ~ sqrt(p q) / n = 0.0025 here; tolerance 0.02
    X, Y = rng.normal(size=(2000, 5)), rng.normal(size=(2000, 5))
    assert linear_cka(X, Y) < 0.02
    # wide features (p = n / 2): linear CKA is biased upwards, the unbiased one is not
    X, Y = rng.normal(size=(200, 100)), rng.normal(size=(200, 100))
    assert linear_cka(X, Y) > 0.2
    assert abs(minibatch_cka(X, Y, batch_size=200)) < 0.05


def test_minibatch_close_to_linear_on_related_data(rng):
    X = rng.normal(size=(1000, 5))
    Y = X @ rng.normal(size=(5, 8)) + rng.normal(size=(1000, 8))
    full = linear_cka(X, Y)
    for batch_size in (100, 250):
        assert minibatch_cka(X, Y, batch_size=batch_size) == pytest.approx(full, abs=0.05)
    shuffled = minibatch_cka(X, Y, batch_size=100, shuffle=True, random_state=0)
    assert shuffled == pytest.approx(full, abs=0.05)


# -------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "X, Y, match",
    [
        (np.ones(10), np.ones((10, 2)), r"reshape\(-1, 1\)"),
        (np.ones((10, 3, 3)), np.ones((10, 2)), "Pool token"),
        (np.ones((1, 3)), np.ones((1, 2)), "at least 2 samples"),
        (np.full((5, 2), np.nan), np.ones((5, 2)), "NaN"),
        (np.ones((5, 2)), np.ones((6, 2)), "same samples"),
        (np.ones((5, 2)), np.arange(10.0).reshape(5, 2), "zero variance"),
        ([["a", "b"], ["c", "d"]], np.ones((2, 2)), "numeric"),
    ],
)
def test_linear_cka_bad_input(X, Y, match):
    with pytest.raises(ValueError, match=match):
        linear_cka(X, Y)


def test_other_bad_parameters(rng):
    X = rng.normal(size=(20, 3))
    with pytest.raises(ValueError, match="sigma_frac"):
        rbf_cka(X, X, sigma_frac=0)
    with pytest.raises(ValueError, match="median pairwise distance"):
        rbf_cka(np.vstack([np.zeros((15, 3)), X[:5]]), X)
    with pytest.raises(ValueError, match="batch_size"):
        minibatch_cka(X, X, batch_size=2)
    with pytest.raises(ValueError, match="at least 4 samples"):
        minibatch_cka(X[:3], X[:3], batch_size=4)


# -------------------------------------------------------------------- cka_matrix
def test_cka_matrix_one_encoder(rng):
    base = rng.normal(size=(60, 8))
    layers = {"stem": base, "block1": np.tanh(base), "block2": rng.normal(size=(60, 3))}
    M = cka_matrix(layers)
    assert M.shape == (3, 3)
    np.testing.assert_allclose(np.diag(M), 1.0)
    np.testing.assert_allclose(M, M.T)
    assert M[0, 1] == pytest.approx(linear_cka(base, np.tanh(base)))
    np.testing.assert_allclose(cka_matrix(list(layers.values())), M)


def test_cka_matrix_two_encoders_and_kinds(rng):
    a = [rng.normal(size=(30, 4)) for _ in range(3)]
    b = [a[0] @ rng.normal(size=(4, 4)), rng.normal(size=(30, 5))]
    for kind, func in [("linear", linear_cka), ("rbf", rbf_cka), ("minibatch", minibatch_cka)]:
        M = cka_matrix(a, b, kind=kind)
        assert M.shape == (3, 2)
        assert M[2, 1] == pytest.approx(func(a[2], b[1]))
    custom = functools.partial(rbf_cka, sigma_frac=0.5)
    assert cka_matrix(a, b, kind=custom)[0, 0] == pytest.approx(custom(a[0], b[0]))


def test_cka_matrix_bad_input(rng):
    X = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="same samples"):
        cka_matrix([X, X[:8]])
    with pytest.raises(ValueError, match="same samples"):
        cka_matrix([X], [X[:8]])
    with pytest.raises(ValueError, match="kind must be one of"):
        cka_matrix([X], kind="cosine")
    with pytest.raises(TypeError, match="list of per-layer arrays"):
        cka_matrix(X)
    with pytest.raises(ValueError, match="empty"):
        cka_matrix([])
    with pytest.raises(ValueError, match=r"features_a\['bad'\]"):
        cka_matrix({"ok": X, "bad": X[:, 0]})


# ------------------------------------------------------------------------ Display
@pytest.fixture
def pyplot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_display_from_features(pyplot, rng):
    layers = {f"block{i}": rng.normal(size=(30, 4)) for i in range(3)}
    disp = CKADisplay.from_features(layers, name_a="resnet18")
    np.testing.assert_allclose(disp.im_.get_array(), cka_matrix(layers))
    assert disp.ax_.get_xlabel() == "Layer (resnet18)"
    assert disp.ax_.get_ylabel() == "Layer (resnet18)"
    assert [t.get_text() for t in disp.ax_.get_yticklabels()] == list(layers)
    assert disp.text_.shape == (3, 3)
    assert disp.figure_ is disp.ax_.figure
    assert disp.figure_.axes[-1].get_ylabel() == "linear CKA"  # colorbar


def test_display_two_encoders_on_given_axes(pyplot, rng):
    a = [rng.normal(size=(30, 4)) for _ in range(2)]
    b = [rng.normal(size=(30, 4)) for _ in range(3)]
    _fig, ax = pyplot.subplots()
    disp = CKADisplay.from_features(
        a, b, name_a="frozen", name_b="fine-tuned", ax=ax, annotate=False, colorbar=False
    )
    assert disp.ax_ is ax and disp.text_ is None
    assert disp.im_.get_array().shape == (2, 3)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Layer (fine-tuned)", "Layer (frozen)")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]


def test_display_labels_and_title_say_which_encoder(pyplot, rng):
    """One encoder against itself: one name (or none) on both axes, never "encoder A";
    two: A on the rows, B on the columns; a default title the user can replace (#16)."""
    same = [rng.normal(size=(30, 4)) for _ in range(3)]
    disp = CKADisplay.from_features(same)
    assert (disp.ax_.get_xlabel(), disp.ax_.get_ylabel()) == ("Layer", "Layer")
    assert disp.ax_.get_title() == "linear CKA between layers"
    disp = CKADisplay.from_features(same, name_a="resnet18", kind="rbf")
    assert disp.ax_.get_title() == "rbf CKA between the layers of resnet18"
    other = [rng.normal(size=(30, 4)) for _ in range(3)]
    disp = CKADisplay.from_features(same, other)  # two encoders, same depth, no names
    assert (disp.ax_.get_xlabel(), disp.ax_.get_ylabel()) == (
        "Layer (encoder B)", "Layer (encoder A)")
    assert disp.ax_.get_title() == "linear CKA: encoder A (rows) vs encoder B"
    disp = CKADisplay.from_features(same, other, name_a="frozen", name_b="tuned",
                                    title="before and after")
    assert disp.ax_.get_title() == "before and after"
    disp = CKADisplay(np.eye(2)[:, :1]).plot(title="")  # rectangular, built by hand
    assert (disp.ax_.get_xlabel(), disp.ax_.get_ylabel()) == (
        "Layer (encoder B)", "Layer (encoder A)")
    assert disp.ax_.get_title() == ""


def test_display_bad_input(pyplot):
    with pytest.raises(ValueError, match="layers_a has 3 labels"):
        CKADisplay(np.eye(2), layers_a=["a", "b", "c"]).plot()
    with pytest.raises(ValueError, match="2-D"):
        CKADisplay(np.ones(3)).plot()


def test_display_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        CKADisplay(np.eye(2)).plot()
