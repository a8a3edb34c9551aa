"""One way to set options: ``--set`` on every command that builds or loads a model, ``train``'s flags as
aliases of config keys in one table, one size syntax, named exit codes."""

import argparse

from pathlib import Path

import pytest
import torch

from cpvt import cli
from cpvt.cli import TRAIN_FLAGS, build_parser, main
from cpvt.study import reproduce as rp
from cpvt.train.config import TrainConfig
from cpvt.utils import errors

MODEL_COMMANDS = ("info", "train", "eval", "demo", "reproduce", "convert", "analyze", "export", "predict")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_command_that_builds_or_loads_a_model_takes_set():
    parsers = subparsers()
    missing = [c for c in MODEL_COMMANDS if "--set" not in options_of(parsers[c])]
    assert not missing, f"commands without --set: {missing}"


def test_train_flags_are_exactly_the_aliases_in_the_table_and_name_real_config_keys():
    fields = set(TrainConfig.__dataclass_fields__)
    assert all(key in fields for key, _ in TRAIN_FLAGS.values())
    train = options_of(subparsers()["train"])
    flags = {s for s in train if s.startswith("--")} - {"--help", "--set", "--recipe", "--resume"}
    assert flags == set(TRAIN_FLAGS), "a train flag that is no alias of a config key, or an alias not in the table"
    assert "--save-every-steps" in subparsers()["train"].format_help()  # the table is printed in -h
    assert "ckpt_every_steps" in subparsers()["train"].format_help()


@pytest.mark.parametrize("flag, value, key, expected", [
    ("--epochs", "3", "epochs", 3), ("--save-every-steps", "7", "ckpt_every_steps", 7),
    ("--compile", None, "compile", True), ("--img-size", "48x48", "img_size", 48), ("--batch-size", "16", "batch_size", 16),
])
def test_a_train_flag_gives_the_same_config_as_its_set(flag, value, key, expected, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr("cpvt.train.engine.train", lambda cfg, resume=False: seen.append(cfg))
    base = ["train", "--data", "synthetic", "--out", str(tmp_path)]
    assert main(base + [flag] + ([value] if value else [])) == errors.EXIT_OK
    assert main(base + ["--set", f"{key}={expected}"]) == errors.EXIT_OK
    assert getattr(seen[0], key) == expected and seen[0].to_dict() == seen[1].to_dict()
    # a --set of the same key wins over the flag
    other = {bool: False, int: 5}[type(expected)]
    assert main(base + [flag] + ([value] if value else []) + ["--set", f"{key}={other}"]) == errors.EXIT_OK
    assert getattr(seen[2], key) == other


def size_options() -> list[tuple[str, str]]:
    return [(cmd, opt) for cmd, parser in subparsers().items() for opt, action in options_of(parser).items()
            if opt in ("--img-size", "--img-sizes", "--verify-sizes")]


def square(v):
    """A parsed size with NxN written as N, so the two spellings compare equal."""
    if isinstance(v, list):
        return [square(s) for s in v]
    return v[0] if isinstance(v, tuple) and v[0] == v[1] else v


def test_every_size_option_parses_n_and_nxn_the_same_way():
    found = size_options()
    assert len(found) >= 8, found  # info, train, eval, analyze (2), export (2), predict
    for cmd, opt in found:
        action = options_of(subparsers()[cmd])[opt]
        assert square(action.type("32")) == square(action.type("32x32")) in (32, [32]), (cmd, opt)
        if opt.endswith("s"):
            assert square(action.type("32,48")) == [32, 48], (cmd, opt)
        with pytest.raises(argparse.ArgumentTypeError):
            action.type("0")
        with pytest.raises(argparse.ArgumentTypeError):
            action.type("32x")


def test_non_square_sizes_pass_where_the_pipeline_takes_them_and_are_refused_with_a_reason_elsewhere(capsys):
    assert options_of(subparsers()["info"])["--img-size"].type("48x64") == (48, 64)
    assert options_of(subparsers()["export"])["--verify-sizes"].type("32,48x64") == [32, (48, 64)]
    # eval takes HxW (a segmentation run tests whole frames at any size; a classification run refuses it later)
    assert options_of(subparsers()["eval"])["--img-sizes"].type("32,48x64") == [32, (48, 64)]
    with pytest.raises(SystemExit) as e:
        main(["train", "--img-size", "48x64"])
    assert e.value.code == errors.EXIT_BAD_INPUT and "square" in capsys.readouterr().err


def test_exit_codes_are_named_and_distinct():
    codes = {k: v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert len(set(codes.values())) == len(codes) >= 7
    assert main(["models", "no_such_model*"]) == errors.EXIT_NOTHING
    assert main(["info", "cpvt_micro", "--set", "model.no_such_option=1"]) == errors.EXIT_BAD_INPUT
    source = open(cli.__file__).read()
    assert "return 0" not in source and "return 2" not in source  # the cli returns names, not numbers


def test_experiments_are_found_in_the_repository_from_any_folder(tmp_path, monkeypatch):
    """Outside the repository (no ./experiments, no CPVT_EXPERIMENTS) the repository's own folder is used."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CPVT_EXPERIMENTS", raising=False)
    assert rp.experiments_dir() == Path(__file__).resolve().parents[1] / "experiments"


def test_reproduce_set_changes_the_runs_it_names_and_execution_keys_do_not(tmp_path):
    root = rp.experiments_dir()
    base = {j.dir.name for j in rp.plan(root, "smoke", ["T1"], tmp_path)}
    same = {j.dir.name for j in rp.plan(root, "smoke", ["T1"], tmp_path, sets=[("workers", 0)])}
    changed = rp.plan(root, "smoke", ["T1"], tmp_path, sets=[("lr", 1e-3), ("model.drop_path_rate", 0.0)])
    assert same == base and not ({j.dir.name for j in changed} & base)
    assert all(j.config.lr == 1e-3 for j in changed)
    with pytest.raises(ValueError, match="--out of their own"):
        rp.reproduce("T1", budget="smoke", sets=[("lr", 1e-3)])


def test_predict_set_rebuilds_the_trained_model_with_the_option(tmp_path, monkeypatch):
    seen = {}

    def fake_load_run(run, img_size=None, device="cpu", **overrides):
        seen.update(overrides)
        raise ValueError("stop here")

    monkeypatch.setattr("cpvt.deploy.predict.load_run", fake_load_run)
    code = main(["predict", str(tmp_path), str(tmp_path), "--set", "model.peg_fixed_grid=dilate"])
    assert code == errors.EXIT_BAD_INPUT and seen == {"peg_fixed_grid": "dilate"}
    with pytest.raises(ValueError, match="--onnx"):
        from cpvt.deploy.predict import predict
        predict(tmp_path, [tmp_path], onnx=tmp_path / "m.onnx", overrides={"peg_fixed_grid": "dilate"})


def test_load_run_takes_model_options(tmp_path):
    from cpvt.checkpoint import save_checkpoint
    from cpvt.deploy.predict import load_run

    torch.manual_seed(0)
    model = cli.create_model("cpvt_micro", num_classes=3, depth=2)
    save_checkpoint(tmp_path / "m.safetensors", model, config={"img_size": 32}, classes=["a", "b", "c"])
    plain = load_run(tmp_path / "m.safetensors").model
    dilated = load_run(tmp_path / "m.safetensors", peg_fixed_grid="dilate").model
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(plain(x), dilated(x))
        assert torch.equal(plain(x[..., :32, :32]), dilated(x[..., :32, :32]))  # same model on its training grid
