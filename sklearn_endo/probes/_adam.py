"""The Adam recipe's training loop for many linear heads at once (``solver="adam"``).

All estimators share one training loop (:func:`_train_heads`) over a padded batch of
heads: weights ``(n_heads, n_classes, d_max + 1)`` (the bias is the last column, fed by
a constant-1 feature), features zero-padded to ``d_max``. Padded inputs are zero, so
padded weights get zero gradients and Adam leaves them at zero; the loss is the sum of
the per-head mean cross-entropies, and Adam is elementwise, so every head follows
exactly the trajectory it would follow alone (up to float32 rounding of the batched
matmul). Each head draws its initial weights from its own generator seeded like the
one-head probe, and the heads of one fold share one minibatch order drawn from a second
generator, so ``MultiLayerLinearProbe`` reproduces ``LinearProbeClassifier`` layer by
layer, and :func:`._linear.fit_folds` reproduces one ``MultiLayerLinearProbe`` fit per fold.

Cost per step and head (8 classes, 1024 dims, one core of this CPU): ~28 us of
arithmetic (fused Adam over 8 x 1025 weights ~11 us, each of the two bmm ~6 us, the
gather of the minibatch rows ~5 us), plus a fixed ~50-70 us per step (the ~8 torch calls
and Python) shared by all heads.
"""

from __future__ import annotations

import numpy as np
import torch


def _init_head(n_features, n_classes, init_seed):
    """nn.Linear's default init, U(-1/sqrt(d), 1/sqrt(d)), from a local generator."""
    gen = torch.Generator().manual_seed(init_seed)
    bound = 1.0 / np.sqrt(n_features)
    weight = (torch.rand(n_classes, n_features, generator=gen, dtype=torch.float32) * 2 - 1) * bound
    bias = (torch.rand(n_classes, generator=gen, dtype=torch.float32) * 2 - 1) * bound
    return weight, bias


def _train_heads(Xs, y_enc, n_classes, *, lr, max_epochs, batch_size, weight_decay,
                 init_seed, shuffle_seed, device, folds=None, verbose=False):
    """Train one softmax head per (fold, feature matrix) in one batched model.

    Args:
        Xs: list of float arrays (n_samples, d_l), one per layer, already standardized
            if wanted. They are copied once into the model's layout and never again.
        y_enc: int array (n_samples,) of encoded labels in [0, n_classes).
        folds: None (train on all rows) or a list of int arrays of training rows, all of
            the same length; each fold trains its own head per layer, with its own
            minibatch order, exactly as a separate fit on ``X[rows]`` would.
        init_seed, shuffle_seed: an int, or one int per fold.

    Returns:
        heads[f][l] = (weight (n_classes, d_l), bias (n_classes,)) float32 numpy arrays,
        and history[f] = per-epoch mean training loss of fold f summed over layers.

    Layout: features (n_layers, n_samples, d_max + 1), the last column constant 1, so
    the bias is the last column of the weight and one bmm gives the gradients of both.
    Heads are ordered layer-major, fold-minor: gathering the minibatch rows of all folds
    along dim 1 gives (n_layers, n_folds * b, d) = (n_heads, b, d) without a copy. The
    step allocates nothing; one fused Adam step (the kernel behind
    ``torch.optim.Adam(fused=True)``, without its per-step Python bookkeeping) updates
    the single flat tensor holding every head.
    """
    n_layers = len(Xs)
    n_samples = Xs[0].shape[0]
    folds = [np.arange(n_samples)] if folds is None else [np.asarray(f) for f in folds]
    n_folds = len(folds)
    n_train = len(folds[0])
    if any(len(f) != n_train for f in folds):
        raise ValueError("all folds of one batched fit must have the same size.")
    init_seeds = np.broadcast_to(init_seed, n_folds)
    shuffle_seeds = np.broadcast_to(shuffle_seed, n_folds)
    dims = [X.shape[1] for X in Xs]
    d_max = max(dims)
    width = d_max + 1
    n_heads = n_layers * n_folds

    feats = torch.zeros(n_layers, n_samples, width, dtype=torch.float32)
    feats[:, :, d_max] = 1.0
    # all weights, bias last, in nn.Linear's (out, in) layout, one flat tensor so that
    # Adam is one fused kernel over one tensor
    params = torch.zeros(n_heads * n_classes * width, dtype=torch.float32)
    weight = params.view(n_layers, n_folds, n_classes, width)
    for layer, X in enumerate(Xs):
        feats[layer, :, : dims[layer]] = torch.as_tensor(np.asarray(X, dtype=np.float32))
        for f in range(n_folds):
            w, b = _init_head(dims[layer], n_classes, int(init_seeds[f]))
            weight[layer, f, :, : dims[layer]] = w
            weight[layer, f, :, d_max] = b
    feats = feats.to(device)
    params = params.to(device)
    weight = params.view(n_heads, n_classes, width)
    grads = torch.zeros_like(params)
    grad_weight = grads.view(n_heads, n_classes, width)
    adam_step = _make_adam_step(params, grads, lr=lr, weight_decay=weight_decay)

    rows = torch.as_tensor(np.stack(folds), dtype=torch.long, device=device)  # (F, n_train)
    target = torch.as_tensor(np.asarray(y_enc), dtype=torch.long, device=device)
    n_full, rest = divmod(n_train, batch_size)
    sizes = [batch_size] * n_full + ([rest] if rest else [])  # minibatch sizes of an epoch
    bmax = max(sizes)
    x_flat = torch.empty(n_heads * bmax * width, device=device)
    logits_flat = torch.empty(n_heads * n_classes * bmax, device=device)
    minus_one = torch.full((n_heads * bmax,), -1.0, device=device)
    # contiguous buffers for both minibatch sizes, (n_layers, F * b, width) for the
    # gather; logits as (n_heads, n_classes, b): W @ x^T reads both operands row-major,
    # the softmax over dim 1 is ~3x faster than over a last dim of n_classes, and the
    # gradient (n_heads, n_classes, b) is the plain left operand of G @ x
    buffers = {
        b: (x_flat[: n_heads * b * width].view(n_layers, n_folds * b, width),
            logits_flat[: n_heads * n_classes * b].view(n_heads, n_classes, b),
            minus_one[: n_heads * b].view(n_heads, 1, b))
        for b in set(sizes)
    }
    # p(target) of every head and sample of an epoch; logs summed once per epoch
    p_full = torch.empty(n_full, n_heads, 1, batch_size, device=device)
    p_rest = torch.empty(n_heads, 1, rest, device=device)
    p_out = [*p_full.unbind(0), p_rest][: len(sizes)]
    gens = [torch.Generator().manual_seed(int(s)) for s in shuffle_seeds]
    history = []
    for epoch in range(max_epochs):
        # per fold, the order a separate fit would draw; then, per step, the global
        # rows of all folds (F * b contiguous) and the targets of all heads
        order = torch.stack([torch.randperm(n_train, generator=g) for g in gens]).to(device)
        epoch_rows = rows.gather(1, order)  # (F, n_train)
        steps_rows, steps_target = _split_steps(epoch_rows, target, n_layers, batch_size)
        for rows_i, t, p_i, b in zip(steps_rows, steps_target, p_out, sizes):
            xb, logits, minus = buffers[b]
            torch.index_select(feats, 1, rows_i, out=xb)
            x = xb.view(n_heads, b, width)
            torch.bmm(weight, x.transpose(1, 2), out=logits)
            # loss = per head the mean cross-entropy, summed over heads; its gradient
            # (softmax - onehot) / b is written out: autograd's bmm backward on CPU was
            # ~10x slower than these two bmm calls
            grad_logits = torch.softmax(logits, dim=1)
            torch.gather(grad_logits, 1, t, out=p_i)
            grad_logits.scatter_add_(1, t, minus)
            torch.baddbmm(grad_weight, grad_logits, x, beta=0.0, alpha=1.0 / b,
                          out=grad_weight)
            adam_step()
        losses = _epoch_losses(p_full, p_rest, n_layers, n_folds, n_train)
        history.append(losses)
        if verbose:
            label = "1 head" if n_heads == 1 else f"{n_heads} heads"
            print(f"[{label}] epoch {epoch + 1}/{max_epochs} train loss {losses.sum():.4f}")

    weight = weight.view(n_layers, n_folds, n_classes, width).cpu().numpy()
    heads = [[(weight[layer, f, :, : dims[layer]].copy(), weight[layer, f, :, d_max].copy())
              for layer in range(n_layers)] for f in range(n_folds)]
    history = np.asarray(history)  # (max_epochs, n_folds)
    return heads, [history[:, f].tolist() for f in range(n_folds)]


def _split_steps(epoch_rows, target, n_layers, batch_size):
    """Per step, the rows of all folds (F * b,) and the targets (n_heads, 1, b).

    Built once per epoch as contiguous blocks (the full minibatches, then the last,
    smaller one), so a step only takes a view.
    """
    n_folds, n_train = epoch_rows.shape
    n_full = n_train // batch_size
    steps_rows, steps_target = [], []
    for begin, count, b in ((0, n_full, batch_size),
                            (n_full * batch_size, 1, n_train - n_full * batch_size)):
        if count == 0 or b == 0:
            continue
        block = epoch_rows[:, begin : begin + count * b].reshape(n_folds, count, b)
        block = block.transpose(0, 1).contiguous()  # (count, F, b)
        tgt = target[block].unsqueeze(1).expand(count, n_layers, n_folds, b).contiguous()
        steps_rows.extend(block.view(count, n_folds * b).unbind(0))
        steps_target.extend(tgt.view(count, n_layers * n_folds, 1, b).unbind(0))
    return steps_rows, steps_target


def _epoch_losses(p_full, p_rest, n_layers, n_folds, n_train):
    """Per fold, the epoch's mean training cross-entropy summed over layers."""
    total = -torch.log(p_full.double()).sum(dim=(0, 2, 3))
    total += -torch.log(p_rest.double()).sum(dim=(1, 2))
    return (total.cpu() / n_train).view(n_layers, n_folds).sum(dim=0).numpy()


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
