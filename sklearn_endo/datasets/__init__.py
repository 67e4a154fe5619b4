"""Datasets: synthetic endoscopy-like images and loaders for folder layouts on disk."""

from ._loaders import load_image_folder, load_kvasir_seg, load_mask
from ._synthetic import make_lesions

__all__ = ["load_image_folder", "load_kvasir_seg", "load_mask", "make_lesions"]
