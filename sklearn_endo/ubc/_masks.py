"""Segmentation masks for :class:`UBCClassifier`: validation, lazy reading, resizing.

``masks`` is indexable like ``X`` (so that GridSearchCV can slice it per fold):

* a numpy array ``(N, H, W)`` (or ``(N, H, W, 1)``) of bools or {0, 1} values, or of
  integer labels ``0 .. n_mask_classes - 1`` for multi-class masks;
* a sequence of length N whose entries are ``None`` (no mask for that sample), a mask
  file path (JPEG/PNG; decoded lazily), a 2-D numpy array or a PIL image.

File masks are thresholded (pixel > 127 is foreground, half the range for 16-bit
files), because JPEG compression leaves grey values around the edges of 0/255 masks;
files holding only 0 and 1 are read as they are. Mask files and PIL masks are turned
as their EXIF orientation says, exactly as images are, so a mask drawn on the image as
viewers show it stays aligned; sizes are compared after that turn. Masks are resized to
the model's input size with nearest neighbour. A mask file that cannot be decoded
raises a ``DecodeError`` (a ValueError) naming ``masks[i]`` and the file, also from a
DataLoader worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._images import (
    _WIDE_MODES,
    DecodeError,
    _is_pil,
    exif_orientation,
    image_sizes,
    orient,
    read_header,
    unreadable_message,
)
from ..datasets._loaders import MASK_FILE_FIX, read_mask_file


@dataclass
class Masks:
    """Validated masks; ``has[i]`` says whether sample ``i`` has one."""

    kind: str  # "none", "array" or "list"
    data: object
    has: np.ndarray
    n_mask_classes: int = 1
    name: str = "masks"  # the argument, for messages
    param: str = "n_mask_classes"  # the estimator's parameter, for messages

    def __len__(self):
        return len(self.has)

    def get(self, i, size):
        """Mask ``i`` resized to ``size`` = (h, w), and whether it exists.

        Binary masks come back as float32 (h, w) in {0, 1}; multi-class ones as int64.
        A missing mask is all zeros (the loss ignores it).
        """
        multi = self.n_mask_classes > 1
        dtype = torch.int64 if multi else torch.float32
        if not self.has[i]:
            return torch.zeros(size, dtype=dtype), False
        item = self.data[i]
        arr = _read_mask_file(item, self.n_mask_classes, f"{self.name}[{i}]",
                              self.param) if (
            _is_pathlike(item)) else _as_array(item)
        return _resize_nearest(arr, size, dtype), True


def _is_pathlike(x):
    return isinstance(x, (str, os.PathLike))


def _as_array(item):
    if _is_pil(item):
        orientation = exif_orientation(item, from_file=False)
        # 16-bit and label modes keep their values; colour is turned grey
        item = orient(np.asarray(item if item.mode in ("L", "1", "P") + _WIDE_MODES
                                 else item.convert("L")), orientation)
    arr = np.asarray(item)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def _read_mask_file(path, n_mask_classes, where="masks", param="n_mask_classes"):
    if n_mask_classes == 1:
        return read_mask_file(path, 127, where)
    from PIL import Image

    try:
        with Image.open(path) as img:
            orientation = exif_orientation(img, from_file=True)
            arr = np.asarray(img.convert("L") if img.mode not in ("L", "P") + _WIDE_MODES
                             else img)
    except Exception as exc:
        raise DecodeError(unreadable_message(where, path, exc, what="a mask image",
                                             fix=MASK_FILE_FIX)) from None
    arr = orient(arr, orientation)
    if arr.dtype.kind == "f" or arr.min(initial=0) < 0 or (
            arr.max(initial=0) >= n_mask_classes):  # label maps must be stored losslessly
        raise DecodeError(
            f"{where} = {os.fspath(path)!r} holds values in [{arr.min()}, {arr.max()}], "
            f"but {param}={n_mask_classes} allows integer labels "
            f"0..{n_mask_classes - 1}. Save label maps as PNG (not JPEG) or raise "
            f"{param}."
        )
    return arr


def _resize_nearest(arr, size, dtype):
    t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32, copy=False))
    if tuple(t.shape) != tuple(size):
        t = F.interpolate(t[None, None], size=tuple(size), mode="nearest-exact")[0, 0]
    return t.to(dtype)


def _check_values(arr, where, n_mask_classes, name, param="n_mask_classes"):
    if arr.dtype == bool:
        return
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"{name}{where} has dtype {arr.dtype}; expected bool, {{0, 1}} integers or "
            f"integer label maps."
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(
            f"{name}{where} contains NaN or infinite values; masks must be 0/1 (or "
            f"integer labels). Use None for a sample without a mask."
        )
    values = np.unique(arr)
    allowed = np.arange(max(n_mask_classes, 2))
    bad = values[~np.isin(values, allowed)]
    if bad.size:
        if n_mask_classes > 1:
            fix = (f"multi-class masks hold integer labels 0..{n_mask_classes - 1} "
                   f"({param}={n_mask_classes})")
        else:
            fix = ("binary masks hold 0/1 or bools; threshold them first (e.g. "
                   f"masks > 127 for 0/255 masks), or set {param} for label maps")
        raise ValueError(
            f"{name}{where} is not a valid mask: it holds values {bad[:5].tolist()}; {fix}."
        )


def check_masks(masks, images, *, n_mask_classes=1, name="masks", param="n_mask_classes"):
    """Validate ``masks`` against the validated ``images`` (counts and sizes).

    Returns a :class:`Masks`. File masks are checked for existence and size (headers
    only); their pixel values are checked when they are decoded during training.
    """
    n = len(images)
    if masks is None:
        return Masks("none", None, np.zeros(n, dtype=bool), n_mask_classes, name, param)
    if isinstance(masks, Masks):
        return masks
    if isinstance(masks, (str, os.PathLike)):
        raise TypeError(
            f"{name} is a single path {os.fspath(masks)!r}; pass one mask per image: an "
            f"array (N, H, W) or a list of N mask paths (None where a sample has none)."
        )
    if hasattr(masks, "to_numpy") and not isinstance(masks, np.ndarray):
        masks = masks.to_numpy()
    if isinstance(masks, np.ndarray) and masks.dtype != object:
        if masks.ndim == 4 and masks.shape[-1] == 1:
            masks = masks[..., 0]
        if masks.ndim != 3:
            raise ValueError(
                f"{name} has shape {masks.shape}; expected (N, H, W) with one mask per "
                f"image (N = {n}). Squeeze a channel axis first, e.g. masks[:, 0]."
            )
        if masks.shape[0] != n:
            raise ValueError(
                f"{name} has {masks.shape[0]} masks but X has {n} images; pass one mask "
                f"per image (None entries in a list mark images without a mask)."
            )
        _check_values(masks, "", n_mask_classes, name, param)
        _check_sizes({i: masks.shape[1:3] for i in range(n)}, images, name)
        return Masks("array", masks, np.ones(n, dtype=bool), n_mask_classes, name, param)
    try:
        items = list(masks)
    except TypeError:
        raise TypeError(
            f"{name} must be an array (N, H, W) or a sequence of N masks (paths, 2-D "
            f"arrays or None); got {type(masks).__name__}."
        ) from None
    if len(items) != n:
        raise ValueError(
            f"{name} has {len(items)} entries but X has {n} images; pass one entry per "
            f"image, None for an image without a mask."
        )
    has = np.array([item is not None for item in items], dtype=bool)
    sizes, files = {}, []
    for i, item in enumerate(items):
        if item is None:
            continue
        where = f"[{i}]"
        if _is_pathlike(item):
            files.append(i)
            continue
        if not (isinstance(item, np.ndarray) or hasattr(item, "mode")):
            raise TypeError(
                f"{name}{where} is a {type(item).__name__}; expected a mask file path, a "
                f"2-D array, a PIL image or None."
            )
        arr = _as_array(item)
        if arr.ndim != 2:
            raise ValueError(f"{name}{where} has shape {arr.shape}; expected (H, W).")
        _check_values(arr, where, n_mask_classes, name, param)
        sizes[i] = arr.shape
    missing = [os.fspath(items[i]) for i in files if not os.path.isfile(items[i])]
    if missing:
        raise ValueError(
            f"{name} names {len(missing)} file(s) that do not exist, e.g. {missing[0]!r}."
        )
    for i in files:  # headers only; EXIF-rotated like the images
        sizes[i] = read_header(items[i], f"{name}[{i}]", what="a mask image",
                               fix=MASK_FILE_FIX)[1]
    _check_sizes(sizes, images, name)
    data = np.empty(n, dtype=object)
    data[:] = items
    return Masks("list", data, has, n_mask_classes, name, param)


def _check_sizes(sizes, images, name):
    if not sizes:
        return
    expected = image_sizes(images, list(sizes))
    for i, size in sizes.items():
        if tuple(size) != tuple(expected[i]):
            raise ValueError(
                f"{name}[{i}] has size {tuple(size)} but X[{i}] has size "
                f"{tuple(expected[i])} (height, width); a mask must cover its image pixel "
                f"for pixel."
            )
