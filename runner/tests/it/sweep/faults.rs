//! Fault injection through serve-sim's `--sim-fault`: the sweep completes, every failure is a
//! recorded turn that ends its trajectory, nothing panics.

use super::*;
use std::collections::BTreeMap;

fn kinds(run: &Run) -> BTreeMap<&'static str, usize> {
    let mut k = BTreeMap::new();
    for r in run.turns() {
        let Some(e) = &r.error else { continue };
        let kind = if e.starts_with("HTTP 500") {
            "http500"
        } else if e.starts_with("stalled") {
            "stall"
        } else if e.starts_with("malformed") {
            "malformed"
        } else if e.starts_with("stream dropped") || e.starts_with("connection") {
            "drop"
        } else {
            "other"
        };
        *k.entry(kind).or_default() += 1;
    }
    k
}

#[test]
fn injected_faults_are_recorded_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = small(tmp.path(), "faults");
    args.extend(
        [
            "--trajectories",
            "16",
            "--turns",
            "5",
            "--batch-sizes",
            "2,4",
            "--stall-timeout-s",
            "0.5",
            // Rates that leave no run without each kind (~10 of each expected: at 4 % on
            // 10 trajectories one run in ~50 had no stall, a failure ending its trajectory).
            "--sim-args=--sim-fault=http500=0.05",
            "--sim-args=--sim-fault=stall=2000@during,0.08",
            "--sim-args=--sim-fault=drop=0.06",
            "--sim-args=--sim-fault=malformed=0.06",
        ]
        .map(String::from),
    );
    let out = run_ok(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let run = Run::load(&tmp.path().join("faults"));
    run.assert_complete(&[5; 16]);
    let k = kinds(&run);
    for kind in ["http500", "stall", "malformed", "drop"] {
        assert!(
            k.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} failure recorded: {k:?}"
        );
    }
    assert_eq!(k.get("other"), None, "unexpected failures: {k:?}");
    let failed: u64 = run.summary.cells.iter().map(|c| c.failed_turns).sum();
    assert_eq!(failed as usize, k.values().sum::<usize>());
    for c in &run.summary.cells {
        assert_eq!(c.errors.values().sum::<u64>(), c.failed_turns);
    }
}
