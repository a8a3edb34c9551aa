"""scripts/readme_table.py: the headline tables of the README and docs/findings.md come from the records with the
report's statistics."""


import json

import pytest

from conftest import load_script
from cpvt.study.experiments import experiments_dir, load_rows


@pytest.fixture(scope="module")
def script():
    return load_script("readme_table")


def _run(rid, seed, curve):
    sizes = {"1": 64, "1.25": 80, "2": 128, "3.5": 224}
    return {"data": "d", "rows": [rid], "seed": seed, "sizes": sizes, "scales": dict(zip(sizes, curve))}


def test_headline_rows_have_mean_sd_peak_and_drop(script):
    rows = load_rows(experiments_dir())
    results = [_run("t1_encodings/ape", 0, [60.0, 61.0, 58.0, 50.0]), _run("t1_encodings/ape", 1, [62.0, 63.0, 59.0, 48.0]),
               _run("t1_encodings/peg", 0, [59.0, 58.0, 55.0, 40.0]),
               _run("t2_resolution/peg_dilate", 0, [59.0, 58.0, 59.5, 51.0])]  # a test-time row's own record
    lines = script.headline(results, rows, "d", ["peg", "peg_dilate", "ape"]).splitlines()
    assert "1x (64 px)" in lines[0] and "2x (128 px)" in lines[0] and "224 px (3.5x)" in lines[0]
    peg, dilated, ape = ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:5])
    assert peg == [rows["t2_resolution/peg"].label, "1", "59.00", "59.00 (64)", "55.00", "40.00", "-4.00"]
    assert dilated[1:] == ["1", "59.00", "59.50 (128)", "59.50", "51.00", "+0.50"]
    # two seeds: mean ± sd, peak at 80 px (mean 62), per-seed drops -2 and -3
    assert ape[1:] == ["2", "61.00 ± 1.41", "62.00 ± 1.41 (80)", "58.50 ± 0.71", "49.00 ± 1.41", "-2.50 ± 0.71"]
    assert len(script.headline(results, rows, "d", None).splitlines()) == 2 + 3  # default: every row with a record


def test_unknown_rows_and_data_fail_clearly(script):
    rows = load_rows(experiments_dir())
    results = [_run("t1_encodings/ape", 0, [60.0, 61.0, 58.0, 50.0])]
    with pytest.raises(SystemExit, match="unknown T2 rows"):
        script.headline(results, rows, "d", ["nope_row"])
    with pytest.raises(SystemExit, match="no runs on 'x'"):
        script.headline(results, rows, "x", None)
    with pytest.raises(SystemExit, match="peg: no record"):
        script.headline(results, rows, "d", ["peg"])


def test_compute_line_counts_runs_tests_and_minutes_of_one_data_entry(script):
    results = [{"data": "d", "train_s": 600.0, "eval_s": 120.0}, {"data": "d", "train_s": 1800.0},
               {"data": "d", "eval_s": 90.0, "eval_args": {"peg_fixed_grid": "dilate"}},  # a test of a run
               {"data": "other", "train_s": 60_000.0}]
    assert script.compute(results, "d") == "2 runs and 1 tests, 44 min of training and evaluation in all"
    with pytest.raises(SystemExit, match="no runs on 'x'"):
        script.compute(results, "x")


def test_write_regenerates_the_marked_table_and_compute_line_only(script):
    rows = load_rows(experiments_dir())
    results = [dict(_run("t1_encodings/ape", 0, [60.0, 61.0, 58.0, 50.0]), train_s=600.0),
               dict(_run("t1_encodings/peg", 0, [59.0, 58.0, 55.0, 40.0]), train_s=1200.0)]
    readme = ("intro\n<!-- readme_table rows=peg,ape -->\n| old | table |\n<!-- /readme_table -->\n"
              "(fp32; <!-- compute -->1 runs and 0 tests, 5 min of training and evaluation in all<!-- /compute -->)\n")
    out = script.write(readme, results, rows, "d")
    assert out.startswith("intro\n<!-- readme_table rows=peg,ape -->\n| encoding")
    assert "old" not in out and out.index(rows["t2_resolution/peg"].label) < out.index(rows["t2_resolution/ape"].label)
    assert "(fp32; <!-- compute -->2 runs and 0 tests, 30 min of training and evaluation in all<!-- /compute -->)\n" in out
    assert script.write(out, results, rows, "d") == out  # idempotent
    with pytest.raises(SystemExit, match="found 0 and 1"):
        script.write(readme.replace("readme_table rows", "table rows"), results, rows, "d")


@pytest.mark.parametrize("page", ["README.md", "docs/findings.md"])
def test_committed_page_table_matches_the_committed_results(script, page):
    """The headline table and compute line of the README (ten rows) and docs/findings.md (every row) are what the
    script makes from the committed results.json."""
    results = json.loads((script.ROOT / "docs/results/cpu/results.json").read_text())["runs"]
    text = (script.ROOT / page).read_text()
    assert script.write(text, results, load_rows(experiments_dir()), "imagenette") == text, (
        f"{page} table is stale: run scripts/readme_table.py --write README.md docs/findings.md")


def test_readme_table_has_at_most_ten_rows(script):
    text = (script.ROOT / "README.md").read_text()
    [(_, names, _, _)] = script.TABLE.findall(text)
    assert 0 < len(names.split(",")) <= 10, "the README's headline table is at most 10 rows; all of them: docs/findings.md"


def _seg(data, rid, seed, curve):
    sizes = {"1": "120x160", "2": "240x320", "3": "360x480"}
    return {"data": data, "rows": [rid], "seed": seed, "sizes": sizes, "metric": "miou",
            "scales": dict(zip(sizes, curve)), "train_s": 600.0, "eval_s": 60.0}


def test_dense_headline_sets_scale_and_canvas_side_by_side(script):
    rows = load_rows(experiments_dir())
    results = [_seg("camvid-scale", "t6_scale/peg", 0, [30.0, 29.0, 27.0]),
               _seg("camvid-scale", "t6_scale/peg", 1, [32.0, 30.0, 28.0]),
               _seg("camvid-canvas", "t6_canvas/peg", 0, [31.0, 28.0, 24.0]),
               _seg("camvid-canvas", "t6_canvas/peg", 1, [33.0, 29.0, 26.0])]
    lines = script.dense_headline(results, rows, ["peg"]).splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["encoding", "seeds", "Scale 1x", "Scale 3x",
                                                             "Canvas 1x", "Canvas 3x"]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == [rows["t6_scale/peg"].label, "2", "31.00 ± 1.41",
                                                             "27.50 ± 0.71", "32.00 ± 1.41", "25.00 ± 1.41"]
    assert script.dense_compute(results) == "4 runs and 0 tests, 44 min of training and evaluation in all"
    with pytest.raises(SystemExit, match="ape: no record on camvid-scale"):
        script.dense_headline(results, rows, ["ape"])
    with pytest.raises(SystemExit, match="unknown row 'nope'"):
        script.dense_headline(results, rows, ["nope"])
    page = "a\n<!-- dense_table rows=peg -->\nold\n<!-- /dense_table -->\n(<!-- dense_compute -->x<!-- /dense_compute -->)"
    out = script.write_dense(page, results, rows)
    assert "old" not in out and "31.00 ± 1.41" in out and "4 runs and 0 tests" in out
    assert script.write_dense(out, results, rows) == out
    assert script.write_dense("no markers", results, rows) == "no markers"


@pytest.mark.parametrize("page", ["README.md", "docs/results/cpu/camvid.md"])
def test_committed_dense_tables_match_the_committed_camvid_results(script, page):
    results = json.loads((script.ROOT / "docs/results/cpu/camvid/results.json").read_text())["runs"]
    text = (script.ROOT / page).read_text()
    assert script.DENSE_TABLE.search(text), f"{page} has no <!-- dense_table rows=... --> block"
    assert script.write_dense(text, results, load_rows(experiments_dir())) == text, (
        f"{page} CamVid table is stale: run scripts/readme_table.py --write README.md docs/findings.md "
        "docs/results/cpu/camvid.md")
