//! The wire: SGLang's native `POST /generate` and OpenAI `POST /v1/chat/completions`, both
//! streamed (HTTP/1 connections driven by the task reading the response, [`crate::wire`],
//! whose reads carry the kernel's receive time, [`crate::arrival`]; SSE framed by
//! sse-stream; each chunk parsed into borrowing typed structs that skip what is not read,
//! with what a native chunk repeats of the ones before it, its cumulative `text` and
//! `output_ids`, cut out before parsing, [`lean_native`]), plus the control endpoints a sweep
//! needs (sessions, `/flush_cache`, server and model info, health,
//! `/metrics`, through reqwest).
//!
//! A generation returns raw monotonic instants and the server's token counts ([`Outcome`]);
//! turning them into offsets and durations is the caller's business ([`Timing`]).
//!
//! Measurement definitions (the same as SGLang's `bench_serving.py`, see `turn.rs` in the
//! schema crate):
//! - send = when the request began to be written to the socket (so the wait for a pooled
//!   connection or for the writing task is not counted); first = the first chunk carrying content
//!   (non-empty text, or a rise in `completion_tokens`); end = the last SSE event received,
//!   `[DONE]` included.
//! - inter-token latency: each later content chunk that raises `completion_tokens` by `n`
//!   contributes `n` gaps of (time since the previous such chunk) / `n`. Native streams carry
//!   `meta_info.completion_tokens` on every chunk; OpenAI streams are asked for
//!   `continuous_usage_stats` and fall back to one token per content chunk without it.
//! - cumulative native `text` is turned into deltas (`text[len(previous)..]`).
//! - an event's arrival instant is that of the body frame that completed it, and a frame's is
//!   the kernel's receive time of the bytes that completed it, on the monotonic clock
//!   (`Stamped`, [`crate::arrival`]). How long this process then took to read and parse them
//!   (milliseconds when hundreds of streams receive at once on a busy CPU) is not counted.

use crate::arrival::{self, Arrival};
use crate::wire;
use crate::workload::Message;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::Full;
use memchr::memmem::Finder;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

/// A body's byte frames, each stamped with the arrival of the bytes that completed it: the
/// kernel's receive time on the connection ([`Arrival`], see [`crate::arrival`]), or the time
/// the frame came out of the connection when there is none. The stamp of the latest frame is
/// left in `last` (nanoseconds since [`arrival::base`]).
struct Stamped<S> {
    inner: S,
    conn: Arrival,
    last: Arc<AtomicU64>,
}

impl<S: Stream + Unpin> Stream for Stamped<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let item = ready!(Pin::new(&mut self.inner).poll_next(cx));
        if item.is_some() {
            // A recorded arrival is never later than now (it was stored at or after it).
            let at = match self.conn.latest() {
                Some(at) => at,
                None => Instant::now(),
            };
            let nanos = at.saturating_duration_since(arrival::base()).as_nanos();
            self.last.store(nanos as u64, Ordering::Relaxed);
        }
        Poll::Ready(item)
    }
}

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
    /// SGLang's `offset`: keep the parent's tokens up to this index (Python slicing, so `-1`
    /// drops the last: the stop token a finished parent holds past its text).
    pub offset: Option<i64>,
}

/// What ended a native generation that finished with `stop` (`finish_reason.matched`). The
/// server keeps the matched tokens in the request's output (a session's next request sees
/// them), while its text leaves them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMatch {
    /// A stop token id (EOS): one token past the text.
    Token,
    /// A stop string: the tokens that spelled it (some may also hold text past it).
    Text,
}

/// What to send.
pub enum Prompt<'a> {
    /// Native `/generate` text (the whole templated conversation, or only the new text when
    /// `session` is set).
    Text {
        text: &'a str,
        session: Option<&'a Session>,
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
    /// What a `stop` finish matched, when the server says (native API).
    pub stop_match: Option<StopMatch>,
    pub error: Option<String>,
    /// The server's own end-to-end latency (`meta_info.e2e_latency`, native API), seconds of
    /// engine time; used to check the client's timing accuracy.
    pub server_e2e: Option<f64>,
    /// `meta_info.response_sent_to_client_ts` (Unix seconds) of the first content chunk and of
    /// the last chunk (native API): when the server handed them to the connection.
    pub server_sent: Option<(f64, f64)>,
    /// The server's own TTFT, seconds: `prefill_finished_time − request_received_ts` (native
    /// API with `--enable-metrics`); used to check the client's timing accuracy.
    pub server_ttft: Option<f64>,
    /// `prefill_finished_time` (Unix seconds on the server's engine clock): when the first
    /// token was ready.
    pub server_first_ready: Option<f64>,
    /// How often the server retracted the request (`meta_info.total_retractions`, native
    /// API), as its last chunk says.
    pub retractions: Option<u32>,
    /// Chunks held several tokens the stream did not count (an OpenAI stream without
    /// per-chunk usage, `stream_options.continuous_usage_stats`): each content chunk was then
    /// taken for one token, so the inter-token gaps are per chunk, not per token.
    pub itl_per_chunk: bool,
}

/// The server refused a cache flush for want of the right key: the cells after it would
/// start on the cache the ones before left, which a key given to the runner prevents.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlushRefused(String);

/// A connection to one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Generation streams: HTTP/1 connections with kernel receive stamps, each driven by the
    /// task reading its response (or why the base URL cannot have them).
    streams: Result<wire::Pool, String>,
    base: String,
    api_key: Option<String>,
    /// The server's `--admin-api-key`, for `/flush_cache` (SGLang then refuses the API key
    /// there); without it the API key is sent.
    pub admin_key: Option<String>,
    /// Longest wait for a response's first data (its head, and its first event): a server
    /// sends nothing while the request waits in its queue.
    pub first_timeout: Duration,
    /// Longest silence after a response's first event before the turn is failed.
    pub idle_timeout: Duration,
    /// Longest a whole request may take.
    pub total_timeout: Duration,
    /// `model` field of OpenAI requests.
    pub model: String,
    /// The server fills OpenAI `usage.prompt_tokens_details` whenever tokens were cached
    /// (SGLang's `--enable-cache-report`), so a usage without it means 0 cached, not unknown.
    pub cache_report: bool,
    /// The server streams native output as deltas (SGLang's `--incremental-streaming-output`,
    /// SGLang 0.5.10; its older `--stream-output` leaves `text` cumulative) instead of the
    /// whole text so far.
    pub incremental: bool,
}

impl Client {
    pub fn new(base: &str, api_key: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()
            .expect("reqwest client with static configuration");
        let base = base.trim_end_matches('/');
        let streams = wire::Pool::new(base, Duration::from_secs(30), 4096);
        Client {
            http,
            streams,
            base: base.to_string(),
            api_key,
            admin_key: None,
            first_timeout: Duration::from_secs(1800),
            idle_timeout: Duration::from_secs(120),
            total_timeout: Duration::from_secs(3600),
            model: "default".into(),
            cache_report: false,
            incremental: false,
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

    /// The status `GET path` answers with (any answer: a server is there).
    pub async fn status_of(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<reqwest::StatusCode, reqwest::Error> {
        let resp = self
            .req(reqwest::Method::GET, path)
            .timeout(timeout)
            .send()
            .await?;
        Ok(resp.status())
    }

    /// Whether the server answers at all: any HTTP status to `GET /health` within 25 s, tried
    /// twice half a second apart. (A server that is down refuses the connection; one that
    /// hangs accepts it and says nothing. SGLang 0.5's `/health` runs a generation and waits
    /// up to 20 s for its output, answering 503 after that: a server busy with long prefills
    /// is slow to answer, not down.)
    pub async fn answers(&self) -> bool {
        for i in 0..2 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if self
                .status_of("/health", Duration::from_secs(25))
                .await
                .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// True when `GET path` answers 200 within `timeout`.
    pub async fn is_ready(&self, path: &str, timeout: Duration) -> bool {
        matches!(
            self.req(reqwest::Method::GET, path).timeout(timeout).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    /// `POST /flush_cache` (with the admin key when one is given), retried for up to a minute while the server refuses because
    /// requests are still running (SGLang answers 400 then; requests a client gave up on run
    /// until they end). A refusal that waiting cannot change (401/403: an admin key; 404: no
    /// such endpoint) fails at once.
    pub async fn flush_cache(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = match &self.admin_key {
                Some(k) => self
                    .http
                    .post(format!("{}/flush_cache", self.base))
                    .bearer_auth(k),
                None => self.req(reqwest::Method::POST, "/flush_cache"),
            };
            let resp = req.timeout(Duration::from_secs(30)).send().await?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            let last = format!("HTTP {status}: {}", snippet(&resp.text().await?));
            if matches!(status.as_u16(), 401 | 403) {
                let hint = if self.admin_key.is_none() {
                    " (a server started with --admin-api-key takes that key here: give it to \
                     the runner as --admin-api-key)"
                } else {
                    " (the runner's --admin-api-key is not the server's)"
                };
                return Err(FlushRefused(format!("POST /flush_cache failed: {last}{hint}")).into());
            }
            if matches!(status.as_u16(), 401 | 403 | 404) || Instant::now() >= deadline {
                anyhow::bail!("POST /flush_cache failed: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
        let (path, body, api) = self.request(prompt, sampling, rid);
        let send = Instant::now();
        let mut st = StreamState::new(send);
        // Room for a coalesced stream's few dozen chunks; a per-step stream grows it by
        // doubling. (Reserving max_new_tokens up front kept ~6 KB per turn alive in every
        // result, mostly unused, and growing the heap for it cost system time per request.)
        st.timing.chunks.reserve(32);
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                st.fail(format!("bad request: {e}"));
                return st.finish();
            }
        };
        st.cache_report = self.cache_report && api == Api::Openai;
        st.incremental = self.incremental;
        let fut = self.stream(path, body, api, &mut st);
        if tokio::time::timeout(self.total_timeout, fut).await.is_err() {
            st.fail(format!(
                "timeout: request took longer than {:.0} s",
                self.total_timeout.as_secs_f64()
            ));
        }
        st.finish()
    }

    /// A generation's path, JSON body and API. The prompt, the bulk of the body (a 50-turn
    /// conversation resent whole is hundreds of kB), is escaped by json-escape-simd (SIMD:
    /// ~0.25 ns a byte here against serde_json's ~1) straight from the prompt, no copy of it
    /// made first; the other fields are serialized by serde_json after it ([`spliced`]).
    fn request(
        &self,
        prompt: Prompt<'_>,
        sampling: &Sampling,
        rid: &str,
    ) -> (&'static str, Result<Bytes, serde_json::Error>, Api) {
        match prompt {
            Prompt::Text { text, session } => {
                let rest = NativeBody {
                    sampling_params: SamplingParams {
                        max_new_tokens: sampling.max_new_tokens,
                        temperature: sampling.temperature,
                        stop: &sampling.stop,
                        ignore_eos: sampling.ignore_eos,
                    },
                    stream: true,
                    rid,
                    session_params: session.map(|s| SessionParams {
                        id: &s.id,
                        rid: s.rid.as_deref(),
                        drop_previous_output: s.drop_previous_output,
                        offset: s.offset,
                    }),
                };
                let body = spliced(
                    br#"{"text":"#,
                    |out| json_escape_simd::escape_into(text, out),
                    &rest,
                );
                ("/generate", body, Api::Native)
            }
            Prompt::Messages(msgs) => {
                let rest = OpenaiBody {
                    model: &self.model,
                    max_tokens: sampling.max_new_tokens,
                    max_completion_tokens: sampling.max_new_tokens,
                    temperature: sampling.temperature,
                    stop: &sampling.stop,
                    stream: true,
                    stream_options: StreamOptions {
                        include_usage: true,
                        continuous_usage_stats: true,
                    },
                    rid,
                    ignore_eos: sampling.ignore_eos,
                };
                let messages = |out: &mut Vec<u8>| {
                    out.push(b'[');
                    for (i, m) in msgs.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(br#"{"role":"#);
                        json_escape_simd::escape_into(m.role.as_str(), out);
                        out.extend_from_slice(br#","content":"#);
                        json_escape_simd::escape_into(&m.content, out);
                        out.push(b'}');
                    }
                    out.push(b']');
                };
                let body = spliced(br#"{"messages":"#, messages, &rest);
                ("/v1/chat/completions", body, Api::Openai)
            }
        }
    }

    async fn stream(&self, path: &str, body: Bytes, api: Api, st: &mut StreamState) {
        let pool = match &self.streams {
            Ok(p) => p,
            Err(e) => return st.fail(format!("connection error: {e}")),
        };
        let request = || {
            let mut req = http::Request::post(path)
                .header(http::header::HOST, pool.authority())
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some(k) = &self.api_key {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {k}"));
            }
            req.body(Full::new(body.clone()))
        };
        // A pooled connection the server closed just as it was taken fails before any of the
        // request is written: it is then sent once more, on a new connection. A request the
        // server may have received is never sent again (its failure is the turn's).
        let mut attempt = 0;
        let (mut conn, resp) = loop {
            attempt += 1;
            let mut conn = match pool.checkout().await {
                Ok(c) => c,
                Err(e) => return st.fail(format!("connection error: {}", error_chain(&e))),
            };
            let req = match request() {
                Ok(r) => r,
                Err(e) => return st.fail(format!("bad request: {e}")),
            };
            // SGLang's native route sends the head at once, its OpenAI routes with the first
            // token, after the request's wait in the queue: the first-data limit applies.
            let left = self.first_timeout.saturating_sub(st.timing.send.elapsed());
            let sent = match tokio::time::timeout(left, conn.send(req)).await {
                Ok(r) => r,
                Err(_) => {
                    return st.fail(format!(
                        "stalled: no response for {:.0} s",
                        self.first_timeout.as_secs_f64()
                    ))
                }
            };
            match sent {
                Ok(r) => break (conn, r),
                Err(wire::SendError::NotSent(_)) if conn.reused && attempt == 1 => continue,
                Err(e) => return st.fail(format!("connection error: {}", error_chain(&e))),
            }
        };
        st.timing.end = Instant::now();
        let status = resp.status();
        let arrival = conn.arrival.clone();
        // Send = when the request began to be written to the socket, not when it was queued
        // for a connection (hundreds of streams sending at once wait for each other).
        if let Some(sent) = arrival.sent() {
            if sent > st.timing.send && sent <= st.timing.end {
                st.timing.send = sent;
            }
        }
        if !status.is_success() {
            let mut text = Vec::new();
            let mut frames = conn.body(resp.into_body());
            let read = async {
                while let Some(Ok(b)) = frames.next().await {
                    text.extend_from_slice(&b);
                }
            };
            // (An error body that stalls is cut where it stalled.)
            let _ = tokio::time::timeout(self.idle_timeout, read).await;
            st.timing.end = Instant::now();
            let text = String::from_utf8_lossy(&text);
            return st.fail(format!("HTTP {}: {}", status.as_u16(), snippet(&text)));
        }
        let completed = self
            .read_events(conn.body(resp.into_body()), arrival, api, st)
            .await;
        if completed {
            pool.checkin(conn);
        }
    }

    /// Read a response's SSE events into `st`; true when the body was read to its end.
    async fn read_events(
        &self,
        body: wire::Driven<'_>,
        conn: Arrival,
        api: Api,
        st: &mut StreamState,
    ) -> bool {
        // Frames stamped with their arrival (`Stamped`), SSE framing by sse-stream; each
        // event's data is parsed in place by typed, borrowing structs (`StreamState::chunk`).
        let arrival = Arc::new(AtomicU64::new(0));
        let frames = Stamped {
            inner: body,
            conn,
            last: arrival.clone(),
        };
        let mut events = sse_stream::SseByteStream::new(frames);
        // The idle timer is armed once and moved only when it fires early (a timer per event
        // costs more than the parsing). Until the first event the limit is the first-data one,
        // from the request's send (a queued request gets nothing before its first token).
        let mut last_event = None::<Instant>;
        let first_by = st.timing.send + self.first_timeout;
        let idle_timeout = self.idle_timeout;
        let deadline = move |last: Option<Instant>| match last {
            Some(at) => at + idle_timeout,
            None => first_by,
        };
        let idle = tokio::time::sleep_until(deadline(None).into());
        tokio::pin!(idle);
        loop {
            let next = tokio::select! {
                biased;
                next = events.next() => next,
                () = &mut idle => {
                    if Instant::now() >= deadline(last_event) {
                        st.fail(match last_event {
                            Some(_) => format!(
                                "stalled: no data for {:.0} s",
                                self.idle_timeout.as_secs_f64()
                            ),
                            None => format!(
                                "stalled: no first token for {:.0} s",
                                self.first_timeout.as_secs_f64()
                            ),
                        });
                        return false;
                    }
                    idle.as_mut().reset(deadline(last_event).into());
                    continue;
                }
            };
            // The arrival of the frame that completed this event (or, at the end of the body,
            // now).
            let now = match next {
                Some(Ok(_)) => (arrival::base()
                    + Duration::from_nanos(arrival.load(Ordering::Relaxed)))
                .max(st.timing.send),
                _ => Instant::now(),
            };
            let ev = match next {
                None => break,
                Some(Ok(ev)) => ev,
                Some(Err(sse_stream::Error::Body(e))) => {
                    st.fail(format!("stream dropped: {}", error_chain(e.as_ref())));
                    return false;
                }
                Some(Err(e)) => {
                    st.fail(format!("stream dropped: {e}"));
                    return false;
                }
            };
            if last_event.is_none() {
                // From the first-data limit to the (shorter) silence limit.
                idle.as_mut().reset(deadline(Some(now)).into());
            }
            last_event = Some(now);
            st.timing.end = now;
            let data = ev.data.as_deref().unwrap_or("").trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                st.done = true;
                // The body's end follows at once; only a connection read to the end of its
                // response can carry the next request.
                let rest = async {
                    loop {
                        match events.next().await {
                            None => return true,
                            Some(Ok(_)) => {}
                            Some(Err(_)) => return false,
                        }
                    }
                };
                return matches!(
                    tokio::time::timeout(Duration::from_secs(1), rest).await,
                    Ok(true)
                );
            }
            if let Err(m) = st.chunk(data, api, now) {
                st.fail(format!("malformed chunk ({m}): {}", snippet(data)));
                return false;
            }
        }
        if !st.done && st.finish_reason.is_none() && st.error.is_none() {
            st.fail("stream dropped: ended before [DONE]".into());
            return false;
        }
        true
    }
}

thread_local! {
    /// Where request bodies are put together: json-escape-simd wants room for 6 bytes a
    /// byte of its input, so the escaping happens here, kept from one request to the next,
    /// and the body is copied out at its own length.
    static ASSEMBLY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A JSON object whose first member is `head` (`{"key":`) followed by what `first` writes (a
/// JSON value), then the members of `rest` (a struct, serialized by serde_json).
fn spliced(
    head: &[u8],
    first: impl FnOnce(&mut Vec<u8>),
    rest: &impl serde::Serialize,
) -> Result<Bytes, serde_json::Error> {
    ASSEMBLY.with_borrow_mut(|buf| {
        buf.clear();
        buf.extend_from_slice(head);
        first(buf);
        let value_end = buf.len();
        serde_json::to_writer(&mut *buf, rest)?;
        // `rest` is `{…}`: its members follow the first one, or, when it has none, the
        // object closes.
        let members = &buf[value_end + 1..buf.len() - 1];
        let mut body = Vec::with_capacity(value_end + members.len() + 2);
        body.extend_from_slice(&buf[..value_end]);
        if !members.is_empty() {
            body.push(b',');
            body.extend_from_slice(members);
        }
        body.push(b'}');
        // Kept up to 16 MiB (prompts of ~2.7 MB, a 128k-token context's are ~0.5 MB): a
        // larger one does not hold six times its size for the rest of the run.
        if buf.capacity() > 16 << 20 {
            *buf = Vec::new();
        }
        Ok(Bytes::from(body))
    })
}

/// SGLang's native `/generate` request, after its `text` ([`Client::request`]).
#[derive(serde::Serialize)]
struct NativeBody<'a> {
    sampling_params: SamplingParams<'a>,
    stream: bool,
    rid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_params: Option<SessionParams<'a>>,
}

#[derive(serde::Serialize)]
struct SamplingParams<'a> {
    max_new_tokens: u32,
    temperature: f64,
    stop: &'a [String],
    /// Sent only when set, as are the other flags.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
}

#[derive(serde::Serialize)]
struct SessionParams<'a> {
    id: &'a str,
    /// `null` for the session's first request.
    rid: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    drop_previous_output: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
}

/// An OpenAI `/v1/chat/completions` request, after its `messages` ([`Client::request`]).
#[derive(serde::Serialize)]
struct OpenaiBody<'a> {
    model: &'a str,
    /// The length limit under both names: `max_tokens` is the one servers that predate
    /// `max_completion_tokens` know (SGLang before 0.4.6, and others), which would ignore the
    /// newer name and generate to EOS or the context's end.
    max_tokens: u32,
    max_completion_tokens: u32,
    temperature: f64,
    stop: &'a [String],
    stream: bool,
    stream_options: StreamOptions,
    rid: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
}

#[derive(serde::Serialize)]
struct StreamOptions {
    include_usage: bool,
    continuous_usage_stats: bool,
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
    stop_match: Option<StopMatch>,
    error: Option<String>,
    server_e2e: Option<f64>,
    server_sent: Option<(f64, f64)>,
    server_ttft: Option<f64>,
    server_first_ready: Option<f64>,
    retractions: Option<u32>,
    done: bool,
    saw_usage_per_chunk: bool,
    /// A content chunk without a token count was taken for one token.
    guessed_tokens: bool,
    /// The last native chunk's `text` as it was sent (the JSON string's inside, escapes and
    /// all), which the next chunk's cumulative `text` begins with ([`lean_native`]); empty
    /// when unknown.
    raw_text: String,
    /// The last native chunk's `output_ids` list as it was sent (its inside, checked to be
    /// plain ids), which the next chunk's list begins with ([`lean_native`]).
    raw_ids: String,
    /// Reused for each native chunk without what it repeats ([`lean_native`]).
    scratch: String,
    /// See [`Client::cache_report`].
    cache_report: bool,
    /// The OpenAI stream's final usage chunk arrived.
    final_usage: bool,
    /// See [`Client::incremental`].
    incremental: bool,
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
            stop_match: None,
            error: None,
            server_e2e: None,
            server_sent: None,
            server_ttft: None,
            server_first_ready: None,
            retractions: None,
            done: false,
            saw_usage_per_chunk: false,
            guessed_tokens: false,
            raw_text: String::new(),
            raw_ids: String::new(),
            scratch: String::new(),
            cache_report: false,
            final_usage: false,
            incremental: false,
        }
    }

    /// The turn failed: its end is when the failure was noticed (now), not the last data.
    fn fail(&mut self, msg: String) {
        self.timing.end = self.timing.end.max(Instant::now());
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

    /// One SSE data payload (not `[DONE]`) arrived at `now`.
    fn chunk(&mut self, data: &str, api: Api, now: Instant) -> Result<(), String> {
        // From a `str`: sse-stream already checked the UTF-8, so serde_json does not again.
        match api {
            Api::Native => {
                let mut buf = std::mem::take(&mut self.scratch);
                // (A delta's text is not cut: it does not repeat the previous one.)
                let seen_text = if self.incremental { "" } else { &self.raw_text };
                let lean = lean_native(data, seen_text, &self.raw_ids, &mut buf);
                let parsed = match serde_json::from_str::<NativeChunk<'_>>(lean.payload) {
                    Ok(c) => Ok((c, lean.text)),
                    // Malformed: the error names a position in the payload as it came.
                    Err(_) if lean.payload.len() != data.len() => {
                        serde_json::from_str(data).map(|c| (c, Text::Whole))
                    }
                    Err(e) => Err(e),
                };
                let r = match parsed {
                    Ok((c, text)) => self.native_chunk(c, text, now),
                    Err(e) => Err(e.to_string()),
                };
                match lean.ids {
                    Some(ids) if ids.grew => self.raw_ids.push_str(&data[ids.new..ids.end]),
                    Some(ids) => {
                        self.raw_ids.clear();
                        self.raw_ids.push_str(&data[ids.start..ids.end]);
                    }
                    None => self.raw_ids.clear(),
                }
                self.scratch = buf;
                r
            }
            Api::Openai => match serde_json::from_str::<OpenaiChunk<'_>>(data) {
                Ok(c) => self.openai_chunk(c, now),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// An in-band error (`{"error": …}`, or OpenAI's `{"object": "error", "message": …}`) is
    /// recorded, and true returned; otherwise the chunk carries data, which arrived at `now`.
    fn in_band_error<M, I, C, U>(&mut self, c: &Chunk<'_, M, I, C, U>, now: Instant) -> bool {
        if let Some(err) = c.error.as_ref().filter(|e| !e.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            self.error.get_or_insert(format!("server error: {msg}"));
            return true;
        }
        if c.object.as_ref().and_then(Scalar::as_str) == Some("error") {
            let msg = c
                .message
                .as_ref()
                .and_then(Scalar::as_str)
                .unwrap_or("unknown");
            self.error.get_or_insert(format!("server error: {msg}"));
            return true;
        }
        self.timing.last_data = Some(now);
        false
    }

    fn set_id(&mut self, id: Option<&Scalar<'_>>) {
        if let Some(id) = id.and_then(Scalar::as_str) {
            if self.id.as_deref() != Some(id) {
                self.id = Some(id.to_string());
            }
        }
    }

    /// `cut` tells whether the chunk's `text` is whole or cut after what came before.
    fn native_chunk(&mut self, c: NativeChunk<'_>, cut: Text, now: Instant) -> Result<(), String> {
        if self.in_band_error(&c, now) {
            return Ok(());
        }
        let meta = c.meta_info.ok_or("no meta_info")?.0.unwrap_or_default();
        let raw = c.text.map(RawValue::get);
        // A string with an escape serde_json skips but does not decode (a lone surrogate) is
        // malformed, as it was when `text` was decoded in place.
        let text = match raw {
            Some(r) => serde_json::from_str::<Scalar<'_>>(r).map_err(|e| e.to_string())?,
            None => Scalar::Other,
        };
        let text = text.as_str().unwrap_or("");
        let raw_inner = raw
            .filter(|r| r.len() >= 2 && r.starts_with('"'))
            .map(|r| &r[1..r.len() - 1]);
        let delta = match cut {
            // The text after the part already read.
            Text::Cut => text,
            Text::Whole if self.incremental => text,
            // Cumulative text → delta.
            Text::Whole
                if text.len() >= self.native_len && text.is_char_boundary(self.native_len) =>
            {
                &text[self.native_len..]
            }
            Text::Whole => text,
        };
        self.text.push_str(delta);
        match (cut, raw_inner) {
            (Text::Cut, Some(r)) => {
                self.native_len += text.len();
                self.raw_text.push_str(r);
            }
            (_, r) => {
                self.native_len = text.len();
                self.raw_text.clear();
                self.raw_text.push_str(r.unwrap_or(""));
            }
        }
        // An abort may come without counts (SGLang 0.4's scheduler aborts: queue full,
        // timeout): it is the turn's error, not a malformed chunk.
        let aborted = meta.finish_reason.as_ref().is_some_and(|f| {
            f.0.as_ref()
                .and_then(|f| f.kind.as_ref())
                .and_then(Scalar::as_str)
                == Some("abort")
        });
        let tokens = match meta.completion_tokens.as_ref().and_then(Num::as_u64) {
            Some(t) => t,
            None if aborted => self.last_tokens,
            None => return Err("no meta_info.completion_tokens".into()),
        };
        check_count(tokens)?;
        let n = tokens.saturating_sub(self.last_tokens);
        if !delta.is_empty() || n > 0 {
            self.content(now, n);
        }
        self.last_tokens = self.last_tokens.max(tokens);
        self.completion_tokens = Some(self.last_tokens);
        if let Some(p) = meta.prompt_tokens.as_ref().and_then(Num::as_u64) {
            self.prompt_tokens = Some(p);
        }
        if let Some(c) = meta.cached_tokens.as_ref().and_then(Num::as_u64) {
            self.cached_tokens = Some(c);
        }
        if let Some(n) = meta.total_retractions.as_ref().and_then(Num::as_u64) {
            self.retractions = Some(u32::try_from(n).unwrap_or(u32::MAX));
        }
        self.set_id(meta.id.as_ref());
        if let Some(e) = meta.e2e_latency.as_ref().and_then(Num::as_f64) {
            self.server_e2e = Some(e);
        }
        if let Some(ts) = meta
            .response_sent_to_client_ts
            .as_ref()
            .and_then(Num::as_f64)
        {
            let first = self.server_sent.map_or(ts, |s| s.0);
            self.server_sent = Some((first, ts));
        }
        let ts = |x: &Option<Num>| x.as_ref().and_then(Num::as_f64);
        if let (Some(r), Some(f)) = (
            ts(&meta.request_received_ts),
            ts(&meta.prefill_finished_time).or_else(|| ts(&meta.prefill_finished_ts)),
        ) {
            self.server_ttft = Some(f - r);
            self.server_first_ready = Some(f);
        }
        if let Some(fr) = meta.finish_reason.map(|f| f.0.unwrap_or_default()) {
            let kind = fr
                .kind
                .as_ref()
                .and_then(Scalar::as_str)
                .unwrap_or("unknown");
            self.finish_reason = Some(kind.to_string());
            self.stop_match = match &fr.matched {
                Some(Scalar::N(_)) if kind == "stop" => Some(StopMatch::Token),
                Some(Scalar::S(_)) if kind == "stop" => Some(StopMatch::Text),
                _ => None,
            };
            if kind == "abort" {
                let msg = fr.message.as_ref().and_then(Scalar::as_str).unwrap_or("");
                self.error
                    .get_or_insert(format!("aborted by server: {msg}"));
            }
        }
        Ok(())
    }

    fn openai_chunk(&mut self, c: OpenaiChunk<'_>, now: Instant) -> Result<(), String> {
        if self.in_band_error(&c, now) {
            return Ok(());
        }
        self.set_id(c.id.as_ref());
        let usage = c.usage.and_then(|u| u.0);
        let choices = c.choices.filter(|c| c.is_array).ok_or("no choices")?;
        // The final usage chunk (`choices: []`): the one that carries cached tokens (with
        // `continuous_usage_stats`, SGLang's per-chunk usages never do).
        if usage.is_some() && choices.first.is_none() {
            self.final_usage = true;
        }
        if let Some(ch) = choices.first.map(|c| c.0.unwrap_or_default()) {
            let delta = ch
                .delta
                .and_then(|d| d.0)
                .and_then(|d| d.content)
                .and_then(|s| s.into_str())
                .unwrap_or_default();
            if !delta.is_empty() {
                self.text.push_str(&delta);
                let n = match usage
                    .as_ref()
                    .and_then(|u| u.completion_tokens.as_ref())
                    .and_then(Num::as_u64)
                {
                    Some(t) => {
                        check_count(t)?;
                        self.saw_usage_per_chunk = true;
                        let n = t.saturating_sub(self.last_tokens);
                        self.last_tokens = self.last_tokens.max(t);
                        n
                    }
                    None => {
                        self.guessed_tokens = true;
                        self.last_tokens += 1;
                        1
                    }
                };
                self.content(now, n);
            }
            if let Some(fr) = ch.finish_reason.as_ref().and_then(Scalar::as_str) {
                self.finish_reason = Some(fr.to_string());
                if fr == "abort" {
                    self.error.get_or_insert("aborted by server".into());
                }
            }
        }
        if let Some(u) = usage {
            if let Some(p) = u.prompt_tokens.as_ref().and_then(Num::as_u64) {
                self.prompt_tokens = Some(p);
            }
            if let Some(c) = u.completion_tokens.as_ref().and_then(Num::as_u64) {
                self.completion_tokens = Some(c);
            }
            if let Some(c) = u
                .prompt_tokens_details
                .and_then(|d| d.0)
                .and_then(|d| d.cached_tokens)
                .as_ref()
                .and_then(Num::as_u64)
            {
                self.cached_tokens = Some(c);
            }
        }
        Ok(())
    }

    fn finish(self) -> Outcome {
        // The final usage arrived without cached tokens, from a server that reports them
        // whenever there are some: none were. (A stream cut before it says nothing.)
        let cached_tokens = match self.cached_tokens {
            None if self.cache_report && self.final_usage => Some(0),
            c => c,
        };
        // One token counted for the first content chunk and for each later one.
        let itl_per_chunk = self.guessed_tokens
            && self
                .completion_tokens
                .is_some_and(|n| n > 1 + self.timing.chunks.len() as u64);
        Outcome {
            timing: self.timing,
            text: self.text,
            id: self.id,
            prompt_tokens: self.prompt_tokens,
            cached_tokens,
            completion_tokens: self.completion_tokens,
            finish_reason: self.finish_reason,
            stop_match: self.stop_match,
            error: self.error,
            server_e2e: self.server_e2e,
            server_sent: self.server_sent,
            server_ttft: self.server_ttft,
            server_first_ready: self.server_first_ready,
            retractions: self.retractions,
            itl_per_chunk,
        }
    }
}

/// More generated tokens than any context holds: each token of a chunk adds an inter-token
/// gap to the turn's list, so a server's wild count (2^64 − 1) would exhaust memory.
const MAX_COMPLETION_TOKENS: u64 = 1 << 24;

/// An error for a `completion_tokens` no generation reaches.
fn check_count(tokens: u64) -> Result<(), String> {
    if tokens > MAX_COMPLETION_TOKENS {
        return Err(format!(
            "completion_tokens {tokens} is past any context length ({MAX_COMPLETION_TOKENS})"
        ));
    }
    Ok(())
}

/// How a native chunk's `text` reached the parser.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Text {
    /// As sent.
    Whole,
    /// Without its beginning, which repeated the previous chunk's whole `text`.
    Cut,
}

/// A native chunk without what it repeats of the chunks before it, for serde_json to parse
/// (into `buf` when anything is cut).
///
/// * `text`: SGLang's is cumulative, so late in an answer nearly all of each chunk's `text` is
///   the previous chunk's. When the payload begins `{"text":"` followed by exactly the bytes
///   of the previous chunk's `text` as sent (`seen`, the inside of a JSON string that
///   serde_json decoded), those bytes are cut and the parsed `text` is only what is new
///   ([`Text::Cut`]). `seen` is a whole sequence of JSON string tokens (an escape cannot
///   straddle its end, and it cannot end in half a surrogate pair, which would not have
///   decoded), so the string that begins with it decodes to its decoding followed by the
///   decoding of the rest.
/// * `output_ids`: SGLang repeats the whole output's token ids in every chunk (cumulative) and
///   the client never reads them; skipping them token by token was a quarter of the client's
///   CPU per chunk. The list is located with memchr and checked to be exactly a JSON list of
///   non-negative integers (digits and single commas, no leading zeros, no spaces) as SGLang
///   (orjson) and serve-sim write it, and its inside is cut (`[]` stays). Anything else
///   (another spelling, spaces) is left for the full parse. The pattern cannot occur inside a
///   JSON string (its quotes would be escaped there), a string followed by `:` is an object
///   key, and a list cut this way was well-formed.
///
/// So the lean payload is JSON exactly when the payload was, with the same values but for the
/// cut ones (property tests check both cuts).
fn lean_native<'a>(
    data: &'a str,
    seen_text: &str,
    seen_ids: &str,
    buf: &'a mut String,
) -> Lean<'a> {
    const HEAD: &str = "{\"text\":\"";
    let cut = !seen_text.is_empty()
        && data.starts_with(HEAD)
        && data.as_bytes()[HEAD.len()..].starts_with(seen_text.as_bytes());
    // The cut ends where a whole `str` (`seen_text`) ended: a char boundary.
    let from = if cut { HEAD.len() + seen_text.len() } else { 0 };
    let ids = token_ids(&data[from..], seen_ids).map(|ids| Ids {
        start: from + ids.start,
        new: from + ids.new,
        end: from + ids.end,
        grew: ids.grew,
    });
    let text = if cut { Text::Cut } else { Text::Whole };
    if !cut && ids.is_none() {
        return Lean {
            payload: data,
            text,
            ids,
        };
    }
    buf.clear();
    if cut {
        buf.push_str(HEAD);
    }
    match ids {
        Some(ids) => {
            buf.push_str(&data[from..ids.start]);
            buf.push_str(&data[ids.end..]);
        }
        None => buf.push_str(&data[from..]),
    }
    Lean {
        payload: buf,
        text,
        ids,
    }
}

/// What [`lean_native`] made of a chunk.
struct Lean<'a> {
    /// What serde_json parses.
    payload: &'a str,
    text: Text,
    /// Where the cut `output_ids` were in the chunk as sent.
    ids: Option<Ids>,
}

/// The inside of an `output_ids` list of plain ids in a payload: `start..end`, of which
/// `new..end` follows the previous chunk's list when it `grew` from it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ids {
    start: usize,
    new: usize,
    end: usize,
    grew: bool,
}

/// Where the inside of the first `"output_ids":[…]` list of plain ids lies in `data`, if it
/// has one ([`lean_native`]). A list that begins with `seen` (the previous chunk's list,
/// already checked) followed by `]` or `,` is checked only after it: `seen` ends with a
/// digit, so the whole is plain exactly when what follows the comma is.
fn token_ids(data: &str, seen: &str) -> Option<Ids> {
    const KEY: &[u8] = b"\"output_ids\":[";
    static FIND_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(KEY));
    let bytes = data.as_bytes();
    let start = FIND_KEY.find(bytes)? + KEY.len();
    let list = &bytes[start..];
    if !seen.is_empty() && list.starts_with(seen.as_bytes()) {
        let new = start + seen.len();
        let end = match bytes.get(new) {
            Some(b']') => Some(new),
            Some(b',') => {
                let len = memchr::memchr(b']', &bytes[new + 1..])?;
                Some(new + 1 + len).filter(|&end| plain_ids(&bytes[new + 1..end]))
            }
            _ => None,
        };
        if let Some(end) = end {
            return Some(Ids {
                start,
                new,
                end,
                grew: true,
            });
        }
    }
    let len = memchr::memchr(b']', list)?;
    (len > 0 && plain_ids(&list[..len])).then_some(Ids {
        start,
        new: start,
        end: start + len,
        grew: false,
    })
}

/// True when `ids` is a JSON list's inside made only of non-negative integers: digits and
/// single commas, a digit at each end, no number with a leading zero.
fn plain_ids(ids: &[u8]) -> bool {
    static DOUBLE_COMMA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b",,"));
    static COMMA_ZERO: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b",0"));
    // No early exit, so the byte check runs as vector code.
    let stray = ids
        .iter()
        .fold(false, |acc, &b| acc | !(b.is_ascii_digit() || b == b','));
    let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
        return false;
    };
    let leading_zero = |i: usize| ids[i] == b'0' && ids.get(i + 1).is_some_and(u8::is_ascii_digit);
    !stray
        && first.is_ascii_digit()
        && last.is_ascii_digit()
        && DOUBLE_COMMA.find(ids).is_none()
        && !leading_zero(0)
        && !COMMA_ZERO.find_iter(ids).any(|i| leading_zero(i + 1))
}

/// One SSE data payload of either API, parsed without building a tree: only the fields the
/// client reads are kept (borrowing from the payload where possible), everything else,
/// including native `output_ids` (cumulative, so as long as the whole output), is skipped
/// unallocated. Leaves are [`Scalar`] and objects [`Obj`], so a field of an unexpected type
/// reads as absent, exactly as `serde_json::Value::get(…).and_then(as_…)` did. The type
/// parameters are the other API's fields as `IgnoredAny` ([`NativeChunk`], [`OpenaiChunk`]),
/// so each API's chunk is only as big as what it keeps (it is moved a few times per parse).
#[derive(serde::Deserialize, Default)]
struct Chunk<'a, M, I, C, U> {
    /// Native: kept as sent, for [`lean_native`]'s next cut; decoded by
    /// [`StreamState::native_chunk`].
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    meta_info: Option<M>,
    id: Option<I>,
    choices: Option<C>,
    usage: Option<U>,
    /// In-band error; rare, so a tree is fine.
    error: Option<Value>,
    #[serde(borrow)]
    object: Option<Scalar<'a>>,
    #[serde(borrow)]
    message: Option<Scalar<'a>>,
}

/// SGLang's native `/generate` chunk.
type NativeChunk<'a> = Chunk<'a, Obj<Meta<'a>>, IgnoredAny, IgnoredAny, IgnoredAny>;

/// An OpenAI chat or completion chunk.
type OpenaiChunk<'a> = Chunk<'a, IgnoredAny, Scalar<'a>, First<Obj<Choice<'a>>>, Obj<Usage>>;

#[derive(serde::Deserialize, Default)]
struct Meta<'a> {
    #[serde(borrow)]
    id: Option<Scalar<'a>>,
    completion_tokens: Option<Num>,
    prompt_tokens: Option<Num>,
    cached_tokens: Option<Num>,
    total_retractions: Option<Num>,
    e2e_latency: Option<Num>,
    response_sent_to_client_ts: Option<Num>,
    /// With `--enable-metrics`: when the request reached the server and when its first token
    /// was ready (Unix seconds, server clock).
    request_received_ts: Option<Num>,
    prefill_finished_time: Option<Num>,
    /// The same first-token time under the name some SGLang versions give it (when the
    /// tokenizer manager received the first token).
    prefill_finished_ts: Option<Num>,
    #[serde(borrow)]
    finish_reason: Option<Obj<FinishReason<'a>>>,
}

#[derive(serde::Deserialize, Default)]
struct FinishReason<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Scalar<'a>>,
    #[serde(borrow)]
    message: Option<Scalar<'a>>,
    /// The stop token id (a number) or stop string (a string) of a `stop` finish.
    #[serde(borrow)]
    matched: Option<Scalar<'a>>,
}

#[derive(serde::Deserialize, Default)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Obj<Delta<'a>>>,
    #[serde(borrow)]
    finish_reason: Option<Scalar<'a>>,
}

#[derive(serde::Deserialize, Default)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Scalar<'a>>,
}

#[derive(serde::Deserialize, Default)]
struct Usage {
    prompt_tokens: Option<Num>,
    completion_tokens: Option<Num>,
    prompt_tokens_details: Option<Obj<UsageDetails>>,
}

#[derive(serde::Deserialize, Default)]
struct UsageDetails {
    cached_tokens: Option<Num>,
}

/// A JSON leaf, kept only when it is a number or a string (borrowed unless it had escapes);
/// arrays and objects are skipped.
#[derive(Debug, Clone, PartialEq)]
enum Scalar<'a> {
    N(Num),
    S(std::borrow::Cow<'a, str>),
    Other,
}

/// A JSON leaf read as a [`Scalar`] and kept only when it is a number: the numeric fields'
/// type, half a `Scalar`'s size (a parsed `meta_info` is moved several times per chunk).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
    Other,
}

impl Num {
    /// As `Value::as_u64`: non-negative integers only.
    fn as_u64(&self) -> Option<u64> {
        match *self {
            Num::U(u) => Some(u),
            _ => None,
        }
    }

    /// As `Value::as_f64`: any number.
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Num::U(u) => Some(u as f64),
            Num::I(i) => Some(i as f64),
            Num::F(f) => Some(f),
            Num::Other => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Scalar::deserialize(d)? {
            Scalar::N(n) => n,
            _ => Num::Other,
        })
    }
}

impl<'a> Scalar<'a> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::S(s) => Some(s),
            _ => None,
        }
    }

    fn into_str(self) -> Option<std::borrow::Cow<'a, str>> {
        match self {
            Scalar::S(s) => Some(s),
            _ => None,
        }
    }
}

fn skip_map<'de, A: serde::de::MapAccess<'de>>(mut m: A) -> Result<(), A::Error> {
    while m
        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut s: A) -> Result<(), A::Error> {
    while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Other)
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::N(Num::U(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::N(u64::try_from(v).map_or(Num::I(v), Num::U)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::N(Num::F(v)))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::S(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::S(v.to_string().into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar<'a>, E> {
                Ok(Scalar::S(v.into()))
            }
            fn visit_unit<E>(self) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Other)
            }
            fn visit_none<E>(self) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, s: A) -> Result<Scalar<'a>, A::Error> {
                skip_seq(s).map(|()| Scalar::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Scalar<'a>, A::Error> {
                skip_map(m).map(|()| Scalar::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A JSON object read as `T`; any other value (skipped) reads as `Obj(None)`.
struct Obj<T>(Option<T>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(|t| Obj(Some(t)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, s: A) -> Result<Obj<T>, A::Error> {
                skip_seq(s).map(|()| Obj(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_unit<E>(self) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A JSON array of which only the first element is kept (the rest skipped); any other value
/// reads as `is_array == false`.
struct First<T> {
    is_array: bool,
    first: Option<T>,
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for First<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<First<T>, A::Error> {
                let first = s.next_element()?;
                skip_seq(s)?;
                Ok(First {
                    is_array: true,
                    first,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<First<T>, A::Error> {
                skip_map(m).map(|()| First {
                    is_array: false,
                    first: None,
                })
            }
            fn visit_bool<E>(self, _: bool) -> Result<First<T>, E> {
                Ok(First {
                    is_array: false,
                    first: None,
                })
            }
            fn visit_u64<E>(self, _: u64) -> Result<First<T>, E> {
                Ok(First {
                    is_array: false,
                    first: None,
                })
            }
            fn visit_i64<E>(self, _: i64) -> Result<First<T>, E> {
                Ok(First {
                    is_array: false,
                    first: None,
                })
            }
            fn visit_f64<E>(self, _: f64) -> Result<First<T>, E> {
                Ok(First {
                    is_array: false,
                    first: None,
                })
            }
            fn visit_str<E>(self, _: &str) -> Result<First<T>, E> {
                Ok(First {
                    is_array: false,
                    first: None,
                })
            }
            fn visit_unit<E>(self) -> Result<First<T>, E> {
                Ok(First {
                    is_array: false,
                    first: None,
                })
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
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

pub fn error_chain(e: &dyn std::error::Error) -> String {
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
    use crate::workload::Role;

    /// The fields SGLang's `/generate` and OpenAI's chat completions read
    /// (`shared/spec/sglang-api.md`), as the body sends them.
    #[test]
    fn request_bodies_name_the_prompt_and_sampling_as_each_api_does() {
        let client = Client::new("http://127.0.0.1:9", None);
        let parse = |(path, body, api): (&str, Result<Bytes, _>, Api)| {
            let v: Value = serde_json::from_slice(&body.unwrap()).unwrap();
            (path.to_string(), v, api)
        };
        let text = "say \"hi\"\n\u{1F600} \u{0}";
        let mut sampling = Sampling {
            max_new_tokens: 7,
            temperature: 0.5,
            stop: vec!["<|im_end|>".into(), "\n\nUSER:".into()],
            ignore_eos: false,
        };
        let plain = Prompt::Text {
            text,
            session: None,
        };
        let (path, v, api) = parse(client.request(plain, &sampling, "r-1"));
        assert_eq!((path.as_str(), api), ("/generate", Api::Native));
        assert_eq!(v["text"], text);
        assert_eq!(v["stream"], true);
        assert_eq!(v["rid"], "r-1");
        let sp = &v["sampling_params"];
        assert_eq!(sp["max_new_tokens"], 7);
        assert_eq!(sp["temperature"], 0.5);
        assert_eq!(sp["stop"], json!(["<|im_end|>", "\n\nUSER:"]));
        assert!(sp.get("ignore_eos").is_none(), "only sent when asked for");
        assert!(v.get("session_params").is_none());

        sampling.ignore_eos = true;
        let first = Session {
            id: "s-1".into(),
            rid: None,
            drop_previous_output: false,
            offset: None,
        };
        let prompt = Prompt::Text {
            text: "new",
            session: Some(&first),
        };
        let (_, v, _) = parse(client.request(prompt, &sampling, "r-2"));
        assert_eq!(v["sampling_params"]["ignore_eos"], true);
        assert_eq!(v["session_params"], json!({"id": "s-1", "rid": null}));
        let next = Session {
            id: "s-1".into(),
            rid: Some("r-2".into()),
            drop_previous_output: true,
            offset: None,
        };
        let prompt = Prompt::Text {
            text: "newer",
            session: Some(&next),
        };
        let (_, v, _) = parse(client.request(prompt, &sampling, "r-3"));
        assert_eq!(
            v["session_params"],
            json!({"id": "s-1", "rid": "r-2", "drop_previous_output": true})
        );

        let msgs = [
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, text),
        ];
        let (path, v, api) = parse(client.request(Prompt::Messages(&msgs), &sampling, "r-4"));
        assert_eq!((path.as_str(), api), ("/v1/chat/completions", Api::Openai));
        assert_eq!(
            v["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": text}])
        );
        assert_eq!(v["model"], client.model.as_str());
        assert_eq!(v["max_completion_tokens"], 7);
        assert_eq!(v["max_tokens"], 7);
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["stop"], sp["stop"]);
        assert_eq!(v["stream"], true);
        assert_eq!(
            v["stream_options"],
            json!({"include_usage": true, "continuous_usage_stats": true})
        );
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["rid"], "r-4");
        assert!(v.get("text").is_none() && v.get("sampling_params").is_none());
    }

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

    /// A native chunk as SGLang sends it late in a 256-token answer: cumulative `output_ids`,
    /// fields the client does not know.
    fn native_chunk_json(text: &str, tokens: usize, finish: &str) -> String {
        let ids: Vec<usize> = (0..tokens).map(|i| 100_000 + i).collect();
        json!({"text": text, "output_ids": ids, "meta_info": {"id": "ab12",
            "finish_reason": serde_json::from_str::<Value>(finish).unwrap(),
            "prompt_tokens": 1030, "weight_version": "default", "total_retractions": 0,
            "reasoning_tokens": 0, "completion_tokens": tokens, "cached_tokens": 6,
            "cached_tokens_details": {"device": 6, "host": 0, "nested": [[1, {"x": null}]]},
            "dp_rank": null, "spec_accept_rate": 0.5, "e2e_latency": 0.051,
            "response_sent_to_client_ts": 1732712345.01, "request_received_ts": 1732712344.5,
            "prefill_finished_time": 1732712344.75},
            "unknown_top": {"a": [1, 2.5, "s", true, null]}})
        .to_string()
    }

    #[test]
    fn native_chunks_with_unknown_fields_and_huge_output_ids_parse() {
        let t0 = Instant::now();
        let mut st = StreamState::new(t0);
        let first = native_chunk_json(" Paris", 1, "null");
        st.chunk(first.as_str(), Api::Native, t0).unwrap();
        let big = native_chunk_json(" Paris.\n It \"is\" é", 100_000, "null");
        st.chunk(big.as_str(), Api::Native, t0 + Duration::from_millis(5))
            .unwrap();
        let last = native_chunk_json(
            " Paris.\n It \"is\" é!",
            100_002,
            r#"{"type": "length", "length": 100002}"#,
        );
        st.chunk(last.as_str(), Api::Native, t0 + Duration::from_millis(7))
            .unwrap();
        let o = st.finish();
        assert_eq!(o.error, None);
        assert_eq!(o.text, " Paris.\n It \"is\" é!");
        assert_eq!(o.completion_tokens, Some(100_002));
        assert_eq!((o.prompt_tokens, o.cached_tokens), (Some(1030), Some(6)));
        assert_eq!(o.id.as_deref(), Some("ab12"));
        assert_eq!(o.finish_reason.as_deref(), Some("length"));
        assert_eq!(o.server_e2e, Some(0.051));
        assert_eq!(o.server_sent, Some((1732712345.01, 1732712345.01)));
        assert_eq!(o.server_ttft, Some(0.25));
        assert_eq!(o.server_first_ready, Some(1732712344.75));
        assert_eq!(o.timing.first, Some(t0));
        assert_eq!(o.timing.chunks.len(), 2);
        assert_eq!(o.timing.chunks[0].1, 99_999);
        assert_eq!(o.timing.chunks[1].1, 2);
    }

    #[test]
    fn the_servers_ttft_is_read_under_either_name_of_its_first_token_time() {
        let t0 = Instant::now();
        let chunk = |meta: Value| {
            let mut st = StreamState::new(t0);
            let c = json!({"text": "a", "meta_info": meta}).to_string();
            st.chunk(c.as_str(), Api::Native, t0).unwrap();
            let o = st.finish();
            (o.server_ttft, o.server_first_ready)
        };
        let base = json!({"id": "r", "completion_tokens": 1, "request_received_ts": 100.5});
        let with = |k: &str, v: f64| {
            let mut m = base.clone();
            m[k] = json!(v);
            m
        };
        assert_eq!(
            chunk(with("prefill_finished_ts", 100.75)),
            (Some(0.25), Some(100.75))
        );
        assert_eq!(
            chunk(with("prefill_finished_time", 101.0)),
            (Some(0.5), Some(101.0))
        );
        // Both: 0.5.10's name first; no receive time: nothing.
        let mut both = with("prefill_finished_time", 101.0);
        both["prefill_finished_ts"] = json!(100.75);
        assert_eq!(chunk(both), (Some(0.5), Some(101.0)));
        let mut no_receive = with("prefill_finished_ts", 100.75);
        no_receive
            .as_object_mut()
            .unwrap()
            .remove("request_received_ts");
        assert_eq!(chunk(no_receive), (None, None));
    }

    #[test]
    fn malformed_chunks_errors_and_aborts_are_reported() {
        let t0 = Instant::now();
        let mut st = StreamState::new(t0);
        let e = st
            .chunk(
                r#"{"text": "malformed chunk", "meta_info": {"#,
                Api::Native,
                t0,
            )
            .unwrap_err();
        assert!(e.contains("EOF while parsing"), "{e}");
        let e = st
            .chunk(r#"{"text": "x", "output_ids": [1]}"#, Api::Native, t0)
            .unwrap_err();
        assert_eq!(e, "no meta_info");
        let e = st
            .chunk(
                r#"{"text": "x", "meta_info": {"completion_tokens": "1"}}"#,
                Api::Native,
                t0,
            )
            .unwrap_err();
        assert_eq!(e, "no meta_info.completion_tokens");
        // A count no context holds (each token would add a gap to the turn's list).
        for (data, api) in [
            (
                r#"{"text": "x", "meta_info": {"completion_tokens": 18446744073709551615}}"#,
                Api::Native,
            ),
            (
                r#"{"choices": [{"delta": {"content": "x"}}], "usage": {"completion_tokens": 3000000000}}"#,
                Api::Openai,
            ),
        ] {
            let mut fresh = StreamState::new(t0);
            let e = fresh.chunk(data, api, t0).unwrap_err();
            assert!(e.contains("past any context length"), "{e}");
            assert!(fresh.timing.chunks.is_empty() && fresh.timing.first.is_none());
        }
        let e = st
            .chunk(r#"{"id": "x", "choices": {}}"#, Api::Openai, t0)
            .unwrap_err();
        assert_eq!(e, "no choices");

        st.chunk(
            r#"{"error": {"message": "boom", "code": 500}}"#,
            Api::Native,
            t0,
        )
        .unwrap();
        assert_eq!(st.error.as_deref(), Some("server error: boom"));
        let mut st = StreamState::new(t0);
        st.chunk(r#"{"error": {"code": 500}}"#, Api::Openai, t0)
            .unwrap();
        assert_eq!(st.error.as_deref(), Some(r#"server error: {"code":500}"#));
        let mut st = StreamState::new(t0);
        st.chunk(r#"{"object": "error", "message": "bad"}"#, Api::Openai, t0)
            .unwrap();
        assert_eq!(st.error.as_deref(), Some("server error: bad"));
        assert_eq!(st.timing.last_data, None);
        let mut st = StreamState::new(t0);
        let abort = native_chunk_json(
            "x",
            1,
            r#"{"type": "abort", "message": "out of memory", "status_code": 500}"#,
        );
        st.chunk(abort.as_str(), Api::Native, t0).unwrap();
        assert_eq!(
            st.error.as_deref(),
            Some("aborted by server: out of memory")
        );
        assert_eq!(st.finish_reason.as_deref(), Some("abort"));
        // A scheduler abort (SGLang 0.4) carries no counts and no text: still the abort.
        let mut st = StreamState::new(t0);
        st.chunk(
            r#"{"meta_info": {"id": "r9", "finish_reason": {"type": "abort", "message": "The request queue is full."}}}"#,
            Api::Native,
            t0,
        )
        .unwrap();
        assert_eq!(
            st.error.as_deref(),
            Some("aborted by server: The request queue is full.")
        );
        assert_eq!(st.completion_tokens, Some(0));
        // Without an abort, missing counts are malformed.
        let mut st = StreamState::new(t0);
        let e = st
            .chunk(r#"{"meta_info": {"id": "r9"}}"#, Api::Native, t0)
            .unwrap_err();
        assert_eq!(e, "no meta_info.completion_tokens");
    }

    #[test]
    fn openai_chunks_parse() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut st = StreamState::new(t0);
        let chunks = [
            r#"{"id":"ab12","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"ab12","choices":[{"index":0,"delta":{"role":null,"content":" Hel\"lo"},"finish_reason":null},{"index":1}],"usage":{"prompt_tokens":12,"completion_tokens":1}}"#,
            r#"{"id":"ab12","choices":[{"index":0,"delta":{"content":" there"},"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#,
            r#"{"id":"ab12","choices":[{"index":0,"delta":{"content":null},"finish_reason":"length"}],"usage":null}"#,
            r#"{"id":"ab12","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":10}}}"#,
        ];
        for (i, c) in chunks.iter().enumerate() {
            st.chunk(c, Api::Openai, ms(i as u64)).unwrap();
        }
        let o = st.finish();
        assert_eq!(o.error, None);
        assert_eq!(o.text, " Hel\"lo there");
        assert_eq!(
            (o.prompt_tokens, o.cached_tokens, o.completion_tokens),
            (Some(12), Some(10), Some(3))
        );
        assert_eq!(o.finish_reason.as_deref(), Some("length"));
        assert_eq!(o.timing.first, Some(ms(1)));
        assert_eq!(o.timing.chunks, vec![(ms(2), 2)]);

        // From a server that reports cached tokens whenever there are some: a final usage
        // without them means 0; a stream cut before it (its per-chunk usages never carry
        // them) says nothing.
        for (upto, cached) in [(5, Some(0)), (3, None)] {
            let mut st = StreamState::new(t0);
            st.cache_report = true;
            let last = r#"{"id":"ab12","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":null}}"#;
            for c in chunks[..4].iter().chain([&last]).take(upto) {
                st.chunk(c, Api::Openai, t0).unwrap();
            }
            let o = st.finish();
            assert_eq!(
                (o.prompt_tokens, o.cached_tokens),
                (Some(12), cached),
                "{upto}"
            );
        }
    }

    #[test]
    fn openai_chunks_without_counts_are_flagged_when_they_held_several_tokens() {
        let t0 = Instant::now();
        let chunk = |text: &str, usage: &str| {
            format!(
                r#"{{"id":"a","choices":[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":null}}],"usage":{usage}}}"#
            )
        };
        let last = |n: u64| {
            format!(
                r#"{{"id":"a","choices":[],"usage":{{"prompt_tokens":5,"completion_tokens":{n}}}}}"#
            )
        };
        // (chunks, final count, per chunk?): one token per chunk is exact; more tokens than
        // chunks without per-chunk usage is not; with per-chunk usage it is counted.
        let cases = [
            (
                vec![chunk("a", "null"), chunk("b", "null"), chunk("c", "null")],
                3,
                false,
            ),
            (vec![chunk("a b", "null"), chunk("c d e", "null")], 5, true),
            (
                vec![
                    chunk("a b", r#"{"prompt_tokens":5,"completion_tokens":2}"#),
                    chunk("c d e", r#"{"prompt_tokens":5,"completion_tokens":5}"#),
                ],
                5,
                false,
            ),
        ];
        for (chunks, n, per_chunk) in cases {
            let mut st = StreamState::new(t0);
            for (i, c) in chunks.iter().chain([&last(n)]).enumerate() {
                st.chunk(c, Api::Openai, t0 + Duration::from_millis(i as u64))
                    .unwrap();
            }
            let o = st.finish();
            assert_eq!(o.completion_tokens, Some(n));
            assert_eq!(o.itl_per_chunk, per_chunk, "{chunks:?}");
        }
        // Native chunks always count their tokens.
        let mut st = StreamState::new(t0);
        for (i, c) in [
            native_chunk_json("a b", 2, "null"),
            native_chunk_json("a b c d", 4, r#"{"type": "length", "length": 4}"#),
        ]
        .iter()
        .enumerate()
        {
            st.chunk(c, Api::Native, t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert!(!st.finish().itl_per_chunk);
    }

    /// `cargo test -p runner --release --lib client::tests::parse_cost -- --ignored --nocapture`
    /// A 256-token native stream as serve-sim and SGLang (orjson) write it, one chunk per
    /// token: cumulative `text` (with escapes) and `output_ids`, `meta_info` in SGLang's order.
    fn sglang_stream(tokens: usize) -> Vec<String> {
        let words = [
            "def",
            " parse",
            "(self",
            "):\n",
            "    return",
            " \"ok\"",
            " é",
            "\n",
        ];
        let (mut text, mut ids) = (String::new(), Vec::new());
        (1..=tokens)
            .map(|n| {
                text.push_str(words[n % words.len()]);
                ids.push(10_000 + n * 37 % 90_000);
                let finish = if n == tokens {
                    format!(r#"{{"type":"length","length":{n}}}"#)
                } else {
                    "null".into()
                };
                format!(
                    r#"{{"text":{},"output_ids":{},"meta_info":{{"id":"b3faa79af1b41f884293a3f5e5e18222","finish_reason":{finish},"prompt_tokens":1030,"weight_version":"default","total_retractions":0,"reasoning_tokens":0,"completion_tokens":{n},"cached_tokens":0,"cached_tokens_details":null,"dp_rank":null,"response_sent_to_client_ts":1796590459.{n:07}}}}}"#,
                    serde_json::to_string(&text).unwrap(),
                    serde_json::to_string(&ids).unwrap(),
                )
            })
            .collect()
    }

    /// `cargo test --release -p runner --lib stream_parse_cost -- --ignored --nocapture`: the
    /// client's cost per chunk of a whole SGLang stream, without the network.
    #[test]
    #[ignore]
    fn stream_parse_cost() {
        let t = Instant::now();
        let stream = sglang_stream(256);
        let mut best = f64::MAX;
        for _ in 0..7 {
            let t1 = Instant::now();
            for _ in 0..100 {
                let mut st = StreamState::new(t);
                for c in &stream {
                    st.chunk(c, Api::Native, t).unwrap();
                }
                assert_eq!(st.completion_tokens, Some(256));
                std::hint::black_box(st.finish());
            }
            best = best.min(t1.elapsed().as_secs_f64() / (100.0 * stream.len() as f64));
        }
        println!(
            "SGLang stream, 256 chunks: {:.3} µs per chunk (best of 7)",
            best * 1e6
        );
    }

    /// Parsing cost of one long chunk, against a `Value` tree and sse-stream's framing alone.
    #[test]
    #[ignore]
    fn parse_cost() {
        let text = "word ".repeat(250);
        let chunk = format!("data: {}\n\n", native_chunk_json(&text, 250, "null"));
        let n = 200_000;
        let t = Instant::now();
        let d = chunk[6..].trim();
        for _ in 0..n {
            let mut st = StreamState::new(t);
            st.chunk(d, Api::Native, t).unwrap();
            std::hint::black_box(st.finish());
        }
        let typed = t.elapsed().as_secs_f64() / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            let v: Value = serde_json::from_str(&chunk[6..]).unwrap();
            std::hint::black_box(v);
        }
        let tree = t.elapsed().as_secs_f64() / n as f64;
        // Framing alone, one read = one event.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = bytes::Bytes::from(chunk.clone());
        let t = Instant::now();
        rt.block_on(async {
            use futures::StreamExt;
            let reads = (0..n).map(|_| Ok::<_, std::io::Error>(bytes.clone()));
            let mut events = sse_stream::SseByteStream::new(futures::stream::iter(reads));
            while let Some(ev) = events.next().await {
                std::hint::black_box(ev.unwrap());
            }
        });
        let es = t.elapsed().as_secs_f64() / n as f64;
        println!("sse-stream framing alone {:.2} µs", es * 1e6);
        println!(
            "{}-byte chunk: typed parse {:.2} µs, Value parse {:.2} µs",
            chunk.len(),
            typed * 1e6,
            tree * 1e6
        );
    }

    /// True when `lean` is `orig` with the contents of some `output_ids` lists removed.
    fn same_but_ids(orig: &Value, lean: &Value) -> bool {
        match (orig, lean) {
            (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len()
                    && a.iter().all(|(k, v)| {
                        b.get(k).is_some_and(|w| {
                            same_but_ids(v, w)
                                || (k == "output_ids" && v.is_array() && *w == json!([]))
                        })
                    })
            }
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(v, w)| same_but_ids(v, w))
            }
            _ => orig == lean,
        }
    }

    #[test]
    fn token_ids_are_cut_only_from_plain_lists_of_ids() {
        let mut buf = String::new();
        let chunk = native_chunk_json("a \"output_ids\":[1] b", 40, "null");
        let lean = lean_native(&chunk, "", "", &mut buf).payload.to_string();
        // 40 six-digit ids and 39 commas gone.
        assert_eq!(chunk.len() - lean.len(), 40 * 7 - 1, "{lean}");
        let (orig, cut): (Value, Value) = (
            serde_json::from_str(&chunk).unwrap(),
            serde_json::from_str(&lean).unwrap(),
        );
        assert_eq!(cut["output_ids"], json!([]));
        assert_eq!(cut["text"], orig["text"]);
        assert_eq!(cut["meta_info"], orig["meta_info"]);
        // Left for the full parse: anything but digits and single commas, leading zeros,
        // spaces, the key's spelling inside a string.
        for kept in [
            r#"{"output_ids":[1,,2]}"#,
            r#"{"output_ids":[1,-2]}"#,
            r#"{"output_ids":[01,2]}"#,
            r#"{"output_ids":[1,02]}"#,
            r#"{"output_ids":[1,2,]}"#,
            r#"{"output_ids":[,1]}"#,
            r#"{"output_ids":[1.5]}"#,
            r#"{"output_ids":[1, 2]}"#,
            r#"{"output_ids":[[1]]}"#,
            r#"{"output_ids":[]}"#,
            r#"{"text":"\"output_ids\":[1]"}"#,
        ] {
            assert_eq!(lean_native(kept, "", "", &mut buf).payload, kept);
        }
        for cut in [r#"{"output_ids":[0,10,0]}"#, r#"{"a":1, "output_ids":[7]}"#] {
            assert_ne!(lean_native(cut, "", "", &mut buf).payload, cut);
        }
        // A chunk that is malformed after the ids still fails, naming the payload as sent.
        let mut st = StreamState::new(Instant::now());
        let bad = r#"{"text":"x","output_ids":[1,2,3],"meta_info":{"completion_tokens":3}"#;
        let err = st.chunk(bad, Api::Native, Instant::now()).unwrap_err();
        assert!(err.contains(&format!("column {}", bad.len())), "{err}");
    }

    proptest::proptest! {
        /// Whatever the prompt (quotes, backslashes, control characters, any Unicode), the
        /// body is the JSON serde_json would write for it: the prompt's bytes exactly as
        /// serde_json escapes them, and every other field as before.
        #[test]
        fn request_bodies_escape_prompts_as_serde_json_does(
            text in "(\\PC|[\\x00-\\x1f\"\\\\/\u{7f}\u{2028}])*",
            contents in proptest::collection::vec("(\\PC|[\\x00-\\x1f\"\\\\])*", 0..4),
            session in proptest::bool::ANY,
        ) {
            let client = Client::new("http://127.0.0.1:9", None);
            let sampling = Sampling {
                max_new_tokens: 3,
                temperature: 0.0,
                stop: vec!["\"".into()],
                ignore_eos: session,
            };
            let s = Session { id: "s".into(), rid: None, drop_previous_output: false, offset: Some(-1) };
            let prompt = Prompt::Text { text: &text, session: session.then_some(&s) };
            let body = client.request(prompt, &sampling, "r").1.unwrap();
            let mut want = json!({
                "text": text,
                "sampling_params": {"max_new_tokens": 3, "temperature": 0.0, "stop": ["\""]},
                "stream": true,
                "rid": "r",
            });
            if session {
                want["sampling_params"]["ignore_eos"] = json!(true);
                want["session_params"] = json!({"id": "s", "rid": null, "offset": -1});
            }
            let got: Value = serde_json::from_slice(&body).unwrap();
            proptest::prop_assert_eq!(&got, &want);
            let escaped = serde_json::to_string(&text).unwrap();
            let head = format!("{{\"text\":{},", escaped);
            proptest::prop_assert!(body.starts_with(head.as_bytes()));

            let msgs: Vec<Message> = contents.iter().map(|c| Message::new(Role::Tool, c.as_str())).collect();
            let body = client.request(Prompt::Messages(&msgs), &sampling, "r").1.unwrap();
            let want_msgs: Vec<Value> = contents.iter().map(|c| json!({"role": "tool", "content": c})).collect();
            let got: Value = serde_json::from_slice(&body).unwrap();
            proptest::prop_assert_eq!(&got["messages"], &json!(want_msgs));
            proptest::prop_assert_eq!(&got["rid"], "r");
            let escaped: Vec<String> = contents
                .iter()
                .map(|c| format!("{{\"role\":\"tool\",\"content\":{}}}", serde_json::to_string(c).unwrap()))
                .collect();
            let head = format!("{{\"messages\":[{}],", escaped.join(","));
            proptest::prop_assert!(body.starts_with(head.as_bytes()));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2048))]

        /// Whatever the payload, cutting the ids never changes whether it is JSON, nor any
        /// value other than an `output_ids` list's contents.
        #[test]
        fn cutting_token_ids_changes_nothing_else(
            before in proptest::sample::select(vec![
                "{", "{\"a\":1,", "{ ", "{\"text\":\"x\",", "[{", "{\"text\":\"", "{\"a\":[",
                "{\"t\":\"\\\"", "{\"x\":\"a\\\\\",", "{\"x\":\"a\\\\\"", "", "[", "{\"a\"",
                "{\"m\":{", "{\"output_ids\":[1],",
            ]),
            lead in proptest::sample::select(vec!["", "", "", "", ",", " ", "-", "\""]),
            ids in proptest::collection::vec((
                proptest::sample::select(vec!["0", "1", "23", "7", "456", "07", "1.5", "-4"]),
                proptest::sample::select(vec![",", ",", ",", ",", ",,", ", ", "", "],["]),
            ), 0..5),
            tail in proptest::sample::select(vec!["", "", "", ",", " "]),
            after in proptest::sample::select(vec![
                "}", ",\"b\":2}", "}]", "\"}", "]}", "", ",}", "}}", "}\"}", " }", ",\"output_ids\":[3]}",
            ]),
        ) {
            let data = format!(
                "{}\"output_ids\":[{}]{}",
                before,
                // Separators between the numbers only, then the tail.
                lead.to_string()
                    + &ids.iter().enumerate()
                        .map(|(i, (n, s))| format!("{}{n}", if i == 0 { "" } else { s }))
                        .collect::<String>()
                    + tail,
                after
            );
            let mut buf = String::new();
            let lean = lean_native(&data, "", "", &mut buf).payload;
            let (orig, cut) = (
                serde_json::from_str::<Value>(&data),
                serde_json::from_str::<Value>(lean),
            );
            proptest::prop_assert_eq!(orig.is_ok(), cut.is_ok(), "{} → {}", data, lean);
            if let (Ok(o), Ok(c)) = (orig, cut) {
                proptest::prop_assert!(same_but_ids(&o, &c), "{} → {}", data, lean);
            }
        }

        /// A list that begins with the previous chunk's (checked) list is cut exactly where,
        /// and only when, the full check would cut it.
        #[test]
        fn ids_after_the_previous_list_are_cut_as_the_whole_list_is(
            seen in proptest::sample::select(vec!["1", "1,23", "0", "7,456", "23", "10,0"]),
            repeat in proptest::bool::weighted(0.8),
            ids in proptest::collection::vec((
                proptest::sample::select(vec!["0", "1", "23", "7", "456", "07", "1.5", "-4", ""]),
                proptest::sample::select(vec![",", ",", ",", ",,", ", ", "", "],[", "]"]),
            ), 0..5),
            after in proptest::sample::select(vec!["}", ",\"b\":2}", "]}", "", ",\"output_ids\":[3]}"]),
        ) {
            let list = ids.iter().map(|(n, s)| format!("{s}{n}")).collect::<String>();
            let list = if repeat { format!("{seen}{list}") } else { list };
            let data = format!("{{\"a\":1,\"output_ids\":[{list}]{after}");
            let (mut b1, mut b2) = (String::new(), String::new());
            let (fast, full) = (
                lean_native(&data, "", seen, &mut b1),
                lean_native(&data, "", "", &mut b2),
            );
            proptest::prop_assert_eq!(fast.payload, full.payload, "{}", data);
            let range = |l: &Lean<'_>| l.ids.map(|i| (i.start, i.end));
            proptest::prop_assert_eq!(range(&fast), range(&full), "{}", data);
            if let Some(i) = fast.ids.filter(|i| i.grew) {
                proptest::prop_assert_eq!(&data[i.start..i.new], seen);
            }
        }

        /// SGLang-shaped chunks whose text holds anything: the client reads the same from the
        /// cut payload as from the whole one.
        #[test]
        fn a_cut_chunk_reads_as_the_whole_one(
            text in "[a-z\"\\\\:,\\[\\]{} ]{0,40}",
            ids in proptest::collection::vec(0u32..200_000, 0..50),
        ) {
            let data = json!({"text": text, "output_ids": ids,
                "meta_info": {"id": "r", "completion_tokens": ids.len(), "prompt_tokens": 9,
                    "cached_tokens": 2, "finish_reason": null}}).to_string();
            let t0 = Instant::now();
            let mut fast = StreamState::new(t0);
            fast.chunk(&data, Api::Native, t0).unwrap();
            let mut slow = StreamState::new(t0);
            let c: NativeChunk<'_> = serde_json::from_str(&data).unwrap();
            slow.native_chunk(c, Text::Whole, t0).unwrap();
            proptest::prop_assert_eq!(fast.text, slow.text);
            proptest::prop_assert_eq!(fast.completion_tokens, slow.completion_tokens);
            proptest::prop_assert_eq!(fast.prompt_tokens, slow.prompt_tokens);
            proptest::prop_assert_eq!(fast.cached_tokens, slow.cached_tokens);
            proptest::prop_assert_eq!(fast.id, slow.id);
        }
    }

    /// `s` as a JSON string the way Python's `json.dumps` writes it by default (every
    /// non-ASCII character as `\uXXXX`, surrogate pairs beyond the BMP), with `/` escaped too.
    fn ascii_json(s: &str) -> String {
        let mut out = String::from("\"");
        for ch in s.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' => out.push_str("\\/"),
                c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{:04x}", u));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// A native chunk with `text` written as `text_json`, `text` first (as SGLang writes it)
    /// or last.
    fn native_chunk_with(text_json: &str, tokens: usize, text_first: bool) -> String {
        let ids = (0..tokens).map(|i| (7 * i).to_string()).collect::<Vec<_>>();
        let rest = format!(
            r#""output_ids":[{}],"meta_info":{{"id":"r1","finish_reason":null,"prompt_tokens":9,"completion_tokens":{tokens},"cached_tokens":2}}"#,
            ids.join(",")
        );
        if text_first {
            format!(r#"{{"text":{text_json},{rest}}}"#)
        } else {
            format!(r#"{{{rest},"text":{text_json}}}"#)
        }
    }

    #[test]
    fn repeated_text_is_cut_before_parsing() {
        let t0 = Instant::now();
        let mut st = StreamState::new(t0);
        let texts = ["Hello", "Hello, \"wörld\"\n", "Hello, \"wörld\"\n😀 ok"];
        let mut buf = String::new();
        for (i, text) in texts.iter().enumerate() {
            let data = native_chunk_with(&ascii_json(text), i + 1, true);
            if i > 0 {
                // What the previous chunk's text was, as sent, is gone from what is parsed.
                let before = ascii_json(texts[i - 1]);
                let lean = lean_native(&data, &st.raw_text, &st.raw_ids, &mut buf);
                let (lean, cut) = (lean.payload, lean.text);
                assert_eq!(cut, Text::Cut);
                let new = ascii_json(&text[texts[i - 1].len()..]);
                assert!(lean.starts_with(&format!("{{\"text\":{new},")), "{lean}");
                assert!(lean.len() <= data.len() - (before.len() - 2), "{lean}");
            }
            st.chunk(&data, Api::Native, t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert_eq!(st.text, texts[2]);
        assert_eq!(st.timing.chunks.len(), 2);
        // The ids seen so far, kept as sent (each chunk's list begins with the last one's).
        assert_eq!(st.raw_ids, "0,7,14");
        // Written another way (raw UTF-8), the next chunk does not repeat the bytes: read whole.
        let data = native_chunk_with(&json!(format!("{}!", texts[2])).to_string(), 4, true);
        assert_eq!(
            lean_native(&data, &st.raw_text, &st.raw_ids, &mut buf).text,
            Text::Whole
        );
        st.chunk(&data, Api::Native, t0).unwrap();
        assert_eq!(st.text, format!("{}!", texts[2]));
        // A chunk that repeats the text but is malformed later fails, naming the payload as
        // sent.
        let text = format!("{}!?", texts[2]);
        let data = native_chunk_with(&json!(text).to_string(), 5, true);
        let bad = &data[..data.len() - 1];
        assert_eq!(
            lean_native(bad, &st.raw_text, &st.raw_ids, &mut buf).text,
            Text::Cut
        );
        let err = st.chunk(bad, Api::Native, t0).unwrap_err();
        assert!(err.contains(&format!("column {}", bad.len())), "{err}");
        // The repeated bytes at the same place after another key: not `text`, not cut.
        let mut st = StreamState::new(t0);
        st.chunk(&native_chunk_with(r#""Hello""#, 1, true), Api::Native, t0)
            .unwrap();
        let other = native_chunk_with(r#""Bye""#, 2, true).replacen('{', r#"{"tex2":"Hello","#, 1);
        assert_eq!(
            lean_native(&other, &st.raw_text, &st.raw_ids, &mut buf).text,
            Text::Whole
        );
        st.chunk(&other, Api::Native, t0).unwrap();
        assert_eq!(st.text, "HelloBye");
        // A lone surrogate, which serde_json skips but cannot decode, is malformed, cut or not.
        let mut st = StreamState::new(t0);
        st.chunk(&native_chunk_with(r#""ab""#, 1, true), Api::Native, t0)
            .unwrap();
        for text_first in [true, false] {
            let lone = native_chunk_with(r#""ab\ud83d""#, 2, text_first);
            assert!(st.chunk(&lone, Api::Native, t0).is_err(), "{lone}");
        }
    }

    /// One step of a generated stream: text appended to the previous chunk's (cumulative, as
    /// SGLang sends it) or a text of its own; written as raw UTF-8 or ASCII escapes; `text`
    /// first or last.
    fn stream_step() -> impl proptest::strategy::Strategy<Value = (bool, String, bool, bool)> {
        (
            proptest::bool::weighted(0.8),
            "[a-z \"\\\\/\n\t\u{1}é€😀]{0,6}",
            proptest::bool::ANY,
            proptest::bool::weighted(0.8),
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(1024))]

        /// Whatever the texts and however they are written, the client reads the same stream
        /// with the repeated text cut as without: the text it keeps is the one the rule for
        /// cumulative text gives on the decoded texts, and content arrives on the same chunks.
        #[test]
        fn cut_text_reads_as_the_whole_text(
            steps in proptest::collection::vec(stream_step(), 1..12),
        ) {
            let t0 = Instant::now();
            let (mut fast, mut slow) = (StreamState::new(t0), StreamState::new(t0));
            let (mut text, mut expected, mut seen_len) = (String::new(), String::new(), 0);
            for (i, (extend, piece, ascii, text_first)) in steps.iter().enumerate() {
                if *extend {
                    text.push_str(piece);
                } else {
                    text = piece.clone();
                }
                let delta = if text.len() >= seen_len && text.is_char_boundary(seen_len) {
                    &text[seen_len..]
                } else {
                    &text[..]
                };
                expected.push_str(delta);
                seen_len = text.len();
                let written = if *ascii { ascii_json(&text) } else { json!(text).to_string() };
                let data = native_chunk_with(&written, i + 1, *text_first);
                let at = t0 + Duration::from_millis(i as u64);
                fast.chunk(&data, Api::Native, at).unwrap();
                let c: NativeChunk<'_> = serde_json::from_str(&data).unwrap();
                slow.native_chunk(c, Text::Whole, at).unwrap();
                proptest::prop_assert_eq!(&fast.text, &expected);
                proptest::prop_assert_eq!(&slow.text, &expected);
                proptest::prop_assert_eq!(fast.timing.first, slow.timing.first);
                proptest::prop_assert_eq!(&fast.timing.chunks, &slow.timing.chunks);
            }
        }
    }

    #[test]
    fn secrets_are_scrubbed_but_token_counts_stay() {
        let mut v = json!({"api_key": "s", "admin_api_key": "s", "max_total_tokens": 5,
            "nested": [{"hf_token": "x", "ok": 1}], "ssl_keyfile_password": "p"});
        scrub(&mut v);
        assert_eq!(v, json!({"max_total_tokens": 5, "nested": [{"ok": 1}]}));
    }
}
