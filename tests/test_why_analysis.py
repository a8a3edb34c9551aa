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
    assert "1.5 min of analysis in all, 8 validation images" in text and "imagenette/rpe" in text and "[position-64](position-64/)" in text


def test_a_second_run_keeps_what_it_measured_and_analyses_only_new_models(why, tmp_path, monkeypatch):
    """Run folders do not survive a fresh machine: models summarised before stay as measured, new ones are added."""
    records, runs = tmp_path / "records", tmp_path / "runs"
    for data, run, row in [("imagenette-patch4", "cpvt_micro-p-s0", "peg"), ("imagenette", "deit_micro-y-s0", "ape")]:
        (records / data).mkdir(parents=True, exist_ok=True)
        (records / data / f"{run}.json").write_text(json.dumps({"run": run, "rows": [f"t1_encodings/{row}"], "seed": 0}))
        (runs / data / run).mkdir(parents=True)
        (runs / data / run / "last.safetensors").write_bytes(b"")
    cell = {"probe_real": 0.5, "probe_constant": 0.6, "distinct": 9, "tokens": 64, "attn_min_block": 3.9, "attn_uniform": 4.0}
    entry = lambda data, row, run, overrides=None: {"data": data, "row": row, "run": run, "overrides": overrides,  # noqa: E731
                                                    "64": cell, "128": cell}
    out = tmp_path / "why"
    out.mkdir()
    kept = {"peg": entry("imagenette", "peg", "cpvt_micro-gone-s0"),  # its run folder is gone: kept as measured
            "ape": entry("imagenette", "ape", "deit_micro-y-s0")}  # measured already: not analysed again
    (out / "summary.json").write_text(json.dumps({"images": 8, "sizes": [64, 128], "missing": [], "elapsed_s": 60.0,
                                                   "models": kept}))
    analysed = []

    def fake(todo, sizes, images, out_dir):
        analysed.extend(r["record"]["run"] for r in todo)
        return {n: entry(r["data"], r["row"], r["record"]["run"]) for r in todo for n in why.labels(r)}

    monkeypatch.setattr(why, "run_analyses", fake)
    args = ["--results", str(tmp_path), "--out", str(out), "--images", "8"]
    assert why.main(args) == 0
    assert analysed == ["cpvt_micro-p-s0"]
    models = json.loads((out / "summary.json").read_text())["models"]
    # plain models in the subjects' order (base protocol first), then the dilated ones
    assert list(models) == ["ape", "peg", "peg [patch4]", "peg [patch4] (dilated)"]
    assert models["peg"]["run"] == "cpvt_micro-gone-s0"
    assert json.loads((out / "summary.json").read_text())["elapsed_s"] >= 60.0
    analysed.clear()
    assert why.main(args) == 0 and analysed == []  # nothing new: nothing analysed
    assert why.main(args + ["--again"]) == 0 and sorted(analysed) == ["cpvt_micro-p-s0", "deit_micro-y-s0"]
    # other images or sizes are not comparable: everything with weights is analysed, the rest dropped
    analysed.clear()
    assert why.main(["--results", str(tmp_path), "--out", str(out), "--images", "16"]) == 0
    assert sorted(analysed) == ["cpvt_micro-p-s0", "deit_micro-y-s0"]
    assert "peg" not in json.loads((out / "summary.json").read_text())["models"]
    # a new model of a protocol brings the others of that protocol with weights here, so that the
    # protocol's figure folders, rewritten whole, show all of them; other protocols are left alone
    (records / "imagenette-patch4" / "deit_micro-q-s0.json").write_text(
        json.dumps({"run": "deit_micro-q-s0", "rows": ["t1_encodings/ape"], "seed": 0}))
    (runs / "imagenette-patch4" / "deit_micro-q-s0").mkdir(parents=True)
    (runs / "imagenette-patch4" / "deit_micro-q-s0" / "last.safetensors").write_bytes(b"")
    analysed.clear()
    assert why.main(["--results", str(tmp_path), "--out", str(out), "--images", "16"]) == 0
    assert sorted(analysed) == ["cpvt_micro-p-s0", "deit_micro-q-s0"]
    assert "ape [patch4]" in json.loads((out / "summary.json").read_text())["models"]
