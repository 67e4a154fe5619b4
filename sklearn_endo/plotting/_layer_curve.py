"""Score of a probe against the layer it reads: the "peak before the end" curve."""

from __future__ import annotations

import re

import numpy as np

__all__ = ["LayerCurveDisplay"]


def _check_matplotlib_support(caller_name):
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"{caller_name} requires matplotlib. Install it with `pip install matplotlib` "
            "(or `pip install sklearn-endo[plot]`)."
        ) from exc


def _get_ax(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    return ax, ax.figure


def _lower_is_better(name):
    return "loss" in name or "error" in name


def _best_of(layers, mean, lower_is_better):
    """The layer with the best mean score (NaN scores, e.g. failed fits, are skipped)."""
    if np.isnan(mean).all():
        return None
    return int(layers[np.nanargmin(mean) if lower_is_better else np.nanargmax(mean)])


def _pretty_metric(name):
    labels = {
        "accuracy": "Accuracy",
        "f1_macro": "Macro F1",
        "precision_macro": "Macro precision",
        "recall_macro": "Macro recall",
        "balanced_accuracy": "Balanced accuracy",
        "log_loss": "Log-loss",
        "neg_log_loss": "Log-loss",
        "score": "Score",
    }
    return labels.get(name, name.replace("_", " "))


class LayerCurveDisplay:
    """Cross-validated score per layer, with a +/- one standard deviation band.

    Create it with :meth:`from_sweep` (a :class:`~sklearn_endo.LayerSweepResult`) or
    :meth:`from_cv_results` (a fitted ``GridSearchCV`` over the layer), or directly
    from arrays, then call :meth:`plot`.

    Parameters
    ----------
    layers : array-like of int
    scores_mean : array-like of float, same length as ``layers``
    scores_std : array-like of float or None
    metric_name : str, default="score"
        Name on the y-axis (``"accuracy"``, ``"log_loss"``, ...).
    best_layer : int or None
        Marked with a vertical dashed line.
    label : str or None
        Legend label of the curve.
    tied_layers : list of int or None
        Layers not significantly worse than the best (e.g. ``result.tied_layers_`` of a
        sweep, or ``tied_candidates`` of a
        :class:`~sklearn_endo.model_selection.CVComparison`): shaded behind the curve,
        their points drawn filled.
    encoder_name : str or None
        The encoder whose layers these are, named in the x-axis label ("Layer
        (resnet18)") and the default title; "Layer" when None.

    Attributes
    ----------
    line_ : matplotlib Line2D
    band_ : matplotlib PolyCollection or None
    tied_spans_ : list of matplotlib patches
        One shaded span per run of adjacent tied layers (empty without ``tied_layers``).
    best_line_ : matplotlib Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from sklearn_endo.plotting import LayerCurveDisplay
    >>> disp = LayerCurveDisplay([0, 1, 2], [0.5, 0.8, 0.7], [0.05, 0.02, 0.04],
    ...                          "accuracy", best_layer=1)
    >>> disp = disp.plot()  # doctest: +SKIP
    """

    def __init__(self, layers, scores_mean, scores_std=None, metric_name="score",
                 best_layer=None, label=None, tied_layers=None, encoder_name=None):
        self.layers = np.asarray(layers)
        self.scores_mean = np.asarray(scores_mean, dtype=float)
        self.scores_std = None if scores_std is None else np.asarray(scores_std, dtype=float)
        self.metric_name = metric_name
        self.best_layer = best_layer
        self.label = label
        self.tied_layers = None if tied_layers is None else [int(t) for t in tied_layers]
        self.encoder_name = encoder_name
        if self.layers.shape != self.scores_mean.shape or self.layers.ndim != 1:
            raise ValueError(
                f"layers (shape {self.layers.shape}) and scores_mean (shape "
                f"{self.scores_mean.shape}) must be 1-d and of the same length."
            )
        if self.scores_std is not None and self.scores_std.shape != self.scores_mean.shape:
            raise ValueError(f"scores_std has shape {self.scores_std.shape}; expected "
                             f"{self.scores_mean.shape} like scores_mean.")

    def plot(self, ax=None, *, show_best=True, line_kw=None, band_kw=None, title=None):
        """Draw the curve on ``ax`` (a new figure when None); returns self.

        ``title``: None gives "Accuracy per layer" ("... of resnet18" with
        ``encoder_name``), a string replaces it, ``""`` draws none. Layer ticks are
        integers.
        """
        from matplotlib.ticker import MaxNLocator

        _check_matplotlib_support(f"{type(self).__name__}.plot")
        ax, fig = _get_ax(ax)
        order = np.argsort(self.layers, kind="stable")
        x, m = self.layers[order], self.scores_mean[order]
        line_kw = {"marker": "o", "label": self.label, **(line_kw or {})}
        (self.line_,) = ax.plot(x, m, **line_kw)
        self.band_ = None
        if self.scores_std is not None:
            s = self.scores_std[order]
            band_kw = {"alpha": 0.2, "color": self.line_.get_color(), **(band_kw or {})}
            self.band_ = ax.fill_between(x, m - s, m + s, **band_kw)
        self.tied_spans_ = self._draw_tied(ax, x, m) if self.tied_layers else []
        self.best_line_ = None
        if show_best and self.best_layer is not None:
            self.best_line_ = ax.axvline(self.best_layer, linestyle="--", color="0.4",
                                         label=f"best layer ({self.best_layer})")
        named = self.encoder_name is not None
        ax.set_xlabel(f"Layer ({self.encoder_name})" if named else "Layer")
        ax.set_ylabel(_pretty_metric(self.metric_name))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title is None:
            title = f"{_pretty_metric(self.metric_name)} per layer" + (
                f" of {self.encoder_name}" if named else "")
        ax.set_title(title)
        if self.label is not None or self.best_line_ is not None or self.tied_spans_:
            ax.legend(loc="best")
        self.ax_, self.figure_ = ax, fig
        return self

    def _draw_tied(self, ax, x, m):
        """Shade runs of adjacent tied layers (adjacent among the plotted ones)."""
        tied = np.isin(x, self.tied_layers)
        half = 0.5 * (np.diff(x).min() if len(x) > 1 else 1)
        spans, start = [], None
        for i, is_tied in enumerate([*tied, False]):
            if is_tied and start is None:
                start = i
            elif not is_tied and start is not None:
                label = "not significantly worse than the best" if not spans else None
                spans.append(ax.axvspan(x[start] - half, x[i - 1] + half, color="tab:green",
                                        alpha=0.12, lw=0, label=label, zorder=0))
                start = None
        ax.plot(x[tied], m[tied], linestyle="none", marker="o",
                color=self.line_.get_color())
        return spans

    @classmethod
    def from_sweep(cls, result, metric="accuracy", *, variant=0, best="auto",
                   show_tied=True, encoder_name=None, ax=None, **plot_kw):
        """Draw the curve of ``metric`` from a :class:`~sklearn_endo.LayerSweepResult`.

        Parameters
        ----------
        result : LayerSweepResult
        metric : str, default="accuracy"
            A metric the sweep computed (``result.metrics``).
        variant : int, default=0
            The probe setting (e.g. the k of a k-NN sweep).
        best : "auto", int or None, default="auto"
            The marked layer. "auto" marks the best layer *of the plotted metric*: the
            lowest mean for losses and errors (``log_loss``), the highest for scores.
            It can differ from ``result.best_layer_``, which is chosen on log-loss;
            pass ``best=result.best_layer_`` to mark that one.
        show_tied : bool, default=True
            Shade the layers not significantly worse than the best layer of the plotted
            metric (``result.compare(metric).tied_candidates``: corrected t-test,
            Holm, alpha 0.05).
        encoder_name : str or None
            For the axis label and title; None takes the sweep's (``result.encoder_``,
            when it swept a named encoder).
        ax : matplotlib Axes or None
        **plot_kw
            Passed to :meth:`plot` (``title=``, ...).
        """
        _check_matplotlib_support(f"{cls.__name__}.from_sweep")
        if encoder_name is None:
            encoder_name = getattr(result, "encoder_", None)
        if not hasattr(result, "scores") or not hasattr(result, "layers"):
            raise TypeError(f"result must be a LayerSweepResult; got {type(result).__name__}.")
        label = None
        if result.variants[variant]:
            label = ", ".join(f"{k}={v}" for k, v in result.variants[variant].items())
        mean = result.mean(metric, variant)
        if best == "auto":
            best = _best_of(np.asarray(result.layers), mean, _lower_is_better(metric))
        tied = None
        if show_tied and getattr(result, "n_train_", None) is not None:
            tied = result.compare(metric, variant).tied_candidates
        disp = cls(result.layers, mean, result.std(metric, variant), metric,
                   best_layer=best, label=label, tied_layers=tied,
                   encoder_name=encoder_name)
        return disp.plot(ax=ax, **plot_kw)

    @classmethod
    def from_cv_results(cls, cv_results, *, param=None, metric="mean_test_score",
                        scoring=None, n_layers=None, best="auto", tied_layers=None,
                        encoder_name=None, ax=None, **plot_kw):
        """Draw the curve from a fitted ``GridSearchCV.cv_results_`` over the layer.

        Parameters
        ----------
        cv_results : dict or fitted search
            ``search.cv_results_``, or the fitted search itself (its ``scoring`` then
            names the score).
        param : str or None
            The layer parameter, e.g. ``"layer"`` or ``"layerfeaturetransformer__layer"``;
            None finds the single parameter whose name ends in ``layer``. When the grid
            has other parameters, each layer shows its best candidate.
        metric : str, default="mean_test_score"
            ``"mean_test_<name>"`` column; the matching ``std_test_<name>`` gives the
            band. Scores of ``neg_*`` scorers (e.g. ``neg_log_loss``) are negated back
            and drawn as losses.
        scoring : str or None
            The search's ``scoring`` when it was one string: ``cv_results_`` then
            calls it "score", and this tells its name and sign
            (``scoring="neg_log_loss"``).
        n_layers : int or None
            Number of blocks, used to turn negative layer indices into ``n_layers + i + 1``
            (so -1 is drawn at the last block). Without it negative and non-negative
            indices must not be mixed.
        best : "auto" or int or None
            The marked layer; "auto" marks the best score (lowest loss).
        tied_layers : list of int or None
            Layers to shade as not significantly worse than the best, e.g.
            ``compare_cv_results(search, X=X, y=y).tied_candidates``
            (:func:`sklearn_endo.model_selection.compare_cv_results`).
        encoder_name : str or None
            For the axis label and title; None takes the search's encoder when it is
            named by a string (the ``<step>__encoder`` parameter next to ``param``).
        ax : matplotlib Axes or None
        **plot_kw
            Passed to :meth:`plot` (``title=``, ...).
        """
        _check_matplotlib_support(f"{cls.__name__}.from_cv_results")
        search = cv_results if hasattr(cv_results, "cv_results_") else None
        if hasattr(cv_results, "cv_results_"):
            if scoring is None and isinstance(getattr(cv_results, "scoring", None), str):
                scoring = cv_results.scoring
            cv_results = cv_results.cv_results_
        if not isinstance(cv_results, dict) or "params" not in cv_results:
            raise TypeError("cv_results must be a fitted search's cv_results_ dict.")
        param_keys = [k[len("param_"):] for k in cv_results if k.startswith("param_")]
        if param is None:
            found = [k for k in param_keys if re.search(r"(^|__)layers?$", k)]
            if len(found) != 1:
                raise ValueError(f"Could not pick the layer parameter from {param_keys}; "
                                 "pass param='<step>__layer'.")
            param = found[0]
        if f"param_{param}" not in cv_results:
            close = [k for k in param_keys if k.endswith(param) or param.endswith(k)]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"param={param!r} is not in cv_results_ (params: {param_keys})."
                             + hint)
        if metric not in cv_results:
            means = [k for k in cv_results if k.startswith("mean_test_")]
            raise ValueError(f"metric={metric!r} is not in cv_results_; choose from {means}.")
        mean = np.asarray(cv_results[metric], dtype=float)
        std_key = metric.replace("mean_", "std_", 1)
        std = np.asarray(cv_results[std_key], dtype=float) if std_key in cv_results else None
        scorer_name = metric[len("mean_test_"):] if metric.startswith("mean_test_") else metric
        if scorer_name == "score" and scoring is not None:
            scorer_name = scoring
        negated = scorer_name.startswith("neg_")
        if negated:
            mean = -mean
            scorer_name = scorer_name[len("neg_"):]
        lower_is_better = negated or _lower_is_better(scorer_name)
        raw = [p[param] for p in cv_results["params"]]
        if any(isinstance(v, (list, tuple)) for v in raw):
            raise ValueError(f"{param} holds lists of layers (concatenated features); a "
                             "layer curve needs one layer per candidate.")
        layers = np.asarray(raw, dtype=int)
        if (layers < 0).any():
            if n_layers is not None:
                layers = np.where(layers < 0, n_layers + 1 + layers, layers)
            elif (layers >= 0).any():
                raise ValueError(f"{param} mixes negative and non-negative layer indices; "
                                 "pass n_layers= (the transformer's n_layers_) to place them.")
        # one point per layer: its best candidate over the other parameters
        uniq = np.unique(layers)
        pick = []
        for layer in uniq:
            idx = np.flatnonzero(layers == layer)
            scores = mean[idx]
            pick.append(idx[np.nanargmin(scores) if lower_is_better else np.nanargmax(scores)])
        pick = np.asarray(pick)
        if best == "auto":
            best = _best_of(uniq, mean[pick], lower_is_better)
        if tied_layers is not None and n_layers is not None:
            tied_layers = [t if t >= 0 else n_layers + 1 + t for t in tied_layers]
        if encoder_name is None and search is not None:
            name = param[:-len(param.split("__")[-1])] + "encoder"
            params = getattr(getattr(search, "estimator", None), "get_params", dict)()
            searched = [p[name] for p in cv_results["params"] if name in p]
            encoders = searched or [params.get(name)]
            if all(isinstance(e, str) and e == encoders[0] for e in encoders):
                encoder_name = encoders[0]  # one encoder, named by a string
        disp = cls(uniq, mean[pick], None if std is None else std[pick], scorer_name,
                   best_layer=best, tied_layers=tied_layers, encoder_name=encoder_name)
        return disp.plot(ax=ax, **plot_kw)
