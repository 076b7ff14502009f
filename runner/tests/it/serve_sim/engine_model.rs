//! Scheduler and cost-model flags seen through HTTP: `--tp-size`, the KV reservation for
//! `max_new_tokens`, `--max-prefill-tokens`, and the `--enable-metrics` timing fields of
//! `meta_info`.

use super::*;

fn f(v: &Value, ptr: &str) -> f64 {
    v.pointer(ptr)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{ptr} in {v}"))
}

async fn server_info(h: &SimHandle) -> Value {
    let (status, body) = get(h, "/server_info").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn tp_size_speeds_up_steps_and_pools_every_gpus_memory() {
    let mut e2e = Vec::new();
    let mut pools = Vec::new();
    for tp in ["1", "2"] {
        let h = server(&["--tp-size", tp]).await;
        let v = gen(
            &h,
            &"observation ".repeat(1000),
            json!({"max_new_tokens": 200, "ignore_eos": true}),
        )
        .await;
        e2e.push(f(&v, "/meta_info/e2e_latency"));
        pools.push(u(&server_info(&h).await, "/max_total_num_tokens"));
        h.shutdown().await;
    }
    // Decode is weight-bound: half the weights per GPU, plus all-reduces.
    assert!(e2e[1] < 0.75 * e2e[0] && e2e[1] > 0.5 * e2e[0], "{e2e:?}");
    // Two H100s at 0.88 minus one copy of the 29.5 GB weights, 192 KiB per token.
    let expect = ((2.0 * 85_017_493_504.0 * 0.88 - 29_540_067_328.0) / 196_608.0) as u64;
    assert_eq!(pools[1], expect);
    assert!(pools[1] > 2 * pools[0], "{pools:?}");
}

/// A native batch of `n` prompts; the `meta_info` of each item.
async fn batch(h: &SimHandle, prompts: Vec<String>, sampling: Value) -> Vec<Value> {
    let (status, v) = post(
        h,
        "/generate",
        json!({"text": prompts, "sampling_params": sampling}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|item| item["meta_info"].clone())
        .collect()
}

#[tokio::test]
async fn admission_reserves_kv_for_max_new_tokens() {
    // Answers of 10 tokens, but max_new_tokens 2000 in a 3000-token pool: like SGLang the
    // engine reserves for 2000, so the second request waits for the first.
    for (max_new, waits) in [(2000, true), (10, false)] {
        let h = server(&[
            "--max-total-tokens",
            "3000",
            "--sim-output-len-mean",
            "10",
            "--sim-output-len-sigma",
            "0",
            "--enable-metrics",
        ])
        .await;
        let metas = batch(
            &h,
            vec!["first prompt ".repeat(30), "other prompt ".repeat(30)],
            json!({"max_new_tokens": max_new}),
        )
        .await;
        assert!(u(&metas[1], "/completion_tokens") < 20, "{metas:?}");
        assert_eq!(f(&metas[0], "/queue_time"), 0.0);
        let queued = f(&metas[1], "/queue_time");
        assert_eq!(queued > 0.0, waits, "max_new_tokens {max_new}: {queued}");
        if waits {
            assert!(f(&metas[1], "/forward_entry_time") >= f(&metas[0], "/request_finished_ts"));
        }
        h.shutdown().await;
    }
}

#[tokio::test]
async fn max_prefill_tokens_caps_a_prefill_batch() {
    let prompts = vec!["a".repeat(12_000), "b".repeat(12_000)]; // 3000 tokens each
    for (cap, waits) in [("16384", false), ("4096", true)] {
        let h = server(&[
            "--chunked-prefill-size",
            "-1",
            "--max-prefill-tokens",
            cap,
            "--enable-metrics",
        ])
        .await;
        assert_eq!(
            server_info(&h).await["max_prefill_tokens"],
            cap.parse::<u64>().unwrap()
        );
        let metas = batch(&h, prompts.clone(), json!({"max_new_tokens": 4})).await;
        let queued = f(&metas[1], "/queue_time");
        assert_eq!(queued > 0.0, waits, "--max-prefill-tokens {cap}: {queued}");
        h.shutdown().await;
    }
    let (args, _) =
        SimArgs::parse(&["--port", "0", "--max-prefill-tokens", "0"].map(String::from)).unwrap();
    let e = start(args).await.err().expect("0 is refused");
    assert!(e.to_string().contains("--max-prefill-tokens"), "{e}");
}

const TIMING: [&str; 8] = [
    "request_received_ts",
    "api_server_dispatch_finish_ts",
    "queue_time",
    "forward_entry_time",
    "prefill_finished_time",
    "request_finished_ts",
    "inference_time",
    "decode_throughput",
];

#[tokio::test]
async fn enable_metrics_adds_engine_time_fields_to_meta_info() {
    let h = server(&[]).await;
    let v = gen(&h, "hi", json!({"max_new_tokens": 4})).await;
    for key in TIMING {
        assert!(v["meta_info"].get(key).is_none(), "{key} without the flag");
    }
    h.shutdown().await;

    let h = server(&["--enable-metrics"]).await;
    let v = gen(
        &h,
        &"tell me more ".repeat(200),
        json!({"max_new_tokens": 50, "ignore_eos": true}),
    )
    .await;
    let m = &v["meta_info"];
    for key in TIMING {
        assert!(m[key].is_f64(), "{key} in {m}");
    }
    // Arrived at the server's socket, then (parsed and tokenized) dispatched to the engine;
    // the end-to-end latency starts from the arrival, the queue time from the dispatch.
    let arrived = f(m, "/request_received_ts");
    let received = f(m, "/api_server_dispatch_finish_ts");
    let entry = f(m, "/forward_entry_time");
    let prefilled = f(m, "/prefill_finished_time");
    let finished = f(m, "/request_finished_ts");
    assert!(arrived > 1.7e9);
    assert!(arrived <= received && received - arrived < 0.5, "{m}");
    assert!(received <= entry && entry < prefilled && prefilled < finished);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    assert!(close(f(m, "/queue_time"), entry - received));
    assert!(close(f(m, "/e2e_latency"), finished - arrived));
    assert!(close(f(m, "/inference_time"), finished - entry));
    let decode_tps = 49.0 / (finished - prefilled);
    assert!((f(m, "/decode_throughput") / decode_tps - 1.0).abs() < 1e-6);
    // An H100 decodes one Qwen2.5-14B sequence at ~65–75 tokens/s.
    assert!((50.0..90.0).contains(&decode_tps), "{decode_tps}");

    h.shutdown().await;

    // Streaming: known fields appear as they become known; the end ones on the last chunk.
    // (At 10× real time, so the answer comes in several chunks.)
    let h = server(&["--enable-metrics", "--sim-time-scale", "10"]).await;
    let (_, data) = stream(
        &h,
        "/generate",
        json!({"text": "go", "stream": true,
               "sampling_params": {"max_new_tokens": 20, "ignore_eos": true}}),
    )
    .await;
    let chunks = chunks(&data);
    assert!(chunks.len() >= 2, "{chunks:?}");
    let (first, last) = (
        &chunks[0]["meta_info"],
        &chunks[chunks.len() - 1]["meta_info"],
    );
    assert!(first["prefill_finished_time"].is_f64() && first["queue_time"].is_f64());
    assert!(first.get("request_finished_ts").is_none(), "{first}");
    assert!(last["request_finished_ts"].is_f64(), "{last}");
    h.shutdown().await;
}
