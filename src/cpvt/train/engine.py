"""The training and evaluation loops. The CLI only assembles the parts.

:func:`train` runs a whole job from a :class:`~cpvt.train.config.TrainConfig`:
data, model, optimiser (AdamW with weight-decay groups), per-step cosine
schedule with linear warm-up, bf16 autocast, optional EMA, DDP under
torchrun, atomic checkpoints and exact resume. Classification's
:func:`~cpvt.train.tasks.evaluate` measures top-1 / top-5 on a decoded split.

One loop for every task: what differs between classification and segmentation
(splits, model options, batch transform, loss, validation, the metric that
picks ``best.safetensors``) is the run's :class:`~cpvt.train.tasks.Task`,
resolved once in :func:`setup` from ``TrainConfig.task`` and the data.

Exact resume: the batch order of every epoch is a permutation seeded by
``(seed, epoch)``, so it needs no state beyond the epoch and step; the RNG
(augmentation, mixing, drop path) of every process, optimizer, scheduler and
EMA states are in the checkpoint. On the CPU with the same thread count and
number of processes a resumed run ends with the same weights as an
uninterrupted one.

Graceful stop: SIGTERM or SIGINT during training finishes the current step,
writes ``last.safetensors`` and raises :class:`~cpvt.utils.errors.TrainingStopped`
(``cpvt`` exits with :data:`~cpvt.utils.errors.EXIT_STOPPED`); under DDP the
processes agree on the step to stop after. A checkpoint that cannot be written
raises :class:`~cpvt.utils.errors.CheckpointWriteError` on every process and keeps
the previous one.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..checkpoint import Checkpoint, CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from ..data import open_source
from ..data.base import DataError, Split, printable
from ..models import create_model
from ..models.pretrained import pretrained_cfg_from_config
from ..models.registry import load_strict
from ..utils.errors import CheckpointWriteError, TrainingDiverged, TrainingStopped
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, gather_to_main, init_distributed
from ..utils.compiling import compile_model
from .precision import autocast_dtype
from .runlock import run_lock
from .tasks import Task, resolve_task, size_text


# -- pieces --------------------------------------------------------------------
#: The longest sequence for which ``attention="auto"`` takes SDPA's math path on the CPU under bf16 autocast.
SHORT_SEQUENCE = 128


def attention_context(cfg: TrainConfig, device: torch.device, tokens: int, dtype: torch.dtype | None = None):
    """The SDPA backend of a training step with ``tokens`` per image under autocast ``dtype`` (None: fp32).

    ``auto`` takes the math path on the CPU for sequences of up to :data:`SHORT_SEQUENCE` tokens under
    reduced-precision autocast, and PyTorch's own choice everywhere else: PyTorch's fused CPU kernel is about
    3.5x slower than the math path in bf16 there, and 1.4-1.9x faster in fp32 at every shape measured
    (``benchmarks/attention_backends.py``, docs/benchmarks.md). ``math-short`` is the rule ``auto`` followed
    before that fp32 measurement, the math path for short sequences in any precision: the reproduction
    budgets pin it for the protocols whose committed records were trained so (``recorded_with`` in
    ``experiments/budgets.toml``), so their runs stay bit-identical.
    """
    if cfg.attention not in ("auto", "default", "math", "math-short"):
        raise ValueError(f"attention must be auto, default, math or math-short, got {cfg.attention!r}")
    short = device.type == "cpu" and tokens <= SHORT_SEQUENCE
    if (cfg.attention == "math" or (cfg.attention == "math-short" and short)
            or (cfg.attention == "auto" and short and dtype is not None)):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay for biases, norms and the model's ``no_weight_decay()`` names."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


#: The longest warm-up, as a fraction of the run's optimiser steps (rounded up to a whole step).
#:
#: 20 %: every schedule the repository ships warms up for less (DeiT's recipe 5 of 300 epochs, 1.7 %;
#: the synthetic recipe 1 of 10, 10 %; Imagenette's cpu protocol 5 of 40, 12.5 %; the demo 1 of 7,
#: 14 %; CIFAR-10's cpu protocol 0.3 of 2, 15 %), so none of them changes, while a run shorter than
#: the warm-up it asks for (5 warm-up epochs in a 3-epoch run) still spends at least 80 % of its steps
#: at or after its peak learning rate instead of never reaching it. Rounding up keeps one warm-up
#: step in a run of a few steps (the smoke budget: 1 of 2).
MAX_WARMUP_FRACTION = 0.2


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, str | None]:
    """The warm-up in optimiser steps and, when it had to be clipped to fit the run, a note saying so.

    ``warmup_epochs`` is the only epoch-based schedule here (the cosine spans whatever follows the
    warm-up by construction; drop path, Mixup / CutMix and the EMA decay are constants), so it is the
    one clipped: to :data:`MAX_WARMUP_FRACTION` of the run, and always short of its last step.
    """
    total = max(cfg.epochs * steps_per_epoch, 1)
    asked = int(round(cfg.warmup_epochs * steps_per_epoch))
    cap = min(math.ceil(round(MAX_WARMUP_FRACTION * total, 6)), total - 1)
    if asked <= cap:
        return max(asked, 0), None
    return cap, (f"warm-up clipped to {cap} step(s), {MAX_WARMUP_FRACTION:.0%} of this run's {total}: "
                 f"warmup_epochs={cfg.warmup_epochs:g} ({asked} steps) does not fit a run of {cfg.epochs} epoch(s) "
                 f"of {steps_per_epoch} step(s) (a warmup_epochs of at most {cap / steps_per_epoch:.3g} fits)")


def schedule_notes(cfg: TrainConfig, steps_per_epoch: int) -> list[str]:
    """What the run changes of, or warns about in, its schedule: a clipped warm-up, an EMA slower than the run."""
    notes = [n for n in [warmup_steps(cfg, steps_per_epoch)[1]] if n]
    total = cfg.epochs * steps_per_epoch
    if cfg.ema and cfg.ema_decay < 1 and 1 / (1 - cfg.ema_decay) > total:
        notes.append(f"ema_decay={cfg.ema_decay:g} averages over about {1 / (1 - cfg.ema_decay):,.0f} steps, more "
                     f"than this run's {total}: the EMA weights will stay close to the initial ones (an "
                     f"ema_decay of {1 - 1 / max(MAX_WARMUP_FRACTION * total, 1):.3g} averages over the last "
                     f"{MAX_WARMUP_FRACTION:.0%} of the run)")
    return notes


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step linear warm-up from ``warmup_lr`` (clipped to fit the run, see :func:`warmup_steps`), then
    cosine down to ``min_lr``."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup, _ = warmup_steps(cfg, steps_per_epoch)
    lr = cfg.scaled_lr()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total - warmup, 1), eta_min=min(cfg.min_lr, lr))
    if warmup <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=min(cfg.warmup_lr / lr, 1.0), total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])


@dataclass
class BatchOrder:
    """Seeded batch order over ``n`` samples: global batches of ``batch_size``, each
    split evenly over the processes. Incomplete last batches are dropped (train)."""

    n: int
    batch_size: int
    seed: int
    info: DistInfo

    def __post_init__(self):
        if self.batch_size % self.info.world_size:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by {self.info.world_size} processes")
        if self.n < self.batch_size:
            raise DataError(f"the training split has {self.n} images, fewer than one batch of {self.batch_size}")

    @property
    def steps(self) -> int:
        return self.n // self.batch_size

    def permutation(self, epoch: int) -> Tensor:
        """The epoch's sample order: a function of (seed, epoch) only, so resuming needs no state."""
        if getattr(self, "_cached", (None,))[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cached = (epoch, torch.randperm(self.n, generator=gen))
        return self._cached[1]

    def indices(self, epoch: int, step: int) -> Tensor:
        batch = self.permutation(epoch)[step * self.batch_size : (step + 1) * self.batch_size]
        local = self.batch_size // self.info.world_size
        return batch[self.info.rank * local : (self.info.rank + 1) * local]


# -- the job -------------------------------------------------------------------
def _log(info: DistInfo, *args) -> None:
    if info.is_main:
        print(*args, flush=True)


def _config_diff(a: dict, b: dict, ignore=("epochs", "out", "compile", "ckpt_every_steps")) -> list[str]:
    """The settings that differ; a key one side lacks (a run saved before the key existed) counts as its default."""
    defaults = TrainConfig().to_dict()
    keys = sorted(set(a) | set(b))
    get = lambda d, k: d.get(k, defaults.get(k))  # noqa: E731
    return [f"{k}: {get(a, k)!r} -> {get(b, k)!r}" for k in keys if k not in ignore and get(a, k) != get(b, k)]


def step_sizes(sizes: tuple[int, ...], seed: int, epoch: int, steps: int) -> list[int]:
    """The input size of every step of an epoch for mixed-resolution training.

    A function of (seed, epoch) only, like the sample order: every DDP process
    draws the same sizes and a resumed run needs no state.
    """
    if len(sizes) == 1:
        return [sizes[0]] * steps
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
    return [sizes[i] for i in torch.randint(len(sizes), (steps,), generator=gen).tolist()]


def load_data(cfg: TrainConfig, info: DistInfo, task: Task, source):
    """Decode the training and validation splits of ``source`` as ``task`` needs them (rank 0 first,
    so the others read its disk cache)."""
    val_name = cfg.val_split or ("val" if "val" in source.splits else "test")
    for name in (cfg.train_split, val_name):
        if name not in source.splits:
            raise DataError(f"dataset {cfg.data!r} has no split {name!r}; it has {', '.join(source.splits)}")
    if info.enabled and not info.is_main:
        barrier(info)  # wait until rank 0 has filled the decode cache
    train_split, val_split = task.load_splits(source, val_name)
    if info.enabled and info.is_main:
        barrier(info)
    for split in (train_split, val_split):  # files skipped or links ignored: counted and named, never silent
        for note in split.notes:
            _log(info, f"note: {printable(note)}")
    return train_split, val_split


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run one training job; returns the final metrics (also written to ``metrics.json``)."""
    cfg.validate()
    info, device = init_distributed(cfg.device)
    try:
        with run_lock(cfg.out) if info.is_main else contextlib.nullcontext():  # one process per run folder
            return _train(cfg, resume, info, device)
    finally:
        cleanup(info)


class StopSignal:
    """SIGTERM / SIGINT during training, noted so the loop can finish its step, write ``last`` and stop.

    Installed around the training loop only (a signal while the data is decoded still stops at
    once) and only from the main thread. A repeated signal changes nothing: torchrun passes the
    signal it gets on to every worker, which may have got it already; SIGKILL still ends a process.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, verbose: bool = True):
        self.signum: int | None = None
        self.verbose = verbose
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self.verbose:
                print(f"\ncpvt: {self.name}: finishing this step, then writing the checkpoint and stopping",
                      file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()


@dataclass
class TrainState:
    """One training job between steps: what :func:`setup` builds and the loop pieces share."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    out: Path
    model: nn.Module  # the weights (checkpoints save this)
    runner: nn.Module  # the model, or its compiled wrapper: what runs forward
    ddp: nn.Module  # the runner, wrapped for DDP under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: AveragedModel | None
    order: BatchOrder
    augment: dict[Any, nn.Module]  # per training size: TrainAugment, JointAugment (the task's)
    tokens: dict[int, int]  # tokens per image, per size (picks the attention backend)
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    train_split: Split  # or a SegSplit (segmentation)
    val_split: Split
    config: dict[str, Any]  # cfg as saved with every checkpoint
    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the current epoch (resume mid-epoch)
    best: float = -1.0  # best validation metric so far (the task's: top-1, mIoU)
    saved: tuple[int, int] | None = None  # (epoch, step) of the last checkpoint written (or resumed from)
    stop: StopSignal = field(default_factory=lambda: StopSignal(verbose=False))  # installed by _train
    stop_agreed: bool = False  # every process has seen the stop request (agreed at each checked step)
    nonfinite: Tensor | None = None  # a non-finite loss since the last checked step (on the device)
    checked: int = 0  # steps of the epoch done at the last check
    task: Task | None = None  # what the run trains (cpvt.train.tasks), resolved once by setup

    @property
    def sizes(self) -> tuple[Any, ...]:
        return tuple(self.augment)

    @property
    def best_key(self) -> str:
        """The progress key of the best validation metric in checkpoints (``best_top1``, ``best_miou``)."""
        return f"best_{self.task.metric}"


def _resume_checkpoint(cfg: TrainConfig, resume: bool, info: DistInfo) -> Checkpoint | None:
    """The run's last checkpoint when resuming (its config must match), else None."""
    out = Path(cfg.out)
    last_path = out / "last.safetensors"
    if resume and info.is_main and out.exists():
        remove_stale_temporaries(out)
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        saved = ckpt.meta.get("model_name")
        if saved is None:
            raise CheckpointError(f"{last_path} is not a cpvt training checkpoint (no model description)")
        if saved != cfg.model:
            raise CheckpointError(f"{last_path} is a checkpoint of {saved}, not of {cfg.model}: --resume continues "
                                  f"the run in {out}; train {cfg.model} in another --out folder")
        diff = _config_diff(ckpt.config, cfg.to_dict())
        if diff:
            raise ValueError(f"--resume with a different config than the run in {out}: " + "; ".join(diff))
        _log(info, f"resuming {out} from epoch {ckpt.progress['epoch']} step {ckpt.progress['step']}")
        return ckpt
    if resume:
        _log(info, f"nothing to resume in {out}: starting a new run")
    return None


def _train_sizes(cfg: TrainConfig, task: Task) -> tuple[Any, ...]:
    """The training sizes (mixed resolution) or the one ``img_size``, checked against the model (a clear
    error for a size that is not a whole number of patches, before any data is decoded); fills in a
    missing ``img_size`` (the task's rules: :meth:`~cpvt.train.tasks.Task.train_sizes`)."""
    with torch.device("meta"):
        model = create_model(cfg.model, **cfg.model_args)
    return task.train_sizes(model)


def _check_eval_sizes(model: nn.Module, task: Task, val_split) -> None:
    """A validation size the model cannot take is an error before training, not after an epoch."""
    for s in task.eval_sizes(val_split):
        try:
            model.grid_for(s)
        except ValueError as e:
            raise ValueError(f"validation runs at {size_text(s)}: {e}") from None


def setup(cfg: TrainConfig, ckpt: Checkpoint | None, info: DistInfo, device: torch.device) -> TrainState:
    """Seed, load the data, build the model, optimiser, schedule and EMA, restore ``ckpt``; write config.json.

    The order of the random draws (model init under ``seed``, then augmentation
    streams under ``seed + rank``) is part of what makes a run reproducible.
    """
    torch.manual_seed(cfg.seed)
    source = open_source(cfg.data, data_root=cfg.data_root, cache_dir=cfg.cache_dir, workers=cfg.workers,
                         options=cfg.data_args)
    task = resolve_task(cfg, source)
    sizes = _train_sizes(cfg, task)
    train_split, val_split = load_data(cfg, info, task, source)
    model = create_model(cfg.model, **{**task.model_options(train_split), **cfg.model_args})
    model.pretrained_cfg = pretrained_cfg_from_config(model, cfg.to_dict())  # stored in every checkpoint
    _check_eval_sizes(model, task, val_split)
    tokens = {s: math.prod(model.grid_for(s)) + model.num_prefix for s in {cfg.img_size, *sizes}}  # a clear error now
    model.to(device)
    torch.manual_seed(cfg.seed + info.rank)  # augmentation streams differ per process

    order = BatchOrder(len(train_split), cfg.batch_size, cfg.seed, info)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.scaled_lr(), betas=cfg.betas)
    scheduler = build_scheduler(optimizer, cfg, order.steps)
    for note in schedule_notes(cfg, order.steps):
        _log(info, f"note: {note}")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) if cfg.ema else None
    best_key = f"best_{task.metric}"
    progress = {"epoch": 0, "step": 0, best_key: -1.0}
    if ckpt is not None:
        load_strict(model, ckpt.weights, source=str(ckpt.path))
        exact = ckpt.restore_training(optimizer, scheduler, ema, rank=info.rank, device=device)
        progress = {best_key: -1.0, **ckpt.progress}
        _warn_inexact_resume(ckpt, exact, info)
    # compiled: one module for training and evaluation (its weights are the model's; checkpoints save the model)
    runner = compile_model(model, dynamic=True if len(sizes) > 1 else None) if cfg.compile else model
    ddp = torch.nn.parallel.DistributedDataParallel(runner) if info.enabled else runner
    st = TrainState(cfg, info, device, Path(cfg.out), model, runner, ddp, optimizer, scheduler, ema, order,
                    {s: task.augment(s, train_split).to(device) for s in sizes}, tokens,
                    autocast_dtype(device, cfg.amp, model), train_split, val_split, cfg.to_dict(), progress["epoch"],
                    progress["step"], progress[best_key], saved=None if ckpt is None else (progress["epoch"],
                    progress["step"]), task=task)
    if info.is_main:
        st.out.mkdir(parents=True, exist_ok=True)
        (st.out / "config.json").write_text(json.dumps(st.config, indent=2))
        n_params = sum(p.numel() for p in model.parameters())
        _log(info, f"{cfg.model} ({n_params:,} params) on {cfg.data}: {task.describe(train_split, val_split)}; "
             f"{cfg.epochs} epochs x {order.steps} steps of {cfg.batch_size} at {'/'.join(map(size_text, sizes))}px "
             f"on {info.world_size} x {device.type}, amp={st.dtype or 'off'}")
    return st


def _warn_inexact_resume(ckpt: Checkpoint, exact: bool, info: DistInfo) -> None:
    """Say so when a resumed run cannot continue bit-identically (RNG state missing, process count changed)."""
    saved_world = ckpt.progress.get("world_size")
    if not exact:
        warnings.warn(f"rank {info.rank}: {ckpt.path} holds no RNG state for this process (written by "
                      f"{saved_world or 'an older cpvt or fewer'} processes); its random streams start afresh, "
                      "so the resumed run is not bit-identical to an uninterrupted one", stacklevel=3)
    elif info.is_main and saved_world is not None and saved_world != info.world_size:
        warnings.warn(f"{ckpt.path} was written by {saved_world} processes, resumed on {info.world_size}: the "
                      "resumed run is not bit-identical to an uninterrupted one", stacklevel=3)


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    """This process's random streams: the CPU generator and, on a GPU, its device's."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _write_on_main(st: TrainState, write) -> None:
    """Run a checkpoint write on rank 0. If it fails every process raises (none waits for a dead rank 0),
    with what to do next: the previous checkpoint is kept and ``--resume`` continues from it."""
    error = None
    if st.info.is_main:
        try:
            write()
        except CheckpointWriteError as e:
            error = e
    failed = error is not None
    if st.info.enabled:
        failed = all_reduce_sum(torch.tensor(float(failed), device=st.device), st.info).item() > 0
    if not failed:
        return
    if st.saved is None:
        then = "no checkpoint of this run was written yet: fix the cause and start it again"
    else:
        then = (f"fix the cause, then --resume continues from {st.out / 'last.safetensors'} (epoch {st.saved[0]}, "
                f"step {st.saved[1]})")
    if error is None:
        raise CheckpointWriteError(f"rank 0 could not write a checkpoint (its message says why); {then}")
    raise CheckpointWriteError(f"{error}. Training stopped: {then}", error.errno) from error


def save_last(st: TrainState, epoch: int, step: int) -> None:
    """The resumable checkpoint (weights, optimiser, schedule, EMA, every process's RNG, progress), written
    atomically by rank 0; every process takes part (the RNG states are gathered)."""
    states = gather_to_main(_rng_state(st.device), st.info) if st.info.enabled else None
    _write_on_main(st, lambda: save_checkpoint(
        st.out / "last.safetensors", st.model, config=st.config, classes=st.train_split.classes,
        optimizer=st.optimizer, scheduler=st.scheduler, ema=st.ema, rng_states=states,
        progress={"epoch": epoch, "step": step, st.best_key: st.best, "world_size": st.info.world_size}))
    st.saved = (epoch, step)


def _stopped(st: TrainState) -> TrainingStopped:
    """The error that ends a run stopped by a signal, after its checkpoint is written."""
    where = (f"step {st.step} of {st.order.steps} in epoch {st.epoch + 1}/{st.cfg.epochs}" if st.step
             else f"epoch {st.epoch}/{st.cfg.epochs}")
    by = st.stop.name or "a signal to another process"
    return TrainingStopped(f"stopped by {by} after {where}; {st.out / 'last.safetensors'} is written: the same "
                           "command with --resume continues exactly", by, st.epoch, st.step)


def _stop_requested_anywhere(st: TrainState) -> bool:
    """Whether any process got SIGTERM / SIGINT (every process gets the same answer)."""
    flag = torch.tensor(float(st.stop.requested), device=st.device)
    return all_reduce_sum(flag, st.info).item() > 0


def sync_interval(device: torch.device) -> int:
    """Steps between the training loop's host synchronisations: the non-finite-loss check, the agreed stop and
    the progress bar's loss. On the CPU every step (reading a CPU tensor waits for nothing); on an accelerator
    every 16 steps, so the host queues steps ahead instead of waiting for each one to finish. A checkpoint and
    an epoch's end are always checked first, so no checkpoint holds the weights of a non-finite step."""
    return 1 if device.type == "cpu" else 16


def _check_step(st: TrainState, loss: Tensor) -> None:
    """The one host synchronisation of a checked step: a non-finite loss anywhere since the last check (raises
    :class:`TrainingDiverged` on every process) and a stop request anywhere, in one all_reduce."""
    flags = torch.stack([st.nonfinite.float(), torch.tensor(float(st.stop.requested), device=st.device)])
    bad, stop = all_reduce_sum(flags, st.info).tolist()
    st.stop_agreed = stop > 0
    st.nonfinite = torch.zeros((), dtype=torch.bool, device=st.device)
    first = st.checked + 1  # the first step since the last check, 1-based as in the message
    st.checked = st.step + 1
    if bad > 0:
        cfg, last = st.cfg, st.out / "last.safetensors"
        where = (f"became {loss.item()} at epoch {st.epoch + 1} step {st.step + 1}" if first == st.step + 1 else
                 f"was not finite at a step of epoch {st.epoch + 1} between step {first} and step {st.step + 1} "
                 f"(checked every {sync_interval(st.device)} steps on {st.device.type})")
        raise TrainingDiverged(
            f"loss {where}; stopping. The last good checkpoint is kept in "
            f"{last if last.exists() else '(none written yet)'}. "
            f"Try a lower lr (now {cfg.scaled_lr():.2e}), clip_grad, or amp=off."
        )


def train_step(st: TrainState, idx: Tensor, size, check: bool = True) -> Tensor:
    """One optimiser step on the samples ``idx`` at input size ``size``; returns the loss.

    The batch, its targets and the loss are the task's (:mod:`cpvt.train.tasks`). A non-finite loss is noted
    on the device; ``check`` runs :func:`_check_step` before the update, which raises :class:`TrainingDiverged`
    (on every process) if any loss since the last check was not finite.
    """
    cfg, device = st.cfg, st.device
    x, target = st.task.train_batch(st.augment[size], st.train_split, idx, device)
    with attention_context(cfg, device, st.tokens[size], st.dtype), torch.autocast(
        device.type, dtype=st.dtype or torch.float32, enabled=st.dtype is not None
    ):
        logits = st.ddp(x)
    loss = st.task.loss(logits.float(), target)
    st.nonfinite = st.nonfinite | ~torch.isfinite(loss.detach())
    if check:
        _check_step(st, loss)
    st.optimizer.zero_grad(set_to_none=True)
    with attention_context(cfg, device, st.tokens[size], st.dtype):
        loss.backward()
    if cfg.clip_grad:
        nn.utils.clip_grad_norm_(st.model.parameters(), cfg.clip_grad)
    st.optimizer.step()
    st.scheduler.step()
    if st.ema is not None:
        st.ema.update_parameters(st.model)
    return loss


def train_one_epoch(st: TrainState) -> dict[str, Any]:
    """The rest of epoch ``st.epoch`` from step ``st.step``; returns its log record (loss, lr, speed).

    The host waits for the device only at checked steps (:func:`sync_interval`), at a checkpoint and at the
    epoch's last step; the loss is summed on the device.
    """
    cfg, order = st.cfg, st.order
    st.ddp.train()
    t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=st.device)
    st.nonfinite, st.checked = torch.zeros((), dtype=torch.bool, device=st.device), st.step
    bar = tqdm(range(st.step, order.steps), desc=f"epoch {st.epoch + 1}/{cfg.epochs}", leave=False,
               disable=None if st.info.is_main else True, file=sys.stderr)  # None: off when not a terminal
    size_of_step = step_sizes(st.sizes, cfg.seed, st.epoch, order.steps)
    every = sync_interval(st.device)
    for step in bar:
        st.step = step
        mid_epoch = step + 1 < order.steps  # at an epoch's last step a stop waits for its validation and checkpoint
        save = bool(cfg.ckpt_every_steps) and (step + 1) % cfg.ckpt_every_steps == 0 and mid_epoch
        check = (step + 1) % every == 0 or save or not mid_epoch
        idx = order.indices(st.epoch, step)
        loss = train_step(st, idx, size_of_step[step], check)
        loss_sum += loss.detach() * len(idx)
        seen += len(idx)
        if check:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{st.optimizer.param_groups[0]['lr']:.2e}")
        stop = check and st.stop_agreed and mid_epoch
        if stop or save:
            save_last(st, st.epoch, step + 1)
        if stop:
            bar.close()
            st.step = step + 1
            raise _stopped(st)
    bar.close()
    st.epoch, st.step = st.epoch + 1, 0
    elapsed = time.perf_counter() - t0
    stats = torch.stack([loss_sum, torch.tensor(float(seen), device=st.device)])
    all_reduce_sum(stats, st.info)
    return {"epoch": st.epoch, "train_loss": stats[0].item() / max(stats[1].item(), 1),
            "lr": st.optimizer.param_groups[0]["lr"], "img_per_s": stats[1].item() / elapsed, "epoch_time_s": elapsed}


def validate(st: TrainState, record: dict[str, Any]) -> None:
    """The task's validation numbers (top-1/top-5/loss, mIoU/pixel accuracy/loss; and of the EMA) into ``record``
    as ``val_<key>``; a new best of the task's metric is saved as best.safetensors."""
    task = st.task
    val = task.validate(st.runner, st.val_split, st.device, st.info)
    record.update({f"val_{k}": val[k] for k in task.logged})
    if st.ema is not None:
        val_ema = task.validate(st.ema.module, st.val_split, st.device, st.info)
        record.update({f"val_{k}_ema": val_ema[k] for k in task.logged_ema})
    if val[task.metric] > st.best:
        st.best = val[task.metric]
        _write_on_main(st, lambda: save_checkpoint(
            st.out / "best.safetensors", st.model, config=st.config, classes=st.train_split.classes,
            progress={"epoch": st.epoch, "step": 0, st.best_key: st.best}))


def _last_record(log: Path) -> dict[str, Any]:
    """The last epoch's log record: the metrics of a finished run resumed (nothing left to train), {} if none."""
    lines = log.read_text().splitlines() if log.exists() else []
    return json.loads(lines[-1]) if lines else {}


def _train(cfg: TrainConfig, resume: bool, info: DistInfo, device: torch.device) -> dict[str, Any]:
    """Setup, then per epoch: train, validate when due, checkpoint, log."""
    ckpt = _resume_checkpoint(cfg, resume, info)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    st = setup(cfg, ckpt, info, device)
    if ckpt is None and info.is_main:  # a new run in a used folder: its log starts empty, not after the old run's
        (st.out / "log.jsonl").unlink(missing_ok=True)
    metrics: dict[str, Any] = _last_record(st.out / "log.jsonl") if st.epoch >= cfg.epochs else {}
    with StopSignal(verbose=info.is_main) as st.stop:
        while st.epoch < cfg.epochs:
            record = train_one_epoch(st)
            if st.epoch % cfg.eval_every == 0 or st.epoch == cfg.epochs:
                validate(st, record)
            save_last(st, st.epoch, 0)
            if info.is_main:
                with open(st.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                _log(info, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            metrics = record
            if st.epoch < cfg.epochs and _stop_requested_anywhere(st):
                raise _stopped(st)
    metrics = {**metrics, f"best_val_{st.task.metric}": st.best, "model": cfg.model, "data": cfg.data, "img_size": cfg.img_size,
               "params": sum(p.numel() for p in st.model.parameters())}
    if info.is_main:
        (st.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    barrier(info)
    return metrics
