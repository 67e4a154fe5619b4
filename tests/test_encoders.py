"""Encoder identity, weight edits, output layouts, checkpoint keys and clear errors."""

import copy
import functools
import gc
import os

import numpy as np
import pytest
import timm
import torch
from torch import nn

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo._blocks import classify, find_blocks
from sklearn_endo._encoders import (
    _make_handle,
    registry_clear,
    resolve_device,
    resolve_encoder,
    weights_fingerprint,
)

from .conftest import make_tiny_vit


@pytest.fixture(autouse=True)
def _empty_registry():
    registry_clear()
    yield
    registry_clear()


def _vit_with_seed(seed):
    torch.manual_seed(seed)
    return make_tiny_vit()


# ---------------------------------------------------------------- identity of callables
def test_lambdas_freed_in_turn_get_their_own_networks(images):
    X, _ = images
    features, prints = [], []
    for seed in range(3):
        factory = lambda s=seed: _vit_with_seed(s)  # noqa: E731
        t = LayerFeatureTransformer(factory, layer=2, feature_store=None)
        features.append(t.fit_transform(X[:4]))
        prints.append(t._get_handle().fingerprint)
        del factory, t
        gc.collect()  # the next lambda may be built at the freed address
    want = [weights_fingerprint(_vit_with_seed(s)) for s in range(3)]
    assert prints == want
    assert not np.allclose(features[0], features[1])
    assert not np.allclose(features[1], features[2])


def test_closures_in_a_loop_are_told_apart():
    handles = []
    for seed in (1, 2):
        def make(seed=seed):
            return _vit_with_seed(seed)

        handles.append(resolve_encoder(make))
    assert handles[0].fingerprint != handles[1].fingerprint


def _factory():
    return _vit_with_seed(1)


def test_redefined_function_of_the_same_name_is_not_the_old_one(monkeypatch):
    # a notebook cell run again: plain pickling names both `module._factory`
    first = resolve_encoder(_factory).fingerprint

    def again():
        return _vit_with_seed(2)

    again.__qualname__ = again.__name__ = "_factory"
    monkeypatch.setattr(f"{__name__}._factory", again)
    assert resolve_encoder(again).fingerprint != first


def test_copies_of_a_partial_share_one_loaded_encoder():
    # GridSearchCV with n_jobs sends copies of the spec; each must not reload the encoder
    factory = functools.partial(_vit_with_seed, 3)
    handle = resolve_encoder(factory)
    assert resolve_encoder(copy.deepcopy(factory)) is handle
    assert resolve_encoder(functools.partial(_vit_with_seed, 4)) is not handle


# ---------------------------------------------------------------- weights edited in place
def test_in_place_edit_through_data_changes_fingerprint_and_features(images):
    X, _ = images
    model = make_tiny_vit()
    t = LayerFeatureTransformer(model, layer=2)  # in-memory store on
    before = t.fit_transform(X[:4])
    old = t._get_handle().fingerprint
    with torch.no_grad():
        for p in model.parameters():
            p.data.mul_(1.5)  # .data bumps neither data_ptr nor the version counter
    handle = resolve_encoder(model)
    assert handle.fingerprint != old
    assert handle.fingerprint == weights_fingerprint(model)
    after = t.transform(X[:4])
    assert not np.allclose(before, after)
    np.testing.assert_allclose(
        after, LayerFeatureTransformer(copy.deepcopy(model), layer=2,
                                       feature_store=None).fit_transform(X[:4]),
        rtol=1e-5, atol=1e-6)


def test_refresh_sees_one_changed_element_and_nothing_else():
    model = make_tiny_vit()
    handle = resolve_encoder(model)
    assert handle.refresh() is False
    old = handle.fingerprint
    assert old == weights_fingerprint(model)
    w = model.blocks[1].mlp.fc1.weight
    with torch.no_grad():  # through the parameter: its version counter moves
        w.view(-1)[7] = torch.nextafter(w.view(-1)[7], torch.tensor(np.inf))  # one ulp
    assert handle.refresh() is True
    assert handle.fingerprint != old
    assert handle.fingerprint == weights_fingerprint(model)
    assert handle.refresh() is False
    # through .data no counter moves: the sampled elements (the first among them) see it
    old = handle.fingerprint
    w.data.view(-1)[0] = torch.nextafter(w.data.view(-1)[0], torch.tensor(np.inf))
    assert handle.refresh() is True
    assert handle.fingerprint != old
    assert handle.refresh() is False


def test_refresh_updates_a_copy_of_the_users_module():
    # what resolve_encoder does when the module must move to another device
    model = make_tiny_vit()
    handle = _make_handle(copy.deepcopy(model), "copy", None, source=model)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.data.zero_()
    assert handle.refresh() is True
    assert torch.equal(handle.module.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert handle.fingerprint == weights_fingerprint(model)


def test_replaced_block_is_found_again():
    model = make_tiny_vit()
    handle = resolve_encoder(model)
    model.blocks[2] = copy.deepcopy(model.blocks[2])  # same weights, new module
    resolve_encoder(model)
    assert handle.blocks[2][1] is model.blocks[2]


def test_editing_a_named_encoder_does_not_change_what_the_name_means():
    h = resolve_encoder("vit_tiny_patch16_224", pretrained=False, img_size=32)
    pristine = h.fingerprint
    with torch.no_grad():  # users reach a named encoder's module through encoder_
        h.expose().blocks[0].norm1.weight.data.add_(1.0)
    again = resolve_encoder("vit_tiny_patch16_224", pretrained=False, img_size=32)
    assert again is not h and again.fingerprint == pristine
    assert h.refresh() is False and h.fingerprint != pristine  # the edited one followed


def test_named_encoder_edited_through_encoder_is_noticed(images):
    X, _ = images
    t = LayerFeatureTransformer("vit_tiny_patch16_224", layer=2, pretrained=False,
                                img_size=32)
    before = t.fit_transform(X[:4])
    handle = t._get_handle()
    assert not handle.exposed  # only the registry holds it: no check before each pass
    with torch.no_grad():
        t.encoder_.blocks[0].norm1.weight.data.mul_(3.0)
    assert handle.exposed
    after = t.transform(X[:4])  # not the stored rows of the old weights
    assert not np.allclose(before, after)
    fresh = copy.deepcopy(t.encoder_)
    np.testing.assert_allclose(
        after, LayerFeatureTransformer(fresh, layer=2, feature_store=None).fit_transform(X[:4]),
        rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- block output layouts
class _Block(nn.Module):
    def __init__(self, c, channels_last):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.BatchNorm2d(c)
        self.channels_last = channels_last

    def forward(self, x):
        x = x.permute(0, 3, 1, 2) if self.channels_last else x
        x = x + self.norm(self.conv(x))
        return x.permute(0, 2, 3, 1) if self.channels_last else x


class _Net(nn.Module):
    def __init__(self, c=8, stride=4, channels_last=False, n=2):
        super().__init__()
        self.stem = nn.Conv2d(3, c, stride, stride=stride)
        self.blocks = nn.Sequential(*[_Block(c, channels_last) for _ in range(n)])
        self.channels_last = channels_last

    def forward(self, x):
        x = self.stem(x)
        return self.blocks(x.permute(0, 2, 3, 1) if self.channels_last else x)


def test_undeclared_channels_last_maps_are_pooled_over_space(images):
    X, _ = images
    net = _Net(c=16, channels_last=True).eval()
    h = resolve_encoder(net, img_size=32)
    assert h.block_formats == ["NHWC"] * 3 and h.output_fmt == "NHWC"
    out = LayerFeatureTransformer(net, layer=2, img_size=32,
                                  feature_store=None).fit_transform(X[:3])
    x = torch.from_numpy(X[:3]).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(h.data_config["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        h.data_config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net(x).mean((1, 2))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_maps_as_wide_as_they_have_channels_are_told_apart(channels_last):
    # 32 px / stride 4 = 8 x 8 maps with 8 channels: the square probe cannot tell, the
    # non-square one can
    net = _Net(c=8, stride=4, channels_last=channels_last).eval()
    h = resolve_encoder(net, img_size=32)
    assert h.output_fmt == ("NHWC" if channels_last else "NCHW")
    assert set(h.block_formats) == {h.output_fmt}


def test_mixed_layouts_are_refused():
    net = _Net(c=16)
    net.blocks[1] = nn.Sequential(_Block(16, False), _Block(16, False))
    net.blocks.append(_Tail())
    with pytest.raises(ValueError, match="channels-first and channels-last"):
        resolve_encoder(net, img_size=32)


class _Tail(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 16, 1)
        self.b = nn.BatchNorm2d(16)

    def forward(self, x):
        return self.b(self.a(x)).permute(0, 2, 3, 1)


@pytest.mark.parametrize("shape, size, want", [
    ((1, 64, 4, 4), (64, 64), "NCHW"), ((1, 4, 4, 64), (64, 64), "NHWC"),
    ((1, 64, 4, 6), (64, 96), "NCHW"), ((1, 4, 6, 64), (64, 96), "NHWC"),
    ((1, 17, 32), (64, 64), "NLC"), ((1, 32), (64, 64), "NC"),
    ((1, 8, 8, 8), (64, 64), None)])
def test_classify_shapes(shape, size, want):
    assert classify(shape, size, hints={8, 64}) == want


def test_swin_stage_layout_is_blocks_then_merging():
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False,
                              num_classes=0, img_size=64, window_size=2, embed_dim=32,
                              num_heads=(1, 1, 1, 1))
    names = [n for n, _ in find_blocks(model)]
    assert names == [f"layers.{s}.blocks.{b}" for s, d in enumerate((2, 2, 6, 2))
                     for b in range(d)]


# ---------------------------------------------------------------- checkpoint keys
def test_checkpoint_replaced_with_size_and_mtime_kept_is_reloaded(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    prints = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = timm.create_model("resnet10t", pretrained=False, num_classes=0)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if seed == 1:
            save_file(state, str(path))
            st = os.stat(path)
        else:  # as `cp -p` or `rsync -t` would: same size, same mtime
            save_file(state, str(path))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert os.stat(path).st_size == st.st_size
        prints.append(resolve_encoder("resnet10t", checkpoint_path=path).fingerprint)
        assert prints[-1] == weights_fingerprint(model)
    assert prints[0] != prints[1]


def test_corrupt_safetensors_names_the_path(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="checkpoint_path=.*broken.safetensors.*not a "
                                         "readable .safetensors"):
        resolve_encoder("resnet10t", checkpoint_path=path)


def test_checkpoint_directory_says_it_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        resolve_encoder("resnet10t", checkpoint_path=tmp_path)


# ---------------------------------------------------------------- img_size and device
@pytest.mark.parametrize("img_size, error, match", [
    ("32", TypeError, "is a string"), (0, ValueError, "must be positive"),
    (-8, ValueError, "must be positive"), (32.0, TypeError, "not an int or a pair"),
    ((32,), TypeError, "not an int or a pair"), (True, TypeError, "not an int or a pair"),
    ((32, 32, 3), TypeError, "not an int or a pair")])
def test_bad_img_size_values(img_size, error, match):
    with pytest.raises(error, match=rf"img_size=.*{match}"):
        resolve_encoder("resnet10t", pretrained=False, img_size=img_size)


def test_img_size_accepts_numpy_ints():
    h = resolve_encoder(make_tiny_vit(), img_size=np.int64(32))
    assert h.data_config["input_size"] == (32, 32)


@pytest.mark.parametrize("img_size, match", [(8, "smaller than the 16x16 patches"),
                                             (40, "not a multiple of the 16x16 patches")])
def test_img_size_must_fit_the_patches(img_size, match):
    with pytest.raises(ValueError, match=match):
        resolve_encoder("vit_tiny_patch16_224", pretrained=False, img_size=img_size)


def test_img_size_a_fixed_size_module_refuses_is_reported():
    with pytest.raises(ValueError, match=r"img_size=\(64, 64\) does not fit"):
        resolve_encoder(make_tiny_vit(), img_size=64)  # built for 32 px


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_a_gpu(device):
    with pytest.raises(ValueError, match=r"device=.*CUDA is not available.*'auto'.*'cpu'"):
        resolve_device(device)


def test_mps_where_it_is_missing():
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("MPS is present here")
    with pytest.raises(ValueError, match="device='mps'.*'auto'"):
        resolve_device("mps")


def test_unknown_device_and_auto():
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")


def test_unknown_encoder_name_suggests_close_names():
    with pytest.raises(ValueError, match="resnet18"):
        resolve_encoder("resnet-18", pretrained=False)


@pytest.mark.parametrize("name", ["swinv2_tiny_window8_256", "pvt_v2_b0", "repvit_m1",
                                  "caformer_s18"])
def test_stage_downsamples_are_not_blocks(name):
    # built on the meta device: only the structure is needed
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    stages = getattr(model, "stages", None) or model.layers
    names = [n for n, _ in find_blocks(model)]
    assert len(names) == sum(len(s.blocks) for s in stages)
    assert all(".blocks." in n for n in names)


def test_signature_covers_every_dtype():
    from sklearn_endo._encoders import _weights_signature

    m = nn.Module()
    m.register_buffer("f16", torch.randn(5).half())
    m.register_buffer("bf16", torch.randn(3, 3).bfloat16())
    m.register_buffer("f64", torch.randn(4).double())
    m.register_buffer("flag", torch.zeros(3, dtype=torch.bool))
    m.register_buffer("count", torch.tensor(7))
    m.register_buffer("cplx", torch.randn(2, dtype=torch.complex64))
    m.register_buffer("empty", torch.zeros(0))
    m.register_buffer("nan", torch.full((2,), float("nan")))
    base = _weights_signature(m)
    assert _weights_signature(m) == base  # NaN compares equal to itself here
    for name, edit in [("flag", lambda t: t.__setitem__(1, True)),
                       ("count", lambda t: t.add_(1)),
                       ("f16", lambda t: t.mul_(-1)),
                       ("bf16", lambda t: t.__setitem__((2, 2), 0.5)),
                       ("f64", lambda t: t.add_(1e-12)),
                       ("cplx", lambda t: t.mul_(1j))]:
        before = _weights_signature(m)
        edit(getattr(m, name).data)
        assert _weights_signature(m) != before, name


def test_final_norm_is_offered_for_token_outputs_only(images):
    X, _ = images
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0,
                             img_size=32, window_size=2, embed_dim=16, depths=(1, 1, 1, 1),
                             num_heads=(1, 1, 1, 1))
    assert resolve_encoder(swin).final_norm is None  # its norm acts on NHWC maps
    with pytest.raises(ValueError, match="final_norm=True"):
        LayerFeatureTransformer(swin, final_norm=True, feature_store=None).fit(X[:2])
    assert resolve_encoder(make_tiny_vit()).final_norm is not None


def test_signature_of_inference_tensors_and_its_cache():
    """Inference tensors keep no version counter: their sampled bits still see edits (#16).

    With a cache (what a handle keeps) the signature equals the uncached one, and an edit
    through ``.data`` of a cached tensor, or a tensor replaced, is seen.
    """
    from sklearn_endo._encoders import _weights_signature

    m = nn.Linear(4, 3)
    with torch.inference_mode():
        m.register_buffer("stat", torch.ones(5))
    assert m.stat.is_inference()
    cache = {}
    base = _weights_signature(m, cache)
    assert set(cache) == {"weight", "bias", "stat"}
    assert _weights_signature(m, cache) == base == _weights_signature(m)
    with torch.inference_mode():
        m.stat.mul_(2)
    edited = _weights_signature(m, cache)
    assert edited != base and edited == _weights_signature(m)
    m.weight.data.view(-1)[0] += 1.0  # no counter moves; the cached view sees the memory
    assert _weights_signature(m, cache) != edited
    edited = _weights_signature(m, cache)
    m.bias.data = torch.zeros(3)  # a new tensor: the cache entry is not reused
    assert _weights_signature(m, cache) != edited
    assert not cache["bias"][1].any()  # the new zeros, not the old bias
