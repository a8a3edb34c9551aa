import importlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cpvt

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def built(request):
    """The registry model named by the test's parameter, seeded, for every test of that model in a module.

    Use as ``@pytest.mark.parametrize("built", names, indirect=True)``. The fixture is module-scoped, so pytest
    runs all of one model's tests together and drops the model when the next one is built: at most one registry
    model is alive at a time (caching all of them took about 11 GB in fp32). Tests must not keep state on it.
    """
    torch.manual_seed(0)
    return cpvt.create_model(request.param)


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module, so tests can call its functions."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_sizes(model) -> list[tuple[int, int]]:
    """Two square inputs and a non-square one, small enough to keep the suite fast."""
    p = model.patch_size
    return [(4 * p, 4 * p), (6 * p, 6 * p), (3 * p, 5 * p)]


def need(module: str, reason: str):
    """``pytest.importorskip``, except that a module listed in ``CPVT_REQUIRE`` (comma-separated, set by
    ``make test-timm`` / ``make test-hf``) must be there: its absence fails the test instead of skipping it."""
    required = {m.strip() for m in os.environ.get("CPVT_REQUIRE", "").split(",") if m.strip()}
    if module not in required:
        return pytest.importorskip(module, reason=reason)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        error = e
    pytest.fail(f"CPVT_REQUIRE={os.environ['CPVT_REQUIRE']} but {module} cannot be imported: {error}", pytrace=False)


def need_onnx() -> None:
    """The optional ONNX extra, each module through :func:`need` (``CPVT_REQUIRE=onnx,onnxscript,onnxruntime``
    turns its absence from a skip into a failure)."""
    need("onnx", reason="ONNX export needs the optional extra: pip install 'cpvt[onnx]'")
    need("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript: pip install 'cpvt[onnx]'")
    need("onnxruntime", reason="verifying an ONNX file needs onnxruntime: pip install 'cpvt[onnx]'")


def assert_export_matches(model, path, sizes, format: str = "onnx", tol: float = 1e-4, **export_options) -> list[dict]:
    """Export ``model`` to ``path`` (ONNX or a torch.export ``pt2`` program, dynamic batch, height and width) and
    run the file at every size against eager PyTorch: every size within ``tol``. Returns :func:`verify_export`'s
    rows; an ONNX check skips (or fails, see :func:`need_onnx`) without the ONNX extra."""
    from cpvt.deploy.export import export_model, verify_export

    if format == "onnx":
        need_onnx()
    path = export_model(model, path, format=format, **export_options)
    rows = verify_export(model, path, sizes, format=format, tol=tol)
    assert [r["size"] for r in rows] == [f"{h}x{w}" for h, w in sizes]
    assert all(r["max_abs_diff"] <= tol for r in rows), rows
    return rows


# -- training runs ----------------------------------------------------------------------------------------------------
TINY_MODEL = {"model.depth": 2, "model.embed_dim": 32, "model.num_heads": 2}
"""A micro model cut to 2 blocks of width 32 (as ``--set`` overrides)."""


def tiny_config(out, **overrides):
    """A training config that runs in seconds: the synthetic recipe at 16 px on a :data:`TINY_MODEL`
    ``cpvt_micro_gap``, 2 epochs of 8 steps (256 images, batch 32), 64 validation images; ``overrides`` (config
    keys, ``model.*`` ones included) go last."""
    from cpvt.train.config import apply_overrides, resolve_config

    cfg = resolve_config("synthetic", {"out": str(out)})
    apply_overrides(cfg, {"model": "cpvt_micro_gap", "img_size": 16, "epochs": 2, "batch_size": 32,
                          "train_limit": 256, "val_limit": 64, "warmup_epochs": 0.5, **TINY_MODEL, **overrides})
    return cfg


def run_weights(run) -> dict[str, torch.Tensor]:
    """The tensors of a run folder's last checkpoint: the model's, and training state under ``<part>/`` keys
    (``ema/...``, ``optimizer/...``)."""
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "last.safetensors"))


def assert_same_weights(a, b, ema: bool = False) -> None:
    """The model tensors (with ``ema``, the EMA's too) of two runs' last checkpoints are bit-identical."""
    wa, wb = run_weights(a), run_weights(b)
    keys = [k for k in wa if "/" not in k or (ema and k.startswith("ema/"))]
    assert keys and (not ema or any(k.startswith("ema/") for k in keys)), sorted(wa)[:5]
    different = [k for k in keys if k not in wb or not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} of {len(keys)} tensors differ, e.g. {different[:3]}"


@pytest.fixture
def live_pid():
    """The pid of a live process on this host (a sleeping child of the test, killed after it): a run lock holder
    that is still running."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def hold_lock(folder, pid: int, host: str | None = None) -> None:
    """Write ``folder``'s run lock as process ``pid`` on ``host`` (this one by default) would hold it."""
    from cpvt.train.runlock import LOCK_NAME

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                "started": "2026-01-01T00:00:00+00:00"}))


def lr_trace(cfg, steps_per_epoch: int) -> list[float]:
    """The lr each optimiser step of the run uses (a config's schedule, on a one-parameter optimiser)."""
    from cpvt.train.engine import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.scaled_lr())
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs + [opt.param_groups[0]["lr"]]  # and the one after the last step


def poison_batch(monkeypatch, n: int) -> None:
    """Make the ``n``-th training batch (1-based) all NaN, through the classification task's ``mix_batch``."""
    import cpvt.train.tasks as tasks

    calls, real = {"n": 0}, tasks.mix_batch

    def poisoned(x, *args, **kwargs):
        calls["n"] += 1
        x, target = real(x, *args, **kwargs)
        return (x * float("nan"), target) if calls["n"] == n else (x, target)

    monkeypatch.setattr(tasks, "mix_batch", poisoned)
