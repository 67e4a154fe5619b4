"""Image and mask inputs that used to be misread silently or fail with raw tracebacks."""

import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sklearn_endo import LayerFeatureTransformer, _images
from sklearn_endo._images import (
    DecodeError,
    check_images,
    image_hashes,
    image_sizes,
    load_image,
    to_chw_float,
)
from sklearn_endo.datasets import load_mask
from sklearn_endo.ubc._masks import check_masks

RAMP = np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 65535 // (64 * 64 - 1)


def _grey3(arr01):
    """Expected tensor of a grey image with values ``arr01`` in [0, 1]."""
    t = torch.as_tensor(np.asarray(arr01, dtype=np.float32))
    return t[None].expand(3, -1, -1)


# --- 16-bit images ------------------------------------------------------------------

def test_16bit_files_and_pil_images_read_at_full_depth(tmp_path):
    ramp16 = RAMP.astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp16).save(path)
    assert Image.open(path).mode == "I;16"
    want = _grey3(RAMP / 65535.0)
    got = load_image(check_images([str(path)]), 0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert (got == 1).float().mean() < 0.01  # clipped to 8 bits, 99.6% was white
    pils = [Image.fromarray(ramp16), Image.fromarray(ramp16.astype(">u2")),
            Image.fromarray(RAMP.astype(np.int32)),
            Image.fromarray((RAMP / 65535.0).astype(np.float32))]
    assert [p.mode for p in pils] == ["I;16", "I;16B", "I", "F"]
    images = check_images(pils)
    for i in range(len(pils)):
        torch.testing.assert_close(load_image(images, i), want, atol=1e-6, rtol=0)
    # 16-bit and 8-bit grey images mix (both grey); 8-bit ones still divide by 255
    eight = np.full((64, 64), 51, np.uint8)
    mixed = check_images([Image.fromarray(ramp16), Image.fromarray(eight)])
    torch.testing.assert_close(load_image(mixed, 1), _grey3(eight / 255.0))


def test_16bit_values_out_of_range_are_refused(tmp_path):
    too_big = Image.fromarray((RAMP * 4).astype(np.int32))
    with pytest.raises(ValueError, match=r"X\[1\].*'I'.*\[0, 262140\].*\[0, 65535\]"):
        load_image(check_images([Image.fromarray(RAMP.astype(np.uint16)), too_big]), 1)
    floats = Image.fromarray(np.full((8, 8), 2.5, np.float32))
    with pytest.raises(DecodeError, match=r"X\[0\].*'F'.*\[0, 1\]"):
        load_image(check_images([floats]), 0)


def test_uint16_arrays_are_16bit(images, tiny_vit):
    X, _ = images
    X16 = (X.astype(np.uint16) * 257)  # 255 -> 65535
    np.testing.assert_allclose(to_chw_float(X16[0]).numpy(),
                               np.moveaxis(X[0] / 255.0, -1, 0), atol=1e-6)
    t = LayerFeatureTransformer(tiny_vit, feature_store=None)
    np.testing.assert_allclose(t.fit_transform(X16[:4]), t.fit_transform(X[:4]), atol=1e-5)
    torch.testing.assert_close(load_image(check_images([X16[0]]), 0),
                               load_image(check_images(X[:1]), 0), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"uint16.*\[200, 200\].*X.astype\(np.uint8\)"):
        check_images(np.full((2, 8, 8, 3), 200, np.uint16))
    with pytest.raises(ValueError, match=r"X\[0\] is a uint16.*X\[0\].astype"):
        check_images([np.full((8, 8), 200, np.uint16)])
    check_images(np.zeros((2, 8, 8, 3), np.uint16))  # black is black at any depth


def test_16bit_masks_binarise_at_half_range(tmp_path):
    path = tmp_path / "m16.png"
    Image.fromarray(RAMP.astype(np.uint16)).save(path)
    got = load_mask(path)
    np.testing.assert_array_equal(got, RAMP > 127 * 65535 / 255)
    assert 0.45 < got.mean() < 0.55  # clipped to 8 bits, almost all was foreground
    np.testing.assert_array_equal(load_mask(Image.open(path)), got)
    np.testing.assert_array_equal(load_mask(RAMP.astype(np.uint16)), got)
    truth = RAMP > 40000
    for values in (truth * 65535, truth * 1):  # 0/65535 and 0/1 16-bit masks
        Image.fromarray(values.astype(np.uint16)).save(path)
        np.testing.assert_array_equal(load_mask(path), truth)
        masks = check_masks([str(path)], check_images(np.zeros((1, 64, 64, 3), np.uint8)))
        mask, has = masks.get(0, (64, 64))
        assert has
        np.testing.assert_array_equal(mask.numpy(), truth)
    with pytest.raises(ValueError, match=r"uint16.*astype\(np.uint8\)"):
        load_mask((truth * 255).astype(np.uint16))
    # integer 0/1 arrays are read as they are, like 0/1 files
    np.testing.assert_array_equal(load_mask(truth.astype(np.uint8)), truth)


# --- EXIF orientation ---------------------------------------------------------------

def _save_with_orientation(path, arr, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])  # Pillow turns TIFFs itself
def test_exif_orientation_images(tmp_path, suffix):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    paths = []
    for o in range(1, 9):
        paths.append(str(tmp_path / f"o{o}{suffix}"))
        _save_with_orientation(paths[-1], raw, o)
    images = check_images(paths)
    pils = check_images([Image.open(p) for p in paths])
    sizes = image_sizes(images, range(8))
    assert image_sizes(pils, range(8)) == sizes
    for i, p in enumerate(paths):
        shown = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
        want = to_chw_float(shown)
        torch.testing.assert_close(load_image(images, i), want, atol=0, rtol=0)
        torch.testing.assert_close(load_image(pils, i), want, atol=0, rtol=0)
        assert sizes[i] == shown.shape[:2] == ((40, 24) if i >= 4 else (24, 40))


def test_exif_orientation_masks_stay_aligned(tmp_path):
    image = np.zeros((24, 40, 3), np.uint8)
    mask = np.zeros((24, 40), np.uint8)
    mask[2:10, 3:30] = 255
    _save_with_orientation(tmp_path / "img.jpg", image, 6)
    _save_with_orientation(tmp_path / "mask.png", mask, 6)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "mask.png")))
    assert shown.shape == (40, 24)
    np.testing.assert_array_equal(load_mask(tmp_path / "mask.png"), shown > 127)
    np.testing.assert_array_equal(load_mask(Image.open(tmp_path / "mask.png")), shown > 127)
    images = check_images([str(tmp_path / "img.jpg")])
    for masks in ([str(tmp_path / "mask.png")], [shown > 127], (shown > 127)[None]):
        got, _ = check_masks(masks, images).get(0, (40, 24))
        np.testing.assert_array_equal(got.numpy(), shown > 127)
    with pytest.raises(ValueError, match=r"masks\[0\] has size \(24, 40\).*\(40, 24\)"):
        check_masks([mask > 127], images)
    # the image's key differs from that of the same bytes' pixels unrotated
    Image.fromarray(image).save(tmp_path / "plain.jpg")
    assert image_hashes(images) != image_hashes(check_images([str(tmp_path / "plain.jpg")]))


# --- one image without the batch axis, and containers -------------------------------

def test_lone_image_and_containers_are_refused(tmp_path):
    rgb = np.zeros((32, 48, 3), np.uint8)
    with pytest.raises(ValueError, match=r"shape \(32, 48, 3\).*one colour image without "
                                         r"the batch axis; pass X\[None\]"):
        check_images(rgb)
    for c in (1, 4):
        with pytest.raises(ValueError, match="without the batch axis"):
            check_images(np.zeros((32, 48, c), np.uint8))
    assert check_images(rgb[None]).data.shape == (1, 32, 48, 3)
    gray = check_images(np.zeros((5, 32, 48), np.uint8))  # a grayscale batch is fine
    assert len(gray) == 5 and gray.n_channels == 1
    with pytest.raises(TypeError, match=r"single PIL image.*\[img\]"):
        check_images(Image.fromarray(rgb))
    with pytest.raises(TypeError, match=r"X is a dict.*keys.*list\(d.values\(\)\)"):
        check_images({"a.png": 0, "b.png": 1})
    with pytest.raises(TypeError, match="X is a set, which has no order"):
        check_images({"a.png", "b.png"})
    items = check_images(img for img in [rgb, rgb])  # a generator is read once
    assert items.kind == "list" and len(items) == 2
    Image.fromarray(rgb).save(tmp_path / "a.png")
    paths = check_images(np.array([str(tmp_path / "a.png")] * 2))  # numpy str array
    assert paths.kind == "paths" and len(paths) == 2


# --- files PIL refuses or cannot decode ---------------------------------------------

def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    images = check_images([str(path)])  # the header check passes at PIL's limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 400 px > twice the limit
    fix = r"big.png.*too large.*PIL.Image.MAX_IMAGE_PIXELS = None"
    with pytest.raises(DecodeError, match=r"X\[0\] = .*" + fix):
        load_image(images, 0)
    Image.new("RGB", (20, 21)).save(path)  # a new file: its header is read again
    with pytest.raises(ValueError, match=r"X\[0\] = .*" + fix):
        check_images([str(path)])
    with pytest.raises(ValueError, match=r"path_or_array = .*" + fix):
        load_mask(path)
    with pytest.raises(ValueError, match=r"masks\[0\] = .*" + fix):
        check_masks([str(path)], check_images(np.zeros((1, 21, 20, 3), np.uint8)))


def _truncated_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # the header is intact, the data is not


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_jpeg_message_comes_first(tmp_path, tiny_vit, num_workers):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 30), (90, 20, 20)).save(good)
    bad = tmp_path / "bad.jpg"
    _truncated_jpeg(bad)
    t = LayerFeatureTransformer(tiny_vit, num_workers=num_workers, feature_store=None)
    with pytest.raises(DecodeError) as info:
        t.fit_transform([str(good), str(bad)])
    msg = str(info.value)
    assert msg.startswith(f"X[1] = {str(bad)!r} cannot be read as an image (OSError: "
                          f"image file is truncated")
    assert "corrupt or truncated" in msg and "Caught" not in msg
    if num_workers:
        assert "DataLoader worker" in info.value.worker_traceback
    else:  # a PIL image opened lazily on the same file
        with pytest.raises(DecodeError, match=r"X\[1\] \(a PIL image\).*truncated"):
            t.fit_transform([Image.open(good), Image.open(bad)])


def test_decode_error_keeps_only_the_package_message():
    wrapped = ("Caught DecodeError in DataLoader worker process 3.\nOriginal Traceback "
               "(most recent call last):\n  File \"x.py\", line 1, in f\n    raise "
               "DecodeError(msg)\nsklearn_endo._images.DecodeError: X[7] = 'a.jpg' cannot "
               "be read\n")
    err = DecodeError(wrapped)
    assert str(err) == "X[7] = 'a.jpg' cannot be read"
    assert err.worker_traceback == wrapped and isinstance(err, ValueError)
    assert str(DecodeError("Caught in the act")) == "Caught in the act"


@pytest.mark.parametrize("content", [b"", b"just some text\n", "truncated"])
def test_bad_mask_files(tmp_path, content):
    path = tmp_path / "mask.jpg"
    if content == "truncated":
        _truncated_jpeg(path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"path_or_array = .*mask.jpg.*cannot be read as "
                                         r"a mask image.*re-export"):
        load_mask(path)
    images = check_images(np.zeros((2, 64, 80, 3), np.uint8))
    if content == "truncated":  # the header is fine: it fails when decoded
        masks = check_masks([None, str(path)], images)
        with pytest.raises(DecodeError, match=r"masks\[1\] = .*mask.jpg.*truncated"):
            masks.get(1, (32, 32))
    else:
        with pytest.raises(ValueError, match=r"masks\[1\] = .*mask.jpg.*cannot be read"):
            check_masks([None, str(path)], images)


# --- content keys -------------------------------------------------------------------

def _replace_keeping_mtime(path, data, *, in_place):
    st = os.stat(path)
    if in_place:
        with open(path, "r+b") as f:
            f.write(data)
    else:
        tmp = path.with_suffix(".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p, rsync -t, tar do
    new = os.stat(path)
    assert (new.st_size, new.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return st


@pytest.mark.parametrize("in_place", [False, True])
def test_same_size_same_mtime_replacement_changes_the_key(tmp_path, in_place):
    import time

    a, b = tmp_path / "a.bmp", tmp_path / "b.bmp"  # BMP: size set by the pixels
    Image.new("RGB", (16, 16), (255, 0, 0)).save(a)
    Image.new("RGB", (16, 16), (0, 0, 255)).save(b)
    assert a.stat().st_size == b.stat().st_size
    data_b = b.read_bytes()
    before = image_hashes(check_images([str(a)]))
    old = _replace_keeping_mtime(a, data_b, in_place=in_place)
    while os.stat(a).st_ctime_ns == old.st_ctime_ns:  # coarse file-system clocks
        time.sleep(0.01)
        os.utime(a, ns=(old.st_atime_ns, old.st_mtime_ns))
    after = image_hashes(check_images([str(a)]))
    assert after != before
    assert after == image_hashes(check_images([str(b)]))


def test_file_caches_are_bounded():
    cache = _images._BoundedCache(maxsize=3)
    for k in range(3):
        cache[k] = k
    cache[1] = 10  # replacing an entry does not empty it
    assert len(cache) == 3
    cache[3] = 3
    assert dict(cache) == {3: 3}
    for c in (_images._PATH_HEADERS, _images._PATH_HASH_CACHE):
        assert isinstance(c, _images._BoundedCache) and c.maxsize == 200_000
