//! `/v1/chat/completions` and `/v1/completions`: stream and non-stream shapes of spec §2.

use super::*;

#[tokio::test]
async fn chat_stream_has_role_deltas_finish_usage_and_done() {
    let h = server(&["--sim-time-scale", "20"]).await;
    let messages = json!([{"role": "user", "content": "Hi"}]);
    let (status, data) = stream(
        &h,
        "/v1/chat/completions",
        json!({"model": "m", "messages": messages, "stream": true, "temperature": 0,
               "max_tokens": 40, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200);
    let chunks = chunks(&data);
    assert!(
        chunks.len() >= 5,
        "role, several deltas, finish, usage: {data:?}"
    );
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "m");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    let role = &chunks[0]["choices"][0];
    assert_eq!(
        role["delta"],
        json!({"role": "assistant", "content": "", "reasoning_content": null, "tool_calls": null})
    );
    assert!(role["finish_reason"].is_null());
    let n = chunks.len();
    let mut content = String::new();
    for c in &chunks[1..n - 2] {
        let d = &c["choices"][0]["delta"];
        assert!(d["role"].is_null());
        let piece = d["content"].as_str().unwrap();
        assert!(!piece.is_empty(), "no chunk without new text");
        content.push_str(piece);
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
    let finish = &chunks[n - 2]["choices"][0];
    assert_eq!(
        finish["delta"],
        json!({"role": null, "content": null, "reasoning_content": null, "tool_calls": null})
    );
    let reason = finish["finish_reason"].as_str().unwrap();
    assert!(reason == "stop" || reason == "length");
    if reason == "stop" {
        assert_eq!(finish["matched_stop"], 151645);
    }
    let usage_chunk = &chunks[n - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    // No --enable-cache-report: details stay null.
    assert!(usage["prompt_tokens_details"].is_null());
    assert_eq!(usage["reasoning_tokens"], 0);
    assert_eq!(
        u(usage, "/total_tokens"),
        u(usage, "/prompt_tokens") + u(usage, "/completion_tokens")
    );
    // The template is applied server-side: the same prompt sent raw to /generate.
    let raw = gen(
        &h,
        &chatml_turn(Some(SYSTEM), "Hi"),
        json!({"max_new_tokens": 40, "temperature": 0}),
    )
    .await;
    assert_eq!(
        u(usage, "/prompt_tokens"),
        u(&raw, "/meta_info/prompt_tokens")
    );
    assert_eq!(content, raw["text"].as_str().unwrap());

    // Non-streaming: the same answer in one body.
    let (status, v) = post(
        &h,
        "/v1/chat/completions",
        json!({"messages": messages, "temperature": 0, "max_tokens": 40}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "default");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], content.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], reason);
    assert_eq!(v["usage"], *usage);
    assert_eq!(v["metadata"]["weight_version"], "default");
    // Without include_usage there is no usage chunk.
    let (_, data) = stream(
        &h,
        "/v1/chat/completions",
        json!({"messages": messages, "stream": true, "max_tokens": 5}),
    )
    .await;
    let chunks2 = super::chunks(&data);
    assert!(chunks2.iter().all(|c| c["usage"].is_null()));
    h.shutdown().await;
}

#[tokio::test]
async fn completions_stream_carries_finish_on_the_last_content_chunk() {
    let h = server(&[]).await;
    let (status, data) = stream(
        &h,
        "/v1/completions",
        json!({"model": "m", "prompt": "Once upon a time", "stream": true, "temperature": 0,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200);
    let chunks = chunks(&data);
    let n = chunks.len();
    assert!(n >= 2);
    let mut text = String::new();
    for c in &chunks[..n - 1] {
        assert_eq!(c["object"], "text_completion");
        assert!(c["choices"][0].get("delta").is_none(), "no role chunk");
        text.push_str(c["choices"][0]["text"].as_str().unwrap());
    }
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "length");
    assert!(chunks[..n - 2]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    let usage = &chunks[n - 1]["usage"];
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    // max_tokens defaults to 16; nulls are dropped from this chunk.
    assert_eq!(u(usage, "/completion_tokens"), 16);
    assert!(usage.get("prompt_tokens_details").is_none(), "{usage}");
    let (status, v) = post(
        &h,
        "/v1/completions",
        json!({"prompt": "Once upon a time", "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], text.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Token-id prompts work too.
    let (status, v) = post(
        &h,
        "/v1/completions",
        json!({"prompt": [1, 2, 3], "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(u(&v, "/usage/prompt_tokens"), 3);
    h.shutdown().await;
}

#[tokio::test]
async fn continuous_usage_stats_put_the_counts_so_far_on_every_content_chunk() {
    // `--enable-cache-report` and a prompt sent twice: the final usage has cached tokens,
    // the per-chunk usages never do (SGLang's calculate_token_usage).
    let h = server(&["--sim-time-scale", "inf", "--enable-cache-report"]).await;
    let messages = json!([{"role": "user", "content": "Tell me a long story about a cat."}]);
    for _ in 0..2 {
        let (status, data) = stream(
            &h,
            "/v1/chat/completions",
            json!({"messages": messages, "stream": true, "temperature": 0, "max_tokens": 64,
                   "ignore_eos": true,
                   "stream_options": {"include_usage": true, "continuous_usage_stats": true}}),
        )
        .await;
        assert_eq!(status, 200);
        let chunks = chunks(&data);
        let n = chunks.len();
        assert!(chunks[0]["usage"].is_null(), "the role chunk has none");
        assert!(
            chunks[n - 2]["usage"].is_null(),
            "the finish chunk has none"
        );
        let mut last = 0;
        let mut text = 0;
        for c in &chunks[1..n - 2] {
            let usage = &c["usage"];
            let done = u(usage, "/completion_tokens");
            assert!(done > last, "counts grow with each chunk: {data:?}");
            last = done;
            text += c["choices"][0]["delta"]["content"].as_str().unwrap().len();
            assert!(usage["prompt_tokens_details"].is_null(), "{usage}");
            assert_eq!(u(usage, "/total_tokens"), u(usage, "/prompt_tokens") + done);
        }
        assert!(text > 0);
        let fin = &chunks[n - 1]["usage"];
        assert_eq!(last, u(fin, "/completion_tokens"));
        assert_eq!(last, 64);
    }
    // Without include_usage, continuous_usage_stats alone puts the counts on the content
    // chunks all the same, with no final usage chunk (SGLang's should_include_usage).
    let (_, data) = stream(
        &h,
        "/v1/completions",
        json!({"prompt": "Once", "stream": true, "max_tokens": 8, "ignore_eos": true,
               "stream_options": {"continuous_usage_stats": true}}),
    )
    .await;
    let alone = chunks(&data);
    assert!(
        alone
            .iter()
            .all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())),
        "no usage-only chunk: {data:?}"
    );
    let counted: Vec<u64> = alone
        .iter()
        .filter(|c| !c["choices"][0]["text"].as_str().unwrap_or("").is_empty())
        .map(|c| u(&c["usage"], "/completion_tokens"))
        .collect();
    assert!(
        !counted.is_empty() && counted.windows(2).all(|w| w[0] < w[1]),
        "{data:?}"
    );
    assert_eq!(counted.last(), Some(&8));
    // /v1/completions content chunks carry them too.
    let (_, data) = stream(
        &h,
        "/v1/completions",
        json!({"prompt": "Once", "stream": true, "max_tokens": 8,
               "stream_options": {"include_usage": true, "continuous_usage_stats": true}}),
    )
    .await;
    let chunks = chunks(&data);
    let n = chunks.len();
    assert!(
        chunks[..n - 1]
            .iter()
            .all(|c| c["usage"]["completion_tokens"].as_u64().is_some()),
        "{data:?}"
    );
    h.shutdown().await;
}
