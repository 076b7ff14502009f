//! Guards on the results contract: round trips, unknown fields rejected, summaries
//! recomputed independently.

use turnbench_schema::summary::{best_cells, summarize};
use turnbench_schema::*;

fn rec(traj: u32, turn: u32, t_send: f64, t_end: f64, out: u64, err: Option<&str>) -> TurnRecord {
    TurnRecord {
        gpu: "1".into(),
        cache_mode: CacheMode::Prefix,
        concurrency: 2,
        traj,
        traj_id: format!("t{traj}"),
        turn,
        attempt: 0,
        t_send,
        t_first_token: Some(t_send + 0.1),
        t_end,
        ttft: Some(0.1),
        e2e: Some(t_end - t_send),
        itl: ItlSummary::of(&[0.01, 0.02]),
        prompt_tokens: Some(100),
        cached_tokens: Some(40),
        completion_tokens: Some(out),
        think_time: 0.0,
        finish_reason: Some("stop".into()),
        error: err.map(String::from),
        in_flight: 2,
        server_ttft: None,
        retractions: None,
    }
}

#[test]
fn turn_record_round_trips_and_rejects_unknown_fields() {
    let r = rec(0, 0, 0.0, 1.0, 10, None);
    let line = serde_json::to_string(&r).unwrap();
    let back: TurnRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(back, r);

    let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["surprise"] = serde_json::json!(1);
    let err = serde_json::from_value::<TurnRecord>(v).unwrap_err();
    assert!(err.to_string().contains("surprise"), "{err}");
}

#[test]
fn every_type_rejects_unknown_fields() {
    let tel = r#"{"t":1.0,"gpu":"1","source":"metrics","values":{},"extra":true}"#;
    assert!(serde_json::from_str::<TelemetrySample>(tel).is_err());
    let sum = r#"{"schema_version":1,"run_id":"x","simulated":true,"cells":[],"best":[],"x":1}"#;
    assert!(serde_json::from_str::<Summary>(sum).is_err());
    let ok = r#"{"schema_version":1,"run_id":"x","simulated":true,"cells":[],"best":[]}"#;
    assert!(serde_json::from_str::<Summary>(ok).is_ok());
}

#[test]
fn cache_mode_names() {
    for m in CacheMode::ALL {
        assert_eq!(m.as_str().parse::<CacheMode>().unwrap(), m);
        assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
    }
    assert!("radix".parse::<CacheMode>().is_err());
}

#[test]
fn summary_matches_hand_computation() {
    // Two trajectories, 2 turns each; traj 1's second turn failed.
    let recs = vec![
        rec(0, 0, 0.0, 1.0, 10, None),
        rec(1, 0, 0.0, 2.0, 20, None),
        rec(0, 1, 1.5, 3.0, 30, None),
        rec(1, 1, 2.5, 4.0, 0, Some("HTTP 500")),
    ];
    let cells = summarize(&recs);
    assert_eq!(cells.len(), 1);
    let c = &cells[0];
    assert_eq!(c.total_time_s, 4.0);
    assert_eq!(c.trajectories, 2);
    assert_eq!(c.trajectories_ok, 1);
    assert_eq!(c.failed_turns, 1);
    assert_eq!(c.total_output_tokens, 60);
    assert_eq!(c.output_tok_per_s, 15.0);
    assert_eq!(c.traj_per_s, 0.25);
    // Over the trajectories that succeeded: traj 0, 0..3 (traj 1 failed, early).
    assert_eq!(c.avg_traj_time_s, Some(3.0));
    assert_eq!(c.tokens_per_turn, Some(15.0));
    assert_eq!(c.prompt_tokens_total, 400);
    assert_eq!(c.cached_tokens_total, Some(160));
    assert_eq!(c.prefill_tokens_computed, Some(240));
    assert_eq!(c.cache_hit_ratio, Some(0.4));
    assert_eq!(c.ttft.count, 3);
    assert_eq!(c.errors.get("HTTP 500"), Some(&1));
    // e2e of ok turns: 1, 2, 1.5 -> p50 1.5
    assert_eq!(c.e2e.p50, Some(1.5));
}

#[test]
fn missing_cached_tokens_gives_none() {
    let mut r = rec(0, 0, 0.0, 1.0, 10, None);
    r.cached_tokens = None;
    let c = &summarize(&[r])[0];
    assert_eq!(c.cached_tokens_total, None);
    assert_eq!(c.cache_hit_ratio, None);
}

#[test]
fn best_cells_pick_per_criterion() {
    let mut a = vec![rec(0, 0, 0.0, 1.0, 100, None)];
    let mut b = vec![rec(0, 0, 0.0, 4.0, 1000, None)];
    for r in &mut b {
        r.concurrency = 8;
    }
    a.append(&mut b);
    let cells = summarize(&a);
    let best = best_cells(&cells);
    let tok = best
        .iter()
        .find(|b| b.cache_mode.is_none() && b.criterion == "output_tok_per_s")
        .unwrap();
    assert_eq!(tok.best_concurrency, 8);
    let time = best
        .iter()
        .find(|b| b.cache_mode.is_none() && b.criterion == "avg_traj_time_s")
        .unwrap();
    assert_eq!(time.best_concurrency, 2);
}

#[test]
fn a_none_cell_whose_server_reused_cache_is_flagged_and_never_best() {
    // `none` on an attached server started with the radix cache on: it reports cached tokens,
    // and its (faster) figures must not pass for the best configuration.
    let mut none = rec(0, 0, 0.0, 0.5, 1000, None);
    none.cache_mode = CacheMode::None;
    let prefix = rec(0, 0, 0.0, 1.0, 1000, None);
    let cells = summarize(&[none.clone(), prefix]);
    let flagged: Vec<CacheMode> = cells
        .iter()
        .filter(|c| c.cache_not_off())
        .map(|c| c.cache_mode)
        .collect();
    assert_eq!(flagged, [CacheMode::None]);
    let overall = best_cells(&cells)
        .into_iter()
        .find(|b| b.cache_mode.is_none() && b.criterion == "output_tok_per_s")
        .unwrap();
    assert_eq!(overall.best_cache_mode, CacheMode::Prefix);
    // Without cached tokens the none cell is a true baseline, and may be best.
    none.cached_tokens = Some(0);
    let cells = summarize(&[none, rec(0, 0, 0.0, 1.0, 1000, None)]);
    assert!(cells.iter().all(|c| !c.cache_not_off()));
    let overall = best_cells(&cells)
        .into_iter()
        .find(|b| b.cache_mode.is_none() && b.criterion == "output_tok_per_s")
        .unwrap();
    assert_eq!(overall.best_cache_mode, CacheMode::None);
}

#[test]
fn latest_attempt_supersedes_partial_lines() {
    let mut old = rec(0, 0, 0.0, 1.0, 10, None);
    old.attempt = 0;
    let mut new0 = old.clone();
    new0.attempt = 1;
    let mut new1 = rec(0, 1, 1.0, 2.0, 10, None);
    new1.attempt = 1;
    let other = rec(1, 0, 0.0, 1.0, 10, None);
    let kept = turn::latest_attempts(vec![old, new0.clone(), new1.clone(), other.clone()]);
    assert_eq!(kept, vec![new0, new1, other]);
}

#[test]
fn backend_chat_template_is_optional_for_older_manifests() {
    let old = r#"{"kind":"sim","access":"sim","api":"native","sim":null}"#;
    let b: BackendInfo = serde_json::from_str(old).unwrap();
    assert_eq!(b.chat_template, None);
    let new = r#"{"kind":"sglang","access":"attach","api":"native","sim":null,
        "chat_template":"tokenizer_config.json sha256:0123456789abcdef"}"#;
    let b: BackendInfo = serde_json::from_str(new).unwrap();
    assert_eq!(
        b.chat_template.as_deref(),
        Some("tokenizer_config.json sha256:0123456789abcdef")
    );
    let back: BackendInfo = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
    assert_eq!(back, b);
    assert!(
        serde_json::from_str::<BackendInfo>(&new.replace("chat_template", "template")).is_err()
    );
}

#[test]
fn with_turn_counts_a_cut_trajectory_is_no_success_and_the_cell_is_incomplete() {
    use turnbench_schema::summary::summarize_with;
    // Trajectory 0: both turns. Trajectory 1: failed at turn 0 (ended). Trajectory 2: one of
    // its two turns (the run was killed). Trajectory 3: never started.
    let recs = vec![
        rec(0, 0, 0.0, 1.0, 10, None),
        rec(0, 1, 1.0, 2.0, 10, None),
        rec(1, 0, 0.0, 0.2, 0, Some("HTTP 500")),
        rec(2, 0, 0.0, 1.5, 10, None),
    ];
    let c = &summarize_with(&recs, &[2, 2, 2])[0];
    assert_eq!(c.trajectories, 3);
    assert_eq!(c.trajectories_ok, 1, "only trajectory 0 ran to its end");
    assert_eq!(c.avg_traj_time_s, Some(2.0), "the mean over successes only");
    assert_eq!(c.trajectories_planned, Some(3));
    assert_eq!(c.complete, Some(false));
    let c = &summarize_with(&recs[..3], &[2, 2])[0];
    assert_eq!(c.complete, Some(true), "a failure ends a trajectory");
    // Without counts: unknown, and every trajectory without a failed turn is a success.
    let c = &summarize(&recs)[0];
    assert_eq!((c.complete, c.trajectories_ok), (None, 2));
}

#[test]
fn token_totals_past_u64_saturate_instead_of_wrapping() {
    // Hand-edited or corrupt records: totals stay at the largest count, never wrap to a
    // small one (nor panic).
    let mut a = rec(0, 0, 0.0, 1.0, u64::MAX, None);
    let mut b = rec(1, 0, 0.0, 1.0, u64::MAX, None);
    for r in [&mut a, &mut b] {
        r.prompt_tokens = Some(u64::MAX);
        r.cached_tokens = Some(u64::MAX);
    }
    let s = summarize(&[a, b]);
    let c = &s[0];
    assert_eq!(c.total_output_tokens, u64::MAX);
    assert_eq!(c.prompt_tokens_total, u64::MAX);
    assert_eq!(c.cached_tokens_total, Some(u64::MAX));
    assert_eq!(c.cache_hit_ratio, Some(1.0));
}

#[test]
fn tpot_is_bench_servings_and_missing_when_no_decode_time_was_seen() {
    // 1 s to the end, 0.1 s to the first token, 10 tokens: 0.9 s over the 9 after the first.
    let r = rec(0, 0, 0.0, 1.0, 10, None);
    assert!((r.tpot().unwrap() - 0.1).abs() < 1e-12);
    // Every token in the first chunk: the stream ends with its first content.
    let mut all_at_once = r.clone();
    all_at_once.e2e = all_at_once.ttft;
    assert_eq!(all_at_once.tpot(), None);
    // One token: no token after the first.
    assert_eq!(rec(0, 0, 0.0, 1.0, 1, None).tpot(), None);
    // And so the summary's TPOT percentiles leave that turn out.
    let cells = summarize(&[r.clone(), all_at_once]);
    assert_eq!(cells[0].tpot.p50, r.tpot());
}

/// Every time in a record is read back from `turns.jsonl` as the very number written: a
/// summary recomputed from the file (by the report, or by a resume) equals the runner's to
/// the last bit, so its bytes do not change.
#[test]
fn times_read_back_from_the_jsonl_are_the_numbers_written() {
    // A deterministic spread of doubles of every magnitude a record holds (seconds since a
    // cell's start: 1e-7 to 1e5), with all their 53 bits in use.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut off = 0;
    for i in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mantissa = (x >> 11) as f64 / (1u64 << 53) as f64;
        let t = mantissa * 10f64.powi((i % 13) - 7);
        let mut r = rec(0, 0, t, t * 3.0 + 1.0, 10, None);
        r.ttft = Some(t * 0.7);
        r.think_time = t / 3.0;
        let mut line = Vec::new();
        jsonl::write_line(&mut line, &r).unwrap();
        let back: TurnRecord = serde_json::from_slice(&line).unwrap();
        if back.t_send.to_bits() != t.to_bits()
            || back.ttft != r.ttft
            || back.think_time.to_bits() != r.think_time.to_bits()
        {
            off += 1;
        }
    }
    assert_eq!(off, 0, "{off} of 20000 records read back other numbers");
}
