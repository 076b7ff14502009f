//! Every `--sim-fault` kind, observed from a client.

use super::*;
use std::time::{Duration, Instant};

fn sp() -> Value {
    json!({"max_new_tokens": 20, "ignore_eos": true})
}

#[tokio::test]
async fn http_status_faults_follow_the_rate_deterministically() {
    let h = server(&["--sim-fault", "http500=1"]).await;
    let (status, v) = post(&h, "/generate", json!({"text": "x"})).await;
    assert_eq!(status, 500);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("simulated fault"));
    let (status, v) = post(
        &h,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(v["type"], "InternalServerError");
    h.shutdown().await;
    let h = server(&["--sim-fault", "http503=1"]).await;
    assert_eq!(post(&h, "/generate", json!({"text": "x"})).await.0, 503);
    assert_eq!(
        get(&h, "/health").await.0,
        200,
        "faults hit generation only"
    );
    h.shutdown().await;

    let mut runs = Vec::new();
    for seed in ["1", "1", "2"] {
        let h = server(&["--sim-fault", "http500=0.5", "--sim-seed", seed]).await;
        let mut statuses = Vec::new();
        for _ in 0..24 {
            statuses.push(
                post(
                    &h,
                    "/generate",
                    json!({"text": "x", "sampling_params": sp()}),
                )
                .await
                .0,
            );
        }
        h.shutdown().await;
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
    assert_ne!(runs[0], runs[2]);
    let n500 = runs[0].iter().filter(|s| **s == 500).count();
    assert!((4..=20).contains(&n500), "{:?}", runs[0]);
    assert!(runs[0].iter().all(|s| *s == 200 || *s == 500));
}

#[tokio::test]
async fn stalls_delay_before_or_during_the_output() {
    let h = server(&["--sim-fault", "stall=300@before"]).await;
    let t0 = Instant::now();
    gen(&h, "x", sp()).await;
    assert!(t0.elapsed() >= Duration::from_millis(300));
    h.shutdown().await;

    let h = server(&["--sim-fault", "stall=300@during"]).await;
    let resp = client()
        .post(format!("{}/generate", h.base_url()))
        .json(&json!({"text": "x", "stream": true, "sampling_params": sp()}))
        .send()
        .await
        .unwrap();
    let mut events = resp.bytes_stream().eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert_ne!(first.data, "[DONE]");
    let t_first = Instant::now();
    let mut last = first.data;
    while let Some(ev) = events.next().await {
        last = ev.unwrap().data;
    }
    assert_eq!(last, "[DONE]");
    assert!(
        t_first.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t_first.elapsed()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn dropped_connections_cut_streams_and_bodies() {
    let h = server(&["--sim-fault", "drop=1"]).await;
    let resp = client()
        .post(format!("{}/generate", h.base_url()))
        .json(&json!({"text": "x", "stream": true, "sampling_params": sp()}))
        .send()
        .await
        .unwrap();
    let mut events = resp.bytes_stream().eventsource();
    let mut saw_done = false;
    let mut saw_error = false;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(e) => saw_done |= e.data == "[DONE]",
            Err(_) => {
                saw_error = true;
                break;
            }
        }
    }
    assert!(saw_error && !saw_done);
    let r = client()
        .post(format!("{}/generate", h.base_url()))
        .json(&json!({"text": "x", "sampling_params": sp()}))
        .send()
        .await;
    if let Ok(r) = r {
        assert!(r.bytes().await.is_err(), "the body must fail");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_chunks_do_not_parse() {
    let h = server(&["--sim-fault", "malformed=1"]).await;
    let (status, data) = stream(
        &h,
        "/generate",
        json!({"text": "x", "stream": true, "sampling_params": sp()}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let bad = data
        .iter()
        .filter(|d| *d != "[DONE]" && serde_json::from_str::<Value>(d).is_err())
        .count();
    assert_eq!(bad, 1, "{data:?}");
    let (status, body) = {
        let r = client()
            .post(format!("{}/generate", h.base_url()))
            .json(&json!({"text": "x", "sampling_params": sp()}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    h.shutdown().await;
}

#[tokio::test]
async fn exit_after_n_requests() {
    // In process: the server stops (its process is the test's).
    let h = server(&["--sim-fault", "exit-after=2"]).await;
    gen(&h, "one", sp()).await;
    gen(&h, "two", sp()).await;
    let r = client()
        .post(format!("{}/generate", h.base_url()))
        .json(&json!({"text": "three"}))
        .send()
        .await;
    let failed = match r {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(failed, "third request must fail");
    h.shutdown().await;

    // The binary exits with status 3.
    let port = crate::free_port();
    let (mut child, _) = super::control::spawn_binary(port, &["--sim-fault", "exit-after=2"]).await;
    for _ in 0..2 {
        let r = client()
            .post(format!("http://127.0.0.1:{port}/generate"))
            .json(&json!({"text": "x", "sampling_params": sp()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("the process exits")
        .unwrap();
    assert_eq!(status.code(), Some(3));
}
