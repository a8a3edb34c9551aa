"""The ``cpvt`` command line: a thin layer over the library.

    cpvt models [PATTERN]                 list registered models
    cpvt encodings                        list position encodings and their options
    cpvt info MODEL [--img-size N] [--json] [--set model.key=value ...]
    cpvt train --model M --data D [...]   train (see `cpvt train -h`)
    cpvt eval RUN [RUN ...] --img-sizes 32,48,64 [--json F] [--plot F] [--frames F] [--windows W] [--split S]
    cpvt demo                             train 3 micro models and test them at 1x-3x
    cpvt convert WEIGHTS OUT --model M    timm Twins / official or HF CvT weights -> a cpvt checkpoint
    cpvt analyze KIND MODEL_OR_RUN ...    position information inside models
    cpvt export RUN_OR_MODEL [--format onnx|pt2|hub] [--compile] [--out F]   dynamic batch/height/width, verified
                                          (hub: a Hugging Face Hub layout folder, config.json + model.safetensors)
    cpvt predict RUN IMAGE_OR_FOLDER ... [--img-size S] [--topk K] [--json F] [--onnx F] [--out DIR]

Every command that builds or loads a model takes overrides one way: ``--set
KEY=VALUE`` (repeatable), with ``model.KEY`` for a model option; values are
Python literals (``[0, 1]``, ``True``, ``5e-4``) or else strings. ``train``'s
flags such as ``--epochs`` are short spellings of config keys, listed in one
table (:data:`TRAIN_FLAGS`, printed by ``cpvt train -h``).

Sizes are written one way everywhere: ``N`` or ``HxW`` (lists comma-separated,
``224,384,256x320``). Commands whose pipeline is square (classification training,
evaluation and prediction, analysis) say so when given ``HxW`` with H != W;
``cpvt eval`` and ``cpvt predict`` of a segmentation run take ``HxW`` (a
segmentation run trains at ``--set img_size=[H,W]``, its recipe's or its mask
folder's frame size). ``cpvt eval`` of a segmentation run also takes
``--frames native|HxW`` (decode test frames at that size: the Scale protocol
resizes them to each ``--img-sizes`` size), ``--windows HxW,...,none``
(sliding-window inference: the Canvas protocol) and ``--split``.

Exit codes are the named constants of :mod:`cpvt.utils.errors` (``EXIT_*``):
0 done; 1 nothing to do or an unexpected error; 2 bad input; 3 training
diverged; 4 run folder in use; 74 a checkpoint could not be written (the
previous one is kept); 75 training stopped by SIGTERM / SIGINT after writing
its checkpoint (``--resume`` continues).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from .data.base import printable
from .models import create_model, list_models
from .models.info import count_params, model_info
from .pos import ENCODINGS, encoding_options
from .study.analyze import ANALYSES
from .train.allocator import keep_freed_memory
from .train.config import RECIPES, model_options, parse_set
from .utils.errors import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_LOCKED,
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_WRITE_FAILED,
    CheckpointWriteError,
    RunLocked,
    TrainingDiverged,
    TrainingStopped,
)
from .utils.table import format_table
from .utils.version import __version__


def parse_size(text: str) -> int | tuple[int, int]:
    """``"224"`` -> 224, ``"384x256"`` -> (384, 256) (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}") from None
    if any(p < 1 for p in parts):
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}")


def square_size(text: str) -> int:
    """An argparse type for a command whose pipeline is square: ``N`` or ``NxN`` (``HxW`` with H != W is refused
    with a message that says so)."""
    size = parse_size(text)
    if isinstance(size, tuple):
        if size[0] != size[1]:
            raise argparse.ArgumentTypeError(f"this command takes square sizes (N or NxN), got {text!r}")
        size = size[0]
    return size


def square_size_list(text: str) -> list[int]:
    """``"96,128,160x160"`` -> [96, 128, 160]: comma-separated square sizes."""
    sizes = [square_size(t.strip()) for t in text.split(",") if t.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 96,128,160, got {text!r}")
    return sizes


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (sizes, counts, epochs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (tolerances)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_override(text: str) -> tuple[str, Any]:
    try:
        return parse_set(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_set(parser: argparse.ArgumentParser, metavar: str, help: str) -> None:
    """The one ``--set`` option every command shares (see the module docstring)."""
    parser.add_argument("--set", type=parse_override, action="append", metavar=metavar, help=f"{help}; repeatable")


def cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return EXIT_NOTHING
    rows = []
    with torch.device("meta"):  # count parameters without allocating or initialising
        for name in names:
            m = create_model(name)
            c = count_params(m)
            rows.append([name, m.model_args["pos"], m.global_pool, f"{m.img_size[0]}/{m.patch_size}", c["params"], c["pos_params"]])
    print(format_table(rows, ["model", "pos", "pool", "img/patch", "params", "pos params"]))
    return EXIT_OK


def cmd_encodings(args: argparse.Namespace) -> int:
    rows = []
    for name, cls in ENCODINGS.items():
        opts = ", ".join(f"{k}={v!r}" for k, v in encoding_options(name).items()) or "-"
        rows.append([name, cls.slot, opts])
    print(format_table(rows, ["encoding", "hook slot", "options (override with --set or create_model)"]))
    print("\nCombine with '+', e.g. pos='ape+peg'.")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    model = create_model(args.model, **model_options(args.set, "info"))
    info = model_info(model, args.img_size)
    if args.json:
        info["model_args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in model.model_args.items()}
        print(json.dumps(info, indent=2))
        return EXIT_OK
    rows = [
        ["model", info["model"]],
        ["position encoding", info["pos"]],
        ["input", "x".join(map(str, info["img_size"]))],
        ["token grid", f"{info['grid'][0]}x{info['grid'][1]} (+{model.num_prefix} prefix) = {info['tokens']} tokens"],
        ["parameters", f"{info['params']:,}"],
        ["  position encoding", f"{info['pos_params']:,}"],
        ["  trainable", f"{info['trainable']:,}"],
        ["FLOPs", f"{info['gflops']:.3f} G ({info['gmacs']:.3f} G multiply-adds, attention included)"],
    ]
    print(format_table(rows, ["", args.model]))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .train.config import folder_defaults, resolve_config
    from .train.engine import train

    from .train.config import mask_folder_defaults
    from .data.named import is_mask_folder

    flags = {key: getattr(args, key) for key, _ in TRAIN_FLAGS.values()}
    recipe, picked, notes = args.recipe or _default_recipe(args.data), {}, []
    if args.recipe is None and _is_folder(args.data):  # fit the recipe to the images (each choice printed)
        defaults = mask_folder_defaults if is_mask_folder(args.data) else folder_defaults
        recipe, picked, notes = defaults(args.data, flags, args.set)
    for note in notes:
        print(f"note: {printable(note)}", flush=True)
    cfg = resolve_config(recipe, {**picked, **{k: v for k, v in flags.items() if v is not None}}, args.set)
    train(cfg, resume=args.resume)
    return EXIT_OK


def _default_recipe(data: str | None) -> str:
    """The recipe that fits a named dataset: cifar10, imagenette, synthetic, camvid (segmentation); DeiT's
    otherwise (a folder's is picked from its images by :func:`cpvt.train.config.folder_defaults`, a mask
    folder's by :func:`cpvt.train.config.mask_folder_defaults`)."""
    return data if data in ("cifar10", "imagenette", "synthetic", "camvid") else "deit"


def _is_folder(data: str | None) -> bool:
    """Whether ``--data`` names a folder (images by class, or frames with label maps: images/ and masks/)
    rather than a built-in dataset (as ``open_source`` reads it)."""
    from .data.named import NAMED, SEGMENTATION

    return data is not None and data != "synthetic" and data not in NAMED and data not in SEGMENTATION


def eval_frames(text: str) -> str | tuple[int, int]:
    """``cpvt eval --frames``: ``native`` or ``HxW`` (``N`` meaning ``NxN``)."""
    if text.strip().lower() == "native":
        return "native"
    size = parse_size(text.strip())
    return (size, size) if isinstance(size, int) else size


def eval_windows(text: str) -> list[tuple[int, int] | None]:
    """``cpvt eval --window(s)``: comma-separated ``HxW`` windows, ``none`` for the whole frame
    (``"120x160,240x320,none"`` -> [(120, 160), (240, 320), None])."""
    out: list[tuple[int, int] | None] = []
    for t in (t.strip() for t in text.split(",")):
        if not t:
            continue
        if t.lower() in ("none", "full"):
            out.append(None)
        else:
            size = parse_size(t)
            out.append((size, size) if isinstance(size, int) else size)
    if not out:
        raise argparse.ArgumentTypeError(f"expected windows like 120x160,240x320,none; got {text!r}")
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"a window is listed twice in {text!r}")
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate_runs, plot_results, results_table, write_json

    overrides = model_options(args.set, "eval")
    results = evaluate_runs(args.runs, data=args.data, img_sizes=args.img_sizes, crop_pct=args.crop_pct,
                            batch_size=args.batch_size, device=args.device, data_root=args.data_root,
                            cache_dir=args.cache_dir, limit=args.limit, model_overrides=overrides, compile=args.compile,
                            split=args.split, frames=args.frames, windows=args.windows)
    print(results_table(results))
    for r in results:
        if "compile" in r:
            first = next(iter(r["sizes"]))
            print(f"{r['run']}: compiled {r['compile']['graphs']} graph(s) for {len(r['sizes'])} size(s); "
                  f"the first size took {r['sizes'][first]['seconds']:.1f} s, compilation included")
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot_results(results, args.plot)}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .study.demo import run_demo

    run_demo(args.out, fresh=args.fresh, sets=args.set)
    return EXIT_OK


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .study.reproduce import reproduce

    reproduce(args.tables, budget=args.budget, seeds=args.seeds, out=args.out, experiments=args.experiments,
              data_root=args.data_root, cache_dir=args.cache_dir, rows=args.rows, compile=args.compile,
              data=args.data, sets=args.set)
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace) -> int:
    from .study.analyze import analyze

    analyze(args.kind, args.models, data=args.data, out=args.out, images=args.images, img_size=args.img_size,
            seed=args.seed, offsets=args.offsets, shift_mode=args.shift_mode, blocks=args.blocks,
            data_root=args.data_root, cache_dir=args.cache_dir, overrides=model_options(args.set, "analyze"),
            sizes=args.img_sizes)
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, save_checkpoint
    from .deploy.convert import detect_format, load_converted

    source = load_checkpoint(args.weights)
    fmt = args.format or detect_format(source.weights)
    model = load_converted(args.model, source.weights, fmt, **model_options(args.set, "convert"))
    classes = [str(i) for i in range(model.num_classes)]
    save_checkpoint(args.out, model, config={"model": args.model, "img_size": model.img_size[0], "converted_from": fmt},
                    classes=classes)
    print(f"{args.weights} ({fmt}) -> {args.out}: {args.model}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, loaded strictly")
    return EXIT_OK


def deploy_options(sets, command: str) -> dict:
    """``predict`` and ``export`` run a trained model at the sizes it is given, so they default to
    ``fixed_grid="auto"``: each encoding's measured best test-time fix (docs/dense.md, "Which fix"), the
    identity at the training size. Any ``fixed_grid`` or ``*_fixed_grid`` option given wins; ``off`` runs the
    model as trained."""
    options = model_options(sets, command)
    if not any(key == "fixed_grid" or key.endswith("_fixed_grid") for key in options):
        options["fixed_grid"] = "auto"
    return options


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export

    sizes = [s if isinstance(s, tuple) else (s, s) for s in (args.verify_sizes or [])]
    report = export(args.run_or_model, out=args.out, format=args.format, opset=args.opset, img_size=args.img_size,
                    sizes=sizes, tol=args.tol, overrides=deploy_options(args.set, "export"), verify=not args.no_verify,
                    compile=args.compile)
    opset = f", opset {report['opset']}" if report["opset"] else ""
    if report["format"] == "hub":
        print(f"wrote {report['path']}: {report['model']} (pos={report['pos']}), Hugging Face Hub layout "
              f"(config.json + model.safetensors); load it with cpvt.create_model({report['model']!r}, "
              f"pretrained={report['path']!r})")
    else:
        kind = f"{report['format']}{opset}" + (", compiled ahead of time (AOTInductor, frozen weights)"
                                                  if report["compiled"] else "")
        print(f"wrote {report['path']}: {report['model']} (pos={report['pos']}), {kind}, "
              f"dynamic batch, height and width (size {report['export_size']}, traced at {report['trace_size']})")
    if report["verified"]:
        backend = {"onnx": "onnxruntime", "pt2": "aoti_load_package" if report["compiled"] else "torch.export.load",
                   "hub": "reloaded"}[report["format"]]
        rows = [[r["size"], f"{r['max_abs_diff']:.2e}", f"{r['max_abs_logit']:.2f}"] for r in report["verified"]]
        print(format_table(rows, ["size", f"max |{backend} - pytorch|", "max |logit|"]))
        print(f"verified at {len(rows)} sizes: every difference within {report['tolerance']:.0e}")
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from .deploy.predict import format_predictions, predict

    overrides = (model_options if args.onnx else deploy_options)(args.set, "predict")
    preds = predict(args.run, args.inputs, img_size=args.img_size, topk=args.topk, onnx=args.onnx,
                    batch_size=args.batch_size, overrides=overrides, out_dir=args.out, alpha=args.alpha,
                    compile=args.compile, window=args.window)
    print(format_predictions(preds))
    if args.json:
        preds.write_json(args.json)
        print(f"wrote {args.json}")
    return EXIT_OK if preds.results else EXIT_NOTHING


def parse_size_list(text: str) -> list[int | tuple[int, int]]:
    """``"224,384,256x320"`` -> [224, 384, (256, 320)]."""
    return [parse_size(t) for t in text.split(",") if t.strip()]


def int_list(minimum: int):
    """An argparse type: comma-separated whole numbers of at least ``minimum`` (``"1,2,4"`` -> [1, 2, 4])."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            values = []
        if not values or any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of at least {minimum}, "
                                             f"like {minimum},{minimum + 1},{minimum + 3}; got {text!r}")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpvt", description="Position encodings for vision transformers (CPVT).")
    p.add_argument("--version", action="version", version=f"cpvt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    _model_commands(sub)
    _training_commands(sub)
    _tool_commands(sub)
    _deploy_commands(sub)
    return p


def _model_commands(sub) -> None:
    """models, encodings, info: what the registry holds."""
    s = sub.add_parser("models", help="list registered models")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'cpvt_ti*'")
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser("encodings", help="list position encodings and their options")
    s.set_defaults(fn=cmd_encodings)

    s = sub.add_parser("info", help="parameters, FLOPs and token grid of a model")
    s.add_argument("model")
    s.add_argument("--img-size", type=parse_size, default=None, help="N or HxW (default: the model's own)")
    add_set(s, "model.KEY=VALUE", "model option, e.g. model.peg_positions=[0,1]")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(fn=cmd_info)


#: ``cpvt train``'s flags that are short spellings of a config key: ``--epochs 5`` is ``--set epochs=5`` (a
#: ``--set`` of the same key wins). flag -> (config key, argparse options). The one table of such aliases.
TRAIN_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--model": ("model", dict(help="registry name (see `cpvt models`)")),
    "--data": ("data", dict(help="cifar10 | imagenette | synthetic | camvid | path to an ImageNet-layout folder or "
                                 "a mask folder (images/ and masks/: segmentation)")),
    "--img-size": ("img_size", dict(type=square_size, metavar="N", help="square training input; a segmentation "
                                     "run's [height, width]: --set img_size=[H,W]")),
    "--epochs": ("epochs", dict(type=positive_int)),
    "--batch-size": ("batch_size", dict(type=positive_int, help="global batch size (over all processes)")),
    "--out": ("out", dict(help="run folder (config, log, checkpoints, metrics)")),
    "--data-root": ("data_root", dict(help="where named datasets are found (default: $CPVT_DATA_ROOT or ../shared/data)")),
    "--cache-dir": ("cache_dir", dict(help="where archives are extracted and decoded images cached")),
    "--save-every-steps": ("ckpt_every_steps", dict(type=int, metavar="N", help="also write the resumable checkpoint "
                                                   "every N steps within an epoch (default: at epoch ends only)")),
    "--compile": ("compile", dict(action="store_const", const=True, help="torch.compile the model")),
}

TRAIN_EPILOG = "flags that are config keys (each is --set KEY=VALUE):\n" + "\n".join(
    f"  {flag:<20} {key}" for flag, (key, _) in TRAIN_FLAGS.items()) + f"""

stopping and resuming:
  SIGTERM or SIGINT (Ctrl-C) finishes the current step, writes last.safetensors and exits with
  code {EXIT_STOPPED}; the same command with --resume continues exactly. A checkpoint that cannot be
  written (disk full) exits with code {EXIT_WRITE_FAILED} and keeps the previous one.
"""


EVAL_EPILOG = """\
segmentation runs, two resolution protocols (one table column per size and window):
  scale:   cpvt eval RUN --frames native --img-sizes 120x160,240x320,360x480
           frames decoded at their native size, resized whole to each size (real detail at every
           size), logits scored at the decoded resolution (the same pixels for every size)
  canvas:  cpvt eval RUN --frames native --img-sizes 360x480 --windows 120x160,240x320,none
           each frame at 360x480 run as a sliding window of 120x160 crops (1x a 120x160 model's field
           of view), 240x320 (2x) and the whole frame (3x); overlapping logits averaged
  --split test scores the test split (default: val if present, else test); classification runs
  refuse --frames and --window(s).
"""


def _training_commands(sub) -> None:
    """train, eval, demo, reproduce."""
    s = sub.add_parser("train", help="train a model (DeiT recipe by default)", epilog=TRAIN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, (key, options) in TRAIN_FLAGS.items():
        s.add_argument(flag, dest=key, **options)
    s.add_argument("--recipe", help=f"built-in ({', '.join(RECIPES)}) or a .toml path; default: by --data")
    add_set(s, "KEY=VALUE", "config override; model.KEY for a model option")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="top-1 (mIoU for segmentation runs) at several resolutions, no fine-tuning",
                       epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("runs", nargs="+", help="run folders or checkpoint files (several: curves overlaid)")
    s.add_argument("--data", help="dataset (default: the one each run was trained on)")
    s.add_argument("--img-sizes", type=parse_size_list, help="comma-separated, e.g. 96,128,160,224; HxW for "
                   "segmentation runs, e.g. 120x160,240x320 (default: training size)")
    s.add_argument("--crop-pct", type=float, help="eval resize = size / crop_pct (default: the run's, 0.875)")
    s.add_argument("--batch-size", type=positive_int, help="images a forward pass (default: 256; a segmentation "
                   "run's own eval_batch_size)")
    s.add_argument("--device", default="auto")
    s.add_argument("--limit", type=positive_int, help="evaluate a fixed random subset of this many images")
    s.add_argument("--split", choices=("val", "test"), help="the split scored (default: val if the data has one, "
                   "else test)")
    s.add_argument("--frames", type=eval_frames, metavar="native|HxW", help="segmentation: decode (and score) the "
                   "test frames at their native size or at HxW, then resize them to each --img-sizes size "
                   "(default: the run's frame_size)")
    s.add_argument("--window", "--windows", dest="windows", type=eval_windows, metavar="HxW[,HxW,none]",
                   help="segmentation: sliding-window inference with HxW crops; several (comma-separated, none = "
                   "the whole frame) give one column each per size (default: none)")
    s.add_argument("--data-root")
    s.add_argument("--cache-dir")
    s.add_argument("--json", help="write results to this JSON file")
    s.add_argument("--plot", help="write an accuracy-vs-resolution plot (PNG) here (classification runs)")
    s.add_argument("--compile", action="store_true", help="torch.compile each model once for all sizes")
    add_set(s, "model.KEY=VALUE", "rebuild the trained models with this option, e.g. model.peg_fixed_grid=dilate")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("demo", help="train 3 micro models on synthetic shapes, test at 1x-3x, the PEG also with fixed_grid=auto (make demo)")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--fresh", action="store_true", help="retrain instead of reusing finished demo runs")
    add_set(s, "KEY=VALUE", "config override for all three runs; model.KEY for a model option")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("reproduce", help="CPVT's tables (T1-T5) at a budget, beside the paper's numbers")
    s.add_argument("tables", help="T1 | T2 | T3 | T4 | T5 | all, or several comma-separated (T1,T2)")
    s.add_argument("--budget", default="cpu", help="smoke (< 1 min) | cpu (~40 h, 2 cores) | gpu (~25 min, one H200)")
    s.add_argument("--seeds", type=positive_int, help="seeds per row (default: the budget's)")
    s.add_argument("--rows", help="train only these rows, comma-separated file names (peg,ape); the report keeps "
                                  "every finished run")
    s.add_argument("--data", help="train only the runs of these dataset entries of the budget, comma-separated "
                                  "(imagenette,imagenette-patch4); the report keeps every finished run")
    s.add_argument("--out", help="runs and report go here (default: runs/reproduce/<budget>); finished runs are skipped")
    s.add_argument("--experiments", help="row, budget and claim files (default: ./experiments or the repository's)")
    s.add_argument("--compile", action="store_true", help="train and evaluate through torch.compile")
    s.add_argument("--data-root")
    s.add_argument("--cache-dir")
    add_set(s, "KEY=VALUE", "config override for every run (model.KEY for a model option); a run's name hashes "
                            "its settings, so changed runs get records of their own")
    s.set_defaults(fn=cmd_reproduce)


def _tool_commands(sub) -> None:
    """convert, analyze."""
    s = sub.add_parser("convert", help="other projects' weights (timm Twins, official / HF CvT) -> cpvt checkpoint")
    s.add_argument("weights", help="a state dict (.pth/.pt, weights only) or .safetensors file")
    s.add_argument("out", help="the cpvt checkpoint to write (.safetensors)")
    s.add_argument("--model", required=True, help="registry name, e.g. twins_pcpvt_small or cvt_13")
    s.add_argument("--format", help="timm-twins | cvt-official | cvt-hf (default: detected from the keys)")
    add_set(s, "model.KEY=VALUE", "model option, e.g. model.num_classes=10")
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("analyze", help="equivariance, position probe, attention, PEG maps and scale consistency of models or runs")
    s.add_argument("kind", choices=list(ANALYSES), help="; ".join(f"{k}: {a.help}" for k, a in ANALYSES.items()))
    s.add_argument("models", nargs="+", help="registry names (MODEL or MODEL:key=value,...; random weights) or run folders (RUN or RUN:key=value,...)")
    s.add_argument("--data", help="real images from this dataset (default: the runs' own, else synthetic)")
    s.add_argument("--out", help="plots and JSON go here (default: runs/analysis/<kind>)")
    s.add_argument("--images", type=positive_int, default=64, help="number of real images (default 64)")
    s.add_argument("--img-size", type=square_size, help="input size (default: each model's training size)")
    s.add_argument("--seed", type=int, default=0, help="seed for random weights and generated images")
    s.add_argument("--offsets", type=int_list(1), help="equivariance: shifts in px, e.g. 1,2,4,8 (default: sub-patch and 1-3 patches)")
    s.add_argument("--shift-mode", default="canvas", help="equivariance: canvas (padded, nothing cropped) | circular (rolled)")
    s.add_argument("--blocks", type=int_list(0), help="attention: blocks whose query maps are drawn (default: first, middle, last)")
    s.add_argument("--img-sizes", type=square_size_list, help="scale: larger test sizes, e.g. 96,128 (default: twice the model's size)")
    s.add_argument("--data-root")
    s.add_argument("--cache-dir")
    add_set(s, "model.KEY=VALUE", "model option for every model given (MODEL:key=value sets one model's)")
    s.set_defaults(fn=cmd_analyze)


def _deploy_commands(sub) -> None:
    """export, predict."""
    s = sub.add_parser("export", help="ONNX / torch.export file with dynamic batch, height and width, or a Hugging "
                       "Face Hub layout folder; verified")
    s.add_argument("run_or_model", help="a run folder or checkpoint, or a registry name (random weights)")
    s.add_argument("--format", default="onnx", choices=["onnx", "pt2", "hub"], help="onnx (default), pt2 "
                   "(torch.export) or hub (a folder of config.json + model.safetensors, for the Hugging Face Hub)")
    s.add_argument("--out", help="file to write (default: RUN/model.<format>, or <model>.<format>; for hub a folder: "
                   "RUN/hub, or <model>-hub)")
    s.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (default 18; the learned APE needs >= 18)")
    s.add_argument("--img-size", type=square_size, help="size traced at export (default: the model's pretrained_cfg)")
    s.add_argument("--verify-sizes", type=parse_size_list, help="sizes to verify, e.g. 224,384,256x320 "
                   "(default: the export size, 1.5x and a non-square one; at least 3 are checked)")
    s.add_argument("--tol", type=positive_float, default=1e-4, help="max |logit difference| allowed (default 1e-4)")
    s.add_argument("--no-verify", action="store_true", help="write the file without checking it")
    s.add_argument("--compile", action="store_true", help="pt2 only: compile ahead of time with AOTInductor, weights "
                   "frozen and pre-packed (needs a C++ compiler; load with torch._inductor.aoti_load_package)")
    add_set(s, "model.KEY=VALUE", "model option: a registry model's (model.num_classes=10) or a run's test-time "
            "fix (default model.fixed_grid=auto; model.fixed_grid=off exports the model as trained)")
    s.add_argument("--json", help="write the export report (sizes and differences) here")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("predict", help="classify or segment images with a trained run (PyTorch or an exported ONNX "
                       "file)")
    s.add_argument("run", help="run folder or checkpoint file (gives the classes and preprocessing)")
    s.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders (searched recursively)")
    s.add_argument("--img-size", type=parse_size, help="input size (default: the run's training size); N for a "
                   "classification run, N or HxW for a segmentation run (each image is resized whole to it)")
    s.add_argument("--topk", type=positive_int, default=5, help="classes shown per image (default 5; a segmentation "
                   "run lists its 3 most frequent classes at most)")
    s.add_argument("--out", help="segmentation run (required): folder for NAME.png (class index per pixel, at the "
                   "image's size) and NAME.overlay.png")
    s.add_argument("--alpha", type=float, default=0.5, help="segmentation: palette weight in the overlays (default 0.5)")
    s.add_argument("--window", type=parse_size, metavar="HxW", help="segmentation: run each frame (at --img-size) as a "
                   "sliding window of HxW crops, overlapping logits averaged: for a model trained on crops of larger "
                   "frames (the Canvas protocol; best at its training crop)")
    s.add_argument("--json", help="write predictions and skipped files here")
    s.add_argument("--onnx", help="run this exported file with onnxruntime instead of PyTorch")
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument("--compile", action="store_true", help="torch.compile the model, frozen for inference (weights "
                   "folded in and pre-packed), one graph for every size")
    add_set(s, "model.KEY=VALUE", "rebuild the trained model with this option (default model.fixed_grid=auto, "
            "each encoding's measured best test-time fix; model.fixed_grid=off runs it as trained)")
    s.set_defaults(fn=cmd_predict)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # large activations stay mapped between steps (cpvt.train.allocator; CPVT_MALLOC=default: off)
    try:
        return args.fn(args)
    except ValueError as e:  # bad user input (DataError, CheckpointError too): one clear line
        print(f"cpvt: error: {printable(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as e:
        print(f"cpvt: training stopped: {printable(e)}", file=sys.stderr)
        return EXIT_DIVERGED
    except RunLocked as e:
        print(f"cpvt: error: {printable(e)}", file=sys.stderr)
        return EXIT_LOCKED
    except CheckpointWriteError as e:
        print(f"cpvt: error: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except TrainingStopped as e:
        print(f"cpvt: {e}", file=sys.stderr)
        return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
