"""Data: image folders, the named archives (CIFAR-10, Imagenette), and built-in synthetic shapes.

    >>> from cpvt.data import open_source
    >>> source = open_source("synthetic")
    >>> split = source.split("train", 32)      # uint8 (N, 3, 32, 32) + labels
"""

from .base import DataError, DataSource, Split
from .named import open_source

__all__ = ["DataError", "DataSource", "Split", "open_source"]
