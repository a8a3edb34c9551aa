"""Models and their registry."""

from . import zoo  # noqa: F401  (registers the named models)
from .features import FeatureGetter
from .hub import save_pretrained
from .registry import create_model, list_models, model_args, model_from_checkpoint, register_model
from .vit import VisionTransformer

__all__ = ["FeatureGetter", "VisionTransformer", "create_model", "list_models", "model_args", "model_from_checkpoint",
           "register_model", "save_pretrained"]
