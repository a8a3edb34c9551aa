"""The markdown report of a ``cpvt reproduce`` sweep: our numbers beside the paper's.

Everything here reads finished results (``result.json`` per run, ``cost.json``
for T5); nothing trains. Means and standard deviations are over seeds; a
claim's verdict compares means and says when the difference is inside the
seed-to-seed noise.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..utils.plotting import pyplot, save
from ..utils.table import format_table
from .experiments import NOT_INHERITED, TABLES, dataset_entries, environment, load_claims, load_rows, scales_of


class Stats:
    """Per-seed values of one metric of one row on one dataset."""

    def __init__(self, values: list[float]):
        self.values = values

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.mean(self.values) if self.values else math.nan

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    def fmt(self, short: bool = False, signed: bool = False) -> str:
        """``mean ± sd (n)``; ``short`` leaves out ``(n)``, ``signed`` prints a + on gains."""
        if not self.values:
            return "—"
        mean = f"{self.mean:+.2f}" if signed else f"{self.mean:.2f}"
        if self.n == 1:
            return mean
        return f"{mean} ± {self.sd:.2f}" + ("" if short else f" ({self.n})")


class Results:
    """Per-seed top-1 by (dataset, row id, scale)."""

    def __init__(self, results: list[dict[str, Any]], rows: dict[str, Any]):
        self.rows = rows
        self.by: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
        for r in results:
            for rid in r["rows"]:
                self.by[(r["data"], rid)][r["seed"]] = r
        self.datasets = list(dict.fromkeys(r["data"] for r in results))

    def runs(self, data: str, rid: str) -> dict[int, dict[str, Any]]:
        row = self.rows.get(rid)
        if row is not None and row.run and not row.eval_args:  # a row with eval_args has records of its own
            rid = row.run
        return self.by.get((data, rid), {})

    def has(self, data: str, rid: str) -> bool:
        return bool(self.runs(data, rid))

    def metric(self, data: str, operand: str) -> Stats:
        """``row`` | ``row:top1`` | ``row:top1@S`` | ``row:drop@S``, per seed (a segmentation row: ``miou`` for
        ``top1``, the metric its records hold)."""
        return Stats(list(self.per_seed(data, operand).values()))

    def per_seed(self, data: str, operand: str) -> dict[int, float]:
        """The metric of ``operand`` (see ``metric``) by seed, seeds in order; seeds not tested at that size left out."""
        rid, _, metric = operand.partition(":")
        runs = self.runs(data, rid)
        kind, _, scale = (metric or self.metric_name(data, rid)).partition("@")
        scale = f"{float(scale):g}" if scale else "1"
        vals = {}
        for seed in sorted(runs):
            s, own = runs[seed]["scales"], runs[seed].get("metric", "top1")
            if kind not in (own, "drop"):
                raise ValueError(f"unknown metric {kind!r} in {operand!r}: {rid}'s records hold {own}; use {own}, "
                                 f"{own}@S or drop@S")
            if scale not in s:
                continue
            vals[seed] = s[scale] if kind == own else s[scale] - s["1"]
        return vals

    def metric_name(self, data: str, rid: str) -> str:
        """What a row's records score at each size: ``top1`` (classification) or ``miou`` (segmentation)."""
        runs = self.runs(data, rid)
        return runs[min(runs)].get("metric", "top1") if runs else "top1"

    def paired_diff(self, data: str, a: str, b: str) -> Stats:
        """Per-seed a - b when both sides have the same 2+ seeds, else the difference of the means."""
        sa, sb = self.per_seed(data, a), self.per_seed(data, b)
        if sa.keys() == sb.keys() and len(sa) >= 2:
            return Stats([sa[k] - sb[k] for k in sa])
        return Stats([self.metric(data, a).mean - self.metric(data, b).mean])

    def noise(self, data: str) -> float | None:
        """Pooled seed standard deviation of top-1 over rows with 2+ seeds (None if none)."""
        sds = [Stats([r["scales"]["1"] for r in runs.values()]).sd for (d, rid), runs in self.by.items()
               if d == data and not getattr(self.rows.get(rid), "eval_args", None)]  # not the same runs again
        sds = [s for s in sds if s is not None]
        return math.sqrt(statistics.mean(s * s for s in sds)) if sds else None


def _delta(a: float, b: float) -> str:
    return "—" if math.isnan(a) or math.isnan(b) else f"{a - b:+.2f}"


def _num(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:g}" if isinstance(v, (int, float)) else str(v)


def judge(claim: dict[str, Any], res: Results, data: str) -> dict[str, Any] | None:
    """Evaluate one claim on one dataset; None when a side has no results there."""
    a = claim["a"]
    b = claim["b"]
    sides = [a] + ([] if isinstance(b, (int, float)) else [b])
    if not all(res.has(data, s.partition(":")[0]) for s in sides):
        return None  # a row this dataset does not train
    sa = res.metric(data, a)
    sb = Stats([float(b)] * sa.n) if isinstance(b, (int, float)) else res.metric(data, b)
    if not sa.n or not sb.n:
        return {"claim": claim["text"], "data": data, "ok": False, "within_noise": False, "checked": False,
                "verdict": "not checked (this budget does not test that resolution)", "paper": claim.get("paper", "")}
    if isinstance(b, (int, float)):
        diff = Stats([x - float(b) for x in sa.values])
    else:
        diff = res.paired_diff(data, a, b)
    d = sa.mean - sb.mean
    rel = claim["relation"]
    tol = float(claim.get("tolerance", 1.0))
    ok = {">": d > 0, "<": d < 0, "~": abs(d) <= tol}[rel]
    # noise of the difference: per-seed paired sd / sqrt(n) when both sides have the same 2+ seeds; else the
    # pooled seed sd scaled to a difference of two means over n_a and n_b seeds (sqrt(2) when one seed each)
    if diff.n >= 2:
        noise, how = diff.sd / math.sqrt(diff.n), f"paired over {diff.n} seeds"
    else:
        pooled = res.noise(data)
        how = "1 seed" if sa.n == sb.n == 1 else f"{sa.n} against {sb.n} seeds, unpaired"
        noise, how = (pooled * math.sqrt(1 / sa.n + 1 / sb.n), f"{how}; noise from the pooled seed sd") if pooled else (None, how)
    within = noise is not None and rel != "~" and abs(d) <= noise
    verdict = ("reproduced" if ok else "not reproduced") + (" (within seed noise)" if within else "")
    return {"claim": claim["text"], "data": data, "checked": True, "a": sa.mean, "b": sb.mean, "diff": d, "noise": noise,
            "noise_basis": how, "relation": rel, "ok": ok, "within_noise": within, "verdict": verdict,
            "paper": claim.get("paper", "")}


# ----------------------------------------------------------------------------- plots


def _paired_bars(labels: list[str], ours: list[float], paper: list[float], path: Path, *, ref: float, xlabel: str,
                 ours_label: str, paper_label: str, ours_err: list[float] | None = None, title: str | None = None,
                 xlim: tuple[float, float] | None = None) -> Path:
    """Horizontal bars, ours beside the paper's for each row (NaN: the paper has no number), reference line at ``ref``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(labels) + 1.6), dpi=120)
    y = range(len(labels))
    ax.barh([i - 0.2 for i in y], ours, height=0.38, xerr=ours_err, label=ours_label, color="tab:blue")
    ax.barh([i + 0.2 for i in y], [0 if math.isnan(p) else p for p in paper], height=0.38, label=paper_label,
            color=["none" if math.isnan(p) else "tab:orange" for p in paper])
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(ref, color="k", lw=0.8)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def plot_deltas(res: Results, data: str, table: str, rows: list[Any], base: str, path: Path, title: str) -> Path:
    """Grouped bars: each row's top-1 minus the baseline row's, ours (with seed sd) beside the paper's."""
    labels, ours, ours_err, paper = [], [], [], []
    base_ours, base_paper = res.metric(data, base).mean, res.rows[base].paper.get("top1")
    for r in rows:
        if not res.has(data, r.id):
            continue
        s = res.metric(data, r.id)
        labels.append(r.label)
        ours.append(s.mean - base_ours)
        ours_err.append(s.sd or 0.0)
        p = r.paper.get("top1")
        paper.append(p - base_paper if p is not None and base_paper is not None else math.nan)
    return _paired_bars(labels, ours, paper, path, ref=0.0, ours_err=ours_err, title=title,
                        xlabel=f"top-1 minus '{res.rows[base].label}' (points); error bar: seed sd",
                        ours_label=f"ours ({data})", paper_label="paper (ImageNet)")


def plot_resolution(res: Results, data: str, rows: list[Any], scales: list[str], sizes: dict[str, int],
                    path: Path) -> Path:
    """T2: top-1 against test size, one curve per row (mean, seed-sd band); the paper's on the right.

    Rows marked ``highlight = true`` (APE, PEG, PEG‡, GAP‡) are drawn thick; the others thin.
    """
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    shown = [r for r in rows if res.has(data, r.id)]
    # one distinct colour per row: tab10 up to 10 rows, then tab20 (dark shades first, then light)
    tab20 = plt.get_cmap("tab20").colors
    palette = plt.get_cmap("tab10").colors if len(shown) <= 10 else tab20[::2] + tab20[1::2]
    for i, r in enumerate(shown):
        xs, mean, sd = [], [], []
        for s in scales:
            st = res.metric(data, f"{r.id}:top1@{s}")
            if st.n:
                xs.append(sizes[s])
                mean.append(st.mean)
                sd.append(st.sd or 0.0)
        bold = bool(r.highlight)
        (line,) = ax.plot(xs, mean, marker="o", ms=4 if bold else 2.5, lw=2.4 if bold else 1.0,
                          alpha=1.0 if bold else 0.75, label=r.label, color=palette[i % len(palette)],
                          linestyle="-" if bold or i < 10 else "--", zorder=3 if bold else 2)
        ax.fill_between(xs, [m - e for m, e in zip(mean, sd)], [m + e for m, e in zip(mean, sd)],
                        alpha=0.18 if bold else 0.07, color=line.get_color())
        pr = r.paper.get("resolution", {})
        if pr:
            px = sorted(pr, key=float)
            bx.plot([224 * float(p) for p in px], [pr[p] for p in px], marker="o", label=r.label,
                    color=line.get_color(), lw=2.4 if bold else 1.0)
    train = sizes[scales[0]]
    ax.axvline(train, color="k", lw=0.8, ls=":")
    ax.set_title(f"ours: {data}, trained at {train} px (dotted), tested without fine-tuning", fontsize=10)
    bx.set_title("paper: ImageNet, trained at 224 px", fontsize=10)
    for a in (ax, bx):
        a.set_xlabel("test size (px)")
        a.set_ylabel("top-1 (%)")
        a.grid(alpha=0.3)
    ax.set_xscale("log", base=2)
    ax.set_xticks([sizes[s] for s in scales], [str(sizes[s]) for s in scales])
    ax.minorticks_off()
    ax.legend(fontsize=6 if len(shown) > 10 else 7, ncol=2 if len(shown) > 8 else 1)
    if bx.lines:
        bx.legend(fontsize=7)
    return save(fig, path)


def plot_cost(cost: list[dict[str, Any]], rows: dict[str, Any], path: Path) -> Path:
    """T5: throughput relative to DeiT of the same size, ours beside the paper's."""
    base_for = _cost_baselines(cost)
    labels, ours, paper = [], [], []
    for c in cost:
        b = base_for[c["row"]]
        labels.append(rows[c["row"]].label)
        ours.append(c["img_per_s"] / b["img_per_s"])
        pp, pb = rows[c["row"]].paper.get("img_per_s"), rows[b["row"]].paper.get("img_per_s")
        paper.append(pp / pb if pp and pb else math.nan)
    known = [v for v in ours + paper if not math.isnan(v)]
    return _paired_bars(labels, ours, paper, path, ref=1.0, xlim=(min([0.8] + known) - 0.02, max([1.05] + known) + 0.02),
                        xlabel="inference throughput relative to DeiT of the same size",
                        ours_label="ours (measured here)", paper_label="paper (V100)")


def _cost_baselines(cost: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each model's DeiT of the same width (deit_tiny for *_ti*, deit_small for *_s*, ...)."""
    by_model = {c["model"]: c for c in cost}
    size_of = {"ti": "deit_tiny", "tiny": "deit_tiny", "s": "deit_small", "small": "deit_small", "b": "deit_base",
               "base": "deit_base", "micro": "deit_micro"}
    out = {}
    for c in cost:
        parts = c["model"].split("_")
        base = size_of.get(parts[1]) if len(parts) > 1 else None
        out[c["row"]] = by_model.get(base, c)
    return out


# ----------------------------------------------------------------------------- report


def write_report(root: Path, budget: str, spec: dict[str, Any], tables: list[str], results: list[dict[str, Any]],
                 cost: list[dict[str, Any]] | None, out: Path, command: str, elapsed: float) -> Path:
    rows = load_rows(root)
    entries = {e["name"]: e for e in dataset_entries(spec)}
    tested = {d: [f"{s:g}" for s in scales_of(e, spec)] for d, e in entries.items()}
    # a dataset's results count only at the scales its budget entry tests now (CIFAR-10: 1x only)
    res = Results([{**r, "scales": {k: v for k, v in r["scales"].items() if k in tested.get(r["data"], [k])}}
                   for r in results], rows)
    lines = _header(budget, spec, results, command, elapsed)
    studies = [d for d in res.datasets if entries.get(d, {}).get("study")]
    for data in res.datasets:
        if data not in studies:
            lines += _dataset_section(res, data, entries.get(data, {}), rows, results, tables, tested, out)
    if studies:
        lines += _why_section(res, entries, rows, results, studies, tested, out)
    if cost:
        lines += [f"## {TABLES['T5'].title}", ""]
        lines += _t5_table(cost, rows)
        png = plot_cost(cost, rows, out / "t5_cost.png")
        lines += ["", f"![T5]({png.name})", ""]
    # resolution claims only where the dataset has a T2 (CIFAR-10's 2x was upsampling: dropped, see its note)
    summary = [v for data in res.datasets if data not in studies for c in load_claims(root)
               if (any(TABLES[t].tests_sizes for t in entries.get(data, {}).get("tables", ["T2"]))
                   or "@" not in f"{c['a']}{c['b']}")
               and (v := judge(c, res, data)) is not None]
    lines += _claims_section(summary)
    (out / "results.json").write_text(json.dumps({"budget": budget, "command": command, "runs": results, "cost": cost,
                                                  "claims": summary}, indent=2))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def trained(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training runs' records, without the records of testing them with other model options (T2 eval_args)."""
    return [r for r in results if "eval_args" not in r]


def minutes(results: list[dict[str, Any]]) -> float:
    """Training plus evaluation time of ``results``, in minutes (the compute every report line quotes)."""
    return sum(r.get("train_s", 0) + r.get("eval_s", 0) for r in results) / 60


def _header(budget: str, spec: dict[str, Any], results: list[dict[str, Any]], command: str, elapsed: float) -> list[str]:
    lines = [f"# CPVT reproduction, `{budget}` budget", ""]
    lines += [f"Produced by `{command}` on {_dt.date.today().isoformat()} ({environment()}); "
              f"this invocation took {elapsed / 60:.1f} min (finished runs are reused, so a rerun is quick; "
              f"training time per run is in `results.json`).", ""]
    lines += [spec.get("description", ""), ""]
    tests = len(results) - len(trained(results))
    lines += [f"{len(trained(results))} training runs" + (f" and {tests} tests of them with other model options" if tests else "")
              + f"; their training and evaluation took {minutes(results):.1f} min in all. "
              "Paper numbers are ImageNet-1k, 300 epochs, 224 px (CPVT, Chu et al. 2023, Tables 1-3); ours are far smaller, so "
              "compare directions and differences, not absolute accuracy. `a ± b (n)`: mean ± sample sd over n seeds.",
              ""]
    return lines


def _dataset_section(res: Results, data: str, entry: dict[str, Any], rows: dict[str, Any],
                     results: list[dict[str, Any]], tables: list[str], tested: dict[str, list[str]],
                     out: Path) -> list[str]:
    """One dataset: its setup, then each table it runs, drawn by the table's kind."""
    sample = next(r for r in results if r["data"] == data)
    scales = tested.get(data, list(sample["sizes"]))
    sizes = {s: sample["sizes"][s] for s in scales}
    runs = [r for r in results if r["data"] == data]
    lines = [f"## {data}", ""]
    train_px = "x".join(map(str, sample["train_size"])) if isinstance(sample["train_size"], list) else sample["train_size"]
    held_out = f"{sample.get('eval_images') or 'all'} held-out " + (
        f"{sample['split']} frames" if "split" in sample else "images")
    lines += [f"Setup: `{entry.get('recipe')}` recipe with {json.dumps(entry.get('train', {}))}; model overrides "
              f"{json.dumps(entry.get('model_args', {}))}; trained at {train_px} px for "
              f"{sample['epochs']} epochs; tested at {', '.join(f'{px} px' for px in sizes.values())} "
              f"on {held_out}. {len(trained(runs))} runs, "
              f"{minutes(runs):.0f} min of training and "
              f"evaluation.{_flatness(trained(runs))}", ""]
    if entry.get("note"):
        lines += [entry["note"].strip(), ""]
    for table, spec in TABLES.items():
        if spec.kind == "cost" or table not in tables or table not in entry.get("tables", []):
            continue
        trows = [r for r in rows.values() if r.table == table]
        stem = f"{table.lower()}_{data}"
        lines += [f"### {spec.title}", ""]
        if spec.kind == "resolution":
            lines += _t2_table(res, data, trows, scales, sizes)
            png = plot_resolution(res, data, trows, scales, sizes, out / f"{stem}.png")
        elif spec.kind == "dense":
            lines += dense_tables(res, data, trows, scales, sizes)
            png = plot_dense(res, data, trows, scales, sizes, out / f"{stem}.png", spec.title)
        else:
            lines += _delta_table(res, data, table, trows, spec.baseline)
            png = plot_deltas(res, data, table, trows, spec.baseline, out / f"{stem}.png", f"{spec.title} — {data}")
        lines += ["", f"![{table} {data}]({png.name})", ""]
    return lines


def _claims_section(verdicts: list[dict[str, Any]]) -> list[str]:
    """Each claim's verdict on each dataset, with a count of those that go the paper's way."""
    if not verdicts:
        return []
    n_ok = sum(v["ok"] for v in verdicts)
    n_checked = sum(v["checked"] for v in verdicts)
    n_clear = sum(v["ok"] and not v["within_noise"] for v in verdicts)
    lines = ["## The paper's claims, checked", "",
             f"{n_ok} of {n_checked} checks go the paper's way, {n_clear} of them by more than the seed noise. "
             "\"Within seed noise\" marks a difference smaller than its noise estimate (the sd of the per-seed paired "
             "difference over sqrt(n), or, with one seed, the pooled seed sd times sqrt 2): its direction is not "
             "established by this run.", ""]
    for v in verdicts:
        if not v["checked"]:
            lines.append(f"- ➖ **{v['verdict']}** [{v['data']}]: {v['claim']}; paper {v['paper']}.")
            continue
        mark = "✅" if v["ok"] and not v["within_noise"] else ("⚠️" if v["within_noise"] else "❌")
        noise = f", noise {v['noise']:.2f}" if v["noise"] is not None else ""
        lines.append(f"- {mark} **{v['verdict']}** [{v['data']}]: {v['claim']}. Ours {v['a']:.2f} vs "
                     f"{v['b']:.2f} ({v['diff']:+.2f}{noise}; {v['noise_basis']}); paper {v['paper']}.")
    return lines + [""]


def _changed(entry: dict[str, Any], base: dict[str, Any]) -> str:
    """What a study entry changes against its base: ``key: base value -> new value``."""
    diffs = []
    for group in ("train", "model_args"):
        for k, v in entry.get(group, {}).items():
            if base.get(group, {}).get(k) != v:
                diffs.append(f"`{k}` {json.dumps(base.get(group, {}).get(k, 'default'))} → {json.dumps(v)}")
    for k, v in entry.items():
        if k not in ("train", "model_args", "seeds", "tables", *NOT_INHERITED) and base.get(k) != v:
            diffs.append(f"`{k}` {json.dumps(base.get(k))} → {json.dumps(v)}")
    return "; ".join(diffs) or "nothing"


def _why_section(res: Results, entries: dict[str, dict[str, Any]], rows: dict[str, Any],
                 results: list[dict[str, Any]], studies: list[str], tested: dict[str, list[str]],
                 out: Path) -> list[str]:
    """One table per study: each of its rows beside the same row under the study's base protocol."""
    lines = ["## Why: variants of the protocol", "",
             "Each study changes one thing in a protocol above and trains some of its rows again. Columns as in "
             "T2: top-1 at 1x, the size where the mean peaks, and the change from 1x to that peak, to 2x and to "
             "the largest test size.", ""]
    if (out / "conclusion.md").exists():  # written by a person from these numbers, kept beside the report
        lines += ["The conclusion drawn from these numbers, with the commands behind each: "
                  "[conclusion.md](conclusion.md).", ""]
    if (out / "why" / "summary.md").exists():  # written by scripts/why_analysis.py
        lines += ["What the trained models' position code does at 1x and 2x (position probe, attention distance, "
                  "PEG response, distinct codes; the PEG models also with dilated kernels): "
                  "[why/summary.md](why/summary.md).",
                  ""]
    for data in studies:
        entry = entries[data]
        base_name = entry.get("base", entry["data"])
        runs = [r for r in results if r["data"] == data]
        sample = runs[0]
        scales = tested.get(data, list(sample["sizes"]))
        ends = list(dict.fromkeys(["2" if "2" in scales else scales[-1], scales[-1]]))  # 2x and the largest
        lines += [f"### {entry['study']}", "",
                  f"`{data}`: {_changed(entry, entries.get(base_name, {}))} (against `{base_name}`). {len(runs)} runs, "
                  f"{minutes(runs):.0f} min of training and "
                  f"evaluation.{_flatness(runs)}", ""]
        if entry.get("note"):
            lines += [entry["note"].strip(), ""]
        body = []
        for r in rows.values():  # the trained rows, then the test-time rows with records of their own
            if not (r.table == "T1" or (r.table == "T2" and r.eval_args)) or not res.has(data, r.id):
                continue
            for name in (base_name, data):
                found = peak(res, name, r.id, scales) if res.has(name, r.id) else None
                if found is None:
                    continue
                best, _ = found
                base = res.metric(name, r.id)
                body.append([r.label, name, base.n, base.fmt(short=True), f"{sample['sizes'][best]} px",
                             res.metric(name, f"{r.id}:drop@{best}").fmt(short=True, signed=True),
                             *(res.metric(name, f"{r.id}:drop@{s}").fmt(short=True, signed=True) for s in ends)])
        headers = ["row", "protocol", "n", "top-1 at 1x", "peak size", "Δ 1x → peak",
                   *(f"Δ 1x → {s}x ({sample['sizes'][s]} px)" for s in ends)]
        lines += [format_table(body, headers, markdown=True), ""]
    return lines


def last_gain(curve: list[list[float]]) -> float | None:
    """What the last 10% of epochs added to validation top-1; ``curve`` is ``[[epoch, top1], ...]``."""
    if len(curve) < 3:
        return None
    before = [top1 for epoch, top1 in curve if epoch <= 0.9 * curve[-1][0]]
    return curve[-1][1] - before[-1] if before else None


def _flatness(runs: list[dict[str, Any]]) -> str:
    """How much the last 10% of epochs added, over the runs' learning curves."""
    gains = [g for r in runs if (g := last_gain(r.get("curve") or [])) is not None]
    if not gains:
        return ""
    what = "validation mIoU" if any("metric" in r for r in runs) else "top-1"
    return (f" Learning curves: the last 10% of epochs added {statistics.mean(gains):+.2f} points of {what} on "
            f"average (max {max(gains):+.2f}) over {len(gains)} runs.")


def _delta_table(res: Results, data: str, table: str, trows: list[Any], base: str) -> list[str]:
    base_ours = res.metric(data, base).mean
    base_paper = res.rows[base].paper.get("top1")
    headers = ["row", "model", "overrides", "PE params", "ours top-1", "ours Δ", "paper top-1", "paper Δ"]
    body, single = [], set()  # single: the seeds of rows that ran only one
    for r in trows:
        runs = res.runs(data, r.id)
        if not runs:
            continue
        first = runs[min(runs)]
        s = res.metric(data, r.id)
        if s.n == 1:
            single.update(runs)
        p = r.paper.get("top1")
        over = ", ".join(f"{k}={v}" for k, v in first["model_args"].items()
                         if k in r.model_args) or "—"
        body.append([r.label, first["model"], over, first.get("pos_params", "—"), s.fmt(), _delta(s.mean, base_ours),
                     _num(p), _delta(p, base_paper) if p is not None and base_paper is not None else "—"])
    note = f"Δ: minus the '{res.rows[base].label}' row ({base})."
    noise = res.noise(data)
    if single and noise is not None:
        note += (f" Rows without ± ran one seed ({', '.join(map(str, sorted(single)))}); top-1's seed sd on {data}, pooled "
                 f"over the rows with 2+ seeds, is {noise:.2f}, so a Δ between two single runs has an sd of about "
                 f"{math.sqrt(2) * noise:.2f}.")
    return [format_table(body, headers, markdown=True), "", note]


def peak(res: Results, data: str, rid: str, scales: list[str]) -> tuple[str, Stats] | None:
    """The scale where the row's mean top-1 is highest, and the per-seed top-1 there."""
    curve = {s: res.metric(data, f"{rid}:top1@{s}") for s in scales}
    curve = {s: st for s, st in curve.items() if st.n}
    if not curve:
        return None
    best = max(curve, key=lambda s: curve[s].mean)
    return best, curve[best]


def _t2_table(res: Results, data: str, trows: list[Any], scales: list[str], sizes: dict[str, int]) -> list[str]:
    """Top-1 at every test size, then each row's own peak and its changes from 1x (beside the paper's)."""
    body = []
    for r in trows:
        if res.has(data, r.id):
            body.append([r.label] + [res.metric(data, f"{r.id}:top1@{s}").fmt() for s in scales])
    sizes_table = format_table(body, ["row"] + [f"{sizes[s]} px ({s}x)" for s in scales], markdown=True)
    two = "2" if "2" in scales else scales[-1]
    paper_scales = sorted({k for r in trows for k in r.paper.get("resolution", {})}, key=float)
    headers = (["row", "n", "peak size", "top-1 at 1x", "top-1 at peak", "Δ 1x → peak", f"Δ 1x → {two}x"]
               + [f"paper {s}x" for s in paper_scales] + ["paper Δ 1x → 2x"])
    body = []
    for r in trows:
        found = peak(res, data, r.id, scales) if res.has(data, r.id) else None
        if found is None:
            continue
        best, at_peak = found
        base = res.metric(data, r.id)
        gain = res.metric(data, f"{r.id}:drop@{best}")
        drop = res.metric(data, f"{r.id}:drop@{two}")
        pr = r.paper.get("resolution", {})
        pdrop = f"{pr['2.0'] - pr['1.0']:+.1f}" if "2.0" in pr and "1.0" in pr else "—"
        body.append([r.label, base.n, f"{sizes[best]} px ({best}x)", base.fmt(short=True), at_peak.fmt(short=True),
                     gain.fmt(short=True, signed=True), drop.fmt(short=True, signed=True)]
                    + [_num(pr.get(s)) for s in paper_scales] + [pdrop])
    return ["Top-1 (%) at each test size, mean ± sd over seeds:", "", sizes_table, "",
            "Each row against its own peak (FixRes: a model trained with random-resized crops at R tests best "
            "somewhat above R), and at 2x:", "", format_table(body, headers, markdown=True), "",
            "Peak: the test size with the highest mean top-1. Δ: per-seed top-1 there minus top-1 at 1x, then "
            "mean ± sd. Paper columns: ImageNet, tested at 224, 384, 448 and 512 px after training at 224 "
            "(1x, 1.71x, 2x, 2.29x)."]


def _scale_header(sizes: dict[str, Any], s: str) -> str:
    return f"{sizes[s]} ({s}x)"


def dense_tables(res: Results, data: str, trows: list[Any], scales: list[str], sizes: dict[str, Any]) -> list[str]:
    """A segmentation table: mIoU and pixel accuracy at every test size (mean ± sd over seeds), the change from
    1x to the largest size, and per-class IoU of the highlighted rows at 1x and at the largest size."""
    last = scales[-1]
    shown = [r for r in trows if res.has(data, r.id)]
    body = [[r.label] + [res.metric(data, f"{r.id}:miou@{s}").fmt() for s in scales]
            + [res.metric(data, f"{r.id}:drop@{last}").fmt(short=True, signed=True)] for r in shown]
    miou = format_table(body, ["row"] + [_scale_header(sizes, s) for s in scales] + [f"Δ 1x → {last}x"],
                        markdown=True)
    acc = [[r.label] + [Stats([run["pixel_acc"][s] for run in res.runs(data, r.id).values() if s in run["pixel_acc"]])
                        .fmt() for s in scales] for r in shown]
    acc_table = format_table(acc, ["row"] + [_scale_header(sizes, s) for s in scales], markdown=True)
    lines = ["mIoU (%) at each test size, mean ± sd over seeds (Δ: per-seed mIoU at the largest size minus at 1x):",
             "", miou, "", "Pixel accuracy (%):", "", acc_table, ""]
    core = [r for r in shown if r.highlight]
    first = next(iter(res.runs(data, shown[0].id).values()), None) if shown else None
    if core and first and "iou" in first:
        classes = first["classes"]
        body = []
        for r in core:
            for s in dict.fromkeys(["1", last]):
                per = [run["iou"][s] for run in res.runs(data, r.id).values() if s in run["iou"]]
                body.append([r.label, f"{s}x"] + [f"{statistics.mean(c):.1f}" for c in zip(*per)])
        lines += [f"Per-class IoU (%), mean over seeds, at 1x and {last}x:", "",
                  format_table(body, ["row", "size"] + classes, markdown=True), ""]
    return lines


def plot_dense(res: Results, data: str, rows: list[Any], scales: list[str], sizes: dict[str, Any], path: Path,
               title: str) -> Path:
    """mIoU against the test scale, one curve per row (mean, seed-sd band); test-time variants dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    shown = [r for r in rows if res.has(data, r.id)]
    trained_rows = [r for r in shown if not r.run]
    palette = plt.get_cmap("tab10").colors
    colour = {r.id: palette[i % len(palette)] for i, r in enumerate(trained_rows)}
    xs = [float(s) for s in scales]
    for r in shown:
        st = [res.metric(data, f"{r.id}:miou@{s}") for s in scales]
        pts = [(x, t.mean, t.sd or 0.0) for x, t in zip(xs, st) if t.n]
        if not pts:
            continue
        x, m, e = zip(*pts)
        c = colour.get(r.run or r.id, "grey")
        ax.plot(x, m, marker="o", ms=3, lw=2.0 if r.highlight else 1.0, color=c, ls="--" if r.run else "-",
                label=r.label)
        ax.fill_between(x, [a - b for a, b in zip(m, e)], [a + b for a, b in zip(m, e)], alpha=0.1, color=c)
    ax.set_xticks(xs, [f"{s}x\n{sizes[s]}".replace(" window ", "\nwindow ") for s in scales], fontsize=7)
    ax.set_xlabel("test size (multiple of the training size); dashed: a test-time fix of the row of the same colour")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{title} — {data}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save(fig, path)


def _t5_table(cost: list[dict[str, Any]], rows: dict[str, Any]) -> list[str]:
    base_for = _cost_baselines(cost)
    headers = ["model", "params", "PE params", "GFLOPs", "img/s (ours)", "ratio to DeiT (ours)", "params (paper)",
               "img/s (paper, V100)", "ratio (paper)"]
    body = []
    for c in cost:
        r, b = rows[c["row"]], base_for[c["row"]]
        pp, pb = r.paper.get("img_per_s"), rows[b["row"]].paper.get("img_per_s")
        body.append([c["model"], c["params"], c["pos_params"], round(c["flops"] / 1e9, 3), round(c["img_per_s"], 1),
                     f"{c['img_per_s'] / b['img_per_s']:.3f}", r.paper.get("params", "—"), _num(pp),
                     f"{pp / pb:.3f}" if pp and pb else "—"])
    size = cost[0]["img_size"] if cost else "?"
    return [format_table(body, headers, markdown=True), "",
            f"Measured at {size} px, fp32 inference, batch and repeats from the budget, models timed round-robin in "
            "one process; compare the ratios, not the absolute img/s (different hardware)."]
