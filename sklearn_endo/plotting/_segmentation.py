"""Predicted and true masks overlaid on their images, one panel per image."""

from __future__ import annotations

import numpy as np

from ._layer_curve import _check_matplotlib_support

__all__ = ["SegmentationDisplay"]


class SegmentationDisplay:
    """A grid of images with the predicted mask filled and the true mask outlined.

    Each panel shows one image, its predicted mask as a translucent fill
    (``pred_color``) and its true mask as a contour (``true_color``), titled with the
    image's Dice (and the figure with the mean Dice, by default). Create it with
    :meth:`from_estimator` (a fitted :class:`~sklearn_endo.segmentation.Segmenter`) or
    :meth:`from_predictions`.

    Parameters
    ----------
    images : list of ndarray (H, W, 3) or (H, W)
        The images, uint8 or floats in [0, 1]; sizes may differ.
    y_pred : list of ndarray (H, W)
        Predicted masks (bool, or label maps: every label > 0 is drawn).
    y_true : list of ndarray (H, W) or None
        True masks, or None to show predictions only.
    scores : ndarray of shape (n_images,) or None
        Per-image Dice, shown in the panel titles.

    Attributes
    ----------
    axes_ : ndarray of matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, images, y_pred, y_true=None, *, scores=None):
        self.images = list(images)
        self.y_pred = [np.asarray(m) for m in y_pred]
        self.y_true = None if y_true is None else [np.asarray(m) for m in y_true]
        self.scores = None if scores is None else np.asarray(scores, float)
        if len(self.y_pred) != len(self.images) or (
                self.y_true is not None and len(self.y_true) != len(self.images)):
            raise ValueError(
                f"images, y_pred and y_true must have one entry per image; got "
                f"{len(self.images)}, {len(self.y_pred)} and "
                f"{None if self.y_true is None else len(self.y_true)}.")

    def plot(self, axes=None, *, n_cols=4, pred_color="red", true_color="lime",
             alpha=0.4, title=True):
        """Draw the panels; returns self.

        Parameters
        ----------
        axes : array of matplotlib Axes or None
            At least one per image; None makes a grid of ``n_cols`` columns.
        title : bool or str, default=True
            True: "Predicted (fill) and true (outline) masks, mean Dice 0.83"; a
            string: that title; False: none.
        """
        _check_matplotlib_support(f"{type(self).__name__}.plot")
        import matplotlib.pyplot as plt
        from matplotlib.colors import to_rgba

        n = len(self.images)
        if axes is None:
            cols = max(1, min(n_cols, n))
            rows = -(-n // cols)
            fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.4),
                                     squeeze=False)
        axes = np.asarray(axes).ravel()
        if axes.size < n:
            raise ValueError(f"axes has {axes.size} Axes for {n} images; pass one per image.")
        fig = axes[0].figure
        fill = np.array(to_rgba(pred_color, alpha))
        for i in range(n):
            ax = axes[i]
            img = np.asarray(self.images[i])
            ax.imshow(img if img.ndim == 3 else img, cmap=None if img.ndim == 3 else "gray")
            pred = self.y_pred[i] > 0
            overlay = np.zeros(pred.shape + (4,))
            overlay[pred] = fill
            ax.imshow(overlay, interpolation="nearest")
            if self.y_true is not None and (self.y_true[i] > 0).any():
                ax.contour(self.y_true[i] > 0, levels=[0.5], colors=[true_color],
                           linewidths=1.2)
            if self.scores is not None:
                ax.set_title(f"Dice {self.scores[i]:.2f}", fontsize="small")
            ax.set_axis_off()
        for ax in axes[n:]:
            ax.set_axis_off()
        if title:
            if title is True:
                title = f"Predicted ({pred_color} fill)"
                if self.y_true is not None:
                    title += f" and true ({true_color} outline) masks"
                else:
                    title += " masks"
                if self.scores is not None:
                    title += f", mean Dice {np.mean(self.scores):.2f}"
            fig.suptitle(title)
        self.axes_, self.figure_ = axes, fig
        return self

    @classmethod
    def from_predictions(cls, images, y_true, y_pred, *, n_classes=1, **plot_kw):
        """Draw ``y_pred`` against ``y_true`` (lists or arrays of (H, W) masks)."""
        _check_matplotlib_support(f"{cls.__name__}.from_predictions")
        from ..segmentation._metrics import per_image_score

        scores = None
        if y_true is not None:
            if len(y_true) != len(y_pred):
                raise ValueError(f"y_true has {len(y_true)} masks and y_pred {len(y_pred)}; "
                                 f"pass one of each per image.")
            scores = [per_image_score(np.asarray(t), np.asarray(p), n_classes)
                      for t, p in zip(y_true, y_pred)]
        disp = cls(_as_list(images), _as_list(y_pred),
                   None if y_true is None else _as_list(y_true), scores=scores)
        return disp.plot(**plot_kw)

    @classmethod
    def from_estimator(cls, estimator, X, y=None, *, n_images=8, **plot_kw):
        """Predict the first ``n_images`` of ``X`` with a fitted segmenter and draw them
        against the masks ``y`` (as ``fit`` takes them: arrays or mask files), if given."""
        _check_matplotlib_support(f"{cls.__name__}.from_estimator")
        from .._images import check_images, load_image
        from ..ubc._masks import check_masks

        images = check_images(X, name="X")
        idx = list(range(min(int(n_images), len(images))))
        sub = images.data[idx] if images.kind == "array" else [images.data[i] for i in idx]
        pred = _as_list(estimator.predict(sub))
        shown = [load_image(images, i).permute(1, 2, 0).numpy() for i in idx]
        true = None
        if y is not None:
            masks = check_masks(y, images, n_mask_classes=estimator.n_classes_,
                                name="y", param="n_classes")
            true = [masks.get(i, pred[j].shape)[0].numpy() for j, i in enumerate(idx)]
        return cls.from_predictions(shown, true, pred, n_classes=estimator.n_classes_,
                                    **plot_kw)


def _as_list(a):
    return [a[i] for i in range(len(a))]
