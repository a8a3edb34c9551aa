"""scripts/why_analysis.py: the variants table is built from the sweep's records and the saved evaluations."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def why():
    spec = importlib.util.spec_from_file_location("why_analysis", ROOT / "scripts" / "why_analysis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(run: str, row: str, seed: int, at_1x: float, at_2x: float) -> dict:
    return {"run": run, "rows": [f"t1_encodings/{row}", f"t2_resolution/{row}"], "seed": seed,
            "sizes": {"1": 64, "2": 128}, "scales": {"1": at_1x, "2": at_2x}}


def test_variants_table_means_seeds_and_pairs_the_change_per_seed(why, tmp_path):
    records = tmp_path / "records" / "imagenette"
    records.mkdir(parents=True)
    for rec in (_record("deit_micro-x-s0", "ape", 0, 58.0, 57.0), _record("deit_micro-x-s1", "ape", 1, 60.0, 58.0),
                _record("deit_micro_nope-x-s0", "none", 0, 55.0, 54.5)):
        (records / f"{rec['run']}.json").write_text(json.dumps(rec))
    out = tmp_path / "why"
    out.mkdir()
    variants = {
        "cpvt_micro-x-s0": {"row": "peg", "seed": 0, "plain": {"64": 58.0, "128": 54.0},
                            "resample": {"64": 58.0, "128": 53.0}, "dilate": {"64": 58.0, "128": 57.5},
                            "resample_s": 60.0, "dilate_s": 60.0},
        "cpvt_micro-x-s1": {"row": "peg", "seed": 1, "plain": {"64": 56.0, "128": 53.0},
                            "resample": {"64": 56.0, "128": 52.0}, "dilate": {"64": 56.0, "128": 55.5},
                            "resample_s": 60.0, "dilate_s": 60.0},
    }
    (out / "variants.json").write_text(json.dumps(variants))
    why.write_markdown(tmp_path, out)
    text = (out / "summary.md").read_text()
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in text.splitlines()
             if line.startswith("| ") and "---" not in line}
    dilate = lines[("peg", "dilate")]
    assert "57.00 ± 1.41" in dilate and "56.50 ± 1.41" in dilate and "-0.50 ± 0.00" in dilate
    assert "-3.50 ± 0.71" in lines[("peg", "plain")]  # per seed: -4 and -3
    assert "-4.50 ± 0.71" in lines[("peg", "resample")]
    assert "-1.50 ± 0.71" in lines[("ape", "plain")]  # from the records: -1 and -2
    assert "| 1 |" in lines[("none", "plain")].replace("  ", " ")
    assert ("peg_plus", "plain") not in lines  # rows without runs are left out
    assert "4 min of evaluation" in text
