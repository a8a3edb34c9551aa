"""``cpvt analyze``: see the position information inside a model.

Four measurements, each for one or several models side by side (registry names
with random weights, or trained runs), each writing PNG plots and a JSON of
the numbers and printing a short table:

* ``equivariance``: shift the image content and compare ``F(shift(x))`` with
  ``shift(F(x))`` token by token at every block, and count how often the top-1
  prediction survives the shift;
* ``position``: a position-information probe after Islam et al. 2020 ("How
  much position information do convolutional neural networks encode?"): a
  per-token linear readout, fitted in closed form on frozen tokens, predicts
  position maps (horizontal and vertical gradients, a centred Gaussian) on real,
  constant and noise images;
* ``attention``: mean attention distance per block and head, and the attention
  maps of centre, edge and corner queries (CPVT's Fig. 3/4);
* ``peg``: what each PEG adds to each token, ``||PEG(x) - x||``, on constant
  and real images: the border signal that zero padding creates;
* ``scale``: where a model's tokens stop agreeing with themselves when the test
  image grows. The same images at the training size and at larger sizes; at
  every block the larger token map, average-pooled onto the training grid, is
  compared with the training-size map (cosine similarity per token), and the
  top-1 predictions are compared. Done twice: with real detail (the source image
  resized to the larger size) and with the training-size image upsampled (the
  grid grows, the content does not).

A model is named as ``MODEL`` or ``MODEL:key=value,key=value`` (registry
overrides, e.g. ``cpvt_micro_gap:peg_padding=circular``, read by the same parser
as ``--set``), or as a run folder / checkpoint file, which may carry options the
same way (``RUN:peg_fixed_grid=dilate``). ``--set model.KEY=VALUE`` applies to
every model given. Each analysis is one entry of :data:`ANALYSES`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, resolve_checkpoint
from ..models import create_model, list_models, model_from_checkpoint
from ..pos import Grid
from ..train.config import parse_set
from ..utils.plotting import pyplot, save
from ..utils.table import format_table

# ----------------------------------------------------------------------------- models and images


@dataclass
class Subject:
    """A model under analysis and what it expects."""

    label: str
    model: nn.Module
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    data: str | None  # the dataset it was trained on (None: random weights)


def _parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``MODEL:key=value,key=value`` -> the model name and its options (each pair read by :func:`parse_set`)."""
    name, _, rest = spec.partition(":")
    try:
        return name, dict(parse_set(part) for part in filter(None, rest.split(",")))
    except ValueError:
        raise ValueError(f"model spec {spec!r}: expected MODEL:key=value,key=value") from None


def _single_stage(model: nn.Module, spec: str) -> nn.Module:
    if not hasattr(model, "blocks"):
        raise ValueError(f"{spec}: the analyses read one token grid through every block; pyramid models "
                         f"(twins_*, cvt_*) change grid and width between stages and are not supported")
    return model


def load_subject(spec: str, seed: int = 0, num_classes: int | None = None,
                 overrides: dict[str, Any] | None = None) -> Subject:
    """A registry model (random weights, seeded) or a trained run folder / checkpoint, rebuilt with ``overrides``.

    Either may carry its own options, ``MODEL:key=value,...`` or ``RUN_FOLDER:key=value,...`` (e.g. a trained
    PEG model tested with ``peg_fixed_grid=dilate``); they win over ``overrides``."""
    name, options = (spec, {}) if Path(spec).exists() else _parse_spec(spec)
    p = Path(name)
    if p.exists():
        ckpt = load_checkpoint(resolve_checkpoint(p))
        if not ckpt.meta:
            raise ValueError(f"{spec} is a plain weights file without a model description; analyse a cpvt run")
        model = _single_stage(model_from_checkpoint(ckpt, **{**(overrides or {}), **options}).eval(), spec)
        cfg = ckpt.config
        shape_keys = {"depth", "embed_dim", "num_heads", "mlp_ratio", "img_size", "num_classes", "patch_size"}
        extra = ",".join(f"{k}={v}" for k, v in cfg.get("model_args", {}).items() if k not in shape_keys)
        label = f"{ckpt.meta['model_name']}{':' + extra if extra else ''} (trained, patch {model.patch_size})"
        if options:
            label += " " + ",".join(f"{k}={v}" for k, v in options.items())
        return _subject(label, model, cfg.get("data"))
    options = {**(overrides or {}), **options}
    if name not in list_models():
        raise ValueError(f"{spec!r} is neither a run folder, a checkpoint nor a registered model (see `cpvt models`)")
    torch.manual_seed(seed)
    if num_classes is not None:
        options.setdefault("num_classes", num_classes)
    model = _single_stage(create_model(name, **options).eval(), spec)
    return _subject(spec, model, None)


def _subject(label: str, model: nn.Module, data: str | None) -> Subject:
    """A subject whose input size and normalisation are the model's ``pretrained_cfg`` (a run's own, or a random
    model's default)."""
    pre = model.pretrained_cfg
    return Subject(label, model, int(pre["input_size"][1]), tuple(pre["mean"]), tuple(pre["std"]), data)


def image_batch(kind: str, n: int, size: int, seed: int = 0, data: str | None = None, data_root: str | None = None,
                cache_dir: str | None = None) -> Tensor:
    """uint8 images (n, 3, size, size): ``real`` (from ``data``), ``constant`` (one random colour each) or ``noise``."""
    g = torch.Generator().manual_seed(seed)
    if kind == "constant":
        return (torch.randint(0, 256, (n, 3, 1, 1), generator=g, dtype=torch.uint8)).expand(n, 3, size, size).clone()
    if kind == "noise":
        return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    if kind == "real":
        return real_images(n, size, data, data_root, cache_dir)[0]
    raise ValueError(f"unknown image kind {kind!r}; use real, constant or noise")


def real_images(n: int, size: int, data: str | None = None, data_root: str | None = None,
                cache_dir: str | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` validation (else test) images of ``data`` (uint8, whole image resized to ``size``, no
    crop) and their labels: the same images at every size."""
    from ..data import open_source

    source = open_source(data or "synthetic", data_root=data_root, cache_dir=cache_dir)
    split = source.split("val" if "val" in source.splits else "test", size, mode="eval", crop_pct=1.0, limit=n)
    return split.images[:n], split.labels[:n]


def normalise(images: Tensor, subject: Subject) -> Tensor:
    mean = torch.tensor(subject.mean).view(1, 3, 1, 1)
    std = torch.tensor(subject.std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@torch.no_grad()
def stage_maps(model: nn.Module, x: Tensor, batch: int = 64, pre_logits: bool = False) -> tuple[list[Tensor], Tensor]:
    """Patch-token maps (B, D, H, W) at every stage (input to block 0, then after each block), and the
    logits (``pre_logits``: the pooled features the head reads), from one pass per batch.

    The maps after each block are :meth:`forward_intermediates`'s (the stream the next block reads, class
    token dropped); the input to block 0, which that API (timm's contract) does not return, is what block 0
    receives, read by a forward pre-hook."""
    h, w = model.grid_for(tuple(x.shape[-2:]))
    grid = Grid(h, w, model.num_prefix)
    out: list[list[Tensor]] = []
    logits = []
    block_inputs: list[Tensor] = []
    hook = model.blocks[0].register_forward_pre_hook(lambda _, args: block_inputs.append(args[0]))
    try:
        for i in range(0, len(x), batch):
            final, maps = model.forward_intermediates(x[i : i + batch])
            logits.append(model.forward_head(final, pre_logits=pre_logits))
            for j, t in enumerate([grid.to_map(grid.split(block_inputs.pop())[1]), *maps]):
                if len(out) <= j:
                    out.append([])
                out[j].append(t.float())
    finally:
        hook.remove()
    return [torch.cat(o) for o in out], torch.cat(logits)


# ----------------------------------------------------------------------------- equivariance


def _shift(images: Tensor, d: int, mode: str, margin: int) -> Tensor:
    """Move the content by ``d`` pixels right and down: rolled (circular) or on a padded canvas."""
    if mode == "circular":
        return torch.roll(images, shifts=(d, d), dims=(2, 3))
    b, c, h, w = images.shape
    canvas = images.new_zeros(b, c, h + 2 * margin, w + 2 * margin)
    canvas[:, :, margin + d : margin + d + h, margin + d : margin + d + w] = images
    return canvas


@torch.no_grad()
def equivariance(subject: Subject, images: Tensor, offsets: list[int], mode: str = "canvas") -> dict[str, Any]:
    """Per-offset, per-stage relative token error and top-1 agreement.

    Error at stage s: ``||F_s(shift(x))[aligned] - F_s(x)[aligned]|| / ||F_s(x)[aligned]||`` over the patch tokens
    both grids hold, the token shift being ``round(d / patch)``. Inputs are already normalised (0 = mean colour, so
    the canvas is filled with the dataset's mean colour).
    """
    model, p = subject.model, subject.model.patch_size
    margin = 0 if mode == "circular" else p * math.ceil(max(max(offsets), 0) / p)
    base_img = _shift(images, 0, mode, margin)
    base, base_logits = stage_maps(model, base_img)
    base_pred = base_logits.argmax(-1)
    out: dict[str, Any] = {"offsets": offsets, "mode": mode, "error": {}, "agreement": {}}
    for d in offsets:
        shifted_img = _shift(images, d, mode, margin)
        shifted, shifted_logits = stage_maps(model, shifted_img)
        t = round(d / p)
        errs = []
        for a, b in zip(base, shifted):
            if mode == "circular":
                a_al, b_al = torch.roll(a, shifts=(t, t), dims=(2, 3)), b
            else:
                h, w = a.shape[-2:]
                a_al, b_al = a[:, :, : h - t, : w - t], b[:, :, t:, t:]
            errs.append(((b_al - a_al).norm() / a_al.norm().clamp_min(1e-12)).item())
        out["error"][str(d)] = errs
        out["agreement"][str(d)] = 100 * (shifted_logits.argmax(-1) == base_pred).float().mean().item()
    return out


def plot_equivariance(results: dict[str, dict[str, Any]], patch: int, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=110)
    for label, r in results.items():
        offs = r["offsets"]
        axes[0].plot(offs, [r["error"][str(d)][-1] for d in offs], marker="o", label=label)
        whole = [d for d in offs if d % patch == 0 and d > 0]
        d = whole[0] if whole else offs[-1]
        axes[1].plot(range(len(r["error"][str(d)])), r["error"][str(d)], marker="o", label=f"{label} (shift {d}px)")
        axes[2].plot(offs, [r["agreement"][str(d)] for d in offs], marker="o", label=label)
    axes[0].set(xlabel="shift (px)", ylabel="relative token error, last block", title="equivariance error vs shift")
    axes[1].set(xlabel="stage (0 = input to block 0)", ylabel="relative token error", title="equivariance error vs depth")
    axes[2].set(xlabel="shift (px)", ylabel="top-1 unchanged (%)", title="prediction stability")
    for ax in axes:
        ax.grid(alpha=0.3)
        for x in range(patch, max(max(r["offsets"]) for r in results.values()) + 1, patch):
            if ax is not axes[1]:
                ax.axvline(x, color="grey", lw=0.5, ls=":")
        ax.legend(fontsize=7)
    return save(fig, path)


# ----------------------------------------------------------------------------- position probe


def position_targets(h: int, w: int) -> Tensor:
    """(3, h, w): horizontal gradient, vertical gradient, centred Gaussian (all in [0, 1])."""
    ys = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    xs = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    gauss = torch.exp(-((xs - 0.5) ** 2 + (ys - 0.5) ** 2) / (2 * 0.25**2))
    return torch.stack([xs, ys, gauss])


TARGETS = ("horizontal", "vertical", "gaussian")


def _ranks(v: Tensor) -> Tensor:
    """Ranks along the last dim, ties sharing their average rank (values equal to 1e-5 relative count as tied)."""
    scale = v.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    q = torch.round(v / scale * 1e5)
    less = (q[..., None, :] < q[..., :, None]).sum(-1)
    equal = (q[..., None, :] == q[..., :, None]).sum(-1)
    return less.float() + (equal.float() - 1) / 2


def spearman(pred: Tensor, target: Tensor) -> Tensor:
    """Rank correlation along the last dim; 0 where either side is constant."""
    a, b = _ranks(pred), _ranks(target)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    constant = (pred.std(dim=-1) < 1e-6) | (target.std(dim=-1) < 1e-6)
    return torch.where(constant, torch.zeros_like(den), (a * b).sum(-1) / den.clamp_min(1e-12))


def probe_stage(train: Tensor, test: Tensor, ridge: float = 1e-3) -> dict[str, Any]:
    """Fit a per-token linear readout (ridge, closed form) from (B, D, H, W) tokens to the position maps."""
    _, d, h, w = train.shape
    target = position_targets(h, w)  # (3, H, W)
    X = train.permute(0, 2, 3, 1).reshape(-1, d)
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    Xn = torch.cat([(X - mu) / sd, torch.ones(len(X), 1)], 1).double()
    Y = target.permute(1, 2, 0).reshape(1, h * w, 3).expand(train.shape[0], -1, -1).reshape(-1, 3).double()
    A = Xn.T @ Xn + ridge * len(Xn) * torch.eye(d + 1, dtype=torch.double)
    W = torch.linalg.solve(A, Xn.T @ Y)
    Xt = torch.cat([(test.permute(0, 2, 3, 1).reshape(-1, d) - mu) / sd, torch.ones(test.shape[0] * h * w, 1)], 1)
    pred = (Xt.double() @ W).float().reshape(test.shape[0], h * w, 3).permute(0, 2, 1)  # (B, 3, N)
    tgt = target.reshape(1, 3, h * w).expand_as(pred)
    rho = spearman(pred, tgt).mean(0)  # (3,)
    mae = (pred - tgt).abs().mean(dim=(0, 2))  # (3,)
    return {"spearman": dict(zip(TARGETS, rho.tolist())), "mae": dict(zip(TARGETS, mae.tolist())),
            "example": pred[0].reshape(3, h, w)}


@torch.no_grad()
def position_probe(subject: Subject, images: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Any]:
    """For each image kind: per-stage Spearman / MAE of the probe (fitted on train images, scored on test images)."""
    out: dict[str, Any] = {}
    for kind, (train_u8, test_u8) in images.items():
        tr, _ = stage_maps(subject.model, normalise(train_u8, subject))
        te, _ = stage_maps(subject.model, normalise(test_u8, subject))
        per_stage = [probe_stage(a, b) for a, b in zip(tr, te)]
        out[kind] = {
            "spearman": [sum(s["spearman"].values()) / 3 for s in per_stage],
            "mae": [sum(s["mae"].values()) / 3 for s in per_stage],
            "per_target": [{"spearman": s["spearman"], "mae": s["mae"]} for s in per_stage],
            "example": per_stage[-1]["example"].tolist(),
        }
    return out


def plot_position(results: dict[str, dict[str, Any]], curves: Path, maps: Path) -> tuple[Path, Path]:
    plt = pyplot()
    kinds = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.8), dpi=110, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for label, r in results.items():
            ax.plot(range(len(r[kind]["spearman"])), r[kind]["spearman"], marker="o", label=label)
        ax.set(title=f"{kind} images", xlabel="stage (0 = input to block 0)", ylabel="probe Spearman ρ (mean of 3 maps)",
               ylim=(-0.1, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, curves)
    kind = "constant" if "constant" in kinds else kinds[0]
    n = len(results)
    fig, axes = plt.subplots(n + 1, 3, figsize=(7, 2.3 * (n + 1)), dpi=110, squeeze=False)
    example = torch.tensor(next(iter(results.values()))[kind]["example"])
    target = position_targets(*example.shape[-2:])
    for j, name in enumerate(TARGETS):
        axes[0][j].imshow(target[j].numpy(), cmap="viridis", vmin=0, vmax=1)
        axes[0][j].set_title(f"target: {name}", fontsize=8)
    for i, (label, r) in enumerate(results.items(), 1):
        ex = torch.tensor(r[kind]["example"])
        for j in range(3):
            axes[i][j].imshow(ex[j].numpy(), cmap="viridis", vmin=0, vmax=1)
            axes[i][j].set_title(f"{label}\nρ={r[kind]['per_target'][-1]['spearman'][TARGETS[j]]:.2f}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"probe predictions from the last block, {kind} input", fontsize=9)
    return curves, save(fig, maps)


# ----------------------------------------------------------------------------- attention


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [blk.attn for blk in model.blocks]


@torch.no_grad()
def attention_maps(subject: Subject, x: Tensor) -> list[Tensor]:
    """Attention probabilities of every block, (B, heads, T, T), with the model's own biases."""
    mods = _attention_modules(subject.model)
    for m in mods:
        m.keep_attn = True
    try:
        subject.model(x)
        return [m.last_attn for m in mods]
    finally:
        for m in mods:
            m.keep_attn, m.last_attn = False, None


def query_tokens(h: int, w: int) -> dict[str, int]:
    """Patch-grid indices of the centre, the middle of the left edge, and the top-left corner."""
    return {"centre": (h // 2) * w + w // 2, "edge": (h // 2) * w, "corner": 0}


@torch.no_grad()
def attention_analysis(subject: Subject, x: Tensor, blocks: list[int] | None = None) -> dict[str, Any]:
    model = subject.model
    h, w = model.grid_for(tuple(x.shape[-2:]))
    p, pre = model.patch_size, model.num_prefix
    attn = attention_maps(subject, x)
    if attn[0].shape[-1] != attn[0].shape[-2]:
        raise ValueError(f"{subject.label} attends to strided keys (conv projection); its maps are not query x key grids")
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], 1).float() * p
    dist = torch.cdist(coords, coords)  # (N, N) pixels
    mean_dist = []
    for a in attn:
        patch = a[:, :, pre:, pre:]  # patch queries to patch keys
        patch = patch / patch.sum(-1, keepdim=True).clamp_min(1e-12)
        mean_dist.append((patch * dist).sum(-1).mean(dim=(0, 2)).tolist())  # per head
    depth = len(attn)
    blocks = blocks if blocks is not None else sorted({0, depth // 2, depth - 1})
    for b in blocks:
        if not -depth <= b < depth:
            raise ValueError(f"block {b} out of range for depth {depth}")
    queries = query_tokens(h, w)
    maps = {}
    for b in blocks:
        a = attn[b][0, :, pre:, pre:].mean(dim=0)  # (N, N): the first image (the one drawn under it), mean of heads
        maps[str(b % depth)] = {q: (a[i] / a[i].max().clamp_min(1e-12)).reshape(h, w).tolist() for q, i in queries.items()}
    return {"grid": [h, w], "patch": p, "mean_distance": mean_dist, "uniform_distance": dist.mean().item(), "maps": maps,
            "row_sums_max_error": max((a.sum(-1) - 1).abs().max().item() for a in attn)}


def plot_attention(results: dict[str, dict[str, Any]], image: Tensor | None, dist_path: Path, maps_path: Path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, r in results.items():
        md = torch.tensor(r["mean_distance"])  # (blocks, heads)
        (line,) = ax.plot(range(len(md)), md.mean(1).tolist(), marker="o", label=label)
        for hd in range(md.shape[1]):
            ax.scatter(range(len(md)), md[:, hd].tolist(), s=8, color=line.get_color(), alpha=0.4)
    ax.set(xlabel="block", ylabel="mean attention distance (px)", title="attention distance (dots: heads)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, dist_path)
    queries = list(query_tokens(2, 2))
    cols = [(b, q) for b in next(iter(results.values()))["maps"] for q in queries]
    fig, axes = plt.subplots(len(results), len(cols), figsize=(1.9 * len(cols), 2.1 * len(results)), dpi=110,
                             squeeze=False)
    for i, (label, r) in enumerate(results.items()):
        h, w = r["grid"]
        for j, (b, q) in enumerate(cols):
            ax = axes[i][j]
            m = torch.tensor(r["maps"][b][q])
            if image is not None and tuple(image.shape[-2:]) == (h * r["patch"], w * r["patch"]):
                ax.imshow(image.permute(1, 2, 0).numpy(), extent=(0, w, h, 0))
                ax.imshow(m.numpy(), cmap="inferno", alpha=0.6, extent=(0, w, h, 0))
            else:
                ax.imshow(m.numpy(), cmap="inferno", extent=(0, w, h, 0))
            qi = query_tokens(h, w)[q]
            ax.scatter([qi % w + 0.5], [qi // w + 0.5], marker="x", color="cyan", s=30)
            ax.set_title(f"block {b}, {q} query", fontsize=6)
            if j == 0:
                ax.set_ylabel(label, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
    return dist_path, save(fig, maps_path)


# ----------------------------------------------------------------------------- PEG response


def border_interior(m: Tensor) -> tuple[Tensor, Tensor]:
    """The border ring of an (h, w) map, flattened, and the rest (the whole map when there is no inside)."""
    border = torch.cat([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]])
    return border, (m[1:-1, 1:-1] if min(m.shape) > 2 else m)


@torch.no_grad()
def peg_response(subject: Subject, x: Tensor) -> dict[str, Any]:
    """Mean ``||F(x)||`` (the PEG's added term) per token, for every PEG generator."""
    model = subject.model
    peg = getattr(model, "pos_block", None)
    if peg is None or not hasattr(peg, "generators_at"):
        raise ValueError(f"{subject.label} has no PEG (pos_block); `cpvt analyze peg` needs a CPVT-style model")
    captured: dict[str, Tensor] = {}
    hooks = []
    for j, pos in enumerate(peg.positions):
        gen = peg.get_submodule(str(j))
        hooks.append(gen.register_forward_hook(
            lambda _m, _i, out, key=f"{j}@{pos}": captured.__setitem__(key, out.float().norm(dim=1).mean(0))))
    try:
        model(x)
    finally:
        for hk in hooks:
            hk.remove()
    out = {}
    for key, m in captured.items():
        border, interior = border_interior(m)
        out[key] = {"map": m.tolist(), "interior_mean": interior.mean().item(), "border_mean": border.mean().item(),
                    "interior_spread": (interior.max() - interior.min()).item() / max(interior.mean().item(), 1e-12)}
    return out


def plot_peg(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> Path:
    plt = pyplot()
    cells = [(label, kind, key) for label, per in results.items() for kind, r in per.items() for key in r]
    cols = min(4, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.6 * rows), dpi=110, squeeze=False)
    for ax, (label, kind, key) in zip(axes.flat, cells):
        r = results[label][kind][key]
        im = ax.imshow(torch.tensor(r["map"]).numpy(), cmap="magma")
        pos = key.split("@")[1]
        ax.set_title(f"{label}\n{kind} input, PEG after block {pos}\nborder/interior {r['border_mean'] / max(r['interior_mean'], 1e-12):.2f}",
                     fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.suptitle("||PEG(x) - x|| per token", fontsize=9)
    return save(fig, path)


# ----------------------------------------------------------------------------- scale consistency


def pooled_agreement(base: Tensor, larger: Tensor) -> Tensor:
    """Cosine similarity per token (B, h, w) between a (B, D, h, w) map and a larger (B, D, H, W) map
    average-pooled onto the same h x w grid: 1 where the larger grid holds the same code, region for region."""
    pooled = nn.functional.adaptive_avg_pool2d(larger.float(), base.shape[-2:])
    return nn.functional.cosine_similarity(pooled, base.float(), dim=1)


@torch.no_grad()
def scale_consistency(subject: Subject, images: Tensor, labels: Tensor, larger: dict[int, Tensor]) -> dict[str, Any]:
    """For each larger size: per-stage mean :func:`pooled_agreement` with the training-size tokens, its mean on
    border and interior tokens (of the training grid) at the last stage, the cosine of the pooled features the
    head reads, the share of top-1 predictions kept, and top-1 accuracy (``labels``).

    ``images``: uint8 (B, 3, s, s) at the model's size; ``larger``: the same images at each larger size, from
    the source (real detail). Each size is also measured on ``images`` upsampled bilinearly (no new detail)."""
    model = subject.model
    base, base_feat = stage_maps(model, normalise(images, subject), pre_logits=True)
    pred = model.head(base_feat).argmax(-1)
    out: dict[str, Any] = {"size": images.shape[-1], "sizes": sorted(larger), "images": len(images),
                           "top1": 100 * (pred == labels).float().mean().item(), "content": {}}
    for content in ("detail", "upsampled"):
        per: dict[str, Any] = {}
        for size, big in sorted(larger.items()):
            if content == "upsampled":
                big = nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                align_corners=False).round().clamp(0, 255).to(torch.uint8)
            maps, feat = stage_maps(model, normalise(big, subject), pre_logits=True)
            p = model.head(feat).argmax(-1)
            cos = [pooled_agreement(a, b) for a, b in zip(base, maps)]
            border, interior = border_interior(cos[-1].mean(0))
            per[str(size)] = {"cosine": [c.mean().item() for c in cos],
                              "border_last": border.mean().item(),
                              "interior_last": interior.mean().item(),
                              "features": nn.functional.cosine_similarity(feat, base_feat, dim=1).mean().item(),
                              "top1_kept": 100 * (p == pred).float().mean().item(),
                              "top1": 100 * (p == labels).float().mean().item()}
        out["content"][content] = per
    return out


def plot_scale(results: dict[str, dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    sizes = sorted({s for r in results.values() for s in r["sizes"]})
    fig, axes = plt.subplots(2, len(sizes), figsize=(6 * len(sizes), 6 + 0.5 * len(results)), dpi=110,
                             squeeze=False)
    for row, content in enumerate(("detail", "upsampled")):
        for col, size in enumerate(sizes):
            ax = axes[row, col]
            for label, r in results.items():
                c = r["content"][content].get(str(size))
                if c is not None:
                    ax.plot(range(len(c["cosine"])), c["cosine"], marker="o",
                            label=f"{label} (top-1 {r['top1']:.1f} -> {c['top1']:.1f}%, kept {c['top1_kept']:.0f}%)")
            what = "real detail" if content == "detail" else "upsampled, no new detail"
            ax.set(xlabel="stage (0 = input to block 0)", ylabel="cosine to the training-size tokens",
                   title=f"{size}px ({what}) pooled onto the training grid")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    return save(fig, path)


# ----------------------------------------------------------------------------- driver


@dataclass
class Inputs:
    """What every analysis of one model gets: its real images at its size, and the driver's options."""

    real: Tensor
    size: int
    seed: int
    images: int
    offsets: list[int] | None
    shift_mode: str
    blocks: list[int] | None
    sizes: list[int] | None = None  # scale: the larger test sizes
    load: Callable[[int], tuple[Tensor, Tensor]] | None = None  # the same real images (and labels) at another size
    labels: Tensor | None = None  # the real images' labels


Rows = list[list[Any]]


def _run_equivariance(s: Subject, inp: Inputs) -> tuple[dict[str, Any], Rows, list[str]]:
    p = s.model.patch_size
    offs = inp.offsets or sorted({1, 2, p // 2, p, 2 * p, 3 * p} - {0})
    r = equivariance(s, normalise(inp.real, s), offs, inp.shift_mode)
    whole = next((d for d in offs if d % p == 0), offs[-1])
    row = [s.label, f"{r['error'][str(whole)][0]:.3g}", f"{r['error'][str(whole)][-1]:.3g}",
           f"{r['agreement'][str(whole)]:.1f}", f"{min(r['agreement'].values()):.1f}"]
    headers = ["model", f"error @{whole}px stage 0", f"error @{whole}px last", f"top-1 kept @{whole}px (%)",
               "worst top-1 kept (%)"]
    return r, [row], headers


def _run_position(s: Subject, inp: Inputs) -> tuple[dict[str, Any], Rows, list[str]]:
    half, size, seed = inp.images // 2, inp.size, inp.seed
    cut = half if len(inp.real) > half else len(inp.real) // 2  # a split of at most --images / 2 images: halve it
    kinds = {
        "real": (inp.real[:cut], inp.real[cut:]),
        "constant": (image_batch("constant", half, size, seed), image_batch("constant", half, size, seed + 1)),
        "noise": (image_batch("noise", half, size, seed), image_batch("noise", half, size, seed + 1)),
    }
    r = position_probe(s, kinds)
    row = ([s.label] + [f"{max(r[k]['spearman']):.3f}" for k in kinds]
           + [f"{r['constant']['spearman'][-1]:.3f}", f"{r['constant']['mae'][-1]:.3f}"])
    headers = ["model"] + [f"best ρ {k}" for k in kinds] + ["ρ constant, last", "MAE constant, last"]
    return r, [row], headers


def _run_attention(s: Subject, inp: Inputs) -> tuple[dict[str, Any], Rows, list[str]]:
    r = attention_analysis(s, normalise(inp.real[: min(inp.images, 16)], s), inp.blocks)
    md = torch.tensor(r["mean_distance"]).mean(1)
    row = [s.label, f"{md[0]:.2f}", f"{md[len(md) // 2]:.2f}", f"{md[-1]:.2f}", f"{md.min():.2f}",
           f"{r['uniform_distance']:.2f}", f"{r['row_sums_max_error']:.1e}"]
    headers = ["model", "mean dist block 0 (px)", "middle", "last", "lowest block", "uniform attention",
               "max |row sum - 1|"]
    return r, [row], headers


def _run_peg(s: Subject, inp: Inputs) -> tuple[dict[str, Any] | None, Rows, list[str]]:
    headers = ["model", "PEG after block", "border/interior (constant)", "interior spread (constant)",
               "border/interior (real)"]
    if not hasattr(getattr(s.model, "pos_block", None), "generators_at"):
        print(f"skipping {s.label}: it has no PEG")
        return None, [], headers
    const = image_batch("constant", 1, inp.size, inp.seed)
    r = {"constant": peg_response(s, normalise(const, s)), "real": peg_response(s, normalise(inp.real, s))}

    def ratio(c: dict[str, Any]) -> float:
        return c["border_mean"] / max(c["interior_mean"], 1e-12)

    rows = [[s.label, key.split("@")[1], f"{ratio(c):.3f}", f"{c['interior_spread']:.2e}", f"{ratio(r['real'][key]):.3f}"]
            for key, c in r["constant"].items()]
    return r, rows, headers


def _run_scale(s: Subject, inp: Inputs) -> tuple[dict[str, Any], Rows, list[str]]:
    sizes = inp.sizes or [2 * inp.size]
    if any(size <= inp.size for size in sizes):
        raise ValueError(f"--img-sizes for `cpvt analyze scale` must be larger than the model's size {inp.size}, "
                         f"got {','.join(map(str, sizes))}")
    for size in sizes:
        s.model.grid_for(size)  # clear error for a bad size
    r = scale_consistency(s, inp.real, inp.labels, {size: inp.load(size)[0] for size in sizes})
    rows = []
    for content, per in r["content"].items():
        for size, c in per.items():
            cos = c["cosine"]
            rows.append([s.label, size, content, f"{cos[0]:.3f}", f"{cos[1]:.3f}", f"{cos[len(cos) // 2]:.3f}",
                         f"{cos[-1]:.3f}", f"{c['border_last']:.3f}", f"{c['interior_last']:.3f}",
                         f"{c['features']:.3f}", f"{c['top1_kept']:.1f}", f"{r['top1']:.1f} -> {c['top1']:.1f}"])
    headers = ["model", "size", "content", "cos stage 0", "stage 1", "middle", "last", "last, border",
               "last, interior", "pooled features", "top-1 kept (%)", f"top-1 (%) {inp.size}px -> size"]
    return r, rows, headers


@dataclass(frozen=True)
class Analysis:
    """One ``cpvt analyze`` kind: how to measure one model, and how to plot all of them."""

    run: Callable[[Subject, Inputs], tuple[dict[str, Any] | None, Rows, list[str]]]
    plot: Callable[[dict[str, Any], list[Subject], Tensor, Path], list[Path]]
    help: str


ANALYSES: dict[str, Analysis] = {
    "equivariance": Analysis(
        _run_equivariance, lambda res, subs, img, d: [plot_equivariance(res, subs[0].model.patch_size, d / "equivariance.png")],
        "how feature maps and predictions follow a shifted input"),
    "position": Analysis(
        _run_position, lambda res, subs, img, d: list(plot_position(res, d / "position_curves.png", d / "position_maps.png")),
        "how well each stage's tokens predict their own grid position (linear probe)"),
    "attention": Analysis(
        _run_attention,
        lambda res, subs, img, d: list(plot_attention(res, img, d / "attention_distance.png", d / "attention_maps.png")),
        "mean attention distance per block and head, and query maps"),
    "peg": Analysis(_run_peg, lambda res, subs, img, d: [plot_peg(res, d / "peg_response.png")],
                    "what each PEG adds at the border and inside, on constant and real images"),
    "scale": Analysis(_run_scale, lambda res, subs, img, d: [plot_scale(res, d / "scale.png")],
                      "how far each block's tokens at larger sizes (--img-sizes, default 2x) match the training size's"),
}
KINDS = tuple(ANALYSES)


def _load_subjects(specs: list[str], seed: int, overrides: dict[str, Any] | None) -> list[Subject]:
    """Each spec as a :class:`Subject`; two of the same configuration are numbered."""
    if len(set(specs)) < len(specs):
        raise ValueError("the same model was given twice")
    subjects = [load_subject(s, seed, overrides=overrides) for s in specs]
    seen: dict[str, int] = {}
    for s in subjects:
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] > 1:
            s.label = f"{s.label} #{seen[s.label]}"
    return subjects


def analyze(kind: str, specs: list[str], data: str | None = None, out: str | None = None, images: int = 64,
            img_size: int | None = None, seed: int = 0, offsets: list[int] | None = None, shift_mode: str = "canvas",
            blocks: list[int] | None = None, data_root: str | None = None, cache_dir: str | None = None,
            overrides: dict[str, Any] | None = None, sizes: list[int] | None = None) -> dict[str, Any]:
    """Run one analysis (a key of :data:`ANALYSES`) over several models; writes ``<out>/<kind>.json`` and PNGs,
    prints a table. ``overrides`` are model options applied to every model (``--set model.KEY=VALUE``);
    ``sizes``: the larger test sizes of ``scale``."""
    if kind not in ANALYSES:
        raise ValueError(f"unknown analysis {kind!r}; choose from {', '.join(ANALYSES)}")
    if shift_mode not in ("canvas", "circular"):
        raise ValueError(f"--shift-mode must be canvas or circular, got {shift_mode!r}")
    if images < 2:
        raise ValueError(f"--images must be at least 2, got {images}")
    subjects = _load_subjects(specs, seed, overrides)
    data = data or next((s.data for s in subjects if s.data), None) or "synthetic"
    out_dir = Path(out or f"runs/analysis/{kind}")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    results: dict[str, Any] = {}
    table_rows: Rows = []
    headers: list[str] = []
    shown: Tensor | None = None
    def load(n: int) -> tuple[Tensor, Tensor]:
        return real_images(images, n, data, data_root, cache_dir)

    for s in subjects:
        size = img_size or s.img_size
        s.model.grid_for(size)  # clear error for a bad size
        real, labels = load(size)
        shown = real[0] if shown is None else shown
        r, rows, headers = ANALYSES[kind].run(s, Inputs(real, size, seed, images, offsets, shift_mode, blocks,
                                                        sizes, load, labels))
        table_rows += rows
        if r is not None:
            results[s.label] = r
    if not results:
        raise ValueError(f"none of {', '.join(specs)} has a PEG; `cpvt analyze peg` needs a CPVT-style model")
    files = ANALYSES[kind].plot(results, subjects, shown, out_dir)
    meta = {"kind": kind, "models": specs, "data": data, "images": images, "seed": seed, **({"sizes": sizes} if sizes else {}),
            **({"overrides": overrides} if overrides else {})}
    (out_dir / f"{kind}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(format_table(table_rows, headers))
    print("\nwrote " + ", ".join(str(f) for f in files + [out_dir / f"{kind}.json"]))
    return results
