"""Datasets: synthetic endoscopy-like images and loaders for folder layouts on disk."""

from ._loaders import load_image_folder, load_kvasir_seg, load_mask
from ._synthetic import make_lesions
from ._unlabeled import load_unlabeled_folder

__all__ = ["load_image_folder", "load_kvasir_seg", "load_mask", "load_unlabeled_folder",
           "make_lesions"]
