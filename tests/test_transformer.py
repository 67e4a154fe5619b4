"""LayerFeatureTransformer: features against timm's own computations, numbering, pooling."""

import numpy as np
import pytest
import timm
import torch
from sklearn.base import clone

from sklearn_endo import LayerFeatureTransformer

from .conftest import make_tiny_vit


def _normalized(X, model_or_cfg):
    cfg = model_or_cfg
    x = torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255
    size = cfg["input_size"]
    if x.shape[-2:] != tuple(size):
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", antialias=True)
        x = x.clamp(0, 1)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_vit_layers_match_forward_intermediates(images, tiny_vit):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, layer=-1).fit(X)
    assert t.n_layers_ == 4
    assert t.layer_names_ == ["input of blocks.0", "blocks.0", "blocks.1", "blocks.2",
                              "blocks.3"]
    feats = {p: t.set_params(pooling=p).layer_features(X) for p in ("mean", "cls", "max")}
    with torch.no_grad():
        spatial = tiny_vit.forward_intermediates(
            _normalized(X, t.data_config_), indices=[0, 1, 2, 3], output_fmt="NLC",
            intermediates_only=True, return_prefix_tokens=True)
    for i, (patches, prefix) in enumerate(spatial):
        layer = i + 1  # block i (0-based in timm) is layer i + 1
        np.testing.assert_allclose(feats["mean"][layer], patches.mean(1), atol=1e-5)
        np.testing.assert_allclose(feats["max"][layer], patches.amax(1), atol=1e-5)
        np.testing.assert_allclose(feats["cls"][layer], prefix[:, 0], atol=1e-5)


def test_vit_layer0_is_the_embedding(images, tiny_vit):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, layer=0).fit(X)
    with torch.no_grad():
        x = tiny_vit.patch_embed(_normalized(X, t.data_config_))
        x = tiny_vit.norm_pre(tiny_vit._pos_embed(x))
    np.testing.assert_allclose(t.transform(X), x[:, 1:].mean(1), atol=1e-5)


def test_vit_final_norm(images, tiny_vit):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, layer=2, final_norm=True).fit(X)
    with torch.no_grad():
        (out,) = tiny_vit.forward_intermediates(
            _normalized(X, t.data_config_), indices=[1], output_fmt="NLC", norm=True,
            intermediates_only=True)
    np.testing.assert_allclose(t.transform(X), out.mean(1), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_cnn_every_block_matches_forward_hooks(images, name):
    X, _ = images
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    # at the images' own size (no resampling): the test is about the blocks, and the
    # package's uint8 resize is not the float one of _normalized
    t = LayerFeatureTransformer(model, pooling="max", img_size=X.shape[1]).fit(X[:4])
    # an independent capture: our own hooks on the modules timm names as blocks
    blocks = [m for n, m in model.named_modules() if n in t.layer_names_[1:]]
    assert len(blocks) == t.n_layers_ == (8 if name == "resnet18" else 16)
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, o: seen.append(o)) for b in blocks]
    with torch.no_grad():
        model(_normalized(X[:4], t.data_config_))
    for h in hooks:
        h.remove()
    feats = t.layer_features(X[:4])
    for i, out in enumerate(seen):
        want = out.amax((2, 3)).numpy()
        # float32 noise grows with the activations of deep random-init blocks (up to ~30)
        np.testing.assert_allclose(feats[i + 1], want, rtol=1e-4,
                                   atol=1e-5 * max(1.0, np.abs(want).max()))


def test_resnet_stage_ends_match_forward_intermediates(images, tiny_cnn):
    X, _ = images
    t = LayerFeatureTransformer(tiny_cnn, img_size=X.shape[1]).fit(X[:4])  # no resampling
    feats = t.layer_features(X[:4], layers=[2, 4, 6, 8])
    with torch.no_grad():
        stages = tiny_cnn.forward_intermediates(_normalized(X[:4], t.data_config_),
                                                indices=[1, 2, 3, 4], intermediates_only=True)
    for layer, out in zip([2, 4, 6, 8], stages):
        np.testing.assert_allclose(feats[layer], out.mean((2, 3)), atol=1e-5)


def test_layer_numbering(images, tiny_vit):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit)
    last = t.set_params(layer=-1).fit_transform(X)
    np.testing.assert_array_equal(last, t.set_params(layer=4).fit_transform(X))
    np.testing.assert_array_equal(t.set_params(layer=-4).fit_transform(X),
                                  t.set_params(layer=1).fit_transform(X))
    both = t.set_params(layer=[3, 1]).fit_transform(X)
    assert t.layers_ == [3, 1]
    np.testing.assert_array_equal(both[:, :32], t.set_params(layer=3).fit_transform(X))
    np.testing.assert_array_equal(both[:, 32:], t.set_params(layer=1).fit_transform(X))
    assert t.set_params(layer=(0, -1)).fit(X).layers_ == [0, 4]


@pytest.mark.parametrize("layer, match", [(5, "out of range"), (-5, "out of range"),
                                          (1.5, "integers"), ([], "selects nothing"),
                                          (True, "integers")])
def test_bad_layer(images, tiny_vit, layer, match):
    X, _ = images
    with pytest.raises((ValueError, TypeError), match=match):
        LayerFeatureTransformer(tiny_vit, layer=layer).fit(X)


def test_out_of_range_message_names_the_range(images, tiny_vit):
    X, _ = images
    with pytest.raises(ValueError, match=r"0 \(embedding\) to 4, or -4 to -1"):
        LayerFeatureTransformer(tiny_vit, layer=9).fit(X)


def test_poolings_shapes_and_names(images, tiny_vit):
    X, _ = images
    for pooling, width in [("mean", 32), ("max", 32), ("cls", 32), ("cls+mean", 64)]:
        t = LayerFeatureTransformer(tiny_vit, layer=[2, 3], pooling=pooling).fit(X)
        out = t.transform(X)
        assert out.shape == (20, 2 * width) and out.dtype == np.float32
        names = t.get_feature_names_out()
        assert len(names) == out.shape[1]
    assert list(names[:2]) == ["layer2_cls_0", "layer2_cls_1"]
    assert names[32] == "layer2_mean_0" and names[64] == "layer3_cls_0"


def test_cls_pooling_needs_a_class_token(images, tiny_cnn):
    X, _ = images
    with pytest.raises(ValueError, match="class token"):
        LayerFeatureTransformer(tiny_cnn, pooling="cls").fit(X)
    with pytest.raises(ValueError, match="no final norm"):
        LayerFeatureTransformer(tiny_cnn, final_norm=True).fit(X)


@pytest.mark.parametrize("param, value", [("pooling", "avg"), ("batch_size", 0),
                                          ("crop_pct", 1.5), ("device", "gpu0"),
                                          ("feature_store", 3), ("num_workers", -1)])
def test_bad_params_name_the_parameter(images, tiny_vit, param, value):
    X, _ = images
    with pytest.raises(ValueError, match=param):
        LayerFeatureTransformer(tiny_vit, **{param: value}).fit(X)


def test_img_size_override_on_named_vit(images):
    X, _ = images
    t = LayerFeatureTransformer("vit_tiny_patch16_224", layer=2, pretrained=False,
                                img_size=48).fit(X[:2])
    assert t.data_config_["input_size"] == (48, 48)
    assert t.encoder_.patch_embed.grid_size == (3, 3)
    assert t.transform(X[:2]).shape == (2, 192)


def test_crop_pct_changes_preprocessing(images, tiny_cnn):
    X, _ = images
    a = LayerFeatureTransformer(tiny_cnn, img_size=32).fit_transform(X[:2])
    b = LayerFeatureTransformer(tiny_cnn, img_size=32, crop_pct=0.5).fit_transform(X[:2])
    assert not np.allclose(a, b)


def test_set_output_pandas(images, tiny_vit):
    pd = pytest.importorskip("pandas")
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, layer=21 % 5).set_output(transform="pandas")
    df = t.fit_transform(X)
    assert isinstance(df, pd.DataFrame) and df.shape == (20, 32)
    assert df.columns[0] == "layer1_mean_0"


def test_get_feature_names_before_transform(images, tiny_cnn):
    X, _ = images
    t = LayerFeatureTransformer(tiny_cnn, layer=[1, -1]).fit(X)
    names = t.get_feature_names_out()
    assert len(names) == 64 + 512 and names[-1] == "layer8_mean_511"


def test_clone_shares_the_module_and_get_params(tiny_vit):
    t = LayerFeatureTransformer(tiny_vit, layer=2, pooling="cls")
    c = clone(t)
    assert c.encoder is tiny_vit  # no weight copy
    assert c.get_params() == t.get_params()
    assert "encoder" in t.get_params() and t.set_params(layer=3).layer == 3


def test_module_is_not_modified(images, tiny_vit):
    X, _ = images
    tiny_vit.train()
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    LayerFeatureTransformer(tiny_vit).fit_transform(X)
    assert tiny_vit.training  # restored
    for k, v in tiny_vit.state_dict().items():
        assert torch.equal(v, before[k])


def test_callable_encoder_is_built_once(images):
    X, _ = images
    calls = []

    def factory():
        calls.append(1)
        return make_tiny_vit()

    t = LayerFeatureTransformer(factory, layer=1)
    t.fit_transform(X)
    clone(t).fit_transform(X)
    assert len(calls) == 1


def test_not_fitted():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LayerFeatureTransformer("resnet18").transform(np.zeros((2, 8, 8, 3), np.uint8))


def test_crop_pct_that_is_not_a_number_names_crop_pct(images, tiny_vit):
    X, _ = images
    for bad in ("a", True, float("nan"), 0):
        with pytest.raises(ValueError, match=r"crop_pct=.*\(0, 1\]"):
            LayerFeatureTransformer(tiny_vit, crop_pct=bad).fit(X)


def test_repeated_layers_are_refused_with_their_indices(images, tiny_vit):
    X, _ = images
    for layer in ([2, 2], [2, -3]):
        with pytest.raises(ValueError, match=r"layer\(s\) \[2\] more than once"):
            LayerFeatureTransformer(tiny_vit, layer=layer).fit(X)
    t = LayerFeatureTransformer(tiny_vit).fit(X)  # layer_features returns a dict: fine
    feats = t.layer_features(X, layers=[2, -3, 1])
    assert list(feats) == [2, 1]


def test_pandas_columns_are_unique_for_several_layers(images, tiny_vit):
    pd = pytest.importorskip("pandas")
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, layer=[3, 1], pooling="cls+mean")
    df = t.set_output(transform="pandas").fit_transform(X)
    assert isinstance(df, pd.DataFrame) and df.columns.is_unique and df.shape == (20, 128)
    np.testing.assert_array_equal(
        df.to_numpy(), clone(t).set_output(transform="default").fit_transform(X))


def test_dict_as_X_is_a_type_error(images, tiny_vit):
    X, _ = images
    with pytest.raises(TypeError, match="dict"):
        LayerFeatureTransformer(tiny_vit).fit({"a": X[0], "b": X[1]})


def test_progress_bar_is_silent_for_short_passes(images, tiny_vit, capsys):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, feature_store=None)
    assert t.verbose is True
    t.fit_transform(X)
    assert capsys.readouterr().err == ""


def test_amp_enters_the_store_key_only_where_it_acts(images, tiny_vit):
    X, _ = images
    a = LayerFeatureTransformer(tiny_vit, amp=True, device="cpu").fit(X)
    b = LayerFeatureTransformer(tiny_vit, amp=False, device="cpu").fit(X)
    assert a._namespace(a._get_handle()) == b._namespace(b._get_handle())
    if torch.cuda.is_available():
        a = clone(a).set_params(device="cuda").fit(X)
        b = clone(b).set_params(device="cuda").fit(X)
        assert a._namespace(a._get_handle()) != b._namespace(b._get_handle())
        assert not np.array_equal(a.transform(X), b.transform(X))


def test_weights_edited_in_place_give_new_features(images):
    X, _ = images
    model = make_tiny_vit()
    t = LayerFeatureTransformer(model, layer=2)
    before = t.fit_transform(X)
    with torch.no_grad():
        for p in model.blocks[0].parameters():
            p.data.mul_(1.5)
    after = t.transform(X)
    assert not np.allclose(before, after)
    np.testing.assert_array_equal(after, clone(t).set_params(feature_store=None)
                                  .fit_transform(X))
