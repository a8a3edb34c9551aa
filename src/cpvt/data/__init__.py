"""Data: image folders, the named archives (CIFAR-10, Imagenette, CamVid), and built-in synthetic shapes.

    >>> from cpvt.data import open_source
    >>> source = open_source("synthetic")
    >>> split = source.split("train", 32)      # uint8 (N, 3, 32, 32) + labels
    >>> seg = open_source("camvid").split("train", size=(120, 160))   # SegSplit: images + masks (N, 120, 160)
"""

from .base import DataError, DataSource, SegSplit, Split
from .masks import MaskFolderSource
from .named import open_source

__all__ = ["DataError", "DataSource", "MaskFolderSource", "SegSplit", "Split", "open_source"]
