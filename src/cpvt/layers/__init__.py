"""Building blocks of the models: patch embedding, attention, MLP, block, drop path."""

from .attention import Attention
from .block import Block
from .drop_path import DropPath
from .mlp import Mlp
from .patch_embed import PatchEmbed, check_image

__all__ = ["Attention", "Block", "DropPath", "Mlp", "PatchEmbed", "check_image"]
