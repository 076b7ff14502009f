//! Time series and per-turn statistics on hand-made records whose answers are known.

use crate::support::{tiny_spec, write_run};
use report::aggregate::{self, cell_series, TIME_POINTS};
use report::load;
use turnbench_schema::{CacheMode, TurnRecord};

fn record(
    traj: u32,
    turn: u32,
    t_send: f64,
    t_end: f64,
    tokens: u64,
    prompt: u64,
    cached: u64,
) -> TurnRecord {
    TurnRecord {
        gpu: "g".into(),
        cache_mode: CacheMode::Prefix,
        concurrency: 2,
        traj,
        traj_id: format!("t{traj}"),
        turn,
        attempt: 0,
        t_send,
        t_first_token: Some(t_send + 0.5),
        t_end,
        ttft: Some(0.5),
        e2e: Some(t_end - t_send),
        itl: None,
        prompt_tokens: Some(prompt),
        cached_tokens: Some(cached),
        completion_tokens: Some(tokens),
        think_time: 0.0,
        finish_reason: Some("stop".into()),
        error: None,
        in_flight: 2,
        server_ttft: None,
        retractions: None,
    }
}

#[test]
fn throughput_windows_and_in_flight() {
    // Trajectory 0: turns ending at 5 s (100 tokens) and 20 s (300 tokens).
    // Trajectory 1: one turn from 2 s to 8 s (50 tokens).
    let records = [
        record(0, 0, 0.0, 5.0, 100, 1000, 0),
        record(0, 1, 5.0, 20.0, 300, 1400, 1100),
        record(1, 0, 2.0, 8.0, 50, 1000, 0),
    ];
    let refs: Vec<&TurnRecord> = records.iter().collect();
    let s = cell_series(&refs, &[]).unwrap();
    assert_eq!(s.summary.total_time_s, 20.0);
    assert_eq!(s.throughput.len(), TIME_POINTS);
    let at = |t: f64| {
        *s.throughput
            .iter()
            .find(|p| (p.t - t).abs() < 1e-9)
            .unwrap()
    };
    // t = 5: window is the 5 s elapsed; 100 tokens done.
    assert_eq!((at(5.0).sliding, at(5.0).cumulative), (20.0, 20.0));
    // t = 10: 150 tokens in (0, 10]; cumulative 150 / 10.
    assert_eq!((at(10.0).sliding, at(10.0).cumulative), (15.0, 15.0));
    // t = 15: nothing finished in (5, 15] except the 50 at 8 s.
    assert_eq!(at(15.0).sliding, 5.0);
    assert!((at(15.0).cumulative - 150.0 / 15.0).abs() < 1e-12);
    // t = 20: 300 tokens in (10, 20]; 450 in all.
    assert_eq!((at(20.0).sliding, at(20.0).cumulative), (30.0, 22.5));

    let flight = |t: f64| {
        s.in_flight
            .iter()
            .find(|p| (p.0 - t).abs() < 1e-9)
            .unwrap()
            .1
    };
    assert_eq!(flight(0.0), 1);
    assert_eq!(flight(3.0), 2);
    assert_eq!(flight(8.0), 1, "trajectory 1 ended at 8 s");
    assert_eq!(flight(20.0), 0);

    // Per turn index: turn 0 has two records, turn 1 one.
    assert_eq!(s.by_turn.len(), 2);
    assert_eq!(s.by_turn[0].turns, 2);
    assert_eq!(s.by_turn[0].prompt_tokens_mean, Some(1000.0));
    assert_eq!(s.by_turn[0].cache_hit_ratio, Some(0.0));
    assert_eq!(s.by_turn[1].cache_hit_ratio, Some(1100.0 / 1400.0));
    let e2e0 = s.by_turn[0].e2e.unwrap();
    // E2E at turn 0: 5 and 6 s; numpy-linear p10 = 5.1, p50 = 5.5, p90 = 5.9.
    assert!(
        (e2e0.p10 - 5.1).abs() < 1e-12
            && (e2e0.p50 - 5.5).abs() < 1e-12
            && (e2e0.p90 - 5.9).abs() < 1e-12
    );
    // Quantile curves: 101 points from min to max.
    assert_eq!(s.e2e_quantiles.len(), 101);
    assert_eq!((s.e2e_quantiles[0], s.e2e_quantiles[100]), (5.0, 15.0));
}

#[test]
fn a_resumed_runs_telemetry_is_its_sessions_end_to_end() {
    // A resume appends telemetry timed from its own start: the second session's samples
    // start again near 0. Each session is a series of its own, placed after the one before.
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_run(tmp.path(), "tele", &tiny_spec("tele"));
    let path = dir.join("telemetry.jsonl");
    let first = std::fs::read_to_string(&path).unwrap();
    let samples: Vec<turnbench_schema::TelemetrySample> = first
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let end = samples.iter().map(|s| s.t).fold(0.0, f64::max);
    let mut text = first.clone();
    for (i, v) in [7.0, 8.0, 9.0].into_iter().enumerate() {
        let mut s = samples[0].clone();
        s.t = 0.01 + i as f64;
        s.values = [("num_running_reqs".to_string(), v)].into();
        text.push_str(&serde_json::to_string(&s).unwrap());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let agg = aggregate::aggregate(&load::load_dir(&dir).unwrap());
    let series: Vec<_> = agg
        .telemetry
        .iter()
        .filter(|t| t.gpu == samples[0].gpu && t.key == "num_running_reqs")
        .collect();
    assert_eq!(series.len(), 1);
    let sessions = &series[0].sessions;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let ys: Vec<f64> = sessions[1].iter().map(|p| p.1).collect();
    assert_eq!(ys, [7.0, 8.0, 9.0]);
    let first_end = sessions[0].iter().map(|p| p.0).fold(0.0, f64::max);
    assert_eq!(first_end, end);
    let xs: Vec<f64> = sessions[1].iter().map(|p| p.0).collect();
    assert!(
        xs[0] >= end && xs.windows(2).all(|w| w[0] < w[1]),
        "{xs:?} after {end}"
    );
    // Each session's points in time order; no other series split.
    for t in &agg.telemetry {
        for s in &t.sessions {
            assert!(s.windows(2).all(|w| w[0].0 <= w[1].0));
        }
        if t.gpu != samples[0].gpu || t.key != "num_running_reqs" {
            assert_eq!(t.sessions.len(), 1, "{}: {:?}", t.key, t.sessions);
        }
    }
    // The chart draws one line per session and says what its axis is.
    let chart = report::charts::telemetry(&mut report::charts::Ids::default(), series[0]);
    assert_eq!(chart.data.len(), 2);
    assert!(chart.note.contains("several sessions"));
    assert_eq!(chart.data[0]["mode"], "lines");
    // A session of one sample is a marker (a line of one point draws nothing).
    let one = report::aggregate::TelemetrySeries {
        sessions: vec![vec![(1.0, 2.0)]],
        ..series[0].clone()
    };
    let chart = report::charts::telemetry(&mut report::charts::Ids::default(), &one);
    assert_eq!(chart.data[0]["mode"], "markers");
}

#[test]
fn telemetry_marks_the_cells_that_ran_when_it_was_sampled() {
    // The fixture samples each cell's stretch (cell named on every sample), cells one after
    // another: each becomes a band, in run order, between its first and last sample.
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_run(tmp.path(), "bands", &tiny_spec("bands"));
    let run = load::load_dir(&dir).unwrap();
    let agg = aggregate::aggregate(&run);
    let series = agg
        .telemetry
        .iter()
        .find(|t| t.key == "num_running_reqs")
        .unwrap();
    let mut expected: Vec<(String, f64, f64)> = Vec::new();
    for s in run.telemetry.iter().filter(|s| s.gpu == series.gpu) {
        let cell = s.cell.clone().unwrap();
        match expected.last_mut() {
            Some(last) if last.0 == cell => last.2 = s.t,
            _ => expected.push((cell, s.t, s.t)),
        }
    }
    assert_eq!(
        expected.len(),
        4,
        "two modes × two concurrencies: {expected:?}"
    );
    let got: Vec<(String, f64, f64)> = series
        .cells
        .iter()
        .map(|c| (c.cell.clone(), c.start, c.end))
        .collect();
    assert_eq!(got, expected);
    // The chart shades each and names it at the top.
    let chart = report::charts::telemetry(&mut report::charts::Ids::default(), series);
    let shapes = chart.layout["shapes"].as_array().unwrap();
    let notes = chart.layout["annotations"].as_array().unwrap();
    assert_eq!((shapes.len(), notes.len()), (4, 4));
    assert_eq!(notes[0]["text"], "prefix c=1");
    // (Chart numbers are rounded to 6 significant digits.)
    let x0 = shapes[1]["x0"].as_f64().unwrap();
    assert!((x0 - expected[1].1).abs() <= 1e-5 * expected[1].1, "{x0}");
    assert!(chart.note.contains("Shaded bands"));
}
