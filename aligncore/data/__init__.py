"""Datasets and robust image loading. Knows nothing about any branch."""

from .datasets import Dataset, Record, load_dataset
from .images import ImageLoadError, load_image

__all__ = ["Dataset", "Record", "load_dataset", "ImageLoadError", "load_image"]
