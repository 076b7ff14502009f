//! Prefix caching across turns (the frontend style that resends the conversation), its
//! absence with `--disable-radix-cache` and after `/flush_cache`, and sessions.

use super::*;

/// Turn 1, then turn 2 resending turn 1's prompt + answer + a new user message.
/// Returns (turn-1 prompt tokens, turn-1 completion tokens, turn-2 meta_info).
async fn two_turns(h: &SimHandle, flush_between: bool) -> (u64, u64, Value) {
    let sp = json!({"max_new_tokens": 200, "temperature": 0});
    let p1 = chatml_turn(Some(SYSTEM), "List the files in the repository, please.");
    let t1 = gen(h, &p1, sp.clone()).await;
    let (n1, c1) = (
        u(&t1, "/meta_info/prompt_tokens"),
        u(&t1, "/meta_info/completion_tokens"),
    );
    if flush_between {
        let (status, body) = {
            let r = client()
                .post(format!("{}/flush_cache", h.base_url()))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        };
        assert_eq!(status, 200);
        assert!(body.starts_with("Cache flushed."), "{body}");
    }
    let p2 = format!(
        "{p1}{}<|im_end|>\n<|im_start|>user\nNow open the first one.<|im_end|>\n<|im_start|>assistant\n",
        t1["text"].as_str().unwrap()
    );
    let t2 = gen(h, &p2, sp).await;
    (n1, c1, t2["meta_info"].clone())
}

#[tokio::test]
async fn turn_two_hits_the_cache_for_turn_one_prompt_and_answer() {
    let h = server(&[]).await;
    let (n1, c1, m2) = two_turns(&h, false).await;
    let cached = u(&m2, "/cached_tokens");
    // Everything of turn 1 but (at most) its last token, whose KV was never computed.
    assert!(
        cached + 1 >= n1 + c1 && cached <= n1 + c1,
        "cached {cached}, turn 1 {n1}+{c1}"
    );
    assert!(u(&m2, "/prompt_tokens") > n1 + c1);
    assert_eq!(u(&m2, "/cached_tokens_details/device"), cached);
    h.shutdown().await;
}

#[tokio::test]
async fn no_hits_without_the_radix_cache_or_after_a_flush() {
    let h = server(&["--disable-radix-cache"]).await;
    let (_, _, m2) = two_turns(&h, false).await;
    assert_eq!(u(&m2, "/cached_tokens"), 0);
    h.shutdown().await;
    let h = server(&[]).await;
    let (_, _, m2) = two_turns(&h, true).await;
    assert_eq!(u(&m2, "/cached_tokens"), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn openai_usage_reports_cached_tokens_only_with_cache_report() {
    for report in [false, true] {
        let h = server(if report {
            &["--enable-cache-report"]
        } else {
            &[]
        })
        .await;
        let mut messages = vec![json!({"role": "user", "content": "Where is the bug?"})];
        let (_, v1) = post(
            &h,
            "/v1/chat/completions",
            json!({"messages": messages, "temperature": 0}),
        )
        .await;
        messages
            .push(json!({"role": "assistant", "content": v1["choices"][0]["message"]["content"]}));
        messages.push(json!({"role": "user", "content": "Fix it."}));
        let (_, v2) = post(
            &h,
            "/v1/chat/completions",
            json!({"messages": messages, "temperature": 0}),
        )
        .await;
        let details = &v2["usage"]["prompt_tokens_details"];
        if report {
            let n1 = u(&v1, "/usage/prompt_tokens");
            assert!(u(details, "/cached_tokens") >= n1, "{v2}");
        } else {
            assert!(details.is_null(), "{v2}");
        }
        h.shutdown().await;
    }
}

#[tokio::test]
async fn session_requests_send_only_the_new_text_and_still_hit_the_cache() {
    let h = server(&[]).await;
    let (status, sid) = post(&h, "/open_session", json!({"capacity_of_str_len": 10000})).await;
    assert_eq!(status, 200);
    let sid = sid
        .as_str()
        .expect("open_session returns a JSON string")
        .to_string();
    let sp = json!({"max_new_tokens": 200, "temperature": 0});
    let p1 = chatml_turn(Some(SYSTEM), "Read the failing test.");
    let (status, t1) = post(
        &h,
        "/generate",
        json!({"text": p1, "sampling_params": sp, "session_params": {"id": sid}}),
    )
    .await;
    assert_eq!(status, 200, "{t1}");
    let rid1 = t1["meta_info"]["id"].as_str().unwrap();
    let (n1, c1) = (
        u(&t1, "/meta_info/prompt_tokens"),
        u(&t1, "/meta_info/completion_tokens"),
    );
    // The answer's EOS (<|im_end|>) is already in the session's history.
    let new = "\n<|im_start|>user\nNow run it.<|im_end|>\n<|im_start|>assistant\n";
    let alone = gen(&h, new, json!({"max_new_tokens": 0})).await;
    let n_new = u(&alone, "/meta_info/prompt_tokens");
    let (status, t2) = post(
        &h,
        "/generate",
        json!({"text": new, "sampling_params": sp, "session_params": {"id": sid, "rid": rid1}}),
    )
    .await;
    assert_eq!(status, 200, "{t2}");
    assert_eq!(u(&t2, "/meta_info/prompt_tokens"), n1 + c1 + n_new);
    let cached = u(&t2, "/meta_info/cached_tokens");
    assert!(
        cached + 1 >= n1 + c1 && cached <= n1 + c1,
        "cached {cached}, turn 1 {n1}+{c1}"
    );

    // Errors are SGLang's: unknown session or parent, non-streaming and streaming.
    let (status, v) = post(
        &h,
        "/generate",
        json!({"text": "x", "session_params": {"id": "nope"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("session id nope does not exist"));
    let (status, data) = stream(
        &h,
        "/generate",
        json!({"text": "x", "stream": true, "session_params": {"id": sid, "rid": "unknown"}}),
    )
    .await;
    assert_eq!(status, 200);
    let chunks = chunks(&data);
    let fr = &chunks[0]["meta_info"]["finish_reason"];
    assert_eq!(fr["type"], "abort");
    assert_eq!(fr["status_code"], 400);
    let (status, v) = post(
        &h,
        "/open_session",
        json!({"capacity_of_str_len": 1, "session_id": sid}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already exists"));
    let (status, v) = post(&h, "/open_session", json!({"session_id": "x"})).await;
    assert_eq!(status, 400, "capacity_of_str_len is required: {v}");
    let r = client()
        .post(format!("{}/close_session", h.base_url()))
        .json(&json!({"session_id": sid}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "");
    h.shutdown().await;
}

/// Near the context limit a session request is checked as SGLang checks it: the tokenizer
/// manager's limits see only the new text; the scheduler then refuses a joined input that is
/// too long, and otherwise clips the output to what the context has left.
#[tokio::test]
async fn a_session_near_the_context_limit_is_clipped_then_refused() {
    let h = server(&["--context-length", "400"]).await;
    let (_, sid) = post(&h, "/open_session", json!({"capacity_of_str_len": 10000})).await;
    let sid = sid.as_str().unwrap().to_string();
    let ignore = |n: u32| json!({"max_new_tokens": n, "ignore_eos": true, "temperature": 0});
    let (status, t1) = post(
        &h,
        "/generate",
        json!({"text": "word ".repeat(100), "sampling_params": ignore(100),
               "session_params": {"id": sid}}),
    )
    .await;
    assert_eq!(status, 200, "{t1}");
    let n1 = u(&t1, "/meta_info/prompt_tokens") + u(&t1, "/meta_info/completion_tokens");
    assert!((250..350).contains(&n1), "{t1}");
    // New text + max_new_tokens fit, the joined input + max_new_tokens does not: clipped.
    let (status, t2) = post(
        &h,
        "/generate",
        json!({"text": "word ".repeat(25), "sampling_params": ignore(300),
               "session_params": {"id": sid, "rid": t1["meta_info"]["id"]}}),
    )
    .await;
    assert_eq!(status, 200, "{t2}");
    let (p2, c2) = (
        u(&t2, "/meta_info/prompt_tokens"),
        u(&t2, "/meta_info/completion_tokens"),
    );
    assert!(p2 > n1 && p2 < 390, "{t2}");
    assert_eq!(
        p2 + c2,
        399 - 1,
        "clipped to the context's max_req_len (399) − 1: {t2}"
    );
    assert_eq!(t2["meta_info"]["finish_reason"]["type"], "length");
    // The joined input alone reaches the limit: refused.
    let (status, t3) = post(
        &h,
        "/generate",
        json!({"text": "word ".repeat(25), "sampling_params": ignore(10),
               "session_params": {"id": sid, "rid": t2["meta_info"]["id"]}}),
    )
    .await;
    assert_eq!(status, 400, "{t3}");
    assert!(
        t3["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the maximum allowed length"),
        "{t3}"
    );
    h.shutdown().await;
}
