"""Datasets and robust image loading. Knows nothing about any branch."""

from .datasets import Dataset, Record, load_dataset
from .images import ImageLoadError, load_image
from .sources import ImageSource, TableRow, load_record_image, record_bytes, record_sha256

__all__ = ["Dataset", "Record", "load_dataset", "ImageLoadError", "load_image", "ImageSource", "TableRow",
           "load_record_image", "record_bytes", "record_sha256"]
