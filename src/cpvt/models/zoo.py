"""The named models: DeiT with every encoding, CPVT and its variants.

Every name is written out once, as a key of one of two literal tables below, mapped
to its constructor arguments: ``VIT_MODELS`` (:class:`~cpvt.models.vit.VisionTransformer`)
and ``PYRAMIDS`` (:class:`~cpvt.models.pyramid.PyramidTransformer`); the shared sizes
(``TINY``, ``MICRO``, ``PCPVT``, ...) are the named dicts they start from. So
``grep -rn '"cpvt_ti"' src`` finds the definition; the loop at the end registers them.

Sizes follow DeiT (patch 16, depth 12, MLP ratio 4; dims 192/384/768, heads
3/6/12). ``micro`` is ours: 32 px input, patch 4 (an 8x8 grid, CIFAR-scale),
small enough to train an epoch of CIFAR-10 in minutes on 2 CPU cores.

Naming:
    deit_<size>            learned APE (the DeiT baseline)
    deit_<size>_nope       no position encoding
    deit_<size>_sincos     2D sin-cos
    deit_<size>_rpe        2D relative position bias, K=8
    deit_<size>_rope       2D RoPE, axial (RoPE-ViT)
    deit_<size>_rope_mixed 2D RoPE with learned mixed frequencies (RoPE-ViT)
    deit_<size>_alibi      2D-ALiBi (distance-proportional logit bias)
    deit_<size>_lookhere   LookHere: one direction mask per head plus a distance penalty (Fuller et al. 2024)
    deit_<size>_pape       PaPE: parabolic logit bias chosen by each query's content (arXiv 2602.01418)
    deit_<size>_convffn    no position embedding, a depth-wise 3x3 conv in every MLP (PVTv2)
    deit_<size>_convembed  no position embedding, overlapping conv token embedding (CvT / PVTv2)
    deit_<size>_convproj   no position embedding, CvT's conv q/k/v projection (k/v stride 2)
    cpvt_<size>_repcpe     a 7x7 re-parameterisable CPE after block 0 instead of the PEG (FastViT)
    cpvt_<size>            one PEG after block 0 (CPVT's default, "position 0")
    cpvt_<size>_gap        ... without class token, global average pooling
    cpvt_<size>_plus       PEGs after blocks 0-4 (the paper's ‡ models)
    cpvt_<size>_gap_plus   both (CPVT-Ti-GAP‡)
    cpvt_<size>_ape        learned APE + one PEG after block 0
    cpvt_<size>_alibi, cpvt_<size>_rope_mixed, cpvt_<size>_lookhere
                           2D-ALiBi, mixed RoPE or LookHere + one PEG after block 0
with size tiny/small/base (DeiT) and ti/s/b (CPVT, as in the paper), or micro.

Pyramids (:class:`~cpvt.models.pyramid.PyramidTransformer`, timm's / the papers' configurations):
    twins_pcpvt_{small,base,large}  PVT stages with sub-sampled attention, one PEG after block 0 of each stage
    twins_svt_{small,base,large}    local 7x7 windows alternating with sub-sampled attention, PEG per stage
    cvt_13, cvt_21                  CvT: conv token embedding + conv q/k/v projection, no position embedding
    twins_pcpvt_micro, twins_svt_micro, cvt_micro   three-stage 32 px versions for the CPU
"""

from __future__ import annotations

from .pyramid import PyramidTransformer
from .registry import register_model
from .vit import VisionTransformer

TINY = dict(embed_dim=192, depth=12, num_heads=3)
SMALL = dict(embed_dim=384, depth=12, num_heads=6)
BASE = dict(embed_dim=768, depth=12, num_heads=12)
MICRO = dict(img_size=32, patch_size=4, embed_dim=128, depth=8, num_heads=4, num_classes=10)

PLUS = dict(peg_positions=(0, 1, 2, 3, 4))
GAP = dict(global_pool="avg")


# Every model has its literal name as a key below (grep finds the definition) -> its constructor arguments.
# The same 21 variants at each size: 12 DeiTs (one per encoding), then 9 CPVTs. cpvt_*_alibi / _rope_mixed /
# _lookhere put a PEG beside a relative scheme: the PEG's zero-padding code plus a bias or rotation that exists
# at any grid.
VIT_MODELS = {
    # DeiT-Ti / CPVT-Ti: dim 192, 3 heads
    "deit_tiny":             dict(TINY, pos="ape"),
    "deit_tiny_nope":        dict(TINY, pos="none"),
    "deit_tiny_sincos":      dict(TINY, pos="sincos"),
    "deit_tiny_rpe":         dict(TINY, pos="rpe"),
    "deit_tiny_rope":        dict(TINY, pos="rope"),
    "deit_tiny_rope_mixed":  dict(TINY, pos="rope", rope_mode="mixed"),
    "deit_tiny_alibi":       dict(TINY, pos="alibi"),
    "deit_tiny_lookhere":    dict(TINY, pos="lookhere"),
    "deit_tiny_pape":        dict(TINY, pos="pape"),
    "deit_tiny_convffn":     dict(TINY, pos="convffn"),
    "deit_tiny_convembed":   dict(TINY, pos="convembed"),
    "deit_tiny_convproj":    dict(TINY, pos="convproj"),
    "cpvt_ti":               dict(TINY, pos="peg"),
    "cpvt_ti_gap":           dict(TINY, pos="peg", **GAP),
    "cpvt_ti_plus":          dict(TINY, pos="peg", **PLUS),
    "cpvt_ti_gap_plus":      dict(TINY, pos="peg", **GAP, **PLUS),
    "cpvt_ti_ape":           dict(TINY, pos="ape+peg"),
    "cpvt_ti_repcpe":        dict(TINY, pos="repcpe"),
    "cpvt_ti_alibi":         dict(TINY, pos="alibi+peg"),
    "cpvt_ti_rope_mixed":    dict(TINY, pos="rope+peg", rope_mode="mixed"),
    "cpvt_ti_lookhere":      dict(TINY, pos="lookhere+peg"),

    # DeiT-S / CPVT-S: dim 384, 6 heads
    "deit_small":            dict(SMALL, pos="ape"),
    "deit_small_nope":       dict(SMALL, pos="none"),
    "deit_small_sincos":     dict(SMALL, pos="sincos"),
    "deit_small_rpe":        dict(SMALL, pos="rpe"),
    "deit_small_rope":       dict(SMALL, pos="rope"),
    "deit_small_rope_mixed": dict(SMALL, pos="rope", rope_mode="mixed"),
    "deit_small_alibi":      dict(SMALL, pos="alibi"),
    "deit_small_lookhere":   dict(SMALL, pos="lookhere"),
    "deit_small_pape":       dict(SMALL, pos="pape"),
    "deit_small_convffn":    dict(SMALL, pos="convffn"),
    "deit_small_convembed":  dict(SMALL, pos="convembed"),
    "deit_small_convproj":   dict(SMALL, pos="convproj"),
    "cpvt_s":                dict(SMALL, pos="peg"),
    "cpvt_s_gap":            dict(SMALL, pos="peg", **GAP),
    "cpvt_s_plus":           dict(SMALL, pos="peg", **PLUS),
    "cpvt_s_gap_plus":       dict(SMALL, pos="peg", **GAP, **PLUS),
    "cpvt_s_ape":            dict(SMALL, pos="ape+peg"),
    "cpvt_s_repcpe":         dict(SMALL, pos="repcpe"),
    "cpvt_s_alibi":          dict(SMALL, pos="alibi+peg"),
    "cpvt_s_rope_mixed":     dict(SMALL, pos="rope+peg", rope_mode="mixed"),
    "cpvt_s_lookhere":       dict(SMALL, pos="lookhere+peg"),

    # DeiT-B / CPVT-B: dim 768, 12 heads
    "deit_base":             dict(BASE, pos="ape"),
    "deit_base_nope":        dict(BASE, pos="none"),
    "deit_base_sincos":      dict(BASE, pos="sincos"),
    "deit_base_rpe":         dict(BASE, pos="rpe"),
    "deit_base_rope":        dict(BASE, pos="rope"),
    "deit_base_rope_mixed":  dict(BASE, pos="rope", rope_mode="mixed"),
    "deit_base_alibi":       dict(BASE, pos="alibi"),
    "deit_base_lookhere":    dict(BASE, pos="lookhere"),
    "deit_base_pape":        dict(BASE, pos="pape"),
    "deit_base_convffn":     dict(BASE, pos="convffn"),
    "deit_base_convembed":   dict(BASE, pos="convembed"),
    "deit_base_convproj":    dict(BASE, pos="convproj"),
    "cpvt_b":                dict(BASE, pos="peg"),
    "cpvt_b_gap":            dict(BASE, pos="peg", **GAP),
    "cpvt_b_plus":           dict(BASE, pos="peg", **PLUS),
    "cpvt_b_gap_plus":       dict(BASE, pos="peg", **GAP, **PLUS),
    "cpvt_b_ape":            dict(BASE, pos="ape+peg"),
    "cpvt_b_repcpe":         dict(BASE, pos="repcpe"),
    "cpvt_b_alibi":          dict(BASE, pos="alibi+peg"),
    "cpvt_b_rope_mixed":     dict(BASE, pos="rope+peg", rope_mode="mixed"),
    "cpvt_b_lookhere":       dict(BASE, pos="lookhere+peg"),

    # micro (ours): 32 px, patch 4, dim 128, depth 8, 4 heads, 10 classes
    "deit_micro":            dict(MICRO, pos="ape"),
    "deit_micro_nope":       dict(MICRO, pos="none"),
    "deit_micro_sincos":     dict(MICRO, pos="sincos"),
    "deit_micro_rpe":        dict(MICRO, pos="rpe"),
    "deit_micro_rope":       dict(MICRO, pos="rope"),
    "deit_micro_rope_mixed": dict(MICRO, pos="rope", rope_mode="mixed"),
    "deit_micro_alibi":      dict(MICRO, pos="alibi"),
    "deit_micro_lookhere":   dict(MICRO, pos="lookhere"),
    "deit_micro_pape":       dict(MICRO, pos="pape"),
    "deit_micro_convffn":    dict(MICRO, pos="convffn"),
    "deit_micro_convembed":  dict(MICRO, pos="convembed"),
    "deit_micro_convproj":   dict(MICRO, pos="convproj"),
    "cpvt_micro":            dict(MICRO, pos="peg"),
    "cpvt_micro_gap":        dict(MICRO, pos="peg", **GAP),
    "cpvt_micro_plus":       dict(MICRO, pos="peg", **PLUS),
    "cpvt_micro_gap_plus":   dict(MICRO, pos="peg", **GAP, **PLUS),
    "cpvt_micro_ape":        dict(MICRO, pos="ape+peg"),
    "cpvt_micro_repcpe":     dict(MICRO, pos="repcpe"),
    "cpvt_micro_alibi":      dict(MICRO, pos="alibi+peg"),
    "cpvt_micro_rope_mixed": dict(MICRO, pos="rope+peg", rope_mode="mixed"),
    "cpvt_micro_lookhere":   dict(MICRO, pos="lookhere+peg"),
}


# -- pyramids: Twins (one PEG per stage) and CvT (conv embedding + conv projection, no PE) --------------------------
PCPVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1),
             pos="peg")
SVT = dict(mlp_ratios=4, sr_ratios=(8, 4, 2, 1), windows=7, pos="peg")
CVT = dict(patch_sizes=(4, 2, 2), embed_dims=(64, 192, 384), num_heads=(1, 3, 6), mlp_ratios=4, global_pool="token",
           attn_scale="dim", act="quick_gelu", norm_eps=1e-5, pos="convembed+convproj",
           stage_pos_options=({"convembed_padding": 2}, {}, {}))
# micro pyramids for CIFAR-scale inputs: 32 px, strides 2, 2, 2 (grids 16, 8, 4)
MICRO_PYRAMID = dict(img_size=32, num_classes=10, patch_sizes=(2, 2, 2), embed_dims=(32, 64, 128), num_heads=(1, 2, 4))

PYRAMIDS = {
    "twins_pcpvt_small": dict(PCPVT, depths=(3, 4, 6, 3)),
    "twins_pcpvt_base": dict(PCPVT, depths=(3, 4, 18, 3)),
    "twins_pcpvt_large": dict(PCPVT, depths=(3, 8, 27, 3)),
    "twins_svt_small": dict(SVT, embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 2, 10, 4)),
    "twins_svt_base": dict(SVT, embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), depths=(2, 2, 18, 2)),
    "twins_svt_large": dict(SVT, embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), depths=(2, 2, 18, 2)),
    "twins_pcpvt_micro": dict(PCPVT, **MICRO_PYRAMID, depths=(2, 2, 2), mlp_ratios=(4, 4, 4), sr_ratios=(4, 2, 1)),
    "twins_svt_micro": dict(SVT, **MICRO_PYRAMID, depths=(2, 2, 2), sr_ratios=(4, 2, 1), windows=4),
    "cvt_13": dict(CVT, depths=(1, 2, 10)),
    "cvt_21": dict(CVT, depths=(1, 4, 16)),
    "cvt_micro": dict(CVT, **{**MICRO_PYRAMID, "stage_pos_options": None}, depths=(1, 1, 2)),
}


def _register(name: str, args: dict, cls: type) -> None:
    def variant() -> dict:
        return dict(args)

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = f"{name}: {args}"
    register_model(cls)(variant)


for _name, _args in VIT_MODELS.items():
    _register(_name, _args, VisionTransformer)
for _name, _args in PYRAMIDS.items():
    _register(_name, _args, PyramidTransformer)
