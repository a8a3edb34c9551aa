#!/usr/bin/env bash
# Run a reproduction sweep one row at a time and commit each row's result records
# as soon as they are written, so a session that ends mid-sweep loses at most the
# run in progress (the next session, even on a fresh clone, skips every committed run).
#
#   scripts/sweep.sh [BUDGET] [TABLES] [ROW ...]      # default: cpu T1,T2,T3,T4, every row
#
# Each step rewrites the report over every finished run of TABLES.
#
# Finished rows are skipped by `cpvt reproduce` itself (their records exist).
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-cpu}
tables=${2:-T1,T2,T3,T4}
shift $(( $# < 2 ? $# : 2 ))
out=docs/results/$budget
bin=.venv/bin
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
  mapfile -t rows < <($bin/python - "$tables" <<'PY'
import sys
from cpvt.reproduce import experiments_dir, load_rows, parse_tables
tables = parse_tables(sys.argv[1])
names = [r.name for r in load_rows(experiments_dir()).values() if r.table in tables]
print("\n".join(dict.fromkeys(names)))
PY
)
fi
for row in "${rows[@]}"; do
  $bin/cpvt reproduce "$tables" --budget "$budget" --rows "$row" --out "$out"
  git add "$out/records"
  if ! git diff --cached --quiet -- "$out/records"; then
    git commit -q -m "$budget sweep: result records of row $row" -- "$out/records"
  fi
done
