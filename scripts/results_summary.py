"""Print the README's summary table from a `cpvt reproduce` output folder.

    .venv/bin/python scripts/results_summary.py docs/results/cpu

T1 rows: top-1 at the training size and at 2x (mean ± sd over seeds) per dataset,
beside the paper's ImageNet numbers at 224 and 448 px; then the claim tally.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cpvt.study.report import Results
from cpvt.study.reproduce import experiments_dir, load_rows


def main(folder: str) -> None:
    data = json.loads((Path(folder) / "results.json").read_text())
    rows = load_rows(experiments_dir())
    res = Results(data["runs"], rows)
    t1 = [r for r in rows.values() if r.table == "T1"]
    headers = ["encoding"]
    for d in res.datasets:
        headers += [f"{d} 1x", f"{d} 2x"]
    headers += ["paper 224", "paper 448"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in t1:
        cells = [r.label]
        for d in res.datasets:
            cells += [res.metric(d, r.id).fmt(), res.metric(d, f"{r.id}:top1@2").fmt()]
        t2 = rows.get(r.id.replace("t1_encodings", "t2_resolution"))
        pr = t2.paper.get("resolution", {}) if t2 else {}
        cells += [str(r.paper.get("top1", "—")), str(pr.get("2.0", "—"))]
        print("| " + " | ".join(cells) + " |")
    claims = data.get("claims", [])
    checked = [c for c in claims if c.get("checked")]
    ok = [c for c in checked if c["ok"]]
    clear = [c for c in ok if not c["within_noise"]]
    print(f"\n{len(ok)} of {len(checked)} claim checks go the paper's way; {len(clear)} of them by more than the seed noise.")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/cpu")
