"""FineTuneClassifier on bad or unusual input (#17): parameters changed after fit,
sample weights, partial_fit's classes, parameter validation, BiT on tiny sets."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_endo import UBCClassifier
from sklearn_endo._images import check_images
from sklearn_endo.finetune import FineTuneClassifier

FAST = dict(pretrained=False, img_size=32, max_epochs=2, batch_size=8, random_state=0,
            device="cpu", verbose=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    return X, np.array([0, 1, 2] * 4)


def _clf(**kw):
    return FineTuneClassifier("resnet18", **{**FAST, **kw})


# ---------------------------------------------------------------- after fit
def test_feature_store_none_after_a_stored_fit_predicts_through_the_encoder(data):
    X, y = data
    clf = _clf(freeze="all").fit(X, y)
    assert clf.stored_features_ == "pooled"
    stored = clf.predict_proba(X)
    clf.set_params(feature_store=None)  # was: TypeError in _store.py
    np.testing.assert_allclose(clf.predict_proba(X), stored, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("freeze", ["all", "none"])  # stored rows / plain path
def test_structural_parameter_changed_after_fit_raises_until_refit(data, freeze):
    X, y = data
    clf = _clf(freeze=freeze, layer=4).fit(X, y)  # a 4x4 map: max differs from mean
    before = clf.predict_proba(X)
    clf.set_params(pooling="max")
    with pytest.raises(ValueError, match=r"pooling='max' was set after fit.*pooling='mean'"):
        clf.predict_proba(X)
    with pytest.raises(ValueError, match="pooling='max' was set after fit"):
        clf.set_params(warm_start=True).fit(X, y)  # more epochs of the old network
    clf.set_params(pooling="mean", layer=3)
    with pytest.raises(ValueError, match="layer=3 was set after fit.*layer=4"):
        _ = clf.encoder_  # built from the fitted cut, not the new one
    clf.set_params(layer=4)
    clf.set_params(pooling="mean", warm_start=False)
    np.testing.assert_array_equal(clf.predict_proba(X), before)
    clf.set_params(pooling="max").fit(X, y)  # a refit takes it
    assert clf.module_.pooling == "max"
    assert not np.allclose(clf.predict_proba(X), before)


# ---------------------------------------------------------------- sample_weight
def test_weighted_loss_is_the_weighted_mean_of_cross_entropy(data):
    X, y = data
    clf = _clf(freeze="all", max_epochs=1).fit(X, y)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=gen)
    target = torch.tensor([0, 2, 1, 1, 0, 2])
    w = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 1.5])
    ce = torch.stack([-F.log_softmax(logits[i], 0)[target[i]] for i in range(6)])
    hand = (w * ce).sum() / w.sum()
    got = clf.get_loss(logits, {"y": target, "weight": w})
    torch.testing.assert_close(got, hand)
    assert clf.criterion_.reduction == "mean"  # left as it was


def test_integer_weights_train_like_repeated_images(data):
    """One full-batch SGD step: weight 3 on image 0 equals image 0 three times."""
    X, y = data
    kw = dict(freeze="all", max_epochs=1, batch_size=64, optimizer=torch.optim.SGD, lr=0.5)
    w = np.ones(len(X))
    w[0], w[5] = 3.0, 0.0
    weighted = _clf(**kw).fit(X, y, sample_weight=w)
    keep = [0, 0, 0] + [i for i in range(1, len(X)) if i != 5]
    repeated = _clf(**kw).fit(X[keep], y[keep])
    plain = _clf(**kw).fit(X, y)
    for a, b, c in zip(weighted.module_.head.parameters(), repeated.module_.head.parameters(),
                       plain.module_.head.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a, c, atol=1e-6)


def test_sample_weight_through_the_encoder_and_with_mixup(data):
    X, y = data
    w = np.linspace(0.5, 2, len(X))
    for kw in (dict(freeze="none"), dict(freeze="none", mixup=0.2)):
        clf = _clf(max_epochs=1, **kw).fit(X, y, sample_weight=w)
        assert np.isfinite(clf.history[-1, "train_loss"])
    with pytest.raises(ValueError, match=r"sample_weight has shape \(3,\) but X has 12"):
        _clf().fit(X, y, sample_weight=[1, 2, 3])
    with pytest.raises(ValueError, match="finite and >= 0"):
        _clf().fit(X, y, sample_weight=-w)


# ---------------------------------------------------------------- partial_fit
def test_partial_fit_takes_classes(data):
    X, y = data
    clf = _clf(freeze="all", max_epochs=1)
    first = y == 0
    clf.partial_fit(X[first], y[first], classes=[0, 1, 2])  # one class seen: fine
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert clf.predict_proba(X).shape == (12, 3)
    second = y == 2
    clf.partial_fit(X[second], y[second])  # later calls keep the classes
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert len(clf.history) == 2
    with pytest.raises(ValueError, match=r"labels \[7\] that are not in classes"):
        clf.partial_fit(X[:2], [7, 7])


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("param, value, what", [
    ("lr", 0.0, "a float in the range (0.0, inf)"),
    ("lr", "0.01", "a float in the range (0.0, inf)"),
    ("max_epochs", 0, "an int in the range [1, inf)"),
    ("dropout", "high", "a float in the range [0.0, 1.0)"),
])
def test_bad_parameters_are_refused_at_fit_naming_them(data, param, value, what):
    X, y = data
    for est in (_clf(), UBCClassifier("resnet18", pretrained=False, image_size=32,
                                      encoder_depth=3, verbose=0)):
        est.set_params(**{param: value})
        msg = f"The '{param}' parameter of {type(est).__name__} must be {what}"
        with pytest.raises(InvalidParameterError, match=msg.replace("(", r"\(")
                           .replace(")", r"\)").replace("[", r"\[")):
            est.fit(X, y)
        assert not est.initialized_ or not len(est.history)  # nothing trained


# ---------------------------------------------------------------- BiT on few images
def test_bit_rule_on_a_tiny_set_warns_and_names_the_way_out(data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # stop at the warning: no training
        with pytest.raises(UserWarning, match=r"500 steps of batch_size=8, that is 250 "
                           r"epochs.*schedule=None.*max_epochs.*smaller batch_size"):
            _clf(schedule="bit", freeze="all").fit(X, y)


def test_bit_rule_on_enough_images_is_quiet():
    images = check_images(np.zeros((4000, 8, 8, 3), dtype=np.uint8), name="X")
    clf = _clf(schedule="bit", batch_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = clf._make_plan(images)
    assert plan["epochs"] == 4  # 500 steps of 125 batches
