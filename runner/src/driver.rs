//! One cell of a sweep: a closed loop of N workers over the cell's trajectories.
//!
//! Who runs next is pure code ([`ClosedLoop`], [`think_sleep`]); the workers only take the
//! next trajectory, send its turns in order, record each turn and sleep the think time.
//! A failed turn is recorded and ends its trajectory; the worker takes the next one.

use crate::chat_template::ChatTemplate;
use crate::client::{Api, Client, Outcome, Prompt, Sampling, Session, StopMatch};
use crate::console::GpuProgress;
use crate::conversation::Conversation;
use crate::plan::ThinkTime;
use crate::record::{Recorder, Todo};
use crate::workload::{Trajectory, Workload};
use anyhow::Context as _;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use turnbench_schema::manifest::CellId;
use turnbench_schema::{CacheMode, HistorySource, ItlSummary, TurnRecord};

/// The closed loop's queue: each free worker takes the next trajectory (in dataset order).
#[derive(Debug, Default)]
pub struct ClosedLoop {
    queue: VecDeque<(usize, u32)>,
}

impl ClosedLoop {
    pub fn new(todo: Todo) -> ClosedLoop {
        ClosedLoop { queue: todo.into() }
    }

    /// The next (trajectory, attempt) to run, or `None` when the cell is drained.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<(usize, u32)> {
        self.queue.pop_front()
    }
}

/// Wall time to sleep for `engine_s` seconds of think time at `time_scale` engine seconds per
/// wall second (1 for real servers).
pub fn think_sleep(engine_s: f64, time_scale: f64) -> Duration {
    if engine_s <= 0.0 || !engine_s.is_finite() {
        return Duration::ZERO;
    }
    // A tool time beyond what a Duration holds (1e308 s in a dataset, say) sleeps the most
    // one can, rather than panic.
    Duration::try_from_secs_f64(engine_s / time_scale).unwrap_or(Duration::MAX)
}

/// Sleep `d` of wall time, to within a fraction of a millisecond. tokio's timer fires on its
/// next millisecond tick at or after a deadline (half a millisecond late on average, even for
/// a zero sleep), which a simulated engine's time scale multiplies: at 100, 50 ms of engine
/// time added to each replayed think time. So the timer sleeps to two milliseconds before the
/// deadline (it can fire a millisecond late, and the worker's `epoll_wait` rounds its own
/// timeout up to the next millisecond: one millisecond was not always early enough, 0.6 ms
/// late at the 90th percentile on a 2-core VM), and a blocking thread's sleep (precise to
/// ~0.1 ms) does the rest; nothing to sleep, no sleep.
pub async fn pause(d: Duration) {
    if d.is_zero() {
        return;
    }
    // (A year is as good as forever, and an instant that far on cannot overflow.)
    let d = d.min(Duration::from_secs(365 * 86_400));
    let deadline = tokio::time::Instant::now() + d;
    let early = Duration::from_millis(2);
    if d > early * 2 {
        tokio::time::sleep_until(deadline - early).await;
    }
    let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

/// Everything a cell's workers share.
pub struct CellCtx {
    pub cell: CellId,
    pub client: Client,
    pub api: Api,
    /// How native-API prompts are templated.
    pub template: ChatTemplate,
    pub sampling: Sampling,
    pub history: HistorySource,
    pub think: ThinkTime,
    /// Engine seconds per wall second: recorded times are wall × this.
    pub time_scale: f64,
    /// Think time is slept for `think / think_scale` wall seconds (infinite for a simulated
    /// engine that does not wait at all).
    pub think_scale: f64,
    /// Recorded answer lengths in tokens per (trajectory, turn), for `output_len = recorded`.
    pub recorded_lens: Option<Arc<Vec<Vec<Option<u32>>>>>,
    pub workload: Arc<Workload>,
    pub recorder: Arc<Recorder>,
    pub progress: Arc<GpuProgress>,
    /// Unique per run, so request ids never collide across runs on a shared server.
    pub nonce: String,
    /// (client TTFT, server TTFT) of the cell's successful turns that had both, engine
    /// seconds: their difference is what the harness adds (network, HTTP, the client).
    pub ttft_pairs: Mutex<Vec<(f64, f64)>>,
    /// Turns whose inter-token gaps are per chunk ([`crate::client::Outcome::itl_per_chunk`]).
    pub itl_per_chunk: std::sync::atomic::AtomicU64,
    /// Successful turns the server gave no generated-token count for.
    pub no_counts: std::sync::atomic::AtomicU64,
    /// Turns that generated more tokens than asked for (a server that ignored the limit).
    pub over_length: std::sync::atomic::AtomicU64,
}

/// The cell's server stopped answering: a turn lost its connection and the server no longer
/// answers at all. That is not a result of the cell (the turns in flight are not recorded):
/// the cell stops, to be run again once the server is back ([`crate::sweep`]).
#[derive(Debug)]
pub struct ServerDown(pub String);

impl std::fmt::Display for ServerDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server stopped answering ({})", self.0)
    }
}

impl std::error::Error for ServerDown {}

/// A turn's failure that may be the server's death rather than its answer: then the server
/// is asked whether it is still there.
fn lost_connection(error: &str) -> bool {
    [
        "connection error",
        "stream dropped",
        "stalled",
        "open_session",
    ]
    .iter()
    .any(|p| error.starts_with(p))
}

/// `Err(ServerDown)` when `error` came from a server that no longer answers.
async fn check_server(ctx: &CellCtx, error: &str) -> anyhow::Result<()> {
    if lost_connection(error) && !ctx.client.answers().await {
        return Err(ServerDown(error.to_string()).into());
    }
    Ok(())
}

/// The trajectories a cell has in progress over time: each start (a worker takes it) and end,
/// with the count after it, in the order they happened (instants taken under the lock, so
/// non-decreasing). A turn's `in_flight` is the count at its send, which is dated only once
/// the request is written (a new connection may take other trajectories' writes first), so it
/// is looked up afterwards rather than read when the request is made.
#[derive(Default)]
struct Active(Mutex<Vec<(Instant, u32)>>);

impl Active {
    fn start(&self) {
        self.step(true);
    }

    fn end(&self) {
        self.step(false);
    }

    fn step(&self, up: bool) {
        let mut e = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = e.last().map_or(0, |x| x.1);
        e.push((Instant::now(), if up { n + 1 } else { n.saturating_sub(1) }));
    }

    /// Trajectories in progress at `t`.
    fn at(&self, t: Instant) -> u32 {
        let e = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match e.partition_point(|x| x.0 <= t) {
            0 => 0,
            i => e[i - 1].1,
        }
    }
}

/// Run one cell to completion. Only a failure to write results, or a chat template that fails
/// to render (or, in session mode, is not prefix-stable), is an error.
pub async fn run_cell(ctx: Arc<CellCtx>, todo: Todo) -> anyhow::Result<()> {
    // No more workers than trajectories to run (a concurrency of a million with ten
    // trajectories is ten workers, not a million idle tasks).
    let workers_n = (ctx.cell.concurrency as usize).min(todo.len());
    let schedule = Arc::new(Mutex::new(ClosedLoop::new(todo)));
    let in_flight = Arc::new(Active::default());
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..workers_n {
        let (ctx, schedule, in_flight) = (ctx.clone(), schedule.clone(), in_flight.clone());
        workers.spawn(async move {
            loop {
                let next = schedule.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((t, attempt)) = next else {
                    return Ok::<_, anyhow::Error>(());
                };
                in_flight.start();
                let r = run_trajectory(&ctx, t, attempt, t0, &in_flight).await;
                in_flight.end();
                ctx.progress.trajectory_done();
                r?;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    Ok(())
}

async fn run_trajectory(
    ctx: &CellCtx,
    t: usize,
    attempt: u32,
    t0: Instant,
    in_flight: &Active,
) -> anyhow::Result<()> {
    // (A synthetic trajectory is made here, and dropped when it is done.)
    let traj = ctx.workload.trajectories.get(t);
    let mode = ctx.cell.cache_mode;
    let mut conv = Conversation::with_template(&ctx.template, &traj.prelude)
        .with_context(|| format!("trajectory {:?}", traj.id))?;
    let mut session: Option<String> = None;
    if mode == CacheMode::Session {
        let sent = Instant::now();
        match ctx.client.open_session().await {
            Ok(id) => session = Some(id),
            Err(e) => {
                let out = failed_outcome(sent, format!("open_session: {e:#}"));
                check_server(ctx, out.error.as_deref().unwrap_or("")).await?;
                let rec = record(
                    ctx,
                    t,
                    attempt,
                    0,
                    &out,
                    t0,
                    in_flight.at(out.timing.send),
                    0.0,
                );
                ctx.progress.turn_done(0, true);
                return ctx.recorder.turn(rec);
            }
        }
    }
    let result = run_turns(
        ctx,
        &traj,
        t,
        attempt,
        t0,
        in_flight,
        &mut conv,
        session.as_deref(),
    )
    .await;
    if let Some(id) = session {
        if let Err(e) = ctx.client.close_session(&id).await {
            tracing::warn!("close_session {id}: {e:#}");
        }
    }
    result
}

/// The turns of trajectory `t`, in order, until one fails.
#[allow(clippy::too_many_arguments)]
async fn run_turns(
    ctx: &CellCtx,
    traj: &Trajectory,
    t: usize,
    attempt: u32,
    t0: Instant,
    in_flight: &Active,
    conv: &mut Conversation,
    session: Option<&str>,
) -> anyhow::Result<()> {
    let mode = ctx.cell.cache_mode;
    let mut parent: Option<String> = None;
    // Whether the parent holds the answer the conversation has, and the `offset` that cuts
    // what it holds past the answer (see `after_answer`).
    let mut parent_holds: (bool, Option<i64>) = (true, None);
    let n = traj.turns.len();
    for (k, turn) in traj.turns.iter().enumerate() {
        let rid = format!(
            "tb-{}-{}-{}-{}-{t}-{attempt}-{k}",
            ctx.nonce, ctx.cell.gpu, mode, ctx.cell.concurrency
        );
        let mut sampling = ctx.sampling.clone();
        if let Some(lens) = &ctx.recorded_lens {
            // The recorded answer's length; a turn without one (the dataset ends on a user
            // message, or recorded an empty answer) gets `max_new_tokens`, fixed all the
            // same: left to the engine, its length would differ from cell to cell.
            if let Some(len) = lens.get(t).and_then(|v| v.get(k)).copied().flatten() {
                sampling.max_new_tokens = len.max(1);
            }
            sampling.ignore_eos = true;
            // `ignore_eos` does not stop SGLang from ending at a stop string (which the
            // answer may well produce, `<|im_end|>` say): the length is fixed only without.
            sampling.stop.clear();
        }
        // The prompt borrows these (declared here, set by the arm that needs them).
        let (text, sess);
        let prompt = match (ctx.api, session) {
            (Api::Openai, _) => Prompt::Messages(conv.messages()),
            (Api::Native, Some(id)) => {
                text = conv
                    .new_text()
                    .with_context(|| format!("trajectory {:?}, turn {k}", traj.id))?;
                sess = Session {
                    id: id.to_string(),
                    rid: parent.clone(),
                    drop_previous_output: parent.is_some() && !parent_holds.0,
                    offset: parent.as_ref().and(parent_holds.1),
                };
                Prompt::Text {
                    text: &text,
                    session: Some(&sess),
                }
            }
            (Api::Native, None) => {
                text = conv.full_text();
                Prompt::Text {
                    text: &text,
                    session: None,
                }
            }
        };
        let out = ctx.client.generate(prompt, &sampling, &rid).await;
        if let Some(e) = &out.error {
            check_server(ctx, e).await?;
        }
        let failed = out.error.is_some();
        let last = k + 1 == n;
        // What is slept, in recorded time: none after the last or a failed turn, and none for
        // an engine that never waits (`inf`, whose records are the harness's wall time).
        let think = if failed || last || ctx.think_scale.is_infinite() {
            0.0
        } else {
            ctx.think.of(turn.think_time)
        };
        let active = in_flight.at(out.timing.send);
        let rec = record(ctx, t, attempt, k as u32, &out, t0, active, think);
        if let (None, Some(c), Some(s)) = (&rec.error, rec.ttft, out.server_ttft) {
            ctx.ttft_pairs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((c, s));
        }
        if out.itl_per_chunk {
            ctx.itl_per_chunk.fetch_add(1, Ordering::Relaxed);
        }
        if !failed && out.completion_tokens.is_none() {
            ctx.no_counts.fetch_add(1, Ordering::Relaxed);
        }
        if out
            .completion_tokens
            .is_some_and(|c| c > u64::from(sampling.max_new_tokens))
        {
            ctx.over_length.fetch_add(1, Ordering::Relaxed);
        }
        ctx.progress
            .turn_done(out.completion_tokens.unwrap_or(0), failed);
        ctx.recorder.turn(rec)?;
        if failed || last {
            break;
        }
        let (answer, generated) = match (&turn.recorded, ctx.history) {
            (Some(r), HistorySource::Recorded) => (r.as_str(), false),
            _ => (out.text.as_str(), true),
        };
        parent_holds = after_answer(generated, &out);
        conv.advance(answer, parent_holds.0, &turn.after)
            .with_context(|| format!("trajectory {:?}, after turn {k}", traj.id))?;
        parent = Some(out.id.clone().unwrap_or(rid));
        pause(think_sleep(think, ctx.think_scale)).await;
    }
    Ok(())
}

/// Session mode: whether a finished turn's request holds the answer the conversation goes on
/// with, and the `offset` that cuts off what it holds past it. SGLang's session appends the
/// next request to the parent's prompt + output tokens, and the output keeps what the text
/// leaves out: the matched stop token (EOS, e.g. Qwen's `<|im_end|>`, which the template then
/// writes again) or the tokens of a matched stop string (e.g. the seed's `\n\nUSER:`). A stop
/// token is cut with `offset = -1`; after a stop string (or a stop the server does not
/// describe) the parent's output is dropped and the answer sent again as text (the radix
/// cache still holds its KV). A recorded answer is never held.
fn after_answer(generated: bool, out: &Outcome) -> (bool, Option<i64>) {
    match (generated, out.finish_reason.as_deref(), out.stop_match) {
        (false, ..) => (false, None),
        (true, Some("stop"), Some(StopMatch::Token)) => (true, Some(-1)),
        (true, Some("stop"), _) => (false, None),
        (true, ..) => (true, None),
    }
}

fn failed_outcome(at: Instant, error: String) -> Outcome {
    Outcome {
        timing: crate::client::Timing {
            send: at,
            first: None,
            chunks: vec![],
            last_data: None,
            end: Instant::now(),
        },
        text: String::new(),
        id: None,
        prompt_tokens: None,
        cached_tokens: None,
        completion_tokens: None,
        finish_reason: None,
        stop_match: None,
        error: Some(error),
        server_e2e: None,
        server_sent: None,
        server_ttft: None,
        server_first_ready: None,
        retractions: None,
        itl_per_chunk: false,
    }
}

/// Instants in, offsets out: the turn record of one outcome (times × the time scale).
#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &CellCtx,
    t: usize,
    attempt: u32,
    turn: u32,
    out: &Outcome,
    t0: Instant,
    in_flight: u32,
    think_time: f64,
) -> TurnRecord {
    let s = ctx.time_scale;
    let off = |i: Instant| i.saturating_duration_since(t0).as_secs_f64() * s;
    let tm = &out.timing;
    let itl: Vec<f64> = tm.itl().into_iter().map(|g| g * s).collect();
    TurnRecord {
        gpu: ctx.cell.gpu.clone(),
        cache_mode: ctx.cell.cache_mode,
        concurrency: ctx.cell.concurrency,
        traj: t as u32,
        traj_id: ctx.workload.trajectories.id(t),
        turn,
        attempt,
        t_send: off(tm.send),
        t_first_token: tm.first.map(off),
        t_end: off(tm.end),
        ttft: tm.ttft().map(|d| d.as_secs_f64() * s),
        e2e: Some(tm.e2e().as_secs_f64() * s),
        itl: ItlSummary::of(&itl),
        prompt_tokens: out.prompt_tokens,
        cached_tokens: out.cached_tokens,
        completion_tokens: out.completion_tokens,
        think_time,
        finish_reason: out.finish_reason.clone(),
        error: out.error.clone(),
        in_flight,
        // (A simulated engine without cost keeps its clock apart from wall time: its TTFT is
        // the cost model's, the turn's the harness's own, and one is no part of the other.)
        server_ttft: out
            .server_ttft
            .filter(|v| v.is_finite() && *v >= 0.0 && ctx.think_scale.is_finite()),
        retractions: out.retractions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_loop_hands_out_trajectories_in_order_once() {
        let mut s = ClosedLoop::new(vec![(0, 0), (3, 1), (4, 0)]);
        assert_eq!(s.next(), Some((0, 0)));
        assert_eq!(s.next(), Some((3, 1)));
        assert_eq!(s.next(), Some((4, 0)));
        assert_eq!(s.next(), None);
    }

    #[test]
    fn think_time_is_engine_time_divided_by_the_scale() {
        assert_eq!(think_sleep(2.0, 100.0), Duration::from_millis(20));
        assert_eq!(think_sleep(0.0, 1.0), Duration::ZERO);
        // No panic where a dataset's tool time does not fit a Duration.
        assert_eq!(think_sleep(1e308, 1.0), Duration::MAX);
        assert_eq!(ThinkTime::Scale(0.5).of(4.0), 2.0);
        assert_eq!(ThinkTime::Off.of(4.0), 0.0);
    }

    #[test]
    fn in_flight_is_the_count_at_the_send() {
        let active = Active::default();
        let tick = || std::thread::sleep(Duration::from_millis(1));
        let before = Instant::now();
        tick();
        active.start();
        active.start();
        tick();
        let both = Instant::now();
        tick();
        active.end();
        tick();
        let one = Instant::now();
        tick();
        active.start();
        assert_eq!(active.at(before), 0);
        assert_eq!(active.at(both), 2);
        assert_eq!(active.at(one), 1);
        assert_eq!(active.at(Instant::now()), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_think_time_sleeps_without_overflowing_the_clock() {
        // `think_sleep` gives Duration::MAX for a tool time past what a Duration holds.
        let slept = tokio::time::timeout(Duration::from_secs(30 * 86_400), pause(Duration::MAX));
        assert!(slept.await.is_err(), "still asleep after 30 days");
    }

    #[tokio::test(start_paused = true)]
    async fn think_sleep_waits_on_the_paused_clock() {
        let start = tokio::time::Instant::now();
        tokio::time::sleep(think_sleep(30.0, 10.0)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
