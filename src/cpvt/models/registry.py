"""Models by name: a registry of tiny variant functions.

Each variant is a function that returns its constructor arguments and nothing
else; :func:`register_model` records it with the class it builds.
:func:`create_model` merges user overrides on top and remembers both, so a
checkpoint can rebuild the exact model (``model.model_name``,
``model.model_args``).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..pos import all_encoding_options

_REGISTRY: dict[str, tuple[type[nn.Module], Callable[[], dict[str, Any]]]] = {}


def register_model(cls: type[nn.Module]) -> Callable:
    """Decorator: ``@register_model(VisionTransformer)`` over ``def name(): return dict(...)``."""

    def wrap(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = (cls, fn)
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def _lookup(name: str) -> tuple[type[nn.Module], Callable[[], dict[str, Any]]]:
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.split("_")[0] in n][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see `cpvt models` for all {len(_REGISTRY)})")
    return _REGISTRY[name]


def valid_overrides(name: str) -> set[str]:
    """Every keyword ``create_model(name, ...)`` accepts."""
    cls, _ = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    named = {p for p, v in params.items() if p != "self" and v.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values()):
        named |= set(all_encoding_options())
    return named


def model_args(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of ``name`` with ``overrides`` applied (validated)."""
    _, fn = _lookup(name)
    unknown = set(overrides) - valid_overrides(name)
    if unknown:
        raise ValueError(
            f"unknown override(s) {sorted(unknown)} for model {name!r}; valid: {', '.join(sorted(valid_overrides(name)))}"
        )
    return {**fn(), **overrides}


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("cpvt_ti", num_classes=10, peg_kernel_size=5)``."""
    cls, _ = _lookup(name)
    args = model_args(name, **overrides)
    model = cls(**args)
    model.model_name, model.model_args = name, args
    return model
