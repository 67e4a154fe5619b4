"""Every encoder family the studies use: block count and mean-pooled features vs timm.

Each family is built tiny with random weights. The number of layers must equal the
model's own number of blocks (ViT ``len(model.blocks)``, CNN and Swin the sum of stage
depths: downsample and patch-merging layers are not blocks), and the mean-pooled features
of a middle and of the last layer must equal timm's own ``forward_intermediates`` at the
matching block or stage end, pooled independently here (prefix tokens left out, spatial
axes found by timm, which returns NCHW).
"""

import numpy as np
import pytest
import timm
import torch

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo._encoders import resolve_encoder


def _vit_blocks(model):
    n = len(model.blocks)
    return n, [(n // 2 - 1, n // 2), (n - 1, n)]  # (timm index, our layer)


def _stage_ends(lengths, first_index):
    """Layers closing each stage; timm numbers stages from ``first_index``."""
    ends = np.cumsum(lengths).tolist()
    pairs = [(first_index + s, end) for s, end in enumerate(ends)]
    return sum(lengths), [pairs[len(pairs) // 2 - 1], pairs[-1]]


def _resnet(model):
    return _stage_ends([len(getattr(model, f"layer{i}")) for i in range(1, 5)], 1)


def _staged(model):  # ResNetV2 (BiT), ConvNeXt: stages[i].blocks
    return _stage_ends([len(s.blocks) for s in model.stages],
                       1 if type(model).__name__ == "ResNetV2" else 0)


def _swin(model):
    return _stage_ends([len(layer.blocks) for layer in model.layers], 0)


def _regnet(model):
    return _stage_ends([len(list(getattr(model, f"s{i}").children())) for i in range(1, 5)],
                       1)


def _efficientnet(model):
    # timm index i is the end of model.blocks[stage_ends[i] - 1] (index 0 follows blocks[0])
    lengths = [len(s) for s in model.blocks]
    cum = np.cumsum(lengths).tolist()
    pairs = [(i, cum[end - 1]) for i, end in enumerate(model.stage_ends)]
    return sum(lengths), [pairs[len(pairs) // 2], pairs[-1]]


VIT = dict(depth=4, embed_dim=64, num_heads=2)
FAMILIES = {
    # name: (timm name, kwargs, input size, blocks and (timm index, layer) pairs, layout)
    "vit": ("vit_tiny_patch16_224", dict(VIT, img_size=32), 32, _vit_blocks, "NLC"),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(VIT, img_size=32), 32,
                       _vit_blocks, "NLC"),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", dict(VIT, img_size=28), 28,
                   _vit_blocks, "NLC"),
    "eva02": ("eva02_tiny_patch14_224", dict(VIT, img_size=28), 28, _vit_blocks, "NLC"),
    "samvit": ("samvit_base_patch16", dict(VIT, img_size=64, global_attn_indexes=(1, 3),
                                           window_size=2), 64, _vit_blocks, "NHWC"),
    "pe_core": ("vit_pe_core_tiny_patch16_384", dict(VIT, img_size=32), 32, _vit_blocks,
                "NLC"),
    "bit_resnetv2": ("resnetv2_50x1_bit", {}, 64, _staged, "NCHW"),
    "resnet": ("resnet18", {}, 64, _resnet, "NCHW"),
    "efficientnet": ("efficientnet_b0", {}, 64, _efficientnet, "NCHW"),
    "convnext": ("convnext_atto", {}, 64, _staged, "NCHW"),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=2, embed_dim=32,
                                                  num_heads=(1, 1, 1, 1)), 64, _swin,
             "NHWC"),
    "regnet": ("regnetx_002", {}, 64, _regnet, "NCHW"),
}


def _build(name, kwargs):
    if not timm.is_model(name):
        pytest.skip(f"{name} is not in timm {timm.__version__}")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_blocks_and_pooled_features_match_timm(family):
    name, kwargs, size, blocks_of, layout = FAMILIES[family]
    model = _build(name, kwargs)
    n_blocks, pairs = blocks_of(model)
    X = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)

    handle = resolve_encoder(model, img_size=size)
    assert handle.n_layers == n_blocks
    assert set(handle.block_formats) == {layout}
    if layout in ("NCHW", "NHWC"):
        assert handle.output_fmt == layout

    # the package's preprocessing, done independently: X is already at the input size
    cfg = handle.data_config
    assert tuple(cfg["input_size"]) == (size, size)
    x = torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(
        1, 3, 1, 1)
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=[i for i, _ in pairs],
                                           intermediates_only=True, norm=False)
    for (index, layer), fmap in zip(pairs, maps):
        t = LayerFeatureTransformer(model, layer=layer, pooling="mean", feature_store=None,
                                    pretrained=False, img_size=size, device="cpu")
        got = t.fit_transform(X)
        want = fmap.mean((2, 3)).numpy()  # timm's maps are NCHW, prefix tokens removed
        assert got.shape == want.shape, (layer, index)
        # float32 noise (the loader's batches have another memory layout, so convolutions
        # round differently) grows through deep random-init blocks: up to 4e-5 of the
        # largest value for BiT; a wrong axis or token set is off by far more
        np.testing.assert_allclose(got, want, rtol=1e-4,
                                   atol=1e-4 * max(1.0, np.abs(want).max()))


def test_named_swin_counts_blocks_not_patch_merging():
    h = resolve_encoder("swin_tiny_patch4_window7_224", pretrained=False, img_size=64)
    assert h.n_layers == 2 + 2 + 6 + 2
    assert not any("downsample" in n for n, _ in h.blocks)
    assert h.output_fmt == "NHWC"


def test_samvit_mean_has_one_value_per_channel():
    # the reported failure: SAM's channels-last maps were averaged over channels, giving
    # one value per spatial row
    name, kwargs, size, _, _ = FAMILIES["samvit"]
    model = _build(name, kwargs)
    X = np.random.default_rng(1).integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)
    out = LayerFeatureTransformer(model, layer=-1, feature_store=None,
                                  device="cpu").fit_transform(X)
    assert out.shape == (2, kwargs["embed_dim"])
