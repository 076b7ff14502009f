//! The key experiment: the three cache modes side by side through the real binary.

use super::*;
use turnbench_schema::{BackendKind, CacheMode};

#[test]
fn three_cache_modes_record_what_the_engine_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_ok(&small(tmp.path(), "modes"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Token Throughput"),
        "seed table printed:\n{stdout}"
    );
    assert!(stdout.contains("Best by token throughput"), "{stdout}");

    let run = Run::load(&tmp.path().join("modes"));
    let m = &run.manifest;
    assert!(m.simulated);
    assert_eq!(m.backend.kind, BackendKind::Sim);
    assert_eq!(m.backend.sim.as_ref().unwrap().time_scale, 1000.0);
    assert_eq!(m.backend.sim.as_ref().unwrap().gpu_profile, "h100");
    assert_eq!(m.cells.len(), 6);
    let limits = &m.limits[0];
    assert_eq!(limits.gpu, "h100");
    assert_eq!(limits.decode_tok_per_s.len(), 2);
    assert!(
        limits.decode_tok_per_s[1].1 > limits.decode_tok_per_s[0].1
            && limits.prefill_tok_per_s > 0.0
    );
    assert_eq!(m.dataset.kind, "synthetic");
    assert_eq!((m.dataset.trajectories, m.dataset.turns), (2, 8));
    // One server with the radix cache, one without (for `none`).
    let radix: Vec<Option<bool>> = m.servers.iter().map(|s| s.disable_radix_cache).collect();
    assert_eq!(radix, [Some(false), Some(true)]);
    run.assert_complete(&[4, 4]);

    let turns = run.turns();
    assert!(turns.iter().all(|r| r.error.is_none()), "no failures");
    for r in &turns {
        assert!(r.prompt_tokens.unwrap() > 0 && r.completion_tokens.unwrap() > 0);
        assert!(r.ttft.unwrap() > 0.0 && r.e2e.unwrap() >= r.ttft.unwrap());
        assert!(r.t_send <= r.t_first_token.unwrap() && r.t_first_token.unwrap() <= r.t_end);
        assert!(r.in_flight >= 1 && r.in_flight <= r.concurrency);
    }
    for mode in [CacheMode::Prefix, CacheMode::Session] {
        for t in 0..2 {
            let (cached, prompt) = token_series(&turns, mode, t);
            assert!(
                cached[1..].iter().all(|&c| c > 0),
                "{mode}: later turns reuse the cache: {cached:?}"
            );
            assert!(
                cached.windows(2).all(|w| w[1] > w[0]),
                "{mode}: cached tokens rise: {cached:?}"
            );
            assert!(
                prompt.windows(2).all(|w| w[1] > w[0]),
                "{mode}: the conversation grows: {prompt:?}"
            );
        }
    }
    let none: Vec<u64> = turns
        .iter()
        .filter(|r| r.cache_mode == CacheMode::None)
        .map(|r| r.cached_tokens.unwrap())
        .collect();
    assert!(none.iter().all(|&c| c == 0), "none: no reuse: {none:?}");
    let hit = |mode| {
        run.summary
            .cells
            .iter()
            .find(|c| c.cache_mode == mode && c.concurrency == 1)
            .unwrap()
            .cache_hit_ratio
            .unwrap()
    };
    assert!(
        hit(CacheMode::Prefix) > 0.5,
        "prefix hit ratio {}",
        hit(CacheMode::Prefix)
    );
    assert_eq!(hit(CacheMode::None), 0.0);
    assert!(!run.summary.best.is_empty());
}

#[test]
fn bad_plans_are_rejected_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap().to_string();
    let err = run_err(&[
        "sweep".into(),
        "--plan".into(),
        fixture("bad-plan.toml").display().to_string(),
        "--out".into(),
        out.clone(),
    ]);
    assert!(
        err.contains("bad-plan.toml") && err.contains("batch_size"),
        "{err}"
    );
    let empty = tmp.path().join("empty.toml");
    std::fs::write(&empty, "cache_modes = []\n").unwrap();
    let err =
        run_err(&["sweep", "--out", &out, "--plan", empty.to_str().unwrap()].map(String::from));
    assert!(
        err.contains("`cache_modes`") && err.contains("empty"),
        "{err}"
    );
    std::fs::remove_file(&empty).unwrap();
    let err = run_err(
        &[
            "sweep",
            "--out",
            &out,
            "--batch-sizes",
            "h100=1;tpu=2",
            "--gpus",
            "h100",
        ]
        .map(String::from),
    );
    assert!(err.contains("batch_sizes.tpu"), "{err}");
    let err = run_err(&["sweep", "--out", &out, "--think-time", "later"].map(String::from));
    assert!(err.contains("think_time"), "{err}");
    let err = run_err(
        &[
            "sweep",
            "--out",
            &out,
            "--backend",
            "attach",
            "--url",
            "http://127.0.0.1:9",
        ]
        .map(String::from),
    );
    assert!(
        err.contains("urls[0]") && err.contains("unreachable"),
        "{err}"
    );
    // A concurrency the trajectories cannot reach; sizes past what memory holds.
    let err = run_err(
        &[
            "sweep",
            "--out",
            &out,
            "--trajectories",
            "2",
            "--batch-sizes",
            "1,2,8",
            "--gpus",
            "h100",
        ]
        .map(String::from),
    );
    assert!(
        err.contains("`batch_sizes`") && err.contains("concurrency 8"),
        "{err}"
    );
    // Paths of the wrong kind, said once and plainly.
    let nosuch = tmp.path().join("nosuch.toml");
    let err =
        run_err(&["sweep", "--out", &out, "--plan", nosuch.to_str().unwrap()].map(String::from));
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    let dir = tmp.path().display().to_string();
    let err = run_err(&["sweep", "--out", &out, "--dataset", &dir].map(String::from));
    assert!(
        err.contains("`dataset`") && err.contains("a directory, not a file"),
        "{err}"
    );
    // An answer as long as the server's whole context: every turn would fail.
    let err = run_err(
        &[
            "sweep",
            "--out",
            &out,
            "--gpus",
            "h100",
            "--max-new-tokens",
            "4000000",
        ]
        .map(String::from),
    );
    assert!(
        err.contains("`max_new_tokens`") && err.contains("no room for a prompt"),
        "{err}"
    );
    for (flag, value) in [
        ("--trajectories", "4294967296"),
        ("--turns", "18446744073709551615"),
    ] {
        let err = run_err(&["sweep", "--out", &out, flag, value].map(String::from));
        let key = flag.trim_start_matches("--");
        assert!(err.contains(&format!("`{key}`")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "nothing written for a rejected plan"
    );
}

#[test]
fn an_engine_that_never_waits_does_not_sleep_think_time_either() {
    // `--sim-time-scale inf`: no engine time passes, so the replayed tool time is neither
    // slept (it used to be slept in full, in wall seconds) nor recorded as if it had been.
    let tmp = tempfile::tempdir().unwrap();
    let args = small_with(
        tmp.path(),
        "inf",
        &[
            ("--sim-time-scale", "inf"),
            ("--think-time", "replay"),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
        ],
    );
    let t0 = std::time::Instant::now();
    let out = run_ok(&args);
    let wall = t0.elapsed().as_secs_f64();
    let run = Run::load(&tmp.path().join("inf"));
    // Its times are the harness's own, and everything says so.
    assert!(run.manifest.backend.sim.as_ref().unwrap().zero_cost);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("simulated with no engine cost"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a GPU's"), "{stderr}");
    run.assert_complete(&[4, 4]);
    assert!(stderr.contains("think time is not replayed"), "{stderr}");
    let think: Vec<f64> = run.turns().iter().map(|r| r.think_time).collect();
    assert!(think.iter().all(|&t| t == 0.0), "{think:?}");
    // Nor is the engine's own TTFT set beside the turn's: the cost model's time is no part
    // of the harness's wall time (the part of a TTFT outside the engine came out negative).
    assert!(run.turns().iter().all(|r| r.server_ttft.is_none()));
    // The same workload at a finite scale has tool time to replay, and records it.
    let finite = small_with(
        tmp.path(),
        "finite",
        &[
            ("--think-time", "replay"),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
        ],
    );
    run_ok(&finite);
    let finite = Run::load(&tmp.path().join("finite"));
    assert!(finite.turns().iter().all(|r| r.server_ttft.is_some()));
    let replayed: f64 = finite.turns().iter().map(|r| r.think_time).sum();
    assert!(replayed > 2.0, "the workload has tool time: {replayed}");
    assert!(
        wall < replayed / 2.0,
        "{wall} s of wall time for {replayed} s of tool time"
    );
}

#[test]
fn a_concurrency_past_the_open_files_limit_is_refused_up_front() {
    // 1024 streams to the in-process simulated server need ~2 files each: with a limit of
    // 400 the sweep would fail connections with EMFILE (and used to hang); it is refused.
    let tmp = tempfile::tempdir().unwrap();
    let args = small_with(
        tmp.path(),
        "fds",
        &[("--batch-sizes", "1024"), ("--trajectories", "1024")],
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 400 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_runner"))
        .args(&args);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`batch_sizes`") && err.contains("open files") && err.contains("(400)"),
        "{err}"
    );
    assert!(!tmp.path().join("fds").exists(), "nothing written");
}

#[test]
fn trajectories_that_will_outgrow_the_context_are_announced() {
    // Synthetic prompts grow ~1k tokens a turn: with a 6k context, 8 turns do not fit.
    let tmp = tempfile::tempdir().unwrap();
    let mut args = small_with(
        tmp.path(),
        "long",
        &[
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "2"),
            ("--turns", "8"),
        ],
    );
    args.push("--sim-args=--context-length=6000".into());
    let out = run_ok(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outgrow the server's input limit"), "{err}");
    let run = Run::load(&tmp.path().join("long"));
    assert!(run.turns().iter().any(|r| r
        .error
        .as_deref()
        .is_some_and(|e| e.contains("context length"))));
}

#[test]
fn a_time_scale_that_magnifies_the_harness_is_announced() {
    // At 5000 engine seconds per wall second, the client ↔ simulator round trip (a fraction
    // of a millisecond) is a large share of every simulated TTFT.
    let tmp = tempfile::tempdir().unwrap();
    let args = small_with(
        tmp.path(),
        "fast",
        &[
            ("--sim-time-scale", "5000"),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
        ],
    );
    let out = run_ok(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    // It is announced exactly when the records show it past 5 % of the median TTFT (almost
    // always at this scale; a CPU busy enough to wake the engine late stretches the server's
    // own TTFT too, and then it is not past 5 %).
    let run = Run::load(&tmp.path().join("fast"));
    let ok: Vec<_> = run
        .turns()
        .into_iter()
        .filter(|r| r.error.is_none())
        .collect();
    let client: Vec<f64> = ok.iter().map(|r| r.ttft.unwrap()).collect();
    let added: Vec<f64> = ok
        .iter()
        .map(|r| r.ttft.unwrap() - r.server_ttft.unwrap())
        .collect();
    let median = |v: &[f64]| turnbench_schema::stats::percentile(v, 50.0).unwrap();
    let share = median(&added) / median(&client);
    assert_eq!(
        err.contains("the harness's own latency"),
        share > 0.05,
        "share {share}: {err}"
    );
}

/// A sweep of 4 trajectories × 8 turns at concurrency 1 (scale 1000) with `think`: for each
/// gap between turns of a trajectory, the engine seconds from a turn's end to the next send
/// past its think time, sorted.
fn gaps_past_think_time(think: &str) -> Vec<f64> {
    let tmp = tempfile::tempdir().unwrap();
    run_ok(&small_with(
        tmp.path(),
        "gaps",
        &[
            ("--think-time", think),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
            ("--trajectories", "4"),
            ("--turns", "8"),
        ],
    ));
    let mut turns = Run::load(&tmp.path().join("gaps")).turns();
    turns.sort_by_key(|r| (r.traj, r.turn));
    let mut gaps: Vec<f64> = turns
        .windows(2)
        .filter(|w| w[0].traj == w[1].traj)
        .map(|w| w[1].t_send - w[0].t_end - w[0].think_time)
        .collect();
    assert!(gaps.len() >= 20, "{gaps:?}");
    gaps.sort_by(f64::total_cmp);
    gaps
}

#[test]
fn no_think_time_puts_no_pause_between_turns() {
    // Without think time the next turn is sent as soon as the last one ended: the client's
    // own gap (sub-millisecond wall time, × 1000 here) — not the ~1 ms tick of a zero-length
    // timer, which the time scale turned into a second of engine time per turn.
    let gaps = gaps_past_think_time("off");
    let median = gaps[gaps.len() / 2];
    assert!(
        median < 0.5,
        "engine seconds between turns at scale 1000: {gaps:?}"
    );
}

#[test]
fn replayed_think_time_is_slept_as_recorded() {
    // The gap between a turn's end and the next turn's send is its replayed think time plus
    // the client's own step: not half a millisecond of timer tick more (× 1000 here, half a
    // second of engine time per gap).
    // The client's own step is measured apart (no think time), so what is asserted is the
    // sleep's own overshoot, whatever this machine's speed (a debug build's step is ~0.25 ms).
    // A timer tick more is added to every gap (0.8–1.1 s more at the first quartile, with a
    // plain tokio sleep); a busy machine (tests in parallel) delays some gaps by as much, so
    // the first quartiles are compared, not the medians, with a margin of 0.6 (0.6 ms of
    // wall time: one run in three of the whole suite on 2 cores went past 0.3).
    let extra = gaps_past_think_time("replay");
    assert!(extra[0] > -0.01, "never sooner: {extra:?}");
    let own = gaps_past_think_time("off");
    let (q1, own_q1) = (extra[extra.len() / 4], own[own.len() / 4]);
    assert!(
        q1 - own_q1 < 0.6,
        "engine seconds past the think time at scale 1000: {extra:?}; without think time: {own:?}"
    );
}

#[test]
fn in_flight_counts_the_trajectories_in_progress_at_each_send() {
    // At least every trajectory that had sent its first turn and not ended its last is in
    // progress at a turn's send; never more than the concurrency.
    let tmp = tempfile::tempdir().unwrap();
    run_ok(&small_with(
        tmp.path(),
        "flight",
        &[
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "4"),
            ("--trajectories", "8"),
        ],
    ));
    let turns = Run::load(&tmp.path().join("flight")).turns();
    let span = |t: u32| {
        let of: Vec<_> = turns.iter().filter(|r| r.traj == t).collect();
        (
            of.iter().map(|r| r.t_send).fold(f64::INFINITY, f64::min),
            of.iter().map(|r| r.t_end).fold(0.0, f64::max),
        )
    };
    let spans: Vec<(f64, f64)> = (0..8).map(span).collect();
    for r in &turns {
        let visible = spans
            .iter()
            .filter(|(first, last)| *first <= r.t_send && r.t_send < *last)
            .count() as u32;
        assert!(
            r.in_flight >= visible && r.in_flight <= 4,
            "traj {} turn {} sent at {}: in_flight {}, {visible} visibly in progress",
            r.traj,
            r.turn,
            r.t_send,
            r.in_flight
        );
    }
}

#[test]
fn each_turn_keeps_the_servers_own_ttft_next_to_its_own() {
    // The simulator's timestamps (as SGLang's with --enable-metrics) give its own TTFT; the
    // client's is that plus what lies outside the engine, so never less. At a time scale
    // of 10^4 with 8 streams of 256 tokens the engine runs behind wall time × scale while
    // requests keep arriving (a step of ~20 ms costs more CPU than its 2 µs), as a busy
    // machine makes it at any scale: a request must still not join a step that began before
    // it arrived (before the fix, a run here lost a few turns' server TTFT now and then; the
    // engine's own test catches it every time).
    for (scale, streams, tokens) in [("1000", "1,2", "32"), ("10000", "8", "256")] {
        let tmp = tempfile::tempdir().unwrap();
        let args = small_with(
            tmp.path(),
            "srv",
            &[
                ("--cache-modes", "prefix,none"),
                ("--batch-sizes", streams),
                ("--sim-time-scale", scale),
                ("--max-new-tokens", tokens),
                ("--trajectories", "16"),
            ],
        );
        run_ok(&args);
        let run = Run::load(&tmp.path().join("srv"));
        let turns = run.turns();
        assert!(!turns.is_empty());
        // Both ends date bytes by kernel stamps taken from the real-time clock onto the
        // monotonic one, each within a few microseconds of wall time (× the scale here).
        let slack = 5e-6 * scale.parse::<f64>().unwrap();
        for r in turns.iter().filter(|r| r.error.is_none()) {
            let (c, s) = (
                r.ttft.unwrap(),
                r.server_ttft.expect("the server's own TTFT"),
            );
            assert!(
                s > 0.0 && s <= c + slack,
                "scale {scale}: server {s} vs client {c}"
            );
        }
    }
}

#[test]
fn turns_the_engine_retracted_are_counted_per_turn_and_per_cell() {
    // Sixteen short prompts with long answers (~1,000 tokens each) on a KV pool of 4,000 tokens:
    // admission reserves only part of each answer, so when they outgrow the pool the engine
    // preempts the newest (SGLang's retract_decode) and says so in each turn's last chunk.
    // With the default pool nothing is retracted, and each turn says so too.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("short.jsonl");
    let lines: Vec<String> = (0..16)
        .map(|i| {
            serde_json::json!({"id": format!("c{i}"), "messages": [
                {"role": "user", "content": format!("Write a long story about {i} and the sea.")},
                {"role": "assistant", "content": "The sea rolled on. ".repeat(250)}
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let over = [
        ("--dataset", data.to_str().unwrap()),
        ("--cache-modes", "prefix"),
        ("--batch-sizes", "16"),
        ("--trajectories", "16"),
        ("--max-new-tokens", "1000"),
        // Every turn generates exactly its recorded answer's length (ignore_eos, ~1,000
        // tokens), so the sixteen outgrow the pool whatever the sampling or the machine's load.
        ("--output-len", "recorded"),
    ];
    let mut tight = over.to_vec();
    tight.push(("--max-total-tokens", "4000"));
    let printed = run_ok(&small_with(tmp.path(), "tight", &tight)).stdout;
    let printed = String::from_utf8_lossy(&printed);
    run_ok(&small_with(tmp.path(), "ample", &over));
    let tight = Run::load(&tmp.path().join("tight"));
    let ample = Run::load(&tmp.path().join("ample"));
    tight.assert_complete(&[1; 16]);
    ample.assert_complete(&[1; 16]);
    let retracted = |run: &Run| {
        run.turns()
            .iter()
            .map(|r| u64::from(r.retractions.expect("the server's count") > 0))
            .sum::<u64>()
    };
    let (t, a) = (retracted(&tight), retracted(&ample));
    assert!(t > 0, "nothing retracted on a pool of 4,000 tokens");
    assert_eq!(a, 0);
    assert_eq!(tight.summary.cells[0].retracted_turns, Some(t));
    assert_eq!(ample.summary.cells[0].retracted_turns, Some(0));
    // The console's table has them in its last column.
    let header = printed.lines().find(|l| l.starts_with("Cache ")).unwrap();
    let row = printed.lines().find(|l| l.starts_with("prefix ")).unwrap();
    assert!(header.ends_with("Retracted"), "{printed}");
    assert_eq!(
        row.split_whitespace().last(),
        Some(&*t.to_string()),
        "{printed}"
    );
}
