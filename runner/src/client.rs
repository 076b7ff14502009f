//! The wire: SGLang's native `POST /generate` and OpenAI `POST /v1/chat/completions`, both
//! streamed (SSE parsed by `eventsource-stream`), plus the control endpoints a sweep needs
//! (sessions, `/flush_cache`, server and model info, health, `/metrics`).
//!
//! A generation returns raw monotonic instants and the server's token counts ([`Outcome`]);
//! turning them into offsets and durations is the caller's business ([`Timing`]).
//!
//! Measurement definitions (the same as SGLang's `bench_serving.py`, see `turn.rs` in the
//! schema crate):
//! - send = just before the request is written; first = the first chunk carrying content
//!   (non-empty text, or a rise in `completion_tokens`); end = the last SSE event received,
//!   `[DONE]` included.
//! - inter-token latency: each later content chunk that raises `completion_tokens` by `n`
//!   contributes `n` gaps of (time since the previous such chunk) / `n`. Native streams carry
//!   `meta_info.completion_tokens` on every chunk; OpenAI streams are asked for
//!   `continuous_usage_stats` and fall back to one token per content chunk without it.
//! - cumulative native `text` is turned into deltas (`text[len(previous)..]`).

use crate::workload::Message;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Which HTTP API generations go through.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// SGLang native `/generate` (client-side chat template).
    Native,
    /// OpenAI `/v1/chat/completions` (server-side chat template).
    Openai,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Native => "native",
            Api::Openai => "openai",
        }
    }
}

/// Sampling parameters of every turn.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sampling {
    pub max_new_tokens: u32,
    pub temperature: f64,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

/// `session_params` of a native session request.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    /// The previous turn's request id; `None` for the session's first request.
    pub rid: Option<String>,
    /// Prepend the parent's prompt only (used with recorded history: the recorded answer
    /// replaces the generated one).
    pub drop_previous_output: bool,
}

/// What to send.
pub enum Prompt<'a> {
    /// Native `/generate` text (the whole templated conversation, or only the new text when
    /// `session` is set).
    Text {
        text: String,
        session: Option<Session>,
    },
    /// OpenAI chat messages.
    Messages(&'a [Message]),
}

/// Monotonic instants of one request (STYLE.md §5: instants in, offsets out).
#[derive(Debug, Clone)]
pub struct Timing {
    pub send: Instant,
    pub first: Option<Instant>,
    /// Content chunks after the first that added tokens: (arrival, tokens added).
    pub chunks: Vec<(Instant, u64)>,
    /// The last data chunk (before `[DONE]`).
    pub last_data: Option<Instant>,
    pub end: Instant,
}

impl Timing {
    fn new(send: Instant) -> Timing {
        Timing {
            send,
            first: None,
            chunks: Vec::new(),
            last_data: None,
            end: send,
        }
    }

    /// Time to first token, wall seconds.
    pub fn ttft(&self) -> Option<Duration> {
        Some(self.first? - self.send)
    }

    pub fn e2e(&self) -> Duration {
        self.end - self.send
    }

    /// Per-token gaps in wall seconds (each chunk gap split evenly over its tokens).
    pub fn itl(&self) -> Vec<f64> {
        let Some(mut prev) = self.first else {
            return vec![];
        };
        let mut out = Vec::new();
        for &(t, n) in &self.chunks {
            let gap = (t - prev).as_secs_f64() / n as f64;
            out.extend(std::iter::repeat_n(gap, n as usize));
            prev = t;
        }
        out
    }
}

/// The result of one generation: timing, server counts, and what went wrong if anything.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub timing: Timing,
    /// Generated text (deltas joined).
    pub text: String,
    /// The server's request id (`meta_info.id` / chunk `id`).
    pub id: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
    /// The server's own end-to-end latency (`meta_info.e2e_latency`, native API), seconds of
    /// engine time; used to check the client's timing accuracy.
    pub server_e2e: Option<f64>,
    /// `meta_info.response_sent_to_client_ts` (Unix seconds) of the first content chunk and of
    /// the last chunk (native API): when the server handed them to the connection.
    pub server_sent: Option<(f64, f64)>,
}

/// A connection to one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
    /// Longest silence inside a stream before the turn is failed.
    pub idle_timeout: Duration,
    /// Longest a whole request may take.
    pub total_timeout: Duration,
    /// `model` field of OpenAI requests.
    pub model: String,
}

impl Client {
    pub fn new(base: &str, api_key: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()
            .expect("reqwest client with static configuration");
        Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            api_key,
            idle_timeout: Duration::from_secs(120),
            total_timeout: Duration::from_secs(3600),
            model: "default".into(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// GET a JSON document.
    pub async fn get_json(&self, path: &str, timeout: Duration) -> anyhow::Result<Value> {
        let resp = self
            .req(reqwest::Method::GET, path)
            .timeout(timeout)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await?;
        anyhow::ensure!(
            status.is_success(),
            "GET {path}: HTTP {status}: {}",
            snippet(&body)
        );
        serde_json::from_str(&body)
            .map_err(|e| anyhow::anyhow!("GET {path}: not JSON ({e}): {}", snippet(&body)))
    }

    /// GET a text document (`/metrics`).
    pub async fn get_text(&self, path: &str, timeout: Duration) -> anyhow::Result<String> {
        let resp = self
            .req(reqwest::Method::GET, path)
            .timeout(timeout)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await?;
        anyhow::ensure!(status.is_success(), "GET {path}: HTTP {status}");
        Ok(body)
    }

    /// True when `GET path` answers 200 within `timeout`.
    pub async fn is_ready(&self, path: &str, timeout: Duration) -> bool {
        matches!(
            self.req(reqwest::Method::GET, path).timeout(timeout).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    /// `POST /flush_cache`, retried while the server reports requests still running.
    pub async fn flush_cache(&self) -> anyhow::Result<()> {
        let mut last = String::new();
        for _ in 0..50 {
            let resp = self
                .req(reqwest::Method::POST, "/flush_cache")
                .timeout(Duration::from_secs(30))
                .send()
                .await?;
            if resp.status().is_success() {
                return Ok(());
            }
            last = format!("HTTP {}: {}", resp.status(), snippet(&resp.text().await?));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("POST /flush_cache kept failing: {last}")
    }

    pub async fn open_session(&self) -> anyhow::Result<String> {
        let resp = self
            .req(reqwest::Method::POST, "/open_session")
            .json(&json!({"capacity_of_str_len": 1 << 20}))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await?;
        anyhow::ensure!(
            status.is_success(),
            "POST /open_session: HTTP {status}: {}",
            snippet(&body)
        );
        match serde_json::from_str::<Value>(&body) {
            Ok(Value::String(s)) => Ok(s),
            _ => anyhow::bail!(
                "POST /open_session: expected a JSON string, got {}",
                snippet(&body)
            ),
        }
    }

    pub async fn close_session(&self, id: &str) -> anyhow::Result<()> {
        let resp = self
            .req(reqwest::Method::POST, "/close_session")
            .json(&json!({ "session_id": id }))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "POST /close_session: HTTP {}",
            resp.status()
        );
        Ok(())
    }

    /// Run one streamed generation. Never fails: every problem ends up in `Outcome::error`.
    pub async fn generate(&self, prompt: Prompt<'_>, sampling: &Sampling, rid: &str) -> Outcome {
        let (path, body, api) = match prompt {
            Prompt::Text { text, session } => {
                let mut sp = json!({
                    "max_new_tokens": sampling.max_new_tokens,
                    "temperature": sampling.temperature,
                    "stop": sampling.stop,
                });
                if sampling.ignore_eos {
                    sp["ignore_eos"] = json!(true);
                }
                let mut b =
                    json!({"text": text, "sampling_params": sp, "stream": true, "rid": rid});
                if let Some(s) = session {
                    let mut p = json!({"id": s.id, "rid": s.rid});
                    if s.drop_previous_output {
                        p["drop_previous_output"] = json!(true);
                    }
                    b["session_params"] = p;
                }
                ("/generate", b, Api::Native)
            }
            Prompt::Messages(msgs) => {
                let messages: Vec<Value> = msgs
                    .iter()
                    .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
                    .collect();
                let mut b = json!({
                    "model": self.model,
                    "messages": messages,
                    "max_completion_tokens": sampling.max_new_tokens,
                    "temperature": sampling.temperature,
                    "stop": sampling.stop,
                    "stream": true,
                    "stream_options": {"include_usage": true, "continuous_usage_stats": true},
                    "rid": rid,
                });
                if sampling.ignore_eos {
                    b["ignore_eos"] = json!(true);
                }
                ("/v1/chat/completions", b, Api::Openai)
            }
        };
        let send = Instant::now();
        let mut st = StreamState::new(send);
        let fut = self.stream(path, body, api, &mut st);
        if tokio::time::timeout(self.total_timeout, fut).await.is_err() {
            st.fail(format!(
                "timeout: request took longer than {:.0} s",
                self.total_timeout.as_secs_f64()
            ));
        }
        st.finish()
    }

    async fn stream(&self, path: &str, body: Value, api: Api, st: &mut StreamState) {
        let resp = match self
            .req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return st.fail(format!("connection error: {}", error_chain(&e))),
        };
        st.timing.end = Instant::now();
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            st.timing.end = Instant::now();
            return st.fail(format!("HTTP {}: {}", status.as_u16(), snippet(&text)));
        }
        let mut events = resp.bytes_stream().eventsource();
        loop {
            let next = match tokio::time::timeout(self.idle_timeout, events.next()).await {
                Ok(n) => n,
                Err(_) => {
                    return st.fail(format!(
                        "stalled: no data for {:.0} s",
                        self.idle_timeout.as_secs_f64()
                    ))
                }
            };
            let now = Instant::now();
            let ev = match next {
                None => break,
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return st.fail(format!("stream dropped: {e}")),
            };
            st.timing.end = now;
            let data = ev.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                st.done = true;
                break;
            }
            let v: Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => return st.fail(format!("malformed chunk ({e}): {}", snippet(data))),
            };
            if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
                let msg = err
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| err.to_string());
                st.error.get_or_insert(format!("server error: {msg}"));
                continue;
            }
            if v.get("object").and_then(Value::as_str) == Some("error") {
                let msg = v
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                st.error.get_or_insert(format!("server error: {msg}"));
                continue;
            }
            st.timing.last_data = Some(now);
            let r = match api {
                Api::Native => st.native_chunk(&v, now),
                Api::Openai => st.openai_chunk(&v, now),
            };
            if let Err(m) = r {
                return st.fail(format!("malformed chunk ({m}): {}", snippet(data)));
            }
        }
        if !st.done && st.finish_reason.is_none() && st.error.is_none() {
            st.fail("stream dropped: ended before [DONE]".into());
        }
    }
}

/// Accumulates one stream.
struct StreamState {
    timing: Timing,
    text: String,
    native_len: usize,
    last_tokens: u64,
    id: Option<String>,
    prompt_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    finish_reason: Option<String>,
    error: Option<String>,
    server_e2e: Option<f64>,
    server_sent: Option<(f64, f64)>,
    done: bool,
    saw_usage_per_chunk: bool,
}

impl StreamState {
    fn new(send: Instant) -> StreamState {
        StreamState {
            timing: Timing::new(send),
            text: String::new(),
            native_len: 0,
            last_tokens: 0,
            id: None,
            prompt_tokens: None,
            cached_tokens: None,
            completion_tokens: None,
            finish_reason: None,
            error: None,
            server_e2e: None,
            server_sent: None,
            done: false,
            saw_usage_per_chunk: false,
        }
    }

    fn fail(&mut self, msg: String) {
        if self.timing.end < self.timing.send {
            self.timing.end = Instant::now();
        }
        self.error.get_or_insert(msg);
    }

    /// A chunk carrying content arrived at `now`, raising the token count by `n`.
    fn content(&mut self, now: Instant, n: u64) {
        if self.timing.first.is_none() {
            self.timing.first = Some(now);
        } else if n > 0 {
            self.timing.chunks.push((now, n));
        }
    }

    fn native_chunk(&mut self, v: &Value, now: Instant) -> Result<(), String> {
        let meta = v.get("meta_info").ok_or("no meta_info")?;
        let text = v.get("text").and_then(Value::as_str).unwrap_or("");
        // Cumulative text → delta.
        let delta = if text.len() >= self.native_len && text.is_char_boundary(self.native_len) {
            &text[self.native_len..]
        } else {
            text
        };
        self.text.push_str(delta);
        self.native_len = text.len();
        let tokens = meta
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .ok_or("no meta_info.completion_tokens")?;
        let n = tokens.saturating_sub(self.last_tokens);
        if !delta.is_empty() || n > 0 {
            self.content(now, n);
        }
        self.last_tokens = self.last_tokens.max(tokens);
        self.completion_tokens = Some(self.last_tokens);
        if let Some(p) = meta.get("prompt_tokens").and_then(Value::as_u64) {
            self.prompt_tokens = Some(p);
        }
        if let Some(c) = meta.get("cached_tokens").and_then(Value::as_u64) {
            self.cached_tokens = Some(c);
        }
        if let Some(id) = meta.get("id").and_then(Value::as_str) {
            self.id = Some(id.to_string());
        }
        if let Some(e) = meta.get("e2e_latency").and_then(Value::as_f64) {
            self.server_e2e = Some(e);
        }
        if let Some(ts) = meta
            .get("response_sent_to_client_ts")
            .and_then(Value::as_f64)
        {
            let first = self.server_sent.map_or(ts, |s| s.0);
            self.server_sent = Some((first, ts));
        }
        if let Some(fr) = meta.get("finish_reason").filter(|f| !f.is_null()) {
            let kind = fr.get("type").and_then(Value::as_str).unwrap_or("unknown");
            self.finish_reason = Some(kind.to_string());
            if kind == "abort" {
                let msg = fr.get("message").and_then(Value::as_str).unwrap_or("");
                self.error
                    .get_or_insert(format!("aborted by server: {msg}"));
            }
        }
        Ok(())
    }

    fn openai_chunk(&mut self, v: &Value, now: Instant) -> Result<(), String> {
        if let Some(id) = v.get("id").and_then(Value::as_str) {
            self.id = Some(id.to_string());
        }
        let usage = v.get("usage").filter(|u| !u.is_null());
        let choices = v
            .get("choices")
            .and_then(Value::as_array)
            .ok_or("no choices")?;
        if let Some(c) = choices.first() {
            let delta = c
                .get("delta")
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !delta.is_empty() {
                self.text.push_str(delta);
                let n = match usage
                    .and_then(|u| u.get("completion_tokens"))
                    .and_then(Value::as_u64)
                {
                    Some(t) => {
                        self.saw_usage_per_chunk = true;
                        let n = t.saturating_sub(self.last_tokens);
                        self.last_tokens = self.last_tokens.max(t);
                        n
                    }
                    None => {
                        self.last_tokens += 1;
                        1
                    }
                };
                self.content(now, n);
            }
            if let Some(fr) = c.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(fr.to_string());
                if fr == "abort" {
                    self.error.get_or_insert("aborted by server".into());
                }
            }
        }
        if let Some(u) = usage {
            if let Some(p) = u.get("prompt_tokens").and_then(Value::as_u64) {
                self.prompt_tokens = Some(p);
            }
            if let Some(c) = u.get("completion_tokens").and_then(Value::as_u64) {
                self.completion_tokens = Some(c);
            }
            if let Some(c) = u
                .get("prompt_tokens_details")
                .and_then(|d| d.get("cached_tokens"))
                .and_then(Value::as_u64)
            {
                self.cached_tokens = Some(c);
            }
        }
        Ok(())
    }

    fn finish(self) -> Outcome {
        Outcome {
            timing: self.timing,
            text: self.text,
            id: self.id,
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            completion_tokens: self.completion_tokens,
            finish_reason: self.finish_reason,
            error: self.error,
            server_e2e: self.server_e2e,
            server_sent: self.server_sent,
        }
    }
}

/// The first 200 characters of a body, for error messages.
pub fn snippet(s: &str) -> String {
    let t: String = s.trim().chars().take(200).collect();
    if t.len() < s.trim().len() {
        format!("{t}…")
    } else {
        t
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// True for keys that may hold credentials (`api_key`, `*_token` secrets, passwords…), which
/// are removed before server answers go into results. Token *counts* (`max_total_tokens`) stay.
pub fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    const PARTS: [&str; 10] = [
        "api_key",
        "apikey",
        "secret",
        "password",
        "passwd",
        "credential",
        "authorization",
        "access_token",
        "hf_token",
        "private_key",
    ];
    PARTS.iter().any(|p| k.contains(p)) || k == "key" || k == "token" || k.ends_with("_key")
}

/// Remove secret-looking keys, recursively.
pub fn scrub(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !is_secret_key(k));
            m.values_mut().for_each(scrub);
        }
        Value::Array(a) => a.iter_mut().for_each(scrub),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itl_splits_multi_token_chunks() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let t = Timing {
            send: t0,
            first: Some(ms(100)),
            chunks: vec![(ms(110), 1), (ms(140), 3)],
            last_data: Some(ms(140)),
            end: ms(150),
        };
        let itl = t.itl();
        assert_eq!(itl.len(), 4);
        assert!((itl[0] - 0.010).abs() < 1e-9);
        assert!(itl[1..].iter().all(|g| (g - 0.010).abs() < 1e-9));
        assert_eq!(t.ttft(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn secrets_are_scrubbed_but_token_counts_stay() {
        let mut v = json!({"api_key": "s", "admin_api_key": "s", "max_total_tokens": 5,
            "nested": [{"hf_token": "x", "ok": 1}], "ssl_keyfile_password": "p"});
        scrub(&mut v);
        assert_eq!(v, json!({"max_total_tokens": 5, "nested": [{"ok": 1}]}));
    }
}
