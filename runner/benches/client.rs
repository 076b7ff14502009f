//! `cargo bench -p runner --bench client`: what the runner's HTTP client costs and how exact
//! its clock is, against `runner serve-sim` in a separate process on loopback.
//!
//! 1. Overhead at zero engine cost (`--sim-time-scale inf`): for concurrency 1…1024, the
//!    streamed tokens/s and requests/s the client sustains and its CPU time per token (this
//!    process's user + system time, from getrusage), twice: with SGLang's streaming
//!    (a lagging client gets pending tokens coalesced, so a faster client receives more,
//!    smaller chunks) and with `--sim-chunk-per-step` (one chunk per token for any client:
//!    the same stream `bench/bench_serving_compare.sh` gives bench_serving.py with
//!    `STREAM=per-step`).
//! 2. Timing accuracy at time scale 1 with 1, 64 and 512 concurrent streams (all sent at
//!    once): how long after the server handed the first and the last chunk to its socket
//!    (`response_sent_to_client_ts`) the client dates their arrival (p50/p99), and the
//!    client's TTFT and E2E against the server's own engine-time figures (from the request's
//!    first bytes reaching the server's socket).
//!    Connections are opened by a warm-up round first, so TCP setup is not counted. The server
//!    serves HTTP on one thread (`--sim-workers 1`), as SGLang's single event loop does.
//! 3. The floor at concurrency 1 (`floor`): the CPU per token of a thread that only writes
//!    each request and reads the raw response with blocking reads as it arrives, parsing
//!    nothing: what the kernel alone charges a client that receives every chunk when it
//!    comes (printed between parts 1 and 2).
//! 4. The floor at each concurrency on the runner's footing (`async-floor`): the same streams
//!    read by tokio tasks on this one-worker runtime, one connection per stream, raw bytes read
//!    as they arrive and nothing parsed. What the kernel and the runtime charge any tokio
//!    client at that concurrency; the runner's figure less this one is its own code's cost.
//!
//! `CLIENT_BENCH_PARTS=coalesced,per-step,floor,async-floor,timing` and `CLIENT_BENCH_CONCURRENCY=1,64` narrow
//! the run (for profiling), `CLIENT_BENCH_TIMING=512,512 steady` the timing rows;
//! `CLIENT_BENCH_WORKERS=2` sets the runtime's worker threads
//! (default 1, as `runner sweep` runs its client); `CLIENT_BENCH_SERVER_CPUS=0` pins the server
//! to CPU 0 (run the benchmark under `taskset -c 1` to give client and server a core each).
//! Prints tables; no criterion (each point is one closed-loop run, not a micro-benchmark).
//! `CLIENT_BENCH_JSON=FILE` also appends each overhead and floor point to FILE as a JSON line
//! (`bench/compare.sh` sets it to put these next to bench_serving's figures).

use runner::client::{Client, Outcome, Prompt, Sampling};

/// The allocator of the `runner` binary, so the client here costs what it costs in a sweep.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnbench_schema::stats::percentile;
use turnbench_schema::ItlSummary;

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_sim(scale: &str, extra: &[&str]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // `CLIENT_BENCH_SERVER_CPUS=0`: the server runs on those CPUs only (`taskset -c`); run
    // the benchmark itself under `taskset -c 1` to give each side its own core.
    let mut cmd = match std::env::var("CLIENT_BENCH_SERVER_CPUS") {
        Ok(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpus, env!("CARGO_BIN_EXE_runner")]);
            c
        }
        Err(_) => Command::new(env!("CARGO_BIN_EXE_runner")),
    };
    let child = cmd
        .args([
            "serve-sim",
            "--port",
            &port.to_string(),
            "--sim-time-scale",
            scale,
            "--log-level",
            "error",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runner serve-sim starts");
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Appends `row` as a JSON line to the file `CLIENT_BENCH_JSON` names, if set.
fn json_row(row: serde_json::Value) {
    use std::io::Write;
    if let Ok(path) = std::env::var("CLIENT_BENCH_JSON") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("CLIENT_BENCH_JSON={path}: {e}"));
        writeln!(f, "{row}").unwrap_or_else(|e| panic!("CLIENT_BENCH_JSON={path}: {e}"));
    }
}

/// This process's user and system CPU seconds so far: getrusage, in microseconds (as
/// bench_serving's own figure, from Python's `resource.getrusage`), not /proc's 10 ms ticks.
fn own_cpu() -> (f64, f64) {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
    (secs(u.user_time()), secs(u.system_time()))
}

/// User + system CPU seconds of another process so far.
fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the `)`; clock ticks
    // are 1/100 s on Linux.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// A ~1024-token prompt (the built-in tokenizer cuts words into ≤ 4-character pieces),
/// different per request so the radix cache does not serve it.
fn prompt(i: usize) -> String {
    let words = [
        "radix", "cache", "token", "batch", "kv", "prefill", "decode", "turn",
    ];
    let body: Vec<&str> = (0..1000)
        .map(|k| words[(k * 7 + i) % words.len()])
        .collect();
    format!(
        "<|im_start|>user\nrequest {i}: {}<|im_end|>\n<|im_start|>assistant\n",
        body.join(" ")
    )
}

/// The prompts of `n` requests, made before a measurement starts (as bench_serving samples
/// its dataset before its timed window).
fn prompts(n: usize) -> Arc<Vec<String>> {
    Arc::new((0..n).map(prompt).collect())
}

async fn run(
    client: Arc<Client>,
    concurrency: usize,
    prompts: Arc<Vec<String>>,
    tokens: u32,
) -> (Vec<Outcome>, f64) {
    let (outs, wall) = run_with(client, concurrency, prompts, move |_| tokens, |o| o).await;
    (outs.into_iter().map(|(_, o)| o).collect(), wall)
}

/// What a sweep keeps of a turn once it is over, [`Kept::of`].
struct Kept {
    completion_tokens: Option<u64>,
    error: bool,
    chunks: usize,
    #[allow(dead_code)]
    itl: Option<ItlSummary>,
}

impl Kept {
    /// A sweep turns each outcome into its turn's record at once (its inter-token gaps
    /// summarized, its text moved into the conversation and dropped with the trajectory):
    /// the same here, so the client's heap is reused from one request to the next as in a
    /// sweep, rather than grown by every output's text and chunk times.
    fn of(o: Outcome) -> Kept {
        Kept {
            completion_tokens: o.completion_tokens,
            error: o.error.is_some(),
            chunks: o.timing.chunks.len(),
            itl: ItlSummary::of(&o.timing.itl()),
        }
    }
}

/// A closed loop of `concurrency` workers over the requests of `prompts`; request `i` asks
/// for `tokens(i)` tokens. What `keep` keeps of each outcome comes with its request index.
async fn run_with<T: Send + 'static>(
    client: Arc<Client>,
    concurrency: usize,
    prompts: Arc<Vec<String>>,
    tokens: impl Fn(usize) -> u32 + Clone + Send + 'static,
    keep: fn(Outcome) -> T,
) -> (Vec<(usize, T)>, f64) {
    let requests = prompts.len();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, tokens, prompts) = (
            client.clone(),
            next.clone(),
            tokens.clone(),
            prompts.clone(),
        );
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return out;
                }
                let sampling = Sampling {
                    max_new_tokens: tokens(i),
                    temperature: 0.0,
                    stop: vec![],
                    ignore_eos: true,
                };
                let o = client
                    .generate(
                        Prompt::Text {
                            text: &prompts[i],
                            session: None,
                        },
                        &sampling,
                        &format!("bench-{i}"),
                    )
                    .await;
                out.push((i, keep(o)));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    (all, start.elapsed().as_secs_f64())
}

async fn wait_ready(c: &Client) {
    for _ in 0..200 {
        if c.is_ready("/health", Duration::from_secs(2)).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve-sim did not come up");
}

/// One table of client overhead at zero engine cost, for one way of streaming.
async fn overhead(name: &str, stream: &str, flags: &[&str]) {
    println!("## Client overhead against serve-sim at zero engine cost (--sim-time-scale inf)");
    println!("qwen2.5-14b on h100, ~1024-token prompts, 256 output tokens (ignore_eos)");
    println!("stream {stream}");
    println!(
        "{:>11} {:>8} {:>8} {:>10} {:>10} {:>13} {:>13} {:>13} {:>10} {:>11} {:>6}",
        "concurrency",
        "requests",
        "wall s",
        "tok/s",
        "req/s",
        "client CPU-s",
        "(of it, sys)",
        "server CPU-s",
        "chunks/req",
        "client CPU",
        "errors"
    );
    println!(
        "{:>62} {:>13} {:>13} {:>10} {:>11}",
        "per 1k tok", "per 1k tok", "per 1k tok", "", "µs / chunk"
    );
    // The server bench/bench_serving_compare.sh gives bench_serving.py: the same flags, so
    // both clients parse the same chunks (no `--enable-metrics` timing fields).
    let srv = serve_sim("inf", flags);
    let pid = srv.child.id().to_string();
    let client = Arc::new(Client::new(&srv.url, None));
    wait_ready(&client).await;
    run(client.clone(), 8, prompts(64), 16).await; // warm-up
    for c in concurrencies() {
        // At least ~2 s a point (coalesced streams go ~4× faster).
        let least = if flags.is_empty() { 12288 } else { 3072 };
        let requests = (4 * c).max(least);
        let prompts = prompts(requests);
        let ((user0, sys0), scpu0) = (own_cpu(), cpu_seconds_of(&pid));
        let (outs, wall) = run_with(client.clone(), c, prompts, |_| 256, Kept::of).await;
        let outs: Vec<Kept> = outs.into_iter().map(|(_, k)| k).collect();
        let (user1, sys1) = own_cpu();
        let (cpu, sys, scpu) = (
            user1 - user0 + sys1 - sys0,
            sys1 - sys0,
            cpu_seconds_of(&pid) - scpu0,
        );
        let tokens: u64 = outs.iter().filter_map(|o| o.completion_tokens).sum();
        let errors = outs.iter().filter(|o| o.error).count();
        let chunks = outs.iter().map(|o| 1 + o.chunks).sum::<usize>() as f64;
        let per_req = chunks / outs.len().max(1) as f64;
        let k = tokens.max(1) as f64 / 1000.0;
        println!(
            "{c:>11} {requests:>8} {wall:>8.2} {:>10.0} {:>10.1} {:>13.5} {:>13.5} {:>13.5} {per_req:>10.1} {:>11.2} {errors:>6}",
            tokens as f64 / wall,
            requests as f64 / wall,
            cpu / k,
            sys / k,
            scpu / k,
            cpu * 1e6 / chunks.max(1.0),
        );
        json_row(serde_json::json!({
            "part": "overhead",
            "stream": name,
            "concurrency": c,
            "requests": requests,
            "wall_s": wall,
            "tok_s": tokens as f64 / wall,
            "req_s": requests as f64 / wall,
            "client_cpu_s_per_1k": cpu / k,
            "client_sys_s_per_1k": sys / k,
            "server_cpu_s_per_1k": scpu / k,
            "chunks_per_req": per_req,
            "client_us_per_chunk": cpu * 1e6 / chunks.max(1.0),
            "errors": errors,
        }));
    }
    println!();
}

/// Request `i` of a floor as raw HTTP/1.1 bytes: the native `/generate` body the runner sends
/// (prompt, `tokens` tokens, ignore_eos, streamed).
fn raw_request(addr: &str, rid: &str, i: usize, tokens: u32) -> Vec<u8> {
    let body = serde_json::json!({
        "text": prompt(i),
        "sampling_params": {"max_new_tokens": tokens, "temperature": 0.0, "stop": [],
                            "ignore_eos": true},
        "stream": true,
        "rid": format!("{rid}-{i}"),
    })
    .to_string();
    format!(
        "POST /generate HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The floor at concurrency 1, for one way of streaming: what receiving these streams costs
/// a client that does nothing else. One blocking keep-alive connection on a thread of its own
/// writes each request (made before the timed window) and reads the response as it arrives
/// into one buffer, parsing nothing; a response ends with HTTP's terminating chunk. Its CPU
/// (the thread's getrusage) is the kernel's work of sleeping, waking, receiving and sending,
/// plus a few instructions per read: no client that reads a stream as it arrives spends less.
fn floor(name: &str, stream: &str, flags: &[&str]) {
    use std::io::{Read, Write};
    let srv = serve_sim("inf", flags);
    let addr = srv.url.trim_start_matches("http://").to_string();
    let requests = if flags.is_empty() { 12288 } else { 3072 };
    let tokens = 256;
    let request = |i: usize| raw_request(&addr, "floor", i, tokens);
    let (warm, timed): (Vec<_>, Vec<_>) = (
        (0..64).map(request).collect(),
        (64..64 + requests).map(request).collect(),
    );
    tokio::runtime::Handle::current().block_on(wait_ready(&Client::new(&srv.url, None)));
    let mut tcp = std::net::TcpStream::connect(&addr).expect("serve-sim accepts connections");
    tcp.set_nodelay(true).unwrap();
    let thread_cpu = || {
        use nix::sys::resource::{getrusage, UsageWho};
        let u = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
        (secs(u.user_time()), secs(u.system_time()))
    };
    let mut buf = vec![0u8; 4 << 20];
    const END: &[u8] = b"\r\n0\r\n\r\n";
    // One response read whole; the number of reads it took.
    let mut exchange = |req: &[u8], buf: &mut [u8]| -> (usize, usize) {
        tcp.write_all(req).unwrap();
        let (mut n, mut reads) = (0, 0);
        loop {
            let k = tcp.read(&mut buf[n..]).unwrap();
            assert!(k > 0, "serve-sim closed the connection");
            reads += 1;
            n += k;
            if buf[..n].ends_with(END) {
                return (n, reads);
            }
            assert!(n < buf.len(), "a response longer than the buffer");
        }
    };
    for r in &warm {
        exchange(r, &mut buf);
    }
    let (user0, sys0) = thread_cpu();
    let start = Instant::now();
    let mut reads = 0;
    let mut last = 0;
    for r in &timed {
        let (n, k) = exchange(r, &mut buf);
        reads += k;
        last = n;
    }
    let wall = start.elapsed().as_secs_f64();
    let (user1, sys1) = thread_cpu();
    // The server's own count in the last response's last chunk.
    let last = String::from_utf8_lossy(&buf[..last]);
    assert!(last.starts_with("HTTP/1.1 200"), "{last:.200}");
    assert!(
        last.contains(&format!("\"completion_tokens\":{tokens},")),
        "every response has {tokens} tokens"
    );
    let k = (requests * tokens as usize) as f64 / 1000.0;
    json_row(serde_json::json!({
        "part": "floor",
        "stream": name,
        "concurrency": 1,
        "requests": requests,
        "wall_s": wall,
        "tok_s": k * 1000.0 / wall,
        "client_cpu_s_per_1k": (user1 - user0 + sys1 - sys0) / k,
        "client_sys_s_per_1k": (sys1 - sys0) / k,
        "reads_per_req": reads as f64 / requests as f64,
    }));
    println!(
        "{stream:>10} {requests:>8} {wall:>8.2} {:>10.0} {:>13.5} {:>13.5} {:>10.1}",
        k * 1000.0 / wall,
        (user1 - user0 + sys1 - sys0) / k,
        (sys1 - sys0) / k,
        reads as f64 / requests as f64,
    );
}

/// The floor at each concurrency, for one way of streaming: what the same streams cost a client
/// on the runner's own footing (this one-worker tokio runtime, one keep-alive connection per
/// stream, `C` tasks in a closed loop over requests made before the timed window) that only
/// writes each request and reads its raw response as it arrives, parsing nothing (no HTTP, no
/// SSE, no JSON, no clock, no kernel stamps); a response ends with HTTP's terminating chunk.
/// Its CPU (this process's getrusage, as for the runner's figures) is the kernel's and the
/// runtime's share of the runner's: what any tokio client that reads streams as they arrive
/// pays at this concurrency. The runner's figure minus this one is all its own code costs.
async fn async_floor(name: &str, stream: &str, flags: &[&str]) {
    let srv = serve_sim("inf", flags);
    let addr = srv.url.trim_start_matches("http://").to_string();
    let tokens = 256;
    let request = |i: usize| raw_request(&addr, "async-floor", i, tokens);
    wait_ready(&Client::new(&srv.url, None)).await;
    for c in concurrencies() {
        let least = if flags.is_empty() { 12288 } else { 3072 };
        let requests = (4 * c).max(least);
        // Connections opened (and used once) before the timed window, as the runner's are by
        // its warm-up.
        let mut conns = Vec::new();
        for k in 0..c {
            let mut tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("serve-sim accepts connections");
            tcp.set_nodelay(true).unwrap();
            let mut buf = vec![0u8; 4 << 20];
            exchange_raw(&mut tcp, &request(1_000_000 + k), &mut buf).await;
            conns.push((tcp, buf));
        }
        let reqs: Arc<Vec<Vec<u8>>> = Arc::new((0..requests).map(request).collect());
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (user0, sys0) = own_cpu();
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (mut tcp, mut buf) in conns {
            let (reqs, next) = (reqs.clone(), next.clone());
            tasks.spawn(async move {
                let (mut reads, mut done) = (0usize, 0usize);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(r) = reqs.get(i) else {
                        return (reads, done);
                    };
                    reads += exchange_raw(&mut tcp, r, &mut buf).await;
                    done += 1;
                }
            });
        }
        let (mut reads, mut done) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            let (r, d) = r.unwrap();
            reads += r;
            done += d;
        }
        let wall = start.elapsed().as_secs_f64();
        let (user1, sys1) = own_cpu();
        assert_eq!(done, requests);
        let k = (requests * tokens as usize) as f64 / 1000.0;
        let (cpu, sys) = (user1 - user0 + sys1 - sys0, sys1 - sys0);
        json_row(serde_json::json!({
            "part": "async-floor",
            "stream": name,
            "concurrency": c,
            "requests": requests,
            "wall_s": wall,
            "tok_s": k * 1000.0 / wall,
            "client_cpu_s_per_1k": cpu / k,
            "client_sys_s_per_1k": sys / k,
            "reads_per_req": reads as f64 / requests as f64,
            "client_us_per_read": cpu * 1e6 / reads.max(1) as f64,
        }));
        println!(
            "{stream:>10} {c:>11} {requests:>8} {wall:>8.2} {:>10.0} {:>13.5} {:>13.5} {:>10.1} {:>11.2}",
            k * 1000.0 / wall,
            cpu / k,
            sys / k,
            reads as f64 / requests as f64,
            cpu * 1e6 / reads.max(1) as f64,
        );
    }
}

/// Writes one raw request and reads its response to HTTP's terminating chunk; the reads it took.
async fn exchange_raw(tcp: &mut tokio::net::TcpStream, req: &[u8], buf: &mut [u8]) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const END: &[u8] = b"\r\n0\r\n\r\n";
    tcp.write_all(req).await.unwrap();
    let (mut n, mut reads) = (0, 0);
    loop {
        let k = tcp.read(&mut buf[n..]).await.unwrap();
        assert!(k > 0, "serve-sim closed the connection");
        reads += 1;
        n += k;
        if buf[..n].ends_with(END) {
            assert!(
                buf.starts_with(b"HTTP/1.1 200"),
                "a response other than 200"
            );
            return reads;
        }
        assert!(n < buf.len(), "a response longer than the buffer");
    }
}

/// `CLIENT_BENCH_CONCURRENCY=64,512` limits the overhead tables to those points (profiling).
fn concurrencies() -> Vec<usize> {
    match std::env::var("CLIENT_BENCH_CONCURRENCY") {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![1, 8, 64, 512, 1024],
    }
}

/// Whether `name` is selected by the comma-separated list in `var` (all are when it is unset):
/// `CLIENT_BENCH_PARTS=per-step` (any of coalesced, per-step, timing) runs only those parts,
/// `CLIENT_BENCH_TIMING=512,512 steady` only those rows of the timing table.
fn selected(var: &str, name: &str) -> bool {
    std::env::var(var).map_or(true, |v| v.split(',').any(|p| p.trim() == name))
}

fn main() {
    // One worker thread, as `runner sweep` runs its client (`CLIENT_BENCH_WORKERS` changes it).
    let workers = std::env::var("CLIENT_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(workers);
    let rt = rt.enable_all().build().unwrap();
    rt.block_on(async {
        for (name, stream, flags) in [
            ("coalesced", "coalesced: a lagging client gets pending tokens merged into one chunk, as SGLang does", &[][..]),
            ("per-step", "per step (--sim-chunk-per-step): one chunk per token, the same stream for any client", &["--sim-chunk-per-step"][..]),
        ] {
            if selected("CLIENT_BENCH_PARTS", name) {
                overhead(name, stream, flags).await;
            }
        }
        if selected("CLIENT_BENCH_PARTS", "floor") {
            println!("## The floor at concurrency 1: blocking reads of the raw response, nothing parsed");
            println!(
                "{:>10} {:>8} {:>8} {:>10} {:>13} {:>13} {:>10}",
                "stream", "requests", "wall s", "tok/s", "CPU-s", "(of it, sys)", "reads/req"
            );
            println!("{:>51} {:>13}", "per 1k tok", "per 1k tok");
            tokio::task::block_in_place(|| {
                floor("coalesced", "coalesced", &[]);
                floor("per-step", "per step", &["--sim-chunk-per-step"]);
            });
            println!();
        }
        if selected("CLIENT_BENCH_PARTS", "async-floor") {
            println!("## The floor at each concurrency on the runner's footing: tokio tasks (one worker),");
            println!("one connection per stream, raw response bytes read as they arrive, nothing parsed");
            println!(
                "{:>10} {:>11} {:>8} {:>8} {:>10} {:>13} {:>13} {:>10} {:>11}",
                "stream", "concurrency", "requests", "wall s", "tok/s", "CPU-s", "(of it, sys)", "reads/req", "CPU"
            );
            println!("{:>63} {:>13} {:>10} {:>11}", "per 1k tok", "per 1k tok", "", "µs / read");
            async_floor("coalesced", "coalesced", &[]).await;
            async_floor("per-step", "per step", &["--sim-chunk-per-step"]).await;
            println!();
        }
        if !selected("CLIENT_BENCH_PARTS", "timing") {
            return;
        }

        println!("## Timing accuracy at time scale 1 (64 tokens per request)");
        println!(
            "delay = client receipt − server send (`response_sent_to_client_ts`) of the first"
        );
        println!("content chunk (TTFT) and of the finish chunk (E2E), ms; ΔTTFT = |client TTFT −");
        println!("server TTFT| with the server's TTFT on its own engine clock, from the request's");
        println!("first bytes reaching the server's socket (`request_received_ts`, kernel stamp) to");
        println!("the first token (`prefill_finished_time`); ΔE2E likewise with `e2e_latency`;");
        println!("server late = how long after the first token was due on the engine clock");
        println!("serve-sim handed it to its socket (its own delay, part of ΔTTFT); rest = client");
        println!("TTFT − server TTFT − server late: the two trips over loopback and both stamps");
        println!(
            "{:>10} {:>15} {:>15} {:>15} {:>15} {:>11} {:>11} {:>16} {:>16} {:>9} {:>9} {:>11} {:>11}",
            "streams",
            "TTFT delay p50",
            "TTFT delay p99",
            "E2E delay p50",
            "E2E delay p99",
            "ΔTTFT p50",
            "ΔTTFT p99",
            "server late p50",
            "server late p99",
            "rest p50",
            "rest p99",
            "ΔE2E p50",
            "ΔE2E p99"
        );
        // `--enable-metrics`: the server's own timestamps, to compare with.
        let srv = serve_sim(
            "1",
            &[
                "--enable-metrics",
                "--max-running-requests",
                "2048",
                "--sim-workers",
                "1",
            ],
        );
        let client = Arc::new(Client::new(&srv.url, None));
        wait_ready(&client).await;
        // Instants → Unix time, to compare with the server's wall-clock stamps.
        let (base_i, base_u) = (
            Instant::now(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64(),
        );
        let unix = |i: Instant| base_u + (i - base_i).as_secs_f64();
        // Bursts: every request sent at once, all 64 tokens long. Steady: a closed loop of
        // 4 × 512 requests of 32–128 tokens, so requests come and go at different times; the
        // first 1,024 (the start-up burst) are left out.
        for (label, streams, steady) in [
            ("1", 1usize, false),
            ("64", 64, false),
            ("512", 512, false),
            ("512 steady", 512, true),
        ] {
            if !selected("CLIENT_BENCH_TIMING", label) {
                continue;
            }
            // Warm the connection pool: the measurement is the client's clock, not TCP setup.
            run(client.clone(), streams, prompts(streams), 1).await;
            let outs: Vec<Outcome> = if steady {
                let (outs, _) =
                    run_with(
                        client.clone(),
                        streams,
                        prompts(4 * streams),
                        |i| 32 + (i * 37 % 97) as u32,
                        |o| o,
                    )
                        .await;
                outs.into_iter()
                    .filter(|(i, _)| *i >= 2 * streams)
                    .map(|(_, o)| o)
                    .collect()
            } else {
                run(client.clone(), streams, prompts(streams.max(16)), 64).await.0
            };
            let ok: Vec<&Outcome> = outs.iter().filter(|o| o.error.is_none()).collect();
            assert_eq!(ok.len(), outs.len(), "every request succeeded");
            let ms = |v: &[f64], q| percentile(v, q).unwrap_or(f64::NAN);
            let first: Vec<f64> = ok
                .iter()
                .filter_map(|o| Some((unix(o.timing.first?) - o.server_sent?.0) * 1e3))
                .collect();
            let last: Vec<f64> = ok
                .iter()
                .filter_map(|o| Some((unix(o.timing.last_data?) - o.server_sent?.1) * 1e3))
                .collect();
            let de2e: Vec<f64> = ok
                .iter()
                .filter_map(|o| Some((o.timing.e2e().as_secs_f64() - o.server_e2e?).abs() * 1e3))
                .collect();
            let dttft: Vec<f64> = ok
                .iter()
                .filter_map(|o| {
                    Some((o.timing.ttft()?.as_secs_f64() - o.server_ttft?).abs() * 1e3)
                })
                .collect();
            assert_eq!(dttft.len(), ok.len(), "the server reports its TTFT");
            let late: Vec<f64> = ok
                .iter()
                .filter_map(|o| Some((o.server_sent?.0 - o.server_first_ready?) * 1e3))
                .collect();
            let rest: Vec<f64> = ok
                .iter()
                .filter_map(|o| {
                    let ttft = o.timing.ttft()?.as_secs_f64();
                    Some((ttft - o.server_ttft? - (o.server_sent?.0 - o.server_first_ready?)) * 1e3)
                })
                .collect();
            println!(
                "{label:>10} {:>15.3} {:>15.3} {:>15.3} {:>15.3} {:>11.3} {:>11.3} {:>16.3} {:>16.3} {:>9.3} {:>9.3} {:>11.3} {:>11.3}",
                ms(&first, 50.0),
                ms(&first, 99.0),
                ms(&last, 50.0),
                ms(&last, 99.0),
                ms(&dttft, 50.0),
                ms(&dttft, 99.0),
                ms(&late, 50.0),
                ms(&late, 99.0),
                ms(&rest, 50.0),
                ms(&rest, 99.0),
                ms(&de2e, 50.0),
                ms(&de2e, 99.0),
            );
        }
    });
}
