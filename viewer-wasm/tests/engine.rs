//! The query engine, natively: encoding round trip, filters, group-by, every aggregate
//! against values computed here from the records with the schema crate's percentile.

use turnbench_schema::stats;
use turnbench_schema::{CacheMode, ItlSummary, TurnRecord};
use viewer_wasm::{Agg, Field, Loader, Query, RunSource, Table};

/// A deterministic spread of values (no RNG crate needed for a fixture).
fn jitter(seed: u64) -> f64 {
    let x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((x >> 33) % 10_000) as f64 / 10_000.0
}

fn record(gpu: &str, mode: CacheMode, conc: u32, traj: u32, turn: u32, seed: u64) -> TurnRecord {
    let ttft = 0.05 + jitter(seed) * (1.0 + turn as f64 * 0.1);
    let e2e = ttft + 0.5 + jitter(seed + 1);
    let completion = 2 + (jitter(seed + 2) * 300.0) as u64;
    let prompt = 500 + turn as u64 * 400;
    TurnRecord {
        gpu: gpu.to_string(),
        cache_mode: mode,
        concurrency: conc,
        traj,
        traj_id: format!("traj-{traj}"),
        turn,
        attempt: 0,
        t_send: traj as f64 * 3.0 + turn as f64 * 4.5,
        t_first_token: Some(ttft),
        t_end: e2e,
        ttft: Some(ttft),
        e2e: Some(e2e),
        itl: Some(ItlSummary {
            mean: 0.01 + jitter(seed + 3) * 0.01,
            p50: 0.01,
            p99: 0.03 + jitter(seed + 4) * 0.02,
            max: 0.1,
        }),
        prompt_tokens: Some(prompt),
        cached_tokens: match mode {
            CacheMode::None => None,
            _ => Some(prompt - 100 - turn as u64),
        },
        completion_tokens: Some(completion),
        think_time: jitter(seed + 5) * 2.0,
        finish_reason: Some(if turn % 5 == 4 { "length" } else { "stop" }.to_string()),
        error: None,
        in_flight: conc,
        server_ttft: (!seed.is_multiple_of(3)).then(|| ttft * (0.5 + jitter(seed + 6) * 0.4)),
        retractions: (!seed.is_multiple_of(4)).then_some(u32::from(seed.is_multiple_of(7))),
    }
}

/// Two GPUs × three cache modes × two concurrencies × 6 trajectories × 8 turns, with some
/// failures and one record without any latency.
fn fixture() -> Vec<TurnRecord> {
    let mut out = Vec::new();
    let mut seed = 1;
    for gpu in ["1", "h100"] {
        for mode in CacheMode::ALL {
            for conc in [1, 4] {
                for traj in 0..6 {
                    for turn in 0..8 {
                        seed += 7;
                        let mut r = record(gpu, mode, conc, traj, turn, seed);
                        if seed % 41 == 0 {
                            // Every token in the first chunk: no time after it.
                            r.e2e = r.ttft;
                        }
                        if seed % 53 == 0 {
                            r.error = Some("stream ended early".to_string());
                            r.finish_reason = None;
                        }
                        out.push(r);
                    }
                }
            }
        }
    }
    let mut r = record("1", CacheMode::Prefix, 1, 0, 9, 99);
    (r.ttft, r.e2e, r.itl, r.completion_tokens) = (None, None, None, None);
    out.push(r);
    out
}

fn table(records: &[TurnRecord]) -> Table {
    Table::from_runs(&[RunSource {
        run_id: "run-a",
        simulated: true,
        records,
    }])
    .unwrap()
}

/// What the table stores of an f64 time (f32), back as f64.
fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// Independent reference of a metric from a record (times through f32, as stored).
fn reference_metric(metric: &str, r: &TurnRecord) -> Option<f64> {
    match metric {
        "ttft" => r.ttft.map(f32r),
        "e2e" => r.e2e.map(f32r),
        "tpot" => {
            let n = r.completion_tokens? as f64;
            let decode = f32r(r.e2e?) - f32r(r.ttft?);
            (n >= 2.0 && decode > 0.0).then(|| decode / (n - 1.0))
        }
        "server_ttft" => r.server_ttft.map(f32r),
        "ttft_outside" => Some(f32r(r.ttft?) - f32r(r.server_ttft?)),
        "cached_tokens" => r.cached_tokens.map(|x| x as f64),
        "cache_hit_ratio" => {
            let p = r.prompt_tokens? as f64;
            (p > 0.0).then(|| r.cached_tokens.map(|c| c as f64 / p))?
        }
        "new_prompt_tokens" => r.new_prompt_tokens().map(|x| x as f64),
        "output_tok_per_s" => Some(r.completion_tokens? as f64 / f32r(r.e2e?)),
        "retractions" => r.retractions.map(f64::from),
        other => panic!("no reference for {other}"),
    }
}

fn reference_agg(agg: &str, values: &[f64]) -> Option<f64> {
    match agg {
        "count" => Some(values.len() as f64),
        "sum" => (!values.is_empty()).then(|| values.iter().sum()),
        "mean" => stats::mean(values),
        "min" => values.iter().copied().reduce(f64::min),
        "max" => values.iter().copied().reduce(f64::max),
        "p50" => stats::percentile(values, 50.0),
        "p90" => stats::percentile(values, 90.0),
        "p99" => stats::percentile(values, 99.0),
        other => panic!("unknown aggregate {other}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn every_aggregate_of_every_group_matches_the_reference() {
    let records = fixture();
    let t = table(&records);
    for metric in [
        "ttft",
        "e2e",
        "tpot",
        "server_ttft",
        "ttft_outside",
        "cached_tokens",
        "cache_hit_ratio",
        "new_prompt_tokens",
        "output_tok_per_s",
        "retractions",
    ] {
        for agg in Agg::ALL {
            let q = Query::parse(&format!(
                "metric={metric}&agg={}&group=turn&gpu=h100",
                agg.key()
            ))
            .unwrap();
            let view = t.view(&q);
            assert_eq!(view.rows.len(), 8, "{metric} {agg:?}");
            for row in &view.rows {
                let turn: u32 = row.group.parse().unwrap();
                let group: Vec<&TurnRecord> = records
                    .iter()
                    .filter(|r| r.gpu == "h100" && r.turn == turn)
                    .collect();
                let values: Vec<f64> = group
                    .iter()
                    .filter(|r| r.error.is_none())
                    .filter_map(|r| reference_metric(metric, r))
                    .collect();
                assert_eq!(row.n, values.len() as u64, "{metric} {agg:?} turn {turn}");
                assert_eq!(row.n + row.skipped, group.len() as u64);
                let want = reference_agg(agg.key(), &values);
                match (row.value, want) {
                    (Some(a), Some(b)) => {
                        assert!(close(a, b), "{metric} {agg:?} turn {turn}: {a} vs {b}")
                    }
                    (a, b) => assert_eq!(a, b, "{metric} {agg:?} turn {turn}"),
                }
            }
        }
    }
}

#[test]
fn percentiles_are_the_schema_crates() {
    let records = fixture();
    let t = table(&records);
    for (agg, q) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)] {
        let view =
            t.view(&Query::parse(&format!("metric=prompt_tokens&agg={agg}&group=gpu")).unwrap());
        for row in &view.rows {
            let values: Vec<f64> = records
                .iter()
                .filter(|r| r.gpu == row.group && r.error.is_none())
                .filter_map(|r| r.prompt_tokens.map(|x| x as f64))
                .collect();
            // Token counts are stored exactly: the viewer's value is the schema's, bit for bit.
            assert_eq!(
                row.value,
                stats::percentile(&values, q),
                "{agg} gpu {}",
                row.group
            );
        }
    }
}

#[test]
fn failed_and_missing_records_are_skipped_and_counted() {
    let mut records = fixture();
    // A failure before the first token (most are: refused, dropped, timed out).
    let early = records.iter_mut().find(|r| r.error.is_some()).unwrap();
    (early.ttft, early.t_first_token, early.itl) = (None, None, None);
    let t = table(&records);
    let failed = records.iter().filter(|r| r.error.is_some()).count() as u64;
    assert!(failed > 0, "the fixture must contain failures");
    let view = t.view(&Query::parse("metric=ttft&agg=count&group=gpu").unwrap());
    assert_eq!(view.matched, records.len() as u64);
    assert_eq!(view.skipped_error, failed);
    assert_eq!(view.skipped_missing, 1, "the record without latencies");
    assert_eq!(view.used + view.skipped(), view.matched);

    // A view of failed turns only aggregates them: `count` counts failures per group, and
    // their other figures are what they measured before failing.
    let view = t.view(&Query::parse("metric=e2e&agg=count&group=gpu&error=true").unwrap());
    assert_eq!((view.matched, view.skipped_error), (failed, 0));
    for row in &view.rows {
        let want = records
            .iter()
            .filter(|r| r.error.is_some() && r.gpu == row.group)
            .count() as f64;
        assert!(want > 0.0, "failures on GPU {}", row.group);
        assert_eq!(row.value, Some(want), "GPU {}", row.group);
    }
    // Also for a metric most failures never reached (no first token): each one counts.
    assert!(records
        .iter()
        .any(|r| r.error.is_some() && r.ttft.is_none()));
    let view = t.view(&Query::parse("metric=ttft&agg=count&group=gpu&error=true").unwrap());
    for row in &view.rows {
        let want = records
            .iter()
            .filter(|r| r.error.is_some() && r.gpu == row.group)
            .count() as f64;
        assert_eq!(row.value, Some(want), "GPU {}", row.group);
    }
    let view = t.view(&Query::parse("metric=e2e&agg=max&group=gpu&error=true").unwrap());
    for row in &view.rows {
        let want = records
            .iter()
            .filter(|r| r.error.is_some() && r.gpu == row.group)
            .filter_map(|r| r.e2e.map(f32r))
            .reduce(f64::max);
        assert_eq!(row.value, want, "GPU {}", row.group);
    }

    // cached_tokens is null for cache mode `none`: all of them are skipped, none is a zero.
    let view = t.view(&Query::parse("metric=cached_tokens&agg=mean&group=cache_mode").unwrap());
    let none = view.rows.iter().find(|r| r.group == "none").unwrap();
    assert_eq!((none.value, none.n), (None, 0));
    let in_none = records
        .iter()
        .filter(|r| r.cache_mode == CacheMode::None)
        .count() as u64;
    assert_eq!(none.skipped, in_none);
    let prefix = view.rows.iter().find(|r| r.group == "prefix").unwrap();
    assert!(prefix.value.unwrap() > 0.0);
}

#[test]
fn empty_groups_and_empty_views() {
    let records = fixture();
    let t = table(&records);
    // Turn 9 has one record and it lacks every latency: a group with nothing to aggregate.
    for (agg, want) in [
        ("count", Some(0.0)),
        ("sum", None),
        ("mean", None),
        ("min", None),
        ("p99", None),
    ] {
        let view =
            t.view(&Query::parse(&format!("metric=e2e&agg={agg}&group=turn&turn=9")).unwrap());
        assert_eq!(view.rows.len(), 1);
        assert_eq!(
            (view.rows[0].value, view.rows[0].n, view.rows[0].skipped),
            (want, 0, 1),
            "{agg}"
        );
    }
    // A filter nothing passes: no rows, nothing matched.
    let view = t.view(&Query::parse("metric=e2e&agg=p90&gpu=nope").unwrap());
    assert!(view.rows.is_empty());
    assert_eq!(view.matched, 0);
    // An empty table.
    let empty = table(&[]);
    assert_eq!(empty.view(&Query::default()).rows.len(), 0);
}

#[test]
fn nan_times_count_as_missing() {
    let mut records = fixture();
    records[0].ttft = Some(f64::NAN);
    let t = table(&records);
    let view = t.view(
        &Query::parse(
            "metric=ttft&agg=count&group=gpu&gpu=1&cache_mode=prefix&concurrency=1&traj=0&turn=0",
        )
        .unwrap(),
    );
    assert_eq!((view.rows[0].n, view.skipped_missing), (0, 1));
}

#[test]
fn each_filter_keeps_exactly_its_records() {
    let records = fixture();
    let t = table(&records);
    type Keep = fn(&TurnRecord) -> bool;
    let cases: Vec<(&str, Keep)> = vec![
        ("gpu=1", |r| r.gpu == "1"),
        ("gpu=1&gpu=h100", |_| true),
        ("cache_mode=session", |r| r.cache_mode == CacheMode::Session),
        ("concurrency=4", |r| r.concurrency == 4),
        ("traj=2-3", |r| (2..=3).contains(&r.traj)),
        ("traj=4-", |r| r.traj >= 4),
        ("turn=-2", |r| r.turn <= 2),
        ("turn=1&turn=5-6", |r| {
            r.turn == 1 || (5..=6).contains(&r.turn)
        }),
        ("finish_reason=length", |r| {
            r.finish_reason.as_deref() == Some("length")
        }),
        ("finish_reason=", |r| r.finish_reason.is_none()),
        ("error=true", |r| r.error.is_some()),
        ("error=false", |r| r.error.is_none()),
        ("run=run-a&gpu=h100&turn=3", |r| {
            r.gpu == "h100" && r.turn == 3
        }),
        ("run=other", |_| false),
    ];
    for (filter, keep) in cases {
        let view = t.view(
            &Query::parse(&format!("metric=ttft&agg=count&group=concurrency&{filter}")).unwrap(),
        );
        let want = records.iter().filter(|r| keep(r)).count() as u64;
        assert!(
            want > 0 || filter == "run=other",
            "{filter} selects nothing in the fixture"
        );
        assert_eq!(view.matched, want, "{filter}");
    }
}

#[test]
fn group_by_time_bucket_with_series() {
    let records = fixture();
    let t = table(&records);
    let view = t.view(&Query::parse("metric=e2e&agg=max&group=t_send&series=cache_mode").unwrap());
    for row in &view.rows {
        let start: f64 = row.group.parse().unwrap();
        let mode: CacheMode = row.series.as_deref().unwrap().parse().unwrap();
        assert_eq!(start % 10.0, 0.0);
        let want = records
            .iter()
            .filter(|r| r.cache_mode == mode && r.error.is_none())
            .filter(|r| (f32r(r.t_send) / 10.0).floor() * 10.0 == start)
            .filter_map(|r| r.e2e.map(f32r))
            .reduce(f64::max);
        assert_eq!(row.value, want, "bucket {start} {mode}");
    }
    // Rows are ordered by group, then series (cache modes in prefix, session, none order).
    let keys: Vec<(f64, &str)> = view
        .rows
        .iter()
        .map(|r| (r.group.parse().unwrap(), r.series.as_deref().unwrap()))
        .collect();
    assert_eq!(keys.first(), Some(&(0.0, "prefix")));
    assert!(keys.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn encoding_round_trips_through_chunks() {
    let records = fixture();
    let t = table(&records).with_chunk_rows(37);
    let meta_json = serde_json::to_string(&t.meta).unwrap();
    let mut loader = Loader::from_json(&meta_json).unwrap();
    // Chunks may arrive in any order.
    for chunk in (0..t.meta.chunks()).rev() {
        for f in Field::ALL {
            loader
                .add_chunk(f.name(), chunk, &t.encode_chunk(f, chunk))
                .unwrap();
        }
    }
    let loaded = loader.finish().unwrap();
    // Compared through the bytes: NaN (missing) is not equal to itself.
    assert!(loaded.meta == t.meta);
    for f in Field::ALL {
        for chunk in 0..t.meta.chunks() {
            assert!(
                loaded.encode_chunk(f, chunk) == t.encode_chunk(f, chunk),
                "{f:?} {chunk}"
            );
        }
    }
    assert!((0..t.rows()).all(|i| loaded.record(i) == t.record(i)));
}

#[test]
fn dictionaries_decode_to_the_original_strings() {
    let mut records = fixture();
    let hostile = "<img src=x onerror=alert(1)>\"'&é";
    records[3].gpu = hostile.to_string();
    records[3].traj_id = format!("{hostile}-id");
    records[3].error = Some(format!("{hostile} failed"));
    records[4].finish_reason = Some("abort".to_string());
    let t = table(&records);
    assert_eq!(
        t.meta.gpus,
        vec!["1", "<img src=x onerror=alert(1)>\"'&é", "h100"]
    );
    for (i, r) in records.iter().enumerate() {
        let d = t.record(i);
        assert_eq!(
            (
                d.run.as_str(),
                d.gpu.as_str(),
                d.cache_mode,
                d.concurrency,
                d.traj,
                d.traj_id.as_str(),
                d.turn
            ),
            (
                "run-a",
                r.gpu.as_str(),
                r.cache_mode,
                r.concurrency,
                r.traj,
                r.traj_id.as_str(),
                r.turn
            )
        );
        assert_eq!(
            (d.finish_reason.as_ref(), d.error.as_ref()),
            (r.finish_reason.as_ref(), r.error.as_ref())
        );
        assert_eq!(d.cached_tokens, r.cached_tokens.map(|x| x as f64));
        assert_eq!(d.ttft, r.ttft.map(f32r));
    }
    let q = Query::parse(&format!(
        "group=gpu&gpu={}",
        "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E%22'%26%C3%A9"
    ))
    .unwrap();
    let view = t.view(&q);
    assert_eq!(view.rows[0].group, hostile);
}

#[test]
fn superseded_attempts_are_dropped() {
    let mut records = fixture();
    let mut retry = records[0].clone();
    retry.attempt = 1;
    retry.ttft = Some(42.0);
    records.push(retry);
    let t = table(&records);
    // Trajectory 0 of the first cell keeps only its attempt-1 record.
    let view = t.view(
        &Query::parse(
            "metric=ttft&agg=max&group=traj&gpu=1&cache_mode=prefix&concurrency=1&traj=0",
        )
        .unwrap(),
    );
    assert_eq!((view.matched, view.rows[0].value), (1, Some(42.0)));
}

#[test]
fn records_behind_a_point() {
    let records = fixture();
    let t = table(&records);
    let q = Query::parse("metric=ttft&agg=p90&group=turn&series=concurrency&gpu=h100").unwrap();
    let rs = t.records(&q, "3", Some("4"), 5);
    let want = records
        .iter()
        .filter(|r| r.gpu == "h100" && r.turn == 3 && r.concurrency == 4)
        .count();
    assert_eq!(rs.total as usize, want);
    assert_eq!(rs.rows.len(), 5);
    assert!(rs
        .rows
        .iter()
        .all(|r| r.turn == 3 && r.concurrency == 4 && r.gpu == "h100"));
    assert_eq!(t.records(&q, "no-such-turn", None, 5).total, 0);
}

#[test]
fn hash_round_trip_and_errors() {
    let hash = "metric=cached_tokens&agg=p90&group=turn&series=concurrency&chart=bar&gpu=a+b&gpu=%26x&cache_mode=prefix&concurrency=8&traj=2-9&turn=5-&finish_reason=&error=false";
    let q = Query::parse(&format!("#{hash}")).unwrap();
    assert_eq!(q.filters.gpu, vec!["a b", "&x"]);
    assert_eq!(Query::parse(&q.to_hash()).unwrap(), q);
    assert_eq!(Query::parse("").unwrap(), Query::default());
    for (bad, says) in [
        ("metric=nope", "unknown metric \"nope\""),
        ("agg=p95", "unknown aggregate"),
        ("group=gpu_id", "unknown group"),
        ("turn=a-b", "turn=\"a-b\" is not a number"),
        ("turn=9-2", "empty"),
        ("cache_mode=radix", "unknown cache mode"),
        ("error=maybe", "error=\"maybe\""),
        ("colour=red", "unknown key \"colour\""),
    ] {
        let e = Query::parse(bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn loader_rejects_bad_data_clearly() {
    let records = fixture();
    let t = table(&records).with_chunk_rows(100);
    let meta_json = serde_json::to_string(&t.meta).unwrap();
    let mut l = Loader::from_json(&meta_json).unwrap();
    assert!(l
        .add_chunk("ttft", 0, "@@@")
        .unwrap_err()
        .0
        .contains("not base64"));
    assert!(l
        .add_chunk("ttft", 0, "AAAA")
        .unwrap_err()
        .0
        .contains("bytes, expected"));
    assert!(l
        .add_chunk("ttft", 99, "")
        .unwrap_err()
        .0
        .contains("out of range"));
    assert!(l
        .add_chunk("colour", 0, "")
        .unwrap_err()
        .0
        .contains("unknown viewer data column"));
    let missing = l.finish().unwrap_err().0;
    assert!(missing.contains("chunk 0 is missing"), "{missing}");
    assert!(Loader::from_json("{")
        .unwrap_err()
        .0
        .contains("does not parse"));
    let mut bad_meta = t.meta.clone();
    bad_meta.gpus.clear();
    let mut l = Loader::new(bad_meta).unwrap();
    for chunk in 0..t.meta.chunks() {
        for f in Field::ALL {
            l.add_chunk(f.name(), chunk, &t.encode_chunk(f, chunk))
                .unwrap();
        }
    }
    assert!(l.finish().unwrap_err().0.contains("unknown run or GPU"));
}

#[test]
fn csv_of_a_view() {
    let records = fixture();
    let t = table(&records);
    let view =
        t.view(&Query::parse("metric=e2e&agg=count&group=gpu&series=concurrency&gpu=1").unwrap());
    let csv = view.to_csv();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("gpu,concurrency,e2e_count,n,skipped"));
    let first = &view.rows[0];
    assert_eq!(
        lines.next().unwrap(),
        format!("1,1,{},{},{}", first.value.unwrap(), first.n, first.skipped)
    );
}

#[test]
fn selection_percentile_equals_the_schema_percentile() {
    for n in [1usize, 2, 3, 4, 7, 16, 24, 25, 100, 101, 102, 150, 1001] {
        let values: Vec<f64> = (0..n as u64)
            .map(|i| (jitter(i * 31 + n as u64) * 50.0).round() / 7.0)
            .collect();
        for q in [0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
            let mut scratch = values.clone();
            assert_eq!(
                viewer_wasm::view::percentile(&mut scratch, q),
                stats::percentile(&values, q),
                "n={n} q={q}"
            );
        }
    }
    // Signs, zeros of both signs, infinities and ties.
    let mixed = [
        3.5,
        -0.0,
        0.0,
        -2.0,
        f64::INFINITY,
        3.5,
        -7.25,
        f64::NEG_INFINITY,
        0.0,
    ];
    for n in 1..=mixed.len() {
        for q in [0.0, 50.0, 90.0, 99.0, 100.0] {
            let mut scratch = mixed[..n].to_vec();
            assert_eq!(
                viewer_wasm::view::percentile(&mut scratch, q).map(f64::to_bits),
                stats::percentile(&mixed[..n], q).map(f64::to_bits),
                "mixed n={n} q={q}"
            );
        }
    }
    assert_eq!(viewer_wasm::view::percentile(&mut [], 50.0), None);
}

/// More (group × series) codes than the engine keeps in per-group vectors: the values go
/// through its counting sort, with the same results, for small groups (a high percentile
/// reads their two largest values) and large ones. (Trajectories below 40 have 150 turns, the
/// others 2; some lack cached tokens.)
#[test]
fn many_groups_match_the_reference() {
    let mut records = Vec::new();
    for traj in 0..5000 {
        for turn in 0..if traj < 40 { 150 } else { 2 } {
            // Cache mode `none` reports no cached tokens: whole groups without the metric.
            let mode = if traj % 7 == 3 {
                CacheMode::None
            } else {
                CacheMode::Prefix
            };
            let mut r = record("h100", mode, 1, traj, turn, traj as u64 * 3 + turn as u64);
            if traj % 97 == 0 {
                r.error = Some("boom".to_string());
            }
            records.push(r);
        }
    }
    let t = table(&records);
    for (hash, series) in [
        ("metric=ttft&agg=p50&group=traj", false),
        ("metric=ttft&agg=p99&group=traj", false),
        ("metric=e2e&agg=p90&group=traj", false),
        ("metric=cached_tokens&agg=p99&group=traj", false),
        ("metric=ttft&agg=p99&group=traj&series=turn", true),
        ("metric=tpot&agg=p90&group=traj&chart=box", false),
        ("metric=e2e&agg=sum&group=traj", false),
    ] {
        let q = Query::parse(hash).unwrap();
        let view = t.view(&q);
        let agg = hash
            .split("agg=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let metric = hash
            .split("metric=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        assert_eq!(
            view.rows.len(),
            if series { 40 * 150 + 4960 * 2 } else { 5000 },
            "{hash}"
        );
        for row in &view.rows {
            let traj: u32 = row.group.parse().unwrap();
            let turn: Option<u32> = row.series.as_ref().map(|s| s.parse().unwrap());
            let group: Vec<&TurnRecord> = records
                .iter()
                .filter(|r| r.traj == traj && turn.is_none_or(|t| r.turn == t))
                .collect();
            let mut values: Vec<f64> = group
                .iter()
                .filter(|r| r.error.is_none())
                .filter_map(|r| reference_metric(metric, r))
                .collect();
            assert_eq!((row.n + row.skipped) as usize, group.len(), "{hash}");
            assert_eq!(row.n as usize, values.len(), "{hash}");
            assert_eq!(row.value, reference_agg(agg, &values), "{hash} traj {traj}");
            if q.chart == viewer_wasm::Chart::Box {
                values.sort_by(f64::total_cmp);
                let Some(d) = row.dist else {
                    assert!(values.is_empty(), "{hash} traj {traj}");
                    continue;
                };
                assert_eq!(d.min, values[0]);
                assert_eq!(d.q1, stats::percentile_sorted(&values, 25.0).unwrap());
                assert_eq!(d.median, stats::percentile_sorted(&values, 50.0).unwrap());
                assert_eq!(d.q3, stats::percentile_sorted(&values, 75.0).unwrap());
                assert_eq!(d.max, *values.last().unwrap());
            }
        }
    }
}

/// Box charts: min, quartiles and max of every group are the schema's percentiles of its
/// values, and the aggregate is unchanged.
#[test]
fn box_statistics_are_the_schema_percentiles() {
    let records = fixture();
    let t = table(&records);
    for agg in ["p90", "mean", "max"] {
        let line =
            t.view(&Query::parse(&format!("metric=e2e&agg={agg}&group=turn&series=gpu")).unwrap());
        let boxed = t.view(
            &Query::parse(&format!(
                "metric=e2e&agg={agg}&group=turn&series=gpu&chart=box"
            ))
            .unwrap(),
        );
        assert_eq!(line.rows.len(), boxed.rows.len());
        for (a, b) in line.rows.iter().zip(&boxed.rows) {
            assert_eq!(
                (&a.group, &a.series, a.value, a.n),
                (&b.group, &b.series, b.value, b.n)
            );
            let turn: u32 = b.group.parse().unwrap();
            let gpu = b.series.as_deref().unwrap();
            let mut values: Vec<f64> = records
                .iter()
                .filter(|r| r.turn == turn && r.gpu == gpu && r.error.is_none())
                .filter_map(|r| reference_metric("e2e", r))
                .collect();
            values.sort_by(f64::total_cmp);
            let Some(d) = b.dist else {
                assert!(values.is_empty(), "turn {turn} gpu {gpu}");
                continue;
            };
            let p = |q| stats::percentile_sorted(&values, q).unwrap();
            assert_eq!(
                (d.min, d.q1, d.median, d.q3, d.max),
                (
                    values[0],
                    p(25.0),
                    p(50.0),
                    p(75.0),
                    *values.last().unwrap()
                ),
                "turn {turn} gpu {gpu}"
            );
        }
    }
}

/// What the page reads across the boundary (group and series codes, read through
/// `dim_codes`) names the same groups as the view's rows.
#[test]
fn dim_codes_name_the_groups_like_the_view() {
    let records = fixture();
    let t = table(&records);
    for dim in viewer_wasm::Dim::ALL {
        let q = Query::parse(&format!(
            "metric=ttft&agg=count&group={}&series=gpu",
            dim.key()
        ))
        .unwrap();
        let view = t.view(&q);
        let groups = t.aggregate(&q);
        assert_eq!(groups.len(), view.rows.len());
        let (gc, sc) = (t.dim_codes(*dim), t.dim_codes(viewer_wasm::Dim::Gpu));
        let text = |c: &viewer_wasm::DimCodes, k: u32| match c.step {
            Some(step) => (k as f64 * step).to_string(),
            None => c.dict[k as usize].0.clone(),
        };
        for (i, row) in view.rows.iter().enumerate() {
            assert_eq!(text(&gc, groups.group[i]), row.group, "{dim:?}");
            if q.series.is_some() {
                assert_eq!(Some(text(&sc, groups.series[i])), row.series);
            }
            if gc.step.is_none() {
                let label = &gc.dict[groups.group[i] as usize].1;
                assert_eq!(row.group_label.as_ref().unwrap_or(&row.group), label);
            }
            assert_eq!((groups.n[i], groups.skipped[i]), (row.n, row.skipped));
        }
    }
}

/// Native timing of the engine on 1M rows (not a timed test):
/// `cargo test --release -p viewer-wasm --test engine native_bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: run explicitly"]
fn native_bench() {
    let mut records = Vec::new();
    let mut seed = 0;
    for conc in [1, 4, 16, 64] {
        for mode in CacheMode::ALL {
            for traj in 0..1400 {
                for turn in 0..60 {
                    seed += 1;
                    let mut r = record("h100", mode, conc, traj, turn, seed);
                    // Every cell runs over the same ~224,000 s (as cells of a sweep start
                    // together), so 10 s buckets make ~22,400 groups of ~45 records, and
                    // ~67,000 groups of ~15 when split by cache mode.
                    r.t_send = (traj * 60 + turn) as f64 * 2.67 + conc as f64 * 0.1;
                    records.push(r);
                }
            }
        }
    }
    let t = table(&records);
    drop(records);
    for hash in [
        "metric=ttft&agg=p99&group=turn",
        "metric=ttft&agg=mean&group=turn",
        "metric=e2e&agg=p99&group=concurrency&series=cache_mode",
        "metric=cache_hit_ratio&agg=p99&group=traj&error=false",
        "metric=ttft&agg=p99&group=traj&series=cache_mode",
        "metric=ttft&agg=p99&group=t_send",
        "metric=ttft&agg=p99&group=t_send&cache_mode=prefix&turn=2-20",
        "metric=tpot&agg=p99&group=t_send&series=concurrency",
        "metric=tpot&agg=p99&group=t_send&series=cache_mode&turn=2-",
        "metric=ttft&agg=p99&group=turn&chart=box",
    ] {
        if std::env::var("TB_QUERY").is_ok_and(|only| only != hash) {
            continue;
        }
        let q = Query::parse(hash).unwrap();
        if let Some(n) = std::env::var("TB_PROFILE")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
        {
            for _ in 0..n {
                std::hint::black_box(t.aggregate(&q));
            }
        }
        let mut rows = 0;
        let fastest = (0..9)
            .map(|_| {
                let start = std::time::Instant::now();
                std::hint::black_box(t.aggregate(&q));
                let groups = start.elapsed().as_secs_f64() * 1e3;
                let start = std::time::Instant::now();
                let view = t.view(&q);
                let engine = start.elapsed().as_secs_f64() * 1e3;
                rows = view.rows.len();
                std::hint::black_box(serde_json::to_string(&view).unwrap());
                [groups, engine, start.elapsed().as_secs_f64() * 1e3]
            })
            .fold([f64::INFINITY; 3], |a, b| {
                [a[0].min(b[0]), a[1].min(b[1]), a[2].min(b[2])]
            });
        println!(
            "{hash} ({rows} rows), fastest of 9: aggregate {:.1} ms, view {:.1} ms, view + JSON {:.1} ms",
            fastest[0], fastest[1], fastest[2]
        );
    }
}

#[test]
fn a_token_count_no_u32_holds_reads_as_missing_instead_of_failing_the_table() {
    let mut a = record("1", CacheMode::Prefix, 1, 0, 0, 1);
    a.completion_tokens = Some(5_000_000_000); // a corrupted record
    let mut b = record("1", CacheMode::Prefix, 1, 0, 1, 2);
    b.completion_tokens = Some(40);
    let t = table(&[a, b]);
    let v = t.column(Field::CompletionTokens).values();
    assert!(v[0].is_nan(), "{v:?}");
    assert_eq!(v[1], 40.0);
}

#[test]
fn a_view_says_what_its_points_pool() {
    let records = fixture();
    let t = table(&records);
    let view = |hash: &str| t.view(&Query::parse(hash).unwrap());
    // By turn, unfiltered: every point mixes both GPUs, all cache modes and concurrencies.
    let v = view("metric=ttft&agg=p50&group=turn");
    assert_eq!(
        v.pooled,
        [
            "2 GPUs: 1, h100",
            "3 cache modes: prefix, session, none",
            "2 concurrencies: 1, 4"
        ]
    );
    assert!(!v.pools_simulated_and_real);
    // What the view groups, splits or filters to one value is not pooled.
    let v = view("metric=ttft&agg=p50&group=gpu&series=cache_mode&concurrency=4");
    assert!(v.pooled.is_empty(), "{:?}", v.pooled);
    // Pooled means: a record of it passed the filters (none of GPU "1" at turn 9 but one).
    let v = view("metric=ttft&agg=p50&group=turn&turn=9");
    assert!(v.pooled.is_empty(), "{:?}", v.pooled);

    // Two runs, one simulated: pooling them says so, grouping by run does not.
    let half = records.len() / 2;
    let t = Table::from_runs(&[
        RunSource {
            run_id: "sim",
            simulated: true,
            records: &records[..half],
        },
        RunSource {
            run_id: "real",
            simulated: false,
            records: &records[half..],
        },
    ])
    .unwrap();
    let v = t.view(&Query::parse("metric=ttft&agg=p50&group=turn&series=cache_mode").unwrap());
    assert!(v.pooled[0].starts_with("2 runs: "), "{:?}", v.pooled);
    assert!(v.pools_simulated_and_real);
    let v = t.view(&Query::parse("metric=ttft&agg=p50&group=run&series=cache_mode").unwrap());
    assert!(!v.pools_simulated_and_real);
    assert!(!v.pooled.iter().any(|p| p.contains("runs")));
}

#[test]
fn the_finish_reason_filter_offers_none_only_when_a_record_has_none() {
    let records = fixture();
    assert!(records.iter().any(|r| r.finish_reason.is_none()));
    let keys = |t: &Table| -> Vec<String> {
        t.options()
            .finish_reason
            .iter()
            .map(|c| c.key.clone())
            .collect()
    };
    assert_eq!(keys(&table(&records)), ["", "length", "stop"]);
    let finished: Vec<TurnRecord> = records
        .into_iter()
        .filter(|r| r.finish_reason.is_some())
        .collect();
    assert_eq!(keys(&table(&finished)), ["length", "stop"]);
}
