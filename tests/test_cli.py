"""The command line is a thin layer: check its output and its errors."""

import json

from cpvt.cli import main


def test_info_json_reports_counts_and_flops(capsys):
    assert main(["info", "cpvt_ti", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 5_681_512 and info["pos_params"] == 1_920
    assert info["grid"] == [14, 14] and info["tokens"] == 197
    assert abs(info["gflops"] - 2.51) < 0.025


def test_info_table_with_overrides_and_size(capsys):
    assert main(["info", "cpvt_micro", "--img-size", "48x64", "--set", "model.peg_positions=[0,1]"]) == 0
    out = capsys.readouterr().out
    assert "12x16 (+1 prefix) = 193 tokens" in out
    assert "2,560" in out  # two PEGs of 128 channels: 2 * (128*9 + 128)


def test_models_lists_by_pattern(capsys):
    assert main(["models", "cpvt_ti*"]) == 0
    out = capsys.readouterr().out
    assert "cpvt_ti_plus" in out and "5,689,192" in out and "deit_tiny" not in out


def test_errors_are_one_clear_line(capsys):
    assert main(["info", "nope_model"]) == 2
    assert "unknown model 'nope_model'" in capsys.readouterr().err
    assert main(["info", "deit_tiny", "--img-size", "100"]) == 2
    assert "input size 100x100 is not valid for patch size 16" in capsys.readouterr().err
    assert main(["models", "zzz*"]) == 1


def test_encodings_lists_every_scheme(capsys):
    assert main(["encodings"]) == 0
    out = capsys.readouterr().out
    for name in ("none", "ape", "sincos", "rpe", "peg", "peg_qk_only"):
        assert name in out
