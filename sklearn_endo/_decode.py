"""Decoding images to tensors at the size an encoder needs (files, PIL images, arrays).

The fast path, used by every estimator that reads images batch by batch:

* a JPEG file is decoded at the smallest DCT scale (1/8, 1/4, 1/2 or 1) that still
  covers the size it is resized to (Pillow's ``Image.draft``, libjpeg's scaled
  decoding), so a 1920x1072 frame going to 224 x 224 decodes 480x268 pixels;
* 8-bit images are resized on uint8 with Pillow's antialiased filters (the filters that
  ``torch.nn.functional.interpolate(..., antialias=True)`` was ported from) and turned
  into floats only at the end, by the caller (on the device, or in the DataLoader
  worker);
* an image already at the output size is not resampled;
* 16-bit and 32-bit grey images keep their depth: they are read as float32 in [0, 1]
  and resized with ``interpolate`` as before.

Files are always read as RGB: grayscale is replicated to three channels, palette,
CMYK and YCbCr files are converted, and an alpha channel (RGBA, LA, PA) is dropped
(Pillow's ``img.convert("RGB")``, not composited on a background); 16-bit grey files
are kept at depth. Pixels differ from a full-size float decode by quantisation (the
result is rounded to 8 bits) and, for JPEGs, by the DCT-domain downscale; the
difference is measured in docs/layer_features.md. ``PREPROCESSING`` names this
pipeline and is part of every feature-store key, so stored features computed with
another pipeline are never served.

A file whose decoded size (after the DCT reduction) exceeds
``SKLEARN_ENDO_MAX_DECODED_PIXELS`` (default :data:`MAX_DECODED_PIXELS`, 100
megapixels: about 300 MB as 8-bit RGB) is refused with a :class:`DecodeError` naming it,
so one huge file cannot exhaust memory. JPEGs of up to 6.4 gigapixels pass (decoded at
1/8 per side) when the output is small; Pillow's own limit ``Image.MAX_IMAGE_PIXELS``
still applies to every file when it is opened.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F

PREPROCESSING = "u8draft1"  # in every feature-store key: change it when pixels change
MAX_DECODED_PIXELS = 100_000_000
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")  # timm's others fall back to bilinear
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # grey, more than 8 bits
_GREY_MODES = ("1", "L", "LA", "La")
_DRAFT_FORMATS = ("JPEG", "MPO")


class DecodeError(ValueError):
    """An image or mask file that cannot be read; the message names input, file and fix.

    Raised in a DataLoader worker, torch re-creates the exception in the main process
    from one string: "Caught DecodeError in DataLoader worker process 0", then the
    worker's traceback. This class keeps only the package's message, so that it comes
    first, and keeps the worker's traceback in ``worker_traceback``.
    """

    def __init__(self, message=""):
        message = str(message)
        self.worker_traceback = None
        if message.startswith("Caught "):
            marker = f".{type(self).__qualname__}: "  # after the module's name
            at = message.rfind(marker)
            if at >= 0:
                self.worker_traceback = message
                message = message[at + len(marker):].rstrip("\n")
        super().__init__(message)


# --- EXIF orientation ---------------------------------------------------------------

def exif_orientation(img, *, from_file=True):
    """EXIF orientation (1..8) of a PIL image; 1 when absent or unreadable.

    With ``from_file=True`` (an image just opened) only the header is read, never the
    pixel data; this is what header checks and decoding both use, so they agree.
    """
    from PIL import Image

    if getattr(img, "format", None) == "TIFF" and _pillow_orients_tiff():
        return 1  # Pillow turns TIFFs itself, on open (size) and on load (pixels)
    try:
        # PngImageFile.getexif decodes the whole image to find a late eXIf chunk
        exif = Image.Image.getexif(img) if from_file else img.getexif()
        orientation = int(exif.get(0x0112, 1))
    except Exception:  # a broken EXIF block: viewers show the image unrotated
        return 1
    return orientation if 1 <= orientation <= 8 else 1


@functools.lru_cache(maxsize=None)
def _pillow_orients_tiff():
    """Whether this Pillow applies a TIFF's orientation tag when it loads the file."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 2  # mirrored left-right
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(buf, format="TIFF", exif=exif)
    buf.seek(0)
    with Image.open(buf) as img:
        return int(np.asarray(img)[0, 0]) == 255


def orient(arr, orientation):
    """Apply an EXIF orientation to an array (H, W[, C]), as ``ImageOps.exif_transpose``."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:
        arr = np.rot90(arr, k=-1)
    elif orientation == 7:
        arr = arr.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        arr = np.rot90(arr, k=1)
    return np.ascontiguousarray(arr)


def _orient_pil(img, orientation):
    """``orient`` on a PIL image (the transposes of ``ImageOps.exif_transpose``)."""
    from PIL import Image

    T = Image.Transpose
    method = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
              6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}.get(orientation)
    return img if method is None else img.transpose(method)


def oriented_hw(size_wh, orientation):
    """(height, width) as shown, from PIL's (width, height) and the EXIF orientation."""
    w, h = size_wh
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def unreadable_message(where, path, exc, *, what="an image", fix=None):
    """The message for a file that cannot be opened or decoded."""
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError):
        return (
            f"{where} = {os.fspath(path)!r} is too large to decode safely ({exc}). "
            f"Downscale the file, or, if you trust it, lift PIL's limit first: "
            f"PIL.Image.MAX_IMAGE_PIXELS = None."
        )
    fix = fix or "Remove it or replace it with a valid image file."
    return (f"{where} = {os.fspath(path)!r} cannot be read as {what} "
            f"({type(exc).__name__}: {exc}). {fix}")


def pil_to_array(img, where, *, n_channels=None):
    """Pixels of a PIL image: uint8 (H, W[, 3]) or, for 16/32-bit grey, float32 in [0, 1].

    EXIF orientation is not applied here. ``n_channels`` (1 or 3) picks grey or RGB for
    8-bit modes (default: grey for grey modes, else RGB). Raises :class:`DecodeError`
    for values outside the mode's range.
    """
    mode = img.mode
    if mode in _WIDE_MODES:
        arr = np.asarray(img)
        if mode == "F":
            if not np.isfinite(arr).all() or arr.min(initial=0) < 0 or arr.max(initial=0) > 1:
                raise DecodeError(
                    f"{where} is a 32-bit float image (PIL mode 'F') with values outside "
                    f"[0, 1] (or not finite); float images must lie in [0, 1]. Rescale "
                    f"it, e.g. to 8 bits with img.convert('L') after scaling."
                )
            return arr.astype(np.float32, copy=False)
        lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
        if lo < 0 or hi > 65535:
            raise DecodeError(
                f"{where} is a 32-bit integer image (PIL mode {mode!r}) with values in "
                f"[{lo}, {hi}]; such images are read as 16-bit, in [0, 65535]. Rescale "
                f"it to that range (or to 8 bits) first."
            )
        return arr.astype(np.float32) / np.float32(65535.0)
    if n_channels is None:
        n_channels = 1 if mode in _GREY_MODES else 3
    return np.asarray(img.convert("L" if n_channels == 1 else "RGB"))


# --- sizes and the decoding bound ---------------------------------------------------

def max_decoded_pixels():
    """The bound on pixels decoded from one file (``SKLEARN_ENDO_MAX_DECODED_PIXELS``)."""
    value = os.environ.get("SKLEARN_ENDO_MAX_DECODED_PIXELS")
    if value is None:
        return MAX_DECODED_PIXELS
    try:
        bound = int(value)
    except ValueError:
        bound = 0
    if bound < 1:
        raise ValueError(f"SKLEARN_ENDO_MAX_DECODED_PIXELS={value!r} must be a positive "
                         f"integer (pixels), e.g. 200000000; unset it for the default "
                         f"{MAX_DECODED_PIXELS}.")
    return bound


def resized_hw(hw, size, crop_pct=None):
    """(h, w) an image of size ``hw`` is resized to before the centre crop of ``size``.

    With ``crop_pct=None`` the whole image is resized to ``size``; with a float the
    shorter side goes to ``round(min(size) / crop_pct)``, as timm's evaluation
    transform does.
    """
    if crop_pct is None:
        return tuple(size)
    h, w = size
    scale_to = int(round(min(h, w) / crop_pct))
    ih, iw = hw
    if ih <= iw:
        return scale_to, int(round(iw * scale_to / ih))
    return int(round(ih * scale_to / iw)), scale_to


def _crop_box(hw, size):
    """(top, left) of the centre crop of ``size`` from ``hw``."""
    return (hw[0] - size[0]) // 2, (hw[1] - size[1]) // 2


def _resample(interpolation):
    from PIL import Image

    mode = interpolation if interpolation in _INTERPOLATIONS else "bilinear"
    return {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST}[mode]


def _resize_pil(img, size, interpolation, crop_pct):
    """A PIL image (shown orientation) -> resized and centre-cropped PIL image."""
    if size is None:
        return img
    hw = (img.size[1], img.size[0])
    nh, nw = resized_hw(hw, size, crop_pct)
    if (nh, nw) != hw:  # an image already at the size is not resampled
        img = img.resize((nw, nh), _resample(interpolation))
    if (nh, nw) != tuple(size):
        top, left = _crop_box((nh, nw), size)
        img = img.crop((left, top, left + size[1], top + size[0]))
    return img


def resize_image(t, size, *, interpolation="bicubic", crop_pct=None):
    """Resize a (C, H, W) float tensor to ``size`` = (h, w) (``interpolate``, antialiased).

    With ``crop_pct=None`` the whole image is resized (no crop, as the layer-wise study
    did); with a float, the shorter side is resized to ``size / crop_pct`` and the centre
    is cropped, as timm's evaluation transform does. Used for 16-bit and float images;
    8-bit ones are resized on uint8 by :func:`decode_resized`.
    """
    mode = interpolation if interpolation in _INTERPOLATIONS else "bilinear"
    kw = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
    nh, nw = resized_hw(tuple(t.shape[1:]), size, crop_pct)
    out = t
    if (nh, nw) != tuple(t.shape[1:]):
        out = F.interpolate(t[None], size=(nh, nw), mode=mode, **kw)[0]
    if (nh, nw) != tuple(size):
        top, left = _crop_box((nh, nw), size)
        out = out[:, top:top + size[0], left:left + size[1]]
    if out is t:
        return t
    # bicubic overshoots; keep the [0, 1] range that normalisation assumes
    return out.clamp_(0.0, 1.0)


# --- decoding -----------------------------------------------------------------------

def _as_tensor(arr):
    """uint8 (H, W[, 3]) array -> uint8 tensor (3, H, W) (grey expanded, not copied)."""
    if not arr.flags.writeable:  # np.asarray(PIL image) is read-only
        arr = arr.copy()
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim == 2:
        return t[None].expand(3, -1, -1)
    return t.permute(2, 0, 1)


def _wide_to_tensor(arr, size, interpolation, crop_pct):
    """float32 (H, W) in [0, 1] -> float32 tensor (3, h, w), resized on floats."""
    arr = np.ascontiguousarray(arr)
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())[None]
    if size is not None:
        t = resize_image(t, size, interpolation=interpolation, crop_pct=crop_pct)
    return t.expand(3, -1, -1)


def _from_pil(img, orientation, where, size, interpolation, crop_pct):
    """An opened PIL image -> tensor (3, h, w): uint8, or float32 for 16/32-bit grey."""
    if img.mode in _WIDE_MODES:
        arr = orient(pil_to_array(img, where), orientation)
        return _wide_to_tensor(arr, size, interpolation, crop_pct)
    mode = "L" if img.mode in _GREY_MODES else "RGB"
    if img.mode != mode:
        img = img.convert(mode)  # alpha dropped; palette, CMYK, YCbCr converted
    img = _resize_pil(_orient_pil(img, orientation), size, interpolation, crop_pct)
    return _as_tensor(np.asarray(img))


def decode_file(path, where, *, size=None, interpolation="bicubic", crop_pct=None):
    """Decode an image file to a tensor (3, h, w), resized to ``size`` when given.

    uint8 for 8-bit files (read as RGB), float32 in [0, 1] for 16/32-bit grey ones.
    JPEGs are decoded at the smallest DCT scale that covers the resized size. Raises
    :class:`DecodeError` naming ``where`` and the file when it cannot be decoded or
    decodes to more than :func:`max_decoded_pixels` pixels.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            orientation = exif_orientation(img, from_file=True)
            if size is not None and img.format in _DRAFT_FORMATS:
                nh, nw = resized_hw(oriented_hw(img.size, orientation), size, crop_pct)
                img.draft(None, (nh, nw) if orientation >= 5 else (nw, nh))
            bound = max_decoded_pixels()
            if img.size[0] * img.size[1] > bound:
                w, h = img.size
                raise DecodeError(
                    f"{where} = {os.fspath(path)!r} would decode to {w}x{h} pixels "
                    f"({w * h / 1e6:.1f} MP), more than the bound of {bound} pixels "
                    f"(SKLEARN_ENDO_MAX_DECODED_PIXELS). JPEGs are decoded reduced (up to "
                    f"1/8 per side) when the encoder needs fewer pixels; other formats "
                    f"decode at full size. Downscale the file, or raise the bound, e.g. "
                    f"SKLEARN_ENDO_MAX_DECODED_PIXELS={2 * w * h}."
                )
            return _from_pil(img, orientation, f"{where} = {os.fspath(path)!r}", size,
                             interpolation, crop_pct)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(unreadable_message(
            where, path, exc, fix="The file is corrupt or truncated: replace it with "
            "a valid image file or remove it from the input.")) from None


def _from_array(arr, size, interpolation, crop_pct):
    """An in-memory (H, W[, C]) array -> tensor (3, h, w), uint8 for 8-bit arrays."""
    from PIL import Image

    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype.kind == "f" or (arr.dtype.kind == "u" and arr.dtype.itemsize == 2):
        t = to_chw_float(arr)  # 16-bit and float arrays: resized on floats
        if size is not None:
            t = resize_image(t, size, interpolation=interpolation, crop_pct=crop_pct)
        return t
    arr = arr.astype(np.uint8, copy=False)  # validated: 8-bit values
    if size is not None and resized_hw(arr.shape[:2], size, crop_pct) != arr.shape[:2]:
        arr = np.asarray(_resize_pil(Image.fromarray(np.ascontiguousarray(arr)), size,
                                     interpolation, crop_pct))
    elif size is not None and tuple(size) != arr.shape[:2]:  # a crop, no resampling
        top, left = _crop_box(arr.shape[:2], size)
        arr = arr[top:top + size[0], left:left + size[1]]
    return _as_tensor(arr)


def decode_resized(images, i, size=None, *, interpolation="bicubic", crop_pct=None):
    """Image ``i`` of validated ``images`` as a tensor (3, h, w) at ``size`` (or as is).

    uint8 for 8-bit sources, float32 in [0, 1] for 16-bit and float ones (use
    :func:`to_float`). Files and PIL images are EXIF-rotated; see the module docstring.
    """
    where = f"{images.name}[{i}]"
    if images.kind == "array":
        return _from_array(images.data[i], size, interpolation, crop_pct)
    if images.kind == "paths":
        return decode_file(images.data[i], where, size=size, interpolation=interpolation,
                           crop_pct=crop_pct)
    item = images.data[i]
    if isinstance(item, np.ndarray):
        return _from_array(item, size, interpolation, crop_pct)
    try:
        return _from_pil(item, exif_orientation(item, from_file=False), where, size,
                         interpolation, crop_pct)
    except DecodeError:
        raise
    except Exception as exc:  # a lazily opened PIL image of a broken file
        raise DecodeError(
            f"{where} (a PIL image) cannot be decoded ({type(exc).__name__}: "
            f"{exc}). Its file is corrupt or truncated: replace it or drop it."
        ) from None


def to_float(t):
    """A decoded tensor (uint8 or float32) -> float32 in [0, 1] (a new tensor for uint8)."""
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.float()


def load_resized(images, i, size, *, interpolation="bicubic", crop_pct=None):
    """Image ``i`` as a float32 tensor (3, h, w) in [0, 1] at ``size`` (see decode_resized)."""
    return to_float(decode_resized(images, i, size, interpolation=interpolation,
                                   crop_pct=crop_pct))


def load_image(images, i):
    """Decode image ``i`` at its own size to a float32 tensor (3, H, W) in [0, 1].

    Files and PIL images are EXIF-rotated. A file that cannot be decoded raises
    :class:`DecodeError` naming ``X[i]`` and the file.
    """
    return load_resized(images, i, None)


def to_chw_float(arr):
    """(H, W[, C]) array -> float32 tensor (3, H, W) in [0, 1].

    uint8 and other 8-bit integer arrays are divided by 255, uint16 ones by 65535;
    floats are taken as they are (in [0, 1]).
    """
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        arr = arr.astype(np.float32) / np.float32(65535.0)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # np.asarray(PIL image) is read-only
        arr = arr.copy()
    t = torch.from_numpy(arr)
    if t.ndim == 2:
        t = t[:, :, None]
    t = t.permute(2, 0, 1)
    t = t.float() if arr.dtype.kind == "f" else t.float().div_(255.0)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t


def collate(batch):
    """Stack decoded tensors: uint8 when all are uint8, else float32 in [0, 1]."""
    if all(t.dtype == torch.uint8 for t in batch):
        return torch.stack(batch)
    return torch.stack([to_float(t) for t in batch])
