//! The engine handle: the async face of the simulated scheduler ([`super::core::Core`]).
//!
//! One task owns the stepping. It runs a step (the core computes its end time `t` in
//! engine seconds), sleeps until the wall instant `start + t / time_scale` (an absolute
//! deadline, so rounding never accumulates into drift), then delivers the step's events to
//! each request's channel, first tokens first. The server runs it on a thread of its own
//! ([`Engine::start_on_thread`]) whose sleeps end on the OS clock, within tens of
//! microseconds of the deadline; [`Engine::start`] runs it on the caller's tokio runtime
//! and timer (whole milliseconds; tests use it with a paused clock). Requests submitted meanwhile join at the next step boundary, as
//! in SGLang's scheduler loop; a request stamped later than the engine's clock (an engine
//! running behind) waits for the clock to reach its arrival, so no step that began before
//! a request was sent can take it. With `time_scale = ∞` it never sleeps: steps run as fast as
//! the CPU allows and engine time is just the core's clock.
//!
//! If a step ends later in wall time than its deadline (the CPU cannot keep up with the
//! scale), the engine does not stretch or skip time: it records how far engine time is
//! behind `wall × scale` in [`EngineStats::lag_seconds`] and logs a warning once it is
//! 50 ms late in wall time, and again each time the lag doubles. An idle engine parks on a [`Notify`] and uses no CPU; when a request
//! arrives the idle time is skipped to the arrival instant. A request whose event receiver
//! is dropped is aborted (its KV freed) at the next step.

use super::core::{Core, CoreStats, ReqKey};
use super::cost::{GpuProfile, ModelProfile};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulePolicy {
    Fcfs,
    Lpm,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: ModelProfile,
    pub gpu: GpuProfile,
    /// KV pool capacity in tokens (already resolved from `--max-total-tokens` or memory).
    pub max_total_tokens: u64,
    pub max_running_requests: usize,
    pub chunked_prefill_size: usize,
    /// Cap on the new (uncached) tokens of one prefill batch (`--max-prefill-tokens`).
    pub max_prefill_tokens: u64,
    /// Tensor-parallel degree (`--tp-size`): GPUs the model's weights and KV are split over.
    pub tp_size: u64,
    pub schedule_policy: SchedulePolicy,
    pub disable_radix_cache: bool,
    /// Engine seconds per wall second (`f64::INFINITY`: never sleep).
    pub time_scale: f64,
    pub seed: u64,
}

/// One generation request as the scheduler sees it: the full prompt (session history
/// already prepended) and the output tokens it will emit, one per decode step.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub rid: String,
    pub input_ids: Vec<u32>,
    /// Planned output (already cut at a stop string / max_new_tokens by the caller).
    pub output_ids: Vec<u32>,
    /// The request's `max_new_tokens`: what the scheduler reserves KV for, as SGLang does
    /// (it cannot know where the output will stop). At least `output_ids.len()`.
    pub max_new_tokens: u32,
}

/// What happens to a request, in engine time (seconds since the engine started).
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// Prefill finished and the first token was sampled. `scheduled_at`: when the request
    /// left the waiting queue (the start of the step running its first prefill chunk).
    First {
        cached_tokens: u32,
        scheduled_at: f64,
        at: f64,
    },
    /// After a decode step: output tokens emitted so far (cumulative).
    Progress { completion_tokens: u32, at: f64 },
    /// All planned tokens emitted.
    Finished {
        completion_tokens: u32,
        at: f64,
        retractions: u32,
    },
    /// The engine gave up on the request.
    Aborted { message: String, at: f64 },
}

/// A submitted request: its events, and when the engine received it (engine time).
/// Dropping `events` aborts the request (client disconnect).
pub struct Submitted {
    pub events: mpsc::UnboundedReceiver<EngineEvent>,
    pub received_at: f64,
}

/// A snapshot of the engine for `/metrics` and `/server_info`: the scheduler's own counters
/// plus how far the engine runs behind its time scale.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub core: CoreStats,
    /// How far engine time is behind wall time × scale (seconds, engine time); 0 when on time.
    pub lag_seconds: f64,
}

/// State shared by the handles and the stepping task.
struct Inner {
    core: Core,
    senders: HashMap<ReqKey, (String, mpsc::UnboundedSender<EngineEvent>)>,
    keys: HashMap<String, ReqKey>,
    next_key: ReqKey,
    lag_seconds: f64,
}

struct Shared {
    cfg: EngineConfig,
    start: Instant,
    /// The real-time clock at `start`.
    start_unix: std::time::SystemTime,
    inner: Mutex<Inner>,
    wake: Notify,
    closed: AtomicBool,
    /// The core's clock (f64 bits), for `now()` at infinite scale.
    clock_bits: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while stepping is a bug; the state is still the best there is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> f64 {
        if self.cfg.time_scale.is_finite() {
            self.start.elapsed().as_secs_f64() * self.cfg.time_scale
        } else {
            f64::from_bits(self.clock_bits.load(Ordering::Acquire))
        }
    }
}

/// Closes the stepping task when the last [`Engine`] handle is dropped.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl Engine {
    /// Start the scheduler task on the current tokio runtime (its timer, so tests can run
    /// on a paused clock).
    pub fn start(cfg: EngineConfig) -> Engine {
        let (shared, engine) = Engine::new(cfg);
        tokio::spawn(run(shared, false));
        engine
    }

    fn new(mut cfg: EngineConfig) -> (Arc<Shared>, Engine) {
        if cfg.time_scale.is_nan() || cfg.time_scale <= 0.0 {
            tracing::error!(
                time_scale = cfg.time_scale,
                "the engine time scale must be > 0; running in real time (scale 1)"
            );
            cfg.time_scale = 1.0;
        }
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                core: Core::new(&cfg),
                senders: HashMap::new(),
                keys: HashMap::new(),
                next_key: 0,
                lag_seconds: 0.0,
            }),
            cfg,
            start: Instant::now(),
            start_unix: std::time::SystemTime::now(),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            clock_bits: AtomicU64::new(0f64.to_bits()),
        });
        let engine = Engine {
            _owner: Arc::new(Owner(shared.clone())),
            shared: shared.clone(),
        };
        (shared, engine)
    }

    /// Start the scheduler on a thread of its own, which sleeps to each step's end on the
    /// OS clock rather than tokio's timer (1 ms resolution): events leave within tens of
    /// microseconds of their engine time, and the server's tasks cannot delay a step. At
    /// infinite scale nothing sleeps, and the scheduler stays a task of the caller's runtime
    /// ([`Engine::start`]): there it takes turns with the tasks streaming its output instead
    /// of racing ahead of them on a core of its own.
    pub fn start_on_thread(cfg: EngineConfig) -> Engine {
        if !cfg.time_scale.is_finite() {
            return Engine::start(cfg);
        }
        let (shared, engine) = Engine::new(cfg);
        let on_thread = shared.clone();
        let spawned = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .and_then(|rt| {
                std::thread::Builder::new()
                    .name("sim-engine".into())
                    .spawn(move || rt.block_on(run(on_thread, true)))
            });
        if let Err(e) = spawned {
            // Still a working engine, only with tokio's timer resolution.
            tracing::warn!(
                "the simulated engine's own thread cannot start ({e}); it runs as a task"
            );
            tokio::spawn(run(shared, false));
        }
        engine
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.cfg
    }

    /// Engine time now (seconds since start): wall time × scale, or at infinite scale the
    /// end of the last step.
    pub fn now(&self) -> f64 {
        self.shared.now()
    }

    /// Unix time (seconds) at engine time 0.
    pub fn epoch_unix(&self) -> f64 {
        self.shared
            .start_unix
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// Engine time at a past monotonic instant (clamped to [0, now]); at infinite scale,
    /// where engine time is not wall time, now.
    pub fn time_at(&self, at: std::time::Instant) -> f64 {
        let now = self.shared.now();
        if !self.shared.cfg.time_scale.is_finite() {
            return now;
        }
        let since = at.saturating_duration_since(self.shared.start.into_std());
        (since.as_secs_f64() * self.shared.cfg.time_scale).min(now)
    }

    pub fn submit(&self, req: EngineRequest) -> Submitted {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.shared.lock();
        let now = self.shared.now();
        let key = inner.next_key;
        inner.next_key += 1;
        if inner.core.is_idle() {
            inner.core.advance_to(now);
        }
        inner.keys.insert(req.rid.clone(), key);
        inner.senders.insert(key, (req.rid.clone(), tx));
        inner.core.submit_at(key, req, now);
        deliver_pending(&mut inner);
        drop(inner);
        self.shared.wake.notify_one();
        Submitted {
            events: rx,
            received_at: now,
        }
    }

    /// Abort a request by id (no-op if unknown or finished).
    pub fn abort(&self, rid: &str) {
        let mut inner = self.shared.lock();
        if let Some(key) = inner.keys.get(rid).copied() {
            inner.core.abort(key, "Abort request");
            deliver_pending(&mut inner);
        }
        drop(inner);
        self.shared.wake.notify_one();
    }

    /// Empty the radix cache. `false` (nothing done) while requests are running or queued.
    pub async fn flush_cache(&self) -> bool {
        self.shared.lock().core.flush_cache()
    }

    pub fn stats(&self) -> EngineStats {
        let inner = self.shared.lock();
        EngineStats {
            core: inner.core.stats(),
            lag_seconds: inner.lag_seconds,
        }
    }
}

/// Send the core's queued events; forget requests that ended.
fn deliver_pending(inner: &mut Inner) {
    let Inner {
        core,
        senders,
        keys,
        ..
    } = inner;
    for (key, event) in core.drain_events() {
        deliver(senders, keys, key, event);
    }
}

fn deliver(
    senders: &mut HashMap<ReqKey, (String, mpsc::UnboundedSender<EngineEvent>)>,
    keys: &mut HashMap<String, ReqKey>,
    key: ReqKey,
    event: EngineEvent,
) {
    let last = matches!(
        event,
        EngineEvent::Finished { .. } | EngineEvent::Aborted { .. }
    );
    if let Some((_, tx)) = senders.get(&key) {
        // A closed receiver is noticed (and the request aborted) before the next step.
        let _ = tx.send(event);
    }
    if last {
        if let Some((rid, _)) = senders.remove(&key) {
            if keys.get(&rid) == Some(&key) {
                keys.remove(&rid);
            }
        }
    }
}

/// Abort every request whose receiver was dropped.
fn reap_disconnected(inner: &mut Inner) {
    if !inner.senders.values().any(|(_, tx)| tx.is_closed()) {
        return;
    }
    let closed: Vec<ReqKey> = inner
        .senders
        .iter()
        .filter(|(_, (_, tx))| tx.is_closed())
        .map(|(&k, _)| k)
        .collect();
    for key in closed {
        inner.core.abort(key, "client disconnected");
    }
    deliver_pending(inner);
}

/// The stepping task. `precise`: it runs alone on its thread ([`Engine::start_on_thread`]), so
/// the last stretch of each sleep can block on the OS clock.
async fn run(shared: Arc<Shared>, precise: bool) {
    let scale = shared.cfg.time_scale;
    let mut pending: Vec<(ReqKey, EngineEvent)> = Vec::new();
    // Lag warnings are rate-limited: at most one per `LAG_WARN_EVERY` of wall time, so an
    // engine that oscillates around its deadlines does not flood the log.
    const LAG_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
    let mut warned_lag = 0.0f64;
    let mut last_warn: Option<Instant> = None;
    let mut steps_since_yield = 0u32;
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let end = {
            let mut inner = shared.lock();
            reap_disconnected(&mut inner);
            let report = inner.core.step();
            pending.extend(inner.core.drain_events());
            shared
                .clock_bits
                .store(inner.core.clock().to_bits(), Ordering::Release);
            report.map(|r| r.end)
        };
        let Some(end) = end else {
            // Idle (or blocked): park until a submit, abort or shutdown. Idle time is
            // skipped, so an idle engine is never behind.
            shared.lock().lag_seconds = 0.0;
            shared.wake.notified().await;
            continue;
        };
        if scale.is_finite() {
            let now = Instant::now();
            // A deadline beyond what `Instant` can hold is simply "not yet".
            let deadline = std::time::Duration::try_from_secs_f64(end / scale)
                .ok()
                .and_then(|d| shared.start.checked_add(d))
                .unwrap_or(now + std::time::Duration::from_secs(86_400 * 365));
            if now > deadline {
                let late = (now - deadline).as_secs_f64();
                let lag = late * scale;
                shared.lock().lag_seconds = lag;
                // Timer jitter is not news: warn from 50 ms of wall lateness, then each
                // time the lag doubles.
                let quiet = last_warn.is_none_or(|t| now.duration_since(t) >= LAG_WARN_EVERY);
                if late > 0.05 && lag > 2.0 * warned_lag && quiet {
                    tracing::warn!(
                        lag_engine_s = lag,
                        engine_time = end,
                        time_scale = scale,
                        "the simulated engine is behind wall time × scale: the CPU cannot keep up; \
                         timings stay in engine time but the run takes longer than scaled"
                    );
                    warned_lag = lag;
                    last_warn = Some(now);
                }
                tokio::task::yield_now().await;
            } else {
                if warned_lag > 0.0
                    && last_warn.is_some_and(|t| now.duration_since(t) >= LAG_WARN_EVERY)
                {
                    tracing::info!(
                        engine_time = end,
                        "the simulated engine caught up with wall time"
                    );
                    warned_lag = 0.0;
                }
                shared.lock().lag_seconds = 0.0;
                sleep_until(deadline, precise).await;
            }
        } else {
            steps_since_yield += 1;
            if steps_since_yield >= 16 {
                steps_since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
        // First tokens go out first: a step's other events are one more token of streams
        // already running, and a first token's delay is the TTFT clients measure.
        pending.sort_by_key(|(_, e)| !matches!(e, EngineEvent::First { .. }));
        let mut inner = shared.lock();
        let Inner { senders, keys, .. } = &mut *inner;
        for (key, event) in pending.drain(..) {
            deliver(senders, keys, key, event);
        }
    }
}

/// Sleep until `deadline`. tokio's timer wakes on whole milliseconds, after the deadline;
/// with `precise`, it is used only until 2 ms before, and the rest is slept on the OS clock
/// (blocking this thread, which runs nothing else).
async fn sleep_until(deadline: Instant, precise: bool) {
    if !precise {
        return tokio::time::sleep_until(deadline).await;
    }
    if let Some(coarse) = deadline.checked_sub(std::time::Duration::from_millis(2)) {
        if coarse > Instant::now() {
            tokio::time::sleep_until(coarse).await;
        }
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        std::thread::sleep(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::super::cost::CostModel;
    use super::*;
    use std::time::Duration;

    fn config(time_scale: f64) -> EngineConfig {
        EngineConfig {
            model: ModelProfile::builtin("qwen2.5-14b").unwrap(),
            gpu: GpuProfile::builtin("h100").unwrap(),
            max_total_tokens: 200_000,
            max_running_requests: 64,
            chunked_prefill_size: 8192,
            max_prefill_tokens: 16384,
            tp_size: 1,
            schedule_policy: SchedulePolicy::Fcfs,
            disable_radix_cache: false,
            time_scale,
            seed: 0,
        }
    }

    fn request(rid: &str, prompt: u32, output: u32) -> EngineRequest {
        EngineRequest {
            rid: rid.to_string(),
            input_ids: (0..prompt).collect(),
            output_ids: (1000..1000 + output).collect(),
            max_new_tokens: output,
        }
    }

    async fn collect(mut sub: Submitted) -> Vec<EngineEvent> {
        let mut out = Vec::new();
        while let Some(e) = sub.events.recv().await {
            out.push(e);
        }
        out
    }

    /// On its own thread the engine sleeps on the OS clock: no event reaches a request before
    /// its engine time (at scale 1, wall time since the engine's epoch), and every one
    /// arrives.
    #[tokio::test]
    async fn the_engine_thread_never_delivers_an_event_before_its_time() {
        let engine = Engine::start_on_thread(config(1.0));
        let epoch = engine.epoch_unix();
        let unix = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        let mut subs = vec![engine.submit(request("a", 2000, 4))];
        tokio::time::sleep(Duration::from_millis(20)).await;
        subs.push(engine.submit(request("b", 3000, 3)));
        let mut seen = 0;
        for mut sub in subs {
            while let Some(ev) = sub.events.recv().await {
                let received = unix();
                let at = match ev {
                    EngineEvent::First { at, .. }
                    | EngineEvent::Progress { at, .. }
                    | EngineEvent::Finished { at, .. }
                    | EngineEvent::Aborted { at, .. } => at,
                };
                // 0.1 ms: the real-time and monotonic clocks were read one after the other.
                assert!(
                    received >= epoch + at - 1e-4,
                    "{ev:?} arrived {:.3} ms early",
                    (epoch + at - received) * 1e3
                );
                seen += 1;
            }
        }
        assert!(seen >= 5, "{seen} events");
    }

    #[tokio::test]
    async fn a_past_instant_maps_to_its_engine_time() {
        let engine = Engine::start_on_thread(config(100.0));
        let before = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = engine.now();
        let then = engine.time_at(before);
        assert!(then <= now && then >= 0.0);
        // 50 ms of wall time at scale 100 is 5 s of engine time.
        assert!(now - then >= 5.0, "{now} vs {then}");
        assert!(engine.time_at(std::time::Instant::now()) <= engine.now());
    }

    #[tokio::test(start_paused = true)]
    async fn events_arrive_at_their_engine_time_divided_by_the_scale() {
        let engine = Engine::start(config(2.0));
        let cost = CostModel::new(engine.config().model.clone(), engine.config().gpu.clone());
        let t0 = Instant::now();
        let mut sub = engine.submit(request("a", 4000, 3));
        assert_eq!(sub.received_at, 0.0);
        let first = sub.events.recv().await.unwrap();
        let wall = t0.elapsed().as_secs_f64();
        let prefill = cost.prefill_one_s(4000, 0);
        assert_eq!(
            first,
            EngineEvent::First {
                cached_tokens: 0,
                scheduled_at: 0.0,
                at: prefill
            }
        );
        assert!(
            (wall - prefill / 2.0).abs() < 1e-3,
            "{wall} vs {}",
            prefill / 2.0
        );
        let rest = collect(sub).await;
        let Some(EngineEvent::Finished {
            completion_tokens: 3,
            at,
            ..
        }) = rest.last()
        else {
            panic!("{rest:?}");
        };
        let expected = prefill + cost.decode_step_s(1, 4001) + cost.decode_step_s(1, 4002);
        assert!((at - expected).abs() < 1e-9);
        assert!((t0.elapsed().as_secs_f64() - expected / 2.0).abs() < 1e-3);
        assert_eq!(engine.stats().lag_seconds, 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_is_skipped_and_the_second_turn_hits_the_cache() {
        let engine = Engine::start(config(1.0));
        let turn1 = collect(engine.submit(request("t1", 2000, 50))).await;
        assert!(matches!(turn1.last(), Some(EngineEvent::Finished { .. })));
        tokio::time::sleep(Duration::from_secs(10)).await; // think time
        let received = engine.now();
        // Turn 2 resends turn 1 (prompt + output) and appends an observation.
        let mut turn2 = request("t2", 2000, 5);
        turn2.input_ids.extend(1000..1050);
        turn2.input_ids.extend(5000..5100);
        let mut sub = engine.submit(turn2.clone());
        assert!((sub.received_at - received).abs() < 1e-6 && received >= 10.0);
        match sub.events.recv().await.unwrap() {
            EngineEvent::First {
                cached_tokens, at, ..
            } => {
                // Turn 1's prompt + output but its last token (SGLang caches no KV for it).
                assert_eq!(cached_tokens, 2049);
                assert!(at > received && at < received + 0.5, "{at} {received}");
            }
            e => panic!("{e:?}"),
        }
        assert!(!engine.flush_cache().await, "t2 is still running");
        collect(sub).await;
        assert!(engine.flush_cache().await);
        let again = collect(engine.submit(turn2)).await;
        assert!(matches!(
            again[0],
            EngineEvent::First {
                cached_tokens: 0,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_receiver_aborts_and_frees_the_request() {
        let engine = Engine::start(config(1.0));
        let sub = engine.submit(request("gone", 1000, 10_000));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(engine.stats().core.running, 1);
        drop(sub);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stats = engine.stats();
        assert_eq!(
            (
                stats.core.running,
                stats.core.queued,
                stats.core.used_tokens
            ),
            (0, 0, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn abort_by_rid_sends_aborted() {
        let engine = Engine::start(config(1.0));
        let mut sub = engine.submit(request("x", 100, 10_000));
        assert!(matches!(
            sub.events.recv().await,
            Some(EngineEvent::First { .. })
        ));
        engine.abort("x");
        engine.abort("unknown");
        let rest = collect(sub).await;
        assert!(
            matches!(rest.last(), Some(EngineEvent::Aborted { .. })),
            "{rest:?}"
        );
    }

    #[tokio::test]
    async fn infinite_scale_never_sleeps_and_reports_engine_time() {
        let engine = Engine::start(config(f64::INFINITY));
        let wall = std::time::Instant::now();
        let events = collect(engine.submit(request("fast", 30_000, 2000))).await;
        // ~40 engine seconds of work in well under a wall second.
        let Some(EngineEvent::Finished { at, .. }) = events.last() else {
            panic!("{events:?}");
        };
        assert!(*at > 20.0, "{at}");
        assert!(wall.elapsed() < Duration::from_secs(5));
        assert_eq!(engine.now(), *at);
        assert_eq!(events.len(), 2001);
    }

    #[tokio::test]
    async fn falling_behind_wall_time_is_reported_not_hidden() {
        // 10⁹ engine seconds per wall second: no CPU keeps up with ~15 ms decode steps.
        let engine = Engine::start(config(1e9));
        let cost = CostModel::new(engine.config().model.clone(), engine.config().gpu.clone());
        let mut sub = engine.submit(request("late", 1000, 2000));
        let mut lag_seen = 0.0f64;
        let mut last = None;
        while let Some(event) = sub.events.recv().await {
            lag_seen = lag_seen.max(engine.stats().lag_seconds);
            last = Some(event);
        }
        assert!(lag_seen > 0.0);
        // Engine time itself is not distorted: the answer took its modelled time.
        let Some(EngineEvent::Finished { at, .. }) = last else {
            panic!("{last:?}");
        };
        let expected = cost.prefill_one_s(1000, 0)
            + (1001..3000).map(|c| cost.decode_step_s(1, c)).sum::<f64>();
        let took = at - sub.received_at;
        assert!(
            (took - expected).abs() < 1e-6,
            "{at} - {} vs {expected}",
            sub.received_at
        );
    }

    #[tokio::test]
    async fn a_request_reaching_an_engine_that_runs_behind_waits_for_its_clock() {
        // At 10⁹ the engine is behind from its first step: a request sent while another runs
        // arrives at an engine time its clock has not reached, and must not be scheduled
        // (nor answered) before it.
        let engine = Engine::start(config(1e9));
        let mut long = engine.submit(request("long", 1000, 2000));
        assert!(matches!(
            long.events.recv().await,
            Some(EngineEvent::First { .. })
        ));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let late = engine.submit(request("late", 500, 3));
        let received = late.received_at;
        let events = collect(late).await;
        let EngineEvent::First {
            scheduled_at, at, ..
        } = events[0]
        else {
            panic!("{events:?}");
        };
        assert!(
            scheduled_at >= received && at > received,
            "scheduled {scheduled_at}, first {at}, received {received}"
        );
        collect(long).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_engine_does_not_step() {
        let engine = Engine::start(config(1.0));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(engine.shared.lock().core.stats().steps_total, 0);
        collect(engine.submit(request("one", 10, 1))).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(engine.shared.lock().core.stats().steps_total, 1);
    }
}
