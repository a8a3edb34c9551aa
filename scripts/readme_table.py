"""Print the resolution headline tables of the README and docs/findings.md from a report's ``results.json``.

The README (ten rows) and docs/findings.md (every row) show a compact view of the report's T2 tables: for each row, the
seeds, top-1 at 1x, its own peak, 2x and the largest test size, and the change
from 1x to 2x. Typing those numbers by hand as seeds land invites mistakes, so
this script prints them with the report's own statistics (``cpvt.study.report``):
the same means, standard deviations and peaks as ``report.md``.

    .venv/bin/python scripts/readme_table.py                      # every T2 row with a record
    .venv/bin/python scripts/readme_table.py --rows none,ape,peg   # a selection, in this order

Below the table it prints the compute line the pages quote: how many training
runs and test-time variants (records named ``RUN@ROW``) the data entry has, and
their training plus evaluation time, with the same totals as the report (``cpvt.study.report.minutes``).

    .venv/bin/python scripts/readme_table.py --write README.md docs/findings.md   # update both pages in place

``--write`` rewrites the table between ``<!-- readme_table rows=a,b,c -->`` and
``<!-- /readme_table -->`` (the rows named in the marker, in that order) and the text
between ``<!-- compute -->`` and ``<!-- /compute -->`` of each file, so a fresh clone can refresh
the pages after a sweep with nothing but this command.

A page may also hold the CamVid headline (issue #37), from the CamVid report's own ``results.json``
(``--dense-results``): ``<!-- dense_table rows=a,b,c -->`` ... ``<!-- /dense_table -->``, one line per
row of ``experiments/t6_scale`` and ``t6_canvas`` (same names): mIoU at 1x and at 3x under Scale and under
Canvas, mean ± sd over seeds, and ``<!-- dense_compute -->`` ... ``<!-- /dense_compute -->``. A page may hold either kind of block, or both.

    .venv/bin/python scripts/readme_table.py --write README.md docs/findings.md docs/results/cpu/camvid.md

    .venv/bin/python scripts/readme_table.py --dense --rows none,ape,peg,peg_dilate   # print it
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from cpvt.study.experiments import load_rows
from cpvt.study.report import Results, minutes, peak, trained
from cpvt.utils.table import format_table

ROOT = Path(__file__).resolve().parents[1]


def headline(results: list[dict], rows: dict, data: str, names: list[str] | None) -> str:
    """Markdown table of the T2 rows ``names`` (file names; None: all with a record) on ``data``."""
    runs = [r for r in results if r["data"] == data]
    if not runs:
        raise SystemExit(f"no runs on {data!r}; datasets: {sorted({r['data'] for r in results})}")
    t2 = {r.name: r for r in rows.values() if r.table == "T2"}
    unknown = [n for n in names or [] if n not in t2]
    if unknown:
        raise SystemExit(f"unknown T2 rows {unknown}; known: {sorted(t2)}")
    res = Results(runs, rows)
    chosen = [t2[n] for n in names] if names else [r for r in t2.values() if res.has(data, r.id)]
    sizes = runs[0]["sizes"]
    scales = sorted(sizes, key=float)
    two, far = ("2" if "2" in scales else scales[-1]), scales[-1]
    headers = ["encoding", "seeds", f"1x ({sizes['1']} px)", "peak (size)", f"{two}x ({sizes[two]} px)",
               f"{sizes[far]} px ({far}x)", f"Δ 1x → {two}x"]
    body = []
    for r in chosen:
        found = peak(res, data, r.id, scales)
        if found is None:
            raise SystemExit(f"{r.name}: no record on {data}")
        best, at_peak = found
        def m(metric, r=r):
            return res.metric(data, f"{r.id}:{metric}")

        body.append([r.label, m("top1").n, m("top1").fmt(short=True), f"{at_peak.fmt(short=True)} ({sizes[best]})",
                     m(f"top1@{two}").fmt(short=True), m(f"top1@{far}").fmt(short=True),
                     m(f"drop@{two}").fmt(short=True, signed=True)])
    return format_table(body, headers, markdown=True)


def compute(results: list[dict], data: str) -> str:
    """One line: training runs, test-time variants and their minutes on ``data`` (the report's own totals)."""
    runs = [r for r in results if r["data"] == data]
    if not runs:
        raise SystemExit(f"no runs on {data!r}")
    n = len(trained(runs))
    return f"{n} runs and {len(runs) - n} tests, {minutes(runs):,.0f} min of training and evaluation in all"


#: The CamVid protocols' dataset entries and row folders (experiments/t6_scale, t6_canvas).
DENSE = (("camvid-scale", "t6_scale", "Scale"), ("camvid-canvas", "t6_canvas", "Canvas"))


def dense_headline(results: list[dict], rows: dict, names: list[str]) -> str:
    """Markdown table: per row name, mIoU at 1x and at the largest size under each CamVid protocol (mean ± sd)."""
    headers, columns = ["encoding", "seeds"], []
    for data, folder, title in DENSE:
        runs = [r for r in results if r["data"] == data]
        if not runs:
            raise SystemExit(f"no runs on {data!r}; datasets: {sorted({r['data'] for r in results})}")
        sizes = runs[0]["sizes"]
        far = max(sizes, key=float)
        headers += [f"{title} 1x", f"{title} {far}x"]
        columns.append((data, folder, far, Results(runs, rows)))
    body = []
    for name in names:
        line, seeds = [], []
        for data, folder, far, res in columns:
            rid = f"{folder}/{name}"
            if rid not in rows:
                raise SystemExit(f"unknown row {name!r}: no experiments/{folder}/{name}.toml")
            one, last = res.metric(data, f"{rid}:miou"), res.metric(data, f"{rid}:miou@{far}")
            if not one.n:
                raise SystemExit(f"{name}: no record on {data}")
            seeds.append(str(one.n))
            line += [one.fmt(short=True), last.fmt(short=True)]
        body.append([rows[f"{DENSE[0][1]}/{name}"].label, "/".join(dict.fromkeys(seeds)), *line])
    return format_table(body, headers, markdown=True)


def dense_compute(results: list[dict]) -> str:
    """One line: the CamVid runs, tests and minutes over both protocols."""
    runs = [r for r in results if r["data"] in {d for d, _, _ in DENSE}]
    if not runs:
        raise SystemExit("no CamVid runs")
    n = len(trained(runs))
    return f"{n} runs and {len(runs) - n} tests, {minutes(runs):,.0f} min of training and evaluation in all"


TABLE = re.compile(r"(<!-- readme_table rows=(\S+) -->\n)(.*?)(\n<!-- /readme_table -->)", re.S)
COMPUTE = re.compile(r"(<!-- compute -->)(.*?)(<!-- /compute -->)", re.S)
DENSE_TABLE = re.compile(r"(<!-- dense_table rows=(\S+) -->\n)(.*?)(\n<!-- /dense_table -->)", re.S)
DENSE_COMPUTE = re.compile(r"(<!-- dense_compute -->)(.*?)(<!-- /dense_compute -->)", re.S)


def write_dense(text: str, results: list[dict], rows: dict) -> str:
    """``text`` with its marked CamVid table and compute line (if it has them) regenerated from ``results``."""
    names = [n for m in DENSE_TABLE.findall(text) for n in m[1].split(",") if n]
    text = DENSE_TABLE.sub(lambda m: m[1] + dense_headline(results, rows, [n for n in m[2].split(",") if n]) + m[4],
                           text)
    return DENSE_COMPUTE.sub(lambda m: m[1] + dense_compute(results) + m[3], text) if names else text


def write(text: str, results: list[dict], rows: dict, data: str) -> str:
    """``text`` (a README) with its marked table and compute line regenerated from ``results``."""
    tables, computes = TABLE.findall(text), COMPUTE.findall(text)
    if len(tables) != 1 or len(computes) != 1:
        raise SystemExit(f"expected one '<!-- readme_table rows=... -->' ... '<!-- /readme_table -->' block and one "
                         f"'<!-- compute -->' ... '<!-- /compute -->' span, found {len(tables)} and {len(computes)}")
    names = [n for n in tables[0][1].split(",") if n]
    text = TABLE.sub(lambda m: m[1] + headline(results, rows, data, names) + m[4], text)
    return COMPUTE.sub(lambda m: m[1] + compute(results, data) + m[3], text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "docs/results/cpu/results.json")
    p.add_argument("--data", default="imagenette", help="dataset entry (default: imagenette)")
    p.add_argument("--rows", help="comma-separated T2 row names (experiments/t2_resolution/NAME.toml), in order")
    p.add_argument("--write", type=Path, nargs="+", metavar="PAGE",
                   help="rewrite the marked table and compute line of these files (README.md docs/findings.md)")
    p.add_argument("--dense", action="store_true", help="print the CamVid headline of --rows instead")
    p.add_argument("--dense-results", type=Path, default=ROOT / "docs/results/cpu/camvid/results.json")
    args = p.parse_args()
    results = json.loads(args.results.read_text())["runs"]
    rows = load_rows(ROOT / "experiments")
    if args.dense and not args.write:
        dense = json.loads(args.dense_results.read_text())["runs"]
        print(dense_headline(dense, rows, [n.strip() for n in (args.rows or "none,ape,peg,peg_dilate").split(",")]))
        print()
        print(dense_compute(dense))
        return
    if args.write:
        if args.rows:
            p.error("--write takes its rows from each page's marker, not --rows")
        for page in args.write:
            old = page.read_text()
            if not (TABLE.search(old) or DENSE_TABLE.search(old)):
                raise SystemExit(f"{page} has no '<!-- readme_table rows=... -->' or '<!-- dense_table rows=... -->' "
                                 "block")
            new = write(old, results, rows, args.data) if TABLE.search(old) else old
            if DENSE_TABLE.search(new):
                new = write_dense(new, json.loads(args.dense_results.read_text())["runs"], rows)
            page.write_text(new)
            print(f"{page}: {'updated' if new != old else 'already up to date'}")
        return
    names = [n.strip() for n in args.rows.split(",") if n.strip()] if args.rows else None
    print(headline(results, rows, args.data, names))
    print()
    print(compute(results, args.data))


if __name__ == "__main__":
    main()
