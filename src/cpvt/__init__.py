"""cpvt: position encodings for vision transformers, built around CPVT's PEG.

    >>> import cpvt
    >>> model = cpvt.create_model("cpvt_ti", num_classes=10)
    >>> cpvt.list_models("cpvt_ti*")
    >>> model, preprocess, classes = cpvt.load_run("runs/c10-cpvt")   # a trained run, ready to classify
    >>> cpvt.save_pretrained("runs/c10-cpvt", "hub/c10-cpvt")         # Hugging Face Hub layout folder
    >>> model = cpvt.create_model("cpvt_ti", pretrained="hub/c10-cpvt")  # a Hub folder, or an "owner/name" id

``import cpvt`` loads the core only (PyTorch, safetensors); ``load_run`` brings in the deployment wing
(kornia, PIL) at its first use.
"""

from typing import Any

from .models import VisionTransformer, create_model, list_models, model_args, register_model, save_pretrained
from .pos import build_position_encodings, list_encodings
from .utils.version import __version__

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
    "save_pretrained",
]


def __getattr__(name: str) -> Any:  # PEP 562: wing functions of the public API, imported when first used
    if name == "load_run":
        from .deploy.predict import load_run

        return load_run
    raise AttributeError(f"module 'cpvt' has no attribute {name!r}")
