"""What ``UBCClassifier`` trains on: the image/mask dataset, labels and sample weights."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.multiclass import check_classification_targets

from .._images import load_resized
from .._skorch import check_sample_weight
from ._loss import UNLABELED

__all__ = ["UBCDataset", "check_sample_weight", "encode_labels"]


class UBCDataset(torch.utils.data.Dataset):
    """Image ``i`` resized to ``size``, with its target ``{"y", "mask", "has_mask"}``.

    Images (and mask files) are decoded on access, so memory is bounded by the batch.
    Without ``y`` and ``masks`` (prediction) the target is a placeholder 0; with masks
    only (segmentation) it has no ``"y"``. With ``sample_weight`` the target also holds
    ``"weight"``.
    """

    def __init__(self, images, size, y=None, masks=None, sample_weight=None):
        self.images = images
        self.size = tuple(size)
        self.y = y
        self.masks = masks
        self.sample_weight = sample_weight

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = load_resized(self.images, i, self.size, interpolation="bilinear")
        if self.y is None and self.masks is None:
            return x, 0
        mask, has = self.masks.get(i, self.size)
        target = {"mask": mask, "has_mask": torch.tensor(has)}
        if self.y is not None:
            target["y"] = torch.tensor(self.y[i], dtype=torch.int64)
        if self.sample_weight is not None:
            target["weight"] = torch.tensor(self.sample_weight[i], dtype=torch.float32)
        return x, target





def encode_labels(y, n, classes, unlabeled):
    """Labels as indices into ``classes_`` (``UNLABELED`` for unlabeled samples)
    and ``classes_`` (``classes``, or the labels seen)."""
    if y is None:
        raise ValueError("y is None; UBCClassifier needs labels (use -1 for unlabeled).")
    y = np.asarray(y, dtype=object) if not isinstance(y, np.ndarray) else y
    y = y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or len(y) != n:
        raise ValueError(
            f"y has shape {y.shape} but X has {n} images; pass one label per image."
        )
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError(
            f"y contains NaN; mark unlabeled samples with unlabeled={unlabeled!r} "
            f"(or None)."
        )
    unl = unlabeled
    unlabeled = np.array([v is None or (unl is not None and _same(v, unl)) for v in y])
    labelled = y[~unlabeled]
    if labelled.dtype == object:
        labelled = np.asarray(labelled.tolist())
    if labelled.size:
        # a float target such as [0.3, 1.7, ...] is a regression target, not
        # n_samples classes: sklearn's "Unknown label type: continuous" ValueError
        check_classification_targets(labelled)
    given = classes
    if given is not None:
        classes_ = np.asarray(given)
        unseen = np.setdiff1d(labelled, classes_)
        if unseen.size:
            raise ValueError(
                f"y has labels {unseen[:5].tolist()} that are not in classes="
                f"{classes_.tolist()}."
            )
    else:
        classes_ = np.unique(labelled)
        if classes_.size == 1:
            raise ValueError(
                f"y has a single class {classes_[0]!r} among its labelled samples; a "
                f"classifier needs at least 2 (or pass classes=[...])."
            )
    y_enc = np.full(n, UNLABELED, dtype=np.int64)
    y_enc[~unlabeled] = np.searchsorted(classes_, labelled)
    return y_enc, classes_



def _same(value, sentinel):
    try:
        return bool(value == sentinel) and type(value) is not bool
    except (TypeError, ValueError):
        return False
