//! The simulated engine's scheduler: pure, synchronous, with an explicit engine clock.
//!
//! It follows SGLang's scheduler loop. Each [`Core::step`]:
//! 1. **Decode memory.** Every running request (prefill done) needs one more KV slot. When
//!    free + evictable slots are short, the newest admitted request is *retracted*: its KV is
//!    released, its output so far kept, and it goes back to the waiting queue to be prefilled
//!    again later (counted in `retractions`). The reservation ratio then rises to
//!    `(Σ generated + 20·B) / Σ max_new_tokens` as in SGLang's `retract_decode`.
//! 2. **Prefill batch.** The request being prefilled in chunks continues first; then waiting
//!    requests (those that arrived by the step's start: a request stamped later than the
//!    clock of an engine running behind waits for it) are admitted in policy order (`fcfs`: arrival order; `lpm`: longest cached
//!    prefix first, fcfs when more than 128 wait or the cache is off) while
//!    `max_running_requests` and memory allow, up to `chunked_prefill_size` new tokens per
//!    step (a request that does not fit is split; at most one request is mid-chunk) and
//!    `max_prefill_tokens` per batch (a whole request that does not fit waits).
//!    Admission matches the prompt (but its last token, which must be computed) in the radix
//!    cache: that is `cached_tokens`. Memory rule (SGLang's `PrefillAdder`): the newcomer's
//!    uncached tokens + `min(max_new_tokens, 4096)` must fit in free + evictable slots after
//!    the reserve of the running requests, `Σ min(max_new_tokens − generated, 4096) ×
//!    new_token_ratio` (ratio 0.7 decaying to 0.098 over 600 decode steps), and of the
//!    requests already admitted into this batch (their full `min(max_new_tokens, 4096)`).
//!    Like SGLang it reserves for `max_new_tokens`, not for the output the request will
//!    really produce (which the engine knows but a real scheduler does not); `max_new_tokens`
//!    is clipped so that prompt + output fits the pool, as SGLang clips it to `max_req_len`.
//! 3. **Time.** The step lasts `prefill(batch) + decode(running, Σ contexts)` from the
//!    [`CostModel`]; events are stamped with the clock at the step's end.
//! 4. **Events.** A finished prefill samples the first token (`First`; after a retraction
//!    the next token, `Progress`); each decode step emits one token per running request.
//! 5. **Caching.** Each computed prompt chunk goes into the radix tree at once, locked by
//!    its request (SGLang's `cache_unfinished_req`), so requests admitted later share it; a
//!    finished request's prompt + output is inserted and its path unlocked (evictable).
//!
//! Per step the work is O(running + admitted) and allocation-free, except for inserting
//! finished sequences and the `lpm` sort.

use super::cost::{CostModel, PrefillBatch};
use super::engine::{EngineConfig, EngineEvent, EngineRequest, SchedulePolicy};
use super::radix::{PrefixMatch, RadixCache};
use std::collections::{HashMap, VecDeque};

/// The caller's handle on a submitted request.
pub type ReqKey = u64;

const INIT_NEW_TOKEN_RATIO: f64 = 0.7;
const MIN_NEW_TOKEN_RATIO: f64 = INIT_NEW_TOKEN_RATIO * 0.14;
const NEW_TOKEN_RATIO_DECAY_STEPS: f64 = 600.0;
const RETRACT_DECODE_STEPS: u64 = 20;
const CLIP_MAX_NEW_TOKENS: u64 = 4096;
const LPM_MAX_QUEUE: usize = 128;
/// Decode steps per `gen_throughput` window (SGLang's `--decode-log-interval`).
const DECODE_LOG_INTERVAL: u64 = 40;

#[derive(Debug)]
struct Req {
    /// Prompt followed by the planned output.
    tokens: Vec<u32>,
    input_len: usize,
    output_len: usize,
    /// `max_new_tokens` (≥ `output_len`, clipped to the pool): what admission reserves for.
    max_new: usize,
    generated: usize,
    /// The locked cached prefix while admitted.
    prefix: Option<PrefixMatch>,
    /// Tokens of `tokens[..input_len + generated]` whose KV exists (cached or computed).
    filled: usize,
    /// KV slots held outside the radix tree.
    private: u64,
    cached_tokens: u32,
    first_sent: bool,
    retractions: u32,
    /// Admission order (the newest is retracted first).
    admitted: u64,
    /// Engine time the first prefill step began (the end of the queue wait).
    scheduled_at: f64,
}

impl Req {
    /// The sequence a (re-)prefill must cover: the prompt and the output emitted so far.
    fn prefill_target(&self) -> usize {
        self.input_len + self.generated
    }

    /// Output tokens SGLang's admission still reserves for: `max_new_tokens − generated`,
    /// clipped at 4096 (`SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION`).
    fn remaining_output(&self) -> u64 {
        ((self.max_new - self.generated) as u64).min(CLIP_MAX_NEW_TOKENS)
    }
}

/// Counters and gauges for `/metrics` (SGLang's scheduler series).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreStats {
    pub running: u64,
    pub queued: u64,
    /// KV slots in use and not evictable.
    pub used_tokens: u64,
    pub max_total_num_tokens: u64,
    pub token_usage: f64,
    /// The last prefill batch's cached / (cached + computed).
    pub cache_hit_rate: f64,
    /// Decode tokens per engine second over the last 40 decode steps.
    pub gen_throughput: f64,
    pub prefill_compute_tokens_total: u64,
    pub prefill_cache_tokens_total: u64,
    pub decode_tokens_total: u64,
    pub retractions_total: u64,
    pub steps_total: u64,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Engine time at the step's end.
    pub end: f64,
    pub duration: f64,
    pub prefill_tokens: u64,
    pub decode_batch: u64,
}

/// The scheduler state.
#[derive(Debug)]
pub struct Core {
    cost: CostModel,
    radix: RadixCache,
    max_running: usize,
    chunk_size: u64,
    max_prefill_tokens: u64,
    policy: SchedulePolicy,
    clock: f64,
    reqs: HashMap<ReqKey, Req>,
    /// Requests that reached the engine at an engine time the clock has not come to yet (an
    /// engine running behind wall time × scale), in arrival order: they join the waiting
    /// queue at the first step boundary at or after their arrival, never a step that began
    /// before they were sent.
    arriving: VecDeque<(f64, ReqKey)>,
    waiting: VecDeque<ReqKey>,
    /// Prefill done, decoding, in admission order.
    running: Vec<ReqKey>,
    /// The request part-way through a chunked prefill.
    chunked: Option<ReqKey>,
    /// Σ (prompt + generated) over `running`: the KV a decode step reads.
    running_kv: u64,
    new_token_ratio: f64,
    admissions: u64,
    events: Vec<(ReqKey, EngineEvent)>,
    admitted_now: Vec<ReqKey>,
    finished_now: Vec<ReqKey>,
    stats: CoreStats,
    window_tokens: u64,
    window_steps: u64,
    window_start: f64,
}

impl Core {
    pub fn new(cfg: &EngineConfig) -> Core {
        Core {
            cost: CostModel::with_tp(cfg.model.clone(), cfg.gpu.clone(), cfg.tp_size),
            radix: RadixCache::new(cfg.max_total_tokens, !cfg.disable_radix_cache),
            max_running: cfg.max_running_requests.max(1),
            chunk_size: (cfg.chunked_prefill_size as u64).max(1),
            max_prefill_tokens: cfg.max_prefill_tokens.max(1),
            policy: cfg.schedule_policy,
            clock: 0.0,
            reqs: HashMap::new(),
            arriving: VecDeque::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            chunked: None,
            running_kv: 0,
            new_token_ratio: INIT_NEW_TOKEN_RATIO,
            admissions: 0,
            events: Vec::new(),
            admitted_now: Vec::new(),
            finished_now: Vec::new(),
            stats: CoreStats {
                max_total_num_tokens: cfg.max_total_tokens,
                ..CoreStats::default()
            },
            window_tokens: 0,
            window_steps: 0,
            window_start: 0.0,
        }
    }

    /// Engine time (seconds since start) at the last step boundary.
    pub fn clock(&self) -> f64 {
        self.clock
    }

    /// Let idle time pass: the clock moves to `t` if it is behind.
    pub fn advance_to(&mut self, t: f64) {
        if t > self.clock {
            self.clock = t;
        }
    }

    /// Nothing running, chunked or waiting.
    pub fn is_idle(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn cost(&self) -> &CostModel {
        &self.cost
    }

    pub fn radix(&self) -> &RadixCache {
        &self.radix
    }

    /// Queue a request arriving now (at the clock). One that could never fit in the KV pool,
    /// or has no prompt, is aborted at once (the event is queued like any other).
    pub fn submit(&mut self, key: ReqKey, req: EngineRequest) {
        self.submit_at(key, req, self.clock);
    }

    /// Queue a request that arrived at engine time `arrived`: if the clock is behind it, the
    /// request waits for the clock to reach it before it can be scheduled.
    pub fn submit_at(&mut self, key: ReqKey, req: EngineRequest, arrived: f64) {
        let (input_len, output_len) = (req.input_ids.len(), req.output_ids.len());
        let total = (input_len + output_len) as u64;
        let refusal = if input_len == 0 {
            Some("the prompt is empty".to_string())
        } else if total + 1 > self.radix.capacity() {
            Some(format!(
                "prompt ({input_len}) + output ({output_len}) tokens exceed the KV pool \
                 (max_total_num_tokens = {})",
                self.radix.capacity()
            ))
        } else if self.reqs.contains_key(&key) {
            Some(format!("request key {key} is already in the engine"))
        } else {
            None
        };
        if let Some(message) = refusal {
            self.events.push((
                key,
                EngineEvent::Aborted {
                    message,
                    at: self.clock,
                },
            ));
            return;
        }
        // SGLang clips max_new_tokens so that prompt + output fits the pool
        // (`max_req_len − prompt − 1`); the planned output always fits (checked above).
        let room = (self.radix.capacity() as usize).saturating_sub(input_len + 1);
        let max_new = (req.max_new_tokens as usize).min(room).max(output_len);
        let mut tokens = req.input_ids;
        tokens.extend_from_slice(&req.output_ids);
        self.reqs.insert(
            key,
            Req {
                tokens,
                input_len,
                output_len,
                max_new,
                generated: 0,
                prefix: None,
                filled: 0,
                private: 0,
                cached_tokens: 0,
                first_sent: false,
                retractions: 0,
                admitted: 0,
                scheduled_at: 0.0,
            },
        );
        if arrived > self.clock {
            // Arrival times come from one monotonic clock, so this queue stays in order.
            self.arriving.push_back((arrived, key));
        } else {
            self.waiting.push_back(key);
        }
    }

    /// Move the requests that have arrived by now into the waiting queue; with nothing else
    /// to do, let idle time pass up to the next arrival.
    fn admit_arrivals(&mut self) {
        let nothing_else =
            self.running.is_empty() && self.chunked.is_none() && self.waiting.is_empty();
        if nothing_else {
            if let Some(&(at, _)) = self.arriving.front() {
                self.advance_to(at);
            }
        }
        while let Some(&(at, key)) = self.arriving.front() {
            if at > self.clock {
                break;
            }
            self.arriving.pop_front();
            self.waiting.push_back(key);
        }
    }

    /// Remove a request wherever it is, freeing its KV; queues `Aborted` with `message`.
    /// `false` if the key is unknown (already finished).
    pub fn abort(&mut self, key: ReqKey, message: &str) -> bool {
        let Some(mut req) = self.reqs.remove(&key) else {
            return false;
        };
        if let Some(i) = self.waiting.iter().position(|&k| k == key) {
            self.waiting.remove(i);
        }
        if let Some(i) = self.arriving.iter().position(|&(_, k)| k == key) {
            self.arriving.remove(i);
        }
        if let Some(i) = self.running.iter().position(|&k| k == key) {
            self.running.remove(i);
            self.running_kv -= req.prefill_target() as u64;
        }
        if self.chunked == Some(key) {
            self.chunked = None;
        }
        self.free_kv(&mut req);
        self.events.push((
            key,
            EngineEvent::Aborted {
                message: message.to_string(),
                at: self.clock,
            },
        ));
        true
    }

    /// Empty the radix cache (`/flush_cache`); refused while any request is in the engine.
    pub fn flush_cache(&mut self) -> bool {
        self.is_idle() && self.radix.reset()
    }

    /// Take the events produced since the last call.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, (ReqKey, EngineEvent)> {
        self.events.drain(..)
    }

    pub fn stats(&self) -> CoreStats {
        let mut s = self.stats.clone();
        s.running = (self.running.len() + usize::from(self.chunked.is_some())) as u64;
        s.queued = (self.waiting.len() + self.arriving.len()) as u64;
        s.used_tokens = self.radix.capacity() - self.radix.available();
        s.token_usage = if self.radix.capacity() == 0 {
            0.0
        } else {
            s.used_tokens as f64 / self.radix.capacity() as f64
        };
        s
    }

    fn free_kv(&mut self, req: &mut Req) {
        self.radix.release(req.private);
        req.private = 0;
        if let Some(m) = req.prefix.take() {
            self.radix.unlock(m);
        }
        req.filled = 0;
    }

    /// Run one scheduler iteration. `None` when there is nothing to do (idle, or every
    /// waiting request is blocked and nothing runs).
    pub fn step(&mut self) -> Option<StepReport> {
        if self.reqs.is_empty() {
            return None;
        }
        self.admit_arrivals();
        self.make_decode_room();
        let decode_batch = self.running.len() as u64;
        if decode_batch > 0 {
            let ok = self.radix.alloc(decode_batch);
            debug_assert!(ok, "decode room was made");
        }
        let decode_kv = self.running_kv;
        let (batch, hit, computed) = self.schedule_prefill();
        if decode_batch == 0 && batch.is_empty() {
            return None;
        }
        let duration =
            self.cost.prefill_s(&batch) + self.cost.decode_step_s(decode_batch, decode_kv);
        self.clock += duration;
        self.stats.steps_total += 1;
        if !batch.is_empty() {
            self.stats.prefill_compute_tokens_total += computed;
            self.stats.prefill_cache_tokens_total += hit;
            if hit + computed > 0 {
                self.stats.cache_hit_rate = hit as f64 / (hit + computed) as f64;
            }
        }
        if decode_batch > 0 {
            self.decode_tokens(decode_batch);
        }
        if let Some(key) = self.chunked {
            self.commit_prefill(key);
        }
        for i in 0..self.admitted_now.len() {
            let key = self.admitted_now[i];
            self.commit_prefill(key);
        }
        self.finish_prefills();
        for i in 0..self.finished_now.len() {
            let key = self.finished_now[i];
            self.finish(key);
        }
        self.finished_now.clear();
        Some(StepReport {
            end: self.clock,
            duration,
            prefill_tokens: batch.new_tokens,
            decode_batch,
        })
    }

    /// Retract the newest requests until every running request can take one more slot.
    fn make_decode_room(&mut self) {
        while !self.running.is_empty() && self.radix.available() < self.running.len() as u64 {
            // The newest admitted among the running and the chunked request.
            let newest_running = *self.running.last().expect("non-empty");
            let victim = match self.chunked {
                Some(c) if self.reqs[&c].admitted > self.reqs[&newest_running].admitted => c,
                _ => newest_running,
            };
            if self.running.len() == 1 && victim == newest_running {
                // Alone and still short: only the chunked request could be in the way.
                match self.chunked {
                    Some(c) => self.retract(c),
                    None => {
                        self.abort(victim, "the KV cache cannot hold this request");
                    }
                }
                continue;
            }
            self.retract(victim);
        }
    }

    fn retract(&mut self, key: ReqKey) {
        let mut req = self.reqs.remove(&key).expect("retracting a known request");
        if self.chunked == Some(key) {
            self.chunked = None;
        } else if let Some(i) = self.running.iter().position(|&k| k == key) {
            self.running.remove(i);
            self.running_kv -= req.prefill_target() as u64;
        }
        self.free_kv(&mut req);
        req.retractions += 1;
        self.stats.retractions_total += 1;
        self.reqs.insert(key, req);
        self.waiting.push_back(key);
        let (mut generated, mut planned) = (0u64, 0u64);
        for k in &self.running {
            let r = &self.reqs[k];
            generated += r.generated as u64;
            planned += r.max_new as u64;
        }
        let estimate = (generated + RETRACT_DECODE_STEPS * self.running.len() as u64) as f64
            / planned.max(1) as f64;
        self.new_token_ratio = estimate.clamp(self.new_token_ratio, 1.0);
    }

    /// Tokens the running requests are expected to still need.
    fn running_reserve(&self) -> u64 {
        let remaining: u64 = self
            .running
            .iter()
            .map(|k| self.reqs[k].remaining_output())
            .sum();
        (remaining as f64 * self.new_token_ratio).ceil() as u64
    }

    /// Form this step's prefill batch; returns it with its cached and computed token counts
    /// of newly admitted requests.
    ///
    /// Budgets, as SGLang's `PrefillAdder`: `chunk` (`--chunked-prefill-size`) caps the new
    /// tokens per step and splits the request that crosses it; `input`
    /// (`--max-prefill-tokens`) caps the batch's new tokens too, but never splits: a whole
    /// request that does not fit what is left waits for the next step, unless the batch is
    /// empty (a lone request may exceed it). Memory: running requests reserve
    /// `min(max_new − generated, 4096) × new_token_ratio`, requests admitted in this batch
    /// their full `min(max_new, 4096)`.
    fn schedule_prefill(&mut self) -> (PrefillBatch, u64, u64) {
        let mut batch = PrefillBatch::default();
        let mut budget = self.chunk_size;
        let mut input_budget = self.max_prefill_tokens;
        let (mut hit, mut computed) = (0u64, 0u64);
        self.admitted_now.clear();
        if let Some(key) = self.chunked {
            let req = &self.reqs[&key];
            let (filled, target) = (req.filled, req.prefill_target());
            let chunk = ((target - filled) as u64).min(budget);
            let finishing = chunk == (target - filled) as u64;
            let want = chunk + u64::from(finishing && req.generated < req.output_len);
            if !self.radix.alloc(want) {
                return (batch, 0, 0);
            }
            batch.add(&self.cost.model, chunk, filled as u64);
            computed += chunk;
            budget -= chunk;
            input_budget = input_budget.saturating_sub(chunk);
            let req = self.reqs.get_mut(&key).expect("chunked request");
            req.filled += chunk as usize;
            req.private += want;
            if !finishing {
                return (batch, hit, computed);
            }
            self.chunked = None;
            self.admitted_now.push(key);
        }
        if self.waiting.is_empty() || budget == 0 || input_budget == 0 {
            return (batch, hit, computed);
        }
        if self.policy == SchedulePolicy::Lpm
            && self.radix.enabled()
            && self.waiting.len() <= LPM_MAX_QUEUE
        {
            let (reqs, radix) = (&self.reqs, &self.radix);
            self.waiting.make_contiguous().sort_by_cached_key(|k| {
                let r = &reqs[k];
                std::cmp::Reverse(radix.prefix_len(&r.tokens[..r.prefill_target() - 1]))
            });
        }
        let mut reserve = self.running_reserve();
        while let Some(&key) = self.waiting.front() {
            if self.running.len() + self.admitted_now.len() >= self.max_running
                || budget == 0
                || input_budget == 0
            {
                break;
            }
            let req = self.reqs.get_mut(&key).expect("waiting request");
            let target = req.prefill_target();
            let m = self.radix.match_prefix(&req.tokens[..target - 1]);
            let extend = (target - m.len) as u64;
            let out = req.remaining_output();
            let first_token = u64::from(req.generated < req.output_len);
            let whole = extend <= budget;
            if self.radix.available() < extend + first_token + out + reserve
                || (whole && extend > input_budget && !batch.is_empty())
            {
                self.radix.unlock(m);
                break;
            }
            self.waiting.pop_front();
            let chunk = extend.min(budget);
            let finishing = chunk == extend;
            let want = chunk + if finishing { first_token } else { 0 };
            let ok = self.radix.alloc(want);
            debug_assert!(ok, "admission checked the room");
            batch.add(&self.cost.model, chunk, m.len as u64);
            hit += m.len as u64;
            computed += extend;
            budget -= chunk;
            input_budget = input_budget.saturating_sub(chunk);
            reserve += out;
            if !req.first_sent && req.retractions == 0 {
                req.cached_tokens = m.len as u32;
                req.scheduled_at = self.clock;
            }
            req.filled = m.len + chunk as usize;
            req.private += want;
            req.prefix = Some(m);
            self.admissions += 1;
            req.admitted = self.admissions;
            if finishing {
                self.admitted_now.push(key);
            } else {
                self.chunked = Some(key);
                break;
            }
        }
        // `computed` counts the whole extend of newly admitted requests (as SGLang's
        // per-batch hit rate does) but the chunked continuation only by its chunk.
        (batch, hit, computed)
    }

    /// One token for every running request.
    fn decode_tokens(&mut self, batch: u64) {
        self.running_kv += batch;
        self.stats.decode_tokens_total += batch;
        self.window_tokens += batch;
        self.window_steps += 1;
        if self.window_steps == DECODE_LOG_INTERVAL {
            let span = self.clock - self.window_start;
            if span > 0.0 {
                self.stats.gen_throughput = self.window_tokens as f64 / span;
            }
            self.window_tokens = 0;
            self.window_steps = 0;
            self.window_start = self.clock;
        }
        self.new_token_ratio = (self.new_token_ratio
            - (INIT_NEW_TOKEN_RATIO - MIN_NEW_TOKEN_RATIO) / NEW_TOKEN_RATIO_DECAY_STEPS)
            .max(MIN_NEW_TOKEN_RATIO);
        let at = self.clock;
        for &key in &self.running {
            let req = self.reqs.get_mut(&key).expect("running request");
            req.generated += 1;
            req.private += 1;
            let n = req.generated as u32;
            self.events.push((
                key,
                EngineEvent::Progress {
                    completion_tokens: n,
                    at,
                },
            ));
            if req.generated == req.output_len {
                self.finished_now.push(key);
            }
        }
    }

    /// Hand a request's freshly computed prompt KV to the radix tree (SGLang's
    /// `cache_unfinished_req`): later requests can share it at once, and the request keeps
    /// it locked, so the pool usage does not change.
    fn commit_prefill(&mut self, key: ReqKey) {
        if !self.radix.enabled() {
            return;
        }
        let req = self.reqs.get_mut(&key).expect("prefilling request");
        let Some(old) = req.prefix.take() else {
            return;
        };
        let prompt_private = (req.filled - old.len) as u64;
        if prompt_private == 0 {
            req.prefix = Some(old);
            return;
        }
        self.radix.release(prompt_private);
        let (_, new) = self.radix.insert_locked(&req.tokens[..req.filled]);
        self.radix.unlock(old);
        // Whatever the tree could not take (never, in practice) stays private.
        let still_private = (req.filled - new.len) as u64;
        let ok = self.radix.alloc(still_private);
        debug_assert!(ok, "the released slots cover it");
        req.private = req.private - prompt_private + still_private;
        req.prefix = Some(new);
    }

    /// Requests whose prefill completed this step sample a token and join the decode batch.
    fn finish_prefills(&mut self) {
        let at = self.clock;
        for i in 0..self.admitted_now.len() {
            let key = self.admitted_now[i];
            let req = self.reqs.get_mut(&key).expect("admitted request");
            if req.generated < req.output_len {
                req.generated += 1;
            }
            if !req.first_sent {
                req.first_sent = true;
                self.events.push((
                    key,
                    EngineEvent::First {
                        cached_tokens: req.cached_tokens,
                        scheduled_at: req.scheduled_at,
                        at,
                    },
                ));
            } else {
                let n = req.generated as u32;
                self.events.push((
                    key,
                    EngineEvent::Progress {
                        completion_tokens: n,
                        at,
                    },
                ));
            }
            if req.generated == req.output_len {
                self.finished_now.push(key);
            } else {
                self.running_kv += req.prefill_target() as u64;
                self.running.push(key);
            }
        }
    }

    fn finish(&mut self, key: ReqKey) {
        let mut req = self.reqs.remove(&key).expect("finishing request");
        if let Some(i) = self.running.iter().position(|&k| k == key) {
            self.running.remove(i);
            self.running_kv -= req.prefill_target() as u64;
        }
        self.radix.release(req.private);
        req.private = 0;
        // As SGLang's `cache_finished_req`: prompt + output but the last token, whose KV was
        // never computed (it was sampled, not fed back).
        self.radix
            .insert(&req.tokens[..req.tokens.len().saturating_sub(1)]);
        if let Some(m) = req.prefix.take() {
            self.radix.unlock(m);
        }
        self.events.push((
            key,
            EngineEvent::Finished {
                completion_tokens: req.generated as u32,
                at: self.clock,
                retractions: req.retractions,
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::cost::{GpuProfile, ModelProfile};
    use super::*;
    use crate::sim::cost::CostModel;

    fn config(capacity: u64) -> EngineConfig {
        EngineConfig {
            model: ModelProfile::builtin("qwen2.5-14b").unwrap(),
            gpu: GpuProfile::builtin("h100").unwrap(),
            max_total_tokens: capacity,
            max_running_requests: 64,
            chunked_prefill_size: 8192,
            max_prefill_tokens: 16384,
            tp_size: 1,
            schedule_policy: SchedulePolicy::Fcfs,
            disable_radix_cache: false,
            time_scale: f64::INFINITY,
            seed: 0,
        }
    }

    fn request(prompt: std::ops::Range<u32>, output: std::ops::Range<u32>) -> EngineRequest {
        EngineRequest {
            rid: String::new(),
            max_new_tokens: output.len() as u32,
            input_ids: prompt.collect(),
            output_ids: output.collect(),
        }
    }

    /// Run to completion; every event per key, in order.
    fn run(core: &mut Core) -> HashMap<ReqKey, Vec<EngineEvent>> {
        let mut out: HashMap<ReqKey, Vec<EngineEvent>> = HashMap::new();
        loop {
            let stepped = core.step();
            assert!(core.radix().used() <= core.radix().capacity());
            for (k, e) in core.drain_events() {
                out.entry(k).or_default().push(e);
            }
            if stepped.is_none() {
                return out;
            }
        }
    }

    fn first(events: &[EngineEvent]) -> (u32, f64) {
        match events[0] {
            EngineEvent::First {
                cached_tokens, at, ..
            } => (cached_tokens, at),
            ref e => panic!("expected First, got {e:?}"),
        }
    }

    fn finished(events: &[EngineEvent]) -> (u32, f64, u32) {
        match events.last().unwrap() {
            EngineEvent::Finished {
                completion_tokens,
                at,
                retractions,
            } => (*completion_tokens, *at, *retractions),
            e => panic!("expected Finished, got {e:?}"),
        }
    }

    #[test]
    fn one_request_costs_a_prefill_then_a_decode_step_per_token() {
        let mut core = Core::new(&config(100_000));
        core.submit(1, request(0..1000, 5000..5010));
        let ev = run(&mut core);
        let cost = core.cost().clone();
        let (cached, t_first) = first(&ev[&1]);
        assert_eq!(cached, 0);
        assert!((t_first - cost.prefill_one_s(1000, 0)).abs() < 1e-12);
        // Tokens 2..=10 come from 9 decode steps over contexts 1001..=1009.
        let decode: f64 = (1001..=1009).map(|c| cost.decode_step_s(1, c)).sum();
        let (n, t_end, retractions) = finished(&ev[&1]);
        assert_eq!((n, retractions), (10, 0));
        assert!((t_end - t_first - decode).abs() < 1e-9);
        let progress: Vec<u32> = ev[&1]
            .iter()
            .filter_map(|e| match e {
                EngineEvent::Progress {
                    completion_tokens, ..
                } => Some(*completion_tokens),
                _ => None,
            })
            .collect();
        assert_eq!(progress, (2..=10).collect::<Vec<_>>());
        assert!(core.is_idle());
        assert_eq!(core.stats().decode_tokens_total, 9);
    }

    #[test]
    fn the_next_turn_reuses_prompt_and_output_unless_the_cache_is_off() {
        for disabled in [false, true] {
            let mut cfg = config(100_000);
            cfg.disable_radix_cache = disabled;
            let mut core = Core::new(&cfg);
            core.submit(1, request(0..1000, 5000..5100));
            run(&mut core);
            // Turn 2: the whole turn-1 conversation plus an observation.
            let mut turn2 = request(0..1000, 7000..7010);
            turn2.input_ids.extend(5000..5100);
            turn2.input_ids.extend(6000..6200);
            core.submit(2, turn2);
            let ev = run(&mut core);
            // Prompt + output but the output's last token (SGLang caches no KV for it).
            let expect = if disabled { 0 } else { 1099 };
            assert_eq!(first(&ev[&2]).0, expect, "disabled={disabled}");
            let stats = core.stats();
            assert_eq!(stats.prefill_cache_tokens_total, expect as u64);
            assert_eq!(
                stats.prefill_compute_tokens_total,
                1000 + 1300 - expect as u64
            );
        }
    }

    #[test]
    fn a_fully_cached_prompt_still_computes_its_last_token() {
        let mut core = Core::new(&config(100_000));
        core.submit(1, request(0..500, 900..901));
        run(&mut core);
        core.submit(2, request(0..500, 900..902));
        let ev = run(&mut core);
        assert_eq!(first(&ev[&2]).0, 499);
    }

    #[test]
    fn a_computed_prompt_is_shared_before_its_request_finishes() {
        let mut core = Core::new(&config(100_000));
        core.submit(1, request(0..3000, 500..600));
        core.step(); // prefilled, decoding
        core.submit(2, request(0..3500, 700..710));
        let ev = run(&mut core);
        assert_eq!(first(&ev[&2]).0, 3000);
        assert!(first(&ev[&2]).1 < finished(&ev[&1]).1);
    }

    #[test]
    fn requests_arriving_together_share_prefill_and_decode_steps() {
        let mut core = Core::new(&config(100_000));
        core.submit(1, request(0..1000, 5000..5005));
        core.submit(2, request(10_000..11_000, 6000..6005));
        let ev = run(&mut core);
        assert_eq!(first(&ev[&1]).1, first(&ev[&2]).1);
        assert_eq!(finished(&ev[&1]).1, finished(&ev[&2]).1);
        let mut batch = PrefillBatch::default();
        batch.add(&core.cost().model, 1000, 0);
        batch.add(&core.cost().model, 1000, 0);
        assert!((first(&ev[&1]).1 - core.cost().prefill_s(&batch)).abs() < 1e-12);
        assert_eq!(core.stats().steps_total, 1 + 4);
    }

    #[test]
    fn max_running_requests_makes_later_requests_wait() {
        let mut cfg = config(100_000);
        cfg.max_running_requests = 1;
        let mut core = Core::new(&cfg);
        core.submit(1, request(0..100, 500..520));
        core.submit(2, request(1000..1100, 600..620));
        core.step();
        assert_eq!((core.stats().running, core.stats().queued), (1, 1));
        let ev = run(&mut core);
        assert!(first(&ev[&2]).1 >= finished(&ev[&1]).1);
    }

    #[test]
    fn long_prompts_are_prefilled_in_chunks_while_others_decode() {
        let mut cfg = config(100_000);
        cfg.chunked_prefill_size = 4096;
        let mut core = Core::new(&cfg);
        core.submit(1, request(0..10, 500..600));
        core.step(); // request 1 prefilled, now decoding
        core.submit(2, request(1000..11_000, 600..610));
        let mut prefill_steps = Vec::new();
        let mut first_two = None;
        while first_two.is_none() {
            let report = core.step().unwrap();
            prefill_steps.push((report.prefill_tokens, report.decode_batch));
            for (k, e) in core.drain_events() {
                if let (2, EngineEvent::First { .. }) = (k, e) {
                    first_two = Some(report.end);
                }
            }
        }
        assert_eq!(prefill_steps, vec![(4096, 1), (4096, 1), (1808, 1)]);
    }

    #[test]
    fn a_full_kv_pool_retracts_the_newest_and_everything_still_finishes() {
        // Both fit at admission (the reserve counts only 70 % of the first one's output),
        // but 2000 + 1100 tokens outgrow the 3000-token pool near the end.
        let mut core = Core::new(&config(3000));
        core.submit(0, request(0..1000, 50_000..51_000));
        core.submit(1, request(10_000..10_100, 60_000..61_000));
        let ev = run(&mut core);
        let stats = core.stats();
        assert!(stats.retractions_total > 0, "{stats:?}");
        assert_eq!(finished(&ev[&0]).2, 0, "the older request keeps running");
        assert_eq!(u64::from(finished(&ev[&1]).2), stats.retractions_total);
        for k in 0..2 {
            assert_eq!(finished(&ev[&k]).0, 1000);
            let firsts = ev[&k]
                .iter()
                .filter(|e| matches!(e, EngineEvent::First { .. }))
                .count();
            assert_eq!(firsts, 1);
            // Completion counts rise by one per event, across the retraction too.
            let counts: Vec<u32> = ev[&k]
                .iter()
                .filter_map(|e| match e {
                    EngineEvent::Progress {
                        completion_tokens, ..
                    } => Some(*completion_tokens),
                    _ => None,
                })
                .collect();
            assert_eq!(counts, (2..=1000).collect::<Vec<_>>());
        }
        // The retracted request resumed after the other finished, re-prefilling its history.
        assert!(finished(&ev[&1]).1 > finished(&ev[&0]).1);
        assert!(stats.prefill_compute_tokens_total > 1100);
    }

    #[test]
    fn tp_size_costs_steps_with_tensor_parallelism() {
        let mut finish = Vec::new();
        for tp in [1, 2] {
            let mut cfg = config(100_000);
            cfg.tp_size = tp;
            let mut core = Core::new(&cfg);
            assert_eq!(core.cost().tp(), tp);
            core.submit(1, request(0..4000, 5000..5100));
            let ev = run(&mut core);
            let expect = CostModel::with_tp(cfg.model.clone(), cfg.gpu.clone(), tp);
            assert!((first(&ev[&1]).1 - expect.prefill_one_s(4000, 0)).abs() < 1e-12);
            finish.push(finished(&ev[&1]).1);
        }
        assert!(finish[1] < 0.75 * finish[0], "{finish:?}");
    }

    #[test]
    fn admission_reserves_for_max_new_tokens_not_the_planned_output() {
        // Two 10-token answers with max_new_tokens 2000 in a 3000-token pool: SGLang cannot
        // know they stop early, so the second waits for the first. With max_new_tokens = 10
        // they run together.
        for (max_new, together) in [(2000, false), (10, true)] {
            let mut core = Core::new(&config(3000));
            for (k, base) in [(1, 0), (2, 10_000)] {
                let mut r = request(base..base + 100, 50_000..50_010);
                r.max_new_tokens = max_new;
                core.submit(k, r);
            }
            let ev = run(&mut core);
            assert_eq!(finished(&ev[&2]).0, 10);
            let overlap = first(&ev[&2]).1 < finished(&ev[&1]).1;
            assert_eq!(overlap, together, "max_new_tokens {max_new}");
        }
        // max_new_tokens beyond the pool is clipped (a lone request is always admitted).
        let mut core = Core::new(&config(3000));
        let mut r = request(0..100, 50_000..50_010);
        r.max_new_tokens = 1_000_000;
        core.submit(1, r);
        assert_eq!(finished(&run(&mut core)[&1]).0, 10);
    }

    #[test]
    fn max_prefill_tokens_caps_a_prefill_batch_without_splitting_requests() {
        for (cap, steps) in [(16384, vec![6000]), (4096, vec![3000, 3000])] {
            let mut cfg = config(100_000);
            cfg.chunked_prefill_size = usize::MAX; // chunking off: only the cap limits
            cfg.max_prefill_tokens = cap;
            let mut core = Core::new(&cfg);
            core.submit(1, request(0..3000, 50_000..50_002));
            core.submit(2, request(10_000..13_000, 60_000..60_002));
            let mut prefills = Vec::new();
            while let Some(r) = core.step() {
                if r.prefill_tokens > 0 {
                    prefills.push(r.prefill_tokens);
                }
            }
            assert_eq!(prefills, steps, "cap {cap}");
        }
        // A lone request longer than the cap still runs (in one batch of its own).
        let mut cfg = config(100_000);
        cfg.chunked_prefill_size = usize::MAX;
        cfg.max_prefill_tokens = 1000;
        let mut core = Core::new(&cfg);
        core.submit(1, request(0..3000, 50_000..50_002));
        assert_eq!(core.step().unwrap().prefill_tokens, 3000);
    }

    #[test]
    fn first_reports_when_the_request_left_the_queue() {
        let mut cfg = config(100_000);
        cfg.max_running_requests = 1;
        let mut core = Core::new(&cfg);
        core.submit(1, request(0..100, 500..505));
        core.submit(2, request(1000..1100, 600..605));
        let ev = run(&mut core);
        let scheduled = |k| match ev[&k][0] {
            EngineEvent::First { scheduled_at, .. } => scheduled_at,
            ref e => panic!("{e:?}"),
        };
        assert_eq!(scheduled(1), 0.0);
        // Request 2 is scheduled in the step after request 1 finished.
        assert_eq!(scheduled(2), finished(&ev[&1]).1);
        assert!(first(&ev[&2]).1 > scheduled(2));
    }

    #[test]
    fn a_request_never_joins_a_step_that_began_before_it_arrived() {
        // An engine behind wall time × scale has a clock behind the arrival stamps: a request
        // that arrived later than the clock waits for the clock, even when a step could take it.
        let mut core = Core::new(&config(100_000));
        core.submit(1, request(0..1000, 5000..5200));
        core.step().unwrap();
        let arrived = core.clock() + 0.05;
        core.submit_at(2, request(10_000..11_000, 6000..6005), arrived);
        let ev = run(&mut core);
        let EngineEvent::First {
            scheduled_at, at, ..
        } = ev[&2][0]
        else {
            panic!("{:?}", ev[&2]);
        };
        assert!(
            scheduled_at >= arrived,
            "scheduled {scheduled_at} before arrival {arrived}"
        );
        assert!(at > arrived);
        // It was admitted at the first step boundary past its arrival, while 1 still decoded.
        assert!(finished(&ev[&1]).1 > at);
        let step = core.cost().decode_step_s(1, 1200);
        assert!(
            scheduled_at - arrived <= 2.0 * step,
            "{scheduled_at} vs {arrived}"
        );
    }

    #[test]
    fn an_engine_with_nothing_else_to_do_moves_its_clock_to_the_next_arrival() {
        let mut core = Core::new(&config(100_000));
        core.submit_at(1, request(0..1000, 5000..5003), 2.5);
        assert_eq!(core.stats().queued, 1);
        let ev = run(&mut core);
        let EngineEvent::First { scheduled_at, .. } = ev[&1][0] else {
            panic!("{:?}", ev[&1]);
        };
        assert_eq!(scheduled_at, 2.5);
        assert_eq!(finished(&ev[&1]).0, 3);
    }

    #[test]
    fn a_request_aborted_before_it_arrived_is_gone() {
        let mut core = Core::new(&config(100_000));
        core.submit_at(1, request(0..1000, 5000..5003), 1.0);
        assert!(core.abort(1, "gone"));
        assert!(core.is_idle());
        assert_eq!(core.stats().queued, 0);
        assert!(core.step().is_none());
    }

    #[test]
    fn lpm_admits_the_longest_cached_prefix_first() {
        for (policy, expect_first) in [(SchedulePolicy::Fcfs, 2), (SchedulePolicy::Lpm, 3)] {
            let mut cfg = config(100_000);
            cfg.max_running_requests = 1;
            cfg.schedule_policy = policy;
            let mut core = Core::new(&cfg);
            core.submit(1, request(0..1000, 500..501));
            run(&mut core);
            core.submit(9, request(20_000..20_010, 500..530)); // occupies the only slot
            core.step();
            core.submit(2, request(10_000..11_000, 500..501));
            core.submit(3, request(0..1000, 600..601));
            let ev = run(&mut core);
            let other = 5 - expect_first;
            assert!(
                first(&ev[&expect_first]).1 < first(&ev[&other]).1,
                "{policy:?}"
            );
        }
    }

    #[test]
    fn abort_frees_the_request_and_unknown_keys_are_ignored() {
        let mut core = Core::new(&config(100_000));
        core.submit(1, request(0..1000, 500..600));
        core.step();
        assert_eq!(
            core.stats().used_tokens,
            1001,
            "prompt + first token, locked"
        );
        assert!(core.abort(1, "client went away"));
        assert!(matches!(
            core.drain_events().next_back(),
            Some((1, EngineEvent::Aborted { .. }))
        ));
        // The computed prompt stays cached but evictable; nothing is held.
        assert_eq!(core.stats().used_tokens, 0);
        assert_eq!(core.radix().evictable(), 1000);
        assert!(core.is_idle());
        assert!(!core.abort(1, "again"));
        assert!(core.step().is_none());
    }

    #[test]
    fn impossible_requests_are_aborted_with_a_reason() {
        let mut core = Core::new(&config(1000));
        core.submit(1, request(0..900, 0..200));
        core.submit(2, request(0..0, 0..5));
        let ev: Vec<_> = core.drain_events().collect();
        assert!(
            matches!(&ev[0], (1, EngineEvent::Aborted { message, .. }) if message.contains("KV pool"))
        );
        assert!(
            matches!(&ev[1], (2, EngineEvent::Aborted { message, .. }) if message.contains("empty"))
        );
        assert!(core.is_idle());
    }

    #[test]
    fn flush_cache_is_refused_while_requests_are_in_the_engine() {
        let mut core = Core::new(&config(100_000));
        core.submit(1, request(0..100, 500..510));
        assert!(!core.flush_cache());
        run(&mut core);
        assert!(core.radix().cached() > 0);
        assert!(core.flush_cache());
        assert_eq!(core.radix().cached(), 0);
    }

    #[test]
    fn zero_output_requests_finish_after_prefill() {
        let mut core = Core::new(&config(100_000));
        core.submit(1, request(0..100, 0..0));
        let ev = run(&mut core);
        assert_eq!(ev[&1].len(), 2);
        assert_eq!(finished(&ev[&1]).0, 0);
    }

    proptest::proptest! {
        /// Any mix of requests, pool sizes, batch limits, chunk sizes and policies: the pool
        /// is never over-committed, every request gets one First, then one token per
        /// event, in time order, and finishes with all its planned tokens;
        /// cached ≤ prompt − 1.
        #[test]
        fn every_request_completes_with_consistent_events(
            capacity in 200u64..5000,
            max_running in 1usize..6,
            chunk in 16usize..600,
            lpm in proptest::bool::ANY,
            disabled in proptest::bool::ANY,
            reqs in proptest::collection::vec((0u32..4, 1u32..300, 0u32..200, 0usize..20), 1..12),
        ) {
            let mut cfg = config(capacity);
            cfg.max_running_requests = max_running;
            cfg.chunked_prefill_size = chunk;
            cfg.disable_radix_cache = disabled;
            cfg.schedule_policy = if lpm { SchedulePolicy::Lpm } else { SchedulePolicy::Fcfs };
            let mut core = Core::new(&cfg);
            // (shared-prefix family, prompt length, output length, arrival step)
            let mut arrivals: Vec<(usize, u64, EngineRequest)> = reqs
                .iter()
                .enumerate()
                .map(|(i, &(family, prompt, output, at))| {
                    let base = family * 100_000;
                    (at, i as u64, request(base..base + prompt, 90_000..90_000 + output))
                })
                .collect();
            arrivals.sort_by_key(|a| a.0);
            let mut events: HashMap<ReqKey, Vec<EngineEvent>> = HashMap::new();
            let mut step_no = 0;
            let mut last_at = 0.0;
            loop {
                while arrivals.first().is_some_and(|a| a.0 <= step_no) {
                    let (_, key, req) = arrivals.remove(0);
                    core.submit(key, req);
                }
                let stepped = core.step();
                step_no += 1;
                proptest::prop_assert!(core.radix().used() <= capacity);
                for (k, e) in core.drain_events() {
                    let at = match &e {
                        EngineEvent::First { at, .. }
                        | EngineEvent::Progress { at, .. }
                        | EngineEvent::Finished { at, .. }
                        | EngineEvent::Aborted { at, .. } => *at,
                    };
                    proptest::prop_assert!(at >= last_at);
                    last_at = at;
                    events.entry(k).or_default().push(e);
                }
                if stepped.is_none() {
                    if arrivals.is_empty() {
                        break;
                    }
                    step_no = arrivals[0].0;
                }
            }
            proptest::prop_assert!(core.is_idle());
            for (i, &(_, prompt, output, _)) in reqs.iter().enumerate() {
                let ev = &events[&(i as u64)];
                if u64::from(prompt + output) + 1 > capacity {
                    let refused = matches!(ev.as_slice(), [EngineEvent::Aborted { .. }]);
                    proptest::prop_assert!(refused);
                    continue;
                }
                let (cached, _) = first(ev);
                proptest::prop_assert!(cached < prompt);
                if disabled {
                    proptest::prop_assert_eq!(cached, 0);
                }
                let mut n = u32::from(output > 0);
                for e in &ev[1..ev.len() - 1] {
                    match e {
                        EngineEvent::Progress { completion_tokens, .. } => {
                            n += 1;
                            proptest::prop_assert_eq!(*completion_tokens, n);
                        }
                        other => proptest::prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                proptest::prop_assert_eq!(finished(ev).0, output);
                proptest::prop_assert_eq!(n, output);
            }
        }
    }
}
