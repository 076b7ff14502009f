//! SIGKILL in the middle of a sweep, then `--resume`: every (cell, trajectory, turn) exactly
//! once in the final analysis, the partial trajectories re-run under a higher attempt.

use super::*;
use std::time::{Duration, Instant};

#[test]
fn sigkill_then_resume_gives_the_complete_set_once() {
    let tmp = tempfile::tempdir().unwrap();
    // Cache modes that keep the radix cache, so no cell restarts its server and the manifest's
    // servers are exactly those started with the run and with the resume.
    let mut args = small_with(tmp.path(), "killed", &[("--cache-modes", "prefix,session")]);
    // Slow enough to be killed midway: engine time only 20× faster, tool time replayed.
    args.extend(
        [
            "--trajectories",
            "4",
            "--turns",
            "6",
            "--sim-time-scale",
            "20",
            "--think-time",
            "replay",
        ]
        .map(String::from),
    );
    let mut child = runner()
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let turns = tmp.path().join("killed").join("turns.jsonl");
    let start = Instant::now();
    let lines = loop {
        let n = std::fs::read_to_string(&turns).map_or(0, |s| s.lines().count());
        if n >= 20 {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "sweep too slow to reach 20 turns"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "sweep ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let total = 4 * 4 * 6; // cells × trajectories × turns
    assert!(
        lines < total,
        "killed before the end ({lines} of {total} lines)"
    );
    // A torn last line, as a crash mid-write leaves it.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&turns)
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"gpu\":\"h10").unwrap();
    drop(f);
    // And in the telemetry.
    let telemetry = tmp.path().join("killed").join("telemetry.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&telemetry)
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"t\":1.2,\"gp").unwrap();
    drop(f);
    let read_manifest = || -> turnbench_schema::Manifest {
        let text = std::fs::read_to_string(tmp.path().join("killed/manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let before = read_manifest().servers;
    // Where each cell's clock stood when the run was killed.
    let stopped: std::collections::BTreeMap<(String, u32), f64> = {
        let text = std::fs::read_to_string(&turns).unwrap();
        let mut m = std::collections::BTreeMap::new();
        for line in text.lines() {
            let Ok(r) = serde_json::from_str::<turnbench_schema::TurnRecord>(line) else {
                continue;
            };
            let t = m
                .entry((r.cache_mode.to_string(), r.concurrency))
                .or_insert(0.0f64);
            *t = t.max(r.t_end);
        }
        m
    };

    // The run finishes with its own plan: a changed key is refused, not ignored.
    let err = run_err(&resume_args(
        tmp.path(),
        "killed",
        &["--trajectories", "99"],
    ));
    assert!(err.contains("drop --trajectories"), "{err}");
    run_ok(&resume_args(tmp.path(), "killed", &[]));
    let run = Run::load(&tmp.path().join("killed"));
    run.assert_complete(&[6, 6, 6, 6]);
    // The resume's telemetry starts a line of its own: every line reads.
    let text = std::fs::read_to_string(&telemetry).unwrap();
    assert!(text.lines().count() > 1);
    for l in text.lines() {
        serde_json::from_str::<turnbench_schema::TelemetrySample>(l).expect(l);
    }
    // The manifest keeps the server that started the run and adds the one that finished it
    // (a fresh simulated server, on a new port).
    let after = &run.manifest.servers;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1].gpu, "h100");
    assert_ne!(after[1].url, before[0].url);
    assert_eq!(
        run.turns().len(),
        total,
        "each (cell, trajectory, turn) once"
    );
    assert!(run.raw.len() >= total);
    // A cell the kill cut runs again from its start, every trajectory under one new attempt
    // (finishing only its cut trajectories would run them after the others, at a lower
    // concurrency than the cell's); cells finished before the kill are kept as they were.
    let mut attempts: std::collections::BTreeMap<(String, u32), std::collections::BTreeSet<u32>> =
        Default::default();
    for r in run.turns() {
        attempts
            .entry((r.cache_mode.to_string(), r.concurrency))
            .or_default()
            .insert(r.attempt);
    }
    assert!(attempts.values().all(|a| a.len() == 1), "{attempts:?}");
    assert!(
        attempts.values().any(|a| a.contains(&1)),
        "the cut cell re-ran: {attempts:?}"
    );
    for c in &run.summary.cells {
        assert_eq!(c.complete, Some(true), "{c:?}");
        // Its clock starts again: its time is the re-run's, not both runs'.
        let cut = attempts[&(c.cache_mode.to_string(), c.concurrency)].contains(&1);
        if let (true, Some(&at)) = (cut, stopped.get(&(c.cache_mode.to_string(), c.concurrency))) {
            let first = run
                .turns()
                .iter()
                .filter(|r| r.cache_mode == c.cache_mode && r.concurrency == c.concurrency)
                .map(|r| r.t_send)
                .fold(f64::MAX, f64::min);
            assert!(first < at, "{first} {at}");
        }
    }
    let resumed = run.raw.iter().filter(|r| r.attempt > 0).count();
    let superseded = run.raw.len() - total;
    assert!(
        superseded == 0 || resumed > 0,
        "superseded lines come only from re-run trajectories"
    );
}

#[test]
fn two_sweeps_started_together_get_a_run_each() {
    // Run ids come from the clock, to the second: started together, the second sweep takes
    // the next free id instead of writing into (or failing on) the first one's directory.
    let tmp = tempfile::tempdir().unwrap();
    let mut args = small(tmp.path(), "unused");
    args.retain(|a| !a.starts_with("--run-id"));
    let spawn = || {
        runner()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut runs: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    runs.sort();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in &runs {
        Run::load(&tmp.path().join(r)).assert_complete(&[4, 4]);
    }
}

#[test]
fn a_run_in_use_is_refused_to_a_second_sweep() {
    // A running sweep holds its run: a `--resume` of it, or another sweep given its id, is
    // refused (both would write the same records again); a directory holding records but no
    // manifest is not written into either.
    let tmp = tempfile::tempdir().unwrap();
    let mut args = small(tmp.path(), "busy");
    args.extend(["--sim-time-scale", "5", "--turns", "6"].map(String::from));
    let mut child = runner()
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let manifest = tmp.path().join("busy").join("manifest.json");
    let start = Instant::now();
    while !manifest.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the sweep did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = tmp.path().display().to_string();
    let err = run_err(&["sweep", "--out", &out, "--resume", "busy"].map(String::from));
    assert!(err.contains("in use by another sweep"), "{err}");
    let err = run_err(&args);
    assert!(err.contains("in use by another sweep"), "{err}");
    // Nor is it packed while its files grow.
    let bundle = tmp.path().join("busy.tar.gz").display().to_string();
    let run_dir = tmp.path().join("busy").display().to_string();
    let err = run_err(&["pack".into(), run_dir.clone(), "-o".into(), bundle.clone()]);
    assert!(err.contains("in use by a sweep"), "{err}");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    child.kill().unwrap();
    child.wait().unwrap();
    // Once it is gone, the run can be resumed.
    run_ok(&["sweep", "--quiet", "--out", &out, "--resume", "busy"].map(String::from));
    let done = Run::load(&tmp.path().join("busy"));
    done.assert_complete(&[6, 6]);
    run_ok(&["pack".into(), run_dir, "-o".into(), bundle]);
    // Resuming a finished run starts nothing and changes nothing.
    let again = run_ok(&["sweep", "--out", &out, "--resume", "busy"].map(String::from));
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(said.contains("nothing left to run"), "{said}");
    let after = Run::load(&tmp.path().join("busy"));
    assert_eq!(after.manifest.servers.len(), done.manifest.servers.len());
    assert_eq!(after.raw.len(), done.raw.len());

    // A run stopped before its manifest was written ran nothing: a resume says to start it.
    std::fs::create_dir(tmp.path().join("early")).unwrap();
    let err = run_err(&["sweep", "--quiet", "--out", &out, "--resume", "early"].map(String::from));
    assert!(
        err.contains("nothing of it was run") && err.contains("--run-id early"),
        "{err}"
    );

    let orphan = tmp.path().join("orphan");
    std::fs::create_dir(&orphan).unwrap();
    std::fs::write(orphan.join("turns.jsonl"), "{}\n").unwrap();
    let err = run_err(&small(tmp.path(), "orphan"));
    assert!(err.contains("no manifest"), "{err}");
    assert_eq!(
        std::fs::read_to_string(orphan.join("turns.jsonl")).unwrap(),
        "{}\n"
    );
}

#[test]
fn resume_names_what_is_wrong_with_its_run_id() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().display().to_string();
    for id in ["", "..", "a/b"] {
        let err = run_err(&["sweep", "--out", &out, "--resume", id].map(String::from));
        assert!(err.contains("not a run id"), "{id:?}: {err}");
    }
    let err = run_err(&["sweep", "--out", &out, "--resume", "gone"].map(String::from));
    assert!(err.contains("no run directory"), "{err}");
}
