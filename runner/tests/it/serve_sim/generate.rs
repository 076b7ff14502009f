//! Native `/generate`: body and stream shapes of spec §1.3–1.4, batches, stops, lengths.

use super::*;

const META_KEYS: [&str; 12] = [
    "id",
    "finish_reason",
    "prompt_tokens",
    "weight_version",
    "total_retractions",
    "reasoning_tokens",
    "completion_tokens",
    "cached_tokens",
    "cached_tokens_details",
    "dp_rank",
    "e2e_latency",
    "response_sent_to_client_ts",
];

#[tokio::test]
async fn non_streaming_body_has_the_spec_shape() {
    let h = server(&[]).await;
    let v = gen(
        &h,
        "Hello world",
        json!({"max_new_tokens": 8, "ignore_eos": true, "temperature": 0}),
    )
    .await;
    let meta = v["meta_info"].as_object().unwrap();
    let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    keys.sort();
    let mut want = META_KEYS.to_vec();
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(
        v["meta_info"]["finish_reason"],
        json!({"type": "length", "length": 8})
    );
    assert_eq!(v["output_ids"].as_array().unwrap().len(), 8);
    assert_eq!(u(&v, "/meta_info/completion_tokens"), 8);
    // "Hello world" = "Hell" "o" " wor" "ld" in the built-in tokenizer (4 chars per chunk).
    assert_eq!(u(&v, "/meta_info/prompt_tokens"), 4);
    assert_eq!(v["meta_info"]["weight_version"], "default");
    assert_eq!(u(&v, "/meta_info/cached_tokens"), 0);
    assert!(v["meta_info"]["e2e_latency"].as_f64().unwrap() >= 0.0);
    assert!(
        v["meta_info"]["response_sent_to_client_ts"]
            .as_f64()
            .unwrap()
            > 1.7e9
    );
    assert_eq!(v["meta_info"]["id"].as_str().unwrap().len(), 32);
    let text = v["text"].as_str().unwrap();
    assert!(
        text.starts_with(' ') && text.split_whitespace().count() >= 2,
        "{text:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn stream_is_cumulative_and_matches_the_non_streaming_answer() {
    // Engine time 20x faster than real: ~40 ms of decode steps, several chunks.
    let h = server(&["--sim-time-scale", "20"]).await;
    let body = json!({"text": "Tell me a story.", "rid": "story-1", "stream": true,
                      "sampling_params": {"max_new_tokens": 64, "temperature": 0}});
    let (status, data) = stream(&h, "/generate", body).await;
    assert_eq!(status, 200);
    let chunks = chunks(&data);
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    let mut prev_text = String::new();
    let mut prev_ids: Vec<Value> = Vec::new();
    let mut prev_n = 0;
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let text = c["text"].as_str().unwrap();
        let ids = c["output_ids"].as_array().unwrap();
        assert!(text.starts_with(&prev_text), "cumulative text");
        assert!(ids.starts_with(&prev_ids), "cumulative ids");
        let n = u(c, "/meta_info/completion_tokens");
        assert!(n >= prev_n && n as usize == ids.len());
        assert_eq!(c["meta_info"]["id"], "story-1");
        assert_eq!(c["meta_info"]["finish_reason"].is_null(), !last);
        assert_eq!(c["meta_info"].get("e2e_latency").is_some(), last);
        assert!(c.get("index").is_none());
        prev_text = text.to_string();
        prev_ids = ids.clone();
        prev_n = n;
    }
    let whole = gen(
        &h,
        "Tell me a story.",
        json!({"max_new_tokens": 64, "temperature": 0}),
    )
    .await;
    assert_eq!(
        whole["text"],
        prev_text.as_str(),
        "greedy output is deterministic"
    );
    assert_eq!(whole["output_ids"], json!(prev_ids));
    h.shutdown().await;
}

#[tokio::test]
async fn batches_return_a_list_or_indexed_chunks() {
    let h = server(&[]).await;
    let sp = json!({"max_new_tokens": 5, "ignore_eos": true});
    let (status, v) = post(
        &h,
        "/generate",
        json!({"text": ["a b", "c d e"], "sampling_params": sp}),
    )
    .await;
    assert_eq!(status, 200);
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(u(&list[1], "/meta_info/completion_tokens"), 5);
    let (status, v) = post(
        &h,
        "/generate",
        json!({"input_ids": [[1, 2, 3], [4, 5]], "sampling_params": sp}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(u(&v, "/1/meta_info/prompt_tokens"), 2);
    let (_, data) = stream(
        &h,
        "/generate",
        json!({"text": ["a b", "c d e"], "sampling_params": sp, "stream": true}),
    )
    .await;
    let chunks = chunks(&data);
    for idx in [0, 1] {
        let last = chunks.iter().rfind(|c| c["index"] == idx).unwrap();
        assert_eq!(last["meta_info"]["finish_reason"]["type"], "length");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn stop_strings_and_stop_token_ids_really_stop() {
    let h = server(&[]).await;
    let free = gen(
        &h,
        "Go on.",
        json!({"max_new_tokens": 80, "ignore_eos": true, "temperature": 0}),
    )
    .await;
    let free_text = free["text"].as_str().unwrap();
    let word = free_text
        .split(' ')
        .nth(6)
        .unwrap()
        .trim_matches(['.', ',', '\n']);
    let stop = format!(" {word}");
    let cut = gen(
        &h,
        "Go on.",
        json!({"max_new_tokens": 80, "ignore_eos": true, "temperature": 0, "stop": [stop.clone()]}),
    )
    .await;
    assert_eq!(
        cut["meta_info"]["finish_reason"],
        json!({"type": "stop", "matched": stop})
    );
    let cut_text = cut["text"].as_str().unwrap();
    assert!(!cut_text.contains(&stop));
    assert!(
        free_text[cut_text.len()..].starts_with(&stop),
        "{cut_text:?} / {free_text:?}"
    );
    assert!(u(&cut, "/meta_info/completion_tokens") < 80);

    let id = free["output_ids"][10].as_u64().unwrap();
    let st = gen(
        &h,
        "Go on.",
        json!({"max_new_tokens": 80, "ignore_eos": true, "temperature": 0, "stop_token_ids": [id]}),
    )
    .await;
    assert_eq!(
        st["meta_info"]["finish_reason"],
        json!({"type": "stop", "matched": id})
    );
    let ids = st["output_ids"].as_array().unwrap();
    assert_eq!(ids.last().unwrap().as_u64(), Some(id));
    assert!(ids.len() <= 11);
    h.shutdown().await;
}

#[tokio::test]
async fn lengths_follow_eos_max_new_tokens_and_ignore_eos() {
    let h = server(&[]).await;
    // Without a cap the answer ends with EOS (<|im_end|> = 151645 for Qwen), ~110 tokens.
    let mut total = 0;
    for i in 0..40 {
        let v = gen(
            &h,
            &format!("question {i}"),
            json!({"max_new_tokens": 2000, "temperature": 0}),
        )
        .await;
        assert_eq!(
            v["meta_info"]["finish_reason"],
            json!({"type": "stop", "matched": 151645})
        );
        assert_eq!(v["output_ids"].as_array().unwrap().last().unwrap(), 151645);
        total += u(&v, "/meta_info/completion_tokens");
    }
    let mean = total as f64 / 40.0;
    assert!((70.0..160.0).contains(&mean), "mean answer {mean} tokens");
    // The default max_new_tokens is 128.
    let v = gen(&h, "x", json!({"ignore_eos": true})).await;
    assert_eq!(
        v["meta_info"]["finish_reason"],
        json!({"type": "length", "length": 128})
    );
    let v = gen(&h, "x", json!({"max_new_tokens": 700, "ignore_eos": true})).await;
    assert_eq!(u(&v, "/meta_info/completion_tokens"), 700);
    // max_new_tokens 0: prefill only.
    let v = gen(&h, "x", json!({"max_new_tokens": 0})).await;
    assert_eq!(u(&v, "/meta_info/completion_tokens"), 0);
    assert_eq!(v["text"], "");
    h.shutdown().await;
}

#[tokio::test]
async fn temperature_zero_repeats_and_sampling_varies() {
    let h = server(&["--sim-seed", "5"]).await;
    let sp0 = json!({"max_new_tokens": 30, "temperature": 0, "ignore_eos": true});
    let a = gen(&h, "same prompt", sp0.clone()).await;
    let b = gen(&h, "same prompt", sp0).await;
    assert_eq!(a["output_ids"], b["output_ids"]);
    let sp1 = json!({"max_new_tokens": 30, "temperature": 1.0, "ignore_eos": true});
    let c = gen(&h, "same prompt", sp1.clone()).await;
    let d = gen(&h, "same prompt", sp1).await;
    assert_ne!(c["output_ids"], d["output_ids"]);
    h.shutdown().await;
    // Another seed, another text; the same seed, the same text.
    let h2 = server(&["--sim-seed", "6"]).await;
    let e = gen(
        &h2,
        "same prompt",
        json!({"max_new_tokens": 30, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_ne!(a["output_ids"], e["output_ids"]);
    h2.shutdown().await;
    let h3 = server(&["--sim-seed", "5"]).await;
    let f = gen(
        &h3,
        "same prompt",
        json!({"max_new_tokens": 30, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(a["output_ids"], f["output_ids"]);
    h3.shutdown().await;
}

#[tokio::test]
async fn skip_tokenizer_init_needs_ids_and_returns_no_text() {
    let h = server(&["--skip-tokenizer-init"]).await;
    let (status, v) = post(&h, "/generate", json!({"text": "hi"})).await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("input_ids"));
    let (status, v) = post(
        &h,
        "/generate",
        json!({"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 3}}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(v.get("text").is_none());
    assert_eq!(v["output_ids"].as_array().unwrap().len(), 3);
    h.shutdown().await;
}

/// 2,000 tokens at 100× real time (~0.3 s of wall time) to a client that reads nothing for a
/// second, so the socket fills; returns the token count each chunk added, after checking
/// that text and ids are cumulative and the last chunk finishes the request.
async fn lagging_client_deltas(flags: &[&str]) -> Vec<u64> {
    let mut args = vec!["--sim-time-scale", "100"];
    args.extend_from_slice(flags);
    let h = server(&args).await;
    let resp = client()
        .post(format!("{}/generate", h.base_url()))
        .json(&json!({"text": "a long answer please", "stream": true,
                      "sampling_params": {"max_new_tokens": 2000, "ignore_eos": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut events = resp.bytes_stream().eventsource();
    let mut data = Vec::new();
    while let Some(ev) = events.next().await {
        data.push(ev.expect("a well-formed SSE stream").data);
    }
    let chunks = chunks(&data);
    let (mut prev_text, mut prev_ids, mut prev_n) = (String::new(), Vec::new(), 0);
    let mut deltas = Vec::new();
    for c in &chunks {
        let text = c["text"].as_str().unwrap().to_string();
        let ids: Vec<u64> = c["output_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let n = u(c, "/meta_info/completion_tokens");
        assert!(text.starts_with(&prev_text), "text is cumulative");
        assert!(ids.starts_with(&prev_ids), "output_ids are cumulative");
        assert_eq!(ids.len() as u64, n);
        assert!(n > prev_n, "every chunk carries new tokens");
        deltas.push(n - prev_n);
        (prev_text, prev_ids, prev_n) = (text, ids, n);
    }
    let last = &chunks[chunks.len() - 1]["meta_info"];
    assert_eq!(
        last["finish_reason"],
        json!({"type": "length", "length": 2000})
    );
    assert_eq!(prev_ids.len(), 2000);
    assert!(last["e2e_latency"].as_f64().unwrap() > 0.0);
    for c in &chunks[..chunks.len() - 1] {
        assert!(c["meta_info"]["finish_reason"].is_null());
    }
    h.shutdown().await;
    deltas
}

#[tokio::test]
async fn a_lagging_client_gets_coalesced_cumulative_chunks() {
    // As SGLang does in its default (cumulative) stream mode, pending outputs are merged.
    let deltas = lagging_client_deltas(&[]).await;
    assert!(
        deltas.len() < 1000,
        "{} chunks for 2000 tokens",
        deltas.len()
    );
    assert!(
        deltas.iter().any(|&d| d > 1),
        "no chunk carried more than one token"
    );
}

#[tokio::test]
async fn chunk_per_step_sends_every_step_to_a_lagging_client() {
    let deltas = lagging_client_deltas(&["--sim-chunk-per-step"]).await;
    assert_eq!(deltas.len(), 2000, "one chunk per decode step");
    assert!(
        deltas.iter().all(|&d| d == 1),
        "a chunk carried several tokens"
    );
}

#[tokio::test]
async fn every_timestamp_of_a_chunk_is_on_one_clock() {
    // A simulated engine's clock runs at its time scale: the time a chunk was sent is on that
    // clock too, after the request arrived and its first token was ready (a client reading
    // both got durations of minus an hour).
    let h = server(&["--sim-time-scale", "20", "--enable-metrics"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let body = json!({"text": "Tell me a story.", "stream": true,
                      "sampling_params": {"max_new_tokens": 16, "temperature": 0}});
    let (_, data) = stream(&h, "/generate", body).await;
    for c in chunks(&data) {
        let m = &c["meta_info"];
        let f = |k: &str| m[k].as_f64().unwrap();
        let sent = f("response_sent_to_client_ts");
        assert!(sent >= f("request_received_ts"), "{m}");
        assert!(sent >= f("prefill_finished_time"), "{m}");
        assert!(sent - f("request_received_ts") < 60.0, "{m}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn the_last_tokens_and_the_finish_reason_come_in_one_chunk() {
    // As SGLang's: never a chunk that repeats the previous count only to say it finished
    // (a client counting one gap per chunk would see a token too many).
    for flags in [
        &["--sim-time-scale", "100"][..],
        &["--sim-time-scale", "1"][..],
    ] {
        let h = server(flags).await;
        let mut streams = Vec::new();
        for i in 0..32 {
            let h = &h;
            streams.push(async move {
                stream(
                    h,
                    "/generate",
                    json!({"text": format!("Hello {i} world"), "stream": true,
                           "sampling_params": {"max_new_tokens": 3, "temperature": 0,
                                               "ignore_eos": true}}),
                )
                .await
            });
        }
        for (status, data) in futures::future::join_all(streams).await {
            assert_eq!(status, 200);
            let chunks = chunks(&data);
            let counts: Vec<u64> = chunks
                .iter()
                .map(|c| u(c, "/meta_info/completion_tokens"))
                .collect();
            assert!(
                counts.windows(2).all(|w| w[0] < w[1]),
                "{flags:?}: {counts:?}"
            );
            let last = chunks.last().unwrap();
            assert_eq!(u(last, "/meta_info/completion_tokens"), 3);
            assert_eq!(
                last["meta_info"]["finish_reason"]["type"], "length",
                "{last}"
            );
            assert!(chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c["meta_info"]["finish_reason"].is_null()));
        }
        h.shutdown().await;
    }
}
