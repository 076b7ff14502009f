//! Injected faults for reliability tests (`--sim-fault`, repeatable), deterministic with the
//! seed: request number `n` draws its faults from a generator seeded by (seed, n).
//!
//! Syntax:
//! - `http500=RATE`, `http503=RATE`: answer that status instead of generating.
//! - `stall=MS@before[,RATE]`: wait MS milliseconds before the first output;
//!   `stall=MS@during[,RATE]`: wait MS milliseconds in the middle of the output.
//! - `drop=RATE`: drop the connection mid-stream (mid-body when not streaming).
//! - `malformed=RATE`: send one malformed SSE chunk (a truncated body when not streaming).
//! - `exit-after=N`: the process exits (status 3) once N generation requests were answered.
//!
//! RATE is a probability in [0, 1] (default 1 for `stall`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Http500(f64),
    Http503(f64),
    StallBefore { ms: u64, rate: f64 },
    StallDuring { ms: u64, rate: f64 },
    Drop(f64),
    Malformed(f64),
    ExitAfter(u64),
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        let (kind, value) = s
            .split_once('=')
            .ok_or_else(|| format!("--sim-fault {s:?}: expected KIND=VALUE"))?;
        let rate = |v: &str| -> Result<f64, String> {
            match v.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!(
                    "--sim-fault {s:?}: rate {v:?} is not a number in [0, 1]"
                )),
            }
        };
        match kind {
            "http500" => Ok(Fault::Http500(rate(value)?)),
            "http503" => Ok(Fault::Http503(rate(value)?)),
            "drop" => Ok(Fault::Drop(rate(value)?)),
            "malformed" => Ok(Fault::Malformed(rate(value)?)),
            "exit-after" => value
                .parse()
                .map(Fault::ExitAfter)
                .map_err(|_| format!("--sim-fault {s:?}: {value:?} is not a request count")),
            "stall" => {
                let (ms, rest) = value
                    .split_once('@')
                    .ok_or_else(|| format!("--sim-fault {s:?}: expected stall=MS@before|during"))?;
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| format!("--sim-fault {s:?}: {ms:?} is not milliseconds"))?;
                let (at, r) = match rest.split_once(',') {
                    Some((at, r)) => (at, rate(r)?),
                    None => (rest, 1.0),
                };
                match at {
                    "before" => Ok(Fault::StallBefore { ms, rate: r }),
                    "during" => Ok(Fault::StallDuring { ms, rate: r }),
                    _ => Err(format!(
                        "--sim-fault {s:?}: stall is @before or @during, not {at:?}"
                    )),
                }
            }
            _ => Err(format!(
                "--sim-fault {s:?}: unknown fault {kind:?} (http500, http503, stall, drop, \
                 malformed, exit-after)"
            )),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Http500(r) => write!(f, "http500={r}"),
            Fault::Http503(r) => write!(f, "http503={r}"),
            Fault::StallBefore { ms, rate } => write!(f, "stall={ms}@before,{rate}"),
            Fault::StallDuring { ms, rate } => write!(f, "stall={ms}@during,{rate}"),
            Fault::Drop(r) => write!(f, "drop={r}"),
            Fault::Malformed(r) => write!(f, "malformed={r}"),
            Fault::ExitAfter(n) => write!(f, "exit-after={n}"),
        }
    }
}

impl Serialize for Fault {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What goes wrong with one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Answer this HTTP status instead of generating.
    pub status: Option<u16>,
    pub stall_before: Option<Duration>,
    pub stall_during: Option<Duration>,
    pub drop: bool,
    pub malformed: bool,
}

impl FaultPlan {
    /// Draw the faults of generation request number `n`.
    pub fn draw(faults: &[Fault], seed: u64, n: u64) -> FaultPlan {
        let mut plan = FaultPlan::default();
        if faults.is_empty() {
            return plan;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut hit = |r: f64| rng.random::<f64>() < r;
        for f in faults {
            match *f {
                Fault::Http500(r) if plan.status.is_none() && hit(r) => plan.status = Some(500),
                Fault::Http503(r) if plan.status.is_none() && hit(r) => plan.status = Some(503),
                Fault::StallBefore { ms, rate } if hit(rate) => {
                    plan.stall_before = Some(Duration::from_millis(ms))
                }
                Fault::StallDuring { ms, rate } if hit(rate) => {
                    plan.stall_during = Some(Duration::from_millis(ms))
                }
                Fault::Drop(r) if hit(r) => plan.drop = true,
                Fault::Malformed(r) if hit(r) => plan.malformed = true,
                _ => {}
            }
        }
        plan
    }
}

/// `exit-after=N`, if given.
pub fn exit_after(faults: &[Fault]) -> Option<u64> {
    faults.iter().find_map(|f| match f {
        Fault::ExitAfter(n) => Some(*n),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_round_trips() {
        for s in [
            "http500=0.5",
            "http503=1",
            "stall=250@before,0.5",
            "stall=10@during,1",
            "drop=0.25",
            "malformed=1",
            "exit-after=3",
        ] {
            let f: Fault = s.parse().unwrap();
            assert_eq!(f.to_string().parse::<Fault>().unwrap(), f, "{s}");
        }
        assert_eq!(
            "stall=5@during".parse::<Fault>().unwrap(),
            Fault::StallDuring { ms: 5, rate: 1.0 }
        );
        for bad in [
            "http500",
            "http500=2",
            "stall=5",
            "stall=x@before",
            "stall=5@later",
            "boom=1",
        ] {
            let e = bad.parse::<Fault>().unwrap_err();
            assert!(e.contains("--sim-fault"), "{e}");
        }
    }

    #[test]
    fn draws_are_deterministic_and_follow_the_rate() {
        let f = [Fault::Http500(0.3), Fault::Drop(0.5)];
        let a: Vec<_> = (0..1000).map(|n| FaultPlan::draw(&f, 9, n)).collect();
        let b: Vec<_> = (0..1000).map(|n| FaultPlan::draw(&f, 9, n)).collect();
        assert_eq!(a, b);
        let n500 = a.iter().filter(|p| p.status == Some(500)).count();
        assert!((230..370).contains(&n500), "{n500}");
        assert!(FaultPlan::draw(&[], 9, 1) == FaultPlan::default());
    }
}
