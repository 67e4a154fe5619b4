"""Heat map of confusion asymmetry: rate(a -> b) - rate(b -> a) for every pair."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix

from ..inspection._confusion import _NORMALIZE, _rates, confusion_asymmetry
from ._layer_curve import _check_matplotlib_support, _get_ax

__all__ = ["ConfusionAsymmetryDisplay"]


class ConfusionAsymmetryDisplay:
    """Antisymmetric matrix ``A = R - R.T`` of confusion rates, with its pair table.

    ``R[a, b]`` is the rate of class ``a`` predicted as ``b`` (row-normalised by
    default), so a red cell (a, b) marks ``a`` taken for ``b`` more often than the
    reverse. Create it with :meth:`from_predictions` or :meth:`from_estimator`.

    Parameters
    ----------
    asymmetry : ndarray of shape (n_classes, n_classes)
    display_labels : list or None
    table : dict or None
        The output of :func:`sklearn_endo.inspection.confusion_asymmetry`.

    Attributes
    ----------
    im_ : matplotlib AxesImage
    text_ : ndarray of Text or None
    ax_, figure_ : matplotlib Axes and Figure
    """

    def __init__(self, asymmetry, *, display_labels=None, table=None):
        self.asymmetry = np.asarray(asymmetry, dtype=float)
        self.display_labels = display_labels
        self.table = table

    def plot(self, ax=None, *, include_values=True, values_format=".2f", cmap="RdBu_r",
             colorbar=True):
        """Draw the heat map; returns self."""
        _check_matplotlib_support(f"{type(self).__name__}.plot")
        ax, fig = _get_ax(ax)
        a = self.asymmetry
        n = a.shape[0]
        lim = max(float(np.abs(a).max()), 1e-12)
        self.im_ = ax.imshow(a, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
        self.text_ = None
        if include_values:
            self.text_ = np.empty_like(a, dtype=object)
            for i in range(n):
                for j in range(n):
                    color = "white" if abs(a[i, j]) > 0.6 * lim else "black"
                    self.text_[i, j] = ax.text(j, i, format(a[i, j], values_format),
                                               ha="center", va="center", color=color)
        labels = np.arange(n) if self.display_labels is None else self.display_labels
        if colorbar:
            fig.colorbar(self.im_, ax=ax, label="rate(true→pred) − rate(pred→true)")
        ax.set(xticks=np.arange(n), yticks=np.arange(n), xticklabels=labels,
               yticklabels=labels, xlabel="Predicted label", ylabel="True label")
        ax.set_ylim((n - 0.5, -0.5))
        self.ax_, self.figure_ = ax, fig
        return self

    @classmethod
    def from_predictions(cls, y_true, y_pred, *, labels=None, normalize="true",
                         display_labels=None, ax=None, **plot_kw):
        """Draw the asymmetry of the confusion between ``y_true`` and ``y_pred``."""
        _check_matplotlib_support(f"{cls.__name__}.from_predictions")
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize={normalize!r} is invalid; use one of {_NORMALIZE}.")
        table = confusion_asymmetry(y_true, y_pred, labels=labels, normalize=normalize)
        if labels is None:
            labels = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)]))
        rates = _rates(confusion_matrix(y_true, y_pred, labels=labels), normalize)
        if display_labels is None:
            display_labels = list(labels)
        disp = cls(rates - rates.T, display_labels=display_labels, table=table)
        return disp.plot(ax=ax, **plot_kw)

    @classmethod
    def from_estimator(cls, estimator, X, y, **kwargs):
        """Predict ``X`` with a fitted classifier and draw the asymmetry against ``y``."""
        _check_matplotlib_support(f"{cls.__name__}.from_estimator")
        kwargs.setdefault("labels", getattr(estimator, "classes_", None))
        return cls.from_predictions(y, estimator.predict(X), **kwargs)
