//! Server overhead of `runner serve-sim`: requests/s and streamed tokens/s the HTTP front
//! sustains at zero engine cost (`--sim-time-scale inf`), at concurrency 1 … 1024.
//!
//! `cargo bench -p runner --bench sim_server` (set `SIM_BENCH_SECS` to change the 3 s per
//! level; `SIM_BENCH_SCALE=1000` to give the engine a small cost, so that tokens arrive one
//! decode step at a time and the per-chunk path is measured; the default `inf` coalesces). The client runs in the same process on loopback, so the figures are what server
//! and client together achieve on this machine's cores: a lower bound for the server alone.
//! Each request is a native streaming `/generate` of 64 tokens (`ignore_eos`), read as SSE;
//! tokens are counted from the server's final `meta_info.completion_tokens`.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use runner::sim::cli::SimArgs;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEVELS: [usize; 5] = [1, 8, 64, 512, 1024];
const TOKENS: u64 = 64;

/// One streaming request: (completion tokens, SSE chunks before `[DONE]`).
async fn one_request(client: &reqwest::Client, url: &str, n: u64) -> anyhow::Result<(u64, u64)> {
    let resp = client
        .post(url)
        .json(
            &json!({"text": format!("benchmark request {n}: say something"), "stream": true,
                      "sampling_params": {"max_new_tokens": TOKENS, "ignore_eos": true}}),
        )
        .send()
        .await?
        .error_for_status()?;
    let mut events = resp.bytes_stream().eventsource();
    let mut last = String::new();
    let mut chunks = 0;
    while let Some(ev) = events.next().await {
        let data = ev?.data;
        if data != "[DONE]" {
            last = data;
            chunks += 1;
        }
    }
    let v: Value = serde_json::from_str(&last)?;
    let tokens = v["meta_info"]["completion_tokens"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no completion_tokens in {last}"))?;
    Ok((tokens, chunks))
}

/// Run `concurrency` closed-loop clients for `secs`: (requests/s, tokens/s, chunks/s, errors).
async fn level(url: &str, concurrency: usize, secs: f64) -> anyhow::Result<(f64, f64, f64, u64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let requests = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(AtomicU64::new(0));
    let chunks = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let (client, url) = (client.clone(), url.to_string());
        let (requests, tokens, errors) = (requests.clone(), tokens.clone(), errors.clone());
        let chunks = chunks.clone();
        workers.push(tokio::spawn(async move {
            let mut n = w as u64 * 1_000_000;
            while Instant::now() < deadline {
                n += 1;
                match one_request(&client, &url, n).await {
                    Ok((t, c)) => {
                        requests.fetch_add(1, Ordering::Relaxed);
                        tokens.fetch_add(t, Ordering::Relaxed);
                        chunks.fetch_add(c, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    Ok((
        requests.load(Ordering::Relaxed) as f64 / elapsed,
        tokens.load(Ordering::Relaxed) as f64 / elapsed,
        chunks.load(Ordering::Relaxed) as f64 / elapsed,
        errors.load(Ordering::Relaxed),
    ))
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; run any other way (`cargo test --benches`), one short
    // level only, as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("SIM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let scale = std::env::var("SIM_BENCH_SCALE").unwrap_or_else(|_| "inf".into());
        let argv: Vec<String> = [
            "--port",
            "0",
            "--sim-time-scale",
            &scale,
            "--log-level",
            "error",
        ]
        .map(String::from)
        .to_vec();
        let (args, _) = SimArgs::parse(&argv)?;
        let h = runner::sim::server::start(args).await?;
        let url = format!("{}/generate", h.base_url());
        println!(
            "sim_server: streaming /generate, {TOKENS} tokens/request, time scale {scale}, \
             client in-process, {} cores",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!(
            "{:>11} {:>12} {:>16} {:>12} {:>7}",
            "concurrency", "requests/s", "streamed tok/s", "chunks/s", "errors"
        );
        let levels: &[usize] = if quick { &[8] } else { &LEVELS };
        for &c in levels {
            let (rps, tps, cps, errors) = level(&url, c, if quick { 0.2 } else { secs }).await?;
            println!("{c:>11} {rps:>12.0} {tps:>16.0} {cps:>12.0} {errors:>7}");
        }
        h.shutdown().await;
        anyhow::Ok(())
    })
}
