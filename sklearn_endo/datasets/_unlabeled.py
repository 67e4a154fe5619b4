"""A loader for unlabelled image trees (e.g. HyperKvasir's unlabeled-images)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._loaders import IMAGE_EXTENSIONS, _images_in, normalize_extensions, walk_folders

__all__ = ["load_unlabeled_folder"]


def load_unlabeled_folder(path, *, extensions=IMAGE_EXTENSIONS):
    """Every image file under a folder tree, at any depth, as sorted paths (no labels).

    For self-supervised pretraining
    (:class:`~sklearn_endo.ssl.SelfSupervisedPretrainer`) on folders such as
    HyperKvasir's ``unlabeled-images/images/*.jpg``. Files and folders whose names
    start with ``"."`` (``.ipynb_checkpoints``, ``.cache``) are skipped. Symbolic
    links to folders and files are followed (a link back to an enclosing folder is
    skipped, a link to a missing file is an error naming it). Images are not
    decoded here: estimators read the paths lazily, batch by batch.

    Parameters
    ----------
    path : str or path-like
        Root folder.
    extensions : tuple of str, default=(".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
        File suffixes counted as images (case-insensitive; the dot is optional).

    Returns
    -------
    filenames : ndarray of str, shape (n_images,)
        Sorted paths (as ``str``), for ``fit(X)``.

    Examples
    --------
    >>> from sklearn_endo.datasets import load_unlabeled_folder
    >>> X = load_unlabeled_folder("hyper-kvasir/unlabeled-images")  # doctest: +SKIP
    >>> len(X)  # doctest: +SKIP
    99417
    """
    if not os.path.isdir(path):
        raise ValueError(f"path={os.fspath(path)!r} is not a directory; pass the root "
                         f"folder of the unlabelled images.")
    extensions = normalize_extensions(extensions)
    found = []
    for folder, _, _ in walk_folders(path):
        found += [str(p) for p in _images_in(Path(folder), extensions)]
    if not found:
        raise ValueError(f"No images with suffixes {extensions} found under "
                         f"path={os.fspath(path)!r} (searched every subfolder).")
    return np.asarray(sorted(found), dtype=object)
