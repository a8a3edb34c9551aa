"""`cpvt demo` at a tiny size: three processes train at once, a rerun reuses them, a failure is named."""

import json

import pytest

from cpvt.study.demo import APE, FIXED, LABELS, MODELS, NOPE, PEG, reading, run_demo

TINY = ["epochs=1", "train_limit=128", "val_limit=32"]


def test_demo_trains_three_runs_at_once_and_reuses_them(tmp_path, capsys):
    results = run_demo(str(tmp_path / "demo"), sets=TINY)
    out = capsys.readouterr().out
    assert [r["label"] for r in results] == [PEG, FIXED, APE, NOPE]  # the PEG run twice: as trained, then fixed
    assert [r["run"].split("/")[-1] for r in results] == [PEG, PEG, APE, NOPE]
    assert all(set(r["sizes"]) == {"32", "48", "64", "96"} for r in results)
    for name in MODELS:  # each process's lines are echoed under its name and kept in its run folder
        assert f"[{name}" in out and "epoch=1" in (tmp_path / "demo" / name / "train.out").read_text()
    saved = json.loads((tmp_path / "demo" / "resolution.json").read_text())
    assert len(saved) == 4
    assert (tmp_path / "demo" / "resolution.png").stat().st_size > 0 and (tmp_path / "demo" / "scenes.png").exists()
    assert "At the training size (32 px)" in out
    logs = {name: (tmp_path / "demo" / name / "log.jsonl").read_text() for name in MODELS}
    run_demo(str(tmp_path / "demo"), sets=TINY)  # finished runs are reused, not trained again
    assert logs == {name: (tmp_path / "demo" / name / "log.jsonl").read_text() for name in MODELS}


def test_demo_names_a_failed_run_and_its_log(tmp_path):
    with pytest.raises(SystemExit, match=r"cpvt_micro_gap_plus exited 2, log .*cpvt_micro_gap_plus/train.out"):
        run_demo(str(tmp_path / "demo"), sets=[*TINY, "model.depth=2"])  # PEGs after blocks 0-4 need depth 5


SIZES = [32, 48, 64, 96]


def test_reading_says_nothing_a_model_at_chance_would_also_satisfy():
    chance = {PEG: [11.0] * 4, FIXED: [11.0] * 4, APE: [10.0] * 4, NOPE: [10.0] * 4}
    text = reading(chance, SIZES)
    assert "says nothing" in text and "holds" not in text and "keeps" not in text and "use position" not in text


def test_reading_follows_the_numbers():
    fixed_helps = {PEG: [99.0, 80.0, 60.0, 40.0], FIXED: [99.0, 95.0, 90.0, 85.0], APE: [70.0, 69, 68, 60],
                   NOPE: [49.0, 48, 49, 47]}
    text = reading(fixed_helps, SIZES)
    assert "drops to 60.0% (39.0 points lost); with fixed_grid=\"auto\" it keeps 90.0% (30.0 points back)" in text
    assert f"{LABELS[PEG]} and {LABELS[APE]} are above that ceiling" in text and "Why:" in text
    no_help = {**fixed_helps, FIXED: [99.0, 80.0, 61.0, 41.0]}
    text = reading(no_help, SIZES)
    assert "does not help here (61.0%)" in text and "Why:" not in text
    holds = {**fixed_helps, PEG: [99.0, 98.0, 98.0, 97.0], FIXED: [99.0, 98.5, 98.0, 97.5]}
    assert "holds at 98.0%" in reading(holds, SIZES)
