#!/usr/bin/env bash
# Issue 3's client-overhead figure in one command: the runner's client and SGLang's own
# bench_serving.py against the same serve-sim (zero engine cost) on this machine, client CPU
# per 1k output tokens side by side, with the ratio, for SGLang's coalesced stream and for one
# chunk per token. ~15 min with the defaults. See bench/README.md.
# Environment knobs (defaults in brackets):
#   RUNS [3]  runs of the runner's benchmark (its figure is their median; bench_serving's is
#             one run, ~15 s a point)
#   CONCURRENCIES ["1 8 64 512 1024"]   BUILD [1] (0: use the binaries already built)
#   OUT [target/bench-compare]  where the raw rows, each run's output and table.md go
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-3}
CONCURRENCIES=${CONCURRENCIES:-"1 8 64 512 1024"}
BUILD=${BUILD:-1}
OUT=${OUT:-$ROOT/target/bench-compare}
mkdir -p "$OUT"
rm -f "$OUT"/runner.jsonl "$OUT"/runner-run*.txt

log() { printf '[compare] %s\n' "$*" >&2; }

if [[ $BUILD == 1 ]]; then
  cargo build --release --locked -p runner
  cargo bench --locked -p runner --bench client --no-run
fi

# The runner first, then bench_serving, back to back: this machine's load drifts over an hour.
for i in $(seq 1 "$RUNS"); do
  log "runner client benchmark, run $i of $RUNS"
  CLIENT_BENCH_JSON=$OUT/runner.jsonl CLIENT_BENCH_PARTS=coalesced,per-step,floor \
    CLIENT_BENCH_CONCURRENCY=${CONCURRENCIES// /,} \
    cargo bench --locked -q -p runner --bench client >"$OUT/runner-run$i.txt"
done
for stream in coalesced per-step; do
  log "bench_serving.py, stream $stream"
  STREAM=$stream BUILD=0 CONCURRENCIES=$CONCURRENCIES RESULTS=$OUT/bench_serving-$stream.md \
    bash bench/bench_serving_compare.sh >/dev/null
done

python3 bench/ratio.py "$OUT/runner.jsonl" \
  "$ROOT/target/bench-serving/rows.jsonl" "$ROOT/target/bench-serving-per-step/rows.jsonl" \
  | tee "$OUT/table.md"
log "written $OUT/table.md (bench_serving's own tables: $OUT/bench_serving-*.md)"
