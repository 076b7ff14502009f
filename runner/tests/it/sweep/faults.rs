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

#[test]
fn a_server_silent_before_its_first_token_fails_the_turn_at_the_first_token_timeout() {
    // An OpenAI stream's head waits for the first token (as SGLang's does): a server that
    // never sends it fails the turn after `first_token_timeout_s`, not `request_timeout_s`.
    let tmp = tempfile::tempdir().unwrap();
    let mut args = small_with(
        tmp.path(),
        "hung",
        &[
            ("--api", "openai"),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "2"),
        ],
    );
    args.extend(
        [
            "--first-token-timeout-s",
            "0.5",
            "--request-timeout-s",
            "600",
            "--sim-args=--sim-fault=stall=3000@before",
        ]
        .map(String::from),
    );
    let t0 = std::time::Instant::now();
    run_ok(&args);
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
    let run = Run::load(&tmp.path().join("hung"));
    let turns = run.turns();
    assert_eq!(turns.len(), 2, "each trajectory ends at its first turn");
    for r in &turns {
        let e = r.error.as_deref().unwrap();
        assert!(e.starts_with("stalled: no response"), "{e}");
        let e2e = r.e2e.unwrap() / 1000.0; // engine time at --sim-time-scale 1000
        assert!(
            (0.5..2.5).contains(&e2e),
            "failed at the first-token timeout: {e2e} s"
        );
    }
}

#[test]
fn a_request_waiting_for_its_first_token_longer_than_the_stall_timeout_is_not_failed() {
    // SGLang sends nothing while a request waits in its queue (the native route after the
    // response head, the OpenAI routes not even that): a wait past `stall_timeout_s` is not
    // a stall, only one past `first_token_timeout_s` is.
    for api in ["native", "openai"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut args = small_with(
            tmp.path(),
            "queued",
            &[
                ("--api", api),
                ("--cache-modes", "prefix"),
                ("--batch-sizes", "1"),
                ("--trajectories", "1"),
                ("--turns", "2"),
            ],
        );
        args.extend(
            [
                "--stall-timeout-s",
                "0.3",
                "--sim-args=--sim-fault=stall=1200@before",
            ]
            .map(String::from),
        );
        run_ok(&args);
        let run = Run::load(&tmp.path().join("queued"));
        let turns = run.turns();
        assert_eq!(turns.len(), 2, "{api}: {turns:?}");
        for r in &turns {
            assert_eq!(r.error, None, "{api}");
            // The wait is the turn's TTFT (engine time at --sim-time-scale 1000).
            assert!(r.ttft.unwrap() / 1000.0 >= 1.1, "{api}: {:?}", r.ttft);
        }
    }
}
