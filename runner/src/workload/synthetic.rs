//! Synthetic SWE-agent-like trajectories: the default workload.
//!
//! Seeded (ChaCha8, one stream per trajectory) so every cell and every rerun sees the same
//! text. Sizes are in words of a code-and-prose vocabulary, about one token each for a BPE
//! tokenizer (the server reports the real token counts). The distributions, sized like real
//! SWE-agent runs (the seed's r2e-gym trajectories):
//!
//! | part | distribution |
//! |---|---|
//! | system prompt (tool docs, rules) | uniform 800–1600 words, shared by all trajectories of a seed |
//! | first user message (issue + instructions) | log-normal, median 600, σ 0.5, clamped 150–3000 |
//! | observation after each turn (tool output) | log-normal, median 500, σ 0.9, clamped 20–4000 |
//! | recorded assistant message (thought + action) | log-normal, median 120, σ 0.5, clamped 20–600 |
//! | tool time after each turn | log-normal, median 1.0 s, σ 1.0, clamped 0.05–60 s |
//! | turns per trajectory | the plan's `turns` |

use super::{Format, Message, Role, Trajectory, Turn, Workload};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Params {
    pub trajectories: usize,
    pub turns: usize,
    pub seed: u64,
    pub system_words: (usize, usize),
    pub first_user_median: f64,
    pub observation_median: f64,
    pub observation_sigma: f64,
    pub assistant_median: f64,
    pub tool_time_median_s: f64,
}

impl Params {
    pub fn default_with(trajectories: usize, turns: usize, seed: u64) -> Params {
        Params {
            trajectories,
            turns,
            seed,
            system_words: (800, 1600),
            first_user_median: 600.0,
            observation_median: 500.0,
            observation_sigma: 0.9,
            assistant_median: 120.0,
            tool_time_median_s: 1.0,
        }
    }
}

const WORDS: &[&str] = &[
    "the", "file", "function", "returns", "error", "test", "value", "self", "def", "import",
    "class", "None", "if", "else", "for", "in", "return", "line", "path", "module", "=", "(", ")",
    "src", "config", "assert", "raise", "except", "try", "with", "open", "print", "data", "index",
    "list", "dict", "str", "int", "True", "False", "and", "or", "not", "is", "args", "kwargs",
    "result", "output", "input", "check", "fix", "bug", "issue", "we", "need", "to", "update",
    "call", "method", "object", "type", "name", "key", "0", "1", "2", "42", "->", ":", "::", "[",
    "]", "{", "}", "parser", "token", "cache", "request", "response",
];

fn lognormal(rng: &mut ChaCha8Rng, median: f64, sigma: f64) -> f64 {
    // Box–Muller: one standard normal draw.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    median * (sigma * z).exp()
}

fn words(rng: &mut ChaCha8Rng, n: usize) -> String {
    let mut s = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            s.push(if i % 14 == 0 { '\n' } else { ' ' });
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

fn sized(rng: &mut ChaCha8Rng, median: f64, sigma: f64, lo: f64, hi: f64) -> usize {
    lognormal(rng, median, sigma).clamp(lo, hi).round() as usize
}

/// Generate the workload.
pub fn generate(p: &Params) -> Workload {
    let mut shared = ChaCha8Rng::seed_from_u64(p.seed);
    let n = shared.random_range(p.system_words.0..=p.system_words.1);
    let system = format!(
        "You are a software engineering agent. Use the tools below to resolve the issue.\n{}",
        words(&mut shared, n)
    );
    let trajectories = (0..p.trajectories)
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(
                p.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let first = sized(&mut rng, p.first_user_median, 0.5, 150.0, 3000.0);
            let prelude = vec![
                Message::new(Role::System, system.clone()),
                Message::new(
                    Role::User,
                    format!("<issue {i}>\n{}", words(&mut rng, first)),
                ),
            ];
            let turns = (0..p.turns)
                .map(|_| {
                    let a = sized(&mut rng, p.assistant_median, 0.5, 20.0, 600.0);
                    let o = sized(
                        &mut rng,
                        p.observation_median,
                        p.observation_sigma,
                        20.0,
                        4000.0,
                    );
                    let think = lognormal(&mut rng, p.tool_time_median_s, 1.0).clamp(0.05, 60.0);
                    Turn {
                        recorded: Some(words(&mut rng, a)),
                        after: vec![Message::new(
                            Role::User,
                            format!(
                                "{}\n\n[Environment execution time: {think:.4}s]",
                                words(&mut rng, o)
                            ),
                        )],
                        think_time: think,
                    }
                })
                .collect();
            Trajectory {
                id: format!("synthetic-{}-{i}", p.seed),
                prelude,
                turns,
            }
        })
        .collect();
    let desc = serde_json::to_string(p).unwrap_or_default();
    Workload {
        format: Format::Synthetic,
        source: format!("synthetic {desc}"),
        content_hash: super::hex(&Sha256::digest(desc.as_bytes())),
        trajectories,
        skipped_lines: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_sized_like_agent_runs() {
        let p = Params::default_with(8, 20, 7);
        let a = generate(&p);
        assert_eq!(
            a.trajectories,
            generate(&p).trajectories,
            "same seed, same text"
        );
        assert_ne!(
            a.trajectories,
            generate(&Params::default_with(8, 20, 8)).trajectories
        );
        let obs: Vec<usize> = a
            .trajectories
            .iter()
            .flat_map(|t| {
                t.turns
                    .iter()
                    .map(|u| u.after[0].content.split_whitespace().count())
            })
            .collect();
        let mean = obs.iter().sum::<usize>() as f64 / obs.len() as f64;
        assert!(
            (200.0..2000.0).contains(&mean),
            "mean observation {mean} words"
        );
        assert!(obs.iter().all(|&n| (20..=4010).contains(&n)));
    }
}
