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

use super::{Format, Message, Role, Trajectories, Trajectory, Turn, Workload};
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

/// Makes the trajectories of one set of [`Params`], each when it is asked for: trajectory `i`
/// is a function of the seed and `i` alone (its own ChaCha8 stream), so making them one at a
/// time gives the very text of making them all at once.
#[derive(Debug)]
pub struct Generator {
    p: Params,
    /// The system prompt all trajectories of the seed share.
    system: String,
}

impl Generator {
    pub fn new(p: Params) -> Generator {
        let mut shared = ChaCha8Rng::seed_from_u64(p.seed);
        let n = shared.random_range(p.system_words.0..=p.system_words.1);
        let system = format!(
            "You are a software engineering agent. Use the tools below to resolve the issue.\n{}",
            words(&mut shared, n)
        );
        Generator { p, system }
    }

    /// How many trajectories there are (none without turns).
    pub fn len(&self) -> usize {
        if self.p.turns == 0 {
            0
        } else {
            self.p.trajectories
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Turns per trajectory.
    pub fn turns(&self) -> usize {
        self.p.turns
    }

    pub fn id(&self, i: usize) -> String {
        format!("synthetic-{}-{i}", self.p.seed)
    }

    /// Trajectory `i`; the last turn has no observation after it.
    pub fn trajectory(&self, i: usize) -> Trajectory {
        let p = &self.p;
        let mut rng =
            ChaCha8Rng::seed_from_u64(p.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let first = sized(&mut rng, p.first_user_median, 0.5, 150.0, 3000.0);
        let prelude = vec![
            Message::new(Role::System, self.system.clone()),
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
        let mut t = Trajectory {
            id: self.id(i),
            prelude,
            turns,
        };
        t.truncate(p.turns);
        t
    }
}

/// The synthetic workload of `p` (its trajectories made as they are needed).
pub fn workload(p: Params) -> Workload {
    let desc = serde_json::to_string(&p).unwrap_or_default();
    Workload {
        format: Format::Synthetic,
        source: format!("synthetic {desc}"),
        content_hash: super::hex(&Sha256::digest(desc.as_bytes())),
        trajectories: Trajectories::Synthetic(std::sync::Arc::new(Generator::new(p))),
        skipped_lines: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: Params) -> Vec<Trajectory> {
        workload(p)
            .trajectories
            .iter()
            .map(std::borrow::Cow::into_owned)
            .collect()
    }

    #[test]
    fn seeded_and_sized_like_agent_runs() {
        let p = Params::default_with(8, 20, 7);
        let a = all(p.clone());
        assert_eq!(a, all(p), "same seed, same text");
        assert_ne!(a, all(Params::default_with(8, 20, 8)));
        assert!(a
            .iter()
            .all(|t| t.turns.len() == 20 && t.turns[19].after.is_empty()));
        let obs: Vec<usize> = a
            .iter()
            .flat_map(|t| {
                t.turns
                    .iter()
                    .filter_map(|u| u.after.first())
                    .map(|m| m.content.split_whitespace().count())
            })
            .collect();
        assert_eq!(obs.len(), 8 * 19);
        let mean = obs.iter().sum::<usize>() as f64 / obs.len() as f64;
        assert!(
            (200.0..2000.0).contains(&mean),
            "mean observation {mean} words"
        );
        assert!(obs.iter().all(|&n| (20..=4010).contains(&n)));
    }

    /// Made one at a time, in any order, trajectories are those the generator made all at
    /// once before it made them lazily (a run resumed across the change replays the same text:
    /// the manifest's content hash is of the parameters). The digest is that of the text the
    /// eager generator (commit a588e85) made for these parameters.
    #[test]
    fn made_on_demand_as_the_eager_generator_made_them() {
        let w = workload(Params::default_with(5, 4, 11));
        let mut h = Sha256::new();
        let mut scrambled: Vec<(usize, Trajectory)> = [4, 0, 3, 1, 2]
            .map(|i| (i, w.trajectories.get(i).into_owned()))
            .into();
        scrambled.sort_by_key(|x| x.0);
        let in_order: Vec<Trajectory> = w.trajectories.iter().map(|t| t.into_owned()).collect();
        assert!(scrambled
            .into_iter()
            .map(|x| x.1)
            .eq(in_order.iter().cloned()));
        for (i, t) in in_order.iter().enumerate() {
            assert_eq!(t.id, w.trajectories.id(i));
        }
        for t in &in_order {
            h.update(t.id.as_bytes());
            for m in &t.prelude {
                h.update(m.content.as_bytes());
            }
            for u in &t.turns {
                h.update(u.recorded.as_deref().unwrap_or("").as_bytes());
                for m in &u.after {
                    h.update(m.content.as_bytes());
                }
                h.update(u.think_time.to_le_bytes());
            }
        }
        assert_eq!(super::super::hex(&h.finalize()), EAGER_DIGEST);
        assert_eq!(w.trajectories.turn_counts(), vec![4; 5]);
        assert_eq!(w.total_turns(), 20);
        assert!(workload(Params::default_with(5, 0, 11))
            .trajectories
            .is_empty());
    }

    const EAGER_DIGEST: &str = "510693e776385d0945942c167ea70ccaffd12cc2aeaaba4da3dfe9b40da667fa";
}
