//! Deterministic pseudo-text: what a simulated request will answer, planned before it is
//! submitted (the engine only decides *when* each token appears).
//!
//! The output length follows a log-normal distribution (default mean 110 tokens, the seed's
//! measured tokens per turn), then the model's EOS token, unless `max_new_tokens`, a stop
//! string or a stop token id ends it first. The text is built from the tokenizer's
//! [`Units`](super::tokenizer::Units) so that it re-tokenizes to exactly the ids generated.

use super::tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};

/// How many tokens an answer has when nothing cuts it short.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputLen {
    /// Mean length in tokens (EOS included).
    pub mean: f64,
    /// Standard deviation of the length's logarithm; 0 gives every answer `mean` tokens.
    pub sigma: f64,
}

impl OutputLen {
    fn sample(&self, rng: &mut ChaCha8Rng) -> u32 {
        let n = if self.sigma > 0.0 {
            let mu = self.mean.max(1.0).ln() - self.sigma * self.sigma / 2.0;
            LogNormal::new(mu, self.sigma).map_or(self.mean, |d| d.sample(rng))
        } else {
            self.mean
        };
        n.round().clamp(1.0, f64::from(u32::MAX)) as u32
    }
}

/// The sampling parameters that shape the planned output.
#[derive(Debug, Clone, Default)]
pub struct GenParams {
    pub max_new_tokens: u32,
    pub ignore_eos: bool,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub no_stop_trim: bool,
}

/// Why the output ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Length(u32),
    StopToken(u32),
    StopString(String),
}

/// A planned output: ids, and the visible (cumulative) text after each of them.
#[derive(Debug, Clone)]
pub struct Planned {
    pub ids: Vec<u32>,
    text: String,
    /// `text_end[k]` = byte length of the visible text after `k` tokens (`k = 0..=n`).
    text_end: Vec<usize>,
    pub finish: Finish,
}

impl Planned {
    /// Visible text after the first `k` tokens (cumulative, as SGLang streams it).
    pub fn text_at(&self, k: usize) -> &str {
        &self.text[..self.text_end[k.min(self.ids.len())]]
    }

    pub fn text(&self) -> &str {
        self.text_at(self.ids.len())
    }
}

/// Plan the output for one request. `seed` already mixes the server seed and the request.
pub fn plan(tok: &Tokenizer, seed: u64, params: &GenParams, len: &OutputLen) -> Planned {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let target = if params.ignore_eos {
        u32::MAX
    } else {
        len.sample(&mut rng)
    } as usize;
    let limit = params.max_new_tokens as usize;
    let units = tok.units();
    let eos = tok.eos_id();
    let max_stop = params.stop.iter().map(String::len).max().unwrap_or(0);
    let mut out = Planned {
        ids: Vec::with_capacity(limit.min(target).min(4096)),
        text: String::new(),
        text_end: vec![0],
        finish: Finish::Length(limit as u32),
    };
    let mut after_word = false;
    'gen: while out.ids.len() < limit {
        if out.ids.len() + 1 >= target {
            out.ids.push(eos);
            out.text_end.push(out.text.len());
            out.finish = Finish::StopToken(eos);
            break;
        }
        let unit = if after_word && rng.random_bool(0.12) && !units.punct.is_empty() {
            after_word = false;
            let k = if rng.random_bool(0.25) {
                2
            } else {
                rng.random_range(0..2)
            };
            &units.punct[k.min(units.punct.len() - 1)]
        } else {
            after_word = true;
            &units.words[rng.random_range(0..units.words.len())]
        };
        let base = out.text.len();
        let mut unit_text_len = 0;
        for (id, text_after) in unit.ids.iter().zip(&unit.text_after) {
            if out.ids.len() >= limit {
                break 'gen;
            }
            let before = out.text.len();
            out.text
                .push_str(text_after.get(unit_text_len..).unwrap_or(""));
            unit_text_len = out.text.len() - base;
            out.ids.push(*id);
            if params.stop_token_ids.contains(id) {
                out.text.truncate(before);
                out.text_end.push(before);
                out.finish = Finish::StopToken(*id);
                break 'gen;
            }
            out.text_end.push(out.text.len());
            if max_stop > 0 {
                let mut from = before.saturating_sub(max_stop - 1);
                while !out.text.is_char_boundary(from) {
                    from -= 1;
                }
                let found = params
                    .stop
                    .iter()
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| out.text[from..].find(s.as_str()).map(|at| (at, s)))
                    .min_by_key(|(at, _)| *at);
                if let Some((at, s)) = found {
                    let cut = if params.no_stop_trim {
                        from + at + s.len()
                    } else {
                        from + at
                    };
                    out.text.truncate(cut);
                    // Held back as SGLang holds a possible stop-string start: text never shrinks.
                    for end in &mut out.text_end {
                        *end = (*end).min(cut);
                    }
                    out.finish = Finish::StopString(s.clone());
                    break 'gen;
                }
            }
        }
    }
    if out.finish == Finish::Length(limit as u32) {
        out.finish = Finish::Length(out.ids.len() as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(max: u32) -> GenParams {
        GenParams {
            max_new_tokens: max,
            ..Default::default()
        }
    }
    const LEN: OutputLen = OutputLen {
        mean: 110.0,
        sigma: 0.5,
    };

    #[test]
    fn deterministic_and_reencodes() {
        let tok = Tokenizer::builtin(152_064);
        let a = plan(&tok, 7, &params(4000), &LEN);
        let b = plan(&tok, 7, &params(4000), &LEN);
        assert_eq!(a.ids, b.ids);
        assert_eq!(a.finish, Finish::StopToken(tok.eos_id()));
        assert_eq!(*a.ids.last().unwrap(), tok.eos_id());
        assert_eq!(tok.encode(a.text()), a.ids[..a.ids.len() - 1]);
        assert_eq!(tok.decode(&a.ids), a.text());
        assert_ne!(plan(&tok, 8, &params(4000), &LEN).ids, a.ids);
    }

    #[test]
    fn mean_length_is_about_the_configured_mean() {
        let tok = Tokenizer::builtin(152_064);
        let n = 2000;
        let total: usize = (0..n)
            .map(|s| plan(&tok, s, &params(100_000), &LEN).ids.len())
            .sum();
        let mean = total as f64 / n as f64;
        assert!((100.0..=120.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn limits_and_stops() {
        let tok = Tokenizer::builtin(152_064);
        let p = plan(
            &tok,
            1,
            &GenParams {
                ignore_eos: true,
                ..params(300)
            },
            &LEN,
        );
        assert_eq!(p.ids.len(), 300);
        assert_eq!(p.finish, Finish::Length(300));
        assert!(!p.ids.contains(&tok.eos_id()));
        assert_eq!(plan(&tok, 1, &params(0), &LEN).finish, Finish::Length(0));

        // A stop string that the unconstrained output contains really stops it there.
        let free = plan(
            &tok,
            3,
            &GenParams {
                ignore_eos: true,
                ..params(200)
            },
            &LEN,
        );
        let word = free
            .text()
            .split(' ')
            .nth(5)
            .unwrap()
            .trim_matches(['.', ',', '\n']);
        let stop = format!(" {word}");
        let cut = plan(
            &tok,
            3,
            &GenParams {
                ignore_eos: true,
                stop: vec![stop.clone()],
                ..params(200)
            },
            &LEN,
        );
        assert_eq!(cut.finish, Finish::StopString(stop.clone()));
        assert!(!cut.text().contains(&stop));
        assert!(free.text().starts_with(cut.text()));
        assert!(free.text()[cut.text().len()..].starts_with(&stop));
        for k in 0..cut.ids.len() {
            assert!(
                cut.text().starts_with(cut.text_at(k)),
                "cumulative text never shrinks"
            );
        }
        // Stop token ids.
        let id = free.ids[10];
        let st = plan(
            &tok,
            3,
            &GenParams {
                ignore_eos: true,
                stop_token_ids: vec![id],
                ..params(200)
            },
            &LEN,
        );
        assert_eq!(st.finish, Finish::StopToken(id));
        assert_eq!(st.ids.last(), Some(&id));
    }
}
