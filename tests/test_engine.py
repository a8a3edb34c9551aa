"""Training engine: config, checkpoints, exact resume, NaN stop, DDP, eval, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights, poison_batch, run_weights, tiny_config

from cpvt.checkpoint import CheckpointError, load_checkpoint
from cpvt.cli import main
from cpvt.models import model_from_checkpoint
from cpvt.train.config import TrainConfig, resolve_config
from cpvt.train.engine import train
from cpvt.utils.errors import TrainingDiverged

REPO = Path(__file__).resolve().parents[1]
# -- config ------------------------------------------------------------------
def test_recipes_resolve_and_set_overrides_validate():
    cfg = resolve_config("cifar10", {"epochs": 3}, ["lr=0.002", "model.peg_kernel_size=5", "rrc_scale=[0.5,1]"])
    assert cfg.data == "cifar10" and cfg.epochs == 3 and cfg.lr == 0.002 and cfg.img_size == 32
    assert cfg.model_args == {"peg_kernel_size": 5} and cfg.rrc_scale == (0.5, 1)
    assert TrainConfig().scaled_lr() == pytest.approx(1e-3)  # 5e-4 * 1024 / 512
    with pytest.raises(ValueError, match="unknown config key 'learning_rate'"):
        resolve_config(None, None, ["learning_rate=1"])
    with pytest.raises(ValueError, match="expects int"):
        resolve_config(None, None, ["epochs=many"])
    with pytest.raises(ValueError, match="unknown recipe 'imagenet21k'"):
        resolve_config("imagenet21k")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_recipe_key_in_set_is_a_clear_cli_error(capsys, tmp_path):
    assert main(["train", "--data", "synthetic", "--out", str(tmp_path), "--set", "warmup=3"]) == 2
    assert "unknown config key 'warmup'" in capsys.readouterr().err


# -- training, checkpoints, resume --------------------------------------------
def test_train_writes_config_log_checkpoints_and_metrics(tmp_path):
    metrics = train(tiny_config(tmp_path))
    for name in ("config.json", "log.jsonl", "last.safetensors", "best.safetensors", "metrics.json"):
        assert (tmp_path / name).exists(), name
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for key in ("train_loss", "val_top1", "val_top5", "lr", "img_per_s"):
        assert key in log[0]
    assert metrics["best_val_top1"] == max(r["val_top1"] for r in log)
    ckpt = load_checkpoint(tmp_path / "best.safetensors")
    model = model_from_checkpoint(ckpt)
    assert model.model_name == "cpvt_micro_gap" and model.embed_dim == 32 and model.num_classes == 10


def test_crash_mid_epoch_then_resume_gives_identical_weights(tmp_path, monkeypatch):
    train(tiny_config(tmp_path / "full", ckpt_every_steps=3, ema=True, ema_decay=0.9))
    import cpvt.train.tasks as tasks

    calls, real = {"n": 0}, tasks.mix_batch

    def crash_on_the_12th_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:  # epoch 2, step 4: one step after a mid-epoch checkpoint
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "mix_batch", crash_on_the_12th_step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "part", ckpt_every_steps=3, ema=True, ema_decay=0.9))
    assert calls["n"] == 12  # the crash hit step 12 of 16 (2 epochs of 8): the run was unfinished
    assert not (tmp_path / "part" / "metrics.json").exists()
    progress = load_checkpoint(tmp_path / "part" / "last.safetensors").progress
    assert (progress["epoch"], progress["step"]) == (1, 3)
    calls["n"] = 0

    def count(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "mix_batch", count)
    train(tiny_config(tmp_path / "part", ckpt_every_steps=3, ema=True, ema_decay=0.9), resume=True)
    assert calls["n"] == 16 - 11  # the resume ran only the steps after the checkpoint (8 + 3 done), not the run again
    assert_same_weights(tmp_path / "full", tmp_path / "part", ema=True)
    log = (tmp_path / "part" / "log.jsonl").read_text()
    assert "val_top1_ema" in log


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_metrics(tmp_path, monkeypatch):
    import cpvt.train.tasks as tasks

    first = train(tiny_config(tmp_path, epochs=1))
    stamp = (tmp_path / "last.safetensors").stat().st_mtime_ns
    calls = {"n": 0}
    real = tasks.mix_batch

    def count(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "mix_batch", count)
    again = train(tiny_config(tmp_path, epochs=1), resume=True)
    assert calls["n"] == 0 and (tmp_path / "last.safetensors").stat().st_mtime_ns == stamp
    assert again == first  # the last epoch's numbers (train loss, top-1 ...), not only the summary
    assert json.loads((tmp_path / "metrics.json").read_text()) == first


def test_resume_refuses_a_different_config(tmp_path):
    train(tiny_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="different config.*lr"):
        train(tiny_config(tmp_path, epochs=1, lr=0.5), resume=True)


def test_resume_accepts_a_run_saved_before_a_config_key_existed(tmp_path):
    """A checkpoint written before a field was added (here train_sizes) reads as that field's default."""
    from cpvt.train.engine import _config_diff

    new = TrainConfig().to_dict()
    old = {k: v for k, v in new.items() if k != "train_sizes"}
    assert _config_diff(old, new) == []
    assert _config_diff(old, {**new, "train_sizes": [16, 32]}) == ["train_sizes: [] -> [16, 32]"]


# -- mixed-resolution training ------------------------------------------------
def test_step_sizes_are_a_function_of_seed_and_epoch():
    from cpvt.train.engine import step_sizes

    a = step_sizes((16, 24, 32), seed=0, epoch=3, steps=200)
    assert a == step_sizes((16, 24, 32), seed=0, epoch=3, steps=200)  # resume and every DDP rank agree
    assert set(a) == {16, 24, 32} and all(40 < a.count(s) < 100 for s in (16, 24, 32))
    assert a != step_sizes((16, 24, 32), seed=0, epoch=4, steps=200)
    assert a != step_sizes((16, 24, 32), seed=1, epoch=3, steps=200)
    assert step_sizes((16,), seed=0, epoch=0, steps=5) == [16] * 5


def test_mixed_resolution_training_feeds_every_size_and_evaluates_at_img_size(tmp_path, monkeypatch, capsys):
    import cpvt.train.tasks as tasks

    seen, real = [], tasks.mix_batch

    def record(x, *args, **kwargs):
        seen.append(tuple(x.shape[-2:]))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(tasks, "mix_batch", record)
    train(tiny_config(tmp_path, train_sizes=[16, 24, 32]))
    assert set(seen) == {(16, 16), (24, 24), (32, 32)}
    assert "steps of 32 at 16/24/32px" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "best.safetensors").config["train_sizes"] == [16, 24, 32]


@pytest.mark.parametrize("sizes, message", [([16, 18], "multiple"), ([16, -8], "positive integers"),
                                            ([16, True], "positive integers")])
def test_bad_train_sizes_are_clear_errors(tmp_path, sizes, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(tmp_path, train_sizes=sizes))


def test_sigkill_at_any_point_then_resume_gives_the_same_final_weights(tmp_path):
    """A run killed with SIGKILL mid-training and resumed ends exactly like an uninterrupted one."""
    args = ["--data", "synthetic", "--model", "cpvt_micro_gap", "--img-size", "16", "--epochs", "3",
            "--batch-size", "16", "--recipe", "synthetic"]
    sets = ["train_limit=320", "val_limit=32", "ckpt_every_steps=3", "model.depth=2", "model.embed_dim=32",
            "model.num_heads=2", "randaug_n=1", "mixup=0.8", "cutmix=1.0", "drop_path=0.1"]
    cmd = [sys.executable, "-m", "cpvt", "train", *args] + [f"--set={s}" for s in sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start_and_wait_for_the_first_checkpoint(out: Path) -> tuple[subprocess.Popen, float]:
        proc = subprocess.Popen(cmd + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (out / "last.safetensors").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert (out / "last.safetensors").exists(), "no checkpoint was written"
        return proc, time.perf_counter()

    ref, _ = start_and_wait_for_the_first_checkpoint(tmp_path / "ref")
    assert ref.wait() == 0

    def version(path: Path) -> tuple[int, int]:  # each checkpoint write replaces the file (a new inode)
        st = path.stat()
        return st.st_ino, st.st_mtime_ns

    run = tmp_path / "killed"
    proc, t = start_and_wait_for_the_first_checkpoint(run)
    seen = [version(run / "last.safetensors")]
    while len(seen) < 3 and proc.poll() is None:  # two more writes (3 of 20): the pace on this machine, now
        v = version(run / "last.safetensors")
        if v != seen[-1]:
            seen.append(v)
        time.sleep(0.005)
    # half a checkpoint interval later: mid-step or mid-write, 16 or more writes before the end whatever the load
    time.sleep(0.25 * (time.perf_counter() - t))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # the kill hit an unfinished run: its last checkpoint is short of the end (3 epochs of 20 steps), no metrics
    progress = load_checkpoint(run / "last.safetensors").progress
    assert (0, 0) < (progress["epoch"], progress["step"]) < (3, 0), progress
    assert not (run / "metrics.json").exists()
    r = subprocess.run(cmd + ["--out", str(run), "--resume"], check=True, env=env, capture_output=True, text=True)
    # and the resume continued from that checkpoint rather than training again from the start
    assert f"resuming {run} from epoch {progress['epoch']} step {progress['step']}" in r.stdout
    assert_same_weights(tmp_path / "ref", run)
    assert not list(run.glob(".*.tmp"))  # no temporary files left behind


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    poison_batch(monkeypatch, 7)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1 step 7.*last good checkpoint is kept"):
        train(tiny_config(tmp_path, ckpt_every_steps=3))
    progress = load_checkpoint(tmp_path / "last.safetensors").progress
    assert (progress["epoch"], progress["step"]) == (0, 6)
    assert all(torch.isfinite(v).all() for k, v in run_weights(tmp_path).items() if "/" not in k)


def test_checking_every_few_steps_catches_a_nan_before_any_checkpoint_and_changes_no_weight(tmp_path, monkeypatch):
    """On an accelerator the loop synchronises every few steps (``sync_interval``), here forced on the CPU: a NaN
    loss is still caught before the next checkpoint, and a run without one ends with the same weights."""
    import cpvt.train.engine as engine

    train(tiny_config(tmp_path / "every-step", epochs=1))
    monkeypatch.setattr(engine, "sync_interval", lambda device: 4)
    train(tiny_config(tmp_path / "every-4", epochs=1))
    assert_same_weights(tmp_path / "every-step", tmp_path / "every-4")

    poison_batch(monkeypatch, 7)
    with pytest.raises(TrainingDiverged, match=r"loss was not finite at a step of epoch 1 between step 7 and step 8 "
                                               r"\(checked every 4 steps on cpu\).*last good checkpoint is kept"):
        train(tiny_config(tmp_path / "nan", ckpt_every_steps=3))
    progress = load_checkpoint(tmp_path / "nan" / "last.safetensors").progress
    assert (progress["epoch"], progress["step"]) == (0, 6)  # checked before it was written (step 6: a checkpoint)
    assert all(torch.isfinite(v).all() for k, v in run_weights(tmp_path / "nan").items() if "/" not in k)


# -- checkpoint safety -----------------------------------------------------------
class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickled_checkpoint_with_payload_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {"w": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()
    assert main(["eval", str(tmp_path / "evil.pth")]) == 2


def test_plain_state_dict_and_corrupt_files(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "plain.pth")
    assert torch.equal(load_checkpoint(tmp_path / "plain.pth").weights["w"], torch.ones(2))
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


# -- evaluation -----------------------------------------------------------------
def test_eval_at_several_sizes_json_and_plot(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1))
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["eval", str(run), str(run / "last.safetensors"), "--img-sizes", "16,24,32", "--limit", "64",
                 "--json", str(out_json), "--plot", str(out_png)]) == 0
    results = json.loads(out_json.read_text())
    assert len(results) == 2 and set(results[0]["sizes"]) == {"16", "24", "32"}
    assert 0 <= results[0]["sizes"]["24"]["top1"] <= 100
    assert out_png.stat().st_size > 1000
    assert "top-1 @32" in capsys.readouterr().out


def test_eval_set_rebuilds_the_trained_model_with_an_inference_option(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1))
    args = ["eval", str(run), "--img-sizes", "16,32", "--limit", "64", "--json"]
    assert main(args + [str(tmp_path / "plain.json")]) == 0
    assert main(args + [str(tmp_path / "fixed.json"), "--set", "model.peg_fixed_grid=True"]) == 0
    plain, fixed = (json.loads((tmp_path / f"{n}.json").read_text())[0] for n in ("plain", "fixed"))
    assert fixed["model_overrides"] == {"peg_fixed_grid": True} and "model_overrides" not in plain
    untimed = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert untimed(fixed["sizes"]["16"]) == untimed(plain["sizes"]["16"])  # on the training grid it is the same model
    assert fixed["sizes"]["32"]["loss"] != plain["sizes"]["32"]["loss"]  # elsewhere the PEG runs on a resampled grid
    capsys.readouterr()
    assert main(["eval", str(run), "--set", "lr=1"]) == 2
    assert "model options only" in capsys.readouterr().err
    assert main(["eval", str(run), "--set", "model.peg_kernel_size=5"]) == 2  # would change the weights' shapes
    assert "cannot rebuild cpvt_micro_gap" in capsys.readouterr().err


def test_eval_errors(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1))
    assert main(["eval", str(run), "--img-sizes", "18"]) == 2
    assert "input size 18x18 is not valid for patch size 4" in capsys.readouterr().err
    # a class-count mismatch between checkpoint and data
    folder = tmp_path / "three"
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b", "c"):
            (folder / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16), (10, 20, 30)).save(folder / split / c / "x.png")
    assert main(["eval", str(run), "--data", str(folder)]) == 2
    assert "trained on 10 classes but" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2


def test_train_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--model", "cpvt_micro", "--out", str(tmp_path)]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--model", "cpvt_micro", "--img-size", "30", "--out", str(tmp_path),
                 "--set", "train_limit=64", "--set", "val_limit=16", "--epochs", "1"]) == 2
    assert "input size 30x30 is not valid" in capsys.readouterr().err


# -- distributed ----------------------------------------------------------------
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) and one process with the same global batch
    end with the same weights when the step has no per-process randomness."""
    sets = ["train_limit=128", "val_limit=32", "model.depth=2", "model.embed_dim=32", "model.num_heads=2",
            "amp=off", "clip_grad=None"]
    common = ["train", "--data", "synthetic", "--model", "cpvt_micro_gap", "--img-size", "16", "--epochs", "1",
              "--batch-size", "32", "--recipe", "synthetic"] + [f"--set={s}" for s in sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "cpvt", *common, "--out", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    r = subprocess.run(torchrun + ["-m", "cpvt", *common, "--out", str(tmp_path / "two")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = run_weights(tmp_path / "one"), run_weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a if "/" not in k)
    assert "on 2 x cpu" in r.stdout


def test_a_new_run_in_a_used_folder_starts_a_new_log(tmp_path):
    """Training again without --resume replaces the run; its log must not carry the old run's epochs."""
    train(tiny_config(tmp_path / "run"))
    train(tiny_config(tmp_path / "run", epochs=1))
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert epochs == [1]


@pytest.mark.parametrize("attention, device, tokens, dtype, math_only", [
    ("auto", "cpu", 65, None, False),  # fp32: the fused kernel is 1.4-1.9x faster (benchmarks/attention_backends.py)
    ("auto", "cpu", 65, torch.bfloat16, True),  # bf16, short: the math path is about 3.5x faster
    ("auto", "cpu", 257, torch.bfloat16, False),
    ("auto", "cuda", 65, torch.bfloat16, False),
    ("math-short", "cpu", 65, None, True),  # the rule the committed classification records were trained with
    ("math-short", "cpu", 257, None, False),
    ("math", "cpu", 257, None, True),
    ("default", "cpu", 65, torch.bfloat16, False),
])
def test_attention_auto_takes_the_math_path_only_where_it_measured_faster(attention, device, tokens, dtype, math_only):
    from cpvt.train.engine import attention_context

    cfg = TrainConfig(attention=attention)
    with attention_context(cfg, torch.device(device), tokens, dtype):
        fused_allowed = torch.backends.cuda.flash_sdp_enabled()  # sdpa_kernel's switch, the CPU's fused kernel too
    assert fused_allowed is not math_only
    with pytest.raises(ValueError, match="math-short"):
        attention_context(TrainConfig(attention="fast"), torch.device("cpu"), 65)
