"""Full-batch L-BFGS for many L2-penalised softmax heads at once (``solver="lbfgs"``).

Each head minimises the objective of scikit-learn's ``LogisticRegression`` with
``penalty="l2"`` (the intercept not penalised)::

    mean_i CE(x_i W^T + b, y_i) + ||W||^2 / (2 C n_train)

For two classes a head has one free row (the first class's logit is fixed at 0), as
scikit-learn's binary model; for more, one row per class (the multinomial model). The
heads of all layers and folds are one flat parameter tensor and one
``torch.optim.LBFGS`` minimises the sum of their objectives. The heads share no
parameters, so the sum's gradient is the heads' gradients side by side and its
minimiser is every head's own minimiser: the result is each head's fit, to the solver's
tolerance (the heads share the line search, so the path differs from separate fits, not
the optimum, and takes more iterations than the slowest head alone). The solver stops
once the largest gradient entry of every head, in the standardized coordinates below,
is at most ``tol`` (as scikit-learn's ``gtol``), and then checks each head. The shared
line search can stall on a mix of well and badly conditioned heads, so a head left
above ``tol`` is solved again alone (as scikit-learn would fit it); only a head still
above ``tol`` after that raises a ConvergenceWarning.

Layout: features ``(n_layers, n_samples, d_max + 1)`` (zero-padded; the last column is 1
so the bias is the last weight row), weights ``(n_layers, d_max + 1, n_folds * k)``, so a
function evaluation is two bmm over all samples. Folds are not gathered: each fold
weighs its training rows by ``1 / n_train`` and the others by 0, so all folds read the
same features (the cost of the test rows, 1 / n_folds of the arithmetic, buys no copy).
Padded feature columns are zero and start at zero, so their weights stay zero.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

# scipy's default number of L-BFGS correction pairs (scikit-learn uses it); torch's
# default of 100 would keep 200 copies of all heads' weights
HISTORY_SIZE = 10


def train_heads_lbfgs(Xs, y_enc, n_classes, *, C, max_iter, tol, device, folds=None,
                      verbose=False, joint_max_iter=None):
    """Fit one L2-penalised softmax head per (fold, feature matrix) with one L-BFGS.

    Args:
        Xs: list of float arrays (n_samples, d_l), one per layer.
        y_enc: int array (n_samples,) of labels in [0, n_classes).
        C: inverse penalty strength, as ``LogisticRegression(C=...)``.
        max_iter: L-BFGS iterations at most.
        tol: stop once every gradient entry is at most ``tol`` in absolute value.
        folds: None (all rows) or a list of int arrays of training rows (any sizes).
        joint_max_iter: iterations of the joint solve (``max_iter`` if None). Heads it
            leaves above ``tol`` are solved again one by one with ``max_iter``; only
            heads still above ``tol`` then raise a ConvergenceWarning.

    Returns:
        heads[f][l] = (weight (n_classes, d_l), bias (n_classes,)) float64 arrays
        (float32 on MPS);
        curves[f] = the objective of fold f (summed over layers) at each function
        evaluation, and the number of L-BFGS iterations run.
    """
    n_layers = len(Xs)
    folds = [np.arange(Xs[0].shape[0])] if folds is None else [np.asarray(f) for f in folds]
    n_folds = len(folds)
    heads, curves, n_iter, worst, mm32 = _solve(
        Xs, y_enc, n_classes, C=C, max_iter=max_iter if joint_max_iter is None
        else joint_max_iter, tol=tol, device=device, folds=folds)
    reached_max = n_iter >= (max_iter if joint_max_iter is None else joint_max_iter)
    bad = list(zip(*np.nonzero(worst > tol)))
    if bad and n_layers * n_folds > 1:
        # The heads share the joint solve's line search, which may stall on a mix of
        # badly and well conditioned heads; a head left unconverged is solved again
        # alone, as LogisticRegression would, so that no head is worse than its own fit.
        reached_max = False
        for layer, f in bad:
            sub, _, sub_iter, sub_worst, _ = _solve(
                [Xs[layer]], y_enc, n_classes, C=C, max_iter=max_iter, tol=tol,
                device=device, folds=[folds[f]])
            heads[f][layer] = sub[0][0]
            worst[layer, f] = sub_worst[0, 0]
            reached_max |= sub_iter >= max_iter
        if verbose:
            print(f"[lbfgs] {len(bad)} head(s) left by the joint solve were solved alone")
    if (worst > tol).any():
        hint = (" Pass float64 features for tol below ~1e-5 (the matmuls run in the "
                "features' float32)." if mm32 else "")
        n_bad = int((worst > tol).sum())
        why = (f"reached max_iter={max_iter}" if reached_max else
               "stopped, the line search making no more progress at this precision")
        warnings.warn(
            f"solver='lbfgs' did not converge for {n_bad} of {n_layers * n_folds} heads: "
            f"largest gradient entry {worst.max():.2e} > tol={tol}; L-BFGS {why}. "
            f"Increase max_iter, raise tol, lower C or pass standardize=True.{hint}",
            ConvergenceWarning, stacklevel=4)
    if verbose:
        print(f"[lbfgs, {n_layers * n_folds} heads] {n_iter} joint iterations, "
              f"largest gradient entry {worst.max():.2e}")
    return heads, curves, n_iter


def _solve(Xs, y_enc, n_classes, *, C, max_iter, tol, device, folds):
    """One joint L-BFGS over all heads; see :func:`train_heads_lbfgs`. Also returns each
    head's largest gradient entry ``worst[layer, fold]`` and whether matmuls ran in
    float32."""
    n_layers, n_samples = len(Xs), Xs[0].shape[0]
    folds = [np.arange(n_samples)] if folds is None else [np.asarray(f) for f in folds]
    n_folds = len(folds)
    dims = [X.shape[1] for X in Xs]
    d_max = max(dims)
    width = d_max + 1
    k_free = 1 if n_classes == 2 else n_classes  # binary: class 0's logit is 0
    # The weights, the objective and L-BFGS's state are float64: all in float32, the
    # line search stalled before the gradient reached tol=1e-4 on CNN features. The two
    # matmuls (nearly all the arithmetic) run in the features' dtype: float32 features
    # (the store's) give gradients good to ~1e-5, enough for the default tol=1e-4, at
    # about half the CPU time of float64. MPS has no float64.
    mps = torch.device(device).type == "mps"
    dtype = torch.float32 if mps else torch.float64
    mm_dtype = (torch.float64 if not mps and any(np.asarray(X).dtype == np.float64
                                                 for X in Xs) else torch.float32)

    # Solved in standardized coordinates, an exact change of variables: per column
    # x' = (x - mean) / scale, w' = w * scale with the penalty w'^2 / scale^2, and the
    # intercept (not penalised) absorbing w . mean; the optimum is the same and is
    # mapped back below. Without it, heads whose features differ in scale by 1e3 (early
    # and late CNN stages) share one badly conditioned line search: 100 iterations
    # left gradients of 0.25 on EfficientNet-Lite0 features.
    mean = np.zeros((n_layers, d_max))
    scale = np.ones((n_layers, d_max))
    feats = torch.zeros(n_layers, n_samples, width, dtype=mm_dtype)
    feats[:, :, d_max] = 1.0
    feats_np = feats.numpy()
    for layer, X in enumerate(Xs):
        X = np.asarray(X, dtype=np.float64)
        mean[layer, : dims[layer]] = X.mean(axis=0)
        sd = X.std(axis=0)
        sd[sd < 1e-12 * max(1.0, float(np.abs(X).max(initial=0.0)))] = 1.0
        scale[layer, : dims[layer]] = sd
        feats_np[layer, :, : dims[layer]] = (X - mean[layer, : dims[layer]]) / sd
    feats = feats.to(device)
    feats_t = feats.transpose(1, 2)  # (L, width, n), a view for the gradient's bmm

    n_train = torch.tensor([len(f) for f in folds], dtype=dtype)
    row_weight = torch.zeros(n_folds, n_samples, dtype=dtype)
    for f, rows in enumerate(folds):
        row_weight[f, rows] = 1.0 / len(rows)
    row_weight = row_weight.T.reshape(1, n_samples, n_folds, 1).to(device)
    # per (layer, feature, output column): 1 / (C n_train) of the column's fold, over
    # scale^2 of the feature (the change of variables above)
    penalty = ((1.0 / (C * n_train)).repeat_interleave(k_free).view(1, 1, -1)
               / torch.as_tensor(scale ** 2, dtype=dtype).unsqueeze(-1)).to(device)
    target = torch.as_tensor(np.asarray(y_enc), dtype=torch.long, device=device)
    onehot = torch.nn.functional.one_hot(target, n_classes).to(dtype)
    onehot = onehot.view(1, n_samples, 1, n_classes)

    params = torch.zeros(n_layers * width * n_folds * k_free, dtype=dtype,
                         device=device, requires_grad=True)
    theta = params.detach().view(n_layers, width, n_folds * k_free)
    grad = torch.zeros_like(params)
    grad_theta = grad.view(n_layers, width, n_folds * k_free)
    curve = []

    def objective(with_grad=True):
        """Per (layer, fold) objective, shape (L, F); writes the gradient into ``grad``."""
        logits = torch.bmm(feats, theta.to(mm_dtype)).to(dtype)
        logits = logits.view(n_layers, n_samples, n_folds, k_free)
        if k_free == 1:
            logits = torch.nn.functional.pad(logits, (1, 0))
        logp = torch.log_softmax(logits, dim=-1)
        data = -(logp * onehot * row_weight).sum(dim=(1, 3))  # (L, F)
        w = theta[:, :d_max]
        reg = 0.5 * (w * w * penalty).view(n_layers, d_max, n_folds, k_free).sum(dim=(1, 3))
        if with_grad:
            g = (logp.exp_() - onehot).mul_(row_weight)[..., n_classes - k_free:]
            g = g.reshape(n_layers, n_samples, n_folds * k_free).to(mm_dtype)
            grad_theta.copy_(torch.bmm(feats_t, g))
            grad_theta[:, :d_max] += w * penalty
        return data + reg

    def closure():
        per_head = objective()
        params.grad = grad
        curve.append(per_head.sum(dim=0).double().cpu())
        return per_head.sum()

    optimizer = torch.optim.LBFGS(
        [params], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
        tolerance_change=0.0, history_size=HISTORY_SIZE, line_search_fn="strong_wolfe")
    optimizer.step(closure)
    n_iter = int(optimizer.state[params].get("n_iter", 0))

    # the state L-BFGS returned: check every head's own gradient
    per_head = objective()
    if not torch.isfinite(per_head).all():
        raise ValueError("L-BFGS diverged (a non-finite objective); the features may hold "
                         "very large values: pass standardize=True or lower C.")
    worst = grad_theta.abs().view(n_layers, width, n_folds, k_free).amax(dim=(1, 3))
    worst = worst.cpu().numpy()  # (L, F)

    theta_np = theta.cpu().numpy().reshape(n_layers, width, n_folds, k_free)
    coef = theta_np[:, :d_max] / scale[:, :, None, None]  # back to the input features
    bias = theta_np[:, d_max] - np.einsum("ljfk,lj->lfk", coef, mean)
    weight = np.concatenate([coef, bias[:, None]], axis=1).transpose(0, 2, 3, 1)
    weight = np.ascontiguousarray(weight)  # (L, F, k_free, width)
    heads = []
    for f in range(n_folds):
        fold_heads = []
        for layer in range(n_layers):
            w = np.zeros((n_classes, width), dtype=weight.dtype)
            w[n_classes - k_free:] = weight[layer, f]
            fold_heads.append((w[:, : dims[layer]].copy(), w[:, d_max].copy()))
        heads.append(fold_heads)
    curves = torch.stack(curve).numpy() if curve else np.zeros((0, n_folds))
    return (heads, [curves[:, f].tolist() for f in range(n_folds)], n_iter, worst,
            mm_dtype == torch.float32)
