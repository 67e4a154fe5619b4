"""Confusion asymmetry, patch-similarity variance and trainable-parameter counts."""

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo.inspection import (
    confusion_asymmetry,
    count_trainable_parameters,
    patch_similarity_variance,
)
from sklearn_endo.probes import KNNProbeClassifier, LinearProbeClassifier, MultiLayerLinearProbe


# ---------------------------------------------------------------- confusion asymmetry
def _from_counts(counts, labels):
    """y_true, y_pred realising a given confusion matrix."""
    yt, yp = [], []
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            yt += [a] * counts[i][j]
            yp += [b] * counts[i][j]
    return np.array(yt), np.array(yp)


# z-line read as esophagitis 47/200 = 23.5%, the reverse 9/200 = 4.5% (the study's pair)
COUNTS = [[153, 47, 0],   # z-line
          [9, 190, 1],    # esophagitis
          [2, 0, 98]]     # normal-cecum
LABELS = ["z-line", "esophagitis", "normal-cecum"]


def test_confusion_asymmetry_by_hand():
    yt, yp = _from_counts(COUNTS, LABELS)
    t = confusion_asymmetry(yt, yp, labels=LABELS)
    assert (t["class_a"][0], t["class_b"][0]) == ("z-line", "esophagitis")
    assert t["rate_ab"][0] == pytest.approx(0.235)
    assert t["rate_ba"][0] == pytest.approx(0.045)
    assert t["difference"][0] == pytest.approx(0.19)
    assert t["ratio"][0] == pytest.approx(0.235 / 0.045)
    assert (t["count_ab"][0], t["count_ba"][0]) == (47, 9)
    # next: normal-cecum -> z-line 2/100 vs 0/200, then esophagitis -> normal 1/200 vs 0
    assert (t["class_a"][1], t["class_b"][1]) == ("normal-cecum", "z-line")
    assert t["ratio"][1] == np.inf and t["rate_ab"][1] == pytest.approx(0.02)
    assert (t["class_a"][2], t["class_b"][2]) == ("esophagitis", "normal-cecum")
    assert np.all(np.diff(t["difference"]) <= 0)


def test_confusion_asymmetry_counts_and_frame():
    yt, yp = _from_counts(COUNTS, LABELS)
    t = confusion_asymmetry(yt, yp, normalize=None)
    assert t["rate_ab"][0] == 47 and t["difference"][0] == 38
    frame = confusion_asymmetry(yt, yp, as_frame=True)
    assert list(frame.columns)[:4] == ["class_a", "class_b", "rate_ab", "rate_ba"]
    assert len(frame) == 3
    # a pair never confused has ratio nan
    t = confusion_asymmetry([0, 1, 2], [0, 1, 2])
    assert np.isnan(t["ratio"]).all()


def test_confusion_asymmetry_errors():
    with pytest.raises(ValueError, match="normalize='rows'"):
        confusion_asymmetry([0, 1], [1, 0], normalize="rows")
    with pytest.raises(ValueError, match="same length"):
        confusion_asymmetry([0, 1], [1, 0, 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        confusion_asymmetry([1, 1], [1, 1])


# ---------------------------------------------------------------- patch similarity
def test_patch_similarity_variance_by_hand():
    rng = np.random.RandomState(0)
    tok = rng.normal(size=(4, 5, 3))  # 4 images, 5 patches
    y = np.array([0, 0, 1, 1])
    res = patch_similarity_variance({7: tok}, y)
    per = []
    for img in tok:
        ref = img.mean(0)
        sims = [p @ ref / np.linalg.norm(p) / np.linalg.norm(ref) for p in img]
        per.append(np.var(sims))
    np.testing.assert_allclose(res.per_image[0], per)
    np.testing.assert_allclose(res.mean[0], [np.mean(per[:2]), np.mean(per[2:])])
    np.testing.assert_allclose(res.std[0], [np.std(per[:2]), np.std(per[2:])])
    assert res.layers == [7] and list(res.classes) == [0, 1]


def test_patch_similarity_uniform_map_has_zero_variance_and_cls_reference():
    tok = np.ones((2, 1 + 4, 3))
    tok[:, 0] = [1.0, -1.0, 0.0]  # class token, different from the patches
    res = patch_similarity_variance([tok], ["a", "b"], num_prefix_tokens=1)
    np.testing.assert_allclose(res.mean, 0.0, atol=1e-12)
    res = patch_similarity_variance(tok, ["a", "b"], reference="cls", num_prefix_tokens=1)
    np.testing.assert_allclose(res.mean, 0.0, atol=1e-12)  # all patches equally similar
    tok[0, 1] = [1.0, -1.0, 0.0]
    res = patch_similarity_variance(tok, ["a", "b"], reference="cls", num_prefix_tokens=1)
    assert res.mean[0, 0] > 0.1 and res.mean[0, 1] == pytest.approx(0.0, abs=1e-12)


def test_patch_similarity_accepts_timm_intermediates(tiny_vit):
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        _, nchw = tiny_vit.forward_intermediates(x, indices=[1, 3])
        _, nlc = tiny_vit.forward_intermediates(x, indices=[1, 3], output_fmt="NLC")
    y = [0, 1, 0, 1]
    a = patch_similarity_variance({1: nchw[0].numpy(), 3: nchw[1].numpy()}, y)
    b = patch_similarity_variance({1: nlc[0].numpy(), 3: nlc[1].numpy()}, y)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5)
    assert a.mean.shape == (2, 2)
    frame = patch_similarity_variance({1: nlc[0].numpy()}, y, as_frame=True)
    assert list(frame.columns) == ["layer", "class", "mean", "std", "n"]


def test_patch_similarity_errors():
    tok = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        patch_similarity_variance(tok, [0, 1], reference="cls")
    with pytest.raises(ValueError, match="reference='max'"):
        patch_similarity_variance(tok, [0, 1], reference="max")
    with pytest.raises(ValueError, match=r"shape \(n_samples, n_tokens, dim\)"):
        patch_similarity_variance(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="one label per image"):
        patch_similarity_variance(tok, [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        patch_similarity_variance(np.full((2, 4, 3), np.nan), [0, 1])


# ---------------------------------------------------------------- parameter counts
def test_count_frozen_encoder_plus_linear_probe(images, tiny_vit):
    X, y = images
    n_vit = sum(p.numel() for p in tiny_vit.parameters())
    pipe = make_pipeline(LayerFeatureTransformer(tiny_vit, layer=2, batch_size=8),
                         LogisticRegression()).fit(X, y)
    c = count_trainable_parameters(pipe)
    assert c.trainable == 32 + 1  # binary LogisticRegression: coef_ (1, 32) + intercept_
    assert c.total == n_vit + 33 and c.frozen == n_vit
    assert [s[0] for s in c.steps] == ["layerfeaturetransformer", "logisticregression"]

    pipe = make_pipeline(LayerFeatureTransformer(tiny_vit, layer=2, batch_size=8),
                         StandardScaler(),
                         LinearProbeClassifier(solver="adam", max_epochs=1)).fit(X, y)
    assert count_trainable_parameters(pipe).trainable == 2 * 32 + 2
    search = GridSearchCV(pipe, {"layerfeaturetransformer__layer": [1]}, cv=2).fit(X, y)
    assert count_trainable_parameters(search).trainable == 2 * 32 + 2


def test_count_paper_figure_and_other_probes():
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(16, 1024)), np.arange(16) % 8
    probe = LinearProbeClassifier(solver="adam", max_epochs=1).fit(X, y)
    assert count_trainable_parameters(probe).trainable == 8200  # the study's "0.008 M"
    assert count_trainable_parameters(KNNProbeClassifier().fit(X, y)).trainable == 0
    multi = MultiLayerLinearProbe(solver="adam", max_epochs=1).fit([X, X[:, :10]], y)
    assert count_trainable_parameters(multi).trainable == 8200 + 8 * 11
    from skorch import NeuralNetClassifier

    net = NeuralNetClassifier(torch.nn.Sequential(torch.nn.Linear(3, 2))).initialize()
    net.module_[0].weight.requires_grad_(False)  # a partly frozen net: only the bias trains
    c = count_trainable_parameters(net)
    assert (c.trainable, c.total) == (2, 8)


def test_count_unfitted_raises():
    with pytest.raises(NotFittedError):
        count_trainable_parameters(make_pipeline(StandardScaler(), LogisticRegression()))
