//! The engine handle: the async face of the simulated scheduler. (STUB: emits everything at
//! once; the real scheduler replaces the body, the API below is the contract.)

use super::cost::{GpuProfile, ModelProfile};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

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
    pub schedule_policy: SchedulePolicy,
    pub disable_radix_cache: bool,
    /// Engine seconds per wall second.
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
}

/// What happens to a request, in engine time (seconds since the engine started).
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// Prefill finished and the first token was sampled.
    First { cached_tokens: u32, at: f64 },
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

/// A snapshot of the engine for `/metrics` and `/server_info`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub running: u64,
    pub queued: u64,
    pub used_tokens: u64,
    pub max_total_num_tokens: u64,
    pub token_usage: f64,
    /// Last prefill batch's hit ratio.
    pub cache_hit_rate: f64,
    pub gen_throughput: f64,
    pub prefill_compute_tokens_total: u64,
    pub prefill_cache_tokens_total: u64,
    pub decode_tokens_total: u64,
    pub retractions_total: u64,
    /// How far engine time is behind wall time × scale (seconds, engine time); 0 when on time.
    pub lag_seconds: f64,
}

#[derive(Clone)]
pub struct Engine {
    cfg: Arc<EngineConfig>,
    start: std::time::Instant,
    submitted: Arc<AtomicU64>,
}

impl Engine {
    /// Start the scheduler (needs a tokio runtime).
    pub fn start(cfg: EngineConfig) -> Engine {
        Engine {
            cfg: Arc::new(cfg),
            start: std::time::Instant::now(),
            submitted: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Engine time now (seconds since start).
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.cfg.time_scale
    }

    pub fn submit(&self, req: EngineRequest) -> Submitted {
        self.submitted.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let at = self.now();
        let n = req.output_ids.len() as u32;
        let _ = tx.send(EngineEvent::First {
            cached_tokens: 0,
            at,
        });
        for i in 2..=n {
            let _ = tx.send(EngineEvent::Progress {
                completion_tokens: i,
                at,
            });
        }
        let _ = tx.send(EngineEvent::Finished {
            completion_tokens: n,
            at,
            retractions: 0,
        });
        Submitted {
            events: rx,
            received_at: at,
        }
    }

    /// Abort a request by id (no-op if unknown).
    pub fn abort(&self, _rid: &str) {}

    /// Empty the radix cache. `false` (nothing done) while requests are running or queued.
    pub async fn flush_cache(&self) -> bool {
        true
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            max_total_num_tokens: self.cfg.max_total_tokens,
            ..Default::default()
        }
    }
}
