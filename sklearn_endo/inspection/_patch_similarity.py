"""Spatial variance of patch-token cosine-similarity maps, per layer and class."""

from __future__ import annotations

import numpy as np
from sklearn.utils import Bunch

__all__ = ["patch_similarity_variance"]

_REFERENCES = ("mean", "cls")


def _as_tokens(a, name, num_prefix_tokens):
    a = np.asarray(a)
    if a.ndim == 4:
        # timm forward_intermediates' default NCHW maps: (n, dim, H, W) -> (n, H*W, dim)
        if num_prefix_tokens:
            raise ValueError(f"{name} is a (n, dim, H, W) map without prefix tokens; use "
                             "num_prefix_tokens=0 and reference='mean'.")
        a = a.reshape(a.shape[0], a.shape[1], -1).transpose(0, 2, 1)
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (n_samples, n_tokens, dim) or "
                         f"(n_samples, dim, H, W); got {a.shape}.")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf.")
    if a.shape[1] - num_prefix_tokens < 2:
        raise ValueError(f"{name} has {a.shape[1]} tokens with num_prefix_tokens="
                         f"{num_prefix_tokens}: fewer than 2 patch tokens, no spatial variance.")
    return a.astype(np.float64, copy=False)


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def patch_similarity_variance(tokens, y, *, reference="mean", num_prefix_tokens=0,
                              as_frame=False):
    """Spatial variance of patch-token cosine-similarity maps, per layer and class.

    For each image and layer, the cosine similarity of every patch token to a
    reference token (the mean patch token, or the class token) forms a map over the
    patch grid; its variance over the patches measures how much the layer separates
    regions of the image (a map close to uniform has variance ~0). The per-image
    variances are then averaged per class (mean and standard deviation across that
    class's images).

    Token arrays come from the encoder, e.g. with timm::

        final, inter = model.forward_intermediates(x, indices=[3, 6, 9],
                                                   output_fmt="NLC",
                                                   return_prefix_tokens=False)
        tokens = {3: inter[0].numpy(), 6: inter[1].numpy(), 9: inter[2].numpy()}

    or ``output_fmt="NCHW"`` maps of shape (n, dim, H, W), accepted as they are. To
    compare to the class token, put the prefix tokens in front of the patches and set
    ``num_prefix_tokens=model.num_prefix_tokens``::

        _, inter = model.forward_intermediates(x, indices=[6], output_fmt="NLC",
                                               return_prefix_tokens=True)
        patches, prefix = inter[0]
        tokens = {6: torch.cat([prefix, patches], dim=1).numpy()}
        patch_similarity_variance(tokens, y, reference="cls", num_prefix_tokens=1)

    Parameters
    ----------
    tokens : dict of int -> ndarray, list of ndarray, or ndarray
        Per-layer token arrays of shape (n_samples, n_tokens, dim) (or NCHW maps); a
        single 3-d array is one layer (key 0).
    y : array-like of shape (n_samples,)
    reference : {"mean", "cls"}, default="mean"
        Compare each patch to the mean patch token, or to the first prefix token.
    num_prefix_tokens : int, default=0
        Leading non-patch tokens (class and register tokens), excluded from the map.
    as_frame : bool, default=False
        Return a long pandas DataFrame (layer, class, mean, std, n) instead.

    Returns
    -------
    Bunch
        ``layers`` (list), ``classes`` (ndarray), ``mean`` and ``std`` of shape
        (n_layers, n_classes), ``per_image`` of shape (n_layers, n_samples).
    """
    if reference not in _REFERENCES:
        raise ValueError(f"reference={reference!r} is invalid; use one of {_REFERENCES}.")
    if reference == "cls" and num_prefix_tokens < 1:
        raise ValueError("reference='cls' needs the class token in front of the patches: set "
                         "num_prefix_tokens (e.g. model.num_prefix_tokens, 1 for a ViT).")
    if isinstance(tokens, dict):
        layers, arrays = list(tokens), list(tokens.values())
    elif isinstance(tokens, (list, tuple)):
        layers, arrays = list(range(len(tokens))), list(tokens)
    else:
        layers, arrays = [0], [tokens]
    if not arrays:
        raise ValueError("tokens is empty; pass at least one layer's tokens.")
    y = np.asarray(y)
    per_image = []
    for layer, a in zip(layers, arrays):
        a = _as_tokens(a, f"tokens[{layer!r}]", num_prefix_tokens)
        if a.shape[0] != y.shape[0] or y.ndim != 1:
            raise ValueError(f"tokens[{layer!r}] has {a.shape[0]} samples but y has shape "
                             f"{y.shape}; pass one label per image.")
        patches = a[:, num_prefix_tokens:]
        ref = a[:, 0] if reference == "cls" else patches.mean(axis=1)
        sim = np.einsum("npd,nd->np", _unit(patches), _unit(ref))
        per_image.append(sim.var(axis=1))
    per_image = np.asarray(per_image)
    classes = np.unique(y)
    mean = np.stack([per_image[:, y == c].mean(axis=1) for c in classes], axis=1)
    std = np.stack([per_image[:, y == c].std(axis=1) for c in classes], axis=1)
    if as_frame:
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("as_frame=True requires pandas (pip install pandas).") from exc
        counts = [int(np.sum(y == c)) for c in classes]
        return pd.DataFrame([
            {"layer": layer, "class": c, "mean": mean[i, j], "std": std[i, j], "n": counts[j]}
            for i, layer in enumerate(layers) for j, c in enumerate(classes)
        ])
    return Bunch(layers=layers, classes=classes, mean=mean, std=std, per_image=per_image)
