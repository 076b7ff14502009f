"""The runner's client CPU per 1k output tokens against bench_serving.py's, side by side.

Usage: ratio.py RUNNER_JSONL BENCH_SERVING_COALESCED_ROWS BENCH_SERVING_PER_STEP_ROWS

RUNNER_JSONL: the lines `cargo bench -p runner --bench client` appends with
CLIENT_BENCH_JSON set. The rows files: `target/bench-serving{,-per-step}/rows.jsonl` from
bench/bench_serving_compare.sh, or several runs' rows concatenated. Each point is the median of
the runs that measured it, for either client.
Prints a markdown table (ratio = bench_serving's CPU per token / the runner's), the floor at
each concurrency (`async-floor` rows) against both, and the blocking floor at concurrency 1.
"""
import json
import statistics
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    runner = load(argv[1])
    bs = {"coalesced": load(argv[2]), "per-step": load(argv[3])}
    streams = ("per-step", "coalesced")

    def runner_point(stream, c):
        xs = [r for r in runner
              if r["part"] == "overhead" and r["stream"] == stream and r["concurrency"] == c]
        if not xs:
            return None, None, 0
        return (statistics.median(r["client_cpu_s_per_1k"] for r in xs),
                statistics.median(r["client_us_per_chunk"] for r in xs), len(xs))

    def bs_point(stream, c):
        xs = [r["client_cpu_s_per_1k"] for r in bs[stream] if r["concurrency"] == c]
        return statistics.median(xs) if xs else None

    def paired(stream, c):
        """The median of the rounds' own ratios: the k-th run of the point by one client
        against the k-th by the other (bench/compare.sh runs them back to back)."""
        rs = [r["client_cpu_s_per_1k"] for r in runner
              if r["part"] == "overhead" and r["stream"] == stream and r["concurrency"] == c]
        bss = [r["client_cpu_s_per_1k"] for r in bs[stream] if r["concurrency"] == c]
        pairs = [b / r for r, b in zip(rs, bss) if r]
        if not pairs:
            return ""
        lo, hi = min(pairs), max(pairs)
        return f"{statistics.median(pairs):.1f}× ({lo:.1f}–{hi:.1f})"

    concs = sorted({r["concurrency"] for r in runner if r["part"] == "overhead"}
                   | {r["concurrency"] for s in streams for r in bs[s]})
    head = "| concurrency |"
    rule = "|---|"
    for s in streams:
        head += f" {s}: runner | {s}: bench_serving | ratio | paired ratio (range) |"
        rule += "---|---|---|---|"
    print("Client CPU-s per 1k output tokens, each the median of its runs (the runner's µs "
          "per chunk in brackets); ratio = bench_serving ÷ runner; paired ratio = the median "
          "(and range) of the ratios of runs made back to back.\n")
    print(head)
    print(rule)
    for c in concs:
        row = f"| {c} |"
        for s in streams:
            r, us, n = runner_point(s, c)
            b = bs_point(s, c)
            row += f" {r:.5f} ({us:.1f}) |" if r is not None else " – |"
            row += f" {b:.4f} |" if b is not None else " – |"
            row += f" {b / r:.1f}× |" if r and b else " – |"
            row += f" {paired(s, c) or '–'} |"
        print(row)
    afloor = [r for r in runner if r["part"] == "async-floor"]
    if afloor:
        print("\nThe floor at each concurrency on the runner's footing (`async-floor`: the same "
              "one-worker tokio runtime, one connection per stream, raw bytes read as they "
              "arrive, nothing parsed), CPU-s per 1k output tokens, each the median of its "
              "runs; bench_serving ÷ floor is the most any such client could reach.\n")
        head, rule = "| concurrency |", "|---|"
        for s in streams:
            head += f" {s}: floor | {s}: bench_serving ÷ floor | {s}: runner − floor |"
            rule += "---|---|---|"
        print(head)
        print(rule)
        for c in concs:
            row = f"| {c} |"
            for s in streams:
                xs = [r["client_cpu_s_per_1k"] for r in afloor
                      if r["stream"] == s and r["concurrency"] == c]
                f = statistics.median(xs) if xs else None
                b = bs_point(s, c)
                r, _, _ = runner_point(s, c)
                row += f" {f:.5f} |" if f is not None else " – |"
                row += f" {b / f:.1f}× |" if f and b else " – |"
                row += f" {r - f:+.5f} |" if f is not None and r is not None else " – |"
            print(row)
    floors = [r for r in runner if r["part"] == "floor"]
    if floors:
        print()
        for s in ("coalesced", "per-step"):
            xs = [r["client_cpu_s_per_1k"] for r in floors if r["stream"] == s]
            if xs:
                b = bs_point(s, 1)
                tail = f"; bench_serving ÷ floor {b / max(xs):.1f}–{b / min(xs):.1f}×" if b else ""
                print(f"Floor at concurrency 1, {s}: {min(xs):.5f}–{max(xs):.5f} CPU-s per 1k "
                      f"tokens over {len(xs)} run(s){tail}.")
    n_runs = max((runner_point(s, c)[2] for s in streams for c in concs), default=0)
    n_bs = max((sum(r["concurrency"] == c for r in bs[s]) for s in streams for c in concs),
               default=0)
    print(f"\nRuns per point: runner {n_runs}, bench_serving {n_bs}.")


if __name__ == "__main__":
    main(sys.argv)
