"""Position encodings: one interface (:class:`PositionEncoding`), one module per scheme.

Schemes are chosen by a spec string such as ``"ape"``, ``"peg"`` or ``"ape+peg"``
and configured by flat options named ``<scheme>_<argument>``, taken from each
scheme's constructor (``peg_kernel_size=5``, ``rpe_max_offset=4``). The same
names are the model overrides of :func:`cpvt.create_model`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from .alibi import ALiBi2D
from .ape import LearnedAPE, resample_abs_pos_embed
from .base import BlockPosition, Grid, ModelShape, PositionEncoding
from .convembed import ConvEmbed
from .convffn import ConvFFN
from .convproj import ConvProjection
from .lookhere import LookHere
from .none import NoPosition
from .pape import PaPE
from .peg import PEG, PosConv
from .repcpe import RepCPE
from .rope import RoPE2D
from .rpe import RelPosBias
from .sincos import SinCos2D

ENCODINGS: dict[str, type[PositionEncoding]] = {
    cls.name: cls for cls in (NoPosition, LearnedAPE, SinCos2D, RelPosBias, PEG, RoPE2D, ALiBi2D, LookHere, PaPE, ConvFFN, RepCPE,
                ConvEmbed, ConvProjection)
}


def list_encodings() -> list[str]:
    return list(ENCODINGS)


def parse_spec(spec: str | Sequence[str]) -> list[str]:
    """``"ape+peg"`` or ``["ape", "peg"]`` -> ``["ape", "peg"]``, validated."""
    names = [n.strip() for n in spec.split("+")] if isinstance(spec, str) else [str(n) for n in spec]
    for n in names:
        if n not in ENCODINGS:
            raise ValueError(f"unknown position encoding {n!r}; known: {', '.join(ENCODINGS)} (combine with '+')")
    if len(set(names)) != len(names):
        raise ValueError(f"position encoding spec {spec!r} repeats a scheme")
    if "none" in names and len(names) > 1:
        raise ValueError(f"'none' cannot be combined with other encodings, got {spec!r}")
    return names


def encoding_options(name: str) -> dict[str, Any]:
    """Flat option names of one scheme and their defaults, e.g. ``{'peg_kernel_size': 3, ...}``."""
    params = list(inspect.signature(ENCODINGS[name].__init__).parameters.values())[2:]  # skip self, shape
    return {f"{name}_{p.name}": p.default for p in params}


def all_encoding_options() -> dict[str, Any]:
    return {k: v for name in ENCODINGS for k, v in encoding_options(name).items()}


def build_position_encodings(spec: str | Sequence[str], shape: ModelShape, **options: Any) -> list[PositionEncoding]:
    """Build the schemes named in ``spec`` for a model of the given shape.

    Raises ValueError for an unknown scheme, an unknown option, an option of a
    scheme the spec does not use, or two schemes that want the same hook slot.
    """
    names = parse_spec(spec)
    owners = {key: name for name in ENCODINGS for key in encoding_options(name)}
    for key in options:
        if key not in owners:
            raise ValueError(f"unknown position-encoding option {key!r}; known: {', '.join(sorted(owners))}")
        owner = owners[key]
        if owner not in names:
            raise ValueError(f"option {key!r} configures {owner!r}, which pos={'+'.join(names)!r} does not use")
    encodings, slots = [], {}
    for name in names:
        cls = ENCODINGS[name]
        if cls.slot in slots:
            raise ValueError(f"{name!r} and {slots[cls.slot]!r} both use the {cls.slot!r} hook; pick one")
        slots[cls.slot] = name
        kwargs = {k[len(name) + 1 :]: v for k, v in options.items() if owners[k] == name}
        encodings.append(cls(shape, **kwargs))
    return encodings


__all__ = [
    "ENCODINGS",
    "ALiBi2D",
    "LookHere",
    "PaPE",
    "ConvEmbed",
    "ConvFFN",
    "ConvProjection",
    "RepCPE",
    "RoPE2D",
    "PEG",
    "BlockPosition",
    "Grid",
    "LearnedAPE",
    "ModelShape",
    "NoPosition",
    "PositionEncoding",
    "PosConv",
    "RelPosBias",
    "SinCos2D",
    "all_encoding_options",
    "build_position_encodings",
    "encoding_options",
    "list_encodings",
    "parse_spec",
    "resample_abs_pos_embed",
]
