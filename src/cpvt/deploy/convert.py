"""Weights from the ecosystem: other projects' state-dict layouts -> ours.

Each :class:`Format` renames keys with ordered regex rules, fuses separate
q / k / v (or q / kv) projections into our one ``attn.qkv`` and says which model
arguments the source's forward pass implies (Hugging Face's CvT runs exact GELU
where the official CvT runs QuickGELU). Loading is strict: after conversion the
keys must be exactly the model's, except the few a format declares dead (the
official CvT keeps a query convolution in the last block whose outputs never
reach the class token; our model leaves it out).

=================  ==============================================  =======================
format             source                                          models
=================  ==============================================  =======================
``timm-twins``     timm ``twins_pcpvt_*`` / ``twins_svt_*``         ``twins_*``
``cvt-official``   microsoft/CvT checkpoints (``CvT-13-224x224``)   ``cvt_13``, ``cvt_21``
``cvt-hf``         transformers ``CvtForImageClassification``       ``cvt_13``, ``cvt_21``
=================  ==============================================  =======================

Usage::

    model = cpvt.deploy.convert.load_converted("twins_pcpvt_small", timm_state_dict, "timm-twins")
    # or on the command line, to a cpvt checkpoint that `cpvt eval` reads:
    cpvt convert twins.pth twins_pcpvt_small.safetensors --model twins_pcpvt_small --format timm-twins
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

Rules = list[tuple[str, str]]


@dataclass(frozen=True)
class Format:
    """A foreign layout: key-renaming rules, q/k/v fusion, implied model arguments, dead keys."""

    name: str
    description: str
    rules: Rules
    fuse: Callable[[dict[str, Tensor]], dict[str, Tensor]]
    model_args: dict[str, Any] = field(default_factory=dict)
    dead: str | None = None  # regex of converted keys the model may lack (unused by the source's forward)
    signature: str = ""  # a regex some key of this format matches (format detection)


def _rename(state: dict[str, Tensor], rules: Rules) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _fuse_qkv(parts: tuple[str, ...]) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """Concatenate ``<prefix>.<part>.{weight,bias}`` (in order) into ``<prefix>.qkv.*``."""

    def fuse(state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(state)
        first = re.compile(rf"^(.*)\.{re.escape(parts[0])}\.(weight|bias)$")
        for key in list(state):
            m = first.match(key)
            if not m:
                continue
            prefix, kind = m.groups()
            names = [f"{prefix}.{p}.{kind}" for p in parts]
            if not all(n in state for n in names):
                raise ValueError(f"{key} has no matching {', '.join(n for n in names if n not in state)}")
            out[f"{prefix}.qkv.{kind}"] = torch.cat([state[n] for n in names], dim=0)
            for n in names:
                del out[n]
        return out

    return fuse


FORMATS: dict[str, Format] = {}


def _add(fmt: Format) -> None:
    FORMATS[fmt.name] = fmt


_add(Format(
    "timm-twins",
    "timm's Twins (PCPVT / SVT): patch_embeds.i, blocks.i.j, pos_block.i, attn.q + attn.kv",
    [
        (r"^patch_embeds\.(\d+)\.", r"stages.\1.patch_embed."),
        (r"^pos_block\.(\d+)\.", r"stages.\1.pos_block.0."),
        (r"^blocks\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    ],
    _fuse_qkv(("q", "kv")),  # kv rows are [k; v], so [q; kv] is our [q; k; v]
    signature=r"^patch_embeds\.0\.proj\.weight$",
))

_CVT_BLOCK = r"stages.\1.blocks.\2."
_add(Format(
    "cvt-official",
    "microsoft/CvT: stage{i}.patch_embed, stage{i}.blocks.j.attn.conv_proj_{q,k,v}.{conv,bn}, proj_{q,k,v}",
    [
        (r"^stage(\d+)\.blocks\.(\d+)\.attn\.conv_proj_([qkv])\.conv\.", r"stages.\1.conv_proj.\3.\2.0."),
        (r"^stage(\d+)\.blocks\.(\d+)\.attn\.conv_proj_([qkv])\.bn\.", r"stages.\1.conv_proj.\3.\2.1."),
        (r"^stage(\d+)\.", r"stages.\1."),
    ],
    _fuse_qkv(("proj_q", "proj_k", "proj_v")),
    model_args={"act": "quick_gelu"},
    dead=r"^stages\.\d+\.conv_proj\.q\.\d+\.",
    signature=r"^stage0\.patch_embed\.proj\.weight$",
))

_HF_LAYER = r"^cvt\.encoder\.stages\.(\d+)\.layers\.(\d+)\."
_add(Format(
    "cvt-hf",
    "Hugging Face transformers CvtForImageClassification (cvt.encoder.stages.i.layers.j ...)",
    [
        (r"^cvt\.encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.projection\.", r"stages.\1.patch_embed.proj."),
        (r"^cvt\.encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.normalization\.",
         r"stages.\1.patch_embed.norm."),
        (r"^cvt\.encoder\.stages\.(\d+)\.cls_token$", r"stages.\1.cls_token"),
        (_HF_LAYER + r"attention\.attention\.convolution_projection_([qkv])(?:uery|ey|alue)\.convolution_projection\."
                     r"convolution\.", r"stages.\1.conv_proj.\3.\2.0."),
        (_HF_LAYER + r"attention\.attention\.convolution_projection_([qkv])(?:uery|ey|alue)\.convolution_projection\."
                     r"normalization\.", r"stages.\1.conv_proj.\3.\2.1."),
        (_HF_LAYER + r"attention\.attention\.projection_(query|key|value)\.", _CVT_BLOCK + r"attn.proj_\3."),
        (_HF_LAYER + r"attention\.output\.dense\.", _CVT_BLOCK + "attn.proj."),
        (_HF_LAYER + r"intermediate\.dense\.", _CVT_BLOCK + "mlp.fc1."),
        (_HF_LAYER + r"output\.dense\.", _CVT_BLOCK + "mlp.fc2."),
        (_HF_LAYER + r"layernorm_before\.", _CVT_BLOCK + "norm1."),
        (_HF_LAYER + r"layernorm_after\.", _CVT_BLOCK + "norm2."),
        (r"^layernorm\.", "norm."),
        (r"^classifier\.", "head."),
    ],
    _fuse_qkv(("proj_query", "proj_key", "proj_value")),
    model_args={"act": "gelu"},  # transformers' CvT runs exact GELU (the official code: QuickGELU)
    dead=r"^stages\.\d+\.conv_proj\.q\.\d+\.",
    signature=r"^cvt\.encoder\.stages\.0\.",
))


def detect_format(state: dict[str, Tensor]) -> str:
    """The :data:`FORMATS` entry whose signature some key matches (ValueError if none or several)."""
    found = [f.name for f in FORMATS.values() if any(re.search(f.signature, k) for k in state)]
    if len(found) != 1:
        raise ValueError(f"cannot tell the weights' layout ({'matches ' + ', '.join(found) if found else 'no known layout'});"
                         f" pass the format: one of {', '.join(FORMATS)}")
    return found[0]


def convert_state_dict(state: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """Rename and fuse a foreign state dict into our keys (no model needed)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")
    f = FORMATS[fmt]
    return f.fuse(_rename(state, f.rules))


def load_converted(model_name: str, state: dict[str, Tensor], fmt: str | None = None, **overrides: Any) -> nn.Module:
    """Build ``model_name`` with the arguments the format implies (plus ``overrides``; the class
    count follows the weights' classifier unless given), load the converted weights strictly and
    return the model in eval mode."""
    from ..models import create_model

    fmt = fmt or detect_format(state)
    converted = convert_state_dict(state, fmt)  # also rejects an unknown format
    f = FORMATS[fmt]
    if "head.weight" in converted and "num_classes" not in overrides:  # a fine-tuned head sets the class count
        overrides = {**overrides, "num_classes": converted["head.weight"].shape[0]}
    model = create_model(model_name, **{**f.model_args, **overrides})
    ours = model.state_dict()
    if f.dead:
        converted = {k: v for k, v in converted.items() if k in ours or not re.search(f.dead, k)}
    missing, unexpected = sorted(set(ours) - set(converted)), sorted(set(converted) - set(ours))
    if missing or unexpected:
        raise ValueError(f"{fmt} weights do not fit {model_name}: missing {missing[:6]}"
                         f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                         f"{' ...' if len(unexpected) > 6 else ''}")
    bad = [k for k in ours if ours[k].shape != converted[k].shape]
    if bad:
        raise ValueError(f"{fmt} weights do not fit {model_name}: shape mismatch at "
                         + ", ".join(f"{k} {tuple(converted[k].shape)} vs {tuple(ours[k].shape)}" for k in bad[:4]))
    model.load_state_dict(converted, strict=True)
    return model.eval()
