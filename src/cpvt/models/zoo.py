"""The named models: DeiT with every encoding, CPVT and its variants.

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


def _register(name: str, args: dict, cls: type = VisionTransformer) -> None:
    def variant() -> dict:
        return dict(args)

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = f"{name}: {args}"
    register_model(cls)(variant)


for _deit, _cpvt, _size in (("tiny", "ti", TINY), ("small", "s", SMALL), ("base", "b", BASE), ("micro", "micro", MICRO)):
    _register(f"deit_{_deit}", dict(_size, pos="ape"))
    _register(f"deit_{_deit}_nope", dict(_size, pos="none"))
    _register(f"deit_{_deit}_sincos", dict(_size, pos="sincos"))
    _register(f"deit_{_deit}_rpe", dict(_size, pos="rpe"))
    _register(f"deit_{_deit}_rope", dict(_size, pos="rope"))
    _register(f"deit_{_deit}_rope_mixed", dict(_size, pos="rope", rope_mode="mixed"))
    _register(f"deit_{_deit}_alibi", dict(_size, pos="alibi"))
    _register(f"deit_{_deit}_lookhere", dict(_size, pos="lookhere"))
    _register(f"deit_{_deit}_pape", dict(_size, pos="pape"))
    _register(f"deit_{_deit}_convffn", dict(_size, pos="convffn"))
    _register(f"deit_{_deit}_convembed", dict(_size, pos="convembed"))
    _register(f"deit_{_deit}_convproj", dict(_size, pos="convproj"))
    _register(f"cpvt_{_cpvt}", dict(_size, pos="peg"))
    _register(f"cpvt_{_cpvt}_gap", dict(_size, pos="peg", **GAP))
    _register(f"cpvt_{_cpvt}_plus", dict(_size, pos="peg", **PLUS))
    _register(f"cpvt_{_cpvt}_gap_plus", dict(_size, pos="peg", **GAP, **PLUS))
    _register(f"cpvt_{_cpvt}_ape", dict(_size, pos="ape+peg"))
    _register(f"cpvt_{_cpvt}_repcpe", dict(_size, pos="repcpe"))
    # a PEG beside a relative scheme: the PEG's zero-padding code plus a bias or rotation that exists at any grid
    _register(f"cpvt_{_cpvt}_alibi", dict(_size, pos="alibi+peg"))
    _register(f"cpvt_{_cpvt}_rope_mixed", dict(_size, pos="rope+peg", rope_mode="mixed"))
    _register(f"cpvt_{_cpvt}_lookhere", dict(_size, pos="lookhere+peg"))


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
for _name, _args in PYRAMIDS.items():
    _register(_name, _args, PyramidTransformer)
