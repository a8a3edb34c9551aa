"""scripts/why_analysis.py: which runs it analyses, and the table it writes from the analyses' numbers."""

import json

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def why():
    return load_script("why_analysis")


def test_find_runs_takes_seed_zero_with_weights_and_lists_the_rest(why, tmp_path):
    records = tmp_path / "records" / "imagenette"
    records.mkdir(parents=True)
    for run, row, seed in [("cpvt_micro-x-s0", "peg", 0), ("cpvt_micro-x-s1", "peg", 1), ("deit_micro-y-s0", "ape", 0)]:
        (records / f"{run}.json").write_text(json.dumps({"run": run, "rows": [f"t1_encodings/{row}"], "seed": seed}))
        (tmp_path / "runs" / "imagenette" / run).mkdir(parents=True)
        if row == "peg":
            (tmp_path / "runs" / "imagenette" / run / "last.safetensors").write_bytes(b"")
    found, missing = why.find_runs(tmp_path, [("imagenette", "peg"), ("imagenette", "ape"), ("imagenette", "none")])
    assert [(f["row"], f["record"]["seed"]) for f in found] == [("peg", 0)]
    assert missing == ["imagenette/ape", "imagenette/none"]  # no weights; no record


def test_summary_table_shows_each_model_at_1x_then_2x(why):
    def at(probe, distinct, tokens, attn):
        return {"probe_real": probe, "probe_constant": probe + 0.1, "distinct": distinct, "tokens": tokens,
                "attn_min_block": attn, "attn_uniform": 4.0}

    a = {"images": 8, "sizes": [64, 128], "missing": ["imagenette/rpe"], "elapsed_s": 90.0, "models": {
        "peg": {"64": {**at(0.5, 9, 64, 3.9), "peg_border_interior_constant": 1.5}, "128": at(0.3, 9, 256, 3.8)},
        "peg (dilated)": {"64": at(0.5, 9, 64, 3.9), "128": at(0.45, 9, 256, 3.9)},
        "ape": {"64": at(0.9, 64, 64, 4.0)},  # no 2x: left out
    }}
    text = "\n".join(why.summary_markdown(a, ["position-64"]))
    lines = text.splitlines()
    peg = next(line for line in lines if line.startswith("| peg "))
    assert "0.50 → 0.30" in peg and "0.60 → 0.40" in peg and "9/64 → 9/256" in peg and "0.975 → 0.950" in peg
    assert "1.50 → –" in peg
    assert any(line.startswith("| peg (dilated)") and "0.50 → 0.45" in line for line in lines)
    assert "| ape " not in text
    assert "1.5 min, 8 validation images" in text and "imagenette/rpe" in text and "[position-64](position-64/)" in text
