"""SyntheticShapes: the built-in, download-free dataset.

It is built to test two things at once: whether a vision transformer
generalises across resolutions, and whether it uses position information.

Scenes in continuous coordinates
--------------------------------
A scene is a small set of numbers in the unit square ``[0, 1]^2`` (``x`` to the
right, ``y`` downwards): one *main shape* (kind, centre, size, colour), a flat
background colour, and 2-4 small *distractor* discs. Nothing in a scene refers
to pixels. :func:`render_scene_params` draws a scene at any side length ``S``
by evaluating a signed distance function (SDF) at every pixel centre
``((j + 0.5) / S, (i + 0.5) / S)`` and converting it to an anti-aliased
coverage with a ramp one pixel wide::

    coverage = clamp(0.5 - sdf / pixel_size, 0, 1),   pixel_size = 1 / S

So the *same* scene exists at 32, 48, 64 or 96 px: a 64 px render average-pooled
2x2 is (up to anti-aliasing error and noise) the 32 px render. A model trained
at one size and evaluated at another sees the same objects at a different
sampling density (patch count), which is exactly the resolution-generalisation
question for position encodings (learned tables that must be interpolated,
versus convolutional/conditional encodings that follow the input).
Rendering is vectorised in torch over a batch of scenes; the only Python loops
are over the five shape kinds and the four distractor slots.

Labels need shape *and* absolute position
-----------------------------------------
There are five main shapes, each mirror-symmetric about its own vertical axis:
``disc``, ``square``, ``triangle`` (pointing up), ``plus`` and ``ring``. The
label is ``(shape, half)`` where ``half`` says whether the shape's centre is in
the left or the right half of the image: 10 classes, ``disc_left``,
``disc_right``, ``square_left``, ... (label = ``2 * shape + half``). The main
shape's bounding box ``[cx - r, cx + r] x [cy - r, cy + r]`` stays inside its
half, at least ``MARGIN`` (0.04 of the side) away from both the vertical
midline and the image border, so the half is never ambiguous.

Everything except the main shape's half is statistically identical in the two
halves: the background is one flat colour (no gradient, no frame), distractors
are placed uniformly over the whole image independently of the label, pixel
noise is i.i.d., and all shapes are mirror-symmetric. The distribution of a
``*_right`` image is exactly the mirror image of the distribution of the
matching ``*_left`` image. A model with no position information (a bag of
patches, e.g. a ViT with its position encoding removed) therefore sees the same
distribution of patch contents for ``X_left`` and ``X_right``: the left/right
half is only recoverable from *absolute* position. Such a model can at best
get the shape right and guess the half, so its accuracy is capped at
:attr:`SyntheticShapes.position_free_ceiling` = 0.5. (Strictly: a mirrored patch
of a symmetric shape is the patch of the same shape at the mirrored grid phase;
the left centre range ``[MARGIN + r, 0.5 - MARGIN - r]`` is symmetric about
0.25, so when ``S / 2`` is a multiple of the patch size the two phase
distributions coincide and the cap is exact; otherwise it holds up to a tiny
grid-phase effect.) A model *with* position information can approach 100 %.

Difficulty and distractors
--------------------------
Per scene we randomise: the shape kind and half (uniform over the 10 classes),
the half-size ``r`` in ``[0.10, 0.18]`` of the image side, the centre (uniform
within the allowed box of its half), the shape colour (uniform RGB), the
background colour (every channel at least 0.3 away from the shape's, so the
shape always has contrast), and 2-4 distractor discs.

Distractors are never confusable with the main shape:

* they are discs of radius ``[0.025, 0.05]``, at most half the smallest main
  half-size (0.10), so even a ``disc`` main shape is at least twice as large;
* they are drawn *behind* the main shape, so the main shape is always complete;
* each channel of a distractor's colour differs from the main shape's colour by
  at least 0.25, so a distractor touching the main shape does not merge with
  its silhouette.

Distractor centres are uniform over the image (they may be clipped by the
border and may cross the midline; both happen identically on both sides).

Training scenes vary in scale
-----------------------------
The ``train`` split is zoomed about the image centre by a per-scene factor
``z`` (log-uniform in ``train_zoom``, default ``[1, 2]``): every coordinate
``c`` becomes ``0.5 + z (c - 0.5)`` and every radius ``z r``. A zoom about the
centre keeps the side of the midline, so the label still holds, and ``z`` is
capped per scene so the main shape's centre stays at least half its half-size
inside the border (the border may cut at most a quarter of the shape's box, so
the shape stays recognisable; a cap that kept every shape whole would leave
the median zoom at 1.12, since most shapes already reach towards a border).
The cap depends only on distances from the centre, so the mirror argument
below is unchanged. Shapes and border distances then
span up to twice the tokens of an unzoomed scene during training, which is
what a test at up to 2x the training resolution shows the model: the test asks
whether a model generalises across resolution, not across object size
(random-resized crops do the same for real images). The ``val`` split is not
zoomed.

Finally mild i.i.d. pixel noise (uniform in ``[-noise, noise]``, default
``0.05`` i.e. about +-13/255) is added before quantising to uint8. Noise is
deterministic per (seed, split, index, size) but *resolution-specific*: the
scene is identical at every size, while the noise is a fresh deterministic
draw for each resolution (it is a sensor effect, not part of the scene). Pass
``noise=0`` for clean renders.

Determinism
-----------
All randomness comes from a counter-based hash (SplitMix64 finalizer, computed
in int64 torch arithmetic) of ``(seed, split, index, stream)``. Scene ``i`` of a
split depends on nothing else, so rendering indices ``[5, 6]`` gives the same
images as rows 5 and 6 of ``range(10)``, in any batch size or order, on any
machine.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Split

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "plus", "ring")
HALVES: tuple[str, ...] = ("left", "right")
CLASSES: list[str] = [f"{s}_{h}" for s in SHAPES for h in HALVES]

MARGIN = 0.04  # min distance of the main shape's box from the midline and from the border
R_MIN, R_MAX = 0.10, 0.18  # main shape half-size (fraction of the image side)
D_MIN, D_MAX = 0.025, 0.05  # distractor disc radius (<= R_MIN / 2)
N_DISTRACTORS_MIN, N_DISTRACTORS_MAX = 2, 4
BG_MIN_DIFF = 0.3  # per-channel contrast of background vs main shape
DISTRACTOR_MIN_DIFF = 0.25  # per-channel contrast of distractors vs main shape
MIN_SIZE = 8
# ``shape_colors=True``: one colour per shape kind (red disc, green square, blue triangle, yellow plus, magenta
# ring), each channel jittered by up to +-0.08 per scene.
SHAPE_COLORS = torch.tensor([[0.85, 0.15, 0.15], [0.15, 0.75, 0.20], [0.15, 0.30, 0.90], [0.90, 0.80, 0.10],
                             [0.80, 0.20, 0.80]])
SHAPE_COLOR_JITTER = 0.08
CHUNK = 1024  # at most this many scenes per rendering batch...
CHUNK_PIXELS = 1 << 18  # ...and about this many pixels per channel (keeps temporaries in cache)

_SPLIT_IDS = {"train": 0, "val": 1}

# ---------------------------------------------------------------------------
# Counter-based hashing in int64 (multiplication wraps modulo 2^64).


def _s64(x: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return x - (1 << 64) if x >= (1 << 63) else x


_GOLDEN = _s64(0x9E3779B97F4A7C15)
_M1 = _s64(0xBF58476D1CE4E5B9)
_M2 = _s64(0x94D049BB133111EB)


def _wrap(x: int) -> int:
    """A Python int reduced to int64 with two's-complement wrap-around."""
    return _s64(x % (1 << 64))


def _srl(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Tensor) -> Tensor:
    """SplitMix64 finalizer: a bijective 64-bit avalanche hash."""
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def _uniform(h: Tensor) -> Tensor:
    """Top 24 bits of a hash as float32 in [0, 1)."""
    return ((h >> 40) & 0xFFFFFF).to(torch.float32) * (1.0 / (1 << 24))


# Streams of the per-scene hash (one uniform each).
_S_LABEL, _S_R, _S_CX, _S_CY = 0, 1, 2, 3
_S_COLOR = 4  # 3 streams
_S_BG = 7  # 3 streams
_S_NDIST = 10
_S_DIST = 11  # per slot: x, y, radius, 3 colour offsets -> 6 streams
_S_ZOOM = _S_DIST + 6 * N_DISTRACTORS_MAX
_N_STREAMS = _S_ZOOM + 1
_S_NOISE = 1000


def _scene_keys(seed: int, split_id: int, indices: Tensor) -> Tensor:
    base = _mix(_mix(torch.tensor(_wrap(seed * _GOLDEN + 0x5CE7E))) + split_id)
    return _mix(base + (indices + 1) * _GOLDEN)


def _as_indices(indices) -> Tensor:
    if isinstance(indices, Tensor):
        t = indices
    elif isinstance(indices, int):
        t = torch.tensor([indices])
    elif isinstance(indices, range):
        t = torch.arange(indices.start, indices.stop, indices.step)
    else:
        try:
            t = torch.as_tensor(indices)
        except (TypeError, ValueError, RuntimeError):
            t = torch.as_tensor(list(indices))
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"indices must be integers, got dtype {t.dtype}")
    return t.to(torch.int64).reshape(-1)


# ---------------------------------------------------------------------------
# Scene parameters.


def _distractors(u: Tensor, color: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Distractor discs from the uniform streams ``u``: centres, radii, colours (away from the shape's), mask."""
    n_range = N_DISTRACTORS_MAX - N_DISTRACTORS_MIN + 1
    n_dist = N_DISTRACTORS_MIN + (u[:, _S_NDIST] * n_range).to(torch.int64).clamp_(max=n_range - 1)
    d = u[:, _S_DIST:_S_ZOOM].reshape(-1, N_DISTRACTORS_MAX, 6)
    dr = D_MIN + (D_MAX - D_MIN) * d[..., 2]
    dx, dy = d[..., 0], d[..., 1]
    d_off = DISTRACTOR_MIN_DIFF + (1.0 - 2 * DISTRACTOR_MIN_DIFF) * d[..., 3:6]
    dcolor = torch.remainder(color[:, None, :] + d_off, 1.0)
    dmask = torch.arange(N_DISTRACTORS_MAX)[None, :] < n_dist[:, None]
    return dx, dy, dr, dcolor, dmask


def _zoom_factor(u: Tensor, zoom: tuple[float, float], cx: Tensor, cy: Tensor, r: Tensor) -> Tensor:
    """Per-scene zoom about the centre: log-uniform in ``zoom``, capped so the main shape stays inside."""
    lo_z, hi_z = (float(z) for z in zoom)
    if not 0 < lo_z <= hi_z:
        raise ValueError(f"zoom must be a range 0 < low <= high, got {zoom}")
    z = torch.exp(math.log(lo_z) + (math.log(hi_z) - math.log(lo_z)) * u[:, _S_ZOOM])
    reach = torch.maximum((cx - 0.5).abs(), (cy - 0.5).abs()) + 0.5 * r  # centre + r/2, from the image centre
    return torch.minimum(z, 0.5 / reach)  # at most a quarter of the box is cut by the border


def make_scene_params(seed: int, split_id: int, indices: Tensor,
                      zoom: tuple[float, float] = (1.0, 1.0), shape_colors: bool = False) -> dict[str, Tensor]:
    """Continuous scene parameters for ``indices`` (int64, any order) of one split.

    ``zoom``: each scene is zoomed about the image centre by a factor drawn
    log-uniformly from this range and capped so the main shape stays inside
    (see the module docstring); ``(1, 1)`` leaves scenes as drawn.
    ``shape_colors``: each shape kind takes its own colour (:data:`SHAPE_COLORS`, jittered by up to
    ``SHAPE_COLOR_JITTER`` per channel) instead of a uniform one, so the shape can be told from any one
    of its patches; the half still needs absolute position.

    Returns a dict of per-scene tensors (B = len(indices)):

    * ``label`` int64 (B,) = 2 * shape + half; ``shape`` int64 (B,) index into
      :data:`SHAPES`; ``half`` int64 (B,) 0 = left, 1 = right
    * ``cx``, ``cy``, ``r`` float32 (B,): main shape centre and half-size
    * ``color``, ``bg`` float32 (B, 3) in [0, 1]
    * ``dx``, ``dy``, ``dr`` float32 (B, 4), ``dcolor`` float32 (B, 4, 3),
      ``dmask`` bool (B, 4): distractor discs (slots beyond the count are off)
    * ``noise_key`` int64 (B,): seeds the per-pixel noise
    """
    indices = indices.to(torch.int64)
    keys = _scene_keys(seed, split_id, indices)
    streams = torch.arange(_N_STREAMS, dtype=torch.int64) * _GOLDEN
    u = _uniform(_mix(keys[:, None] + streams))  # (B, streams)

    label = (u[:, _S_LABEL] * len(CLASSES)).to(torch.int64).clamp_(max=len(CLASSES) - 1)
    shape, half = label // 2, label % 2
    r = R_MIN + (R_MAX - R_MIN) * u[:, _S_R]
    lo = MARGIN + r
    x_left = lo + (0.5 - MARGIN - r - lo) * u[:, _S_CX]  # symmetric about 0.25
    cx = torch.where(half == 1, 1.0 - x_left, x_left)
    cy = lo + (1.0 - MARGIN - r - lo) * u[:, _S_CY]

    color = u[:, _S_COLOR : _S_COLOR + 3]
    if shape_colors:
        color = SHAPE_COLORS[shape] + SHAPE_COLOR_JITTER * (2 * color - 1)
    bg_off = BG_MIN_DIFF + (1.0 - 2 * BG_MIN_DIFF) * u[:, _S_BG : _S_BG + 3]
    bg = torch.remainder(color + bg_off, 1.0)

    dx, dy, dr, dcolor, dmask = _distractors(u, color)
    z = _zoom_factor(u, zoom, cx, cy, r)
    cx, cy, r = 0.5 + z * (cx - 0.5), 0.5 + z * (cy - 0.5), z * r
    dx, dy, dr = 0.5 + z[:, None] * (dx - 0.5), 0.5 + z[:, None] * (dy - 0.5), z[:, None] * dr

    return {
        "index": indices.clone(),
        "label": label,
        "shape": shape,
        "half": half,
        "cx": cx,
        "cy": cy,
        "r": r,
        "color": color,
        "bg": bg,
        "dx": dx,
        "dy": dy,
        "dr": dr,
        "dcolor": dcolor,
        "dmask": dmask,
        "zoom": z,
        "noise_key": _mix(keys + _wrap(_S_NOISE * _GOLDEN)),
    }


def mirror_scene_params(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The scenes mirrored about the vertical midline (x -> 1 - x): left/right labels swap.

    Rendering the mirrored scene without noise equals ``torch.flip(render, dims=[-1])``.
    """
    out = dict(params)
    out["cx"] = 1.0 - params["cx"]
    out["dx"] = 1.0 - params["dx"]
    out["half"] = 1 - params["half"]
    out["label"] = 2 * params["shape"] + out["half"]
    return out


# ---------------------------------------------------------------------------
# Rendering.

_SQRT3 = math.sqrt(3.0)


def _sdf_main(kind: int, qx: Tensor, qy: Tensor, r: Tensor) -> Tensor:
    """SDF of main shape ``kind`` in local coordinates (x right, y *down*), half-size ``r``.

    ``qx`` is (n, 1, S), ``qy`` (n, S, 1), ``r`` (n, 1, 1); returns (n, S, S).
    Every shape fits in the box ``[-r, r]^2`` and is symmetric in ``qx``.
    """
    if kind == 0:  # disc
        return torch.sqrt(qx * qx + qy * qy) - r
    if kind == 1:  # square, half-side 0.8 r
        return _sdf_box(qx.abs(), qy.abs(), 0.8 * r, 0.8 * r)
    if kind == 2:  # equilateral triangle pointing up, half-side r, box-centred
        px = qx.abs() - r
        py = -qy + r * (0.5 / _SQRT3 + 1.0 / _SQRT3)  # y up, centroid-based frame
        px, py = torch.broadcast_tensors(px, py)
        fold = px + _SQRT3 * py > 0
        px, py = (
            torch.where(fold, 0.5 * (px - _SQRT3 * py), px),
            torch.where(fold, 0.5 * (-_SQRT3 * px - py), py),
        )
        px = px - torch.minimum(torch.maximum(px, -2.0 * r), torch.zeros_like(px))
        return -torch.sqrt(px * px + py * py) * torch.sign(py)
    if kind == 3:  # plus: union of two bars, half-length r, half-width 0.3 r
        ax, ay = qx.abs(), qy.abs()
        return torch.minimum(_sdf_box(ax, ay, r, 0.3 * r), _sdf_box(ax, ay, 0.3 * r, r))
    if kind == 4:  # ring: outer radius r, inner radius 0.5 r
        return (torch.sqrt(qx * qx + qy * qy) - 0.75 * r).abs() - 0.25 * r
    raise ValueError(f"unknown shape kind {kind}")


def _sdf_box(ax: Tensor, ay: Tensor, hx: Tensor, hy: Tensor) -> Tensor:
    """Exact SDF of an axis-aligned box with half-sizes (hx, hy), given |x|, |y|."""
    dx, dy = ax - hx, ay - hy
    outside = torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2)
    return outside + torch.maximum(dx, dy).clamp(max=0)


def render_scene_params(params: dict[str, Tensor], size: int, noise: float = 0.0) -> Tensor:
    """Render scenes (see :func:`make_scene_params`) at ``size x size``: uint8 (B, 3, size, size).

    ``noise`` is the amplitude of uniform i.i.d. pixel noise in [0, 1] intensity
    units, drawn deterministically from ``params["noise_key"]`` and ``size``.
    """
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, got {size}")
    b = params["cx"].shape[0]
    s = int(size)
    inv_px = float(s)  # 1 / pixel size
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    gx = coords.view(1, 1, s)
    gy = coords.view(1, s, 1)

    img = params["bg"].to(torch.float32).view(b, 3, 1, 1).expand(b, 3, s, s).clone()

    # Distractors, behind the main shape.
    for k in range(params["dx"].shape[1]):
        on = params["dmask"][:, k]
        if not bool(on.any()):
            continue
        ddx = gx - params["dx"][:, k].view(b, 1, 1)
        ddy = gy - params["dy"][:, k].view(b, 1, 1)
        sdf = torch.sqrt(ddx * ddx + ddy * ddy) - params["dr"][:, k].view(b, 1, 1)
        cov = (0.5 - sdf * inv_px).clamp_(0.0, 1.0) * on.view(b, 1, 1).to(torch.float32)
        col = params["dcolor"][:, k].view(b, 3, 1, 1)
        img += (col - img) * cov.unsqueeze(1)

    # Main shape, grouped by kind.
    sdf = torch.empty(b, s, s, dtype=torch.float32)
    for kind in range(len(SHAPES)):
        rows = (params["shape"] == kind).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        qx = gx - params["cx"][rows].view(-1, 1, 1)
        qy = gy - params["cy"][rows].view(-1, 1, 1)
        d = _sdf_main(kind, qx, qy, params["r"][rows].view(-1, 1, 1))
        sdf[rows] = d.expand(rows.numel(), s, s)
    cov = (0.5 - sdf * inv_px).clamp_(0.0, 1.0).unsqueeze(1)
    img += (params["color"].view(b, 3, 1, 1) - img) * cov

    if noise > 0:
        key = _mix(params["noise_key"] + _wrap(s * _GOLDEN))  # resolution-specific
        pix = torch.arange(s * s, dtype=torch.int64) * _GOLDEN
        h = _mix(key[:, None] + pix[None, :])  # (B, S*S), 16 bits per channel
        chans = [((h >> (16 + 16 * c)) & 0xFFFF).to(torch.float32) for c in range(3)]
        u = torch.stack(chans, dim=1).view(b, 3, s, s) * (2.0 / 65535.0) - 1.0
        img += noise * u

    return (img * 255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


# ---------------------------------------------------------------------------
# The data source.


class SyntheticShapes:
    """Procedural shapes-and-position dataset (see the module docstring).

    ``seed`` selects the dataset; ``train_size`` / ``val_size`` are the split
    lengths; ``noise`` is the pixel-noise amplitude (0 disables it);
    ``train_zoom`` is the range of the training scenes' zoom about the centre
    (``(1, 1)``: none; the ``val`` split is never zoomed); ``shape_colors``
    gives each shape kind its own colour (see :func:`make_scene_params`), which
    makes the shape visible in every patch of it, so models with little
    inductive bias learn it in a few hundred steps (``cpvt demo``).

    Attributes:
        position_free_ceiling: the best accuracy reachable without position
            information (0.5). The label's left/right half is recoverable only
            from absolute position: the right-half scenes are the exact mirror
            image in distribution of the left-half ones, all shapes are
            mirror-symmetric and background, distractors and noise carry no
            position cue, so a bag-of-patches model can identify the shape but
            must guess the half.
    """

    name = "synthetic"
    position_free_ceiling = 0.5
    splits = ("train", "val")

    def __init__(self, seed: int = 0, train_size: int = 20000, val_size: int = 2000, noise: float = 0.05,
                 train_zoom: tuple[float, float] = (1.0, 2.0), shape_colors: bool = False):
        if train_size < 0 or val_size < 0:
            raise ValueError("split sizes must be non-negative")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.seed = int(seed)
        self.noise = float(noise)
        self.sizes = {"train": int(train_size), "val": int(val_size)}
        self.classes: list[str] = list(CLASSES)
        self.zoom = {"train": tuple(float(z) for z in train_zoom), "val": (1.0, 1.0)}
        self.shape_colors = bool(shape_colors)
        make_scene_params(0, 0, torch.zeros(1, dtype=torch.int64), self.zoom["train"])  # checks the range

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(seed={self.seed}, train_size={self.sizes['train']}, "
            f"val_size={self.sizes['val']}, noise={self.noise}, train_zoom={self.zoom['train']}, "
            f"shape_colors={self.shape_colors})"
        )

    def _check(self, split: str, indices) -> Tensor:
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r} for dataset 'synthetic'; choose one of {self.splits}")
        idx = _as_indices(indices)
        n = self.sizes[split]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"indices out of range for split {split!r} of {n} scenes")
        return idx

    def scenes(self, split: str, indices) -> dict[str, Tensor]:
        """Continuous scene parameters of ``indices`` (see :func:`make_scene_params`)."""
        idx = self._check(split, indices)
        return make_scene_params(self.seed, _SPLIT_IDS[split], idx, self.zoom[split], self.shape_colors)

    def labels(self, split: str, indices) -> Tensor:
        """int64 (B,) labels of ``indices``."""
        return self.scenes(split, indices)["label"]

    def render(self, split: str, indices, size: int) -> Tensor:
        """uint8 (B, 3, size, size) images of ``indices`` rendered at ``size``."""
        size = _check_size(size)
        idx = self._check(split, indices)
        out = torch.empty(idx.numel(), 3, size, size, dtype=torch.uint8)
        step = _chunk_rows(size)
        for start in range(0, idx.numel(), step):
            part = idx[start : start + step]
            params = make_scene_params(self.seed, _SPLIT_IDS[split], part, self.zoom[split], self.shape_colors)
            out[start : start + part.numel()] = render_scene_params(params, size, self.noise)
        return out

    def split(
        self, name: str, size: int, mode: str = "train", crop_pct: float = 0.875, limit: int | None = None
    ) -> Split:
        """The whole split ``name`` rendered at ``size``.

        ``mode`` and ``crop_pct`` are accepted for interface compatibility and
        ignored: synthetic scenes are rendered natively at the requested
        resolution and always show the full scene, since cropping would remove
        (or shift) the absolute-position cue the labels depend on.

        ``limit`` keeps only the first ``limit`` scenes. Scenes are i.i.d. draws
        keyed by (seed, split, index), so this subset is already a fixed, seeded
        random sample with every class represented (in expectation uniformly).
        """
        size = _check_size(size)
        if name not in self.sizes:
            raise ValueError(f"unknown split {name!r} for dataset 'synthetic'; choose one of {self.splits}")
        n = self.sizes[name]
        if limit is not None:
            if isinstance(limit, bool) or int(limit) != limit or limit < 1:
                raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
            n = min(n, int(limit))
        images = torch.empty(n, 3, size, size, dtype=torch.uint8)
        labels = torch.empty(n, dtype=torch.int64)
        step = _chunk_rows(size)
        for start in range(0, n, step):
            idx = torch.arange(start, min(start + step, n), dtype=torch.int64)
            params = make_scene_params(self.seed, _SPLIT_IDS[name], idx, self.zoom[name], self.shape_colors)
            images[start : start + idx.numel()] = render_scene_params(params, size, self.noise)
            labels[start : start + idx.numel()] = params["label"]
        return Split(images=images, labels=labels, classes=list(self.classes), name=name)


def _chunk_rows(size: int) -> int:
    return max(1, min(CHUNK, CHUNK_PIXELS // (size * size)))


def _check_size(size) -> int:
    if isinstance(size, bool) or int(size) != size:
        raise ValueError(f"size must be an integer, got {size!r}")
    size = int(size)
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    return size
