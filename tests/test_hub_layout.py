"""The Hugging Face Hub layout (issue #38 item 5): ``config.json`` + ``model.safetensors``.

A model or a trained run saved with ``cpvt.save_pretrained`` (or ``cpvt export RUN --format hub``) comes back
through ``create_model(name, pretrained=FOLDER)`` with identical outputs, its stored options the defaults under
the caller's overrides, as a cpvt checkpoint does. Local folders only: a Hub id goes through a stand-in for
``huggingface_hub``, and its absence is a clear install message. No network.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cpvt
from conftest import tiny_config
from cpvt.checkpoint import CheckpointError, is_hub_id
from cpvt.cli import main


def outputs(model, *sizes: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    """The model's outputs (eval mode) on a seeded random batch of 2 at each size."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return [model.eval()(torch.randn(2, 3, h, w, generator=gen)) for h, w in sizes]


def assert_same_outputs(a, b, *sizes: tuple[int, int]) -> None:
    for size, ya, yb in zip(sizes, outputs(a, *sizes), outputs(b, *sizes)):
        assert torch.equal(ya, yb), f"outputs differ at {size}: max |diff| {(ya - yb).abs().max().item():.2e}"


def test_a_classifier_round_trips_through_exactly_two_files(tmp_path):
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_micro", num_classes=5, peg_kernel_size=5).eval()
    folder = cpvt.save_pretrained(model, tmp_path / "hub", classes=["ant", "bee", "cat", "dog", "eel"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["library_name"] == "cpvt" and config["architecture"] == "cpvt_micro"
    assert config["model_args"] == json.loads(json.dumps(model.model_args))  # peg_kernel_size=5 and all
    assert config["model_args"]["peg_kernel_size"] == 5 and config["num_classes"] == 5
    assert config["pretrained_cfg"] == model.pretrained_cfg
    assert config["label_names"] == ["ant", "bee", "cat", "dog", "eel"]

    loaded = cpvt.create_model("cpvt_micro", pretrained=folder)  # 5 classes and kernel 5 from the folder
    assert loaded.model_args == model.model_args and loaded.pretrained_cfg == model.pretrained_cfg
    assert_same_outputs(model, loaded, (32, 32), (24, 40))  # the training size and a non-square one
    # the same folder through the run loaders: classes and preprocessing from config.json
    run = cpvt.load_run(folder)
    assert run.classes == ["ant", "bee", "cat", "dog", "eel"] and run.preprocess.img_size == 32
    assert_same_outputs(model, run.model, (24, 40))


def test_a_segmentation_model_with_its_grid_fix_round_trips(tmp_path):
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_micro", task="segmentation", num_classes=11, fixed_grid="auto").eval()
    folder = cpvt.save_pretrained(model, tmp_path / "seg")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"]["task"] == "segmentation" and config["model_args"]["fixed_grid"] == "auto"
    assert "label_names" not in config  # none given, none invented

    loaded = cpvt.create_model("cpvt_micro", pretrained=folder)
    assert type(loaded).__name__ == "SegmentationModel" and loaded.model_args == model.model_args
    big = (64, 96)  # twice the training grid and non-square: where the grid fix acts
    assert_same_outputs(model, loaded, (32, 32), big)
    assert outputs(loaded, big)[0].shape == (2, 11, 64, 96)
    # the stored fix matters: switched off, the same weights give other outputs at 2x
    off = cpvt.create_model("cpvt_micro", pretrained=folder, fixed_grid="off")
    assert "fixed_grid" not in off.model_args
    assert not torch.allclose(outputs(off, big)[0], outputs(loaded, big)[0])


def test_overrides_on_load_go_over_the_stored_options(tmp_path):
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_micro", num_classes=3).eval()
    folder = cpvt.save_pretrained(model, tmp_path / "hub")
    assert "fixed_grid" not in json.loads((folder / "config.json").read_text())["model_args"]
    auto = cpvt.create_model("cpvt_micro", pretrained=folder, fixed_grid="auto")
    assert auto.model_args["fixed_grid"] == "auto" and auto.num_classes == 3
    model.set_fixed_grid("auto")
    assert_same_outputs(model, auto, (64, 64), (48, 80))
    # an override that changes the weights' shapes is refused, naming the tensors
    with pytest.raises(CheckpointError, match=r"does not fit cpvt_micro: wrong shape: head\.bias"):
        cpvt.create_model("cpvt_micro", pretrained=folder, num_classes=7)


def test_a_folder_of_another_model_is_refused_by_name(tmp_path):
    folder = cpvt.save_pretrained(cpvt.create_model("cpvt_micro", num_classes=3), tmp_path / "hub")
    with pytest.raises(CheckpointError, match=r"holds a 'cpvt_micro' model, not 'deit_micro'.*create_model\('cpvt_micro'"):
        cpvt.create_model("deit_micro", pretrained=folder)


@pytest.mark.parametrize("gone", ["model.safetensors", "config.json"])
def test_a_missing_file_is_named(tmp_path, gone):
    folder = cpvt.save_pretrained(cpvt.create_model("cpvt_micro", num_classes=3), tmp_path / "hub")
    (folder / gone).unlink()
    with pytest.raises(CheckpointError, match=rf"hub/{gone} is missing: .* holds config\.json and model\.safetensors"):
        cpvt.create_model("cpvt_micro", pretrained=folder)


def test_a_run_folder_without_checkpoints_is_not_taken_for_a_hub_folder(tmp_path):
    # a run folder writes its training config as config.json before its first checkpoint
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "cpvt_micro", "data": "synthetic"}))
    with pytest.raises(CheckpointError, match=r"holds no best\.safetensors or last\.safetensors \(a cpvt run folder\)"):
        cpvt.create_model("cpvt_micro", pretrained=run)


def test_changed_weights_and_a_bad_config_are_clear_errors(tmp_path):
    folder = cpvt.save_pretrained(cpvt.create_model("cpvt_micro", num_classes=3), tmp_path / "hub")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one byte of tensor data
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged.*sha256 does not match"):
        cpvt.create_model("cpvt_micro", pretrained=folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not readable JSON"):
        cpvt.create_model("cpvt_micro", pretrained=folder)


def test_what_cannot_be_saved_is_refused(tmp_path):
    model = cpvt.create_model("cpvt_micro", num_classes=3)
    with pytest.raises(ValueError, match="2 class names for a 3-class model"):
        cpvt.save_pretrained(model, tmp_path / "a", classes=["x", "y"])
    with pytest.raises(ValueError, match="features_only"):
        cpvt.save_pretrained(cpvt.create_model("cpvt_micro", features_only=True), tmp_path / "b")
    with pytest.raises(ValueError, match="has no model_name"):
        cpvt.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "c")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a run folder \(it holds best\.safetensors\)"):
        cpvt.save_pretrained(model, tmp_path / "run")
    (tmp_path / "run" / "best.safetensors").unlink()  # a run not yet checkpointed: its config.json is kept
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "cpvt_micro"}))
    with pytest.raises(ValueError, match=r"is a run folder \(it holds config\.json, a training config\)"):
        cpvt.save_pretrained(model, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"model": "cpvt_micro"}
    cpvt.save_pretrained(model, tmp_path / "d")
    cpvt.save_pretrained(model, tmp_path / "d")  # saving over an earlier Hub folder is fine
    assert not any((tmp_path / d).exists() for d in "abc")  # nothing half-written


def test_another_librarys_hub_folder_loads_as_plain_weights(tmp_path):
    # timm's save_for_hf layout: its config.json (no cpvt library_name) names its own architecture and args
    torch.manual_seed(0)
    model = cpvt.create_model("deit_micro", num_classes=4).eval()
    folder = tmp_path / "timm"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 4,
                                                    "model_args": {"foo": 1}}))
    loaded = cpvt.create_model("deit_micro", num_classes=4, pretrained=folder)
    assert_same_outputs(model, loaded, (32, 32))
    with pytest.raises(CheckpointError, match="without a model description"):  # nothing to rebuild it from
        cpvt.load_run(folder)


def test_a_hub_id_without_huggingface_hub_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` raises ImportError
    with pytest.raises(CheckpointError, match=r"someone/cpvt-micro does not exist as a local path; .*Hub id .*"
                                              r"pip install huggingface_hub"):
        cpvt.create_model("cpvt_micro", pretrained="someone/cpvt-micro")
    # a mistyped path into a local folder, or a checkpoint file's name, is never taken for a Hub id
    (tmp_path / "runs").mkdir()
    for local in ("runs/typo", "someone/best.safetensors"):
        assert not is_hub_id(local)
        with pytest.raises(CheckpointError, match=r"does not exist \(expected a run folder or a checkpoint file\)"):
            cpvt.create_model("cpvt_micro", pretrained=local)


def test_a_hub_id_is_fetched_with_snapshot_download(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_micro", num_classes=3).eval()
    folder = cpvt.save_pretrained(model, tmp_path / "cache" / "snapshot")
    calls = []

    def snapshot_download(repo_id, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        if repo_id != "someone/cpvt-micro":
            raise FileNotFoundError(f"Repository Not Found for {repo_id}")
        return str(folder)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    loaded = cpvt.create_model("cpvt_micro", pretrained="someone/cpvt-micro")
    assert calls == [("someone/cpvt-micro", ["config.json", "model.safetensors"])]
    assert_same_outputs(model, loaded, (32, 32))
    with pytest.raises(CheckpointError, match=r"could not be fetched from the Hugging Face Hub \(FileNotFoundError: "
                                              r"Repository Not Found"):
        cpvt.create_model("cpvt_micro", pretrained="someone/other")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained run of a 2-block micro PEG model (synthetic shapes, 16 px, one short epoch)."""
    from cpvt.train.engine import train

    out = tmp_path_factory.mktemp("hub") / "run"
    train(tiny_config(out, epochs=1, train_limit=64, val_limit=32))
    return out


def test_a_trained_run_saves_with_its_classes(run, tmp_path):
    trained = cpvt.load_run(run)
    folder = cpvt.save_pretrained(run, tmp_path / "hub")
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == trained.classes and len(trained.classes) == trained.model.num_classes
    assert config["pretrained_cfg"] == trained.model.pretrained_cfg
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16]  # the run's training size, not the registry's
    again = cpvt.load_run(folder)
    assert again.classes == trained.classes and again.preprocess == trained.preprocess
    assert_same_outputs(trained.model, again.model, (16, 16), (16, 24))


def test_cli_export_format_hub_writes_a_verified_folder(run, tmp_path, capsys):
    out = tmp_path / "hub"
    assert main(["export", str(run), "--format", "hub", "--out", str(out), "--set", "model.fixed_grid=auto"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: cpvt_micro_gap" in printed and "Hugging Face Hub layout" in printed
    assert "verified at 3 sizes" in printed
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"]["fixed_grid"] == "auto" and config["label_names"] == cpvt.load_run(run).classes
    # the folder is itself a source for the other commands; it keeps no run config, so eval asks for the data
    assert main(["export", str(out), "--format", "pt2", "--out", str(tmp_path / "m.pt2")]) == 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 2
    assert "does not record the data it was trained on" in capsys.readouterr().err
    assert main(["eval", str(out), "--data", "synthetic", "--limit", "32", "--img-sizes", "16,24"]) == 0
    assert "cpvt_micro_gap" in capsys.readouterr().out
