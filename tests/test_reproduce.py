"""`cpvt reproduce`: the smoke budget end to end, skipping finished rows, and the claim logic."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import hold_lock

from cpvt.cli import main
from cpvt.study.report import Results, judge
from cpvt.study.reproduce import (
    TABLES,
    dataset_entries,
    evaluate_formula,
    experiments_dir,
    load_budget,
    load_claims,
    load_rows,
    parse_tables,
    plan,
)


def trained_records(out: Path) -> list[Path]:
    """The training runs' records, not those of testing a run with other options (``<run>@<row>.json``)."""
    return sorted(p for p in out.glob("records/*/*.json") if "@" not in p.name)


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """The smoke budget's whole sweep, run once for the module. Tests never write to it: see ``smoke``."""
    out = tmp_path_factory.mktemp("smoke")
    assert main(["reproduce", "all", "--budget", "smoke", "--out", str(out)]) == 0
    return out


@pytest.fixture
def smoke(smoke_sweep, tmp_path):
    """A copy of the smoke sweep that is this test's own to change (records deleted, runs moved, locks taken), so
    the tests pass alone and in any order."""
    out = tmp_path / "smoke"
    shutil.copytree(smoke_sweep, out)
    return out


def test_smoke_report_has_every_table_and_claim(smoke: Path):
    report = (smoke / "report.md").read_text()
    for title in ("T1: position encodings", "T2: resolution", "T3: where the PEG goes", "T4: what makes a PEG work",
                  "T5: cost"):
        assert title in report
    for png in ("t1_synthetic.png", "t2_synthetic.png", "t3_synthetic.png", "t4_synthetic.png", "t5_cost.png"):
        assert (smoke / png).stat().st_size > 1000
        assert f"]({png})" in report
    # one line per claim whose rows are in a table the smoke budget runs (one dataset: T1-T4); claims on other
    # tables (the CamVid predictions) have no records here and are skipped
    ran = {t for e in dataset_entries(load_budget(experiments_dir(), "smoke")) for t in e["tables"]}
    row_ids = {rid for rid, r in load_rows(experiments_dir()).items() if r.table in ran}
    claims = [c for c in load_claims(experiments_dir())
              if all(str(s).partition(":")[0] in row_ids for s in (c["a"], c["b"]) if isinstance(s, str))]
    lines = [l for l in report.splitlines() if re.match(r"- (✅|❌|⚠️|➖) \*\*(not )?(reproduced|checked)", l)]
    assert len(lines) == len(claims) > 10
    # paper numbers sit beside ours
    assert "| 72.2" in report and "| 74.9" in report and "2536.5" in report
    data = json.loads((smoke / "results.json").read_text())
    assert len(data["claims"]) == len(claims)
    rows = load_rows(experiments_dir())
    trained = {r.id for r in rows.values() if r.table in ("T1", "T3", "T4")}
    variants = {r.id for r in rows.values() if r.eval_args and r.table in ran}
    assert {"t2_resolution/peg_dilate", "t2_resolution/peg_resample"} <= variants
    covered = {rid for run in data["runs"] for rid in run["rows"]}
    assert covered == trained | variants
    by_run = {r["run"]: r for r in data["runs"] if "eval_args" not in r}
    for run in data["runs"]:
        if "eval_args" in run:  # the same weights tested with other options: no training, the same model at 1x
            [rid] = run["rows"]
            assert run["eval_args"] == rows[rid].eval_args and run["train_s"] == 0
            assert rows[rid].run in by_run[run["run"]]["rows"]
            assert run["scales"]["1"] == by_run[run["run"]]["scales"]["1"]
            assert (smoke / "records" / run["data"] / f"{run['run']}@{rid.split('/')[1]}.json").exists()
    assert "PEG at 0, dilated at test" in report
    for path in (smoke / "records").rglob("*.json"):  # each record names the code that made it (tests run in a clone)
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", json.loads(path.read_text())["code"]), path
    for run in data["runs"]:
        assert set(run["scales"]) == {"1", "1.5", "2"}
        assert run["sizes"] == {"1": 32, "1.5": 48, "2": 64}
        assert all(0.0 <= v <= 100.0 for v in run["scales"].values())


def test_rerun_skips_finished_rows_and_resumes_missing_ones(smoke: Path, capsys):
    results = trained_records(smoke)  # one small result record per finished run
    stamps = {p: p.stat().st_mtime_ns for p in results}
    capsys.readouterr()
    assert main(["reproduce", "all", "--budget", "smoke", "--out", str(smoke)]) == 0
    out = capsys.readouterr().out
    assert f"{len(results)} training runs, {len(results)} already finished, 0 to run" in out
    assert "cost already measured" in out
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # a run whose result is missing (interrupted after training) is the only one redone
    victim = results[0]
    run = smoke / "runs" / victim.parent.name / victim.stem
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (run / "last.safetensors", run / "log.jsonl")}
    old = json.loads(victim.read_text())
    victim.unlink()
    assert main(["reproduce", "T1,T3,T4", "--budget", "smoke", "--out", str(smoke)]) == 0
    out = capsys.readouterr().out
    assert "1 to run" in out and victim.exists()
    # the finished checkpoint is reused, not retrained: the run resumes at its end, its files are untouched,
    # and the record made again from it holds the same numbers
    assert f"resuming {run} from epoch 1 step 0" in out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == kept
    new = json.loads(victim.read_text())
    untimed = lambda r: {k: v for k, v in r.items() if k not in ("train_s", "eval_s")}  # noqa: E731
    assert untimed(new) == untimed(old)
    # a run trained over several sessions: its training time is every epoch's, from the log, and its test time
    # is this process's own, not this process's time less the training other processes did (once negative)
    log = run / "log.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({**r, "epoch_time_s": r.get("epoch_time_s", 0) + 1000}) + "\n" for r in lines))
    victim.unlink()
    assert main(["reproduce", "T1,T3,T4", "--budget", "smoke", "--out", str(smoke)]) == 0
    again = json.loads(victim.read_text())
    assert again["train_s"] >= 1000 and 0 <= again["eval_s"] < 1000
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_a_missing_variant_record_is_tested_again_without_training(smoke: Path, capsys):
    """A T2 row with eval_args added after its runs finished: only the test with those options runs."""
    [variant] = sorted(smoke.glob("records/*/*@peg_dilate.json"))
    plain = variant.with_name(variant.name.split("@")[0] + ".json")
    run = smoke / "runs" / plain.parent.name / plain.stem
    kept = {p: p.stat().st_mtime_ns for p in (plain, run / "last.safetensors", run / "log.jsonl")}
    old = json.loads(variant.read_text())
    variant.unlink()
    capsys.readouterr()
    assert main(["reproduce", "T2", "--budget", "smoke", "--rows", "peg_dilate", "--out", str(smoke)]) == 0
    out = capsys.readouterr().out
    assert "1 to run" in out and "resuming" not in out
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    new = json.loads(variant.read_text())
    assert new["scales"] == old["scales"] and new["eval_args"] == {"peg_fixed_grid": "dilate"}


def test_a_variant_of_an_interrupted_retrain_resumes_it_before_testing(smoke: Path, capsys, monkeypatch):
    """A recorded run whose folder holds a half-trained checkpoint (a retrain cut off) is trained on, not tested as is."""
    import cpvt.study.reproduce as rp

    [variant] = sorted(smoke.glob("records/*/*@peg_dilate.json"))
    real = rp.load_checkpoint
    calls = []

    class Half:  # the checkpoint as an interrupted retrain leaves it: a few steps into epoch 1 (smoke: 1 epoch)
        progress = {"epoch": 0, "step": 3}

    monkeypatch.setattr(rp, "load_checkpoint", lambda path: Half())
    monkeypatch.setattr(rp, "train", lambda cfg, resume=False: calls.append((cfg.epochs, resume)) or {})
    variant.unlink()
    assert main(["reproduce", "T2", "--budget", "smoke", "--rows", "peg_dilate", "--out", str(smoke)]) == 0
    assert calls and calls[0][1] is True and variant.exists()  # resumed (here: the stand-in), then tested
    # a finished checkpoint is tested as it is
    monkeypatch.setattr(rp, "load_checkpoint", real)
    calls.clear()
    variant.unlink()
    assert main(["reproduce", "T2", "--budget", "smoke", "--rows", "peg_dilate", "--out", str(smoke)]) == 0
    assert not calls and variant.exists()


def test_a_run_locked_by_another_process_is_left_to_it(smoke: Path, capsys, live_pid: int):
    """Two `cpvt reproduce` processes share a sweep: a run the other one holds is skipped, not trained twice."""
    from cpvt.train.runlock import LOCK_NAME

    victim = trained_records(smoke)[0]
    run = smoke / "runs" / victim.parent.name / victim.stem
    victim.unlink()
    hold_lock(run, live_pid)
    capsys.readouterr()
    assert main(["reproduce", "T1,T3,T4", "--budget", "smoke", "--out", str(smoke)]) == 0
    out = capsys.readouterr().out
    assert "1 to run" in out and f"skipped: {run} is in use by pid {live_pid}" in out
    assert not victim.exists()
    (run / LOCK_NAME).unlink()  # the holder is gone
    assert main(["reproduce", "T1,T3,T4", "--budget", "smoke", "--out", str(smoke)]) == 0
    assert victim.exists() and not (run / LOCK_NAME).exists()


def test_a_finished_record_is_enough_without_the_run_folder(smoke: Path, capsys):
    """A fresh clone has the committed records but no runs/: nothing is trained again."""
    shutil.rmtree(smoke / "runs")
    capsys.readouterr()
    assert main(["reproduce", "T1,T2", "--budget", "smoke", "--out", str(smoke)]) == 0
    assert " 0 to run" in capsys.readouterr().out
    assert not (smoke / "runs").exists()


def test_rows_option_trains_only_the_named_rows_and_reports_all(smoke: Path, tmp_path: Path, capsys):
    out = tmp_path / "one"
    capsys.readouterr()
    assert main(["reproduce", "T1", "--budget", "smoke", "--rows", "peg,ape", "--out", str(out)]) == 0
    records = sorted(out.glob("records/*/*.json"))
    assert {json.loads(p.read_text())["rows"][0] for p in records} == {"t1_encodings/peg", "t1_encodings/ape"}
    # the same run as in the full sweep: the same name, the same number
    for p in records:
        full = smoke / "records" / p.parent.name / p.name
        assert json.loads(p.read_text())["scales"] == json.loads(full.read_text())["scales"]
    # run into the full sweep's folder, nothing trains and the report keeps every row
    capsys.readouterr()
    assert main(["reproduce", "T1", "--budget", "smoke", "--rows", "peg", "--out", str(smoke)]) == 0
    assert "1 training runs, 1 already finished, 0 to run" in capsys.readouterr().out
    assert "| 2D sin-cos" in (smoke / "report.md").read_text()
    assert main(["reproduce", "T1", "--budget", "smoke", "--rows", "pegg", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no row named pegg" in err and "peg_plus" in err


def test_rows_sharing_a_configuration_share_one_run(tmp_path: Path):
    jobs = plan(experiments_dir(), "cpu", list(TABLES), tmp_path)
    assert all(j.record == tmp_path / "records" / j.data / f"{j.dir.name}.json" for j in jobs)
    cifar = [j for j in jobs if j.data == "cifar10"]
    shared = [j for j in cifar if ("t3_placement/pos0", 0) in j.members]
    assert len(shared) == 1
    assert {("t1_encodings/peg", 0), ("t4_peg/kernel3", 0)} <= set(shared[0].members)
    # T1 at 2 seeds, T3 / T4 at 1, one run each shared with T1's PEG
    rows = load_rows(experiments_dir()).values()
    count = {t: sum(r.table == t for r in rows) for t in ("T1", "T3", "T4")}
    assert len(cifar) == 2 * count["T1"] + (count["T3"] - 1) + (count["T4"] - 1)
    # formulas scale the paper's 12-block positions and the 27x27 kernel to the budget's model
    by_row = {m[0]: j for j in cifar for m in j.members}
    assert by_row["t3_placement/cover_m1"].config.model_args["peg_kernel_size"] == 2 * 8 - 1
    assert by_row["t4_peg/conv1x1_all"].config.model_args["peg_positions"] == list(range(-1, 5))
    assert by_row["t3_placement/pos10"].config.model_args["peg_positions"] == [4]  # not 5: after the last block it is never read
    assert by_row["t1_encodings/ape"].sizes == {"1": 32}  # CIFAR-10: 1x only (2x would be upsampling)


def test_imagenette_protocol_sizes_and_seeds(tmp_path: Path):
    """Trained at 64 px (patch 8), tested at 64-224 px; 3 seeds for the core encodings, 2 for the others."""
    jobs = [j for j in plan(experiments_dir(), "cpu", list(TABLES), tmp_path) if j.data == "imagenette"]
    seeds: dict[str, int] = {}
    for j in jobs:
        assert j.config.img_size == 64 and j.config.model_args.get("patch_size") == 8 and j.config.crop == "rrc"
        assert list(j.sizes.values()) == [64, 72, 80, 96, 112, 128, 160, 224]
        for rid, _ in j.members:
            seeds[rid] = seeds.get(rid, 0) + 1
    core = ("none", "ape", "sincos", "rpe", "peg", "peg_plus", "peg_gap_plus", "ape_peg")
    assert all(seeds[f"t1_encodings/{r}"] == 3 for r in core)
    assert seeds["t1_encodings/rope"] == seeds["t1_encodings/alibi"] == 2
    assert seeds["t3_placement/pos_m1"] == 1


def test_study_entries_inherit_their_base_and_train_only_their_rows(tmp_path: Path):
    jobs = plan(experiments_dir(), "cpu", list(TABLES), tmp_path)
    by_name: dict[str, list] = {}
    for j in jobs:
        by_name.setdefault(j.data, []).append(j)
    base = {m[0]: j for j in by_name["imagenette"] for m in j.members if m[1] == 0}
    for name in ("imagenette-patch4", "imagenette-80ep", "imagenette-rrc08", "imagenette-wide", "imagenette-mixres"):
        study = by_name[name]
        assert sorted(m[0] for j in study for m in j.members) == ["t1_encodings/ape", "t1_encodings/peg"]
        # the PEG is also tested dilated (its rows name T2's peg_dilate), not resampled
        assert {m[0]: sorted(j.variants) for j in study for m in j.members} == {
            "t1_encodings/ape": [], "t1_encodings/peg": ["t2_resolution/peg_dilate"]}
        for j in study:
            assert j.record.parent.name == name and j.dir.parent.name == name
            assert j.sizes == base[j.members[0][0]].sizes  # tested at the same sizes in px
            assert j.config.data == "imagenette" and j.config.mixup == 0.0  # inherited
            assert j.dir.name != base[j.members[0][0]].dir.name  # a different run
    patch4 = {m[0]: j for j in by_name["imagenette-patch4"] for m in j.members}
    assert patch4["t1_encodings/peg"].config.model_args.get("patch_size", 4) == 4  # the micro default is 4
    assert patch4["t1_encodings/peg"].config.model_args["embed_dim"] == 64  # merged key by key
    assert base["t1_encodings/peg"].config.model_args["patch_size"] == 8
    assert by_name["imagenette-80ep"][0].config.epochs == 80
    assert list(by_name["imagenette-rrc08"][0].config.rrc_scale) == [0.08, 1.0]
    assert list(by_name["imagenette-mixres"][0].config.train_sizes) == [48, 56, 64, 72, 80, 88, 96]
    assert by_name["imagenette-mixres"][0].config.img_size == 64  # still evaluated (and 1x) at 64 px


def test_bad_study_entries_fail_clearly():
    from cpvt.study.reproduce import dataset_entries

    with pytest.raises(ValueError, match="base 'nope' is not an earlier entry"):
        dataset_entries({"datasets": [{"data": "synthetic"}, {"name": "x", "base": "nope"}]})
    with pytest.raises(ValueError, match="two dataset entries are named 'synthetic'"):
        dataset_entries({"datasets": [{"data": "synthetic"}, {"data": "synthetic"}]})
    entries = dataset_entries({"datasets": [{"data": "synthetic", "note": "n", "row_seeds": {"ape": 3},
                                             "train": {"epochs": 2, "lr": 1.0}},
                                            {"name": "s2", "base": "synthetic", "train": {"epochs": 4}}]})
    assert entries[1]["train"] == {"epochs": 4, "lr": 1.0} and "note" not in entries[1]
    assert "row_seeds" not in entries[1] and entries[1]["data"] == "synthetic"


def test_smoke_study_is_reported_beside_its_base(tmp_path: Path, capsys):
    root = tmp_path / "experiments"
    shutil.copytree(experiments_dir(), root)
    with open(root / "budgets.toml", "a") as f:
        f.write('\n[[smoke.datasets]]\nname = "synthetic-wide"\nbase = "synthetic"\nstudy = "Wider"\n'
                'tables = ["T1", "T2"]\nrows = ["peg", "peg_dilate"]\nmodel_args = { embed_dim = 32 }\n')
    out = tmp_path / "out"
    assert main(["reproduce", "T1,T2", "--budget", "smoke", "--rows", "peg", "--experiments", str(root),
                 "--out", str(out)]) == 0
    assert "2 training runs" in capsys.readouterr().out
    assert (out / "records" / "synthetic-wide").is_dir()
    report = (out / "report.md").read_text()
    assert "## synthetic-wide" not in report  # no full tables for a study
    why = report.split("## Why: variants of the protocol")[1]
    assert "### Wider" in why and "`embed_dim` 16 → 32 (against `synthetic`)" in why
    assert re.search(r"\| PEG at 0 \(CPVT\) +\| synthetic +\| 1 ", why)
    assert re.search(r"\| PEG at 0 \(CPVT\) +\| synthetic-wide +\| 1 ", why)
    assert re.search(r"\| PEG at 0, dilated at test +\| synthetic-wide +\| 1 ", why)  # its test-time row too
    tested = sorted(p.name.split("@")[1] for p in (out / "records" / "synthetic-wide").glob("*@*.json"))
    assert tested == ["peg_dilate.json"]  # not peg_resample: the study names only peg_dilate
    assert "[synthetic-wide]" not in report  # claims are judged on the protocols, not the studies
    assert "why/summary.md" not in report and "conclusion.md" not in report  # nothing written yet: no links
    (out / "why").mkdir()
    (out / "why" / "summary.md").write_text("# Why\n")
    (out / "conclusion.md").write_text("# Conclusion\n")
    assert main(["reproduce", "T1,T2", "--budget", "smoke", "--rows", "peg", "--experiments", str(root),
                 "--out", str(out)]) == 0  # both runs reused: only the report is rewritten
    why = (out / "report.md").read_text().split("## Why: variants of the protocol")[1]
    assert "[why/summary.md](why/summary.md)" in why and "[conclusion.md](conclusion.md)" in why


def test_formulas_allow_arithmetic_only():
    assert evaluate_formula("2 * grid - 1", grid=14, depth=12) == 27
    assert evaluate_formula("[round(10 * (depth - 1) / 11)]", grid=8, depth=12) == [10]
    for bad in ("__import__('os')", "grid.__class__", "open('x')", "[x for x in range(3)]"):
        with pytest.raises(ValueError):
            evaluate_formula(bad, grid=8, depth=6)


def test_bad_requests_fail_with_one_clear_line(tmp_path: Path, capsys):
    assert main(["reproduce", "T9", "--budget", "smoke", "--out", str(tmp_path)]) == 2
    assert "unknown table 'T9'" in capsys.readouterr().err
    assert main(["reproduce", "T1", "--budget", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown budget 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse checks the type: one usage line and the reason
        main(["reproduce", "T1", "--budget", "smoke", "--seeds", "0", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "--seeds: expected a positive whole number, got '0'" in capsys.readouterr().err
    assert parse_tables("t1, T3") == ["T1", "T3"]


def _fake(data, rid, seed, s1, s2):
    return {"data": data, "rows": [rid], "seed": seed, "scales": {"1": s1, "2": s2}}


def test_claim_verdicts_follow_the_means_and_flag_noise():
    rows = load_rows(experiments_dir())
    runs = [_fake("d", "t1_encodings/ape", 0, 60.0, 50.0), _fake("d", "t1_encodings/ape", 1, 61.0, 52.0),
            _fake("d", "t1_encodings/none", 0, 55.0, 54.0), _fake("d", "t1_encodings/none", 1, 56.0, 54.0),
            _fake("d", "t1_encodings/peg", 0, 60.2, 59.0), _fake("d", "t1_encodings/peg", 1, 60.6, 58.0)]
    res = Results(runs, rows)
    ape_none = judge({"text": "", "a": "t1_encodings/ape", "b": "t1_encodings/none", "relation": ">"}, res, "d")
    assert ape_none["ok"] and not ape_none["within_noise"] and ape_none["diff"] == pytest.approx(5.0)
    reverse = judge({"text": "", "a": "t1_encodings/ape", "b": "t1_encodings/none", "relation": "<"}, res, "d")
    assert not reverse["ok"]
    # peg - ape per seed: +0.2, -0.4 -> mean -0.1 inside a paired noise of 0.3
    close = judge({"text": "", "a": "t1_encodings/peg", "b": "t1_encodings/ape", "relation": ">"}, res, "d")
    assert not close["ok"] and close["within_noise"]
    drop = judge({"text": "", "a": "t1_encodings/peg:drop@2", "b": "t1_encodings/ape:drop@2.0", "relation": ">"}, res, "d")
    assert drop["a"] == pytest.approx(-1.9) and drop["b"] == pytest.approx(-9.5) and drop["ok"]
    const = judge({"text": "", "a": "t1_encodings/ape:drop@2.0", "b": 0, "relation": "<"}, res, "d")
    assert const["ok"]
    assert judge({"text": "", "a": "t3_placement/pos_m1", "b": "t1_encodings/ape", "relation": ">"}, res, "d") is None
    similar = judge({"text": "", "a": "t1_encodings/peg", "b": "t1_encodings/ape", "relation": "~", "tolerance": 1.0},
                    res, "d")
    assert similar["ok"]
    # unequal seed counts (2 APE seeds, 1 RPE seed): a difference of means, noise from the pooled sd, said so
    res = Results(runs + [_fake("d", "t1_encodings/rpe", 0, 59.0, 57.0)], rows)
    uneven = judge({"text": "", "a": "t1_encodings/rpe", "b": "t1_encodings/ape", "relation": ">"}, res, "d")
    assert uneven["noise_basis"] == "1 against 2 seeds, unpaired; noise from the pooled seed sd"
    assert uneven["noise"] == pytest.approx(res.noise("d") * math.sqrt(1 + 1 / 2))
    # two seeds each but not the same ones (RPE 0 and 2, APE 0 and 1): unpaired, not zipped seed 2 against seed 1
    res = Results(runs + [_fake("d", "t1_encodings/rpe", 0, 59.0, 57.0), _fake("d", "t1_encodings/rpe", 2, 58.0, 57.0)], rows)
    assert res.paired_diff("d", "t1_encodings/rpe", "t1_encodings/ape").values == [pytest.approx(58.5 - 60.5)]
    apart = judge({"text": "", "a": "t1_encodings/rpe", "b": "t1_encodings/ape", "relation": ">"}, res, "d")
    assert apart["noise_basis"] == "2 against 2 seeds, unpaired; noise from the pooled seed sd"


def test_data_option_trains_only_the_named_dataset_entries(smoke: Path, capsys):
    capsys.readouterr()
    # the smoke sweep's runs are all finished and all on its one entry, "synthetic"
    assert main(["reproduce", "T1", "--budget", "smoke", "--data", "synthetic", "--out", str(smoke)]) == 0
    out = capsys.readouterr().out
    assert "--data synthetic" in out and " 0 to run" in out and "already finished, 0" in out
    assert main(["reproduce", "T1", "--budget", "smoke", "--data", "imagenette", "--out", str(smoke)]) == 2
    err = capsys.readouterr().err
    assert "no dataset entry named imagenette" in err and "its entries: synthetic" in err


def test_the_report_keeps_every_recorded_seed_whatever_seeds_asks(smoke: Path, smoke_sweep: Path, capsys):
    """A sweep run one seed at a time (--seeds 1) or with extra seeds still reports every finished seed."""
    out = smoke
    assert main(["reproduce", "T1", "--budget", "smoke", "--rows", "peg", "--seeds", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("records/*/*.json") if "@" not in p.name) != [
        p.name for p in trained_records(smoke_sweep)]  # seed 1 of the PEG was trained
    peg = lambda: next(line for line in (out / "report.md").read_text().splitlines()  # noqa: E731
                       if line.startswith("| PEG at 0 (CPVT) "))
    assert "(2)" in peg()
    capsys.readouterr()
    assert main(["reproduce", "T1", "--budget", "smoke", "--rows", "ape", "--seeds", "1", "--out", str(out)]) == 0
    assert " 0 to run" in capsys.readouterr().out and "(2)" in peg()


def test_code_version_is_read_once_per_process(monkeypatch):
    """A commit made while a run trains must not relabel the run: the first reading is kept."""
    import subprocess

    from cpvt.study import reproduce as rp

    heads = iter(["a" * 40, "b" * 40])

    def fake_run(cmd, **kw):
        out = next(heads) if "rev-parse" in cmd else ""
        return subprocess.CompletedProcess(cmd, 0, stdout=out + "\n", stderr="")

    rp.code_version.cache_clear()
    monkeypatch.setattr(rp.subprocess, "run", fake_run)
    try:
        assert rp.code_version() == "a" * 40
        assert rp.code_version() == "a" * 40  # HEAD moved to b...: still the code this process loaded
    finally:
        rp.code_version.cache_clear()


def test_delta_table_says_which_rows_ran_one_seed_and_how_noisy_that_is():
    from cpvt.study.report import _delta_table
    rows = load_rows(experiments_dir())
    runs = [_fake("d", "t1_encodings/ape", 0, 60.0, 50.0), _fake("d", "t1_encodings/ape", 1, 61.0, 52.0),
            _fake("d", "t3_placement/pos0", 0, 58.0, 50.0), _fake("d", "t3_placement/pos_m1", 0, 57.0, 50.0)]
    for r in runs:
        r["model"], r["model_args"] = "cpvt_micro", {}
    res = Results(runs, rows)
    trows = [rows["t3_placement/pos_m1"], rows["t3_placement/pos0"]]
    lines = _delta_table(res, "d", "T3", trows, "t3_placement/pos0")
    assert "| -1.00 " in lines[0]
    assert lines[-1].endswith(f"Rows without ± ran one seed (0); top-1's seed sd on d, pooled over the rows with 2+ "
                              f"seeds, is {res.noise('d'):.2f}, so a Δ between two single runs has an sd of about "
                              f"{math.sqrt(2) * res.noise('d'):.2f}.")
    # with no row of 2+ seeds there is no noise estimate, and no sentence about it
    res = Results(runs[2:], rows)
    assert _delta_table(res, "d", "T3", trows, "t3_placement/pos0")[-1] == "Δ: minus the 'PEG at 0' row (t3_placement/pos0)."


def test_recorded_with_keeps_every_committed_record_and_its_attention_path(tmp_path: Path):
    """The entries trained before ``attention="auto"`` changed in fp32 keep the old path (``math-short``) without
    renaming a run: every committed record of the cpu budget is still a planned run's record."""
    from cpvt.study.reproduce import run_name

    results = experiments_dir().parent / "docs" / "results" / "cpu"
    jobs = plan(experiments_dir(), "cpu", list(TABLES), results)
    planned = {j.record for j in jobs}
    committed = [p for p in results.glob("records/*/*.json") if "@" not in p.name]
    orphans = [p.relative_to(results).as_posix() for p in committed if p not in planned]
    # the one record no planned run names: no PE on the synthetic scenes as they were before a later change
    assert len(committed) > 100 and orphans == ["records/synthetic/deit_micro_nope-14025361-s0.json"]
    for j in jobs:
        pinned = not j.data.startswith("camvid")
        assert j.config.attention == ("math-short" if pinned else "auto"), j.data
        j.config.attention = "auto"
        assert run_name(j.config) == Path(j.config.out).name  # the pin is not part of the name
