//! The simulated server's HTTP front (axum): every route of spec §8, SGLang's error shapes,
//! SGLang's auth (API and admin keys), faults, and the streaming of engine events as SSE.
//!
//! A generation request is prepared here (tokenize, session history, limits, planned output
//! from [`textgen`]), submitted to the [`Engine`], and its events are turned
//! into chunks. When the client lags, the pending events are coalesced into one chunk with the
//! newest state, as SGLang does in its default cumulative mode. Dropping a response (client
//! disconnect) aborts the engine request.

use super::cli::{SimArgs, SimConfig};
use super::engine::{Engine, EngineConfig, EngineEvent, EngineRequest, SchedulePolicy};
use super::faults::{self, FaultPlan};
use super::metrics::Metrics;
use super::protocol::{
    self as p, ApiError, ChatChoice, ChatReq, Chunk, CompletionChoice, CompletionReq, Delta,
    GenerateOut, GenerateReq, MetaInfo, OneOrMany, PromptDetails, SamplingParams, SessionParams,
    Timing, Usage,
};
use super::session::Sessions;
use super::template;
use super::textgen::{self, GenParams, OutputLen, Planned};
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, Stream, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

/// SGLang version the protocol follows (reported by `/server_info`).
pub const SGLANG_VERSION: &str = "0.5.10.post1";

/// What `--sim-fault exit-after=N` does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitMode {
    /// Exit the process (status 3): `runner serve-sim`.
    Process,
    /// Stop this server only (in-process use): close the listener, cut every connection.
    StopServer,
}

/// A running simulated server.
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The resolved configuration (model, GPU, pool size, …).
    pub fn config(&self) -> &SimConfig {
        &self.state.cfg
    }

    /// Stop accepting, let in-flight requests finish (at most 5 s), then stop.
    pub async fn shutdown(self) {
        self.state.draining.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Start the server in this process (`exit-after` faults stop the server, not the process).
pub async fn start(args: SimArgs) -> anyhow::Result<SimHandle> {
    start_with(args, ExitMode::StopServer).await
}

pub async fn start_with(args: SimArgs, exit_mode: ExitMode) -> anyhow::Result<SimHandle> {
    use anyhow::Context as _;
    let cfg = SimConfig::resolve(args)?;
    let bind = format!("{}:{}", cfg.args.host, cfg.args.port);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let addr = listener.local_addr()?;
    let engine = Engine::start_on_thread(EngineConfig {
        model: cfg.model.clone(),
        gpu: cfg.gpu.clone(),
        max_total_tokens: cfg.max_total_tokens,
        max_running_requests: cfg.max_running_requests,
        chunked_prefill_size: if cfg.chunked_prefill_size <= 0 {
            usize::MAX
        } else {
            cfg.chunked_prefill_size as usize
        },
        max_prefill_tokens: cfg.args.max_prefill_tokens,
        tp_size: u64::from(cfg.args.tp_size),
        schedule_policy: if cfg.args.schedule_policy == "lpm" {
            SchedulePolicy::Lpm
        } else {
            SchedulePolicy::Fcfs
        },
        disable_radix_cache: cfg.args.disable_radix_cache,
        time_scale: cfg.args.sim_time_scale,
        seed: cfg.args.sim_seed,
    });
    let metrics = cfg
        .args
        .enable_metrics
        .then(|| Metrics::new(cfg.args.served_model_name()));
    let warmup = Duration::from_secs_f64(cfg.args.sim_warmup_secs.max(0.0));
    let state = Arc::new(AppState {
        engine_epoch_unix: engine.epoch_unix(),
        exit_after: faults::exit_after(&cfg.args.sim_fault),
        engine,
        metrics,
        sessions: Mutex::new(Sessions::default()),
        in_flight: Mutex::new(HashSet::new()),
        started: Instant::now(),
        warmup,
        draining: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        kill: Notify::new(),
        seq: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        exit_mode,
        cfg,
    });
    let app = router(state.clone());
    let (tx, mut rx) = watch::channel(false);
    let st = state.clone();
    let task = tokio::spawn(async move {
        // Connections with TCP_NODELAY, like uvicorn's (small SSE chunks go out at once), and
        // kernel receive stamps: a request's `request_received_ts` is when its first bytes
        // reached this machine.
        let listener = crate::arrival::StampingListener(listener);
        let app = app.into_make_service_with_connect_info::<crate::arrival::ConnArrival>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        });
        tokio::select! {
            r = serve => if let Err(e) = r { tracing::error!("server error: {e}") },
            _ = st.kill.notified() => {}
        }
    });
    let st = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        tracing::info!(
            "simulated SGLang on http://{addr}: model {}, {} x{}, time scale {}, KV pool {} tokens",
            st.cfg.model.name,
            st.cfg.gpu.name,
            st.cfg.args.tp_size,
            st.cfg.args.sim_time_scale,
            st.cfg.max_total_tokens
        );
        tracing::info!("The server is fired up and ready to roll!");
        // (The engine itself logs when it falls behind wall time.)
    });
    Ok(SimHandle {
        addr,
        state,
        shutdown: tx,
        task,
    })
}

struct AppState {
    cfg: SimConfig,
    engine: Engine,
    /// Unix time at engine time 0 (the engine-time timestamps of `meta_info`).
    engine_epoch_unix: f64,
    metrics: Option<Metrics>,
    sessions: Mutex<Sessions>,
    in_flight: Mutex<HashSet<String>>,
    started: Instant,
    warmup: Duration,
    draining: AtomicBool,
    /// `exit-after` fired.
    dead: AtomicBool,
    kill: Notify,
    /// Generation requests received (fault draws).
    seq: AtomicU64,
    /// Generation requests answered (`exit-after`).
    answered: AtomicU64,
    exit_after: Option<u64>,
    exit_mode: ExitMode,
}

type St = Arc<AppState>;

impl AppState {
    fn tok(&self) -> &super::tokenizer::Tokenizer {
        &self.cfg.tokenizer
    }

    fn next_faults(&self) -> FaultPlan {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        FaultPlan::draw(&self.cfg.args.sim_fault, self.cfg.args.sim_seed, n)
    }
}

/// Counts a generation request as answered when dropped (for `exit-after`).
struct Answered(St);

impl Drop for Answered {
    fn drop(&mut self) {
        let n = self.0.answered.fetch_add(1, Ordering::SeqCst) + 1;
        if self.0.exit_after == Some(n) {
            tracing::warn!("simulated fault: exiting after {n} requests");
            // From now on every request fails, even before the process is gone.
            self.0.dead.store(true, Ordering::SeqCst);
            match self.0.exit_mode {
                ExitMode::Process => {
                    std::thread::spawn(|| {
                        std::thread::sleep(Duration::from_millis(50));
                        std::process::exit(3);
                    });
                }
                ExitMode::StopServer => {
                    self.0.kill.notify_one();
                }
            }
        }
    }
}

fn router(state: St) -> Router {
    let mut r = Router::new()
        .route("/generate", post(generate).put(generate))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/health", get(health))
        .route("/health_generate", get(health))
        .route("/model_info", get(model_info))
        .route("/get_model_info", get(model_info))
        .route("/server_info", get(server_info))
        .route("/get_server_info", get(server_info))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_card))
        .route("/flush_cache", get(flush_cache).post(flush_cache))
        .route("/open_session", post(open_session))
        .route("/close_session", post(close_session))
        .route("/abort_request", post(abort_request));
    if state.cfg.args.enable_metrics {
        r = r.route("/metrics", get(metrics));
    }
    r.layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(256 << 20))
        .with_state(state)
}

/// Auth (SGLang's `--api-key` / `--admin-api-key`, [`auth`]) and the dead server of an
/// in-process `exit-after`.
async fn guard(State(st): State<St>, req: Request, next: Next) -> Response {
    if st.dead.load(Ordering::SeqCst) {
        return broken_body(StatusCode::OK);
    }
    let decision = {
        // (A block: the future holds no borrow of the request across the await below.)
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        auth(
            req.method(),
            req.uri().path(),
            header("authorization"),
            header("x-api-key"),
            st.cfg.args.api_key.as_deref(),
            st.cfg.args.admin_api_key.as_deref(),
        )
    };
    if let Err(status) = decision {
        let error = if status == StatusCode::FORBIDDEN {
            "Forbidden"
        } else {
            "Unauthorized"
        };
        return (status, Json(json!({ "error": error }))).into_response();
    }
    next.run(req).await
}

/// SGLang's request auth (`decide_request_auth`): `OPTIONS` and paths under `/health`,
/// `/ready` and `/metrics` are always open. A key is given as `Authorization: Bearer K` (the
/// scheme in any case) or `x-api-key: K`. The admin routes here (`/flush_cache`,
/// `/abort_request`, SGLang's "admin optional" level) take the admin key when one is set (the
/// API key is then refused), else the API key, else nothing; every other route takes the API
/// key when one is set (the admin key alone leaves them open).
fn auth(
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    x_api_key: Option<&str>,
    api_key: Option<&str>,
    admin_api_key: Option<&str>,
) -> Result<(), StatusCode> {
    if method == Method::OPTIONS
        || ["/health", "/ready", "/metrics"]
            .iter()
            .any(|p| path.starts_with(p))
    {
        return Ok(());
    }
    let presents = |key: &str| {
        let bearer = authorization
            .and_then(|a| a.split_once(' '))
            .is_some_and(|(scheme, k)| scheme.eq_ignore_ascii_case("bearer") && k == key);
        bearer || x_api_key == Some(key)
    };
    let admin_route = matches!(path, "/flush_cache" | "/abort_request");
    let needed = match (
        admin_route,
        admin_api_key.filter(|k| !k.is_empty()),
        api_key,
    ) {
        (true, Some(admin), _) => Some(admin),
        (_, _, Some(key)) if !key.is_empty() => Some(key),
        _ => None,
    };
    match needed {
        Some(key) if !presents(key) => Err(StatusCode::UNAUTHORIZED),
        _ => Ok(()),
    }
}

/// A response whose body fails at once: the connection is cut mid-response.
fn broken_body(status: StatusCode) -> Response {
    let s = stream::once(async {
        Err::<Bytes, _>(std::io::Error::other("simulated fault: connection dropped"))
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(s))
        .expect("static response parts are valid")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn new_rid() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Preparing and running one generation.

/// Why a request was refused before reaching the engine.
enum Reject {
    Error(ApiError),
    /// Session errors abort the request (`finish_reason.type == "abort"`, status 400).
    Session(String),
}

impl Reject {
    fn into_api(self) -> ApiError {
        match self {
            Reject::Error(e) => e,
            Reject::Session(m) => ApiError::native(StatusCode::BAD_REQUEST, m),
        }
    }
}

enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

struct Job {
    rid: String,
    input_ids: Vec<u32>,
    /// The request's `max_new_tokens` (the engine reserves KV for it).
    max_new_tokens: u32,
    plan: Planned,
    session: Option<String>,
}

fn gen_seed(sim_seed: u64, ids: &[u32], nonce: Option<u64>) -> u64 {
    let mut h = sim_seed ^ 0xcbf2_9ce4_8422_2325;
    for &id in ids {
        h = (h ^ u64::from(id)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    if let Some(n) = nonce {
        h = (h ^ n).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn prepare(
    st: &St,
    prompt: Prompt,
    sp: &SamplingParams,
    max_new_default: Option<u32>,
    rid: Option<String>,
    session: Option<&SessionParams>,
) -> Result<Job, Reject> {
    let bad = |m: String| Reject::Error(ApiError::native(StatusCode::BAD_REQUEST, m));
    let new_ids = match prompt {
        Prompt::Text(_) if st.cfg.args.skip_tokenizer_init => {
            return Err(bad(
                "input_ids must be provided when the server runs with --skip-tokenizer-init".into(),
            ))
        }
        Prompt::Text(t) => st.tok().encode(&t),
        Prompt::Ids(ids) => ids,
    };
    let rid = rid.unwrap_or_else(new_rid);
    if !st
        .in_flight
        .lock()
        .expect("in-flight set")
        .insert(rid.clone())
    {
        return Err(bad("Duplicate request IDs detected".into()));
    }
    let unregister = |st: &St| {
        st.in_flight.lock().expect("in-flight set").remove(&rid);
    };
    // What the request itself carries: the tokenizer manager's length checks see only this
    // (a session request's history is joined later, in the scheduler).
    let n_new = new_ids.len() as u64;
    let (input_ids, sid) = match session.filter(|s| s.id.is_some()) {
        Some(sp) => {
            let r = st
                .sessions
                .lock()
                .expect("sessions")
                .begin(sp, &rid, &new_ids);
            match r {
                Ok(ids) => (ids, sp.id.clone()),
                Err(m) => {
                    unregister(st);
                    return Err(Reject::Session(m));
                }
            }
        }
        None => (new_ids, None),
    };
    let fail = |st: &St, m: String| {
        unregister(st);
        if let Some(sid) = &sid {
            st.sessions
                .lock()
                .expect("sessions")
                .finish(sid, &rid, None);
        }
        Err(bad(m))
    };
    let ctx = st.cfg.context_length;
    let n = input_ids.len() as u64;
    if n == 0 {
        return fail(st, "The input is empty: the prompt has no tokens.".into());
    }
    let checked = if sid.is_some() { n_new } else { n };
    if checked >= ctx {
        return fail(
            st,
            format!(
                "The input ({checked} tokens) is longer than the model's context length ({ctx} \
                 tokens)."
            ),
        );
    }
    let mut max_new = sp
        .max_new_tokens
        .or(max_new_default)
        .unwrap_or_else(|| ctx.saturating_sub(checked + 1) as u32);
    if checked + u64::from(max_new) >= ctx {
        return fail(
            st,
            format!(
                "Requested token count exceeds the model's maximum context length of {ctx} \
                 tokens. You requested a total of {} tokens: {checked} tokens from the input \
                 messages and {max_new} tokens for the completion. Please reduce the number of \
                 tokens in the input messages or the completion to fit within the limit.",
                checked + u64::from(max_new)
            ),
        );
    }
    if sid.is_some() {
        // SGLang's scheduler on the joined session input: too long is refused, else the
        // output is clipped to what the context has left (`init_req_max_new_tokens`).
        let max_req_len = (ctx - 1).min(st.cfg.max_total_tokens.saturating_sub(1));
        let max_req_input_len = max_req_len.saturating_sub(5);
        if n >= max_req_input_len {
            return fail(
                st,
                format!(
                    "Input length ({n} tokens) exceeds the maximum allowed length \
                     ({max_req_input_len} tokens). Use a shorter input or enable \
                     --allow-auto-truncate."
                ),
            );
        }
        max_new = max_new.min((max_req_len - n - 1) as u32);
    }
    let greedy = sp.temperature.unwrap_or(1.0) < 1e-6;
    let nonce = if greedy {
        None
    } else {
        Some(
            sp.sampling_seed
                .unwrap_or_else(|| st.seq.load(Ordering::Relaxed) ^ 0x5eed),
        )
    };
    let params = GenParams {
        max_new_tokens: max_new,
        ignore_eos: sp.ignore_eos,
        stop: match &sp.stop {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s.clone()],
            Some(OneOrMany::Many(v)) => v.clone(),
        },
        stop_token_ids: sp.stop_token_ids.clone().unwrap_or_default(),
        no_stop_trim: sp.no_stop_trim,
    };
    let len = OutputLen {
        mean: st.cfg.args.sim_output_len_mean,
        sigma: st.cfg.args.sim_output_len_sigma,
    };
    let plan = textgen::plan(
        st.tok(),
        gen_seed(st.cfg.args.sim_seed, &input_ids, nonce),
        &params,
        &len,
    );
    Ok(Job {
        rid,
        input_ids,
        max_new_tokens: max_new.max(plan.ids.len() as u32),
        plan,
        session: sid,
    })
}

/// A request in the engine: its latest state, updated from the engine's events.
struct Running {
    st: St,
    rid: String,
    plan: Arc<Planned>,
    prompt_tokens: u32,
    session: Option<String>,
    events: mpsc::UnboundedReceiver<EngineEvent>,
    /// Engine time the request's first bytes reached this machine (the kernel's receive
    /// stamp on the server's socket; SGLang's `request_received_ts` is taken a little later,
    /// when its HTTP layer hands the request over, before tokenization), and the time it
    /// entered the engine.
    http_received_at: f64,
    received_at: f64,
    last_at: f64,
    /// Engine times: left the queue, first token.
    scheduled_at: Option<f64>,
    first_at: Option<f64>,
    cached: u32,
    completion: u32,
    retractions: u32,
    finished_at: Option<f64>,
    aborted: Option<String>,
    /// `--sim-chunk-per-step`: an event of the next step, taken while looking for the end of
    /// this one.
    pending: Option<EngineEvent>,
}

impl Running {
    fn submit(st: &St, job: Job) -> Running {
        let prompt_tokens = job.input_ids.len() as u32;
        let sub = st.engine.submit(EngineRequest {
            rid: job.rid.clone(),
            input_ids: job.input_ids,
            output_ids: job.plan.ids.clone(),
            max_new_tokens: job.max_new_tokens,
        });
        Running {
            st: st.clone(),
            rid: job.rid,
            plan: Arc::new(job.plan),
            prompt_tokens,
            session: job.session,
            events: sub.events,
            http_received_at: finite(sub.received_at),
            received_at: finite(sub.received_at),
            last_at: finite(sub.received_at),
            scheduled_at: None,
            first_at: None,
            cached: 0,
            completion: 0,
            retractions: 0,
            finished_at: None,
            aborted: None,
            pending: None,
        }
    }

    /// The request reached this machine at engine time `at` (before it was parsed).
    fn arrived(mut self, at: f64) -> Running {
        self.http_received_at = finite(at).min(self.received_at);
        self
    }

    fn is_done(&self) -> bool {
        self.finished_at.is_some() || self.aborted.is_some()
    }

    /// Wait for the next engine event, then take every event already queued (a lagging
    /// client gets the newest state in one chunk), unless `--sim-chunk-per-step`. `false`
    /// once the request is over and its final state was already returned.
    async fn next(&mut self) -> bool {
        if self.is_done() {
            return false;
        }
        let first = match self.pending.take() {
            Some(ev) => Some(ev),
            None => self.events.recv().await,
        };
        match first {
            Some(ev) => self.apply(ev),
            None => self.end(None, "the engine stopped".into()),
        }
        // The last planned token and the request's end come out of one engine step (the end
        // is sent right after it): wait for the end, so the two go out in one chunk, as from
        // SGLang, whose last chunk carries the last tokens and the finish reason together.
        while !self.is_done() && self.completion as usize >= self.plan.ids.len() {
            match self.events.recv().await {
                Some(ev) => self.apply(ev),
                None => self.end(None, "the engine stopped".into()),
            }
        }
        if self.st.cfg.args.sim_chunk_per_step {
            // One step per chunk: only the end of the request in this same step joins it.
            if !self.is_done() {
                match self.events.try_recv() {
                    Ok(
                        ev @ EngineEvent::Finished {
                            completion_tokens, ..
                        },
                    ) if completion_tokens <= self.completion => self.apply(ev),
                    Ok(ev) => self.pending = Some(ev),
                    Err(_) => {}
                }
            }
            return true;
        }
        while !self.is_done() {
            match self.events.try_recv() {
                Ok(ev) => self.apply(ev),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.end(None, "the engine stopped".into())
                }
            }
        }
        true
    }

    fn tokens_to(&mut self, n: u32, at: f64) {
        let at = finite(at);
        if let Some(m) = &self.st.metrics {
            let new = n.saturating_sub(self.completion);
            if new > 0 && self.completion > 0 {
                let gap = (at - self.last_at).max(0.0) / f64::from(new);
                for _ in 0..new {
                    m.itl.observe(gap);
                }
            }
        }
        if n > self.completion {
            self.last_at = at;
        }
        self.completion = n.min(self.plan.ids.len() as u32);
    }

    fn apply(&mut self, ev: EngineEvent) {
        match ev {
            EngineEvent::First {
                cached_tokens,
                scheduled_at,
                at,
            } => {
                self.cached = cached_tokens;
                self.scheduled_at = Some(finite(scheduled_at));
                self.first_at = Some(finite(at));
                if let Some(m) = &self.st.metrics {
                    m.ttft
                        .observe((finite(at) - self.http_received_at).max(0.0));
                }
                self.last_at = finite(at);
                self.completion = self.completion.max(1).min(self.plan.ids.len() as u32);
            }
            EngineEvent::Progress {
                completion_tokens,
                at,
            } => self.tokens_to(completion_tokens, at),
            EngineEvent::Finished {
                completion_tokens,
                at,
                retractions,
            } => {
                self.tokens_to(completion_tokens, at);
                self.retractions = retractions;
                self.finished_at = Some(finite(at));
                if let Some(m) = &self.st.metrics {
                    m.e2e.observe((finite(at) - self.http_received_at).max(0.0));
                    m.finished(
                        self.prompt_tokens,
                        self.completion,
                        self.cached,
                        retractions,
                    );
                }
                if let Some(sid) = &self.session {
                    let out = &self.plan.ids[..self.completion as usize];
                    self.st
                        .sessions
                        .lock()
                        .expect("sessions")
                        .finish(sid, &self.rid, Some(out));
                }
                self.release();
            }
            EngineEvent::Aborted { message, at } => self.end(Some(at), message),
        }
    }

    fn end(&mut self, _at: Option<f64>, message: String) {
        self.aborted = Some(message);
        if let Some(m) = &self.st.metrics {
            m.aborted.inc();
        }
        if let Some(sid) = &self.session {
            self.st
                .sessions
                .lock()
                .expect("sessions")
                .finish(sid, &self.rid, None);
        }
        self.release();
    }

    fn release(&self) {
        self.st
            .in_flight
            .lock()
            .expect("in-flight set")
            .remove(&self.rid);
    }

    fn text(&self) -> &str {
        self.plan.text_at(self.completion as usize)
    }

    fn e2e(&self) -> Option<f64> {
        self.finished_at
            .map(|f| (f - self.http_received_at).max(0.0))
    }

    /// The native body / chunk for the current state.
    /// The native response or chunk; `from`: (text bytes, token ids) already streamed, which
    /// `--incremental-streaming-output` leaves out (`text` and `output_ids` are then deltas).
    fn native_json(&self, index: Option<usize>, from: Option<(usize, usize)>) -> Vec<u8> {
        let text = self.text();
        let ids = &self.plan.ids[..self.completion as usize];
        let (text, ids) = match from {
            Some((t, i)) => (&text[t.min(text.len())..], &ids[i.min(ids.len())..]),
            None => (text, ids),
        };
        let finish_reason = match (&self.aborted, self.finished_at) {
            (Some(m), _) => Some(p::abort_reason(m, None)),
            (None, Some(_)) => Some(p::finish_reason(&self.plan.finish)),
            _ => None,
        };
        let out = GenerateOut {
            text: (!self.st.cfg.args.skip_tokenizer_init).then_some(text),
            output_ids: ids,
            meta_info: MetaInfo {
                id: &self.rid,
                finish_reason,
                prompt_tokens: self.prompt_tokens,
                weight_version: "default",
                total_retractions: self.retractions,
                reasoning_tokens: 0,
                completion_tokens: self.completion,
                cached_tokens: self.cached,
                cached_tokens_details: (self.cached > 0).then_some(p::CachedDetails {
                    device: self.cached,
                    host: 0,
                }),
                dp_rank: None,
                e2e_latency: self.e2e(),
                // On the engine's clock, as every other timestamp here (a simulated engine's
                // Unix time runs at its time scale; at scale 1 it is the wall clock).
                response_sent_to_client_ts: self.st.engine_epoch_unix + self.st.engine.now(),
                timing: self.st.cfg.args.enable_metrics.then(|| self.timing()),
            },
            index,
        };
        serde_json::to_vec(&out).expect("serializing a response")
    }

    /// The `--enable-metrics` timing fields known so far (engine time).
    fn timing(&self) -> Timing {
        let ts = |t: f64| self.st.engine_epoch_unix + t;
        let finished = self.finished_at.filter(|_| self.aborted.is_none());
        let decode_s = finished.zip(self.first_at).map(|(f, first)| f - first);
        Timing {
            request_received_ts: ts(self.http_received_at),
            api_server_dispatch_finish_ts: ts(self.received_at),
            queue_time: self.scheduled_at.map(|s| (s - self.received_at).max(0.0)),
            forward_entry_time: self.scheduled_at.map(ts),
            prefill_finished_time: self.first_at.map(ts),
            request_finished_ts: finished.map(ts),
            inference_time: finished
                .zip(self.scheduled_at)
                .map(|(f, s)| (f - s).max(0.0)),
            decode_throughput: decode_s
                .filter(|d| *d > 0.0)
                .map(|d| f64::from(self.completion.saturating_sub(1)) / d),
        }
    }

    /// The usage SGLang puts on each content chunk with `continuous_usage_stats`: the counts
    /// so far, never cached tokens.
    fn running_usage(&self) -> Usage {
        Usage {
            prompt_tokens_details: None,
            ..self.usage()
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            total_tokens: self.prompt_tokens + self.completion,
            completion_tokens: self.completion,
            prompt_tokens_details: (self.st.cfg.args.enable_cache_report && self.cached > 0)
                .then_some(PromptDetails {
                    cached_tokens: self.cached,
                }),
            reasoning_tokens: 0,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.is_done() {
            // Client went away: abort in the engine (dropping `events` does too).
            self.st.engine.abort(&self.rid);
            self.end(None, "client disconnected".into());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming.

#[derive(Clone)]
enum Route {
    Native {
        index: Option<usize>,
    },
    Chat {
        id: String,
        model: String,
        created: u64,
        include_usage: bool,
        continuous_usage: bool,
    },
    Completion {
        id: String,
        model: String,
        created: u64,
        include_usage: bool,
        continuous_usage: bool,
    },
}

fn sse(mut out: BytesMut, json: &[u8]) -> BytesMut {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out
}

const DONE: &[u8] = b"data: [DONE]\n\n";

struct SseJob {
    running: Running,
    route: Route,
    faults: FaultPlan,
    /// Chunks sent so far.
    sent: usize,
    /// Bytes of text already sent as deltas (OpenAI, or native with
    /// `--incremental-streaming-output`).
    text_sent: usize,
    /// Token ids already sent (native with `--incremental-streaming-output`).
    ids_sent: usize,
    /// The first engine output was already received (OpenAI routes wait for it).
    primed: bool,
    tail_done: bool,
    /// Append `data: [DONE]` at the end (not for items of a native batch).
    done_marker: bool,
    _answered: Option<Answered>,
}

impl SseJob {
    async fn step(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.tail_done {
            return None;
        }
        let mut out = BytesMut::new();
        if self.sent == 0 {
            if let Route::Chat {
                id, model, created, ..
            } = &self.route
            {
                let chunk = Chunk {
                    id,
                    object: "chat.completion.chunk",
                    created: *created,
                    model,
                    choices: vec![ChatChoice {
                        index: 0,
                        delta: Delta {
                            role: Some("assistant"),
                            content: Some(""),
                            reasoning_content: None,
                            tool_calls: None,
                        },
                        logprobs: None,
                        finish_reason: None,
                        matched_stop: Value::Null,
                    }],
                    usage: None,
                };
                out = sse(out, &serde_json::to_vec(&chunk).expect("chunk"));
            }
        }
        loop {
            if self.running.st.dead.load(Ordering::SeqCst) {
                self.tail_done = true;
                return Some(Err(std::io::Error::other("server stopped")));
            }
            if let Some(d) = self.faults.stall_before.take() {
                tokio::time::sleep(d).await;
            }
            if self.sent > 0 {
                if let Some(d) = self.faults.stall_during.take() {
                    tokio::time::sleep(d).await;
                }
            }
            let fresh = if self.primed {
                self.primed = false;
                true
            } else {
                self.running.next().await
            };
            if !fresh {
                break;
            }
            let done = self.running.is_done();
            if self.faults.drop && (self.sent >= 1 || done) {
                self.tail_done = true;
                return Some(Err(std::io::Error::other(
                    "simulated fault: connection dropped",
                )));
            }
            if self.faults.malformed {
                self.faults.malformed = false;
                out.extend_from_slice(
                    b"data: {\"text\": \"malformed chunk\", \"meta_info\": {\n\n",
                );
            }
            let before = out.len();
            out = self.chunk(out);
            if out.len() > before || done {
                self.sent += 1;
            }
            if done {
                break;
            }
            if !out.is_empty() {
                return Some(Ok(out.freeze()));
            }
        }
        out = self.tail(out);
        self.tail_done = true;
        Some(Ok(out.freeze()))
    }

    /// The chunk for the current state (none for an OpenAI output without new text).
    fn chunk(&mut self, out: BytesMut) -> BytesMut {
        let r = &self.running;
        match &self.route {
            Route::Native { index } if r.st.cfg.args.incremental_streaming_output => {
                let body = r.native_json(*index, Some((self.text_sent, self.ids_sent)));
                self.text_sent = r.text().len();
                self.ids_sent = r.completion as usize;
                sse(out, &body)
            }
            Route::Native { index } => sse(out, &r.native_json(*index, None)),
            Route::Chat {
                id,
                model,
                created,
                continuous_usage,
                ..
            } => {
                if r.aborted.is_some() {
                    return out;
                }
                let text = r.text();
                if text.len() <= self.text_sent {
                    return out;
                }
                let delta = &text[self.text_sent..];
                let chunk = Chunk {
                    id,
                    object: "chat.completion.chunk",
                    created: *created,
                    model,
                    choices: vec![ChatChoice {
                        index: 0,
                        delta: Delta {
                            role: None,
                            content: Some(delta),
                            reasoning_content: None,
                            tool_calls: None,
                        },
                        logprobs: None,
                        finish_reason: None,
                        matched_stop: Value::Null,
                    }],
                    usage: continuous_usage.then(|| r.running_usage()),
                };
                self.text_sent = text.len();
                sse(out, &serde_json::to_vec(&chunk).expect("chunk"))
            }
            Route::Completion {
                id,
                model,
                created,
                continuous_usage,
                ..
            } => {
                if r.aborted.is_some() {
                    return out;
                }
                let text = r.text();
                let delta = &text[self.text_sent.min(text.len())..];
                let (finish, matched) = if r.finished_at.is_some() {
                    let (f, m) = p::openai_finish(&r.plan.finish);
                    (Some(f), m)
                } else {
                    (None, Value::Null)
                };
                let chunk = Chunk {
                    id,
                    object: "text_completion",
                    created: *created,
                    model,
                    choices: vec![CompletionChoice {
                        index: 0,
                        text: delta,
                        logprobs: None,
                        finish_reason: finish,
                        matched_stop: matched,
                    }],
                    usage: continuous_usage.then(|| r.running_usage()),
                };
                self.text_sent = text.len();
                sse(out, &serde_json::to_vec(&chunk).expect("chunk"))
            }
        }
    }

    /// After the last output: OpenAI finish and usage chunks, in-band errors, `[DONE]`.
    fn tail(&mut self, mut out: BytesMut) -> BytesMut {
        let r = &self.running;
        let aborted = r.aborted.clone();
        match &self.route {
            Route::Native { .. } => {}
            Route::Chat {
                id,
                model,
                created,
                include_usage,
                ..
            } => {
                if let Some(m) = aborted {
                    let e = ApiError::openai(StatusCode::INTERNAL_SERVER_ERROR, m);
                    out = sse(
                        out,
                        &serde_json::to_vec(&json!({"error": e.body})).expect("json"),
                    );
                } else {
                    let (f, matched) = p::openai_finish(&r.plan.finish);
                    let chunk = Chunk {
                        id,
                        object: "chat.completion.chunk",
                        created: *created,
                        model,
                        choices: vec![ChatChoice {
                            index: 0,
                            delta: Delta {
                                role: None,
                                content: None,
                                reasoning_content: None,
                                tool_calls: None,
                            },
                            logprobs: None,
                            finish_reason: Some(f),
                            matched_stop: matched,
                        }],
                        usage: None,
                    };
                    out = sse(out, &serde_json::to_vec(&chunk).expect("chunk"));
                    if *include_usage {
                        let chunk: Chunk<'_, ChatChoice<'_>> = Chunk {
                            id,
                            object: "chat.completion.chunk",
                            created: *created,
                            model,
                            choices: vec![],
                            usage: Some(r.usage()),
                        };
                        out = sse(out, &serde_json::to_vec(&chunk).expect("chunk"));
                    }
                }
            }
            Route::Completion {
                id,
                model,
                created,
                include_usage,
                ..
            } => {
                if let Some(m) = aborted {
                    let e = ApiError::openai(StatusCode::INTERNAL_SERVER_ERROR, m);
                    out = sse(
                        out,
                        &serde_json::to_vec(&json!({"error": e.body})).expect("json"),
                    );
                } else if *include_usage {
                    // This chunk is serialized with nulls dropped (spec §2.5).
                    let mut usage = serde_json::to_value(r.usage()).expect("usage");
                    if let Value::Object(m) = &mut usage {
                        m.retain(|_, v| !v.is_null());
                    }
                    let chunk = json!({"id": id, "object": "text_completion", "created": created,
                                       "model": model, "choices": [], "usage": usage});
                    out = sse(out, &serde_json::to_vec(&chunk).expect("chunk"));
                }
            }
        }
        if self.done_marker {
            out.extend_from_slice(DONE);
        }
        out
    }
}

fn sse_stream(job: SseJob) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    stream::unfold(job, |mut j| async move { j.step().await.map(|b| (b, j)) })
}

fn sse_response<S>(s: S) -> Response
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(s))
        .expect("static response parts are valid")
}

/// One SSE event, then `[DONE]` (in-band errors of native streams).
fn sse_once(json: Value) -> Response {
    let body = sse(BytesMut::new(), &serde_json::to_vec(&json).expect("json"));
    let mut b = body;
    b.extend_from_slice(DONE);
    let bytes = b.freeze();
    sse_response(stream::once(async move { Ok(bytes) }))
}

// ---------------------------------------------------------------------------------------------
// Generation routes.

async fn generate(
    State(st): State<St>,
    ConnectInfo(conn): ConnectInfo<crate::arrival::ConnArrival>,
    body: Bytes,
) -> Response {
    // When the request's first bytes reached this machine (the kernel's stamp), or failing
    // that now, in engine time.
    let arrived = match conn.0.request_started() {
        Some(at) => st.engine.time_at(at),
        None => st.engine.now(),
    };
    let req: GenerateReq = match p::parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let answered = Answered(st.clone());
    let mut faults = st.next_faults();
    if let Some(code) = faults.status {
        return fault_status(code, false);
    }
    // Normalize to a list of prompts (a list = a batch).
    let (prompts, batch): (Vec<Prompt>, bool) = match (&req.text, &req.input_ids) {
        (Some(OneOrMany::One(t)), None) => (vec![Prompt::Text(t.clone())], false),
        (Some(OneOrMany::Many(v)), None) => (v.iter().cloned().map(Prompt::Text).collect(), true),
        (None, Some(p::IdsInput::One(ids))) => (vec![Prompt::Ids(ids.clone())], false),
        (None, Some(p::IdsInput::Many(v))) => (v.iter().cloned().map(Prompt::Ids).collect(), true),
        (Some(_), Some(_)) => {
            return native_error(
                &req,
                "Either text or input_ids should be provided, not both.".into(),
            )
        }
        (None, None) => {
            return native_error(
                &req,
                "Either text, input_ids or input_embeds should be provided.".into(),
            )
        }
    };
    if batch && req.session_params.is_some() {
        return native_error(
            &req,
            "session_params are not supported in batch requests".into(),
        );
    }
    let mut running = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.into_iter().enumerate() {
        let sp = match &req.sampling_params {
            Some(s) => s.get(i).unwrap_or_default(),
            None => SamplingParams::default(),
        };
        let rid = req.rid.as_ref().and_then(|r| r.get(i));
        match prepare(
            &st,
            prompt,
            &sp,
            Some(128),
            rid,
            req.session_params.as_ref(),
        ) {
            Ok(job) => running.push(Running::submit(&st, job).arrived(arrived)),
            Err(Reject::Session(m)) if req.stream => {
                return sse_once(json!({
                    "text": "", "output_ids": [],
                    "meta_info": {"id": "", "finish_reason": p::abort_reason(&m, Some(400)),
                                  "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
                }))
            }
            Err(Reject::Error(e)) if req.stream => {
                return sse_once(json!({"error": {"message": e.message()}}))
            }
            Err(r) => return r.into_api().into_response(),
        }
    }
    if req.stream {
        let jobs: Vec<_> = running
            .into_iter()
            .enumerate()
            .map(|(i, r)| SseJob {
                running: r,
                route: Route::Native {
                    index: batch.then_some(i),
                },
                faults: if i == 0 {
                    faults.clone()
                } else {
                    FaultPlan::default()
                },
                sent: 0,
                text_sent: 0,
                ids_sent: 0,
                primed: false,
                tail_done: false,
                done_marker: false,
                _answered: None,
            })
            .collect();
        let merged = stream::select_all(jobs.into_iter().map(|j| Box::pin(sse_stream(j))));
        let tail = stream::once(async move {
            drop(answered);
            Ok(Bytes::from_static(DONE))
        });
        return sse_response(merged.chain(tail));
    }
    // Non-streaming: run every item to the end.
    if let Some(d) = faults.stall_before {
        tokio::time::sleep(d).await;
    }
    let mut bodies = Vec::with_capacity(running.len());
    for (i, mut r) in running.into_iter().enumerate() {
        while r.next().await {
            if i == 0 && r.completion > 0 {
                if let Some(d) = faults.stall_during.take() {
                    tokio::time::sleep(d).await;
                }
            }
        }
        if let Some(m) = &r.aborted {
            return ApiError::native(StatusCode::INTERNAL_SERVER_ERROR, m.clone()).into_response();
        }
        bodies.push(r.native_json(None, None));
    }
    let body = if batch {
        let mut v = b"[".to_vec();
        for (i, b) in bodies.iter().enumerate() {
            if i > 0 {
                v.push(b',');
            }
            v.extend_from_slice(b);
        }
        v.push(b']');
        v
    } else {
        bodies.pop().unwrap_or_default()
    };
    finish_body(body, &faults, answered)
}

/// A complete JSON body, with the `drop` / `malformed` faults applied.
fn finish_body(body: Vec<u8>, faults: &FaultPlan, answered: Answered) -> Response {
    drop(answered);
    if faults.drop {
        return broken_body(StatusCode::OK);
    }
    let body = if faults.malformed {
        body[..body.len() / 2].to_vec()
    } else {
        body
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn fault_status(code: u16, openai: bool) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let msg = format!("simulated fault: HTTP {code}");
    if openai {
        ApiError::openai(status, msg).into_response()
    } else {
        ApiError::native(status, msg).into_response()
    }
}

/// A native error: in-band for streams, HTTP 400 otherwise.
fn native_error(req: &GenerateReq, message: String) -> Response {
    if req.stream {
        sse_once(json!({"error": {"message": message}}))
    } else {
        ApiError::native(StatusCode::BAD_REQUEST, message).into_response()
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"))
}

struct OpenAiCall {
    prompt: Prompt,
    sp: SamplingParams,
    max_default: Option<u32>,
    rid: Option<String>,
    model: String,
    stream: bool,
    include_usage: bool,
    /// `stream_options.continuous_usage_stats` (with include_usage).
    continuous_usage: bool,
    chat: bool,
}

async fn chat_completions(State(st): State<St>, headers: HeaderMap, body: Bytes) -> Response {
    if !is_json(&headers) {
        return ApiError::validation("Unsupported Media Type: Only 'application/json' is allowed")
            .into_response();
    }
    let req: ChatReq = match p::parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let system = st
        .cfg
        .qwen_template
        .then_some(template::QWEN_DEFAULT_SYSTEM);
    let text = match template::chatml(&req.messages, system) {
        Ok(t) => t,
        Err(e) => return ApiError::openai(StatusCode::BAD_REQUEST, e).into_response(),
    };
    let call = OpenAiCall {
        prompt: Prompt::Text(text),
        sp: SamplingParams {
            max_new_tokens: req.max_completion_tokens.or(req.max_tokens),
            temperature: req.temperature,
            stop: req.stop,
            stop_token_ids: req.stop_token_ids,
            ignore_eos: req.ignore_eos,
            no_stop_trim: false,
            sampling_seed: req.seed,
        },
        max_default: None,
        rid: req.rid,
        model: req.model.unwrap_or_else(|| "default".into()),
        stream: req.stream,
        include_usage: p::StreamOptions::usage(req.stream_options.as_ref()).0,
        continuous_usage: p::StreamOptions::usage(req.stream_options.as_ref()).1,
        chat: true,
    };
    openai(st, call).await
}

async fn completions(State(st): State<St>, headers: HeaderMap, body: Bytes) -> Response {
    if !is_json(&headers) {
        return ApiError::validation("Unsupported Media Type: Only 'application/json' is allowed")
            .into_response();
    }
    let req: CompletionReq = match p::parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let prompt =
        match &req.prompt {
            Value::String(s) => Prompt::Text(s.clone()),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                Prompt::Text(a[0].as_str().unwrap_or_default().to_string())
            }
            Value::Array(a) if a.iter().all(Value::is_u64) => Prompt::Ids(
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as u32)
                    .collect(),
            ),
            _ => return ApiError::openai(
                StatusCode::BAD_REQUEST,
                "prompt: a string, a list with one string, or a list of token ids (batches are \
                 not supported by the simulator)",
            )
            .into_response(),
        };
    let call = OpenAiCall {
        prompt,
        sp: SamplingParams {
            max_new_tokens: req.max_tokens,
            temperature: req.temperature,
            stop: req.stop,
            stop_token_ids: req.stop_token_ids,
            ignore_eos: req.ignore_eos,
            no_stop_trim: false,
            sampling_seed: req.seed,
        },
        max_default: Some(16),
        rid: req.rid,
        model: req.model.unwrap_or_else(|| "default".into()),
        stream: req.stream,
        include_usage: p::StreamOptions::usage(req.stream_options.as_ref()).0,
        continuous_usage: p::StreamOptions::usage(req.stream_options.as_ref()).1,
        chat: false,
    };
    openai(st, call).await
}

async fn openai(st: St, call: OpenAiCall) -> Response {
    let answered = Answered(st.clone());
    let faults = st.next_faults();
    if let Some(code) = faults.status {
        return fault_status(code, true);
    }
    let job = match prepare(&st, call.prompt, &call.sp, call.max_default, call.rid, None) {
        Ok(j) => j,
        Err(r) => {
            let m = r.into_api().message();
            return ApiError::openai(StatusCode::BAD_REQUEST, m).into_response();
        }
    };
    let id = job.rid.clone();
    let mut r = Running::submit(&st, job);
    let mut faults = faults;
    if let Some(d) = faults.stall_before.take() {
        tokio::time::sleep(d).await;
    }
    // Like SGLang, wait for the first engine output before answering 200.
    r.next().await;
    if let Some(m) = &r.aborted {
        return ApiError::openai(StatusCode::INTERNAL_SERVER_ERROR, m.clone()).into_response();
    }
    let created = unix_now() as u64;
    if call.stream {
        let route = if call.chat {
            Route::Chat {
                id,
                model: call.model,
                created,
                include_usage: call.include_usage,
                continuous_usage: call.continuous_usage,
            }
        } else {
            Route::Completion {
                id,
                model: call.model,
                created,
                include_usage: call.include_usage,
                continuous_usage: call.continuous_usage,
            }
        };
        return sse_response(sse_stream(SseJob {
            running: r,
            route,
            faults,
            sent: 0,
            text_sent: 0,
            ids_sent: 0,
            primed: true,
            tail_done: false,
            done_marker: true,
            _answered: Some(answered),
        }));
    }
    let mut first = true;
    while first || r.next().await {
        first = false;
        if let Some(d) = faults.stall_during.take() {
            tokio::time::sleep(d).await;
        }
    }
    if let Some(m) = &r.aborted {
        return ApiError::openai(StatusCode::INTERNAL_SERVER_ERROR, m.clone()).into_response();
    }
    let (finish, matched) = p::openai_finish(&r.plan.finish);
    let choice = if call.chat {
        json!({"index": 0,
               "message": {"role": "assistant", "content": r.text(),
                           "reasoning_content": null, "tool_calls": null},
               "logprobs": null, "finish_reason": finish, "matched_stop": matched})
    } else {
        json!({"index": 0, "text": r.text(), "logprobs": null, "finish_reason": finish,
               "matched_stop": matched})
    };
    let body = json!({
        "id": id,
        "object": if call.chat { "chat.completion" } else { "text_completion" },
        "created": created,
        "model": call.model,
        "choices": [choice],
        "usage": r.usage(),
        "metadata": {"weight_version": "default"},
    });
    finish_body(serde_json::to_vec(&body).expect("json"), &faults, answered)
}

// ---------------------------------------------------------------------------------------------
// Control and info routes.

async fn health(State(st): State<St>) -> StatusCode {
    if st.started.elapsed() < st.warmup || st.draining.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // Like SGLang: a one-token generation must come through.
    let mut sub = st.engine.submit(EngineRequest {
        rid: format!("HEALTH_CHECK_{}", new_rid()),
        input_ids: vec![0],
        output_ids: vec![st.tok().eos_id()],
        max_new_tokens: 1,
    });
    let wait = async {
        while let Some(ev) = sub.events.recv().await {
            match ev {
                EngineEvent::First { .. } | EngineEvent::Finished { .. } => return true,
                EngineEvent::Aborted { .. } => return false,
                EngineEvent::Progress { .. } => {}
            }
        }
        false
    };
    match tokio::time::timeout(Duration::from_secs(20), wait).await {
        Ok(true) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn model_info(State(st): State<St>) -> Json<Value> {
    Json(json!({
        "model_path": st.cfg.args.model_path,
        "tokenizer_path": st.cfg.args.model_path,
        "is_generation": true,
        "preferred_sampling_params": null,
        "weight_version": "default",
        "has_image_understanding": false,
        "has_audio_understanding": false,
        "model_type": st.cfg.model_type,
        "architectures": st.cfg.architectures,
    }))
}

/// The launch arguments as `/server_info` reports them (resolved values; no keys).
fn server_args(st: &AppState) -> serde_json::Map<String, Value> {
    let mut args = match serde_json::to_value(&st.cfg.args) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let c = &st.cfg;
    args.insert(
        "served_model_name".into(),
        json!(c.args.served_model_name()),
    );
    args.insert("tokenizer_path".into(), json!(c.args.model_path));
    args.insert("mem_fraction_static".into(), json!(c.mem_fraction_static));
    args.insert("chunked_prefill_size".into(), json!(c.chunked_prefill_size));
    args.insert("context_length".into(), json!(c.context_length));
    args.insert("max_total_tokens".into(), json!(c.args.max_total_tokens));
    args.insert("page_size".into(), json!(c.args.page_size.unwrap_or(1)));
    args.insert(
        "sim_time_scale".into(),
        time_scale_json(c.args.sim_time_scale),
    );
    args
}

fn time_scale_json(k: f64) -> Value {
    if k.is_finite() {
        json!(k)
    } else {
        json!("inf")
    }
}

async fn server_info(State(st): State<St>) -> Json<Value> {
    let c = &st.cfg;
    let stats = st.engine.stats();
    let gb = |b: f64| b / f64::from(1u32 << 30);
    let mut state = server_args(&st);
    state.insert(
        "last_gen_throughput".into(),
        json!(stats.core.gen_throughput),
    );
    state.insert(
        "memory_usage".into(),
        json!({
            "weight": gb(c.model.weight_bytes as f64 / f64::from(c.args.tp_size)),
            "kvcache": gb(c.max_total_tokens as f64 * c.model.kv_bytes_per_token as f64
                          / f64::from(c.args.tp_size)),
            "token_capacity": c.max_total_tokens,
            "graph": 0.0,
        }),
    );
    state.insert(
        "effective_max_running_requests_per_dp".into(),
        json!(c.max_running_requests),
    );
    let mut info = server_args(&st);
    info.insert("status".into(), json!("ready"));
    info.insert("max_total_num_tokens".into(), json!(c.max_total_tokens));
    info.insert(
        "max_req_input_len".into(),
        json!((c.context_length - 1).min(c.max_total_tokens.saturating_sub(1))),
    );
    info.insert(
        "max_running_requests_resolved".into(),
        json!(c.max_running_requests),
    );
    info.insert("internal_states".into(), json!([Value::Object(state)]));
    info.insert("version".into(), json!(SGLANG_VERSION));
    info.insert(
        "sim".into(),
        json!({
            "simulated": true,
            "gpu": c.gpu,
            "time_scale": time_scale_json(c.args.sim_time_scale),
            "model": c.model,
            "seed": c.args.sim_seed,
            "tokenizer": c.tokenizer.kind(),
            "faults": c.args.sim_fault,
            "output_len_mean": c.args.sim_output_len_mean,
            "output_len_sigma": c.args.sim_output_len_sigma,
            "chunk_per_step": c.args.sim_chunk_per_step,
            "engine_lag_seconds": stats.lag_seconds,
        }),
    );
    Json(Value::Object(info))
}

fn model_card_json(st: &AppState) -> Value {
    let name = st.cfg.args.served_model_name();
    json!({"id": name, "object": "model", "created": unix_now() as u64, "owned_by": "sglang",
           "root": name, "parent": null, "max_model_len": st.cfg.context_length})
}

async fn models(State(st): State<St>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_card_json(&st)]}))
}

async fn model_card(State(st): State<St>, Path(id): Path<String>) -> Response {
    if id == st.cfg.args.served_model_name() {
        Json(model_card_json(&st)).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": {"message": format!("The model '{id}' does not exist"),
                                  "type": "invalid_request_error", "param": "model",
                                  "code": "model_not_found"}}),
            ),
        )
            .into_response()
    }
}

async fn flush_cache(State(st): State<St>) -> Response {
    let idle = st.in_flight.lock().expect("in-flight set").is_empty();
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if idle && st.engine.flush_cache().await {
        let msg = "Cache flushed.\nPlease check backend logs for more details. (When there are \
                   running or waiting requests, the operation will not be performed.)\n";
        (StatusCode::OK, plain, msg).into_response()
    } else {
        (StatusCode::BAD_REQUEST, plain, "Flush cache failed.\n").into_response()
    }
}

async fn metrics(State(st): State<St>) -> Response {
    let Some(m) = &st.metrics else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(&st.engine.stats()),
    )
        .into_response()
}

async fn open_session(State(st): State<St>, body: Bytes) -> Response {
    let req: p::OpenSessionReq = match p::parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let _ = (req.capacity_of_str_len, req.streaming, req.timeout);
    let id = req.session_id.unwrap_or_else(new_rid);
    match st.sessions.lock().expect("sessions").open(id) {
        Ok(id) => Json(Value::String(id)).into_response(),
        Err(m) => ApiError::native(StatusCode::BAD_REQUEST, m).into_response(),
    }
}

async fn close_session(State(st): State<St>, body: Bytes) -> Response {
    let req: p::CloseSessionReq = match p::parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if !st.sessions.lock().expect("sessions").close(&req.session_id) {
        tracing::warn!("close_session: session {} does not exist", req.session_id);
    }
    StatusCode::OK.into_response()
}

async fn abort_request(State(st): State<St>, body: Bytes) -> Response {
    let req: Value = match p::parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if req.get("abort_all").and_then(Value::as_bool) == Some(true) {
        let all: Vec<String> = st
            .in_flight
            .lock()
            .expect("in-flight set")
            .iter()
            .cloned()
            .collect();
        for rid in all {
            st.engine.abort(&rid);
        }
    } else if let Some(rid) = req.get("rid").and_then(Value::as_str) {
        st.engine.abort(rid);
    }
    StatusCode::OK.into_response()
}
