"""No position encoding ("NoPE"): the control of CPVT's Table 1 (DeiT-tiny 68.2).

Without any position signal, self-attention is permutation-equivariant: the
model sees a bag of patches. It is the floor every other scheme is measured
against.
"""

from __future__ import annotations

from .base import ModelShape, PositionEncoding


class NoPosition(PositionEncoding):
    """Adds nothing at any hook."""

    name = "none"
    slot = "pos_embed"

    def __init__(self, shape: ModelShape):
        super().__init__(shape)
