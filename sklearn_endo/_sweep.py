"""Cross-validated probe sweep over the layers of a frozen encoder.

The encoder is frozen, so the pooled features of every layer depend only on the image:
:func:`layer_sweep` runs the encoder once over X for all requested layers (through
``LayerFeatureTransformer.layer_features``), then cross-validates a probe on each
layer's features. :func:`layer_sweep_from_features` does the second half on features
the user already has.
"""

from __future__ import annotations

import copy
import time
import warnings

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.model_selection import RepeatedStratifiedKFold, check_cv
from sklearn.utils.multiclass import check_classification_targets

from .probes import KNNProbeClassifier, LinearProbeClassifier, MultiLayerLinearProbe, fit_folds

__all__ = ["LayerSweepResult", "layer_sweep", "layer_sweep_from_features"]

DEFAULT_METRICS = (
    "accuracy",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "balanced_accuracy",
    "log_loss",
)

_PROBES = ("linear", "batched-linear", "knn", "logistic")

# seconds before a progress bar appears: quick sweeps stay quiet
PROGRESS_DELAY = 2.0


def _progress(total, desc, verbose):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="fit", delay=PROGRESS_DELAY,
                disable=not verbose)


def _confusion(t, p, k):
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(float)


def _safe_div(num, den):
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _default_metrics(codes_true, proba):
    """The six default metrics from one confusion matrix.

    Same values as sklearn's functions with ``labels=classes`` and ``zero_division=0``
    (tests compare them), at a fraction of the cost: sklearn's input validation took
    more time than the batched probe itself in a 25-layer sweep.
    """
    k = proba.shape[1]
    codes_pred = np.argmax(proba, axis=1)
    cm = _confusion(codes_true, codes_pred, k)
    tp, in_true, in_pred = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    recall = _safe_div(tp, in_true)
    eps = np.finfo(proba.dtype).eps
    p_true = np.clip(proba[np.arange(len(codes_true)), codes_true], eps, 1 - eps)
    return {
        "accuracy": tp.sum() / cm.sum(),
        "f1_macro": _safe_div(2 * tp, in_true + in_pred).mean(),
        "precision_macro": _safe_div(tp, in_pred).mean(),
        "recall_macro": recall.mean(),
        "balanced_accuracy": recall[in_true > 0].mean(),
        "log_loss": -np.log(p_true).mean(),
    }


def _resolve_scoring(scoring):
    """Return (built-in metric names, dict of custom callables)."""
    if scoring is None:
        return list(DEFAULT_METRICS), {}
    if isinstance(scoring, str):
        scoring = [scoring]
    if isinstance(scoring, dict):
        for name, fn in scoring.items():
            if not callable(fn):
                raise TypeError(
                    f"scoring[{name!r}] must be a callable f(y_true, y_pred, y_proba, labels)."
                )
        return [], dict(scoring)
    for name in scoring:
        if name not in DEFAULT_METRICS:
            raise ValueError(
                f"Unknown metric {name!r} in scoring; use names from {DEFAULT_METRICS} or a "
                "dict {name: f(y_true, y_pred, y_proba, labels)}."
            )
    return list(scoring), {}


class LayerSweepResult:
    """Per-layer cross-validated scores of a probe sweep.

    Attributes
    ----------
    layers : list of int
        Layer indices, in sweep order.
    variants : list of dict
        Probe settings evaluated at every layer; ``[{}]`` for one probe, or e.g.
        ``[{"n_neighbors": 10}, {"n_neighbors": 20}]`` for a k-NN probe with several k.
    scores : dict of str -> ndarray of shape (n_variants, n_layers, n_splits)
        Test-fold score of every metric.
    best_layer_ : int
        The layer with the lowest mean CV log-loss (the argmin of validation
        cross-entropy used by the layer-wise study); the highest mean of the first
        metric when log-loss was not computed.
    best_variant_ : dict
        The probe setting at the best layer.
    comparison_ : :class:`~sklearn_endo.model_selection.CVComparison` or None
        Every layer against the best and the last one on the metric that chose the best
        layer (log-loss), at the best probe setting: per layer the difference to the
        best and to the last layer with its confidence interval and the p-value of the
        Nadeau-Bengio corrected t-test, the Bayesian correlated t-test, and the sets
        below. :meth:`compare` gives the same for another metric. None when the fold
        sizes are unknown (a result built by hand without ``n_train``/``n_test``).
    tied_layers_ : list of int
        Layers not significantly worse than the best (corrected t-test, Holm over the
        comparisons with the best, alpha 0.05), the best included.
    one_se_layers_ : list of int
        Layers whose mean is within one corrected standard error of the best's.
    smallest_tied_layer_ : int
        The smallest layer of ``tied_layers_``: the cheapest encoder cut that is as good
        as the best by this test.
    n_train_, n_test_ : float or None
        Mean training and test fold sizes (the corrected variance uses their ratio).
    extraction_seconds_ : float
        Time spent in the encoder (0 for precomputed features).
    probe_seconds_ : float
        Time spent fitting and scoring probes over all layers and folds.
    encoder_ : str or None
        The swept encoder's name (a timm name, or a module's class name) as plots label
        it; None from precomputed features.
    n_splits_ : int
    probe_name : str
    """

    def __init__(self, layers, variants, scores, *, probe_name, extraction_seconds,
                 probe_seconds, n_train=None, n_test=None):
        self.layers = list(layers)
        self.variants = list(variants)
        self.scores = scores
        self.probe_name = probe_name
        self.encoder_ = None  # set by layer_sweep
        self.extraction_seconds_ = float(extraction_seconds)
        self.probe_seconds_ = float(probe_seconds)
        self.n_splits_ = next(iter(scores.values())).shape[-1]
        if "log_loss" in scores:
            key, reduce = "log_loss", np.nanargmin
        else:
            key, reduce = next(iter(scores)), np.nanargmax
        flat = reduce(scores[key].mean(axis=-1))
        v, layer = np.unravel_index(flat, scores[key].shape[:2])
        self.best_layer_ = self.layers[layer]
        self.best_variant_ = dict(self.variants[v])
        self.best_metric_ = key
        self._best_variant_index = int(v)
        self.n_train_ = None if n_train is None else float(n_train)
        self.n_test_ = None if n_test is None else float(n_test)
        self.comparison_ = None
        self.tied_layers_ = self.one_se_layers_ = self.smallest_tied_layer_ = None
        if n_train is not None and n_test is not None:
            try:
                self.comparison_ = self.compare()
            except ValueError as exc:  # e.g. every layer's scores NaN
                warnings.warn(f"No layer comparison: {exc}", UserWarning, stacklevel=2)
            else:
                self.tied_layers_ = self.comparison_.tied_candidates
                self.one_se_layers_ = self.comparison_.one_se_candidates
                self.smallest_tied_layer_ = self.comparison_.smallest_tied

    def compare(self, metric=None, variant=None, *, alpha=0.05, confidence=0.95, rope=0.01):
        """Every layer against the best and the last layer, on paired fold scores.

        Parameters
        ----------
        metric : str or None
            A computed metric; None is the one that chose ``best_layer_``. Losses and
            errors (``log_loss``) count lower as better.
        variant : int or None
            The probe setting; None is the best one's.
        alpha, confidence, rope : float
            See :func:`sklearn_endo.model_selection.compare_fold_scores`.

        Returns
        -------
        CVComparison
            Per layer ``diff_to_best`` (with ``_low``/``_high``), ``pvalue_vs_best``
            and its Holm-adjusted value, the Bayesian probabilities, ``diff_to_last``
            and ``pvalue_vs_last``; ``tied_candidates``, ``one_se_candidates``,
            ``smallest_tied``, ``best_vs_last``; ``summary()`` prints them.
        """
        from .model_selection import compare_fold_scores

        if self.n_train_ is None or self.n_test_ is None:
            raise ValueError("This result has no fold sizes (n_train, n_test); build it with "
                             "layer_sweep or pass n_train= and n_test=.")
        metric = self.best_metric_ if metric is None else metric
        variant = self._best_variant_index if variant is None else variant
        lower = "loss" in metric or "error" in metric
        return compare_fold_scores(
            self._get(metric)[variant], candidates=self.layers, n_train=self.n_train_,
            n_test=self.n_test_, greater_is_better=not lower, metric=metric, param="layer",
            alpha=alpha, confidence=confidence, rope=rope)

    @property
    def metrics(self):
        return list(self.scores)

    def mean(self, metric, variant=0):
        """Mean over folds, shape (n_layers,)."""
        return self._get(metric)[variant].mean(axis=-1)

    def std(self, metric, variant=0):
        """Standard deviation over folds, shape (n_layers,)."""
        return self._get(metric)[variant].std(axis=-1)

    def _get(self, metric):
        if metric not in self.scores:
            raise ValueError(f"metric={metric!r} was not computed; choose from {self.metrics}.")
        return self.scores[metric]

    def to_dict(self):
        """Columns ``layer``, variant keys, and ``<metric>_mean`` / ``<metric>_std``."""
        cols = {"layer": []}
        variant_keys = sorted({k for v in self.variants for k in v})
        for k in variant_keys:
            cols[k] = []
        for m in self.scores:
            cols[f"{m}_mean"] = []
            cols[f"{m}_std"] = []
        for vi, variant in enumerate(self.variants):
            cols["layer"].extend(self.layers)
            for k in variant_keys:
                cols[k].extend([variant.get(k)] * len(self.layers))
            for m in self.scores:
                cols[f"{m}_mean"].extend(self.mean(m, vi).tolist())
                cols[f"{m}_std"].extend(self.std(m, vi).tolist())
        return {k: np.asarray(v) for k, v in cols.items()}

    def to_frame(self):
        """A pandas DataFrame, one row per (variant, layer)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "LayerSweepResult.to_frame requires pandas (pip install pandas); "
                "use .to_dict() for a dict of numpy arrays."
            ) from exc
        return pd.DataFrame(self.to_dict())

    def plot(self, metric="accuracy", *, variant=0, ax=None, **kwargs):
        """Draw the layer curve of ``metric``; returns a LayerCurveDisplay.

        The marked layer is the best of ``metric`` (lowest loss, highest score); pass
        ``best=self.best_layer_`` to mark the log-loss choice instead. ``kwargs`` go to
        :meth:`LayerCurveDisplay.from_sweep`.
        """
        from .plotting import LayerCurveDisplay

        return LayerCurveDisplay.from_sweep(self, metric=metric, variant=variant, ax=ax,
                                            **kwargs)

    def __repr__(self):
        return (
            f"LayerSweepResult(probe={self.probe_name!r}, layers={len(self.layers)}, "
            f"variants={len(self.variants)}, n_splits={self.n_splits_}, "
            f"best_layer_={self.best_layer_})"
        )


def _align_proba(proba, fold_classes, classes):
    """Place a probe's columns (classes seen in the training fold) in the global order."""
    if len(fold_classes) == len(classes):
        return proba
    full = np.zeros((proba.shape[0], len(classes)))
    full[:, np.searchsorted(classes, fold_classes)] = proba
    return full


def _make_probe(probe, probe_params, random_state):
    """Return (kind, estimator) where kind picks the fast path for string probes."""
    params = dict(probe_params or {})
    if isinstance(probe, str):
        if probe not in _PROBES:
            raise ValueError(f"probe={probe!r} is unknown; use one of {_PROBES} or an "
                             "sklearn classifier instance.")
        if probe == "knn":
            ks = params.pop("n_neighbors", 20)
            est = KNNProbeClassifier(**params)
            return "knn", (est, [int(k) for k in np.atleast_1d(ks)])
        if probe == "logistic":
            from sklearn.linear_model import LogisticRegression

            params.setdefault("max_iter", 1000)
            est = LogisticRegression(**params)
        elif probe == "linear":
            if params.get("solver", "lbfgs") == "lbfgs":
                params.setdefault("max_iter", 1000)  # as the "logistic" probe
            est = LinearProbeClassifier(**params)
        else:
            if params.get("solver", "lbfgs") == "lbfgs":
                # one solve for all layers and folds needs more iterations than one
                # head (157 for 13 ViT-S layers where each alone needed 33-66)
                params.setdefault("max_iter", 1000)
            params.setdefault("random_state", random_state)
            return "batched", MultiLayerLinearProbe(**params)
        if "random_state" in est.get_params() and "random_state" not in params:
            est.set_params(random_state=random_state)
        return "each", est
    if probe_params:
        raise ValueError("probe_params only applies to string probes; set the parameters on "
                         "the estimator you pass as probe.")
    if not (hasattr(probe, "fit") and hasattr(probe, "predict")):
        raise TypeError(f"probe={probe!r} is neither a probe name {_PROBES} nor an estimator "
                        "with fit/predict.")
    if not is_classifier(probe):
        warnings.warn(f"probe {type(probe).__name__} is not tagged as a classifier.",
                      UserWarning, stacklevel=3)
    est = clone(probe)
    if random_state is not None and "random_state" in est.get_params():
        est.set_params(random_state=random_state)
    return "each", est


def _predict_proba(est, X):
    if hasattr(est, "predict_proba"):
        return est.predict_proba(X)
    # hard votes as probabilities, so log-loss is still defined (and harsh)
    pred = est.predict(X)
    return (pred[:, None] == est.classes_[None, :]).astype(float)


def _splitter(cv, n_repeats, y, random_state):
    if not isinstance(n_repeats, (int, np.integer)) or isinstance(n_repeats, bool) \
            or n_repeats < 1:
        raise ValueError(f"n_repeats must be an int >= 1, got {n_repeats!r}.")
    if n_repeats == 1:
        return check_cv(cv, y, classifier=True)
    if not isinstance(cv, (int, np.integer)):
        raise ValueError(f"n_repeats={n_repeats} needs an int cv (the folds per repeat); "
                         f"got cv={cv!r}. Pass a repeated splitter such as "
                         "RepeatedStratifiedKFold as cv instead.")
    return RepeatedStratifiedKFold(n_splits=int(cv), n_repeats=int(n_repeats),
                                   random_state=random_state)


def layer_sweep_from_features(features, y, *, probe="batched-linear", probe_params=None,
                              cv=5, n_repeats=1, groups=None, scoring=None,
                              random_state=None, verbose=True):
    """Cross-validate a probe on precomputed per-layer features.

    Parameters
    ----------
    features : dict of int -> ndarray of shape (n_samples, n_features_layer)
        Pooled features of each layer (e.g. ``LayerFeatureTransformer.layer_features``).
    y : array-like of shape (n_samples,)
    probe, probe_params, cv, n_repeats, groups, scoring, random_state
        See :func:`layer_sweep`.
    verbose : bool or int, default=True
        Show a progress bar over layers and folds once the probes take longer than
        2 s; ``verbose=0`` silences it.

    Returns
    -------
    LayerSweepResult
    """
    if not isinstance(features, dict) or not features:
        raise TypeError("features must be a non-empty dict {layer: array (n_samples, dim)}; "
                        f"got {type(features).__name__}.")
    layers = list(features)
    arrays = [np.asarray(features[layer]) for layer in layers]
    y = np.asarray(y)
    for layer, a in zip(layers, arrays):
        if a.ndim != 2 or a.shape[0] != y.shape[0]:
            raise ValueError(f"features[{layer!r}] has shape {a.shape}; expected "
                             f"({y.shape[0]}, n_features) to match y.")
    check_classification_targets(y)
    classes = np.unique(y)
    builtin, custom = _resolve_scoring(scoring)
    codes = np.searchsorted(classes, y)
    kind, est = _make_probe(probe, probe_params, random_state)
    splitter = _splitter(cv, n_repeats, y, random_state)
    splits = list(splitter.split(arrays[0], y, groups))
    variants = [{"n_neighbors": k} for k in est[1]] if kind == "knn" else [{}]
    scores = {m: np.full((len(variants), len(layers), len(splits)), np.nan)
              for m in [*builtin, *custom]}

    def record(vi, li, fi, test, proba, fold_classes):
        proba = _align_proba(np.asarray(proba, dtype=float), fold_classes, classes)
        if builtin:
            values = _default_metrics(codes[test], proba)
            for m in builtin:
                scores[m][vi, li, fi] = values[m]
        if custom:
            pred = classes[np.argmax(proba, axis=1)]
            for m, fn in custom.items():
                scores[m][vi, li, fi] = fn(y[test], pred, proba, classes)

    start = time.perf_counter()
    with _progress(len(splits) * len(layers), f"layer_sweep {len(layers)} layers x "
                   f"{len(splits)} folds", verbose) as bar:
        if kind == "batched":
            # every fold and layer in one batched model: the features are not copied
            # per fold, and each minibatch step serves all folds at once
            fitted_folds = fit_folds(est, arrays, y, [train for train, _ in splits])
        for fi, (train, test) in enumerate(splits):
            if kind == "batched":
                fitted = fitted_folds[fi]
                test_rows = [a[test] for a in arrays]  # rows fit_folds checked
                for li, proba in enumerate(fitted._predict_proba_checked(test_rows)):
                    record(0, li, fi, test, proba, fitted.classes_)
                bar.update(len(layers))
                continue
            for li, a in enumerate(arrays):
                if kind == "knn":
                    knn, ks = est
                    fitted = clone(knn).fit(a[train], y[train])
                    for vi, proba in enumerate(fitted.predict_proba_for_k(a[test], ks).values()):
                        record(vi, li, fi, test, proba, fitted.classes_)
                else:
                    fitted = clone(est).fit(a[train], y[train])
                    record(0, li, fi, test, _predict_proba(fitted, a[test]), fitted.classes_)
                bar.update()
    probe_seconds = time.perf_counter() - start
    name = probe if isinstance(probe, str) else type(probe).__name__
    return LayerSweepResult(layers, variants, scores, probe_name=name,
                            extraction_seconds=0.0, probe_seconds=probe_seconds,
                            n_train=np.mean([len(tr) for tr, _ in splits]),
                            n_test=np.mean([len(te) for _, te in splits]))


def layer_sweep(X, y, encoder, *, layers=None, probe="batched-linear", probe_params=None,
                cv=5, n_repeats=1, groups=None, scoring=None, random_state=None,
                verbose=True, **transformer_params):
    """Cross-validate a probe on every layer of a frozen encoder, from one encoder pass.

    The encoder runs once over ``X`` and returns the pooled features of all requested
    layers; each layer is then cross-validated on those stored features (the encoder is
    frozen, so a layer's features do not depend on the fold).

    Parameters
    ----------
    X : array-like of images
        Anything ``LayerFeatureTransformer`` accepts (uint8 arrays (N, H, W, C), paths,
        PIL images).
    y : array-like of shape (n_samples,)
        Class labels (any type).
    encoder : str, torch.nn.Module, callable or LayerFeatureTransformer
        A timm name / module / factory (a ``LayerFeatureTransformer`` is built from it
        and ``transformer_params``), or a ``LayerFeatureTransformer`` (fitted or not).
    layers : list of int or None, default=None
        Layers to sweep (negative from the end); None sweeps all, 0..n_layers_.
    probe : {"batched-linear", "linear", "knn", "logistic"} or classifier, default="batched-linear"
        ``"batched-linear"`` trains the linear probes of all layers and folds at once
        (:class:`~sklearn_endo.probes.MultiLayerLinearProbe`, same results as
        ``"linear"``, one :class:`~sklearn_endo.probes.LinearProbeClassifier` per
        layer); by default each is ``LogisticRegression(C=1)`` on standardized
        features, solved to its optimum by L-BFGS; ``"knn"`` is
        :class:`~sklearn_endo.probes.KNNProbeClassifier`, with
        ``probe_params={"n_neighbors": [10, 20, 50]}`` evaluating several k from one
        neighbour search; ``"logistic"`` is sklearn's LogisticRegression; any sklearn
        classifier is cloned per layer and fold.
    probe_params : dict, optional
        Parameters of a string probe, e.g. ``{"C": 0.1}`` (a stronger L2 penalty).
        ``{"solver": "adam"}`` with the linear probes replaces ``LogisticRegression``'s
        objective by the layer-wise study's Adam recipe (lr 1e-4, 30 epochs, batch 8,
        raw features; see ``LinearProbeClassifier``), which undertrains on small data.
        With L-BFGS, ``max_iter`` defaults to 1000 here, as the ``"logistic"`` probe's.
    cv : int, CV splitter or iterable, default=5
        As in ``cross_validate``; an int means ``StratifiedKFold(cv)``. Use a group
        splitter with ``groups`` to keep a patient's images in one fold.
    n_repeats : int, default=1
        With an int ``cv``, repeat it ``n_repeats`` times on new shuffles
        (``RepeatedStratifiedKFold(n_splits=cv, n_repeats=n_repeats,
        random_state=random_state)``): ``cv * n_repeats`` folds give the layer
        comparison more power (Bouckaert and Frank recommend 10 x 10). The encoder
        still runs once per image: every repeat reads the same stored features; only
        the probe fits grow.
    groups : array-like, optional
    scoring : None, list of str or dict, default=None
        None computes accuracy, macro-F1, macro precision, macro recall, balanced
        accuracy and log-loss; a list picks from those; a dict maps names to
        ``f(y_true, y_pred, y_proba, labels)``.
    random_state : int or None
        Seeds the probe (its ``random_state`` parameter when it has one) and the
        shuffles of ``n_repeats``.
    verbose : bool or int, default=True
        Show progress bars (tqdm, also in notebooks) for the encoder pass and the
        probes once a step takes longer than 2 s; ``verbose=0`` silences them, also the
        bar of a ``LayerFeatureTransformer`` passed as ``encoder``.
    **transformer_params
        Passed to ``LayerFeatureTransformer`` when ``encoder`` is not one already
        (e.g. ``pooling="cls"``, ``pretrained=False``, ``batch_size=64``).

    Returns
    -------
    LayerSweepResult
        Per-layer mean and std of every metric, ``best_layer_`` (argmin of the mean CV
        log-loss), ``extraction_seconds_`` and ``probe_seconds_``; ``comparison_``
        (every layer against the best and the last: differences with confidence
        intervals and corrected t-test p-values), ``tied_layers_`` (not significantly
        worse than the best, Holm), ``one_se_layers_`` and ``smallest_tied_layer_``.

    Examples
    --------
    >>> from sklearn_endo import layer_sweep  # doctest: +SKIP
    >>> res = layer_sweep(X, y, "vit_small_patch16_224", cv=5)  # doctest: +SKIP
    >>> res.best_layer_, res.to_frame()  # doctest: +SKIP
    """
    y_arr = np.asarray(y)
    if hasattr(encoder, "layer_features"):
        transformer = encoder
        if transformer_params or not hasattr(transformer, "n_layers_"):
            # never refit or reconfigure the caller's object
            transformer = clone(transformer).set_params(**transformer_params)
        if not verbose and getattr(transformer, "verbose", False):
            # silence a fitted transformer without changing the caller's object
            transformer = copy.copy(transformer)
            transformer.verbose = False
    else:
        from ._transformer import LayerFeatureTransformer

        transformer = LayerFeatureTransformer(encoder, verbose=bool(verbose),
                                              **transformer_params)
    start = time.perf_counter()
    if not hasattr(transformer, "n_layers_"):
        transformer.fit(X)
    if layers is not None and not isinstance(layers, (list, tuple, range, np.ndarray)):
        layers = [layers]
    features = transformer.layer_features(X, layers=None if layers is None else list(layers))
    extraction_seconds = time.perf_counter() - start
    result = layer_sweep_from_features(
        features, y_arr, probe=probe, probe_params=probe_params, cv=cv,
        n_repeats=n_repeats, groups=groups, scoring=scoring, random_state=random_state,
        verbose=verbose)
    result.extraction_seconds_ = extraction_seconds
    result.layer_names = getattr(transformer, "layer_names_", None)
    name = getattr(transformer, "encoder", None)  # a timm name, else the module's class
    result.encoder_ = name if isinstance(name, str) else getattr(
        getattr(transformer, "_handle", None), "name", None)
    return result
