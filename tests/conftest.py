import importlib
import importlib.util
import os
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
