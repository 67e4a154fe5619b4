"""Heat map of CKA between the layers of one or two encoders."""

import numpy as np

from ..metrics._cka import _as_layer_dict, cka_matrix

__all__ = ["CKADisplay"]


def _check_matplotlib_support(caller_name):
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"{caller_name} requires matplotlib. You can install matplotlib with "
            "`pip install matplotlib` (or `pip install sklearn-endo[plot]`)."
        ) from e


class CKADisplay:
    """Layer-by-layer CKA heat map.

    It is recommended to create it with :meth:`CKADisplay.from_features`. All
    parameters are stored as attributes. Rows of ``matrix`` (layers of encoder A)
    run along the y-axis, columns (layers of encoder B) along the x-axis; the first
    layer is at the origin (bottom left), as in Kornblith et al. (2019).

    Parameters
    ----------
    matrix : ndarray of shape (n_layers_a, n_layers_b)
        CKA values, e.g. from :func:`sklearn_endo.metrics.cka_matrix`.

    layers_a : list, default=None
        Tick labels of the rows. Defaults to ``0 .. n_layers_a - 1``.

    layers_b : list, default=None
        Tick labels of the columns. Defaults to ``layers_a`` for a square matrix,
        else ``0 .. n_layers_b - 1``.

    name_a : str, default=None
        Name of the first encoder, used in the y-axis label ("Layer (name_a)") and the
        title. ``None``: "Layer" for a square matrix (one encoder against itself, or
        two whose names are not given), "Layer (encoder A)" for a rectangular one.

    name_b : str, default=None
        Name of the second encoder, used in the x-axis label. ``None``: the same as
        ``name_a`` for a square matrix ("encoder B" for a rectangular one).

    kind : str, default=None
        Kind of CKA, shown in the colorbar label (e.g. ``"linear"``).

    Attributes
    ----------
    im_ : matplotlib AxesImage
        The heat map.

    text_ : ndarray of matplotlib Text, or None
        Cell annotations; ``None`` if not annotated.

    ax_ : matplotlib Axes
        Axes with the heat map.

    figure_ : matplotlib Figure
        Figure containing the heat map.

    See Also
    --------
    sklearn_endo.metrics.cka_matrix : Computes the matrix.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sklearn_endo.plotting import CKADisplay
    >>> rng = np.random.default_rng(0)
    >>> layers = {f"block{i}": rng.normal(size=(40, 6)) for i in range(3)}
    >>> disp = CKADisplay.from_features(layers, name_a="resnet18")
    >>> disp.ax_.get_xlabel()
    'Layer (resnet18)'
    """

    def __init__(
        self, matrix, layers_a=None, layers_b=None, *, name_a=None, name_b=None,
        kind=None,
    ):
        self.matrix = matrix
        self.layers_a = layers_a
        self.layers_b = layers_b
        self.name_a = name_a
        self.name_b = name_b
        self.kind = kind

    def _check_matrix(self):
        matrix = np.asarray(self.matrix, dtype=float)
        if matrix.ndim != 2 or matrix.size == 0:
            raise ValueError(
                f"matrix must be a non-empty 2-D array (n_layers_a, n_layers_b), got "
                f"shape {matrix.shape}. Compute it with sklearn_endo.metrics.cka_matrix."
            )
        layers_a = np.arange(matrix.shape[0]) if self.layers_a is None else self.layers_a
        if self.layers_b is not None:
            layers_b = self.layers_b
        elif self.layers_a is not None and matrix.shape[0] == matrix.shape[1]:
            layers_b = self.layers_a
        else:
            layers_b = np.arange(matrix.shape[1])
        for name, labels, size in (
            ("layers_a", layers_a, matrix.shape[0]),
            ("layers_b", layers_b, matrix.shape[1]),
        ):
            if len(labels) != size:
                raise ValueError(
                    f"{name} has {len(labels)} labels but the matrix has {size} "
                    f"{'rows' if name == 'layers_a' else 'columns'}. Pass one label per layer."
                )
        return matrix, list(layers_a), list(layers_b)

    def plot(
        self, *, ax=None, cmap="magma", annotate=None, values_format=".2f",
        colorbar=True, xticks_rotation="horizontal", im_kw=None, text_kw=None,
        title=None,
    ):
        """Plot the heat map.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure and axes are created if None.

        cmap : str or matplotlib Colormap, default="magma"
            Colormap; the color scale is fixed to [0, 1] so plots are comparable.

        annotate : bool, default=None
            Write the value in each cell. By default only when both dimensions have
            at most 12 layers.

        values_format : str, default=".2f"
            Format of the annotations.

        colorbar : bool, default=True
            Whether to add a colorbar.

        xticks_rotation : {"vertical", "horizontal"} or float, default="horizontal"
            Rotation of the x tick labels.

        im_kw : dict, default=None
            Keyword arguments passed to ``ax.imshow``.

        text_kw : dict, default=None
            Keyword arguments passed to ``ax.text`` for the annotations.

        title : str, default=None
            Title of the axes. ``None``: "linear CKA between the layers of resnet18"
            for one encoder, "linear CKA: frozen (rows) vs fine-tuned" for two; ``""``
            for none.

        Returns
        -------
        display : CKADisplay
            This object, with ``im_``, ``text_``, ``ax_`` and ``figure_`` set.
        """
        _check_matplotlib_support("CKADisplay.plot")
        import matplotlib.pyplot as plt

        matrix, layers_a, layers_b = self._check_matrix()
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        n_rows, n_cols = matrix.shape
        im_kw = {"cmap": cmap, "vmin": 0.0, "vmax": 1.0, "origin": "lower",
                 "interpolation": "nearest", **(im_kw or {})}
        self.im_ = ax.imshow(matrix, **im_kw)

        if annotate is None:
            annotate = max(n_rows, n_cols) <= 12
        self.text_ = None
        if annotate:
            self.text_ = np.empty(matrix.shape, dtype=object)
            low, high = self.im_.cmap(0.0), self.im_.cmap(1.0)
            vmid = (self.im_.norm.vmin + self.im_.norm.vmax) / 2.0
            for i in range(n_rows):
                for j in range(n_cols):
                    kwargs = {"ha": "center", "va": "center",
                              "color": high if matrix[i, j] < vmid else low,
                              **(text_kw or {})}
                    self.text_[i, j] = ax.text(
                        j, i, format(matrix[i, j], values_format), **kwargs
                    )

        name_a, name_b = self.name_a, self.name_b
        if n_rows != n_cols:  # two encoders: never one label for both axes
            name_a = "encoder A" if name_a is None else name_a
            name_b = "encoder B" if name_b is None else name_b
        elif name_b is None:
            name_b = name_a
        if colorbar:
            label = "CKA" if self.kind is None or callable(self.kind) else f"{self.kind} CKA"
            fig.colorbar(self.im_, ax=ax, label=label)
        ax.set(
            xticks=np.arange(n_cols),
            yticks=np.arange(n_rows),
            xticklabels=[str(v) for v in layers_b],
            yticklabels=[str(v) for v in layers_a],
            xlabel=_layer_label(name_b),
            ylabel=_layer_label(name_a),
        )
        if title is None:
            what = "CKA" if self.kind is None or callable(self.kind) else f"{self.kind} CKA"
            if name_a is not None and name_a == name_b:
                title = f"{what} between the layers of {name_a}"
            elif name_a is None and name_b is None:
                title = f"{what} between layers"
            else:
                title = f"{what}: {name_a or 'encoder A'} (rows) vs {name_b or 'encoder B'}"
        ax.set_title(title)
        plt.setp(ax.get_xticklabels(), rotation=xticks_rotation)
        self.ax_ = ax
        self.figure_ = fig
        return self

    @classmethod
    def from_features(
        cls, features_a, features_b=None, *, kind="linear", name_a=None,
        name_b=None, ax=None, cmap="magma", annotate=None, values_format=".2f",
        colorbar=True, xticks_rotation="horizontal", im_kw=None, text_kw=None,
        title=None,
    ):
        """Compute the layer-by-layer CKA matrix and plot it.

        Parameters
        ----------
        features_a : list or dict of array-like
            Per-layer features of the first encoder, each (n_samples, n_features).
            Dict keys (or list positions) become the tick labels.

        features_b : list or dict of array-like, default=None
            Per-layer features of the second encoder on the same samples; ``None``
            compares ``features_a`` with itself.

        kind : {"linear", "rbf", "minibatch"} or callable, default="linear"
            Passed to :func:`sklearn_endo.metrics.cka_matrix`.

        name_a, name_b : str, default=None
            Encoder names for the axis labels and the title. Without ``features_b``
            both axes show the one encoder: "Layer", or "Layer (name_a)". With it,
            unnamed encoders are "encoder A" (rows) and "encoder B" (columns).

        ax, cmap, annotate, values_format, colorbar, xticks_rotation, im_kw, text_kw, title
            Passed to :meth:`plot`.

        Returns
        -------
        display : CKADisplay
        """
        _check_matplotlib_support("CKADisplay.from_features")
        matrix = cka_matrix(features_a, features_b, kind=kind)
        layers_a = _as_layer_dict(features_a, "features_a")[0]
        layers_b = layers_a if features_b is None else _as_layer_dict(
            features_b, "features_b")[0]
        if features_b is None:
            name_b = name_a  # one encoder against itself
        else:
            name_a = "encoder A" if name_a is None else name_a
            name_b = "encoder B" if name_b is None else name_b
        display = cls(matrix, layers_a, layers_b, name_a=name_a, name_b=name_b, kind=kind)
        return display.plot(
            ax=ax, cmap=cmap, annotate=annotate, values_format=values_format,
            colorbar=colorbar, xticks_rotation=xticks_rotation, im_kw=im_kw,
            text_kw=text_kw, title=title,
        )


def _layer_label(name):
    return "Layer" if name is None else f"Layer ({name})"
