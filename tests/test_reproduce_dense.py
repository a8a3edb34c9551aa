"""`cpvt reproduce` on the dense tables (T6S Scale, T6C Canvas): mIoU records at every scale, test-time rows,
the report's tables and the claims, on a tiny mask folder the test makes (the CamVid entries' shape, small)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_seg_train import CLASSES, _frame

from cpvt.cli import main
from cpvt.study.reproduce import experiments_dir, load_rows, plan

FH, FW = 48, 72  # test frames; training at 16x24 (Scale: frames downscaled; Canvas: crops), patch 8: 3x


@pytest.fixture(scope="module")
def dense_sweep(tmp_path_factory) -> tuple[Path, Path]:
    """An experiments copy whose smoke budget has a Scale and a Canvas entry on a mask folder, swept once for PEG
    (with its dilated and border-dilated rows) and the APE."""
    tmp = tmp_path_factory.mktemp("dense")
    data = tmp / "shapes"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3), ("test", 4)):
        (data / "images" / split).mkdir(parents=True)
        (data / "masks" / split).mkdir(parents=True)
        for i in range(n):
            image, mask = _frame(rng, FH, FW)
            Image.fromarray(image).save(data / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask, mode="L").save(data / "masks" / split / f"{i:03d}.png")
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    root = tmp / "experiments"
    shutil.copytree(experiments_dir(), root)
    with open(root / "budgets.toml", "a") as f:
        f.write(f'''
[[smoke.datasets]]
name = "seg-scale"
data = "{data}"
tables = ["T6S"]
recipe = "camvid"
split = "test"
frames = "native"
scales = [1.0, 3.0]
train = {{ epochs = 1, batch_size = 4, frame_size = [16, 24], img_size = [16, 24], eval_every = 1000, amp = "off" }}
model_args = {{ depth = 6, embed_dim = 16, num_heads = 2, patch_size = 8 }}

[[smoke.datasets]]
name = "seg-canvas"
base = "seg-scale"
tables = ["T6C"]
canvas = [{FH}, {FW}]
train = {{ frame_size = [{FH}, {FW}], seg_scale = [1.0, 1.0] }}
''')
    out = tmp / "out"
    assert main(["reproduce", "T6S,T6C", "--budget", "smoke", "--rows", "peg,peg_dilate,peg_dilate_border,ape",
                 "--experiments", str(root), "--out", str(out)]) == 0
    return root, out


def test_dense_rows_plan_scale_and_canvas_tests(dense_sweep):
    root, _ = dense_sweep
    jobs = {(j.data, j.members[0][0]): j for j in plan(root, "smoke", ["T6S", "T6C"], Path("runs/x"))}
    scale = jobs[("seg-scale", "t6_scale/peg")]
    assert scale.sizes == {"1": "16x24", "3": "48x72"}  # whole frames resized
    assert scale.test == {"img_sizes": [(16, 24), (48, 72)], "split": "test", "frames": "native"}
    assert set(scale.variants) == {"t6_scale/peg_dilate", "t6_scale/peg_dilate_border"}
    canvas = jobs[("seg-canvas", "t6_canvas/peg")]
    assert canvas.sizes == {"1": "48x72 window 16x24", "3": "48x72"}  # windows over the whole frame, then the frame
    assert canvas.test["windows"] == [(16, 24), None] and canvas.test["img_sizes"] == [(FH, FW)]
    assert canvas.config.frame_size == (FH, FW) and scale.config.frame_size == (16, 24)


def test_dense_records_hold_miou_per_scale_and_class(dense_sweep):
    _, out = dense_sweep
    for entry, folder in (("seg-scale", "t6_scale"), ("seg-canvas", "t6_canvas")):
        records = {p.name: json.loads(p.read_text()) for p in (out / "records" / entry).glob("*.json")}
        peg = next(r for n, r in records.items() if n.startswith("cpvt_micro-") and "@" not in n)
        assert peg["metric"] == "miou" and peg["split"] == "test" and peg["eval_images"] == 4
        assert set(peg["scales"]) == {"1", "3"} and peg["classes"] == CLASSES
        assert all(len(peg["iou"][s]) == len(CLASSES) for s in peg["scales"])
        assert all(0 <= v <= 100 for v in [*peg["scales"].values(), *peg["pixel_acc"].values()])
        dil = next(r for n, r in records.items() if n.endswith("@peg_dilate.json"))
        assert dil["rows"] == [f"{folder}/peg_dilate"] and dil["eval_args"] == {"peg_fixed_grid": "dilate"}
        assert dil["scales"]["1"] == pytest.approx(peg["scales"]["1"])  # no dilation at the training grid
        assert peg["curve"] == [] or all(len(p) == 2 for p in peg["curve"])


def test_dense_report_has_miou_tables_and_judges_the_dense_claims(dense_sweep):
    _, out = dense_sweep
    report = (out / "report.md").read_text()
    for title in ("T6S: CamVid segmentation, Scale", "T6C: CamVid segmentation, Canvas"):
        assert title in report
    scale = report.split("## seg-scale")[1].split("## seg-canvas")[0]
    assert "16x24 (1x)" in scale and "48x72 (3x)" in scale
    assert re.search(r"\| PEG at 0, dilated at test +\| \d+\.\d\d +\|", scale)
    assert "Per-class IoU" in scale and "| box" in scale.replace("box |", "| box")
    canvas = report.split("## seg-canvas")[1]
    assert "48x72 window 16x24 (1x)" in canvas
    assert (out / "t6s_seg-scale.png").exists() and (out / "t6c_seg-canvas.png").exists()
    claims = report.split("## The paper's claims, checked")[1]
    judged = re.compile(r"\*\*(not )?reproduced[^*]*\*\* \[seg-(scale|canvas)\]: \(cpvt\) (Scale|Canvas): ")
    assert len(judged.findall(claims)) == 4  # the four CamVid predictions, each checked on its own protocol


def test_a_dense_row_trains_or_reads_another_rows_runs(tmp_path: Path):
    root = tmp_path / "experiments"
    shutil.copytree(experiments_dir(), root)
    (root / "t6_scale" / "both.toml").write_text('table = "T6S"\nmodel = "cpvt_{size}"\nrun = "t6_scale/peg"\n')
    with pytest.raises(ValueError, match="not both"):
        load_rows(root)
    (root / "t6_scale" / "both.toml").write_text('table = "T6S"\nrun = "t6_scale/nope"\n')
    with pytest.raises(ValueError, match="is not a row"):
        load_rows(root)
    (root / "t6_scale" / "both.toml").write_text('table = "T1"\neval_args = { peg_fixed_grid = "dilate" }\n'
                                                 'model = "cpvt_{size}"\n')
    with pytest.raises(ValueError, match="needs run"):
        load_rows(root)


def test_scale_and_canvas_folders_hold_the_same_rows():
    rows = load_rows(experiments_dir())
    scale = {r.name: r for r in rows.values() if r.table == "T6S"}
    canvas = {r.name: r for r in rows.values() if r.table == "T6C"}
    assert scale.keys() == canvas.keys() and len(scale) >= 13
    for name, r in scale.items():
        c = canvas[name]
        assert (r.model, r.model_args, r.eval_args, r.label) == (c.model, c.model_args, c.eval_args, c.label)
        assert (r.run or "").replace("t6_scale/", "") == (c.run or "").replace("t6_canvas/", "")
