//! Health, info, models, flush, metrics, client disconnects, and the real binary.

use super::*;
use std::time::{Duration, Instant};

#[tokio::test]
async fn info_routes_describe_a_simulated_sglang() {
    let h = server(&["--mem-fraction-static", "0.85"]).await;
    let (s1, a) = get(&h, "/model_info").await;
    let (s2, b) = get(&h, "/get_model_info").await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a, b);
    let mi: Value = serde_json::from_str(&a).unwrap();
    assert_eq!(mi["model_path"], "qwen2.5-14b");
    assert_eq!(mi["is_generation"], true);
    assert_eq!(mi["architectures"], json!(["Qwen2ForCausalLM"]));

    let (status, body) = get(&h, "/server_info").await;
    assert_eq!(status, 200);
    let si: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(si["version"], "0.5.10.post1");
    assert_eq!(si["status"], "ready");
    assert_eq!(si["mem_fraction_static"], 0.85);
    assert_eq!(si["chunked_prefill_size"], 8192);
    assert_eq!(si["port"], 0);
    assert!(si["max_total_tokens"].is_null(), "the CLI value");
    let pool = u(&si, "/max_total_num_tokens");
    assert!((150_000..260_000).contains(&pool), "{pool}");
    assert_eq!(
        u(&si, "/internal_states/0/memory_usage/token_capacity"),
        pool
    );
    assert_eq!(si["sim"]["simulated"], true);
    assert_eq!(si["sim"]["gpu"]["name"], "h100");
    assert_eq!(si["sim"]["time_scale"], "inf");
    assert_eq!(si["sim"]["model"]["kv_bytes_per_token"], 196_608);
    let (_, legacy) = get(&h, "/get_server_info").await;
    let legacy: Value = serde_json::from_str(&legacy).unwrap();
    assert_eq!(legacy["max_total_num_tokens"], si["max_total_num_tokens"]);

    let (status, body) = get(&h, "/v1/models").await;
    assert_eq!(status, 200);
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "qwen2.5-14b");
    assert_eq!(m["data"][0]["owned_by"], "sglang");
    assert_eq!(m["data"][0]["max_model_len"], 32768);
    let (status, _) = get(&h, "/v1/models/qwen2.5-14b").await;
    assert_eq!(status, 200);
    // /metrics is mounted only with --enable-metrics.
    assert_eq!(get(&h, "/metrics").await.0, 404);
    h.shutdown().await;
}

#[tokio::test]
async fn health_is_503_while_warming_up() {
    let h = server(&["--sim-warmup-secs", "0.4"]).await;
    let t0 = Instant::now();
    let (status, body) = get(&h, "/health").await;
    assert_eq!(status, 503);
    assert_eq!(body, "");
    assert_eq!(get(&h, "/health_generate").await.0, 503);
    tokio::time::sleep(Duration::from_millis(450).saturating_sub(t0.elapsed())).await;
    let (status, body) = get(&h, "/health").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(get(&h, "/health_generate").await.0, 200);
    h.shutdown().await;
}

fn metric(text: &str, name_and_labels_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels_prefix} not in\n{text}"))
}

#[tokio::test]
async fn metrics_expose_sglang_series() {
    let h = server(&["--enable-metrics"]).await;
    let a = gen(
        &h,
        "count me",
        json!({"max_new_tokens": 12, "ignore_eos": true}),
    )
    .await;
    let b = gen(
        &h,
        "and me",
        json!({"max_new_tokens": 30, "ignore_eos": true}),
    )
    .await;
    let (status, text) = get(&h, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "sglang:num_running_reqs{",
        "sglang:num_queue_reqs{",
        "sglang:num_used_tokens{",
        "sglang:token_usage{",
        "sglang:max_total_num_tokens{",
        "sglang:gen_throughput{",
        "sglang:cache_hit_rate{",
        "sglang:realtime_tokens_total{",
        "sglang:time_to_first_token_seconds_bucket{",
        "sglang:inter_token_latency_seconds_bucket{",
        "sglang:e2e_request_latency_seconds_count{",
        "turnbench:sim_engine_lag_seconds{",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert!(text.contains("engine_type=\"unified\""));
    let prompt = u(&a, "/meta_info/prompt_tokens") + u(&b, "/meta_info/prompt_tokens");
    assert_eq!(metric(&text, "sglang:generation_tokens_total{"), 42.0);
    assert_eq!(metric(&text, "sglang:prompt_tokens_total{"), prompt as f64);
    assert_eq!(metric(&text, "sglang:num_requests_total{"), 2.0);
    assert_eq!(
        metric(&text, "sglang:e2e_request_latency_seconds_count{"),
        2.0
    );
    assert_eq!(metric(&text, "sglang:num_running_reqs{"), 0.0);
    let pool = metric(&text, "sglang:max_total_num_tokens{");
    assert!(pool > 100_000.0);
    h.shutdown().await;
}

/// A metric family: name, type, samples (series, value).
type Family = (String, String, Vec<(String, f64)>);

/// A strict parser of the classic Prometheus text format (0.0.4), as Prometheus' own
/// `expfmt` reads it: every sample belongs to the family of the `# TYPE` line before it
/// (counters and gauges: the same name; histograms: `_bucket`, `_sum`, `_count`), each
/// `# TYPE` follows the `# HELP` of the same name, and no OpenMetrics-only line appears.
/// Returns (family name, type, samples) in order.
fn parse_classic(text: &str) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    let mut help: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(help.as_deref(), Some(name), "TYPE without its HELP: {line}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind));
            assert!(families.iter().all(|f| f.0 != name), "{name} twice");
            families.push((name.to_string(), kind.to_string(), Vec::new()));
        } else {
            assert!(
                !line.starts_with('#'),
                "not classic Prometheus text: {line}"
            );
            assert!(!line.is_empty(), "blank line");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            let name = series.split('{').next().unwrap();
            let (family, kind, samples) = families.last_mut().expect("sample before TYPE");
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family.as_str())),
                _ => name == family,
            };
            assert!(ok, "sample {name} in family {family} ({kind})");
            samples.push((series.to_string(), value));
        }
    }
    families
}

#[tokio::test]
async fn metrics_are_classic_prometheus_text_like_sglangs() {
    let h = server(&["--enable-metrics"]).await;
    gen(
        &h,
        "count me",
        json!({"max_new_tokens": 5, "ignore_eos": true}),
    )
    .await;
    let r = client()
        .get(format!("{}/metrics", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(!text.contains("# EOF"), "{text}");
    let families = parse_classic(&text);
    let family = |name: &str| {
        families
            .iter()
            .find(|f| f.0 == name)
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    };
    for counter in [
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
        "sglang:num_requests_total",
        "sglang:cached_tokens_total",
        "sglang:realtime_tokens_total",
    ] {
        assert_eq!(family(counter).1, "counter");
        let created = family(&counter.replace("_total", "_created"));
        assert_eq!(created.1, "gauge");
        assert!(created.2.iter().all(|(_, ts)| *ts > 1.7e9), "{created:?}");
    }
    assert_eq!(family("sglang:generation_tokens_total").2[0].1, 5.0);
    assert_eq!(family("sglang:num_running_reqs").1, "gauge");
    let ttft = family("sglang:time_to_first_token_seconds");
    assert_eq!(ttft.1, "histogram");
    assert!(ttft
        .2
        .iter()
        .any(|(s, v)| s.contains("le=\"+Inf\"") && *v == 1.0));
    assert_eq!(
        family("sglang:time_to_first_token_seconds_created").1,
        "gauge"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn flush_is_refused_while_busy_and_disconnects_abort() {
    // Real engine time (scale 1): a 2,000-token answer takes ~30 s, so it is still running.
    let (args, _) = SimArgs::parse(&["--port", "0", "--enable-metrics"].map(String::from)).unwrap();
    let h = start(args).await.unwrap();
    let resp = client()
        .post(format!("{}/generate", h.base_url()))
        .json(&json!({"text": "long", "stream": true,
                      "sampling_params": {"max_new_tokens": 2000, "ignore_eos": true}}))
        .send()
        .await
        .unwrap();
    let mut events = resp.bytes_stream().eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert!(
        first.data.contains("\"finish_reason\":null"),
        "{}",
        first.data
    );
    let r = client()
        .post(format!("{}/flush_cache", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/plain; charset=utf-8"
    );
    assert_eq!(r.text().await.unwrap(), "Flush cache failed.\n");
    // Drop the client: the request is aborted, the server becomes idle.
    drop(events);
    let t0 = Instant::now();
    loop {
        let r = client()
            .post(format!("{}/flush_cache", h.base_url()))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "request not aborted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, text) = get(&h, "/metrics").await;
    assert_eq!(metric(&text, "sglang:num_aborted_requests_total{"), 1.0);
    assert_eq!(metric(&text, "sglang:num_running_reqs{"), 0.0);
    h.shutdown().await;
}

use crate::free_port;

/// Start the real binary; wait until /health answers 200. Returns the child and the time
/// it took to become healthy.
pub async fn spawn_binary(port: u16, extra: &[&str]) -> (tokio::process::Child, Duration) {
    let t0 = Instant::now();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("serve-sim")
        .args(["--port", &port.to_string(), "--sim-time-scale", "inf"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("runner binary starts");
    let url = format!("http://127.0.0.1:{port}/health");
    loop {
        if let Ok(r) = client().get(&url).send().await {
            if r.status() == 200 {
                return (child, t0.elapsed());
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "serve-sim did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_binary_takes_sglang_flags_and_serves() {
    use tokio::io::AsyncReadExt;
    let port = free_port();
    let (mut child, ready) = spawn_binary(
        port,
        &[
            "--model-path",
            "qwen2.5-14b",
            "--sim-gpu",
            "h100",
            "--trust-remote-code",
            "--cuda-graph-max-bs",
            "8",
            "--mem-fraction-static",
            "0.88",
        ],
    )
    .await;
    assert!(ready < Duration::from_secs(5), "healthy after {ready:?}");
    let r = client()
        .post(format!("http://127.0.0.1:{port}/generate"))
        .json(&json!({"text": "hi", "sampling_params": {"max_new_tokens": 4}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(
        log.contains("The server is fired up and ready to roll!"),
        "{log}"
    );
    assert!(
        log.contains("--trust-remote-code"),
        "unknown flags are warned about: {log}"
    );
    assert!(log.contains("--cuda-graph-max-bs 8"), "{log}");
}

#[tokio::test]
async fn abort_request_ends_a_stream_with_an_abort_reason() {
    let (args, _) = SimArgs::parse(&["--port", "0"].map(String::from)).unwrap();
    let h = start(args).await.unwrap();
    let resp = client()
        .post(format!("{}/generate", h.base_url()))
        .json(&json!({"text": "long", "stream": true, "rid": "long-1",
                      "sampling_params": {"max_new_tokens": 2000, "ignore_eos": true}}))
        .send()
        .await
        .unwrap();
    let mut events = resp.bytes_stream().eventsource();
    events.next().await.unwrap().unwrap();
    let (status, _) = post(&h, "/abort_request", json!({"rid": "long-1"})).await;
    assert_eq!(status, 200);
    let mut rest = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the stream ends after the abort")
    {
        rest.push(ev.unwrap().data);
    }
    assert_eq!(rest.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
    assert_eq!(
        last["meta_info"]["finish_reason"]["type"], "abort",
        "{last}"
    );
    assert!(u(&last, "/meta_info/completion_tokens") < 2000);
    h.shutdown().await;
}
