"""Linear probes trained in torch: one head, or the heads of many layers and folds at once.

``solver="lbfgs"`` (the default: scikit-learn's ``LogisticRegression`` objective on
standardized features) hands the heads to :func:`._lbfgs.train_heads_lbfgs`;
``solver="adam"`` (the layer-wise study's recipe) trains them with
:func:`._adam._train_heads`.

Both solvers train a padded batch of heads (all layers and folds) at once; see those
modules for how each head still ends where its own fit would.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .._encoders import resolve_device
from ._adam import _train_heads
from ._lbfgs import train_heads_lbfgs

__all__ = ["LinearProbeClassifier", "MultiLayerLinearProbe"]

_SOLVERS = ("lbfgs", "adam")
# the Adam recipe's settings: with solver="lbfgs" they must keep these values
_ADAM_DEFAULTS = {"lr": 1e-4, "max_epochs": 30, "batch_size": 8, "weight_decay": 0.0}


def _check_params(est):
    """Validate the shared hyperparameters; name the parameter and the fix."""
    checks = [
        ("lr", est.lr, numbers.Real, lambda v: v > 0, "a positive float such as 1e-4"),
        ("max_epochs", est.max_epochs, numbers.Integral, lambda v: v >= 1, "an int >= 1"),
        ("batch_size", est.batch_size, numbers.Integral, lambda v: v >= 1, "an int >= 1"),
        ("weight_decay", est.weight_decay, numbers.Real, lambda v: v >= 0, "a float >= 0"),
        ("C", est.C, numbers.Real, lambda v: 0 < v < np.inf, "a positive float such as 1.0"),
        ("max_iter", est.max_iter, numbers.Integral, lambda v: v >= 1, "an int >= 1"),
        ("tol", est.tol, numbers.Real, lambda v: 0 < v < np.inf, "a positive float such as 1e-4"),
    ]
    for name, value, kind, ok, fix in checks:
        if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
            raise ValueError(f"{name}={value!r} is invalid for {type(est).__name__}; use {fix}.")
    if not (isinstance(est.standardize, (bool, np.bool_)) or (
            isinstance(est.standardize, str) and est.standardize == "auto")):
        raise ValueError(f"standardize={est.standardize!r} must be True, False or 'auto' "
                         "(True with solver='lbfgs', False with solver='adam').")
    if not isinstance(est.solver, str) or est.solver not in _SOLVERS:
        raise ValueError(f"solver={est.solver!r} is invalid for {type(est).__name__}; use "
                         "'lbfgs' (LogisticRegression's objective, full batch; the default) "
                         "or 'adam' (the layer-wise study's recipe).")
    # each solver has its own settings: one set for the other solver would be ignored
    if est.solver == "lbfgs":
        for name, default in _ADAM_DEFAULTS.items():
            if getattr(est, name) != default:
                raise ValueError(
                    f"{name}={getattr(est, name)!r} is a setting of solver='adam' and has no "
                    f"effect with solver='lbfgs' (the default); pass solver='adam' for the "
                    f"Adam recipe, or leave {name}={default!r} and set the L2 penalty with C "
                    "(as in LogisticRegression).")
    if est.solver == "adam" and est.C != 1.0:
        raise ValueError(f"C={est.C!r} is the penalty of solver='lbfgs' and has no effect "
                         "with solver='adam'; pass solver='lbfgs', or use weight_decay for "
                         "Adam's L2 penalty.")


def _standardizes(est):
    """Whether ``est`` standardizes its features ("auto": with L-BFGS only)."""
    if isinstance(est.standardize, str):
        return est.solver == "lbfgs"
    return bool(est.standardize)


def _fit_heads(est, Xs, y_enc, n_classes, *, init_seed, shuffle_seed, folds=None):
    """Train the heads with ``est``'s solver; returns (heads, curves, n_iter)."""
    device = resolve_device(est.device)
    if est.solver == "lbfgs":
        return train_heads_lbfgs(Xs, y_enc, n_classes, C=est.C, max_iter=est.max_iter,
                                 tol=est.tol, device=device, folds=folds,
                                 verbose=est.verbose)
    heads, curves = _train_heads(
        Xs, y_enc, n_classes, lr=est.lr, max_epochs=est.max_epochs,
        batch_size=est.batch_size, weight_decay=est.weight_decay, init_seed=init_seed,
        shuffle_seed=shuffle_seed, device=device, folds=folds, verbose=est.verbose)
    return heads, curves, est.max_epochs


def _check_two_classes(classes, name="MultiLayerLinearProbe"):
    if len(classes) < 2:
        raise ValueError(
            f"{name} needs samples of at least 2 classes in the data; "
            f"got one class, {classes.tolist()}."
        )


def _draw_seeds(random_state):
    """Two seeds: one for the initial weights, one for the minibatch order."""
    rng = check_random_state(random_state)
    init_seed, shuffle_seed = rng.randint(0, 2**31 - 1, size=2)
    return int(init_seed), int(shuffle_seed)


def _standardize_stats(X, standardize):
    if not standardize:
        return None, None
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    return mean, scale


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class LinearProbeClassifier(ClassifierMixin, BaseEstimator):
    """Softmax linear probe on frozen features: logistic regression, or the Adam recipe.

    The default, ``solver="lbfgs"``, minimises scikit-learn's ``LogisticRegression``
    objective (cross-entropy plus an L2 penalty set by ``C``) on standardized features
    with full-batch L-BFGS: the fit of ``make_pipeline(StandardScaler(),
    LogisticRegression(C=C))``, a convex problem with one solution, no learning rate, a
    few dozen iterations, that also runs on a GPU. ``solver="adam"`` is the recipe of
    the layer-wise probing study: Adam, learning rate 1e-4, 30 epochs, minibatches of 8,
    cross-entropy, ``nn.Linear``'s default initialisation, raw features. The recipe
    undertrains on small data (on the 90 images of docs/evaluation.md's sweep most
    layers stayed near chance, log-loss ln 3); use it to reproduce the study.
    Prediction runs in numpy (float64) from ``coef_`` and ``intercept_``, so it is
    deterministic and independent of the batch size.

    Parameters
    ----------
    lr : float, default=1e-4
        Adam learning rate (``solver="adam"`` only: with ``solver="lbfgs"`` a value other
        than the default is an error, as for the three settings below).
    max_epochs : int, default=30
        Passes over the training data (``solver="adam"`` only).
    batch_size : int, default=8
        Minibatch size; the last minibatch of an epoch may be smaller
        (``solver="adam"`` only).
    weight_decay : float, default=0.0
        Adam's L2 penalty (``solver="adam"`` only).
    standardize : bool or "auto", default="auto"
        Scale each feature to zero mean and unit variance (statistics from the training
        data) before training. ``"auto"``: on with ``solver="lbfgs"`` (as
        ``StandardScaler`` before ``LogisticRegression``; without it, layers whose
        feature scales differ by 1e3 make L-BFGS slow to converge), off with
        ``solver="adam"`` (the recipe trains on raw features).
    device : str, default="cpu"
        Torch device for training, or ``"auto"`` (cuda, then mps, then cpu). A linear head
        on minibatches of 8 is usually faster on the CPU than the kernel-launch cost.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights and the minibatch order through local torch
        generators; the global torch and numpy RNG states are not touched.
        ``solver="lbfgs"`` starts from zero weights and draws nothing.
    verbose : bool, default=False
        Print the training loss after every epoch (L-BFGS: once, at the end).
    solver : {"lbfgs", "adam"}, default="lbfgs"
        ``"adam"``: the study's recipe above. ``"lbfgs"``: ``torch.optim.LBFGS`` on the whole
        training set, minimising, as ``LogisticRegression(C=C)`` does,
        ``mean cross-entropy + ||coef_||^2 / (2 * C * n_samples)`` (the intercept is
        not penalised; for two classes class 0's logit is fixed at 0, scikit-learn's
        binary model). Weights and objective are float64 (float32 on MPS); the
        matmuls run in the features' dtype, float64 here, float32 for the store's
        float32 features in ``MultiLayerLinearProbe`` (good to ``tol`` ~1e-5).
    C : float, default=1.0
        Inverse L2 penalty strength of ``solver="lbfgs"``, as in
        ``LogisticRegression``; smaller is stronger. Must stay 1.0 with
        ``solver="adam"`` (use ``weight_decay``).
    max_iter : int, default=100
        L-BFGS iterations at most (``solver="lbfgs"`` only); when it is reached before
        ``tol``, a ConvergenceWarning says so.
    tol : float, default=1e-4
        ``solver="lbfgs"`` stops once every entry of the objective's gradient is at
        most ``tol`` in absolute value (scikit-learn's ``gtol``).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    coef_ : ndarray of shape (n_classes, n_features)
        Weights in the space of the (standardized, if enabled) input features.
    intercept_ : ndarray of shape (n_classes,)
        Biases.
    mean_, scale_ : ndarray of shape (n_features,) or None
        Standardization statistics when the probe standardizes (``standardize=True``,
        or ``"auto"`` with ``solver="lbfgs"``), else None.
    loss_curve_ : list of float
        Mean training cross-entropy per epoch; with ``solver="lbfgs"``, the penalised
        objective at each function evaluation.
    n_iter_ : int
        Epochs (``"adam"``) or L-BFGS iterations (``"lbfgs"``) run.
    n_features_in_ : int
        Number of features seen during fit.

    See Also
    --------
    MultiLayerLinearProbe : the same probe for many layers at once.
    sklearn.linear_model.LogisticRegression : a convex alternative probe.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.probes import LinearProbeClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 5)); y = (X[:, 0] > 0).astype(int)
    >>> clf = LinearProbeClassifier().fit(X, y)  # StandardScaler + LogisticRegression
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    >>> recipe = LinearProbeClassifier(solver="adam", random_state=0).fit(X, y)
    >>> recipe.n_iter_  # epochs
    30
    """

    def __init__(self, lr=1e-4, max_epochs=30, batch_size=8, weight_decay=0.0,
                 standardize="auto", device="cpu", random_state=None, verbose=False,
                 solver="lbfgs", C=1.0, max_iter=100, tol=1e-4):
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.solver = solver
        self.C = C
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y):
        """Train the probe on features ``X`` of shape (n_samples, n_features) and labels ``y``."""
        _check_params(self)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data; "
                f"got one class, {self.classes_.tolist()}."
            )
        self.mean_, self.scale_ = _standardize_stats(X, _standardizes(self))
        Xs = X if self.mean_ is None else (X - self.mean_) / self.scale_
        init_seed, shuffle_seed = _draw_seeds(self.random_state)
        heads, curves, self.n_iter_ = _fit_heads(
            self, [Xs], encoder.transform(y), len(self.classes_), init_seed=init_seed,
            shuffle_seed=shuffle_seed)
        weight, bias = heads[0][0]
        self.loss_curve_ = curves[0]
        self.coef_ = weight
        self.intercept_ = bias
        return self

    def decision_function(self, X):
        """Logits (n_samples, n_classes); for two classes the logit difference (n_samples,)."""
        check_is_fitted(self)
        return self._decision(validate_data(self, X, reset=False, dtype=np.float64))

    def _decision(self, X):
        """decision_function on a checked array of the fitted width."""
        X = np.asarray(X, dtype=np.float64)
        if self.mean_ is not None:
            X = (X - self.mean_) / self.scale_
        scores = X @ self.coef_.T.astype(np.float64) + self.intercept_.astype(np.float64)
        if len(self.classes_) == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits), columns in ``classes_`` order."""
        check_is_fitted(self)
        return self._proba(self.decision_function(X))

    @staticmethod
    def _proba(scores):
        if scores.ndim == 1:
            scores = np.column_stack([np.zeros_like(scores), scores])
        return _softmax(scores)

    def predict(self, X):
        """Most probable class per sample."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None and self.solver == "adam"
        return tags


class MultiLayerLinearProbe(BaseEstimator):
    """Linear probes for many layers trained together in one batched model.

    One weight tensor holds a head per layer. With ``solver="lbfgs"`` (the default),
    one full-batch L-BFGS minimises the sum of the heads' ``LogisticRegression``
    objectives; the heads share no weights, so each ends at its own solution, as if
    fitted alone (to ``tol``).

    With ``solver="adam"`` (the study's recipe), each optimisation step runs one forward
    and one backward pass for all heads on the same minibatch, as DINOv2's linear
    evaluation trains its grid of heads. Each head gets the initial weights and the
    minibatches that ``LinearProbeClassifier`` with the same parameters and
    ``random_state`` would get, so per-layer results match training the probes one by
    one: predicted probabilities agree to ~1e-6 (tested at ``atol=1e-5``); only the
    float32 rounding of the batched matmul differs.

    Parameters
    ----------
    lr, max_epochs, batch_size, weight_decay, standardize, device, random_state, verbose
        As in :class:`LinearProbeClassifier`, shared by all heads.
    solver, C, max_iter, tol
        As in :class:`LinearProbeClassifier`, shared by all heads; ``max_iter`` and
        ``tol`` apply to the joint solve, and a ConvergenceWarning counts the heads
        left above ``tol``.

    Attributes
    ----------
    estimators_ : list of LinearProbeClassifier
        One fitted probe per layer, usable on its own.
    keys_ : list
        The layer keys when ``fit`` got a dict, else ``range(n_heads)``.
    classes_ : ndarray of shape (n_classes,)
    loss_curve_ : list of float
        Per epoch, the sum over heads of the mean training cross-entropy; with
        ``solver="lbfgs"``, the sum of their objectives at each function evaluation.
    n_iter_ : int
        Epochs (``"adam"``) or L-BFGS iterations (``"lbfgs"``) run.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.probes import MultiLayerLinearProbe
    >>> rng = np.random.RandomState(0)
    >>> feats = {3: rng.normal(size=(30, 4)), 7: rng.normal(size=(30, 6))}
    >>> y = rng.randint(0, 3, size=30)
    >>> probe = MultiLayerLinearProbe(random_state=0).fit(feats, y)
    >>> [p.shape for p in probe.predict_proba(feats)]
    [(30, 3), (30, 3)]
    """

    def __init__(self, lr=1e-4, max_epochs=30, batch_size=8, weight_decay=0.0,
                 standardize="auto", device="cpu", random_state=None, verbose=False,
                 solver="lbfgs", C=1.0, max_iter=100, tol=1e-4):
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.solver = solver
        self.C = C
        self.max_iter = max_iter
        self.tol = tol

    def _split_inputs(self, Xs, reset):
        if isinstance(Xs, dict):
            keys, arrays = list(Xs.keys()), list(Xs.values())
        elif isinstance(Xs, (list, tuple)):
            keys, arrays = list(range(len(Xs))), list(Xs)
        else:
            raise TypeError(
                "Xs must be a list of feature arrays (one per layer) or a dict "
                f"{{layer: array}}; got {type(Xs).__name__}. For a single feature matrix "
                "use LinearProbeClassifier."
            )
        if not arrays:
            raise ValueError("Xs is empty; pass at least one feature array.")
        # float32 stays float32 (training casts to float32 and prediction to float64
        # anyway, both exactly): casting 25 layers to float64 per fold cost more than
        # a tenth of a sweep
        arrays = [
            check_array(a, dtype=(np.float64, np.float32), input_name=f"Xs[{k!r}]")
            for k, a in zip(keys, arrays)
        ]
        n = {a.shape[0] for a in arrays}
        if len(n) != 1:
            raise ValueError(
                f"All feature arrays in Xs must have the same number of samples; got {sorted(n)}."
            )
        if not reset:
            if keys != self.keys_:
                raise ValueError(f"Xs has layers {keys}, but the probe was fitted on {self.keys_}.")
        return keys, arrays

    def fit(self, Xs, y):
        """Fit one head per feature array in ``Xs`` (list, or dict keyed by layer)."""
        keys, arrays, y = self._check_fit_inputs(Xs, y)
        encoder = LabelEncoder().fit(y)
        classes = encoder.classes_
        _check_two_classes(classes)
        standardize = _standardizes(self)
        if standardize:  # statistics in float64, as LinearProbeClassifier
            arrays = [a.astype(np.float64, copy=False) for a in arrays]
        stats = [_standardize_stats(a, standardize) for a in arrays]
        inputs = [a if m is None else (a - m) / s for a, (m, s) in zip(arrays, stats)]
        init_seed, shuffle_seed = _draw_seeds(self.random_state)
        heads, curves, n_iter = _fit_heads(
            self, inputs, encoder.transform(y), len(classes), init_seed=init_seed,
            shuffle_seed=shuffle_seed)
        return self._set_fitted(keys, classes, heads[0], curves[0], stats,
                                [a.shape[1] for a in arrays], n_iter)

    def _check_fit_inputs(self, Xs, y):
        _check_params(self)
        keys, arrays = self._split_inputs(Xs, reset=True)
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != arrays[0].shape[0]:
            raise ValueError(
                f"y must be 1-d with one label per sample ({arrays[0].shape[0]}); "
                f"got shape {y.shape}."
            )
        check_classification_targets(y)
        return keys, arrays, y

    def _set_fitted(self, keys, classes, heads, curve, stats, dims, n_iter):
        self.loss_curve_ = curve
        self.n_iter_ = n_iter
        params = self.get_params()
        self.estimators_ = []
        for (weight, bias), (mean, scale), dim in zip(heads, stats, dims):
            est = LinearProbeClassifier(**params)
            est.classes_ = classes
            est.coef_ = weight
            est.intercept_ = bias
            est.mean_, est.scale_ = mean, scale
            est.n_features_in_ = dim
            est.loss_curve_ = None  # only the summed curve exists for batched training
            est.n_iter_ = n_iter
            self.estimators_.append(est)
        self.keys_ = keys
        self.classes_ = classes
        return self

    def predict_proba(self, Xs):
        """List of (n_samples, n_classes) probabilities, one per layer, in ``keys_`` order."""
        check_is_fitted(self)
        _, arrays = self._split_inputs(Xs, reset=False)
        for key, est, a in zip(self.keys_, self.estimators_, arrays):
            if a.shape[1] != est.n_features_in_:
                raise ValueError(
                    f"Xs[{key!r}] has {a.shape[1]} features, but the probe of that layer "
                    f"was fitted on {est.n_features_in_} features; pass that layer's features."
                )
        return self._predict_proba_checked(arrays)

    def _predict_proba_checked(self, arrays):
        """predict_proba on arrays already checked (rows of the arrays given to fit).

        The sweep predicts the test rows of features that fit_folds validated; checking
        them again per layer and fold cost more than the prediction.
        """
        return [est._proba(est._decision(a)) for est, a in zip(self.estimators_, arrays)]

    def predict(self, Xs):
        """List of predicted labels, one array per layer."""
        check_is_fitted(self)
        _, arrays = self._split_inputs(Xs, reset=False)
        return [est.predict(a) for est, a in zip(self.estimators_, arrays)]

    def score(self, Xs, y):
        """List of per-layer accuracies."""
        return [float(np.mean(p == np.asarray(y))) for p in self.predict(Xs)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Xs is a list, or a dict {layer: array}, of 2-D feature arrays with one row per
        # sample and a width per layer; never one table, nor one 3-D array
        tags.input_tags.two_d_array = False
        tags.input_tags.dict = True
        tags.target_tags.required = True
        tags.non_deterministic = self.random_state is None and self.solver == "adam"
        return tags


def fit_folds(probe, Xs, y, train_folds):
    """Fit a clone of ``probe`` on the training rows of every fold, all in one model.

    Equal to ``[clone(probe).fit([X[rows] for X in Xs], y[rows]) for rows in
    train_folds]`` (the same seeds, initial weights and minibatches per fold, so the
    same heads up to float32 rounding) but trained as one batch of
    ``n_layers * n_folds`` heads: one gather, two bmm and one fused Adam step per
    minibatch for all folds, and the features copied once instead of once per fold.
    Folds are batched together when they have the same number of training rows and
    the same classes (k-fold splits differ by at most one row, so usually one or two
    groups). With ``solver="lbfgs"`` (full batch) folds of any size share one solve
    and only the classes group them. When the probe standardizes (``standardize=True``,
    or the default ``"auto"`` with ``solver="lbfgs"``) every fold has its own
    statistics, so each fold is fitted on its own (still all layers at once).

    Parameters
    ----------
    probe : MultiLayerLinearProbe
        Unfitted template; it is cloned, never fitted itself.
    Xs : list or dict of ndarray of shape (n_samples, n_features_layer)
        Features of all samples, one array per layer.
    y : array-like of shape (n_samples,)
    train_folds : list of int arrays
        Training rows of each fold, e.g. ``[train for train, _ in cv.split(X, y)]``.

    Returns
    -------
    list of MultiLayerLinearProbe
        One fitted probe per fold, in ``train_folds`` order.
    """
    template = clone(probe)
    keys, arrays, y = template._check_fit_inputs(Xs, y)
    train_folds = [np.asarray(rows) for rows in train_folds]
    fitted = [clone(probe) for _ in train_folds]
    if _standardizes(probe):
        return [est.fit({k: a[rows] for k, a in zip(keys, arrays)} if isinstance(Xs, dict)
                        else [a[rows] for a in arrays], y[rows])
                for est, rows in zip(fitted, train_folds)]
    # the seeds each clone's own fit would draw (a RandomState is copied by clone)
    seeds = [_draw_seeds(est.random_state) for est in fitted]
    groups = {}
    for f, rows in enumerate(train_folds):
        if rows.ndim != 1 or len(rows) == 0:
            raise ValueError(f"train_folds[{f}] must be a non-empty 1-d array of row indices.")
        classes = np.unique(y[rows])
        _check_two_classes(classes)
        size = len(rows) if probe.solver == "adam" else None
        groups.setdefault((size, tuple(classes)), []).append(f)
    dims = [a.shape[1] for a in arrays]
    stats = [(None, None)] * len(arrays)
    for (_, classes), members in groups.items():
        classes = np.asarray(classes)
        # labels outside the group's classes are never in its training rows
        codes = np.minimum(np.searchsorted(classes, y), len(classes) - 1)
        heads, curves, n_iter = _fit_heads(
            probe, arrays, codes, len(classes), init_seed=[seeds[f][0] for f in members],
            shuffle_seed=[seeds[f][1] for f in members],
            folds=[train_folds[f] for f in members])
        for f, fold_heads, curve in zip(members, heads, curves):
            fitted[f]._set_fitted(keys, classes, fold_heads, curve, stats, dims, n_iter)
    return fitted
