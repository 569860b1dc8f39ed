#!/usr/bin/env bash
# Runs the herd benchmark as README.md's table reports it: RUNS consecutive rounds, each running
# distcache and naive (distcache first in odd rounds, naive first in even ones) at 4 x 32 and at
# 4 x 128 callers, on four fresh memcached processes per run (--spawn-servers). Both systems of a
# round run the same scenario: the same --seed, so the same key orders (round r uses SEED + r;
# SEED defaults to a random number, printed). EXTRA adds flags to every run (not --seed, which
# would give every round the same orders). One JSON line per run on stdout (and in $OUT),
# then the median and the range of each figure, and each round's ratios distcache / naive.
#
#   examples/bench/herd-table.sh            # RUNS=5
#   RUNS=1 examples/bench/herd-table.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-5}
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
echo "herd-table: rounds seeded from $SEED" >&2
OUT=${OUT:-target/herd-runs.jsonl}
cargo build --release --locked --example herd >&2
: > "$OUT"
for run in $(seq 1 "$RUNS"); do
    for callers in 32 128; do
        if (( run % 2 )); then order="distcache naive"; else order="naive distcache"; fi
        for system in $order; do
            # shellcheck disable=SC2086
            line=$(target/release/examples/herd --spawn-servers --system "$system" --callers "$callers" --seed $((SEED + run)) ${EXTRA:-} 2>/dev/null)
            echo "{\"run\":$run,${line#\{}" | tee -a "$OUT"
        done
    done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\ntokio workers per process: {sorted({r['workers'] for r in rows})}; seeds: {sorted({r['seed'] for r in rows})}")
fields = ["duplicate_calls", "failed_calls", "cold_wall_s", "handoff_p99_ms", "store_ops_per_wait", "warm_ops_per_s"]
for callers in (32, 128):
    print(f"\n4 x {callers}")
    for system in ("distcache", "naive"):
        sel = [r for r in rows if r["callers"] == callers and r["system"] == system]
        cells = []
        for f in fields:
            vals = [r[f] for r in sel if r[f] is not None]
            cells.append(f"{f} {statistics.median(vals):g} [{min(vals):g}..{max(vals):g}]" if vals else f"{f} -")
        print(f"  {system:9}", "; ".join(cells))
    for run in sorted({r["run"] for r in rows}):
        d = next(r for r in rows if r["run"] == run and r["callers"] == callers and r["system"] == "distcache")
        n = next(r for r in rows if r["run"] == run and r["callers"] == callers and r["system"] == "naive")
        print(f"  run {run}: cold {d['cold_wall_s'] / n['cold_wall_s']:.2f} x naive, warm {d['warm_ops_per_s'] / n['warm_ops_per_s']:.2f} x naive")
PY
