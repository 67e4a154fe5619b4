"""Linear probes trained in torch: one head, or the heads of many layers at once.

Both estimators share one training loop (:func:`_train_heads`) over a padded batch of
heads: weights ``(n_heads, d_max, n_classes)``, features zero-padded to ``d_max``.
Padded inputs are zero, so padded weights get zero gradients and Adam leaves them at
zero; the loss is the sum of the per-head mean cross-entropies, and Adam is elementwise,
so every head follows exactly the trajectory it would follow alone (up to float32
rounding of the batched matmul). Each head draws its initial weights from its own
generator seeded like the one-head probe, and all heads share one minibatch order
drawn from a second generator, so ``MultiLayerLinearProbe`` reproduces
``LinearProbeClassifier`` layer by layer.

Cost per step, 25 heads of 1024 dims on 2 CPU threads (~250 us): fused Adam over the
~205k weights ~65 us (bound by its sqrt and division), the two bmm ~60 us, the gather
of the minibatch rows ~30 us, the rest small ops and Python. One head: ~60 us, almost
all per-op overhead.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .._encoders import resolve_device

__all__ = ["LinearProbeClassifier", "MultiLayerLinearProbe"]



def _check_params(est):
    """Validate the shared hyperparameters; name the parameter and the fix."""
    checks = [
        ("lr", est.lr, numbers.Real, lambda v: v > 0, "a positive float such as 1e-4"),
        ("max_epochs", est.max_epochs, numbers.Integral, lambda v: v >= 1, "an int >= 1"),
        ("batch_size", est.batch_size, numbers.Integral, lambda v: v >= 1, "an int >= 1"),
        ("weight_decay", est.weight_decay, numbers.Real, lambda v: v >= 0, "a float >= 0"),
    ]
    for name, value, kind, ok, fix in checks:
        if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
            raise ValueError(f"{name}={value!r} is invalid for {type(est).__name__}; use {fix}.")
    if not isinstance(est.standardize, (bool, np.bool_)):
        raise ValueError(f"standardize={est.standardize!r} must be True or False.")


def _draw_seeds(random_state):
    """Two seeds: one for the initial weights, one for the minibatch order."""
    rng = check_random_state(random_state)
    init_seed, shuffle_seed = rng.randint(0, 2**31 - 1, size=2)
    return int(init_seed), int(shuffle_seed)


def _init_head(n_features, n_classes, init_seed):
    """nn.Linear's default init, U(-1/sqrt(d), 1/sqrt(d)), from a local generator."""
    gen = torch.Generator().manual_seed(init_seed)
    bound = 1.0 / np.sqrt(n_features)
    weight = (torch.rand(n_classes, n_features, generator=gen, dtype=torch.float32) * 2 - 1) * bound
    bias = (torch.rand(n_classes, generator=gen, dtype=torch.float32) * 2 - 1) * bound
    return weight, bias


def _standardize_stats(X, standardize):
    if not standardize:
        return None, None
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    return mean, scale


def _train_heads(Xs, y_enc, n_classes, *, lr, max_epochs, batch_size, weight_decay,
                 init_seed, shuffle_seed, device, verbose=False):
    """Train one softmax head per feature matrix in one batched model.

    Args:
        Xs: list of float arrays (n_samples, d_h), already standardized if wanted.
        y_enc: int array (n_samples,) of encoded labels in [0, n_classes).

    Returns:
        list of (weight (n_classes, d_h), bias (n_classes,)) float32 numpy arrays and the
        per-epoch mean training loss summed over heads.

    The step allocates nothing: the minibatch is gathered into a preallocated buffer,
    the hand-written gradient is written into one flat gradient tensor, and one fused
    Adam step updates one flat tensor holding all weights and biases (calling the
    kernel that ``torch.optim.Adam(fused=True)`` calls, without its per-step Python
    bookkeeping). Allocating the ~1 MB minibatch and gradient of 25 heads at every
    step, and the optimizer's bookkeeping, cost more than the arithmetic.
    """
    n_heads = len(Xs)
    n_samples = Xs[0].shape[0]
    dims = [X.shape[1] for X in Xs]
    d_max = max(dims)
    n_w = n_heads * n_classes * d_max

    # (n_samples, n_heads, d_max): the minibatch of all heads is a gather of
    # `batch` contiguous rows; bmm reads it through a (n_heads, batch, d_max) view
    feats = torch.empty(n_samples, n_heads, d_max, dtype=torch.float32)
    # all weights (n_heads, n_classes, d_max), nn.Linear's layout, then all biases,
    # in one flat tensor, so that Adam is one fused kernel over one tensor
    params = torch.zeros(n_w + n_heads * n_classes, dtype=torch.float32)
    weight = params[:n_w].view(n_heads, n_classes, d_max)
    bias = params[n_w:].view(n_heads, n_classes)
    for h, X in enumerate(Xs):
        feats[:, h, : dims[h]] = torch.as_tensor(np.asarray(X, dtype=np.float32))
        feats[:, h, dims[h] :] = 0.0
        w, b = _init_head(dims[h], n_classes, init_seed)
        weight[h, :, : dims[h]] = w
        bias[h] = b
    feats = feats.to(device)
    target = torch.as_tensor(y_enc, dtype=torch.long, device=device)
    params = params.to(device)
    weight = params[:n_w].view(n_heads, n_classes, d_max)
    bias = params[n_w:].view(n_heads, n_classes)
    grads = torch.zeros_like(params)
    grad_weight = grads[:n_w].view(n_heads, n_classes, d_max)
    grad_bias = grads[n_w:].view(n_heads, n_classes)
    adam_step = _make_adam_step(params, grads, lr=lr, weight_decay=weight_decay)

    bmax = min(batch_size, n_samples)
    x_buf = torch.empty(bmax, n_heads, d_max, device=device)
    # logits as (n_heads, n_classes, batch): W @ x^T reads both operands row-major, the
    # softmax over dim 1 is ~3x faster than over a last dim of n_classes, and the
    # gradient (n_heads, n_classes, batch) is the plain left operand of G @ x
    logits_buf = torch.empty(n_heads, n_classes, bmax, device=device)
    minus_one = torch.full((n_heads, 1, bmax), -1.0, device=device)
    bias_b = bias.unsqueeze(2)  # (n_heads, n_classes, 1), broadcast over the batch
    starts = list(range(0, n_samples, batch_size))
    n_batches = len(starts)
    # per-step sum over heads and samples of log p(target); summed once per epoch
    step_loss = torch.zeros(n_batches, dtype=torch.float32, device=device)
    shuffle_gen = torch.Generator().manual_seed(shuffle_seed)
    history = []
    for epoch in range(max_epochs):
        order = torch.randperm(n_samples, generator=shuffle_gen).to(device)
        target_epoch = target[order]
        for i, start in enumerate(starts):
            idx = order[start : start + batch_size]
            b = idx.shape[0]
            xb = x_buf[:b]
            torch.index_select(feats, 0, idx, out=xb)
            x = xb.transpose(0, 1)  # (n_heads, b, d_max)
            t = target_epoch[start : start + b].expand(n_heads, 1, b)
            logits = logits_buf[:, :, :b]
            torch.baddbmm(bias_b, weight, x.transpose(1, 2), out=logits)
            # loss = sum over heads of the per-head mean cross-entropy. Its gradient is
            # written out, (softmax - onehot) / batch: autograd's bmm backward on CPU
            # was ~10x slower than these two bmm calls.
            log_p = torch.log_softmax(logits, dim=1)
            torch.sum(log_p.gather(1, t), dim=(0, 1, 2), out=step_loss[i])
            grad_logits = log_p.exp_()
            grad_logits.scatter_add_(1, t, minus_one[:, :, :b])
            grad_logits /= b
            torch.bmm(grad_logits, x, out=grad_weight)
            torch.sum(grad_logits, dim=2, out=grad_bias)
            adam_step()
        history.append(-step_loss.double().sum().item() / n_samples)
        if verbose:
            label = "1 head" if n_heads == 1 else f"{n_heads} heads"
            print(f"[{label}] epoch {epoch + 1}/{max_epochs} train loss {history[-1]:.4f}")

    weight = weight.cpu().numpy()
    bias = bias.cpu().numpy()
    return [(weight[h, :, : dims[h]].copy(), bias[h].copy()) for h in range(n_heads)], history


def _make_adam_step(param, grad, lr, weight_decay):
    """A function doing one Adam step on the flat ``param`` with gradient ``grad``.

    Prefers the fused kernel behind ``torch.optim.Adam(fused=True)`` called directly
    (same arithmetic, without the optimizer's per-step bookkeeping); falls back to
    ``torch.optim.Adam`` where the build lacks it.
    """
    fused = getattr(torch, "_fused_adam_", None)
    if fused is not None:
        exp_avg = torch.zeros_like(param)
        exp_avg_sq = torch.zeros_like(param)
        step = torch.zeros((), dtype=torch.float32, device=param.device)
        lists = ([param], [grad], [exp_avg], [exp_avg_sq], [], [step])
        kwargs = dict(amsgrad=False, lr=lr, beta1=0.9, beta2=0.999,
                      weight_decay=weight_decay, eps=1e-8, maximize=False)

        def adam_step():
            step.add_(1)
            fused(*lists, **kwargs)

        try:  # check that the kernel runs on this device, on a throwaway tensor
            probe = [torch.zeros(1, device=param.device) for _ in range(4)]
            fused(*([t] for t in probe), [], [step.clone().add_(1)], **kwargs)
            return adam_step
        except (RuntimeError, TypeError, NotImplementedError):
            pass
    param.grad = grad
    try:
        optimizer = torch.optim.Adam([param], lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.Adam([param], lr=lr, weight_decay=weight_decay)
    return optimizer.step


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class LinearProbeClassifier(ClassifierMixin, BaseEstimator):
    """Softmax linear probe trained with Adam on frozen features.

    The defaults are the recipe of the layer-wise probing study: Adam, learning rate
    1e-4, 30 epochs, minibatches of 8, cross-entropy loss, ``nn.Linear``'s default
    initialisation. Prediction runs in numpy (float64) from ``coef_`` and
    ``intercept_``, so it is deterministic and independent of the batch size.

    Parameters
    ----------
    lr : float, default=1e-4
        Adam learning rate.
    max_epochs : int, default=30
        Passes over the training data.
    batch_size : int, default=8
        Minibatch size; the last minibatch of an epoch may be smaller.
    weight_decay : float, default=0.0
        Adam's L2 penalty.
    standardize : bool, default=False
        Scale each feature to zero mean and unit variance (statistics from the training
        data) before training. Off by default to follow the recipe; turn it on when the
        feature scales differ a lot, e.g. when comparing early and late layers.
    device : str, default="cpu"
        Torch device for training, or ``"auto"`` (cuda, then mps, then cpu). A linear head
        on minibatches of 8 is usually faster on the CPU than the kernel-launch cost.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights and the minibatch order through local torch
        generators; the global torch and numpy RNG states are not touched.
    verbose : bool, default=False
        Print the training loss after every epoch.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    coef_ : ndarray of shape (n_classes, n_features)
        Weights in the space of the (standardized, if enabled) input features.
    intercept_ : ndarray of shape (n_classes,)
        Biases.
    mean_, scale_ : ndarray of shape (n_features,) or None
        Standardization statistics when ``standardize=True``.
    loss_curve_ : list of float
        Mean training cross-entropy per epoch.
    n_features_in_ : int
        Number of features seen during fit.

    See Also
    --------
    MultiLayerLinearProbe : the same probe for many layers at once.
    sklearn.linear_model.LogisticRegression : a convex alternative probe.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.probes import LinearProbeClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 5)); y = (X[:, 0] > 0).astype(int)
    >>> clf = LinearProbeClassifier(lr=1e-2, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    def __init__(self, lr=1e-4, max_epochs=30, batch_size=8, weight_decay=0.0,
                 standardize=False, device="cpu", random_state=None, verbose=False):
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y):
        """Train the probe on features ``X`` of shape (n_samples, n_features) and labels ``y``."""
        _check_params(self)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data; "
                f"got one class, {self.classes_.tolist()}."
            )
        self.mean_, self.scale_ = _standardize_stats(X, self.standardize)
        Xs = X if self.mean_ is None else (X - self.mean_) / self.scale_
        init_seed, shuffle_seed = _draw_seeds(self.random_state)
        heads, self.loss_curve_ = _train_heads(
            [Xs], encoder.transform(y), len(self.classes_), lr=self.lr,
            max_epochs=self.max_epochs, batch_size=self.batch_size,
            weight_decay=self.weight_decay, init_seed=init_seed,
            shuffle_seed=shuffle_seed, device=resolve_device(self.device),
            verbose=self.verbose,
        )
        weight, bias = heads[0]
        self.coef_ = weight
        self.intercept_ = bias
        return self

    def decision_function(self, X):
        """Logits (n_samples, n_classes); for two classes the logit difference (n_samples,)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if self.mean_ is not None:
            X = (X - self.mean_) / self.scale_
        scores = X @ self.coef_.T.astype(np.float64) + self.intercept_.astype(np.float64)
        if len(self.classes_) == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits), columns in ``classes_`` order."""
        check_is_fitted(self)
        scores = self.decision_function(X)
        if scores.ndim == 1:
            scores = np.column_stack([np.zeros_like(scores), scores])
        return _softmax(scores)

    def predict(self, X):
        """Most probable class per sample."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


class MultiLayerLinearProbe(BaseEstimator):
    """Linear probes for many layers trained together in one batched model.

    One weight tensor holds a head per layer; each optimisation step runs one forward
    and one backward pass for all heads on the same minibatch, as DINOv2's linear
    evaluation trains its grid of heads. Each head gets the initial weights and the
    minibatches that ``LinearProbeClassifier`` with the same parameters and
    ``random_state`` would get, so per-layer results match training the probes one by
    one: predicted probabilities agree to ~1e-6 (tested at ``atol=1e-5``); only the
    float32 rounding of the batched matmul differs.

    Parameters
    ----------
    lr, max_epochs, batch_size, weight_decay, standardize, device, random_state, verbose
        As in :class:`LinearProbeClassifier`, shared by all heads.

    Attributes
    ----------
    estimators_ : list of LinearProbeClassifier
        One fitted probe per layer, usable on its own.
    keys_ : list
        The layer keys when ``fit`` got a dict, else ``range(n_heads)``.
    classes_ : ndarray of shape (n_classes,)
    loss_curve_ : list of float
        Per epoch, the sum over heads of the mean training cross-entropy.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.probes import MultiLayerLinearProbe
    >>> rng = np.random.RandomState(0)
    >>> feats = {3: rng.normal(size=(30, 4)), 7: rng.normal(size=(30, 6))}
    >>> y = rng.randint(0, 3, size=30)
    >>> probe = MultiLayerLinearProbe(random_state=0).fit(feats, y)
    >>> [p.shape for p in probe.predict_proba(feats)]
    [(30, 3), (30, 3)]
    """

    def __init__(self, lr=1e-4, max_epochs=30, batch_size=8, weight_decay=0.0,
                 standardize=False, device="cpu", random_state=None, verbose=False):
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _split_inputs(self, Xs, reset):
        if isinstance(Xs, dict):
            keys, arrays = list(Xs.keys()), list(Xs.values())
        elif isinstance(Xs, (list, tuple)):
            keys, arrays = list(range(len(Xs))), list(Xs)
        else:
            raise TypeError(
                "Xs must be a list of feature arrays (one per layer) or a dict "
                f"{{layer: array}}; got {type(Xs).__name__}. For a single feature matrix "
                "use LinearProbeClassifier."
            )
        if not arrays:
            raise ValueError("Xs is empty; pass at least one feature array.")
        # float32 stays float32 (training casts to float32 and prediction to float64
        # anyway, both exactly): casting 25 layers to float64 per fold cost more than
        # a tenth of a sweep
        arrays = [
            check_array(a, dtype=(np.float64, np.float32), input_name=f"Xs[{k!r}]")
            for k, a in zip(keys, arrays)
        ]
        n = {a.shape[0] for a in arrays}
        if len(n) != 1:
            raise ValueError(
                f"All feature arrays in Xs must have the same number of samples; got {sorted(n)}."
            )
        if not reset:
            if keys != self.keys_:
                raise ValueError(f"Xs has layers {keys}, but the probe was fitted on {self.keys_}.")
        return keys, arrays

    def fit(self, Xs, y):
        """Fit one head per feature array in ``Xs`` (list, or dict keyed by layer)."""
        _check_params(self)
        keys, arrays = self._split_inputs(Xs, reset=True)
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != arrays[0].shape[0]:
            raise ValueError(
                f"y must be 1-d with one label per sample ({arrays[0].shape[0]}); "
                f"got shape {y.shape}."
            )
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(
                "MultiLayerLinearProbe needs samples of at least 2 classes in the data; "
                f"got one class, {classes.tolist()}."
            )
        if self.standardize:  # statistics in float64, as LinearProbeClassifier
            arrays = [a.astype(np.float64, copy=False) for a in arrays]
        stats = [_standardize_stats(a, self.standardize) for a in arrays]
        inputs = [a if m is None else (a - m) / s for a, (m, s) in zip(arrays, stats)]
        init_seed, shuffle_seed = _draw_seeds(self.random_state)
        heads, self.loss_curve_ = _train_heads(
            inputs, encoder.transform(y), len(classes), lr=self.lr,
            max_epochs=self.max_epochs, batch_size=self.batch_size,
            weight_decay=self.weight_decay, init_seed=init_seed, shuffle_seed=shuffle_seed,
            device=resolve_device(self.device), verbose=self.verbose,
        )
        params = self.get_params()
        self.estimators_ = []
        for (weight, bias), (mean, scale), a in zip(heads, stats, arrays):
            est = LinearProbeClassifier(**params)
            est.classes_ = classes
            est.coef_ = weight
            est.intercept_ = bias
            est.mean_, est.scale_ = mean, scale
            est.n_features_in_ = a.shape[1]
            est.loss_curve_ = None  # only the summed curve exists for batched training
            self.estimators_.append(est)
        self.keys_ = keys
        self.classes_ = classes
        return self

    def predict_proba(self, Xs):
        """List of (n_samples, n_classes) probabilities, one per layer, in ``keys_`` order."""
        check_is_fitted(self)
        _, arrays = self._split_inputs(Xs, reset=False)
        return [est.predict_proba(a) for est, a in zip(self.estimators_, arrays)]

    def predict(self, Xs):
        """List of predicted labels, one array per layer."""
        check_is_fitted(self)
        _, arrays = self._split_inputs(Xs, reset=False)
        return [est.predict(a) for est, a in zip(self.estimators_, arrays)]

    def score(self, Xs, y):
        """List of per-layer accuracies."""
        return [float(np.mean(p == np.asarray(y))) for p in self.predict(Xs)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Xs is a list, or a dict {layer: array}, of 2-D feature arrays with one row per
        # sample and a width per layer; never one table, nor one 3-D array
        tags.input_tags.two_d_array = False
        tags.input_tags.dict = True
        tags.target_tags.required = True
        tags.non_deterministic = self.random_state is None
        return tags
