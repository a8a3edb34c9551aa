"""The model-wide test-time switch ``fixed_grid``: ``"auto"`` gives each encoding its documented fix, an
encoding's own option wins, it round-trips through checkpoints, and eval / predict / export take it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import need_onnx
from test_inputs import tiny_run  # noqa: F401 - a fixture

from cpvt import create_model
from cpvt.checkpoint import load_checkpoint
from cpvt.cli import main
from cpvt.models import model_from_checkpoint

# the fix "auto" must pick for each encoding (None: the encoding has no test-time fix), as the docs state
DOCUMENTED = {
    "cpvt_micro": {"peg": "dilate"},
    "deit_micro_convffn": {"convffn": "dilate"},
    "deit_micro_rope": {"rope": "interpolate"},
    "deit_micro_rope_mixed": {"rope": "interpolate"},
    "deit_micro_sincos": {"sincos": "interpolate"},
    "deit_micro_pape": {"pape": "interpolate"},
    "cpvt_micro_rope_mixed": {"rope": "interpolate", "peg": "dilate"},
    "deit_micro": {},  # the APE: resampled to any grid, no fix
    "deit_micro_alibi": {},
    "deit_micro_lookhere": {},
    "deit_micro_nope": {},
}
SMALL = {"depth": 6, "embed_dim": 16, "num_heads": 2}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_auto_picks_each_encodings_documented_fix(name):
    torch.manual_seed(0)
    off = create_model(name, **SMALL).eval()
    auto = create_model(name, fixed_grid="auto", **SMALL).eval()
    auto.load_state_dict(off.state_dict())
    fixes = {e.name: e.fixed_grid for e in auto.modules() if hasattr(e, "GRID_FIXES") and e.GRID_FIXES}
    assert fixes == DOCUMENTED[name]
    assert auto.model_args["fixed_grid"] == "auto" and "fixed_grid" not in off.model_args
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(auto(x1), off(x1))  # the training grid: every fix is the trained model
        if DOCUMENTED[name]:  # 2x: the fixes change what runs, and equal setting each encoding's option by hand
            assert not torch.allclose(auto(x2), off(x2))
            by_hand = create_model(name, **SMALL, **{f"{k}_fixed_grid": v for k, v in DOCUMENTED[name].items()})
            by_hand.load_state_dict(off.state_dict())
            torch.testing.assert_close(auto(x2), by_hand.eval()(x2))
        else:
            torch.testing.assert_close(auto(x2), off(x2))


def test_an_encodings_own_option_wins_and_the_method_switches_a_built_model():
    m = create_model("cpvt_micro_rope_mixed", fixed_grid="auto", peg_fixed_grid="dilate_border", **SMALL)
    assert {e.name: e.fixed_grid for e in m.position_encodings()} == {"rope": "interpolate", "peg": "dilate_border"}
    seg = create_model("cpvt_micro", task="segmentation", **SMALL)
    assert seg.set_fixed_grid("auto") == {"peg": "dilate"} and seg.model_args["fixed_grid"] == "auto"
    assert seg.set_fixed_grid("off") == {"peg": None} and "fixed_grid" not in seg.model_args
    feats = create_model("cpvt_micro", features_only=True, **SMALL)
    assert feats.set_fixed_grid("auto") == {"peg": "dilate"}
    with pytest.raises(ValueError, match="fixed_grid must be 'off'.*'auto'"):
        create_model("cpvt_micro", fixed_grid="dilate")


def test_auto_round_trips_through_a_checkpoint_and_the_commands(tiny_run, tmp_path, capsys):  # noqa: F811
    run, data = tiny_run
    ckpt = load_checkpoint(run / "last.safetensors")
    auto = model_from_checkpoint(ckpt, fixed_grid="auto").eval()
    assert {e.name: e.fixed_grid for e in auto.position_encodings()} == {"peg": "dilate"}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(auto(x), model_from_checkpoint(ckpt, peg_fixed_grid="dilate").eval()(x))
    out = {}
    for opt in ("fixed_grid=auto", "peg_fixed_grid=dilate", "fixed_grid=off"):
        path = tmp_path / f"{opt}.json"
        assert main(["eval", str(run), "--data", str(data), "--img-sizes", "16,32", "--set", f"model.{opt}",
                     "--json", str(path)]) == 0
        out[opt] = {s: (r["top1"], r["loss"]) for s, r in json.loads(path.read_text())[0]["sizes"].items()}
    assert out["fixed_grid=auto"] == out["peg_fixed_grid=dilate"]
    assert out["fixed_grid=auto"]["16"] == out["fixed_grid=off"]["16"]  # the training size: as trained
    assert out["fixed_grid=auto"]["32"][1] != out["fixed_grid=off"]["32"][1]  # 2x: the dilated PEG computes
    capsys.readouterr()
    image = next((data / "val").rglob("*.png"))
    probs = {}
    for opt in ("fixed_grid=auto", "peg_fixed_grid=dilate", "fixed_grid=off"):
        assert main(["predict", str(run), str(image), "--img-size", "32", "--set", f"model.{opt}",
                     "--json", str(tmp_path / "p.json")]) == 0
        probs[opt] = [t["prob"] for t in json.loads((tmp_path / "p.json").read_text())["results"][0]["top"]]
    assert probs["fixed_grid=auto"] == probs["peg_fixed_grid=dilate"] != probs["fixed_grid=off"]
    need_onnx()
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx"), "--set", "model.fixed_grid=auto",
                 "--json", str(tmp_path / "e.json")]) == 0  # parity checked in onnxruntime at 3 sizes
    assert len(json.loads((tmp_path / "e.json").read_text())["verified"]) >= 3


def test_predict_and_export_default_to_auto_unless_a_fixed_grid_option_is_given():
    from cpvt.cli import deploy_options

    assert deploy_options([], "predict") == {"fixed_grid": "auto"}
    assert deploy_options(["model.fixed_grid=off"], "export") == {"fixed_grid": "off"}
    assert deploy_options(["model.peg_fixed_grid=None"], "export") == {"peg_fixed_grid": None}  # explicit wins
