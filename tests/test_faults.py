"""Faults a run survives: SIGTERM / SIGINT (graceful stop), SIGKILL under DDP, a checkpoint write that fails,
and checkpoints that are damaged, of another model or of a newer format.

Each resume is checked against an uninterrupted run of the same config: weights and EMA bit-identical.
"""

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from conftest import TINY_MODEL, assert_same_weights
from conftest import tiny_config as plain_tiny_config
from safetensors.torch import save_file

import cpvt.checkpoint as checkpoint
import cpvt.train.engine as engine
import cpvt.train.tasks as tasks
from cpvt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cpvt.cli import main
from cpvt.models import create_model
from cpvt.utils.errors import EXIT_STOPPED, EXIT_WRITE_FAILED, CheckpointWriteError, TrainingStopped

STEPS = 8  # per epoch: train_limit 256 / batch 32


def tiny_config(out, **kw):
    """conftest's tiny config (2 epochs of 8 steps) with an EMA, so every resume check covers the EMA too."""
    return plain_tiny_config(out, **{"ema": True, "ema_decay": 0.9, **kw})


def progress(run) -> tuple[int, int]:
    p = load_checkpoint(Path(run) / "last.safetensors").progress
    return p["epoch"], p["step"]


def logged_epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (Path(run) / "log.jsonl").read_text().splitlines()]


def no_temporaries(run) -> bool:
    return not list(Path(run).glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of ``tiny_config`` (2 epochs x 8 steps): what every resumed run must end as."""
    out = tmp_path_factory.mktemp("reference")
    engine.train(tiny_config(out))
    return out


# -- graceful stop: SIGTERM / SIGINT --------------------------------------------------------------------------
@pytest.mark.parametrize("sig, at_call, stopped_at", [
    (signal.SIGTERM, 5, (0, 5)),  # mid-epoch: after the step it arrived in
    (signal.SIGINT, STEPS, (1, 0)),  # at an epoch's last step: after that epoch's validation and checkpoint
], ids=["SIGTERM-mid-epoch", "SIGINT-last-step"])
def test_signal_finishes_the_step_writes_the_checkpoint_and_resume_is_exact(tmp_path, monkeypatch, reference, sig,
                                                                           at_call, stopped_at):
    calls, real = {"n": 0}, tasks.mix_batch

    def signal_during_a_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            os.kill(os.getpid(), sig)  # delivered here, in the middle of the step
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "mix_batch", signal_during_a_step)
    run = tmp_path / "run"
    # what the process had before (a background job's SIGINT is ignored, not Python's default handler)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped, match=f"stopped by {sig.name} after .*--resume continues exactly") as e:
        engine.train(tiny_config(run, ckpt_every_steps=3))
    assert (e.value.epoch, e.value.step) == stopped_at == progress(run)
    assert calls["n"] == at_call  # no step after the one the signal arrived in
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers put back
    assert not (run / "run.lock").exists() and not (run / "metrics.json").exists() and no_temporaries(run)

    monkeypatch.setattr(tasks, "mix_batch", real)
    engine.train(tiny_config(run, ckpt_every_steps=3), resume=True)
    assert_same_weights(reference, run, ema=True)
    assert logged_epochs(run) == [1, 2]


def test_sigterm_stops_the_cli_with_its_exit_code_and_resume_finishes(tmp_path):
    """A real SIGTERM from outside at an arbitrary moment: exit code 75, the checkpoint of a finished step."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cpvt", "train", "--data", "synthetic", "--model", "cpvt_micro_gap", "--img-size",
           "16", "--epochs", "3", "--batch-size", "16", "--recipe", "synthetic", "--out", str(run),
           "--save-every-steps", "2"]
    cmd += [f"--set={k}={v}" for k, v in {**TINY_MODEL, "train_limit": 320, "val_limit": 32}.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "last.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    assert re.search(r"cpvt: stopped by SIGTERM after (step \d+ of 20 in epoch \d/3|epoch \d/3); .*--resume", err), \
        err[-2000:]
    epoch, step = progress(run)
    assert (epoch, step) < (3, 0) and not (run / "metrics.json").exists()  # the signal hit an unfinished run
    assert not (run / "run.lock").exists() and no_temporaries(run)
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {run} from epoch {epoch} step {step}" in done.stdout
    assert logged_epochs(run) == [1, 2, 3]


# -- DDP: every rank's RNG in the checkpoint; SIGKILL and SIGTERM mid-epoch -----------------------------------
def test_checkpoint_keeps_every_rank_rng_state(tmp_path):
    own = torch.get_rng_state()
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters())
    states = [{"cpu": torch.Generator().manual_seed(r).get_state()} for r in range(3)]
    save_checkpoint(tmp_path / "c.safetensors", model, config={}, classes=[], optimizer=opt, rng_states=states,
                    progress={"world_size": 3})
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    for rank in range(3):
        assert ckpt.restore_training(opt, rank=rank)
        assert torch.equal(torch.get_rng_state(), states[rank]["cpu"])
    assert not ckpt.restore_training(opt, rank=3)  # a 4th process has no stream of its own: not exact, and says so
    torch.set_rng_state(own)


DDP_SETS = {**TINY_MODEL, "train_limit": 384, "val_limit": 32, "randaug_n": 1, "mixup": 0.8, "cutmix": 1.0,
            "drop_path": 0.1, "ema": True, "ema_decay": 0.9, "amp": "off"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def ddp_cmd(out) -> list[str]:
    """A 2-process run: 3 epochs x 24 steps of 16 (8 per process), every per-process random stream in use."""
    return TORCHRUN + ["-m", "cpvt", "train", "--data", "synthetic", "--model", "cpvt_micro_gap", "--img-size", "16",
                       "--epochs", "3", "--batch-size", "16", "--recipe", "synthetic", "--out", str(out),
                       "--save-every-steps", "2"] + [f"--set={k}={v}" for k, v in DDP_SETS.items()]


DDP_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "reference"
    r = subprocess.run(ddp_cmd(out), env=DDP_ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def start_and_wait_for_a_checkpoint(run) -> subprocess.Popen:
    proc = subprocess.Popen(ddp_cmd(run), env=DDP_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "last.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first checkpoint"
    return proc


def resume_and_compare(run, reference) -> None:
    r = subprocess.run(ddp_cmd(run) + ["--resume"], env=DDP_ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not bit-identical" not in r.stderr  # every rank found its own RNG state
    assert_same_weights(reference, run, ema=True)
    assert logged_epochs(run) == [1, 2, 3]


def worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the workers torchrun started (each in a session of its own, so not in its process group)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    assert sorted(ranks) == [0, 1], ranks
    return ranks


needs_proc = pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                                reason="finds torchrun's workers through /proc")


def ddp_case(test):
    """A 2-process torchrun test: slow, needs torch.distributed, and /proc to find the workers."""
    no_dist = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
    return pytest.mark.slow(no_dist(needs_proc(test)))


@ddp_case
def test_ddp_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, ddp_reference):
    """torchrun, 2 CPU processes: both workers and the launcher SIGKILLed after the first mid-epoch checkpoint."""
    run = tmp_path / "killed"
    proc = start_and_wait_for_a_checkpoint(run)
    for pid in [*worker_pids(proc.pid).values(), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert progress(run) < (3, 0) and not (run / "metrics.json").exists()  # the kill hit an unfinished run
    assert load_checkpoint(run / "last.safetensors").progress["world_size"] == 2
    resume_and_compare(run, ddp_reference)


@ddp_case
def test_ddp_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, ddp_reference):
    """Only rank 1 gets SIGTERM; the ranks agree on the step, rank 0 writes, all exit 75, resume is exact."""
    run = tmp_path / "stopped"
    proc = start_and_wait_for_a_checkpoint(run)
    os.kill(worker_pids(proc.pid)[1], signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert re.search(r"exitcode\s*:\s*75", err), err[-3000:]  # torchrun's report of its workers
    assert "stopped by a signal to another process after step" in err  # rank 0's message
    epoch, step = progress(run)
    assert (epoch, step) < (3, 0) and not (run / "metrics.json").exists()
    resume_and_compare(run, ddp_reference)


# -- write faults -----------------------------------------------------------------------------------------------
def fail_on_save(monkeypatch, what: str, code: int, nth: int) -> None:
    """Make the ``nth`` checkpoint write fail: in safetensors' write (as it reports a full disk), in fsync or
    in os.replace."""
    count = {"n": 0}

    def due() -> bool:
        count["n"] += 1
        return count["n"] == nth

    if what == "write":
        real = checkpoint.save_file

        def save_file(tensors, filename, metadata=None):
            if due():
                Path(filename).write_bytes(b"\0" * 1000)  # a partial file, then the error safetensors raises
                raise checkpoint.SafetensorError(
                    f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")
            return real(tensors, filename, metadata=metadata)

        monkeypatch.setattr(checkpoint, "save_file", save_file)
    else:
        import cpvt.utils.fileio as fileio

        name = {"fsync": "fsync", "replace": "replace"}[what]
        real = getattr(os, name)

        def failing(*args, **kwargs):
            if due():
                raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        monkeypatch.setattr(fileio.os, name, failing)


@pytest.mark.parametrize("what, code, reason", [("write", errno.ENOSPC, " (disk full)"),
                                                ("fsync", errno.EDQUOT, ""),  # "Disk quota exceeded" says it
                                                ("replace", errno.EIO, "")],
                         ids=["write-ENOSPC", "fsync-EDQUOT", "replace-EIO"])
def test_failed_checkpoint_write_keeps_the_previous_one_and_resume_is_exact(tmp_path, monkeypatch, reference, what,
                                                                           code, reason):
    run = tmp_path / "run"
    fail_on_save(monkeypatch, what, code, nth=2)  # saves: (0, 3), then (0, 6) fails
    with pytest.raises(CheckpointWriteError) as e:
        engine.train(tiny_config(run, ckpt_every_steps=3))
    message = str(e.value)
    assert (f"could not write checkpoint {run / 'last.safetensors'}: {os.strerror(code)}{reason}; the previous "
            "last.safetensors is intact and the partial file was removed" in message)
    assert "--resume continues from" in message and "(epoch 0, step 3)" in message
    assert e.value.errno == code
    assert progress(run) == (0, 3) and no_temporaries(run) and not (run / "run.lock").exists()
    monkeypatch.undo()
    engine.train(tiny_config(run, ckpt_every_steps=3), resume=True)
    assert_same_weights(reference, run, ema=True)


def test_failed_first_write_exits_74_and_says_nothing_was_kept(tmp_path, monkeypatch, capsys):
    fail_on_save(monkeypatch, "write", errno.ENOSPC, nth=1)
    args = ["train", "--data", "synthetic", "--model", "cpvt_micro_gap", "--img-size", "16", "--epochs", "1",
            "--batch-size", "32", "--recipe", "synthetic", "--out", str(tmp_path)]
    sets = [f"--set={k}={v}" for k, v in {**TINY_MODEL, "train_limit": 64, "val_limit": 32}.items()]
    assert main(args + sets) == EXIT_WRITE_FAILED
    err = capsys.readouterr().err
    assert "cpvt: error: could not write checkpoint" in err and "(disk full)" in err
    assert "there was no earlier" in err and "no checkpoint of this run was written yet" in err
    assert not list(tmp_path.glob("*.safetensors")) and no_temporaries(tmp_path)


@pytest.mark.skipif(sys.platform != "linux", reason="a file-size limit (RLIMIT_FSIZE) stands in for a full disk")
def test_a_real_write_fault_keeps_the_checkpoint_loadable(tmp_path):
    """No mock: the operating system refuses the write (a file-size limit below the checkpoint's size)."""
    run = tmp_path / "run"
    engine.train(tiny_config(run, epochs=1, ckpt_every_steps=3))  # the first write after resuming: step 3
    before = (run / "last.safetensors").read_bytes()
    script = f"""
import json, resource, signal, sys
from cpvt.train.config import TrainConfig
from cpvt.train.engine import train
from cpvt.utils.errors import CheckpointWriteError
cfg = TrainConfig.from_dict(json.load(open({str(run / 'config.json')!r})))
cfg.epochs = 2
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) // 2}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    train(cfg, resume=True)
except CheckpointWriteError as e:
    print(e, file=sys.stderr)
    sys.exit(74)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 74, r.stderr[-2000:]
    assert "File too large (file size limit); the previous last.safetensors is intact" in r.stderr
    assert (run / "last.safetensors").read_bytes() == before and progress(run) == (1, 0) and no_temporaries(run)
    engine.train(tiny_config(run, epochs=2), resume=True)  # the limit lifted, the run goes on
    assert progress(run) == (2, 0)


# -- damaged checkpoints: a fuzz ------------------------------------------------------------------------------
def tiny_model():
    torch.manual_seed(0)
    return create_model("cpvt_micro_gap", img_size=16, num_classes=3, depth=1, embed_dim=16, num_heads=1)


@pytest.fixture(scope="module")
def resumable(tmp_path_factory) -> Path:
    """A small resumable checkpoint: weights, optimizer, scheduler, EMA, RNG and metadata."""
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step(), sched.step(), ema.update_parameters(model)
    path = tmp_path_factory.mktemp("ckpt") / "last.safetensors"
    save_checkpoint(path, model, config={"model": "cpvt_micro_gap", "lr": 1e-3}, classes=["a", "b", "c"],
                    optimizer=opt, scheduler=sched, ema=ema, progress={"epoch": 1, "step": 3, "best_top1": 50.0})
    return path


def mutations(data: bytes, header_end: int, rng: random.Random):
    """(what, mutated bytes): byte flips (half of them in the header), multi-byte flips, truncations, insertions."""
    n = len(data)
    for i in range(600):
        pos = rng.randrange(header_end) if i % 2 else rng.randrange(n)
        b = bytearray(data)
        b[pos] ^= rng.randrange(1, 256)
        yield f"flip byte {pos}", bytes(b)
    for _ in range(100):
        b = bytearray(data)
        for pos in rng.sample(range(n), rng.randrange(2, 9)):
            b[pos] ^= rng.randrange(1, 256)
        yield "flip several bytes", bytes(b)
    for length in [0, 1, 7, 8, header_end - 1, header_end, n - 1] + [rng.randrange(n) for _ in range(193)]:
        yield f"truncate to {length}", data[:length]
    for _ in range(200):
        pos = rng.randrange(n + 1)
        yield f"insert at {pos}", data[:pos] + rng.randbytes(rng.randrange(1, 17)) + data[pos:]


def test_fuzz_every_damaged_checkpoint_is_a_checkpoint_error(resumable, tmp_path):
    data = resumable.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    intact = load_checkpoint(resumable)
    assert intact.progress["step"] == 3 and "rng/cpu" in intact.tensors
    target, tried, wrong = tmp_path / "last.safetensors", 0, []
    for what, mutated in mutations(data, header_end, random.Random(0)):
        assert mutated != data
        target.write_bytes(mutated)
        tried += 1
        try:
            load_checkpoint(target)
            wrong.append(f"{what}: loaded")
        except CheckpointError:
            pass
        except Exception as e:  # noqa: BLE001 - the point: nothing but CheckpointError
            wrong.append(f"{what}: {type(e).__name__}: {e}")
    assert tried >= 1000
    assert not wrong, f"{len(wrong)} of {tried} mutations not refused with CheckpointError: {wrong[:5]}"


def rewrite(src: Path, dst: Path, **metadata) -> None:
    """``src`` with its metadata entries replaced (None: removed), written plainly (no digest update)."""
    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {**f.metadata(), **metadata}
    save_file(tensors, str(dst), metadata={k: v for k, v in meta.items() if v is not None})


def test_damage_messages_and_format_versions(resumable, tmp_path):
    data = bytearray(resumable.read_bytes())
    data[-1] ^= 1  # the last byte of tensor data: only the digest can tell
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped.safetensors is damaged .*sha256 does not match"):
        load_checkpoint(tmp_path / "flipped.safetensors")

    rewrite(resumable, tmp_path / "newer.safetensors", format=json.dumps("cpvt-checkpoint-3"))
    with pytest.raises(CheckpointError, match=r"written by a newer cpvt \(checkpoint format 3\).*reads formats 1 to 2"
                                              r": upgrade cpvt"):
        load_checkpoint(tmp_path / "newer.safetensors")

    rewrite(resumable, tmp_path / "no_digest.safetensors", sha256=None)  # format 2 must carry its digest
    with pytest.raises(CheckpointError, match="damaged.*sha256 entry is missing"):
        load_checkpoint(tmp_path / "no_digest.safetensors")

    # format 1 (before digests) still loads, with the same content
    rewrite(resumable, tmp_path / "v1.safetensors", sha256=None, format=json.dumps("cpvt-checkpoint-1"))
    old, new = load_checkpoint(tmp_path / "v1.safetensors"), load_checkpoint(resumable)
    assert old.meta == {**new.meta, "format": "cpvt-checkpoint-1"}
    assert old.tensors.keys() == new.tensors.keys() and all(torch.equal(old.tensors[k], new.tensors[k])
                                                            for k in new.tensors)
    # a plain safetensors file from elsewhere (no cpvt metadata) loads as weights, as before
    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
    assert load_checkpoint(tmp_path / "plain.safetensors").meta == {}
    save_file({"w": torch.ones(2)}, str(tmp_path / "theirs.safetensors"), metadata={"sha256": "ab" * 32})
    assert torch.equal(load_checkpoint(tmp_path / "theirs.safetensors").weights["w"], torch.ones(2))  # not our digest


def test_resuming_a_checkpoint_of_another_model_names_both(resumable, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.safetensors").write_bytes(resumable.read_bytes())  # a cpvt_micro_gap checkpoint
    with pytest.raises(CheckpointError, match=r"last.safetensors is a checkpoint of cpvt_micro_gap, not of "
                                              r"deit_micro: --resume continues the run"):
        engine.train(tiny_config(run, model="deit_micro"), resume=True)
    with pytest.raises(CheckpointError, match="holds a 'cpvt_micro_gap' model, not 'deit_micro'"):
        create_model("deit_micro", pretrained=resumable)
