"""`cpvt demo` at a tiny size: three processes train at once, a rerun reuses them, a failure is named."""

import json

import pytest

from cpvt.study.demo import MODELS, run_demo

TINY = ["epochs=1", "train_limit=128", "val_limit=32"]


def test_demo_trains_three_runs_at_once_and_reuses_them(tmp_path, capsys):
    results = run_demo(str(tmp_path / "demo"), sets=TINY)
    out = capsys.readouterr().out
    assert [r["run"].split("/")[-1] for r in results] == list(MODELS)
    assert all(set(r["sizes"]) == {"32", "48", "64"} for r in results)
    for name in MODELS:  # each process's lines are echoed under its name and kept in its run folder
        assert f"[{name}" in out and "epoch=1" in (tmp_path / "demo" / name / "train.out").read_text()
    saved = json.loads((tmp_path / "demo" / "resolution.json").read_text())
    assert len(saved) == 3
    logs = {name: (tmp_path / "demo" / name / "log.jsonl").read_text() for name in MODELS}
    run_demo(str(tmp_path / "demo"), sets=TINY)  # finished runs are reused, not trained again
    assert logs == {name: (tmp_path / "demo" / name / "log.jsonl").read_text() for name in MODELS}


def test_demo_names_a_failed_run_and_its_log(tmp_path):
    with pytest.raises(SystemExit, match=r"cpvt_micro_gap_plus exited 2, log .*cpvt_micro_gap_plus/train.out"):
        run_demo(str(tmp_path / "demo"), sets=[*TINY, "model.depth=2"])  # PEGs after blocks 0-4 need depth 5
