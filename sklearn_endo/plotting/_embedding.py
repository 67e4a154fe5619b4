"""2-D embedding of features (t-SNE, UMAP or PCA), coloured by class."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array

from ._layer_curve import _check_matplotlib_support, _get_ax

__all__ = ["EmbeddingDisplay"]

_METHODS = ("tsne", "umap", "pca")


def _embed(features, method, random_state, **kwargs):
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=random_state, **kwargs).fit_transform(features)
    if method == "tsne":
        from sklearn.manifold import TSNE

        # perplexity must stay below n_samples; sklearn's default 30 fails on small sets
        kwargs.setdefault("perplexity", min(30.0, max(1.0, (features.shape[0] - 1) / 3)))
        kwargs.setdefault("init", "pca")
        return TSNE(n_components=2, random_state=random_state, **kwargs).fit_transform(features)
    try:
        import umap
    except ImportError as exc:
        raise ImportError(
            "method='umap' requires the umap-learn package (pip install umap-learn); "
            "use method='tsne' or method='pca' without it."
        ) from exc
    seed = None if random_state is None else check_random_state(random_state).randint(2**31 - 1)
    return umap.UMAP(n_components=2, random_state=seed, **kwargs).fit_transform(features)


class EmbeddingDisplay:
    """Scatter plot of a 2-D embedding of features, one colour per class.

    Create it with :meth:`from_features`.

    Parameters
    ----------
    embedding : ndarray of shape (n_samples, 2)
    y : array-like of shape (n_samples,)
    method : str, default=""
        Name of the embedding, used in the axis labels ("t-SNE 1", ...).
    display_labels : list or None
        Class names in the legend; default the unique values of ``y``.
    name : str or None
        What was embedded, for the default title, e.g. ``"resnet18, layer 7"``.

    Attributes
    ----------
    scatters_ : list of matplotlib PathCollection, one per class
    ax_, figure_ : matplotlib Axes and Figure

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.plotting import EmbeddingDisplay
    >>> X = np.random.RandomState(0).normal(size=(30, 8)); y = np.repeat([0, 1, 2], 10)
    >>> disp = EmbeddingDisplay.from_features(X, y, method="pca")  # doctest: +SKIP
    """

    _AXIS = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PC"}

    def __init__(self, embedding, y, *, method="", display_labels=None, name=None):
        self.embedding = np.asarray(embedding)
        self.y = np.asarray(y)
        self.method = method
        self.display_labels = display_labels
        self.name = name
        if self.embedding.ndim != 2 or self.embedding.shape[1] != 2:
            raise ValueError(
                f"embedding must have shape (n_samples, 2); got {self.embedding.shape}.")
        if self.y.shape != (self.embedding.shape[0],):
            raise ValueError(f"y must have one label per embedded point "
                             f"({self.embedding.shape[0]}); got shape {self.y.shape}.")

    def plot(self, ax=None, *, scatter_kw=None, legend=True, title=None):
        """Draw the scatter plot; returns self.

        ``title``: None gives "t-SNE of the features" ("t-SNE of resnet18, layer 7"
        with ``name``), a string replaces it, ``""`` draws none.
        """
        _check_matplotlib_support(f"{type(self).__name__}.plot")
        ax, fig = _get_ax(ax)
        classes = np.unique(self.y)
        names = classes if self.display_labels is None else self.display_labels
        if len(names) != len(classes):
            raise ValueError(f"display_labels has {len(names)} names for {len(classes)} classes.")
        scatter_kw = {"s": 12, "alpha": 0.8, **(scatter_kw or {})}
        self.scatters_ = [
            ax.scatter(*self.embedding[self.y == c].T, label=str(name), **scatter_kw)
            for c, name in zip(classes, names)
        ]
        axis = self._AXIS.get(self.method, self.method or "Component")
        ax.set_xlabel(f"{axis} 1")
        ax.set_ylabel(f"{axis} 2")
        if title is None:
            what = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}.get(
                self.method, self.method or "2-D embedding")
            title = f"{what} of {self.name if self.name is not None else 'the features'}"
        ax.set_title(title)
        if legend:
            ax.legend(title="Class", loc="best", fontsize="small")
        self.ax_, self.figure_ = ax, fig
        return self

    @classmethod
    def from_features(cls, features, y, *, method="tsne", random_state=None,
                      display_labels=None, name=None, ax=None, method_params=None,
                      **plot_kw):
        """Embed ``features`` (n_samples, n_features) in 2-D and draw it coloured by ``y``.

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features)
            E.g. ``LayerFeatureTransformer(encoder, layer=best).fit_transform(X)``.
        y : array-like of shape (n_samples,)
        method : {"tsne", "umap", "pca"}, default="tsne"
            t-SNE and PCA come from scikit-learn; UMAP needs ``umap-learn``.
        random_state : int, RandomState or None
        display_labels : list or None
        name : str or None
            What was embedded, for the title (``"resnet18, layer 7"``).
        ax : matplotlib Axes or None
        method_params : dict or None
            Passed to ``TSNE`` / ``umap.UMAP`` / ``PCA`` (e.g. ``{"perplexity": 20}``).
        """
        _check_matplotlib_support(f"{cls.__name__}.from_features")
        if method not in _METHODS:
            raise ValueError(f"method={method!r} is unknown; use one of {_METHODS}.")
        features = check_array(features, dtype=np.float64, ensure_min_samples=3,
                               input_name="features")
        y = np.asarray(y)
        if y.shape != (features.shape[0],):
            raise ValueError(f"y must have one label per row of features ({features.shape[0]}); "
                             f"got shape {y.shape}.")
        emb = _embed(features, method, random_state, **(method_params or {}))
        return cls(emb, y, method=method, display_labels=display_labels,
                   name=name).plot(ax=ax, **plot_kw)
