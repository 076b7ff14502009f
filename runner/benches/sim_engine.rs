//! Engine throughput of the simulated SGLang scheduler: engine seconds simulated per wall
//! second, driving [`runner::sim::core::Core`] in virtual time (closed loop, in process, no
//! HTTP, no sleeping).
//!
//! `cargo bench -p runner --bench sim_engine`
//!
//! The workload has the seed experiment's shape: 50 trajectories × 50 turns, a 1,100-token
//! first prompt (300 of them a system prompt shared by all trajectories), then per turn an
//! output of 110 ± 30 tokens and a 1,250 ± 250-token observation; every turn resends the
//! whole conversation (prefix cache mode), zero think time. It prints the concurrency-16
//! cell on an A100-80GB, then the seed's whole sweep (concurrency 3, 4, 6, 8, 12, 16 on
//! a100-80gb, one fresh engine per cell) with the total wall time. All times in the table
//! are simulated engine seconds.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runner::sim::core::{Core, ReqKey};
use runner::sim::cost::{kv_capacity_tokens, GpuProfile, ModelProfile};
use runner::sim::engine::{EngineConfig, EngineEvent, EngineRequest, SchedulePolicy};
use std::time::Instant;

const TRAJECTORIES: usize = 50;
const TURNS: usize = 50;
const SYSTEM_PROMPT: u32 = 300;
const FIRST_PROMPT: u32 = 1100;

/// One trajectory's planned token counts (fixed by the seed, the same for every cell).
struct Plan {
    outputs: Vec<u32>,
    observations: Vec<u32>,
}

fn plans() -> Vec<Plan> {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    (0..TRAJECTORIES)
        .map(|_| Plan {
            outputs: (0..TURNS).map(|_| rng.random_range(80..=140)).collect(),
            observations: (0..TURNS).map(|_| rng.random_range(1000..=1500)).collect(),
        })
        .collect()
}

/// A trajectory in flight: its conversation so far and the turn being generated.
struct Live {
    traj: usize,
    turn: usize,
    conversation: Vec<u32>,
    /// Next fresh token id (distinct per trajectory, so only real prefixes are shared).
    next_token: u32,
    /// The output planned for the turn in flight.
    output: std::ops::Range<u32>,
}

impl Live {
    fn new(traj: usize) -> Live {
        let base = 1_000_000 * (traj as u32 + 1);
        let mut conversation: Vec<u32> = (0..SYSTEM_PROMPT).collect();
        conversation.extend(base..base + FIRST_PROMPT - SYSTEM_PROMPT);
        Live {
            traj,
            turn: 0,
            conversation,
            next_token: base + FIRST_PROMPT,
            output: 0..0,
        }
    }

    fn fresh(&mut self, n: u32) -> std::ops::Range<u32> {
        let r = self.next_token..self.next_token + n;
        self.next_token += n;
        r
    }

    fn request(&mut self, plan: &Plan) -> EngineRequest {
        self.output = self.fresh(plan.outputs[self.turn]);
        EngineRequest {
            rid: format!("{}-{}", self.traj, self.turn),
            input_ids: self.conversation.clone(),
            output_ids: self.output.clone().collect(),
            max_new_tokens: plan.outputs[self.turn],
        }
    }
}

struct Cell {
    engine_s: f64,
    wall_s: f64,
    output_tokens: u64,
    steps: u64,
    retractions: u64,
    cache_hit: f64,
}

fn config(gpu: &str, concurrency: usize) -> EngineConfig {
    let model = ModelProfile::builtin("qwen2.5-14b").expect("built-in model");
    let gpu = GpuProfile::builtin(gpu).expect("built-in GPU");
    EngineConfig {
        max_total_tokens: kv_capacity_tokens(&model, &gpu, 0.88),
        model,
        gpu,
        max_running_requests: 2048.max(concurrency),
        chunked_prefill_size: 8192,
        max_prefill_tokens: 16384,
        tp_size: 1,
        schedule_policy: SchedulePolicy::Fcfs,
        disable_radix_cache: false,
        time_scale: f64::INFINITY,
        seed: 0,
    }
}

/// Run one cell: `concurrency` workers each take the next trajectory and run its turns.
fn run_cell(gpu: &str, concurrency: usize, plans: &[Plan]) -> Cell {
    let wall = Instant::now();
    let mut core = Core::new(&config(gpu, concurrency));
    let mut live: Vec<Option<Live>> = Vec::new();
    let mut next_traj = 0;
    let mut requests: Vec<(ReqKey, EngineRequest)> = Vec::new();
    let mut output_tokens = 0u64;
    for slot in 0..concurrency.min(plans.len()) {
        let mut l = Live::new(next_traj);
        next_traj += 1;
        requests.push((slot as ReqKey, l.request(&plans[l.traj])));
        live.push(Some(l));
    }
    let mut events = Vec::new();
    loop {
        for (key, req) in requests.drain(..) {
            core.submit(key, req);
        }
        let stepped = core.step();
        events.extend(core.drain_events());
        for (key, event) in events.drain(..) {
            let slot = key as usize;
            match event {
                EngineEvent::Finished {
                    completion_tokens, ..
                } => {
                    output_tokens += u64::from(completion_tokens);
                    let l = live[slot].as_mut().expect("a live trajectory");
                    let plan = &plans[l.traj];
                    assert_eq!(completion_tokens as usize, l.output.len());
                    l.conversation.extend(l.output.clone());
                    l.turn += 1;
                    if l.turn < TURNS {
                        let obs = l.fresh(plan.observations[l.turn - 1]);
                        l.conversation.extend(obs);
                        requests.push((key, l.request(plan)));
                    } else if next_traj < plans.len() {
                        let mut l = Live::new(next_traj);
                        next_traj += 1;
                        requests.push((key, l.request(&plans[l.traj])));
                        live[slot] = Some(l);
                    } else {
                        live[slot] = None;
                    }
                }
                EngineEvent::Aborted { message, .. } => panic!("request {key} aborted: {message}"),
                EngineEvent::First { .. } | EngineEvent::Progress { .. } => {}
            }
        }
        if stepped.is_none() && requests.is_empty() {
            break;
        }
    }
    assert!(
        core.is_idle() && live.iter().all(Option::is_none),
        "every trajectory ran"
    );
    let stats = core.stats();
    Cell {
        engine_s: core.clock(),
        wall_s: wall.elapsed().as_secs_f64(),
        output_tokens,
        steps: stats.steps_total,
        retractions: stats.retractions_total,
        cache_hit: stats.prefill_cache_tokens_total as f64
            / (stats.prefill_cache_tokens_total + stats.prefill_compute_tokens_total).max(1) as f64,
    }
}

fn print_cell(gpu: &str, concurrency: usize, c: &Cell) {
    println!(
        "{gpu:>10} {concurrency:>4} {:>10.1} {:>9.1} {:>8.1} {:>9} {:>8} {:>6.3} {:>8.3} {:>10.0}",
        c.engine_s,
        c.engine_s / TRAJECTORIES as f64,
        c.output_tokens as f64 / c.engine_s,
        c.steps,
        c.retractions,
        c.cache_hit,
        c.wall_s,
        c.engine_s / c.wall_s,
    );
}

fn main() {
    let plans = plans();
    println!(
        "{:>10} {:>4} {:>10} {:>9} {:>8} {:>9} {:>8} {:>6} {:>8} {:>10}",
        "gpu",
        "conc",
        "engine_s",
        "s/traj",
        "tok/s",
        "steps",
        "retract",
        "hit",
        "wall_s",
        "engine/wall"
    );
    println!("-- the seed's experiment shape, concurrency 16 (simulated, qwen2.5-14b):");
    let c16 = run_cell("a100-80gb", 16, &plans);
    print_cell("a100-80gb", 16, &c16);
    println!("-- the seed's whole sweep on a100-80gb:");
    let wall = Instant::now();
    let mut engine_total = 0.0;
    for concurrency in [3, 4, 6, 8, 12, 16] {
        let cell = run_cell("a100-80gb", concurrency, &plans);
        engine_total += cell.engine_s;
        print_cell("a100-80gb", concurrency, &cell);
    }
    let wall = wall.elapsed().as_secs_f64();
    println!(
        "sweep: {:.0} simulated engine seconds ({:.2} GPU-hours) in {wall:.2} s wall \
         ({:.0} engine-s per wall-s)",
        engine_total,
        engine_total / 3600.0,
        engine_total / wall
    );
}
