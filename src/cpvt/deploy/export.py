"""Export a model or trained run with dynamic batch, height and width, and verify the file.

    cpvt export runs/c10-cpvt                          # -> runs/c10-cpvt/model.onnx, verified at 3 sizes
    cpvt export cpvt_ti --format pt2 --out cpvt_ti.pt2 # torch.export program (random weights)
    cpvt export runs/c10-cpvt --format hub --out hub/c10-cpvt   # Hugging Face Hub layout folder

The PEG's practical promise is one exported model that serves every input size,
so both formats keep the batch, height and width symbolic:

* ``onnx``: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based
  exporter), one self-contained file, opset 18 by default (ONNX ``Resize`` gained
  its ``antialias`` attribute, which the learned APE's resampling needs, in opset
  18). The file's metadata holds the model name, class names and preprocessing.
* ``pt2``: ``torch.export.save`` of the same ``ExportedProgram``; load it with
  ``torch.export.load(path).module()``. With ``compile=True`` (``cpvt export --format pt2 --compile``) the
  program is compiled ahead of time by AOTInductor with inductor's ``freezing`` (weights folded into the
  compiled code and pre-packed, as ``cpvt eval --compile`` runs them) into a .pt2 package, still dynamic in
  batch, height and width; it needs a C++ compiler at export time, and loads with
  ``torch._inductor.aoti_load_package(path)`` (:func:`load_pt2` takes either kind).
* ``hub``: no tracing; a folder in the Hugging Face Hub layout, ``config.json``
  (model name, options, ``pretrained_cfg``, class names) and ``model.safetensors``
  (:func:`cpvt.models.hub.save_pretrained`); load it with
  ``cpvt.create_model(name, pretrained=folder)`` or ``cpvt.load_run(folder)``,
  which is also how it is verified.

After writing, :func:`verify_export` runs the file (onnxruntime, or the loaded
program) at three or more sizes, including non-square ones never used at export,
on a batch size other than the export one, and compares the logits with eager
PyTorch; a max |difference| over the tolerance is an :class:`ExportError`.

The model's input is the normalised image batch (B, 3, H, W), H and W multiples
of the patch size (total stride for a pyramid); decoding, resizing and
normalisation stay outside (``cpvt predict`` does them, from the run's config).
"""

from __future__ import annotations

import json
import re
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMATS = ("onnx", "pt2", "hub")
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4


class ExportError(ValueError):
    """A model that cannot be exported, or whose exported file disagrees with PyTorch."""


# -- what to export -----------------------------------------------------------------------------------------------
def load_subject(run_or_model: str, overrides: dict[str, Any] | None = None,
                 img_size: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A trained run (folder or checkpoint) or a registry name (random weights, seed 0), in eval mode,
    and the metadata to store with the export (model, classes, preprocessing). ``overrides``: model options,
    for a run the test-time ones (``fixed_grid="auto"``); one that changes the weights' shapes is a
    :class:`~cpvt.checkpoint.CheckpointError` naming them."""
    from ..models import create_model, list_models

    if Path(run_or_model).exists():
        from .predict import load_run

        # test-time options (model.fixed_grid=auto, model.peg_fixed_grid=dilate), as eval and predict take them
        model, pre, classes = load_run(run_or_model, img_size, **(overrides or {}))
        meta = {"source": str(run_or_model), "img_size": pre.img_size, "classes": classes}
    elif run_or_model in list_models():
        torch.manual_seed(0)
        model = create_model(run_or_model, **(overrides or {})).eval()
        meta = {"source": f"registry model {run_or_model} (random weights)",
                "img_size": img_size or model.pretrained_cfg["input_size"][1],
                "classes": [str(i) for i in range(model.num_classes)]}
    else:
        raise ValueError(f"{run_or_model!r} is neither a run folder / checkpoint file nor a registry model "
                         "(see `cpvt models`)")
    pre = model.pretrained_cfg  # preprocessing, from the model itself (a run's own or the registry default)
    fixes = {m.name: m.fixed_grid for m in model.modules() if getattr(m, "GRID_FIXES", ())}
    meta.update(model=model.model_name, pos=model.model_args.get("pos"), patch_size=model.patch_size, grid_fixes=fixes,
                crop_pct=pre["crop_pct"], mean=pre["mean"], std=pre["std"], pretrained_cfg=pre)
    return model, meta


def default_sizes(model: nn.Module, img_size: int | None = None) -> list[tuple[int, int]]:
    """The export size, 1.5x it, and a non-square size (about 0.75x by 1.25x), all multiples of the stride."""
    p = model.patch_size
    s = img_size or model.img_size[0]
    g = max(1, s // p)

    def side(scale: float) -> int:
        return max(1, round(g * scale)) * p

    sizes = [(s, s), (side(1.5), side(1.5)), (side(0.75), side(1.25))]
    if sizes[2][0] == sizes[2][1]:  # a tiny grid: make it non-square anyway
        sizes[2] = (sizes[2][0], sizes[2][1] + p)
    return sizes


# -- export -------------------------------------------------------------------------------------------------------
def _dynamic_shapes() -> dict[str, dict[int, Any]]:
    dyn = torch.export.Dim.DYNAMIC
    return {"x": {0: dyn, 2: dyn, 3: dyn}}


def blocking_part(error: BaseException) -> str:
    """Where in cpvt an export failure happened (file, line, function), from its traceback or message."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/cpvt/" in f.filename.replace("\\", "/")]
    found = [(f.filename, f.lineno, f.name) for f in frames]
    found += [(m[0], int(m[1]), m[2]) for m in re.findall(r'File "([^"]*/cpvt/[^"]+)", line (\d+), in (\w+)', str(error))]
    found = [f for f in found if not f[0].replace("\\", "/").endswith(("/cpvt/export.py", "/cpvt/cli.py"))]
    if not found:
        return ""
    file, line, name = found[-1]
    short = file.replace("\\", "/").split("/cpvt/", 1)[-1]
    return f"cpvt/{short}:{line} in {name}"


def trace_size(model: nn.Module, img_size: int | None = None) -> int:
    """The example size traced: twice the export size. ``torch.export`` fixes any size that is 0 or 1 on the
    example (a one-window stage of Twins-SVT at its own size, for instance), so every grid is made large."""
    return 2 * (img_size or model.img_size[0])


def _summary(error: BaseException) -> str:
    """The informative line of an exporter error: torch.onnx's "Exception summary" if it has one."""
    text = str(error).strip()
    m = re.search(r"Exception summary\s*\n\s*\n?(.+)", text)
    line = m.group(1) if m else (text.splitlines()[0] if text else "")
    return f"{type(error).__name__}: {line.strip()}"[:400]


def export_program(model: nn.Module, img_size: int | None = None, batch: int = 2) -> torch.export.ExportedProgram:
    """``torch.export`` the model with symbolic batch, height and width; a failure names the blocking code."""
    s = trace_size(model, img_size)
    model.grid_for(s)
    example = torch.randn(batch, model.in_chans, s, s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model.eval(), (example,), dynamic_shapes=_dynamic_shapes(), strict=False)
    except Exception as e:  # noqa: BLE001 - any tracing failure becomes one clear error
        where = blocking_part(e)
        raise ExportError(f"cannot export {model.model_name} (pos={model.model_args.get('pos')!r}) with dynamic "
                          f"height and width: {_summary(e)}"
                          + (f" [blocking part: {where}]" if where else "")) from e


def export_model(model: nn.Module, path: str | Path, format: str = "onnx", opset: int = DEFAULT_OPSET,
                 img_size: int | None = None, metadata: dict[str, Any] | None = None, compile: bool = False) -> Path:
    """Write ``model`` to ``path`` as ONNX or a ``torch.export`` .pt2 program, batch/height/width dynamic, or as
    a Hugging Face Hub layout folder (``hub``: the class names from ``metadata["classes"]``).

    ``compile`` (pt2 only): an AOTInductor package of the program with frozen, pre-packed weights instead.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if compile and format != "pt2":
        raise ValueError(f"compile applies to --format pt2 (an AOTInductor package), not to {format}: ONNX runs "
                         "through onnxruntime's own optimiser, and a hub folder holds weights only")
    path = Path(path)
    if format == "hub":
        from ..models.hub import save_pretrained

        return save_pretrained(model, path, classes=(metadata or {}).get("classes"))
    path.parent.mkdir(parents=True, exist_ok=True)
    program = export_program(model, img_size)
    if format == "pt2" and compile:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                         inductor_configs={"freezing": True})
        except Exception as e:  # noqa: BLE001 - a missing compiler or a lowering failure: one clear error
            raise ExportError(f"cannot compile {model.model_name} ahead of time with AOTInductor: {_summary(e)} "
                              "[it needs a C++ compiler; without --compile the .pt2 program needs none]") from e
        return path
    if format == "pt2":
        torch.export.save(program, str(path))
        return path
    _require("onnx", "onnxscript")
    if opset < 18 and any(enc.name == "ape" for enc in _encodings(model)):
        raise ExportError(f"{model.model_name}: the learned APE's resampling needs ONNX Resize with antialias, "
                          f"opset 18 or newer (asked for {opset})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, f=None, opset_version=opset, dynamo=True,
                                             input_names=["images"], output_names=["logits"], verbose=False)
    except Exception as e:  # noqa: BLE001
        where = blocking_part(e)
        raise ExportError(f"cannot convert {model.model_name} to ONNX opset {opset}: {_summary(e)}"
                          + (f" [blocking part: {where}]" if where else "")) from e
    if metadata:
        onnx_program.model.metadata_props.update({f"cpvt.{k}": json.dumps(v) for k, v in metadata.items()})
    onnx_program.save(str(path), external_data=False)
    written = onnx_opset(path)
    if written != opset:  # torch.onnx converts below its own minimum (18) and keeps 18 if that fails
        raise ExportError(f"{model.model_name}: asked for ONNX opset {opset}, but the exporter could only write "
                          f"opset {written} ({path} is left as written)")
    return path


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def _encodings(model: nn.Module) -> list[nn.Module]:
    from ..pos import PositionEncoding

    return [m for m in model.modules() if isinstance(m, PositionEncoding)]


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install 'cpvt[onnx]'")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``cpvt.*`` metadata an ONNX file exported here carries (model, classes, preprocessing)."""
    _require("onnx")
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key[5:]: json.loads(p.value) for p in m.metadata_props if p.key.startswith("cpvt.")}


def is_compiled_pt2(path: str | Path) -> bool:
    """Whether a .pt2 file is an AOTInductor package (``export --compile``) rather than a saved program."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        return any("/data/aotinductor/" in name for name in z.namelist())


def load_pt2(path: str | Path):
    """A callable for a .pt2 file written here: an AOTInductor package (compiled, frozen weights) or a saved
    ``torch.export`` program (run as an eager module)."""
    if is_compiled_pt2(path):
        return torch._inductor.aoti_load_package(str(path))
    return torch.export.load(str(path)).module()


# -- verification -------------------------------------------------------------------------------------------------
def _runner(path: Path, format: str):
    if format == "hub":  # the folder read back through create_model's pretrained= path
        from ..models import model_from_checkpoint

        module = model_from_checkpoint(path).eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)
        return run
    if format == "pt2":
        module = load_pt2(path)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)
        return run
    from .predict import onnx_runner

    run = onnx_runner(path)
    return lambda x: torch.from_numpy(run(x.numpy()))


def verify_export(model: nn.Module, path: str | Path, sizes: list[tuple[int, int]], format: str = "onnx",
                  tol: float = DEFAULT_TOLERANCE, batch: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Run the exported file at every size on random inputs and compare with eager PyTorch.

    Returns one row per size (``size``, ``max_abs_diff``, ``max_abs_logit``); raises
    :class:`ExportError` naming the sizes where the difference exceeds ``tol`` or the run fails.
    """
    if len(sizes) < 1:
        raise ValueError("verify at least one size")
    for s in sizes:
        model.grid_for(s)
    run = _runner(Path(path), format)
    gen = torch.Generator().manual_seed(seed)
    rows, bad = [], []
    for h, w in sizes:
        x = torch.randn(batch, model.in_chans, h, w, generator=gen)
        with torch.no_grad():
            ref = model.eval()(x).float()
        try:
            out = run(x).float()
        except Exception as e:  # noqa: BLE001 - a runtime failure at one size is a verification failure
            rows.append({"size": f"{h}x{w}", "max_abs_diff": None, "error": str(e).strip().splitlines()[0][:300]})
            bad.append(f"{h}x{w} failed to run ({rows[-1]['error']})")
            continue
        if out.shape != ref.shape:
            diff = float("inf")
        else:
            diff = (out - ref).abs().max().item()
        rows.append({"size": f"{h}x{w}", "max_abs_diff": diff, "max_abs_logit": ref.abs().max().item()})
        if not diff <= tol:
            bad.append(f"{h}x{w}: max |diff| {diff:.2e} > {tol:.0e}")
    if bad:
        hint = ""
        if format == "pt2" and any("Guard failed" in r.get("error", "") or "Runtime assertion" in r.get("error", "")
                                   for r in rows):
            hint = (" [the .pt2 program keeps the shape guards torch.export derived from the traced size (here from "
                    "reshapes whose view-or-copy choice depends on the sizes); the ONNX export has no such guards: "
                    "use --format onnx]")
        raise ExportError(f"{path} disagrees with PyTorch: " + "; ".join(bad) + hint)
    return rows


def export(run_or_model: str, out: str | Path | None = None, format: str = "onnx", opset: int = DEFAULT_OPSET,
           img_size: int | None = None, sizes: list[tuple[int, int]] | None = None, tol: float = DEFAULT_TOLERANCE,
           overrides: dict[str, Any] | None = None, verify: bool = True, compile: bool = False) -> dict[str, Any]:
    """Export a run or registry model and verify it; returns a report (path, sizes and their max |diff|).

    ``compile`` (pt2 only): an AOTInductor package with frozen weights (:func:`export_model`).

    ``out`` defaults to ``RUN/model.<format>`` for a run folder, ``<name>.<format>`` otherwise (for ``hub``, a
    folder: ``RUN/hub``, ``<name>-hub``).
    ``sizes`` default to :func:`default_sizes`; fewer than three are topped up with them.
    """
    model, meta = load_subject(run_or_model, overrides, img_size)
    if out is None:
        src = Path(run_or_model)
        stem = src.stem if src.exists() else run_or_model
        if format == "hub":
            out = src / "hub" if src.is_dir() else Path(f"{stem}-hub")
        else:
            out = src / f"model.{format}" if src.is_dir() else Path(f"{stem}.{format}")
    if compile and format != "pt2":  # before the model is loaded
        raise ValueError(f"--compile applies to --format pt2 (an AOTInductor package), not to {format}")
    sizes = list(sizes or [])
    for s in sizes:  # a size the model cannot take is a clear error before anything is written
        model.grid_for(s)
    for s in default_sizes(model, meta["img_size"]):
        if len(sizes) >= 3:
            break
        if s not in sizes:
            sizes.append(s)
    export_model(model, out, format, opset, meta["img_size"], metadata=meta if format != "pt2" else None,
                 compile=compile)
    report = {"path": str(out), "format": format, "compiled": compile, "model": meta["model"], "pos": meta["pos"],
              "opset": opset if format == "onnx" else None, "export_size": meta["img_size"],
              "trace_size": trace_size(model, meta["img_size"]) if format != "hub" else None, "tolerance": tol,
              "verified": []}
    if verify:
        report["verified"] = verify_export(model, out, sizes, format, tol)
    return report
