"""UBC loss and network: the formula on hand-made tensors, gradients, parameter count."""

import math

import pytest
import torch

from sklearn_endo.ubc import UBCLoss, UBCNet, soft_dice


def _ce(logits, label):
    return -math.log(math.exp(logits[label]) / sum(math.exp(v) for v in logits))


def _dice(p, g, eps):
    return (2 * sum(a * b for a, b in zip(p, g)) + eps) / (sum(p) + sum(g) + eps)


def test_loss_equals_formula_with_partial_labels_and_masks():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.0]])
    mask_logits = torch.tensor([[[[0.0, 2.0], [-2.0, 1.0]]],
                                [[[1.0, 1.0], [1.0, 1.0]]],
                                [[[-3.0, 0.5], [0.0, 4.0]]]])
    y = torch.tensor([0, -1, 1])  # sample 1 unlabeled
    masks = torch.tensor([[[0.0, 1.0], [0.0, 1.0]],
                          [[1.0, 1.0], [0.0, 0.0]],
                          [[9.0, 9.0], [9.0, 9.0]]])  # ignored: sample 2 has no mask
    has = torch.tensor([True, True, False])
    alpha, eps = 0.3, 1.0
    loss = UBCLoss(alpha=alpha, dice_smooth=eps)(logits, mask_logits, y, masks, has)

    ce = (_ce([2.0, -1.0], 0) + _ce([-1.0, 1.0], 1)) / 2
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    d0 = _dice([sig(v) for v in (0.0, 2.0, -2.0, 1.0)], [0, 1, 0, 1], eps)
    d1 = _dice([sig(1.0)] * 4, [1, 1, 0, 0], eps)
    expected = alpha * ce + (1 - alpha) * ((1 - d0) + (1 - d1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_loss_extremes_and_empty_terms():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask_logits = torch.zeros(2, 1, 2, 2)
    y, masks = torch.tensor([0, 1]), torch.ones(2, 2, 2)
    none = torch.tensor([False, False])
    ce = (_ce([1.0, 0.0], 0) + _ce([0.0, 1.0], 1)) / 2
    assert UBCLoss(alpha=1.0)(logits, None, y, masks, none).item() == pytest.approx(ce)
    # no mask in the batch: the Dice term is 0, so the loss is alpha * CE
    assert UBCLoss(alpha=0.5)(logits, mask_logits, y, masks, none).item() == pytest.approx(
        0.5 * ce)
    # no label in the batch: the CE term is 0
    unl = torch.tensor([-1, -1])
    has = torch.tensor([True, True])
    d = _dice([0.5] * 4, [1] * 4, 1.0)
    assert UBCLoss(alpha=0.5)(logits, mask_logits, unl, masks, has).item() == pytest.approx(
        0.5 * (1 - d))
    assert UBCLoss(alpha=0.0)(logits, mask_logits, y, masks, has).item() == pytest.approx(1 - d)


def test_multiclass_dice_is_mean_over_foreground_classes():
    mask_logits = torch.randn(2, 3, 4, 4)
    masks = torch.randint(0, 3, (2, 4, 4))
    loss = UBCLoss(alpha=0.0, dice_smooth=0.5, n_mask_classes=3)(
        torch.zeros(2, 2), mask_logits, torch.tensor([0, 1]), masks, torch.tensor([True, True]))
    probs = mask_logits.softmax(1)
    per = [soft_dice(probs[:, k], (masks == k).float(), 0.5) for k in (1, 2)]
    expected = (1 - (per[0] + per[1]) / 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_resnet34_ubc_has_the_papers_parameter_count():
    net = UBCNet("resnet34", n_classes=2, encoder_weights=None)
    n = sum(p.numel() for p in net.parameters())
    assert n == pytest.approx(24.4e6, abs=0.1e6)
    encoder = sum(p.numel() for p in net.seg.encoder.parameters())
    assert encoder == pytest.approx(21.3e6, abs=0.1e6)


def _decoder_grads(net, x, y, masks, has, alpha=0.5):
    net.zero_grad(set_to_none=True)
    logits, mask_logits = net(x)
    UBCLoss(alpha=alpha)(logits, mask_logits, y, masks, has).backward()
    return [p.grad for p in net.decoder_parameters]


@pytest.mark.parametrize("pooling", ["avg", "mask"])
def test_decoder_gets_gradient_only_from_samples_with_masks(pooling):
    torch.manual_seed(0)
    net = UBCNet("resnet18", n_classes=2, encoder_depth=3, pooling=pooling).eval()
    x = torch.rand(2, 3, 32, 32)
    y = torch.tensor([0, 1])
    masks = (torch.rand(2, 32, 32) > 0.5).float()

    grads = _decoder_grads(net, x, y, masks, torch.tensor([False, False]))
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    encoder_grads = [p.grad for p in net.seg.encoder.parameters()]
    assert any(g is not None and torch.count_nonzero(g) for g in encoder_grads)

    # sample 1 has no mask: changing its image and mask leaves the decoder's gradient as is
    has = torch.tensor([True, False])
    ref = _decoder_grads(net, x, y, masks, has)
    assert any(torch.count_nonzero(g) for g in ref)
    x2, masks2 = x.clone(), masks.clone()
    x2[1], masks2[1] = torch.rand(3, 32, 32), 1 - masks[1]
    other = _decoder_grads(net, x2, y, masks2, has)
    for a, b in zip(ref, other):
        torch.testing.assert_close(a, b)


def test_sample_weight_gives_weighted_means_of_both_terms():
    """Hand-written: sum(w * term) / sum(w) over the samples each term covers."""
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.0], [0.2, 0.1]])
    mask_logits = torch.tensor([[[[0.0, 2.0], [-2.0, 1.0]]],
                                [[[1.0, 1.0], [1.0, 1.0]]],
                                [[[-3.0, 0.5], [0.0, 4.0]]],
                                [[[0.3, -0.3], [2.0, -2.0]]]])
    y = torch.tensor([0, -1, 1, 1])  # sample 1 unlabeled
    masks = torch.tensor([[[0.0, 1.0], [0.0, 1.0]],
                          [[1.0, 1.0], [0.0, 0.0]],
                          [[9.0, 9.0], [9.0, 9.0]],  # no mask
                          [[1.0, 0.0], [1.0, 0.0]]])
    has = torch.tensor([True, True, False, True])
    w = [0.5, 3.0, 2.0, 1.5]
    alpha, eps = 0.4, 1.0
    loss = UBCLoss(alpha=alpha, dice_smooth=eps)(logits, mask_logits, y, masks, has,
                                                 torch.tensor(w))

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    ce = {0: _ce([2.0, -1.0], 0), 2: _ce([-1.0, 1.0], 1), 3: _ce([0.2, 0.1], 1)}
    dice = {0: _dice([sig(v) for v in (0.0, 2.0, -2.0, 1.0)], [0, 1, 0, 1], eps),
            1: _dice([sig(1.0)] * 4, [1, 1, 0, 0], eps),
            3: _dice([sig(v) for v in (0.3, -0.3, 2.0, -2.0)], [1, 0, 1, 0], eps)}
    ce_term = sum(w[i] * ce[i] for i in ce) / sum(w[i] for i in ce)
    dice_term = sum(w[i] * (1 - dice[i]) for i in dice) / sum(w[i] for i in dice)
    assert loss.item() == pytest.approx(alpha * ce_term + (1 - alpha) * dice_term, rel=1e-6)

    # unit weights are the unweighted loss; an integer weight counts as a repeat
    ones = UBCLoss(alpha=alpha)(logits, mask_logits, y, masks, has, torch.ones(4))
    plain = UBCLoss(alpha=alpha)(logits, mask_logits, y, masks, has)
    assert ones.item() == pytest.approx(plain.item(), rel=1e-7)
    rep = [0, 0, 1, 2, 3]
    repeated = UBCLoss(alpha=alpha)(logits[rep], mask_logits[rep], y[rep], masks[rep],
                                    has[rep])
    weighted = UBCLoss(alpha=alpha)(logits, mask_logits, y, masks, has,
                                    torch.tensor([2.0, 1.0, 1.0, 1.0]))
    assert weighted.item() == pytest.approx(repeated.item(), rel=1e-6)


def test_zero_weights_give_a_zero_term_and_finite_gradients():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    mask_logits = torch.zeros(2, 1, 2, 2, requires_grad=True)
    y, masks = torch.tensor([0, 1]), torch.ones(2, 2, 2)
    has = torch.tensor([True, False])
    # sample 0 (the only one with a mask) has weight 0: the Dice term is 0
    loss = UBCLoss(alpha=0.5)(logits, mask_logits, y, masks, has, torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(0.5 * _ce([0.0, 1.0], 1))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(mask_logits.grad).all()
    assert torch.count_nonzero(mask_logits.grad) == 0
    assert torch.count_nonzero(logits.grad[0]) == 0
