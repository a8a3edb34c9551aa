"""``pretrained_cfg``: every model carries what it expects of its input, checkpoints store it, and evaluation,
prediction, export and the analyses read it (not recipe defaults)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import cpvt
from cpvt.checkpoint import load_checkpoint, save_checkpoint
from cpvt.models import model_from_checkpoint
from cpvt.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, KEYS
from cpvt.train.config import apply_overrides, resolve_config
from cpvt.train.engine import train


def test_every_registry_model_carries_a_complete_pretrained_cfg():
    with torch.device("meta"):
        for name in cpvt.list_models():
            model = cpvt.create_model(name)
            cfg = model.pretrained_cfg
            assert set(cfg) == set(KEYS), name
            h, w = model.img_size
            assert cfg["input_size"] == [3, h, w] and cfg["num_classes"] == model.num_classes, name
            assert cfg["grid"] == list(model.grid_for((h, w))), name
            assert cfg["mean"] == list(IMAGENET_MEAN) and cfg["std"] == list(IMAGENET_STD), name
            json.dumps(cfg)  # stored as JSON in checkpoints and export metadata


def test_a_model_built_at_another_size_records_that_size_and_grid():
    cfg = cpvt.create_model("cpvt_micro", img_size=(48, 64), num_classes=7).pretrained_cfg
    assert cfg["input_size"] == [3, 48, 64] and cfg["grid"] == [12, 16] and cfg["num_classes"] == 7


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run whose normalisation, crop and size differ from every default, so a reader that falls back to
    a default is caught."""
    out = tmp_path_factory.mktemp("run")
    cfg = resolve_config("synthetic", {"out": str(out)})
    apply_overrides(cfg, {"model": "cpvt_micro", "img_size": 24, "epochs": 1, "batch_size": 32, "train_limit": 64,
                          "val_limit": 32, "warmup_epochs": 0.5, "model.depth": 2, "model.embed_dim": 32,
                          "model.num_heads": 4, "mean": (0.4, 0.45, 0.5), "std": (0.2, 0.21, 0.22),
                          "crop_pct": 0.9})
    train(cfg)
    return out


EXPECTED = {"input_size": [3, 24, 24], "mean": [0.4, 0.45, 0.5], "std": [0.2, 0.21, 0.22], "crop_pct": 0.9,
            "interpolation": "bicubic", "num_classes": 10, "grid": [6, 6]}


def test_checkpoints_store_the_runs_pretrained_cfg_and_models_come_back_with_it(run):
    for name in ("best.safetensors", "last.safetensors"):
        ckpt = load_checkpoint(run / name)
        assert ckpt.meta["pretrained_cfg"] == EXPECTED
        assert model_from_checkpoint(ckpt).pretrained_cfg == EXPECTED
    assert cpvt.create_model("cpvt_micro", pretrained=run).pretrained_cfg == EXPECTED
    assert cpvt.load_run(run).model.pretrained_cfg == EXPECTED


def test_a_checkpoint_from_before_pretrained_cfg_gets_it_from_its_run_config(run, tmp_path):
    ckpt = load_checkpoint(run / "best.safetensors")
    old = {k: v for k, v in ckpt.meta.items() if k != "pretrained_cfg"}
    model = model_from_checkpoint(ckpt)
    del model.pretrained_cfg
    save_checkpoint(tmp_path / "old.safetensors", model, config=old["config"], classes=old["classes"])
    assert "pretrained_cfg" not in load_checkpoint(tmp_path / "old.safetensors").meta
    assert model_from_checkpoint(tmp_path / "old.safetensors").pretrained_cfg == EXPECTED


def test_plain_weights_get_the_registry_default(tmp_path):
    model = cpvt.create_model("cpvt_micro", num_classes=3)
    save_file(model.state_dict(), str(tmp_path / "plain.safetensors"))
    loaded = cpvt.create_model("cpvt_micro", num_classes=3, pretrained=tmp_path / "plain.safetensors")
    assert loaded.pretrained_cfg == model.pretrained_cfg


def _doctored(run, tmp_path, **changes):
    """The run's checkpoint with its pretrained_cfg changed and its config's preprocessing removed: only a reader
    of pretrained_cfg can find the values."""
    ckpt = load_checkpoint(run / "best.safetensors")
    model = model_from_checkpoint(ckpt)
    model.pretrained_cfg = {**model.pretrained_cfg, **changes}
    config = {k: v for k, v in ckpt.config.items() if k not in ("mean", "std", "crop_pct", "img_size")}
    config["data"] = ckpt.config["data"]
    path = tmp_path / "doctored.safetensors"
    save_checkpoint(path, model, config=config, classes=ckpt.classes)
    return path


CHANGED = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7], "crop_pct": 0.8, "input_size": [3, 28, 28]}


def test_predict_reads_the_pretrained_cfg(run, tmp_path):
    pre = cpvt.load_run(_doctored(run, tmp_path, **CHANGED)).preprocess
    assert (pre.img_size, pre.crop_pct, pre.mean, pre.std) == (28, 0.8, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))


def test_evaluation_reads_the_pretrained_cfg(run, tmp_path, monkeypatch):
    import cpvt.train.evaluate as ev

    seen = []

    def fake_evaluate(model, split, device, mean, std, *args, **kwargs):
        seen.append((split.images.shape[-1], list(mean), list(std)))
        return {"top1": 0.0, "top5": 0.0, "loss": 0.0, "images": len(split)}

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    crops = []
    from cpvt import data  # evaluate_runs imports open_source from here at call time

    real_open = data.open_source

    def spy_open(*args, **kwargs):
        source = real_open(*args, **kwargs)
        split = source.split

        def spy_split(name, size, mode="train", crop_pct=0.875, limit=None):
            crops.append(crop_pct)
            return split(name, size, mode=mode, crop_pct=crop_pct, limit=limit)

        source.split = spy_split
        return source

    monkeypatch.setattr(data, "open_source", spy_open)
    rows = ev.evaluate_runs([str(_doctored(run, tmp_path, **CHANGED))], limit=8)
    assert seen == [(28, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7])] and crops == [0.8]
    assert rows[0]["train_size"] == 28 and rows[0]["crop_pct"] == 0.8


def test_export_and_analysis_read_the_pretrained_cfg(run, tmp_path):
    from cpvt.deploy.export import load_subject as export_subject
    from cpvt.study.analyze import load_subject as analysis_subject

    path = _doctored(run, tmp_path, **CHANGED)
    _, meta = export_subject(str(path))
    assert (meta["img_size"], meta["crop_pct"], meta["mean"], meta["std"]) == (28, 0.8, CHANGED["mean"], CHANGED["std"])
    assert meta["pretrained_cfg"]["input_size"] == [3, 28, 28]
    subject = analysis_subject(str(path))
    assert (subject.img_size, subject.mean, subject.std) == (28, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    # a random registry model: its registry default, not a constant of the analysis
    random = analysis_subject("cpvt_micro")
    assert (random.mean, random.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_a_damaged_pretrained_cfg_is_a_clear_error(run, tmp_path):
    src = run / "best.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["pretrained_cfg"] = json.dumps({"mean": [0.5, 0.5, 0.5]})
    meta.pop("sha256", None)
    meta["format"] = json.dumps("cpvt-checkpoint-1")  # format 1: no digest to keep
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="pretrained_cfg lacks crop_pct"):
        model_from_checkpoint(tmp_path / "bad.safetensors")
