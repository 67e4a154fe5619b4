"""Loaders for image datasets on disk: class-per-folder trees and Kvasir-SEG.

They return file paths, never decoded images: estimators decode them lazily, batch by
batch, so a dataset of any size fits.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from .. import _images

__all__ = ["load_image_folder", "load_kvasir_seg", "load_mask"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_L_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2 luma, as PIL's "L"


def _check_dir(path, name="path"):
    if not os.path.isdir(path):
        raise ValueError(f"{name}={os.fspath(path)!r} is not a directory; pass the root "
                         f"folder of the dataset.")
    return Path(path)


def normalize_extensions(extensions):
    """``".JPG"``, ``"png"`` or a tuple of them -> lower-case suffixes with the dot."""
    if isinstance(extensions, str):
        extensions = (extensions,)
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _images_in(folder, extensions):
    """Image files directly in ``folder``; symlinked files count as the files they name.

    A link whose target is missing is an error naming the link, not a silent drop.
    """
    found = []
    for p in folder.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in extensions:
            continue
        if p.is_file():  # follows links
            found.append(p)
        elif p.is_symlink() and not p.exists():
            raise ValueError(f"{os.fspath(p)!r} is a symbolic link to "
                             f"{os.readlink(p)!r}, which does not exist; fix or remove "
                             f"the link.")
    return sorted(found)


def walk_folders(root):
    """``os.walk(root)`` that follows symbolic links to folders, without looping.

    A linked folder (``data/c -> /elsewhere/c``) is walked like a real one; a link back
    to a folder that encloses it (a loop) is skipped, as ``find -L`` does. Folders whose
    names start with ``"."`` are not entered. Subfolders are walked in sorted order.
    """
    chains = {os.fspath(root): (os.path.realpath(root),)}
    for folder, subdirs, files in os.walk(root, followlinks=True):
        chain = chains.pop(folder, (os.path.realpath(folder),))
        keep = []
        for d in sorted(subdirs):
            if d.startswith("."):  # .ipynb_checkpoints, .cache: copies, not classes
                continue
            real = os.path.realpath(os.path.join(folder, d))
            if real in chain:  # a link to an enclosing folder: a loop
                continue
            chains[os.path.join(folder, d)] = chain + (real,)
            keep.append(d)
        subdirs[:] = keep
        yield folder, subdirs, files


def load_image_folder(path, *, extensions=IMAGE_EXTENSIONS, return_X_y=False):
    """Load a class-per-folder image dataset as file paths and labels.

    The class of an image is the name of the folder that contains it, at any depth:
    ``root/<class>/*.jpg`` (Kvasir v1/v2) and nested trees such as HyperKvasir's
    ``labeled-images/<region>/<category>/<finding>/*.jpg`` (the class is the leaf
    folder, e.g. ``"z-line"``) both work. Leaf names must be unique across the tree.
    Images lying directly in ``path`` and folders whose names start with ``"."`` are
    not read. Symbolic links are followed: a linked class folder
    (``data/c -> /elsewhere/c``) is a class like any other, a linked file an image
    (its path is the link's), and a link back to an enclosing folder is skipped; a
    link to a missing file is an error naming it. Fewer than two class folders is an
    error rather than a warning: it almost always means ``path`` points one level too
    deep, and a classifier cannot be fitted.
    Images are not decoded here: estimators read the paths lazily, batch by batch.

    Parameters
    ----------
    path : str or path-like
        Root folder.
    extensions : tuple of str, default=(".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
        File suffixes counted as images (case-insensitive; the dot is optional).
    return_X_y : bool, default=False
        Return ``(filenames, target)`` instead of a Bunch.

    Returns
    -------
    data : Bunch
        ``filenames`` (ndarray of str, sorted by class then path), ``target`` (int
        ndarray), ``target_names`` (list of str, sorted), ``DESCR``.
    (filenames, target) : tuple if ``return_X_y`` is True

    Examples
    --------
    >>> from sklearn_endo.datasets import load_image_folder
    >>> data = load_image_folder("kvasir-dataset-v2")  # doctest: +SKIP
    >>> data.target_names[:2], data.filenames[0]  # doctest: +SKIP
    (['dyed-lifted-polyps', 'dyed-resection-margins'], '.../dyed-lifted-polyps/0a...jpg')
    """
    root = _check_dir(path)
    extensions = normalize_extensions(extensions)
    by_class = {}
    for folder, _, _ in walk_folders(root):
        folder = Path(folder)
        if folder == root:
            continue
        files = _images_in(folder, extensions)
        if files:
            if folder.name in by_class:
                raise ValueError(
                    f"Two folders are both named {folder.name!r} ({by_class[folder.name][0]} "
                    f"and {folder}); class names must be unique across the tree.")
            by_class[folder.name] = (folder, files)
    if not by_class:
        loose = _images_in(root, extensions)
        hint = (f" The {len(loose)} images directly in it need class subfolders."
                if loose else "")
        raise ValueError(f"No images with suffixes {extensions} found in class folders "
                         f"under path={os.fspath(path)!r}.{hint}")
    if len(by_class) < 2:
        raise ValueError(f"path={os.fspath(path)!r} holds one class folder "
                         f"({next(iter(by_class))!r}); a classification dataset needs at "
                         f"least two: pass the folder that holds the class folders.")
    names = sorted(by_class)
    filenames, target = [], []
    for k, name in enumerate(names):
        files = by_class[name][1]
        filenames += [str(f) for f in files]
        target += [k] * len(files)
    filenames = np.asarray(filenames, dtype=object)
    target = np.asarray(target, dtype=np.int64)
    if return_X_y:
        return filenames, target
    counts = ", ".join(f"{n}: {int((target == k).sum())}" for k, n in enumerate(names))
    return Bunch(filenames=filenames, target=target, target_names=names,
                 DESCR=f"Image folder {os.fspath(path)!r}: {len(filenames)} images in "
                       f"{len(names)} classes ({counts}).")


def load_kvasir_seg(path, *, return_X_y=False):
    """Load the Kvasir-SEG layout: ``images/*.jpg`` and ``masks/*.jpg`` of equal names.

    Kvasir-SEG (Jha et al., MMM 2020) has 1000 polyp images of various sizes and their
    masks, stored as 3-channel JPEGs with compression noise: read them with
    :func:`load_mask` (a threshold) or pass the mask paths straight to
    ``UBCClassifier.fit(..., masks=...)``.

    Parameters
    ----------
    path : str or path-like
        Folder that holds ``images/`` and ``masks/``.
    return_X_y : bool, default=False
        Return ``(filenames, mask_filenames)`` instead of a Bunch.

    Returns
    -------
    data : Bunch
        ``filenames`` and ``mask_filenames`` (ndarrays of str, matching order), ``DESCR``.

    Examples
    --------
    >>> from sklearn_endo.datasets import load_kvasir_seg, load_mask
    >>> data = load_kvasir_seg("Kvasir-SEG")  # doctest: +SKIP
    >>> load_mask(data.mask_filenames[0]).dtype  # doctest: +SKIP
    dtype('bool')
    """
    root = _check_dir(path)
    image_dir, mask_dir = root / "images", root / "masks"
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise ValueError(f"path={os.fspath(path)!r} has no {d.name}/ folder; Kvasir-SEG "
                             f"keeps images in images/ and masks in masks/.")
    images = _images_in(image_dir, IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(f"No images found in {image_dir}.")
    masks_by_stem = {p.stem: p for p in _images_in(mask_dir, IMAGE_EXTENSIONS)}
    missing = [p.name for p in images if p.stem not in masks_by_stem]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no mask of the same name in "
                         f"{mask_dir}, e.g. {missing[0]!r}.")
    filenames = np.asarray([str(p) for p in images], dtype=object)
    mask_filenames = np.asarray([str(masks_by_stem[p.stem]) for p in images], dtype=object)
    if return_X_y:
        return filenames, mask_filenames
    return Bunch(filenames=filenames, mask_filenames=mask_filenames,
                 DESCR=f"Kvasir-SEG at {os.fspath(path)!r}: {len(filenames)} images with "
                       f"masks.")


def load_mask(path_or_array, *, threshold=127):
    """Read a binary mask, thresholding compression noise away.

    Parameters
    ----------
    path_or_array : str, path-like, PIL image or ndarray
        A mask file (e.g. a Kvasir-SEG JPEG, stored as 3-channel with noise around the
        edges) or a mask already in memory: an array (H, W) or (H, W, C) of grey or
        colour values in [0, 255] (colour is turned grey with PIL's ``"L"`` weights), a
        ``uint16`` array of 16-bit values, or a bool array, returned as it is. Files and
        PIL images are turned as their EXIF orientation says, as images are.
    threshold : float, default=127
        Grey values above it are foreground; in [0, 255). It is scaled to the depth of
        16-bit files and arrays (127 becomes 32639, about half of 65535) and of 32-bit
        float files (values in [0, 1]: 127 becomes 0.498). Integer masks that hold only
        0 and 1 (masks saved as 0/1 PNGs) are read as they are.

    Returns
    -------
    mask : ndarray of shape (H, W), bool

    Raises
    ------
    ValueError
        For a file that is empty, not an image, truncated or corrupt (a
        ``DecodeError`` naming the file), and for arrays of unclear meaning (floats in
        [0, 1], ``uint16`` holding only 8-bit values).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.datasets import load_mask
    >>> load_mask(np.array([[0, 3, 250], [255, 130, 90]], dtype=np.uint8))
    array([[False, False,  True],
           [ True,  True, False]])
    """
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
            or not 0 <= threshold < 255):
        raise ValueError(f"threshold={threshold!r} must be a number in [0, 255); grey "
                         f"values above it are foreground (127 suits JPEG masks).")
    if isinstance(path_or_array, (str, os.PathLike)):
        return read_mask_file(path_or_array, threshold, "path_or_array")
    if _images._is_pil(path_or_array):
        grey, top = _pil_grey(path_or_array, "path_or_array")
        grey = _images.orient(grey, _images.exif_orientation(path_or_array,
                                                             from_file=False))
        return _threshold_grey(grey, threshold, top)
    arr = np.asarray(path_or_array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        # the same grey as PIL's convert("L"), so arrays and files threshold alike
        arr = arr[..., 0] if arr.shape[-1] == 1 else (arr[..., :3] @ _L_WEIGHTS).astype(
            arr.dtype if arr.dtype.kind == "u" and arr.dtype.itemsize == 2 else float)
    if arr.ndim != 2:
        raise ValueError(f"path_or_array must be a mask of shape (H, W) or (H, W, C) with "
                         f"C in (1, 3, 4); got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"path_or_array has dtype {arr.dtype}; pass a file path, a PIL "
                         f"image or a numeric/bool array.")
    if not np.isfinite(arr).all():
        raise ValueError("path_or_array holds NaN or inf; a mask must be finite.")
    if np.issubdtype(arr.dtype, np.floating) and 0 < arr.max() <= 1:
        # a threshold of 127 would silently make such a mask empty
        raise ValueError(f"path_or_array looks like a float mask in [0, 1] (max "
                         f"{arr.max():g}), but grey values in [0, 255] are expected; pass "
                         f"`mask > 0.5` or `mask * 255`.")
    top = 255
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        top = 65535
        if 1 < arr.max() <= 255:
            raise ValueError(
                f"path_or_array is a uint16 mask with values in [{int(arr.min())}, "
                f"{int(arr.max())}]; uint16 masks are read as 16-bit, [0, 65535], so it "
                f"would be all background. Pass mask.astype(np.uint8) for 8-bit values.")
    if arr.dtype.kind in "iu":
        return _threshold_grey(arr, threshold, top)
    return arr > threshold


def read_mask_file(path, threshold, where):
    """Binary mask from a file, EXIF-rotated; ``DecodeError`` naming ``where`` if unreadable.

    Used by :func:`load_mask` and by ``UBCClassifier`` (with ``where="masks[i]"``).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            orientation = _images.exif_orientation(img, from_file=True)
            grey, top = _pil_grey(img, f"{where} = {os.fspath(path)!r}")
            lossy = img.format == "JPEG"
    except _images.DecodeError:
        raise
    except Exception as exc:
        raise _images.DecodeError(_images.unreadable_message(
            where, path, exc, what="a mask image", fix=MASK_FILE_FIX)) from None
    return _threshold_grey(_images.orient(grey, orientation), threshold, top, lossy=lossy)


MASK_FILE_FIX = ("The file is empty, not an image, truncated or corrupt: re-export the "
                 "mask as PNG or JPEG.")


def _pil_grey(img, where):
    """Grey values of a PIL mask and the top of their range (255, 65535 or 1.0)."""
    if img.mode == "F":  # 32-bit float: must lie in [0, 1]
        return _images.pil_to_array(img, where), 1.0
    if img.mode in _images._WIDE_MODES:  # 16-bit (or 32-bit integer): full depth
        arr = np.asarray(img)
        lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
        if lo < 0 or hi > 65535:
            raise _images.DecodeError(
                f"{where} is a 32-bit integer mask (PIL mode {img.mode!r}) with values in "
                f"[{lo}, {hi}]; masks are read as 8- or 16-bit. Save it as a 0/255 or "
                f"0/1 PNG.")
        return arr, 65535
    return np.asarray(img.convert("L")), 255


def _threshold_grey(grey, threshold, top=255, *, lossy=False):
    # a 0/1 mask would be all background after a threshold meant for 0/255; not for a
    # JPEG, whose all-black mask decodes to ones (quantisation), never a 0/1 label map
    if not lossy and grey.dtype.kind in "iub" and grey.max(initial=0) <= 1:
        return grey.astype(bool)
    return grey > threshold * (top / 255.0)
