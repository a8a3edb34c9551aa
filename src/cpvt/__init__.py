"""cpvt: position encodings for vision transformers, built around CPVT's PEG.

    >>> import cpvt
    >>> model = cpvt.create_model("cpvt_ti", num_classes=10)
    >>> cpvt.list_models("cpvt_ti*")
"""

from .models import VisionTransformer, create_model, list_models, model_args, register_model
from .pos import build_position_encodings, list_encodings

__version__ = "0.1.0"

__all__ = [
    "VisionTransformer",
    "__version__",
    "build_position_encodings",
    "create_model",
    "list_encodings",
    "list_models",
    "model_args",
    "register_model",
]
