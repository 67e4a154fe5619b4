"""Trainable vs frozen parameter counts of a fitted pipeline (the "trainable params" column)."""

from __future__ import annotations

import numpy as np
from sklearn.utils import Bunch
from sklearn.utils.validation import check_is_fitted

__all__ = ["count_trainable_parameters"]


def _torch_counts(module, frozen):
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        if p.requires_grad and not frozen:
            trainable += p.numel()
    return trainable, total


def _is_torch_module(obj):
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, torch.nn.Module)


def _count_one(est):
    """(trainable, total) of one fitted step."""
    check_is_fitted(est)
    if hasattr(est, "best_estimator_"):  # a fitted search
        return _count_one(est.best_estimator_)
    if hasattr(est, "layer_features"):
        # a LayerFeatureTransformer: the encoder is frozen by design
        module = getattr(est, "encoder_", None)
        return (0, _torch_counts(module, frozen=True)[1]) if _is_torch_module(module) else (0, 0)
    module = getattr(est, "module_", None)  # skorch nets (UBCClassifier, fine-tuning)
    if _is_torch_module(module):
        return _torch_counts(module, frozen=False)
    if hasattr(est, "estimators_") and isinstance(est.estimators_, list) \
            and not hasattr(est, "coef_"):
        counts = [_count_one(e) for e in est.estimators_]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    if hasattr(est, "coef_"):
        n = np.size(est.coef_) + np.size(getattr(est, "intercept_", 0) if
                                         getattr(est, "fit_intercept", True) else 0)
        return int(n), int(n)
    # fitted statistics (scalers, PCA) and non-parametric probes (k-NN) are not trained
    return 0, 0


def count_trainable_parameters(estimator):
    """Count trainable and total parameters of a fitted estimator or pipeline.

    Counting rules: a ``LayerFeatureTransformer``'s encoder is frozen (0 trainable, all
    of its weights in ``total``); torch modules of skorch nets (``module_``) count their
    ``requires_grad`` parameters as trainable; linear models count ``coef_`` and
    ``intercept_`` (sklearn's LogisticRegression, :class:`LinearProbeClassifier`);
    scalers, PCA and k-NN probes have no trained parameters. A fitted search counts
    its ``best_estimator_``. A ViT-L (1024-d) with an 8-class linear probe gives
    8,200 trainable parameters, the study's "0.008 M".

    Parameters
    ----------
    estimator : fitted estimator, Pipeline or search

    Returns
    -------
    Bunch
        ``trainable``, ``frozen``, ``total`` (ints) and ``steps``: a list of
        ``(name, trainable, total)`` per pipeline step.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_endo.inspection import count_trainable_parameters
    >>> clf = LogisticRegression().fit(np.eye(4), [0, 1, 2, 3])
    >>> count_trainable_parameters(clf).trainable
    20
    """
    steps = getattr(estimator, "steps", None)
    if steps is None and hasattr(estimator, "best_estimator_"):
        return count_trainable_parameters(estimator.best_estimator_)
    if steps is None:
        steps = [(type(estimator).__name__, estimator)]
    rows = []
    for name, step in steps:
        if step is None or step == "passthrough":
            continue
        if hasattr(step, "steps"):
            sub = count_trainable_parameters(step)
            rows.append((name, sub.trainable, sub.total))
        else:
            rows.append((name, *_count_one(step)))
    trainable = sum(r[1] for r in rows)
    total = sum(r[2] for r in rows)
    return Bunch(trainable=int(trainable), frozen=int(total - trainable), total=int(total),
                 steps=rows)
