"""Image inputs: validation, content hashing and lazy decoding.

Every estimator of the package accepts "an array-like of images":

* a numpy array ``(N, H, W)`` (grayscale) or ``(N, H, W, C)`` with ``C`` in {1, 3};
  ``uint8`` arrays are read as [0, 255], ``uint16`` arrays as 16-bit [0, 65535],
  floating arrays must lie in [0, 1], and other integer arrays must hold 8-bit values;
* a sequence of image file paths (any sizes, any mix of modes; decoded lazily, by
  DataLoader workers, see :mod:`sklearn_endo._decode`); a generator is read once into
  a list;
* a list of PIL images, or of numpy arrays ``(H, W)`` / ``(H, W, C)`` of any sizes.

Rules, so that no input is silently misread:

* Files are read as RGB, as a folder of real images needs: grayscale replicated to
  three channels, palette/CMYK converted, an alpha channel dropped (``img.convert("RGB")``,
  not composited on black), 16-bit grey kept at depth. In-memory images (arrays, PIL
  images) are stricter: grayscale is replicated, but mixing grayscale and colour images
  or passing RGBA is rejected, because the fix (``img.convert("RGB")``) is the user's
  call.
* One image without the batch axis is refused, not read as a batch: a 2-D array, and a
  3-D array whose last axis has 1, 3 or 4 entries, which is how one ``(H, W, C)`` image
  looks (it would otherwise be read as ``H`` grayscale images of ``W`` by ``C`` pixels).
  Pass ``X[None]`` for one image. A grayscale batch ``(N, H, W)`` is accepted when its
  images are wider than 4 pixels. A single PIL image or path is refused likewise.
* A ``uint16`` array whose largest value is in [1, 255] is refused: as 16-bit data it
  would be almost black, and it most likely holds 8-bit values (``X.astype(np.uint8)``).
* 16-bit and 32-bit grayscale images (PIL modes ``"I;16"``, ``"I;16B"``, ``"I;16L"``,
  ``"I"``; files such as 16-bit PNGs, or PIL images in a list) are read at full depth
  and scaled by 65535; mode ``"I"`` must hold values in [0, 65535]. Mode ``"F"`` (32-bit
  float) must lie in [0, 1]. Values outside these ranges are refused, never clipped.
  (PIL reads 16-bit colour PNGs as 8-bit RGB, so these lose their low byte.)
* The EXIF orientation of files and of PIL images is applied, as image viewers do (and
  the same way to mask files, see :mod:`sklearn_endo.ubc`), and sizes read from headers
  are the rotated ones. The tag is read from the header: a PNG whose ``eXIf`` chunk
  follows the image data is not rotated. An unreadable EXIF block counts as no rotation.
* Dicts and sets are refused: a dict would be iterated over its keys and a set has no
  order, so the rows of the result would not match any labels.
* Files that cannot be decoded (corrupt, truncated, larger than PIL's
  ``Image.MAX_IMAGE_PIXELS``, or decoding to more than ``SKLEARN_ENDO_MAX_DECODED_PIXELS``)
  raise :class:`DecodeError`, a ``ValueError`` that names the file (and its index),
  also when raised in a DataLoader worker.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ._decode import (  # noqa: F401  (re-exported: the names other modules import)
    _WIDE_MODES,
    DecodeError,
    collate,
    decode_resized,
    exif_orientation,
    load_image,
    orient,
    oriented_hw,
    pil_to_array,
    resize_image,
    to_chw_float,
    to_float,
    unreadable_message,
)
from ._decode_cache import load_resized  # noqa: F401  (the training datasets' entry)

_CACHE_MAX = 200_000  # entries of each per-file cache before it is emptied


class _BoundedCache(dict):
    """A dict emptied when it reaches ``maxsize`` entries, so it cannot grow forever."""

    def __init__(self, maxsize=_CACHE_MAX):
        super().__init__()
        self.maxsize = maxsize

    def __setitem__(self, key, value):
        if key not in self and len(self) >= self.maxsize:
            self.clear()
        super().__setitem__(key, value)


def file_key(path):
    """Identity of a file's content without reading it: path, size, times, inode.

    ``st_ctime_ns`` cannot be set by user tools, so a file replaced by another of the
    same size with its mtime kept (``cp -p``, ``rsync -t``, tar) gets a new key, and so
    does one rewritten in place (within the file system's clock resolution).
    Raises OSError when the file does not exist.
    """
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            st.st_ino, st.st_dev)


_PATH_HEADERS = _BoundedCache()  # file_key -> (mode, (h, w), orientation)


def read_header(path, where, *, what="an image", fix=None):
    """(mode, (h, w), orientation) of an image file from its header (no decoding).

    ``mode`` is the PIL mode the file decodes to, ``(h, w)`` its size once the EXIF
    ``orientation`` is applied. Results are cached by :func:`file_key`. Raises
    :class:`DecodeError` naming ``where`` and the file when it is not a readable image,
    or ValueError when it does not exist.
    """
    from PIL import Image

    try:
        key = file_key(path)
    except OSError:
        raise ValueError(f"{where} = {os.fspath(path)!r} does not exist. Check the path "
                         f"(relative paths are resolved against {os.getcwd()!r}).") from None
    hit = _PATH_HEADERS.get(key)
    if hit is None:
        try:
            with Image.open(path) as img:  # reads the header only
                orientation = exif_orientation(img, from_file=True)
                hit = (_decoded_mode(img.mode), oriented_hw(img.size, orientation),
                       orientation)
        except Exception as exc:
            raise DecodeError(unreadable_message(where, path, exc, what=what, fix=fix)) \
                from None
        _PATH_HEADERS[key] = hit
    return hit


# --- validation ---------------------------------------------------------------------

@dataclass
class Images:
    """Validated images: one of three kinds, indexable without decoding."""

    kind: str  # "array" (one ndarray), "list" (PIL or ndarray items), "paths"
    data: object
    n_channels: int  # channels of the source (1 or 3)
    name: str = "X"  # how error messages name the input

    def __len__(self):
        return len(self.data)


def _is_pathlike(x):
    return isinstance(x, (str, os.PathLike))


def _is_pil(x):
    return hasattr(x, "mode") and hasattr(x, "size") and hasattr(x, "convert")


def _pil_mode_channels(mode, where, name):
    if mode in ("L", "1") + _WIDE_MODES:
        return 1
    if mode == "RGB":
        return 3
    raise ValueError(
        f"{name}{where} has PIL mode {mode!r}; only grayscale ('L', 16-bit 'I;16') and "
        f"'RGB' images are accepted. Convert it first, e.g. img.convert('RGB')."
    )


def _is_uint16(arr):
    return arr.dtype.kind == "u" and arr.dtype.itemsize == 2


def _check_value_range(arr, where, name):
    if arr.dtype == np.uint8:
        return
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"{name}{where} has dtype {arr.dtype}; expected uint8 in [0, 255], uint16 in "
            f"[0, 65535] or floats in [0, 1]."
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
                f"them as uint8 (16-bit ones: divide by 65535 or pass them as uint16)."
            )
    elif _is_uint16(arr):
        hi = int(arr.max())
        if 0 < hi <= 255:
            raise ValueError(
                f"{name}{where} is a uint16 array with values in [{int(arr.min())}, {hi}]. "
                f"uint16 images are read as 16-bit, [0, 65535], so this one would be almost "
                f"black: if it holds 8-bit values pass {name}{where}.astype(np.uint8); if "
                f"it is really 16-bit, pass {name}{where} / 65535 as floats."
            )
    else:  # other integer types: only 0..255 makes sense
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name}{where} is an integer array with values in [{lo}, {hi}]; expected "
                f"8-bit values in [0, 255] (or a uint16 array for 16-bit images). Rescale "
                f"it, or pass floats in [0, 1]."
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


def _refuse_container(X, name):
    """Inputs that iterate but are not sequences of images."""
    if _is_pil(X):
        raise TypeError(
            f"{name} is a single PIL image; pass a list of images, e.g. [img] for one "
            f"image."
        )
    if isinstance(X, Mapping):
        raise TypeError(
            f"{name} is a {type(X).__name__} (a mapping); iterating it would read its keys. "
            f"Pass a numpy array of images, a list of image paths or a list of PIL images, "
            f"e.g. list(d.values())."
        )
    if isinstance(X, (set, frozenset)):
        raise TypeError(
            f"{name} is a {type(X).__name__}, which has no order, so the outputs could not "
            f"be matched to labels. Pass a list, e.g. sorted({name})."
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
    _refuse_container(X, name)
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # pandas Series of paths
        X = X.to_numpy()
    if isinstance(X, np.ndarray) and X.dtype.kind in "US":  # paths as a numpy str array
        X = X.astype(object)
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim < 3:
            raise ValueError(
                f"{name} has shape {X.shape}; expected a batch of images (N, H, W) or "
                f"(N, H, W, C). For a single image use {name}[None]."
            )
        if X.ndim == 3 and X.shape[-1] in (1, 3, 4):
            raise ValueError(
                f"{name} has shape {X.shape}, which looks like one "
                + ("colour" if X.shape[-1] > 1 else "grayscale")
                + f" image without the batch axis; pass {name}[None] for one image, or "
                f"(N, H, W) for grayscale (images wider than 4 pixels)."
            )
        if X.shape[0] < min_samples:
            raise ValueError(
                f"{name} has {X.shape[0]} images; at least {min_samples} required."
            )
        n_channels = _array_channels(X, 3, "", name)
        if min(X.shape[1:3]) < 1:
            raise ValueError(f"{name} has empty images of shape {X.shape[1:]}.")
        _check_value_range(X, "", name)
        return Images("array", X, n_channels, name)

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
                      _check_paths(items, name), name)
    channels = set()
    first = {}
    for i, item in enumerate(items):
        where = f"[{i}]"
        if _is_pathlike(item):
            raise TypeError(
                f"{name} mixes file paths and in-memory images ({name}{where} is a path); "
                f"pass one kind only."
            )
        if _is_pil(item):
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
    return Images("list", items, channels.pop(), name)


def _check_mixed(channels, first, name):
    if len(channels) > 1:
        raise ValueError(
            f"{name} mixes grayscale and colour images ({name}[{first[1]}] is grayscale, "
            f"{name}[{first[3]}] is RGB). Convert them to one mode first, e.g. "
            f"img.convert('RGB')."
        )


def _check_paths(paths, name):
    """Check that files exist and are images, reading headers only (no decoding).

    Files are read as RGB whatever their modes (see the module docstring): 3 channels.
    """
    missing = [os.fspath(p) for p in paths if not os.path.exists(p)]
    if missing:
        raise ValueError(
            f"{name} names {len(missing)} file(s) that do not exist, e.g. {missing[0]!r}. "
            f"Check the paths (relative paths are resolved against {os.getcwd()!r})."
        )
    for i, p in enumerate(paths):
        # a search checks the same files once per candidate and fold: headers are cached
        read_header(p, f"{name}[{i}]")
    return 3


def _decoded_mode(mode):
    # Palette and CMYK/YCbCr files decode to colour without an alpha channel.
    return "RGB" if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV") else mode


def image_sizes(images, indices):
    """{i: (h, w)} of images ``indices`` as decoded (EXIF-rotated; files: headers only)."""
    if images.kind == "array":
        h, w = images.data.shape[1:3]
        return {i: (h, w) for i in indices}
    out = {}
    for i in indices:
        item = images.data[i]
        if images.kind == "paths":
            out[i] = read_header(item, f"{images.name}[{i}]")[1]
        elif isinstance(item, np.ndarray):
            out[i] = tuple(item.shape[:2])
        else:
            out[i] = oriented_hw(item.size, exif_orientation(item, from_file=False))
    return out


# --- content hashes -----------------------------------------------------------------

def image_hashes(images):
    """Content hash of each image (file bytes for paths, pixel bytes otherwise)."""
    return [_hash_one(images, i) for i in range(len(images))]


_PATH_HASH_CACHE = _BoundedCache()  # file_key -> hash of a file already read


def _decode_tag(mode, orientation):
    # Files and PIL images that older versions decoded differently (clipped to 8 bits,
    # not rotated) get new keys, so a persistent store cannot serve their old features;
    # every other image keeps its key.
    if mode in _WIDE_MODES or orientation != 1:
        return f"d2{mode}o{orientation}".encode()
    return b""


def _hash_one(images, i):
    h = hashlib.blake2b(digest_size=16)
    if images.kind == "array":
        item = images.data[i]
        h.update(f"a{item.shape}{item.dtype}".encode())
        h.update(np.ascontiguousarray(item).data)
        return h.hexdigest()
    if images.kind == "paths":
        path = images.data[i]
        key = file_key(path)
        hit = _PATH_HASH_CACHE.get(key)
        if hit is None:
            mode, _, orientation = read_header(path, f"{images.name}[{i}]")
            with open(path, "rb") as f:
                h.update(b"f" + _decode_tag(mode, orientation))
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            hit = _PATH_HASH_CACHE[key] = h.hexdigest()
        return hit
    item = images.data[i]
    if isinstance(item, np.ndarray):
        h.update(f"a{item.shape}{item.dtype}".encode())
        h.update(np.ascontiguousarray(item).data)
    else:
        tag = _decode_tag(item.mode, exif_orientation(item, from_file=False))
        h.update(f"p{item.mode}{item.size}".encode() + tag)
        h.update(item.tobytes())
    return h.hexdigest()


class ImageDataset(torch.utils.data.Dataset):
    """Decodes and resizes image ``i`` on access (in DataLoader workers for paths).

    Items are float32 (3, h, w) in [0, 1], or with ``raw=True`` as decoded (uint8 for
    8-bit sources, see :func:`~sklearn_endo._decode.decode_resized`).
    """

    def __init__(self, images, indices, size, *, interpolation="bicubic", crop_pct=None,
                 raw=False):
        self.images = images
        self.indices = list(indices)
        self.size = tuple(size)
        self.interpolation = interpolation
        self.crop_pct = crop_pct
        self.raw = raw

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        t = decode_resized(self.images, self.indices[k], self.size,
                           interpolation=self.interpolation, crop_pct=self.crop_pct)
        return t if self.raw else to_float(t)


def make_loader(images, indices, size, *, batch_size, num_workers="auto",
                interpolation="bicubic", crop_pct=None, pin_memory=False, raw=False):
    """A DataLoader over ``indices`` of ``images`` yielding batches (B, 3, h, w).

    Batches are float32 in [0, 1]; with ``raw=True`` they are uint8 when every image of
    the batch is 8-bit (turn them into floats with :func:`to_float`, e.g. on the device).
    A file that a worker cannot decode raises :class:`DecodeError` in the caller, with
    the package's message (naming ``X[i]`` and the file) first, not torch's "Caught
    ValueError in DataLoader worker process 0"; any Dataset that decodes through
    :func:`decode_resized` gets this, with no wrapper around the loader.
    """
    opts = loader_options(images.kind, "cuda" if pin_memory else "cpu",
                          num_workers=num_workers)
    ds = ImageDataset(images, indices, size, interpolation=interpolation, crop_pct=crop_pct,
                      raw=raw)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, collate_fn=collate, **opts)


def loader_options(kind, device_type, *, num_workers="auto", training=False,
                   cpu_count=None):
    """DataLoader settings so that decoding overlaps the encoder (a pure function).

    * ``num_workers="auto"``: worker processes only for file paths (arrays and PIL
      images need no decoding worth a process), at most 4 and at most the CPU count;
    * ``pin_memory`` on CUDA (page-locked batches copy asynchronously);
    * ``prefetch_factor`` 4 on CUDA with workers (the GPU consumes batches faster than
      a CPU, so more are kept ready), torch's default (2) otherwise;
    * ``persistent_workers`` while training (no new processes, and no re-fork of the
      dataset, each epoch).
    """
    if num_workers == "auto":
        cpus = os.cpu_count() if cpu_count is None else cpu_count
        num_workers = min(4, cpus or 1) if kind == "paths" else 0
    num_workers = int(num_workers)
    cuda = str(device_type).startswith("cuda")
    opts = {"num_workers": num_workers, "pin_memory": cuda,
            "persistent_workers": bool(training and num_workers > 0)}
    if num_workers > 0:
        opts["prefetch_factor"] = 4 if cuda else 2
    return opts
