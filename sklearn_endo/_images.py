"""Image inputs: validation, content hashing and lazy decoding.

Every estimator of the package accepts "an array-like of images":

* a numpy array ``(N, H, W)`` (grayscale) or ``(N, H, W, C)`` with ``C`` in {1, 3};
  ``uint8`` arrays are read as [0, 255], floating arrays must lie in [0, 1];
* a sequence of image file paths (any sizes; decoded lazily, by DataLoader workers);
* a list of PIL images, or of numpy arrays ``(H, W)`` / ``(H, W, C)`` of any sizes.

Grayscale images are replicated to three channels; mixing grayscale and colour images
or passing RGBA is rejected, because the fix (``img.convert("RGB")``) is the user's call.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")  # timm's others fall back to bilinear


@dataclass
class Images:
    """Validated images: one of three kinds, indexable without decoding."""

    kind: str  # "array" (one ndarray), "list" (PIL or ndarray items), "paths"
    data: object
    n_channels: int  # channels of the source (1 or 3)

    def __len__(self):
        return len(self.data)


def _is_pathlike(x):
    return isinstance(x, (str, os.PathLike))


def _pil_mode_channels(mode, where, name):
    if mode in ("L", "I", "I;16", "F", "1"):
        return 1
    if mode == "RGB":
        return 3
    raise ValueError(
        f"{name}{where} has PIL mode {mode!r}; only grayscale ('L') and 'RGB' images are "
        f"accepted. Convert it first, e.g. img.convert('RGB')."
    )


def _check_value_range(arr, where, name):
    if arr.dtype == np.uint8:
        return
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"{name}{where} has dtype {arr.dtype}; expected uint8 in [0, 255] or floats "
            f"in [0, 1]."
        )
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{name}{where} contains NaN or infinite values; replace or drop those "
                f"images first."
            )
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}{where} is a float array with values in [{lo:.3g}, {hi:.3g}], "
                f"but float images must lie in [0, 1]. Divide 8-bit images by 255 or pass "
                f"them as uint8."
            )
    else:  # other integer types: only 0..255 makes sense
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name}{where} is an integer array with values in [{lo}, {hi}]; expected "
                f"8-bit values in [0, 255]. Rescale it, or pass floats in [0, 1]."
            )


def _array_channels(arr, ndim_gray, where, name):
    if arr.ndim == ndim_gray:
        return 1
    if arr.ndim == ndim_gray + 1 and arr.shape[-1] in (1, 3):
        return 1 if arr.shape[-1] == 1 else 3
    if arr.ndim == ndim_gray + 1:
        raise ValueError(
            f"{name}{where} has {arr.shape[-1]} channels in its last axis; expected 1 or 3 "
            f"(channels-last). Drop the alpha channel or move channels last "
            f"(np.moveaxis(X, 1, -1))."
        )
    raise ValueError(
        f"{name}{where} has shape {arr.shape}; expected "
        + ("(N, H, W) or (N, H, W, C)" if ndim_gray == 3 else "(H, W) or (H, W, C)")
        + "."
    )


def check_images(X, *, name="X", min_samples=1):
    """Validate an array-like of images without decoding files.

    Returns an :class:`Images`. Raises ValueError/TypeError that name ``name``,
    the bad value and the fix.
    """
    if isinstance(X, Images):
        return X
    if isinstance(X, (str, os.PathLike)):
        raise TypeError(
            f"{name} is a single path {str(X)!r}; pass a list of image paths, e.g. "
            f"[{str(X)!r}], or use sklearn_endo.datasets.load_image_folder for a folder."
        )
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # pandas Series of paths
        X = X.to_numpy()
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim < 3:
            raise ValueError(
                f"{name} has shape {X.shape}; expected a batch of images (N, H, W) or "
                f"(N, H, W, C). For a single image use X[None]."
            )
        if X.shape[0] < min_samples:
            raise ValueError(
                f"{name} has {X.shape[0]} images; at least {min_samples} required."
            )
        n_channels = _array_channels(X, 3, "", name)
        if min(X.shape[1:3]) < 1:
            raise ValueError(f"{name} has empty images of shape {X.shape[1:]}.")
        _check_value_range(X, "", name)
        return Images("array", X, n_channels)

    try:
        items = list(X)
    except TypeError:
        raise TypeError(
            f"{name} must be a numpy array of images, a sequence of image paths or a "
            f"list of PIL images; got {type(X).__name__}."
        ) from None
    if len(items) < min_samples:
        raise ValueError(
            f"{name} has {len(items)} images; at least {min_samples} required."
            + (" Got an empty sequence." if not items else "")
        )
    if all(_is_pathlike(x) for x in items):
        return Images("paths", np.asarray([os.fspath(p) for p in items], dtype=object),
                      _check_paths(items, name))
    channels = set()
    first = {}
    for i, item in enumerate(items):
        where = f"[{i}]"
        if _is_pathlike(item):
            raise TypeError(
                f"{name} mixes file paths and in-memory images ({name}{where} is a path); "
                f"pass one kind only."
            )
        if hasattr(item, "mode") and hasattr(item, "size"):  # PIL image
            c = _pil_mode_channels(item.mode, where, name)
        elif isinstance(item, np.ndarray):
            c = _array_channels(item, 2, where, name)
            if item.size == 0:
                raise ValueError(f"{name}{where} is an empty image of shape {item.shape}.")
            _check_value_range(item, where, name)
        else:
            raise TypeError(
                f"{name}{where} is a {type(item).__name__}; expected a PIL image, a numpy "
                f"array or a file path."
            )
        channels.add(c)
        first.setdefault(c, i)
    _check_mixed(channels, first, name)
    return Images("list", items, channels.pop())


def _check_mixed(channels, first, name):
    if len(channels) > 1:
        raise ValueError(
            f"{name} mixes grayscale and colour images ({name}[{first[1]}] is grayscale, "
            f"{name}[{first[3]}] is RGB). Convert them to one mode first, e.g. "
            f"img.convert('RGB')."
        )


_PATH_CHANNELS = {}  # (path, size, mtime) -> channels of a file already checked


def _check_paths(paths, name):
    """Check that files exist and are images, reading headers only (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    keys, missing = [], []
    for p in paths:
        try:
            st = os.stat(p)
            keys.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
        except OSError:
            missing.append(os.fspath(p))
    if missing:
        raise ValueError(
            f"{name} names {len(missing)} file(s) that do not exist, e.g. {missing[0]!r}. "
            f"Check the paths (relative paths are resolved against {os.getcwd()!r})."
        )
    channels, first = set(), {}
    for i, (p, key) in enumerate(zip(paths, keys)):
        # a search checks the same files once per candidate and fold: remember them
        c = _PATH_CHANNELS.get(key)
        if c is None:
            try:
                with Image.open(p) as img:  # reads the header only
                    c = _pil_mode_channels(_decoded_mode(img.mode),
                                           f"[{i}] ({os.fspath(p)!r})", name)
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(
                    f"{name}[{i}] = {os.fspath(p)!r} cannot be read as an image ({exc}). "
                    f"Remove it or replace it with a valid image file."
                ) from None
            _PATH_CHANNELS[key] = c
        channels.add(c)
        first.setdefault(c, i)
    _check_mixed(channels, first, name)
    return channels.pop()


def _decoded_mode(mode):
    # Palette and CMYK/YCbCr files decode to colour without an alpha channel.
    return "RGB" if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV") else mode


def image_hashes(images):
    """Content hash of each image (file bytes for paths, pixel bytes otherwise)."""
    return [_hash_one(images, i) for i in range(len(images))]


_PATH_HASH_CACHE = {}


def _hash_one(images, i):
    h = hashlib.blake2b(digest_size=16)
    if images.kind == "array":
        item = images.data[i]
        h.update(f"a{item.shape}{item.dtype}".encode())
        h.update(np.ascontiguousarray(item).data)
        return h.hexdigest()
    if images.kind == "paths":
        path = images.data[i]
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        hit = _PATH_HASH_CACHE.get(key)
        if hit is None:
            with open(path, "rb") as f:
                h.update(b"f")
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            hit = _PATH_HASH_CACHE[key] = h.hexdigest()
        return hit
    item = images.data[i]
    if isinstance(item, np.ndarray):
        h.update(f"a{item.shape}{item.dtype}".encode())
        h.update(np.ascontiguousarray(item).data)
    else:
        h.update(f"p{item.mode}{item.size}".encode())
        h.update(item.tobytes())
    return h.hexdigest()


def load_image(images, i):
    """Decode image ``i`` to a float32 tensor (C, H, W) in [0, 1] with 3 channels."""
    if images.kind == "array":
        arr = images.data[i]
    elif images.kind == "paths":
        from PIL import Image

        path = images.data[i]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if images.n_channels == 1 else "RGB")
                arr = np.asarray(img)
        except OSError as exc:
            raise ValueError(f"Image file {path!r} cannot be decoded ({exc}).") from None
    else:
        item = images.data[i]
        if isinstance(item, np.ndarray):
            arr = item
        else:
            arr = np.asarray(item.convert("L" if images.n_channels == 1 else "RGB"))
    return to_chw_float(arr)


def to_chw_float(arr):
    """(H, W[, C]) array (uint8 or float in [0, 1]) -> float32 tensor (3, H, W)."""
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


def resize_image(t, size, *, interpolation="bicubic", crop_pct=None):
    """Resize a (C, H, W) float tensor to ``size`` = (h, w).

    With ``crop_pct=None`` the whole image is resized (no crop, as the layer-wise study
    did); with a float, the shorter side is resized to ``size / crop_pct`` and the centre
    is cropped, as timm's evaluation transform does.
    """
    mode = interpolation if interpolation in _INTERPOLATIONS else "bilinear"
    h, w = size
    kw = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
    if crop_pct is None:
        out = F.interpolate(t[None], size=(h, w), mode=mode, **kw)[0]
    else:
        scale_to = int(round(min(h, w) / crop_pct))
        ih, iw = t.shape[1:]
        if ih <= iw:
            nh, nw = scale_to, int(round(iw * scale_to / ih))
        else:
            nh, nw = int(round(ih * scale_to / iw)), scale_to
        out = F.interpolate(t[None], size=(nh, nw), mode=mode, **kw)[0]
        top, left = (nh - h) // 2, (nw - w) // 2
        out = out[:, top:top + h, left:left + w]
    # bicubic overshoots; keep the [0, 1] range that normalisation assumes
    return out.clamp_(0.0, 1.0)


class ImageDataset(torch.utils.data.Dataset):
    """Decodes and resizes image ``i`` on access (in DataLoader workers for paths)."""

    def __init__(self, images, indices, size, *, interpolation="bicubic", crop_pct=None):
        self.images = images
        self.indices = list(indices)
        self.size = tuple(size)
        self.interpolation = interpolation
        self.crop_pct = crop_pct

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        t = load_image(self.images, self.indices[k])
        return resize_image(t, self.size, interpolation=self.interpolation,
                            crop_pct=self.crop_pct)


def make_loader(images, indices, size, *, batch_size, num_workers="auto",
                interpolation="bicubic", crop_pct=None, pin_memory=False):
    """A DataLoader over ``indices`` of ``images`` yielding float batches (B, 3, h, w)."""
    if num_workers == "auto":
        num_workers = min(4, os.cpu_count() or 1) if images.kind == "paths" else 0
    ds = ImageDataset(images, indices, size, interpolation=interpolation, crop_pct=crop_pct)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=False,
    )
