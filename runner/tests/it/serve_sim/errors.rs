//! Malformed and refused requests get SGLang-shaped errors, and never hurt the server.

use super::*;

async fn raw_post(h: &SimHandle, path: &str, ctype: &str, body: &'static [u8]) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", h.base_url()))
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_validation(v: &Value) {
    assert_eq!(v["object"], "error", "{v}");
    assert_eq!(v["type"], "Bad Request");
    assert_eq!(v["code"], 400);
    assert!(v["param"].is_null());
    assert!(!v["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn bad_requests_get_sglang_errors_and_the_server_lives_on() {
    let h = server(&["--context-length", "64"]).await;
    for path in [
        "/generate",
        "/v1/chat/completions",
        "/v1/completions",
        "/open_session",
    ] {
        for body in [
            &b"{not json"[..],
            b"\xff\xfe\x00",
            b"[1,2",
            b"",
            b"{\"text\": 5}",
        ] {
            let (status, v) = raw_post(&h, path, "application/json", body).await;
            assert_eq!(status, 400, "{path} {body:?}: {v}");
            assert_validation(&v);
        }
    }
    // Missing prompt.
    let (status, v) = post(&h, "/generate", json!({"sampling_params": {}})).await;
    assert_eq!(status, 400);
    assert_eq!(
        v,
        json!({"error": {"message": "Either text, input_ids or input_embeds should be provided."}})
    );
    // Prompt at or beyond the context length (64 tokens here).
    let long = "word ".repeat(100);
    let (status, v) = post(&h, "/generate", json!({"text": long})).await;
    assert_eq!(status, 400);
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("longer than the model's context length (64 tokens)"),
        "{m}"
    );
    // Prompt + max_new_tokens beyond it.
    let (status, v) = post(
        &h,
        "/generate",
        json!({"text": "hi", "sampling_params": {"max_new_tokens": 100}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length of 64"));
    // Streaming: errors come in-band with HTTP 200.
    let (status, data) = stream(&h, "/generate", json!({"text": long, "stream": true})).await;
    assert_eq!(status, 200);
    let c = chunks(&data);
    assert!(c[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("context length"));
    // OpenAI routes: the OpenAI error object.
    let (status, v) = post(
        &h,
        "/v1/chat/completions",
        json!({"messages": [{"content": "no role"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["object"], "error");
    assert_eq!(v["type"], "BadRequestError");
    let (status, v) = post(&h, "/v1/completions", json!({"prompt": long})).await;
    assert_eq!(status, 400);
    assert_eq!(v["code"], 400);
    let (status, _) = raw_post(&h, "/v1/chat/completions", "text/plain", b"{}").await;
    assert_eq!(status, 400);
    // Duplicate in-flight rid is refused; an unknown model card is a 404.
    let (status, v) = post(
        &h,
        "/generate",
        json!({"text": ["a", "b"], "rid": ["same", "same"],
                                                   "sampling_params": {"max_new_tokens": 1}}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["message"], "Duplicate request IDs detected");
    let (status, body) = get(&h, "/v1/models/unknown").await;
    assert_eq!(status, 404);
    assert!(body.contains("model_not_found"));
    // Still serving.
    assert_eq!(get(&h, "/health").await.0, 200);
    let v = gen(&h, "still alive", json!({"max_new_tokens": 3})).await;
    assert!(u(&v, "/meta_info/completion_tokens") >= 1);
    h.shutdown().await;
}

#[tokio::test]
async fn api_key_guards_everything_but_health_and_metrics_and_is_never_shown() {
    let h = server(&["--api-key", "sekrit-key-123", "--enable-metrics"]).await;
    let url = h.base_url();
    let c = client();
    let r = c
        .post(format!("{url}/generate"))
        .json(&json!({"text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "Unauthorized"})
    );
    let r = c
        .get(format!("{url}/server_info"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        c.get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .post(format!("{url}/generate"))
        .bearer_auth("sekrit-key-123")
        .json(&json!({"text": "x", "sampling_params": {"max_new_tokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in [
        "/server_info",
        "/get_server_info",
        "/model_info",
        "/v1/models",
    ] {
        let r = c
            .get(format!("{url}{path}"))
            .bearer_auth("sekrit-key-123")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        assert!(!body.contains("sekrit"), "{path} leaks the key");
    }
    h.shutdown().await;
}

/// The status of `method path` with the given headers.
async fn status_with(h: &SimHandle, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let c = client();
    let url = format!("{}{path}", h.base_url());
    let mut r = match method {
        "GET" => c.get(url),
        _ => c
            .post(url)
            .json(&json!({"text": "x", "sampling_params": {"max_new_tokens": 1}})),
    };
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn admin_routes_take_the_admin_key_and_keys_come_as_sglang_reads_them() {
    // SGLang's rules: with both keys, /flush_cache and /abort_request take only the admin key
    // and other routes only the API key; the scheme of `Authorization` is read in any case, and
    // `x-api-key` works too.
    let h = server(&["--api-key", "user-k", "--admin-api-key", "admin-k"]).await;
    let bearer = |k: &str| format!("Bearer {k}");
    for (method, path, key, want) in [
        ("POST", "/flush_cache", "user-k", 401),
        ("POST", "/flush_cache", "admin-k", 200),
        ("GET", "/flush_cache", "admin-k", 200),
        ("POST", "/generate", "admin-k", 401),
        ("POST", "/generate", "user-k", 200),
        ("GET", "/get_server_info", "user-k", 200),
    ] {
        let got = status_with(&h, method, path, &[("authorization", &bearer(key))]).await;
        assert_eq!(got, want, "{method} {path} with {key}");
    }
    for headers in [
        [("authorization", "bearer user-k")],
        [("authorization", "BEARER user-k")],
        [("x-api-key", "user-k")],
    ] {
        assert_eq!(
            status_with(&h, "POST", "/generate", &headers).await,
            200,
            "{headers:?}"
        );
    }
    assert_eq!(
        status_with(&h, "POST", "/flush_cache", &[("x-api-key", "admin-k")]).await,
        200
    );
    for bad in ["Bearer", "Bearer  user-k", "Basic user-k", "user-k"] {
        let got = status_with(&h, "POST", "/generate", &[("authorization", bad)]).await;
        assert_eq!(got, 401, "{bad:?}");
    }
    assert_eq!(status_with(&h, "GET", "/health_generate", &[]).await, 200);
    h.shutdown().await;

    // The admin key alone guards the admin routes only.
    let h = server(&["--admin-api-key", "admin-k"]).await;
    assert_eq!(status_with(&h, "POST", "/generate", &[]).await, 200);
    assert_eq!(status_with(&h, "POST", "/flush_cache", &[]).await, 401);
    let admin = [("authorization", "Bearer admin-k")];
    assert_eq!(status_with(&h, "POST", "/flush_cache", &admin).await, 200);
    h.shutdown().await;

    // The API key alone guards the admin routes too.
    let h = server(&["--api-key", "user-k"]).await;
    assert_eq!(status_with(&h, "POST", "/flush_cache", &[]).await, 401);
    let user = [("authorization", "Bearer user-k")];
    assert_eq!(status_with(&h, "POST", "/flush_cache", &user).await, 200);
    h.shutdown().await;
}

#[tokio::test]
async fn odd_but_json_bodies_never_hurt_the_server() {
    let h = server(&[]).await;
    let bodies = [
        json!({"text": "x", "sampling_params": {"max_new_tokens": -1}}),
        json!({"input_ids": [-1]}),
        json!({"input_ids": []}),
        json!({"input_ids": [[]]}),
        json!({"input_ids": [4_000_000_000u64], "sampling_params": {"max_new_tokens": 2}}),
        json!({"text": "x", "input_ids": [1]}),
        json!({"text": [], "sampling_params": {"max_new_tokens": 1}}),
        json!({"text": "x", "sampling_params": {"stop": ["", "\u{0}"], "max_new_tokens": 3}}),
        json!({"text": "x", "sampling_params": {"temperature": "hot"}}),
        json!({"text": "x", "sampling_params": [{"max_new_tokens": 1}, 5]}),
        json!({"text": "x", "session_params": {"id": null}, "sampling_params": {"max_new_tokens": 1}}),
        json!({"text": "x", "session_params": {"id": 7}}),
        json!({"text": "x", "stream": "yes"}),
        json!({"text": "x", "rid": ["a", "b"], "sampling_params": {"max_new_tokens": 1}}),
        json!({"text": "\u{1F600}\u{0}<|im_end|><|im_start|", "sampling_params": {"max_new_tokens": 2}}),
        json!([1, 2, 3]),
        json!("text"),
        json!(null),
    ];
    for b in bodies {
        for path in ["/generate", "/v1/completions", "/v1/chat/completions"] {
            let (status, v) = post(&h, path, b.clone()).await;
            assert!(status == 200 || status == 400, "{path} {b}: {status} {v}");
        }
    }
    assert_eq!(get(&h, "/health").await.0, 200);
    let v = gen(&h, "still alive", json!({"max_new_tokens": 3})).await;
    assert_eq!(u(&v, "/meta_info/completion_tokens"), 3);
    h.shutdown().await;
}
