//! `runner serve-sim` over real loopback HTTP: every route, both stream forms, prefix
//! caching across turns, sessions, errors, auth, faults; the server is started in-process
//! through `runner::sim::server::start` (port 0), and as the real binary.

mod cache;
mod control;
mod engine_model;
mod errors;
mod faults;
mod generate;
mod openai;
mod tokenizer_file;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use runner::sim::cli::SimArgs;
use runner::sim::server::{start, SimHandle};
use serde_json::{json, Value};

/// The Qwen2.5 ChatML rendering of `[system?] user` written out by hand (not by the code under
/// test), as SGLang's frontend would send it.
pub const SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

pub fn chatml_turn(system: Option<&str>, user: &str) -> String {
    let mut s = String::new();
    if let Some(sys) = system {
        s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
    }
    s.push_str(&format!(
        "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    ));
    s
}

/// A server on an ephemeral port at zero engine cost, with extra serve-sim flags.
pub async fn server(extra: &[&str]) -> SimHandle {
    let mut argv: Vec<String> = ["--port", "0", "--sim-time-scale", "inf"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(extra.iter().map(|s| s.to_string()));
    let (args, _warnings) = SimArgs::parse(&argv).expect("flags parse");
    start(args).await.expect("server starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn post(h: &SimHandle, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", h.base_url()))
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body read");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

pub async fn get(h: &SimHandle, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", h.base_url()))
        .send()
        .await
        .expect("request sent");
    (r.status().as_u16(), r.text().await.expect("body read"))
}

/// POST and read the SSE stream: the `data:` payloads in order (`[DONE]` included).
pub async fn stream(h: &SimHandle, path: &str, body: Value) -> (u16, Vec<String>) {
    let r = client()
        .post(format!("{}{path}", h.base_url()))
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    let mut events = r.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Some(ev) = events.next().await {
        out.push(ev.expect("a well-formed SSE stream").data);
    }
    (status, out)
}

/// The JSON chunks of a stream, checking that it ends with exactly one `[DONE]`.
pub fn chunks(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1);
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?}: {e}")))
        .collect()
}

/// One non-streaming `/generate` of `text`.
pub async fn gen(h: &SimHandle, text: &str, sampling: Value) -> Value {
    let (status, v) = post(
        h,
        "/generate",
        json!({"text": text, "sampling_params": sampling}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

pub fn u(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{ptr} in {v}"))
}
