#!/usr/bin/env bash
# Run a reproduction sweep one row at a time and commit each run's result record
# within a minute of its being written, so a session that ends mid-sweep loses at most the
# runs in progress (the next session, even on a fresh clone, skips every committed run).
#
#   scripts/sweep.sh [BUDGET] [TABLES] [ROW ...]      # default: cpu T1,T2,T3,T4, every row
#   LANES=2 scripts/sweep.sh ...                      # two runs at a time, 1 thread each
#   DATA=imagenette scripts/sweep.sh ...              # only these dataset entries (main protocol before studies)
#   SEEDS=1 scripts/sweep.sh ...                      # at most this many seeds per row (seed 0 of every row first)
#   OUT=docs/results/cpu/camvid scripts/sweep.sh cpu T6S,T6C   # records and report in a folder of their own
#                                                     # (a report covers the tables asked for: keep each set apart)
#
# With LANES=N, N copies of the row loop run side by side with nproc/N threads
# each; each run folder is locked by the lane that starts it (cpvt.runlock) and
# the other lanes move on, so no run is trained twice. On 2 cores, two 1-thread
# lanes train about 1.2x faster in total than one 2-thread lane.
# Records keep the thread count they were made with; re-run a number with the
# same OMP_NUM_THREADS to get it back bit for bit.
#
# Each step rewrites the report over every finished run of TABLES.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-cpu}
tables=${2:-T1,T2,T3,T4}
shift $(( $# < 2 ? $# : 2 ))
out=${OUT:-docs/results/$budget}
mkdir -p "$out/records"
bin=.venv/bin
lanes=${LANES:-1}
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
  mapfile -t rows < <($bin/python - "$tables" <<'PY'
import sys
from cpvt.study.experiments import experiments_dir, load_rows, parse_tables
tables = parse_tables(sys.argv[1])
names = [r.name for r in load_rows(experiments_dir()).values() if r.table in tables]
print("\n".join(dict.fromkeys(names)))
PY
)
fi

# Commit every new result record, one commit per record, naming its run.
commit_records() {
  for try in 1 2 3 4 5; do  # git's own index lock may be busy (another lane, or a person committing)
    if (
      flock 9  # one committer at a time
      git add "$out/records" || exit 1
      git diff --cached --name-only -- "$out/records" | while read -r f; do
        git commit -q -m "$budget sweep: result record $(basename "$(dirname "$f")")/$(basename "$f" .json)" -- "$f" || exit 1
      done
    ) 9>"$out/.commit.lock"; then return 0; fi
    sleep 10
  done
}

# One row failing (or a run stopped by hand with SIGTERM) does not end the lane: it goes on to the next
# row and reports the failure in its exit status at the end.
lane() {
  local failed=0 rc
  for row in "${rows[@]}"; do
    rc=0
    $bin/cpvt reproduce "$tables" --budget "$budget" --rows "$row" --out "$out" ${DATA:+--data "$DATA"} ${SEEDS:+--seeds "$SEEDS"} || rc=$?
    if [ "$rc" -ne 0 ]; then echo "sweep: row $row stopped with status $rc; going on to the next row" >&2; failed=1; fi
    commit_records
  done
  return $failed
}

# A row has several seeds: commit each record within a minute of its run finishing,
# not when the row ends, so a session cut off mid-row keeps its finished runs.
( while sleep 60; do commit_records; done ) &
committer=$!
trap 'kill $committer 2>/dev/null; commit_records' EXIT

if [ "$lanes" -le 1 ]; then
  lane
else
  threads=$(( $(nproc) / lanes ))
  threads=$(( threads < 1 ? 1 : threads ))
  pids=()
  for k in $(seq 1 "$lanes"); do
    OMP_NUM_THREADS=$threads lane > "$out/lane$k.log" 2>&1 &
    pids+=($!)
    sleep 5  # stagger the starts
  done
  status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  # final report over the same rows and data (without --data it would go on to train the rows' other datasets).
  # It also finishes any run a lane left (for example one stopped by hand): at the lanes' thread count, since a
  # record made with N threads comes back bit for bit only with N.
  # SEEDS too: without it the final pass would go on to train every seed the lanes were told to leave, in one lane.
  OMP_NUM_THREADS=$threads $bin/cpvt reproduce "$tables" --budget "$budget" --out "$out" --rows "$(IFS=,; echo "${rows[*]}")" \
    ${DATA:+--data "$DATA"} ${SEEDS:+--seeds "$SEEDS"}
  exit $status
fi
