"""Centered kernel alignment (CKA) between representations.

CKA compares two representations of the same n samples (e.g. pooled features of
two layers, or of one layer before and after fine-tuning). It is invariant to
orthogonal transforms and isotropic scaling of either representation, but not to
arbitrary invertible linear maps, which is what makes it informative for wide layers
(Kornblith et al., 2019).

References
----------
S. Kornblith, M. Norouzi, H. Lee, G. Hinton (2019). "Similarity of Neural Network
Representations Revisited". ICML. https://arxiv.org/abs/1905.00414

T. Nguyen, M. Raghu, S. Kornblith (2021). "Do Wide and Deep Networks Learn the Same
Things? Uncovering How Neural Network Representations Vary with Width and Depth".
ICLR. https://arxiv.org/abs/2010.15327
"""

import numbers

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["cka_matrix", "linear_cka", "minibatch_cka", "rbf_cka"]


# ------------------------------------------------------------------------ validation
def _check_features(X, name="X"):
    """Return ``X`` as a finite 2-D float64 array with at least 2 samples."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name} must be a numeric array of shape (n_samples, n_features): {e}"
        ) from e
    if X.ndim == 1:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}. Use "
            f"{name}.reshape(-1, 1) for a single feature."
        )
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}. Pool "
            f"token or spatial axes first, or flatten with {name}.reshape(len({name}), -1)."
        )
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(
            f"{name} has shape {X.shape}; CKA needs at least 2 samples and 1 feature."
        )
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or infinity. Pass finite features.")
    return X


def _check_pair(X, Y):
    X, Y = _check_features(X, "X"), _check_features(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X and Y must describe the same samples, got {X.shape[0]} and {Y.shape[0]} "
            "rows. Extract both representations from the same images, in the same order."
        )
    return X, Y


def _undefined(name):
    return ValueError(
        f"{name} has zero variance (all samples identical after centering), so CKA "
        "is undefined. Check that the features are not constant."
    )


# ------------------------------------------------------------------------ linear CKA
def _linear_cross(Xc, Yc):
    """||Yc^T Xc||_F^2 = tr(Kx Ky), via whichever side is cheaper."""
    n, p = Xc.shape
    q = Yc.shape[1]
    if p * q <= n * (p + q):
        return float(np.sum((Yc.T @ Xc) ** 2))
    return float(np.sum((Xc @ Xc.T) * (Yc @ Yc.T)))


def _linear_prepare(X, name):
    """Centered features and their self term ||Xc^T Xc||_F."""
    Xc = X - X.mean(axis=0)
    # rescaling leaves CKA unchanged and keeps the 4th-power sums away from overflow
    scale = np.abs(Xc).max()
    if scale == 0:
        raise _undefined(name)
    Xc = Xc / scale
    return Xc, np.sqrt(_linear_cross(Xc, Xc))


def linear_cka(X, Y):
    """Linear centered kernel alignment (CKA) between two representations.

    With column-centered ``X`` and ``Y``,
    ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, the feature-space form of
    HSIC with linear kernels. It costs O(n p q) instead of O(n^2 (p + q)); the Gram
    form is used instead when the features are wider than the sample count.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features_x)
        First representation, one row per sample.

    Y : array-like of shape (n_samples, n_features_y)
        Second representation of the same samples in the same order.

    Returns
    -------
    cka : float
        In [0, 1]; 1 when ``Y`` is an orthogonal transform of ``X`` up to scale.

    Raises
    ------
    ValueError
        If the inputs are not finite 2-D arrays with the same number (>= 2) of rows,
        or one of them is constant.

    See Also
    --------
    rbf_cka : CKA with Gaussian kernels.
    minibatch_cka : Unbiased CKA accumulated over minibatches.
    cka_matrix : CKA between every pair of layers.

    References
    ----------
    Kornblith et al. (2019), "Similarity of Neural Network Representations
    Revisited", ICML, equation (5).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.metrics import linear_cka
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(100, 8))
    >>> Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    >>> round(linear_cka(X, 3 * X @ Q), 6)
    1.0
    """
    X, Y = _check_pair(X, Y)
    Xc, x_norm = _linear_prepare(X, "X")
    Yc, y_norm = _linear_prepare(Y, "Y")
    return min(1.0, _linear_cross(Xc, Yc) / (x_norm * y_norm))


# --------------------------------------------------------------------------- RBF CKA
def _centered_rbf_gram(X, sigma_frac, name):
    sq_norms = np.einsum("ij,ij->i", X, X)
    sq_dist = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * X @ X.T, 0.0)
    # as in Kornblith et al.'s reference code: median over all pairs, diagonal included
    median = np.median(sq_dist)
    if median == 0:
        raise ValueError(
            f"The median pairwise distance of {name} is 0 (most samples are identical), "
            "so the RBF bandwidth is undefined. Deduplicate the samples or use linear_cka."
        )
    K = np.exp(-sq_dist / (2.0 * sigma_frac**2 * median))
    K -= K.mean(axis=0, keepdims=True)
    K -= K.mean(axis=1, keepdims=True)
    return K


def rbf_cka(X, Y, sigma_frac=0.8):
    """CKA with Gaussian (RBF) kernels.

    ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` with ``sigma = sigma_frac * median
    pairwise distance`` of each representation (the median taken over the full
    distance matrix, as in the reference implementation of Kornblith et al.), then
    ``CKA = <HKH, HLH>_F / (||HKH||_F ||HLH||_F)`` with the centering matrix ``H``.
    Costs O(n^2) memory; subsample for large n.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features_x)
        First representation.

    Y : array-like of shape (n_samples, n_features_y)
        Second representation of the same samples in the same order.

    sigma_frac : float, default=0.8
        Kernel bandwidth as a fraction of the median distance. Small values make the
        kernel local; large values approach linear CKA.

    Returns
    -------
    cka : float
        In [0, 1].

    See Also
    --------
    linear_cka : The usual, cheaper choice; close to RBF CKA in practice.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.metrics import rbf_cka
    >>> X = np.random.default_rng(0).normal(size=(50, 4))
    >>> round(rbf_cka(X, 2 * X), 6)
    1.0
    """
    if not isinstance(sigma_frac, numbers.Real) or not (
        np.isfinite(sigma_frac) and sigma_frac > 0
    ):
        raise ValueError(
            f"sigma_frac must be a positive float, got {sigma_frac!r}. The default 0.8 "
            "is the value of Kornblith et al."
        )
    X, Y = _check_pair(X, Y)
    K = _centered_rbf_gram(X, sigma_frac, "X")
    L = _centered_rbf_gram(Y, sigma_frac, "Y")
    denominator = np.linalg.norm(K) * np.linalg.norm(L)
    if denominator == 0:
        raise _undefined("X" if np.linalg.norm(K) == 0 else "Y")
    return min(1.0, float(np.sum(K * L) / denominator))


# --------------------------------------------------------------------- minibatch CKA
def _unbiased_hsic(K, L):
    """Unbiased HSIC estimator of Song et al. (2012) for Gram matrices, n >= 4."""
    n = K.shape[0]
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    k_col, l_col = K.sum(axis=0), L.sum(axis=0)
    value = (
        np.sum(K * L)
        + k_col.sum() * l_col.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (k_col @ l_col)
    )
    return value / (n * (n - 3))


def minibatch_cka(X, Y, *, batch_size=256, shuffle=False, random_state=None):
    """Linear CKA from unbiased HSIC averaged over minibatches (Nguyen et al., 2021).

    For each minibatch the unbiased HSIC estimator is computed for (X, Y), (X, X) and
    (Y, Y); CKA is ``mean HSIC(X, Y) / sqrt(mean HSIC(X, X) * mean HSIC(Y, Y))``.
    Memory is O(batch_size^2), and because the estimator is unbiased the result
    does not drift with the batch size, unlike averaging biased per-batch CKAs.
    Unbiased CKA is also close to 0 for independent representations even when the
    features are wide relative to n, where :func:`linear_cka` is biased upwards.

    The samples are cut into ``n_samples // batch_size`` consecutive batches of
    near-equal size (each at least ``batch_size``; a single batch when
    ``n_samples < 2 * batch_size``).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features_x)
        First representation.

    Y : array-like of shape (n_samples, n_features_y)
        Second representation of the same samples in the same order.

    batch_size : int, default=256
        Minimum minibatch size, at least 4 (the unbiased estimator needs n >= 4).

    shuffle : bool, default=False
        Permute the samples before batching (useful when the rows are sorted by
        class).

    random_state : int, RandomState instance or None, default=None
        Seed of the permutation when ``shuffle=True``.

    Returns
    -------
    cka : float
        Usually in [0, 1]; the unbiased estimate can be slightly negative for
        unrelated representations. ``nan`` if an unbiased self-similarity is not
        positive (too few samples to estimate it).

    See Also
    --------
    linear_cka : Exact (biased) linear CKA on all samples.

    References
    ----------
    Nguyen, Raghu, Kornblith (2021), ICLR, section 3.1. L. Song et al. (2012),
    "Feature Selection via Dependence Maximization", JMLR 13.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.metrics import minibatch_cka
    >>> X = np.random.default_rng(0).normal(size=(400, 16))
    >>> round(minibatch_cka(X, X, batch_size=100), 6)
    1.0
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 4
    ):
        raise ValueError(
            f"batch_size must be an integer >= 4, got {batch_size!r}. The unbiased "
            "HSIC estimator needs at least 4 samples per batch."
        )
    X, Y = _check_pair(X, Y)
    n = X.shape[0]
    if n < 4:
        raise ValueError(
            f"minibatch_cka needs at least 4 samples, got {n}. Use linear_cka instead."
        )
    order = np.arange(n)
    if shuffle:
        order = check_random_state(random_state).permutation(n)
    xy = xx = yy = 0.0
    batches = np.array_split(order, max(1, n // batch_size))
    for idx in batches:
        K = X[idx] @ X[idx].T
        L = Y[idx] @ Y[idx].T
        xy += _unbiased_hsic(K, L)
        xx += _unbiased_hsic(K, K)
        yy += _unbiased_hsic(L, L)
    if xx <= 0 or yy <= 0:
        return float("nan")
    return float(xy / np.sqrt(xx * yy))


# ------------------------------------------------------------------------ CKA matrix
def _as_layer_dict(features, name):
    """``(layer names, list of arrays)`` from a list or dict of per-layer features."""
    if isinstance(features, dict):
        names, arrays = list(features.keys()), list(features.values())
    elif isinstance(features, (list, tuple)):
        names, arrays = list(range(len(features))), list(features)
    else:
        raise TypeError(
            f"{name} must be a list of per-layer arrays or a dict layer -> array, got "
            f"{type(features).__name__}. Wrap a single array as [X]."
        )
    if not arrays:
        raise ValueError(f"{name} is empty; pass at least one layer's features.")
    arrays = [_check_features(a, f"{name}[{k!r}]") for k, a in zip(names, arrays)]
    return names, arrays


_KINDS = ("linear", "rbf", "minibatch")


def _resolve_kind(kind):
    if callable(kind):
        return kind
    if kind == "rbf":
        return rbf_cka
    if kind == "minibatch":
        return minibatch_cka
    if kind == "linear":
        return None
    raise ValueError(
        f"kind must be one of {_KINDS} or a callable (X, Y) -> float, got {kind!r}."
    )


def cka_matrix(features_a, features_b=None, *, kind="linear"):
    """CKA between every layer of one encoder and every layer of another (or itself).

    Parameters
    ----------
    features_a : list of array-like or dict of str to array-like
        Per-layer features of the first encoder, each of shape
        (n_samples, n_features_layer). A dict keeps its key order.

    features_b : list or dict of array-like, default=None
        Per-layer features of the second encoder on the same samples. ``None``
        compares ``features_a`` with itself (a symmetric matrix with ones on the
        diagonal; each pair is computed once).

    kind : {"linear", "rbf", "minibatch"} or callable, default="linear"
        :func:`linear_cka`, :func:`rbf_cka` (default bandwidth),
        :func:`minibatch_cka` (default batch size), or any function
        ``(X, Y) -> float``, e.g. ``functools.partial(rbf_cka, sigma_frac=0.5)``.

    Returns
    -------
    matrix : ndarray of shape (n_layers_a, n_layers_b)
        ``matrix[i, j]`` is the CKA of layer i of ``features_a`` and layer j of
        ``features_b``.

    See Also
    --------
    sklearn_endo.plotting.CKADisplay : Heat map of this matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.metrics import cka_matrix
    >>> rng = np.random.default_rng(0)
    >>> layers = [rng.normal(size=(64, 8)) for _ in range(3)]
    >>> M = cka_matrix(layers)
    >>> M.shape, np.allclose(np.diag(M), 1.0), np.allclose(M, M.T)
    ((3, 3), True, True)
    """
    pair_cka = _resolve_kind(kind)
    _, arrays_a = _as_layer_dict(features_a, "features_a")
    symmetric = features_b is None
    arrays_b = arrays_a if symmetric else _as_layer_dict(features_b, "features_b")[1]
    n = arrays_a[0].shape[0]
    for name, arrays in (("features_a", arrays_a), ("features_b", arrays_b)):
        sizes = sorted({a.shape[0] for a in arrays})
        if sizes != [n]:
            raise ValueError(
                f"All layers must describe the same samples, but {name} has layers "
                f"with n_samples in {sizes} (first layer of features_a: {n})."
            )

    if pair_cka is None:  # linear: center and normalise every layer once
        prep_a = [_linear_prepare(a, f"features_a[{i}]") for i, a in enumerate(arrays_a)]
        prep_b = prep_a if symmetric else [
            _linear_prepare(b, f"features_b[{j}]") for j, b in enumerate(arrays_b)
        ]

        def pair_value(i, j):
            (Xc, nx), (Yc, ny) = prep_a[i], prep_b[j]
            return min(1.0, _linear_cross(Xc, Yc) / (nx * ny))
    else:
        def pair_value(i, j):
            return float(pair_cka(arrays_a[i], arrays_b[j]))

    matrix = np.empty((len(arrays_a), len(arrays_b)))
    for i in range(len(arrays_a)):
        for j in range(i if symmetric else 0, len(arrays_b)):
            matrix[i, j] = pair_value(i, j)
            if symmetric:
                matrix[j, i] = matrix[i, j]
    return matrix
