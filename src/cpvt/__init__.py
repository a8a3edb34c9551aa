"""cpvt: position encodings for vision transformers, built around CPVT's PEG.

    >>> import cpvt
    >>> model = cpvt.create_model("cpvt_ti", num_classes=10)
    >>> cpvt.list_models("cpvt_ti*")
    >>> model, preprocess, classes = cpvt.load_run("runs/c10-cpvt")   # a trained run, ready to classify
"""

from .models import VisionTransformer, create_model, list_models, model_args, register_model
from .pos import build_position_encodings, list_encodings
from .predict import load_run

__version__ = "0.1.0"

__all__ = [
    "VisionTransformer",
    "__version__",
    "build_position_encodings",
    "create_model",
    "list_encodings",
    "list_models",
    "load_run",
    "model_args",
    "register_model",
]
