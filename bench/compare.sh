#!/usr/bin/env bash
# Issue 3's client-overhead figure in one command: the runner's client and SGLang's own
# bench_serving.py against the same serve-sim (zero engine cost) on this machine, client CPU
# per 1k output tokens side by side, with the ratio, for SGLang's coalesced stream and for one
# chunk per token. ~30 min with the defaults. See bench/README.md.
# Environment knobs (defaults in brackets):
#   RUNS [3]  rounds; in each, every concurrency point is measured by the runner's benchmark
#             then by bench_serving for each stream (~15 s a point), back to back, so both
#             clients see the machine's drift alike; each client's figure is the median of its
#             rounds, and the median of the rounds' own ratios is printed beside it
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
rm -f "$OUT"/runner.jsonl "$OUT"/runner-run*.txt "$OUT"/bench_serving-*

log() { printf '[compare] %s\n' "$*" >&2; }

if [[ $BUILD == 1 ]]; then
  cargo build --release --locked -p runner
  cargo bench --locked -p runner --bench client --no-run
fi

# Rounds, and in each round every concurrency point measured by both clients back to back (the
# runner's benchmark at that point, then bench_serving for each stream): this machine's speed
# drifts by tens of percent over minutes, so the two clients' figures for a point are taken
# within a minute of each other, and the ratio of each such pair is kept (ratio.py prints the
# median of the pairs' ratios next to the ratio of the medians).
for i in $(seq 1 "$RUNS"); do
  for c in $CONCURRENCIES; do
    parts=coalesced,per-step,async-floor
    [[ $c == 1 ]] && parts=$parts,floor
    log "round $i of $RUNS, concurrency $c: the runner's client benchmark"
    CLIENT_BENCH_JSON=$OUT/runner.jsonl CLIENT_BENCH_PARTS=$parts CLIENT_BENCH_CONCURRENCY=$c \
      cargo bench --locked -q -p runner --bench client >>"$OUT/runner-run$i.txt"
    for stream in coalesced per-step; do
      log "round $i of $RUNS, concurrency $c: bench_serving.py, stream $stream"
      STREAM=$stream BUILD=0 CONCURRENCIES=$c \
        RESULTS=$OUT/bench_serving-$stream-run$i-c$c.md bash bench/bench_serving_compare.sh >/dev/null
      rows=$ROOT/target/bench-serving/rows.jsonl
      [[ $stream == per-step ]] && rows=$ROOT/target/bench-serving-per-step/rows.jsonl
      cat "$rows" >>"$OUT/bench_serving-$stream.jsonl"
    done
  done
done

python3 bench/ratio.py "$OUT/runner.jsonl" \
  "$OUT/bench_serving-coalesced.jsonl" "$OUT/bench_serving-per-step.jsonl" | tee "$OUT/table.md"
log "written $OUT/table.md (bench_serving's own tables: $OUT/bench_serving-*-run*.md)"
