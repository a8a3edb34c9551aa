"""The model registry: every name is written out in the source, and none is registered twice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cpvt
from cpvt.models import registry
from cpvt.models.vit import VisionTransformer

SRC = Path(__file__).resolve().parents[1] / "src"


def test_every_model_name_is_defined_literally():
    """``grep '"cpvt_ti"'`` or ``grep 'def cpvt_ti'`` finds each model's definition: a name built by an
    f-string or a loop is not in the text and fails here."""
    text = "\n".join(p.read_text() for p in sorted(SRC.rglob("*.py")))
    names = cpvt.list_models()
    assert len(names) > 90
    missing = [n for n in names if not re.search(rf'"{re.escape(n)}"\s*:|\bdef {re.escape(n)}\(', text)]
    assert not missing, f"registered but not written out in src/ (as a table key or a def): {missing}"


def test_register_twice_is_an_error(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the real registry untouched

    def cpvt_ti():
        return {}

    with pytest.raises(ValueError, match="'cpvt_ti' is registered twice"):
        registry.register_model(VisionTransformer)(cpvt_ti)
    assert registry._REGISTRY["cpvt_ti"][1]()["pos"] == "peg"  # the first registration stands

    def fresh_name():
        return {"embed_dim": 8}

    registry.register_model(VisionTransformer)(fresh_name)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_model(VisionTransformer)(fresh_name)
    assert "fresh_name" in cpvt.list_models()


def test_fresh_name_is_gone_after_the_test():
    assert "fresh_name" not in cpvt.list_models()
