"""k-nearest-neighbour probe on cosine similarity, with DINO's weighted vote."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["KNNProbeClassifier"]

_WEIGHTINGS = ("dino", "uniform", "distance")


def _l2_normalize(X):
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, np.finfo(X.dtype).tiny)


class KNNProbeClassifier(ClassifierMixin, BaseEstimator):
    """k-NN probe: cosine similarity on L2-normalised features and a weighted vote.

    With ``weighting="dino"`` each of the ``k`` nearest training samples votes for its
    class with weight ``exp(similarity / temperature)``, as in the k-NN evaluation of
    DINO (Caron et al., 2021; k=20, T=0.07); the votes are normalised to probabilities.
    ``"uniform"`` gives every neighbour weight 1 and ``"distance"`` weight
    ``1 / (1 - similarity)`` (sklearn's ``weights="distance"`` with the cosine
    distance: neighbours at distance 0 take all the weight).

    Parameters
    ----------
    n_neighbors : int, default=20
        Number of neighbours; clipped to the number of training samples.
    temperature : float, default=0.07
        Temperature of the ``"dino"`` weighting.
    weighting : {"dino", "uniform", "distance"}, default="dino"
    batch_size : int, default=1024
        Query rows per similarity block (bounds memory at batch_size x n_train).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    n_neighbors_ : int
        The number of neighbours actually used.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.probes import KNNProbeClassifier
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> KNNProbeClassifier(n_neighbors=2).fit(X, [0, 0, 1, 1]).predict([[1.0, 0.2]])
    array([0])
    """

    def __init__(self, n_neighbors=20, temperature=0.07, weighting="dino", batch_size=1024):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.weighting = weighting
        self.batch_size = batch_size

    def _check_params(self):
        k = self.n_neighbors
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"n_neighbors={k!r} is invalid; use an int >= 1.")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not t > 0:
            raise ValueError(f"temperature={t!r} is invalid; use a positive float such as 0.07.")
        if self.weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting={self.weighting!r} is invalid; use one of {_WEIGHTINGS}.")
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1:
            raise ValueError(f"batch_size={b!r} is invalid; use an int >= 1.")

    def fit(self, X, y):
        """Store the L2-normalised training features and the labels."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        self._train = _l2_normalize(X)
        self._train_labels = encoder.transform(y)
        self.n_neighbors_ = int(min(self.n_neighbors, X.shape[0]))
        return self

    def _neighbors(self, X, k):
        """Top-k similarities (descending) and neighbour indices, computed blockwise."""
        Q = _l2_normalize(X)
        sims = np.empty((Q.shape[0], k))
        idx = np.empty((Q.shape[0], k), dtype=np.intp)
        for start in range(0, Q.shape[0], self.batch_size):
            S = Q[start : start + self.batch_size] @ self._train.T
            # stable sort so ties resolve to the lower training index, like sklearn
            top = np.argsort(-S, axis=1, kind="stable")[:, :k]
            idx[start : start + len(S)] = top
            sims[start : start + len(S)] = np.take_along_axis(S, top, axis=1)
        return sims, idx

    def _vote(self, sims, idx, k):
        sims, idx = sims[:, :k], idx[:, :k]
        if self.weighting == "dino":
            # subtract the row max before exp: same normalised votes, no overflow at small T
            w = np.exp((sims - sims[:, :1]) / self.temperature)
        elif self.weighting == "uniform":
            w = np.ones_like(sims)
        else:
            dist = np.clip(1.0 - sims, 0.0, None)
            exact = dist <= 1e-12
            with np.errstate(divide="ignore"):
                w = np.where(exact.any(axis=1, keepdims=True), exact.astype(float), 1.0 / dist)
        labels = self._train_labels[idx]
        proba = np.zeros((sims.shape[0], len(self.classes_)))
        for c in range(len(self.classes_)):
            proba[:, c] = np.sum(w * (labels == c), axis=1)
        proba /= proba.sum(axis=1, keepdims=True)
        return proba

    def predict_proba(self, X):
        """Normalised weighted votes, columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        sims, idx = self._neighbors(X, self.n_neighbors_)
        return self._vote(sims, idx, self.n_neighbors_)

    def predict_proba_for_k(self, X, ks):
        """Probabilities for several ``k`` from one top-``max(ks)`` neighbour search.

        Returns a dict ``{k: ndarray (n_samples, n_classes)}``; each ``k`` is clipped to
        the number of training samples, like ``n_neighbors``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        ks = [int(k) for k in np.atleast_1d(ks)]
        if not ks or min(ks) < 1:
            raise ValueError(f"ks={ks!r} must be a non-empty list of ints >= 1.")
        n_train = self._train.shape[0]
        sims, idx = self._neighbors(X, min(max(ks), n_train))
        return {k: self._vote(sims, idx, min(k, n_train)) for k in ks}

    def predict(self, X):
        """Class with the largest weighted vote."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
