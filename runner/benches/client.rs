//! `cargo bench -p runner --bench client`: what the runner's HTTP client costs and how exact
//! its clock is, against `runner serve-sim` in a separate process on loopback.
//!
//! 1. Overhead at zero engine cost (`--sim-time-scale inf`): for concurrency 1…1024, the
//!    streamed tokens/s and requests/s the client sustains and its CPU time per token (this
//!    process's user + system time, from /proc/self/stat).
//! 2. Timing accuracy at time scale 1 with 512 concurrent streams: the client's per-request
//!    E2E against the server's own engine-time `meta_info.e2e_latency` (p50/p99/max of the
//!    difference), and the client's mean TTFT against the server's TTFT histogram mean.
//!    Connections are opened by a warm-up round first, so TCP setup is not counted.
//!
//! Prints a table; no criterion (each point is one closed-loop run, not a micro-benchmark).

use runner::client::{Client, Outcome, Prompt, Sampling};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnbench_schema::stats::percentile;

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

fn serve_sim(scale: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "serve-sim",
            "--port",
            &port.to_string(),
            "--sim-time-scale",
            scale,
            "--max-running-requests",
            "2048",
            "--enable-metrics",
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runner serve-sim starts");
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the `)`.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

async fn run(
    client: Arc<Client>,
    concurrency: usize,
    requests: usize,
    tokens: u32,
) -> (Vec<Outcome>, f64) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            let sampling = Sampling {
                max_new_tokens: tokens,
                temperature: 0.0,
                stop: vec![],
                ignore_eos: true,
            };
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return out;
                }
                let text = format!(
                    "<|im_start|>user\nrequest {i}: explain the radix cache<|im_end|>\n<|im_start|>assistant\n"
                );
                let o = client
                    .generate(Prompt::Text { text, session: None }, &sampling, &format!("bench-{i}"))
                    .await;
                out.push(o);
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

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("## Client overhead against serve-sim at zero engine cost (--sim-time-scale inf)");
        println!(
            "{:>11} {:>9} {:>10} {:>12} {:>11} {:>14} {:>7}",
            "concurrency",
            "requests",
            "wall (s)",
            "tokens/s",
            "requests/s",
            "CPU µs/token",
            "errors"
        );
        let srv = serve_sim("inf");
        let client = Arc::new(Client::new(&srv.url, None));
        wait_ready(&client).await;
        for c in [1usize, 4, 16, 64, 256, 1024] {
            let requests = (4 * c).max(1024);
            let cpu0 = cpu_seconds();
            let (outs, wall) = run(client.clone(), c, requests, 128).await;
            let cpu = cpu_seconds() - cpu0;
            let tokens: u64 = outs.iter().filter_map(|o| o.completion_tokens).sum();
            let errors = outs.iter().filter(|o| o.error.is_some()).count();
            println!(
                "{c:>11} {requests:>9} {wall:>10.2} {:>12.0} {:>11.1} {:>14.2} {errors:>7}",
                tokens as f64 / wall,
                requests as f64 / wall,
                cpu / tokens.max(1) as f64 * 1e6,
            );
        }
        drop(srv);

        println!("\n## Timing accuracy at time scale 1 (64 tokens per request)");
        println!(
            "{:>8} {:>24} {:>24} {:>24} {:>22}",
            "streams",
            "|ΔE2E| p50 (ms)",
            "|ΔE2E| p99 (ms)",
            "|ΔE2E| max (ms)",
            "mean TTFT client/server (ms)"
        );
        let srv = serve_sim("1");
        let client = Arc::new(Client::new(&srv.url, None));
        wait_ready(&client).await;
        let metrics = |text: &str, name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit_once(' ').and_then(|x| x.1.parse::<f64>().ok()))
                .sum()
        };
        for streams in [1usize, 64, 512] {
            // Warm the connection pool: the measurement is the client's clock, not TCP setup.
            run(client.clone(), streams, streams, 1).await;
            let before = client
                .get_text("/metrics", Duration::from_secs(5))
                .await
                .unwrap();
            let (outs, _wall) = run(client.clone(), streams, streams.max(16), 64).await;
            let after = client
                .get_text("/metrics", Duration::from_secs(5))
                .await
                .unwrap();
            let ok: Vec<&Outcome> = outs.iter().filter(|o| o.error.is_none()).collect();
            let diffs: Vec<f64> = ok
                .iter()
                .filter_map(|o| Some((o.timing.e2e().as_secs_f64() - o.server_e2e?).abs() * 1e3))
                .collect();
            let ttfts: Vec<f64> = ok
                .iter()
                .filter_map(|o| o.timing.ttft())
                .map(|d| d.as_secs_f64())
                .collect();
            let d = |n: &str| metrics(&after, n) - metrics(&before, n);
            let server_ttft = d("sglang:time_to_first_token_seconds_sum")
                / d("sglang:time_to_first_token_seconds_count").max(1.0);
            let client_ttft = ttfts.iter().sum::<f64>() / ttfts.len().max(1) as f64;
            println!(
                "{streams:>8} {:>24.3} {:>24.3} {:>24.3} {:>13.3} / {:.3}",
                percentile(&diffs, 50.0).unwrap_or(f64::NAN),
                percentile(&diffs, 99.0).unwrap_or(f64::NAN),
                percentile(&diffs, 100.0).unwrap_or(f64::NAN),
                client_ttft * 1e3,
                server_ttft * 1e3,
            );
            assert_eq!(ok.len(), outs.len(), "every request succeeded");
        }
    });
}
