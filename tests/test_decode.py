"""Fast decoding (#19), files read as RGB (#16), a bound on decoded pixels (#17)."""

import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sklearn_endo import LayerFeatureTransformer, _decode
from sklearn_endo._images import DecodeError, check_images, make_loader
from sklearn_endo.datasets import load_image_folder

KVASIR_V2 = os.environ.get("SKLEARN_ENDO_KVASIR_V2_SAMPLE", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "kvasir-v2-sample"))


def _photo(h, w, seed=0):
    """A smooth colour field with texture (1/f noise), like a photograph, uint8."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    out = []
    for _ in range(3):
        spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
        c = np.fft.irfft2(spec, s=(h, w))
        out.append((c - c.min()) / (c.max() - c.min()))
    return (np.stack(out, -1) * 255).astype(np.uint8)


def _jpeg(path, arr, **kw):
    Image.fromarray(arr).save(path, quality=90, **kw)
    return str(path)


def _old_path(arr, size):
    """The pre-#19 pipeline: full-size float, antialiased bicubic ``interpolate``."""
    t = torch.from_numpy(np.array(arr)).permute(2, 0, 1).float().div(255)
    return F.interpolate(t[None], size=size, mode="bicubic", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def test_jpeg_is_decoded_at_the_smallest_dct_scale_that_covers_the_size(tmp_path):
    path = _jpeg(tmp_path / "big.jpg", _photo(1072, 1920))
    got = _decode.decode_file(path, "X[0]", size=(224, 224))
    assert got.dtype == torch.uint8 and got.shape == (3, 224, 224)
    # independent: Pillow's own draft (1/4: 480x268 covers 224x224), then resize
    with Image.open(path) as img:
        img.draft("RGB", (224, 224))
        assert img.size == (480, 268)
        want = np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), want)
    # a full decode gives other pixels (so the draft did happen) ...
    with Image.open(path) as img:
        full = np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))
    assert not np.array_equal(full, want)
    # ... and the old float path is close: about one 8-bit level on average (on this
    # 1/f texture; 0.6 on real endoscopy frames, see the last test)
    old = _old_path(np.asarray(Image.open(path).convert("RGB")), (224, 224))
    diff = (old - got.float() / 255).abs() * 255
    assert diff.mean() < 1.5, diff.mean()
    # a size larger than the file: no reduction, upsampled from the full decode
    small = _jpeg(tmp_path / "small.jpg", _photo(40, 60))
    up = _decode.decode_file(small, "X[0]", size=(80, 120))
    want = np.asarray(Image.open(small).convert("RGB").resize((120, 80),
                                                              Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(up.permute(1, 2, 0).numpy(), want)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_draft_decoding_keeps_exif_orientation(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _jpeg(tmp_path / "o.jpg", _photo(600, 800, seed=orientation), exif=exif)
    size = (70, 50)  # (h, w) as shown; the file is stored 600 x 800 (h x w)
    got = _decode.decode_file(path, "X[0]", size=size).permute(1, 2, 0).numpy()
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert shown.shape[:2] == ((800, 600) if orientation >= 5 else (600, 800))
    want = _old_path(shown, size).permute(1, 2, 0).numpy() * 255
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 1.5  # a rotated image would differ by ~40
    # with crop_pct: shorter side to round(50 / 0.875) = 57, then a centre crop
    got = _decode.decode_file(path, "X[0]", size=(50, 50), crop_pct=0.875)
    assert got.shape == (3, 50, 50)


def test_an_image_at_the_input_size_is_not_resampled(monkeypatch):
    X = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    calls = []
    real = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: calls.append(2) / 0)
    batch = next(iter(make_loader(check_images(X), range(5), (32, 32), batch_size=5)))
    assert calls == []
    torch.testing.assert_close(batch, torch.from_numpy(X).permute(0, 3, 1, 2) / 255.0,
                               atol=0, rtol=0)
    raw = next(iter(make_loader(check_images(X), range(5), (32, 32), batch_size=5,
                                raw=True)))
    assert raw.dtype == torch.uint8
    np.testing.assert_array_equal(raw.permute(0, 2, 3, 1).numpy(), X)
    # another size: resized on uint8 by Pillow (its antialiased bicubic), once per image
    make_loader(check_images(X), range(5), (16, 16), batch_size=5)
    batch = next(iter(make_loader(check_images(X), range(5), (16, 16), batch_size=5)))
    assert calls == [1] * 5
    want = np.asarray(Image.fromarray(X[0]).resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal((batch[0] * 255).round().byte().permute(1, 2, 0), want)


def _mixed_folder(root):
    """Class folders mixing L, RGB, RGBA, P and 16-bit grey files."""
    rng = np.random.default_rng(1)
    made = {}
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        grey = rng.integers(0, 256, (20, 24), dtype=np.uint8)
        rgba = np.dstack([rgb, rng.integers(0, 256, (20, 24), dtype=np.uint8)])
        g16 = (np.arange(20 * 24).reshape(20, 24) * 131 + 7).astype(np.uint16)
        files = {"rgb.jpg": Image.fromarray(rgb), "grey.jpg": Image.fromarray(grey),
                 "rgba.png": Image.fromarray(rgba), "pal.png": Image.fromarray(rgb).quantize(),
                 "g16.png": Image.fromarray(g16)}
        for name, img in files.items():
            img.save(root / c / name)
            made[str(root / c / name)] = img
    return made


def test_a_folder_mixing_modes_is_read_as_rgb(tmp_path, tiny_vit):
    made = _mixed_folder(tmp_path / "data")
    X, y = load_image_folder(tmp_path / "data", return_X_y=True)
    images = check_images(X)
    assert images.n_channels == 3
    for i, path in enumerate(X):
        got = _decode.load_image(images, i)
        assert got.shape == (3, 20, 24)
        name = os.path.basename(path)
        with Image.open(path) as img:
            if name == "g16.png":  # 16-bit kept at depth, replicated
                assert img.mode == "I;16"
                want = np.asarray(img).astype(np.float32) / 65535
                torch.testing.assert_close(got, torch.from_numpy(want).expand(3, -1, -1))
                assert not torch.allclose(got * 255, (got * 255).round())  # not 8-bit
                continue
            # grey replicated, alpha dropped (not composited), palette converted
            want = np.asarray(img.convert("RGB")).astype(np.float32) / 255
        torch.testing.assert_close(got, torch.from_numpy(want).permute(2, 0, 1))
    first = {os.path.basename(p): p for p in X[::-1]}  # class "a"
    # the alpha channel does not darken: RGBA reads as its RGB
    np.testing.assert_array_equal(
        _decode.decode_resized(check_images([first["rgba.png"]]), 0).numpy(),
        np.moveaxis(np.asarray(made[first["rgba.png"]])[..., :3], -1, 0))
    feats = LayerFeatureTransformer(tiny_vit, feature_store=None).fit_transform(X)
    assert feats.shape[0] == len(X) and np.isfinite(feats).all()
    # in-memory images keep today's strictness
    with pytest.raises(ValueError, match="mixes grayscale and colour"):
        check_images([made[first["rgb.jpg"]], made[first["grey.jpg"]]])


def test_cli_sweep_reads_a_folder_mixing_modes(tmp_path, capsys):
    from sklearn_endo import __main__ as cli

    _mixed_folder(tmp_path / "data")
    code = cli.main(["sweep", str(tmp_path / "data"), "--encoder", "resnet18",
                     "--random-weights", "--img-size", "32", "--quiet", "--cv", "2",
                     "--layers=-1", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr()


def test_messages_about_a_file_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    _jpeg(tmp_path / "good.jpg", _photo(16, 16))
    paths = [str(tmp_path / "good.jpg"), str(bad)]
    with pytest.raises(DecodeError, match=r"X\[1\] = '.*broken.jpg' cannot be read"):
        check_images(paths)
    with pytest.raises(DecodeError, match=r"broken.jpg"):
        _decode.decode_file(str(bad), "X[1]", size=(8, 8))


def test_decoded_pixels_are_bounded(tmp_path, monkeypatch):
    photo = _photo(1500, 2000)
    jpg = _jpeg(tmp_path / "huge.jpg", photo)
    png = tmp_path / "huge.png"
    Image.fromarray(photo).save(png)
    monkeypatch.setenv("SKLEARN_ENDO_MAX_DECODED_PIXELS", "300000")  # 3 MP files
    # the JPEG decodes at 1/4 per side (500 x 375 = 187,500 pixels) for 224 x 224
    assert _decode.decode_file(jpg, "X[0]", size=(224, 224)).shape == (3, 224, 224)
    for path, size in ((jpg, None), (jpg, (1000, 1000)), (str(png), (224, 224))):
        with pytest.raises(DecodeError, match=r"huge\.(jpg|png)' would decode to "
                                              r"\d+x\d+ pixels.*300000.*"
                                              r"SKLEARN_ENDO_MAX_DECODED_PIXELS="):
            _decode.decode_file(path, "X[0]", size=size)
    # through an estimator, in a DataLoader worker: the message names the file
    t = LayerFeatureTransformer("resnet18", pretrained=False, img_size=32,
                                feature_store=None, num_workers=1)
    with pytest.raises(DecodeError, match=r"huge\.png"):
        t.fit_transform([jpg, str(png)])
    monkeypatch.setenv("SKLEARN_ENDO_MAX_DECODED_PIXELS", "lots")
    with pytest.raises(ValueError, match="SKLEARN_ENDO_MAX_DECODED_PIXELS='lots' must"):
        _decode.decode_file(jpg, "X[0]", size=(224, 224))


def test_the_store_key_changes_with_the_preprocessing(monkeypatch, tiny_vit):
    t = LayerFeatureTransformer(tiny_vit)
    before = t._namespace(t._get_handle())
    monkeypatch.setattr(_decode, "PREPROCESSING", "other")
    assert t._namespace(t._get_handle()) != before


@pytest.mark.skipif(not os.path.isdir(KVASIR_V2),
                    reason=f"the Kvasir v2 sample is not at {KVASIR_V2!r} (set "
                           f"SKLEARN_ENDO_KVASIR_V2_SAMPLE to its folder)")
def test_real_endoscopy_jpegs_match_the_full_decode_within_a_level():
    X, y = load_image_folder(KVASIR_V2, return_X_y=True)
    assert len(X) >= 10
    images = check_images(list(X))
    diffs = []
    for i in range(0, len(X), 3):
        got = _decode.decode_resized(images, i, (224, 224)).float() / 255
        old = _old_path(np.asarray(Image.open(X[i]).convert("RGB")), (224, 224))
        diffs.append(float((got - old).abs().mean()) * 255)
    assert max(diffs) < 1.5, diffs  # measured: 0.61 on average, 0.92 at worst
    assert glob.glob(os.path.join(KVASIR_V2, "*", "*.jpg"))


def test_loader_options_overlap_decoding_with_the_encoder():
    from sklearn_endo._images import loader_options

    assert loader_options("paths", "cpu", cpu_count=2) == {
        "num_workers": 2, "pin_memory": False, "persistent_workers": False,
        "prefetch_factor": 2}
    assert loader_options("paths", "cuda:0", cpu_count=16, training=True) == {
        "num_workers": 4, "pin_memory": True, "persistent_workers": True,
        "prefetch_factor": 4}
    for kind in ("array", "list"):  # nothing to decode: no worker processes
        assert loader_options(kind, "cuda", cpu_count=16) == {
            "num_workers": 0, "pin_memory": True, "persistent_workers": False}
    assert loader_options("paths", "cpu", num_workers=0, training=True) == {
        "num_workers": 0, "pin_memory": False, "persistent_workers": False}
    assert loader_options("paths", "cpu", cpu_count=None)["num_workers"] >= 1
