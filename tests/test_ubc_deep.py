"""UBCClassifier(deep_supervision=...): auxiliary Dice losses on the decoder's blocks."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sklearn_endo.datasets import make_lesions
from sklearn_endo.ubc import UBCClassifier, UBCLoss, soft_dice

TINY = dict(encoder="resnet18", pretrained=False, image_size=32, encoder_depth=3,
            max_epochs=1, batch_size=4, random_state=0, verbose=0, device="cpu")


@pytest.fixture(scope="module")
def data():
    X, y, masks = make_lesions(8, image_size=32, task="presence", return_masks=True,
                               random_state=0)
    return X, y, masks


def _decoder_grads(clf, X, y, masks):
    """Gradients of every decoder block's parameters after one loss on the batch."""
    ds, y_enc = clf._prepare(X, y, masks, None)
    batch = [ds[i] for i in range(len(ds))]
    xb = torch.stack([b[0] for b in batch])
    target = {k: torch.stack([b[1][k] for b in batch]) for k in batch[0][1]}
    clf.module_.train()
    clf.module_.zero_grad()
    clf.get_loss(clf.infer(xb), target, training=True).backward()
    return [torch.cat([p.grad.flatten() for p in block.parameters()])
            for block in clf.module_.seg.decoder.blocks]


def test_deep_supervision_changes_the_gradient_of_early_decoder_blocks(data):
    X, y, masks = data
    plain = UBCClassifier(**TINY, classes=[0, 1]).initialize()
    deep = UBCClassifier(**TINY, classes=[0, 1], deep_supervision=True).initialize()
    zero = UBCClassifier(**TINY, classes=[0, 1], deep_supervision=[0.0, 0.0]).initialize()
    # the same initial weights for the shared parts (the heads are extra modules)
    for net in (deep, zero):
        missing = net.module_.load_state_dict(plain.module_.state_dict(), strict=False)
        assert all(k.startswith("aux.") for k in missing.missing_keys)
    g_plain = _decoder_grads(plain, X, y, masks)
    g_deep = _decoder_grads(deep, X, y, masks)
    g_zero = _decoder_grads(zero, X, y, masks)
    # blocks 0 and 1 feed auxiliary heads: their gradient changes; with zero weights
    # the loss is the plain one, the same gradient (up to the normalisation by 1)
    for k in (0, 1):
        assert not torch.allclose(g_deep[k], g_plain[k], rtol=1e-3, atol=1e-7)
        torch.testing.assert_close(g_zero[k], g_plain[k])
    assert len(deep.module_.aux.heads) == 2
    assert deep.criterion_.aux_weights == (0.25, 0.5)


def test_loss_with_auxiliary_outputs_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, generator=g)
    y = torch.tensor([0, 1])
    masks = (torch.rand(2, 8, 8, generator=g) > 0.5).float()
    main = torch.randn(2, 1, 8, 8, generator=g)
    aux = [torch.randn(2, 1, 2, 2, generator=g), torch.randn(2, 1, 4, 4, generator=g)]
    has = torch.tensor([True, True])
    loss = UBCLoss(alpha=0.4, aux_weights=(0.25, 0.5))

    def dice_loss(lg):
        up = F.interpolate(lg, size=(8, 8), mode="bilinear", align_corners=False)
        return (1 - soft_dice(up[:, 0].sigmoid(), masks, 1.0)).mean()

    ce = F.cross_entropy(logits, y)
    want_dice = (dice_loss(main) + 0.25 * dice_loss(aux[0]) + 0.5 * dice_loss(aux[1])) / 1.75
    got = loss(logits, main, y, masks, has, aux_mask_logits=aux)
    torch.testing.assert_close(got, 0.4 * ce + 0.6 * want_dice)
    # without auxiliary logits the loss is the plain one
    torch.testing.assert_close(loss(logits, main, y, masks, has),
                               UBCLoss(alpha=0.4)(logits, main, y, masks, has))


def test_fit_predict_pickle_and_bad_settings(data):
    X, y, masks = data
    clf = UBCClassifier(**TINY, deep_supervision=True).fit(X, y, masks=masks)
    clf.module_.eval()
    with torch.no_grad():
        assert len(clf.module_(torch.rand(1, 3, 32, 32))) == 2  # no aux out of training
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_masks(X[:2]), clf.predict_masks(X[:2]))
    again.partial_fit(X, y, masks=masks)  # hooks still collect after unpickling
    assert again.history[-1, "train_loss"] > 0
    with pytest.raises(ValueError, match="deep_supervision needs a decoder made of a list "
                                         "of blocks .*architecture='fpn'"):
        UBCClassifier(**dict(TINY, architecture="fpn", deep_supervision=True),
                      classes=[0, 1]).initialize()
    with pytest.raises(ValueError, match=r"must be False, True or 2 weights"):
        UBCClassifier(**TINY, deep_supervision=[1.0], classes=[0, 1]).initialize()
