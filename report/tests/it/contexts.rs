//! Page contexts and chart specs from a fixture run, as insta snapshots, plus the numbers
//! checked against an independent recomputation from `turns.jsonl`.

use crate::support::{assert_shown, recompute_seed, tiny_spec, write_run};
use report::aggregate;
use report::load::{self, Run, RunData};
use report::pages;

fn tiny_site() -> (pages::Site, std::path::PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_run(tmp.path(), "tiny", &tiny_spec("tiny"));
    let measured = load::load_dir(&dir).unwrap();
    let agg = aggregate::aggregate(&measured);
    let runs = vec![Run {
        source: "fixtures/tiny".into(),
        data: RunData::Measured(Box::new(measured)),
    }];
    let gpus = pages::gpu_links(&runs);
    let site = pages::site(
        "turnbench test",
        &runs,
        &[Some(agg)],
        gpus,
        &[],
        report::data::TURNS_CSV_PART_ROWS,
    );
    (site, dir, tmp)
}

#[test]
fn gpu_page_tables() {
    let (site, dir, _tmp) = tiny_site();
    assert_eq!(site.gpu_pages.len(), 1);
    let page = &site.gpu_pages[0];
    let section = &page.sections[0];
    insta::assert_json_snapshot!(
        "gpu_tables",
        (&section.seed_tables, &section.latency_tables)
    );

    // Every seed-table number equals the independent recomputation.
    let expected = recompute_seed(&dir.join("turns.jsonl"));
    let mut checked = 0;
    for table in &section.seed_tables {
        for row in &table.rows {
            let key = (
                "h100".to_string(),
                table.cache_mode.clone(),
                row.concurrency.parse().unwrap(),
            );
            let e = &expected[&key];
            assert_shown(&row.total_time, e.total_time, "total time");
            assert_shown(&row.avg_traj, e.avg_traj, "avg/traj");
            assert_shown(&row.traj_s, e.traj_s, "traj/s");
            assert_shown(&row.tok_s, e.tok_s, "tok/s");
            assert_eq!(row.total_tokens, e.total_tokens.to_string());
            assert_shown(&row.tok_turn, e.tok_turn, "tok/turn");
            checked += 1;
        }
        // Exactly one best row: the highest token throughput of the table.
        let best: Vec<_> = table.rows.iter().filter(|r| r.best).collect();
        assert_eq!(best.len(), 1);
        let max = table
            .rows
            .iter()
            .map(|r| r.tok_s.parse::<f64>().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(best[0].tok_s.parse::<f64>().unwrap(), max);
    }
    assert_eq!(checked, 4);
}

#[test]
fn index_context() {
    let (site, _dir, _tmp) = tiny_site();
    insta::assert_json_snapshot!("index_context", site.index, {
        ".charts" => "[charts: see chart snapshots]",
    });
}

#[test]
fn chart_specs() {
    let (site, _dir, _tmp) = tiny_site();
    let charts = site.gpu_pages[0].charts();
    let titles: Vec<&str> = charts.iter().map(|c| c.title.as_str()).collect();
    insta::assert_json_snapshot!("gpu_chart_titles", titles);
    // Throughput vs concurrency: one line per cache mode plus the dashed physical limit,
    // hidden until asked for (drawn, it sets the axis and flattens the measured lines).
    insta::assert_json_snapshot!("chart_throughput_vs_concurrency", charts[0]);
    let limits: Vec<_> = charts[0]
        .data
        .iter()
        .filter(|t| t["line"]["dash"] == "dash")
        .collect();
    assert!(!limits.is_empty());
    assert!(limits.iter().all(|t| t["visible"] == "legendonly"));
    assert!(charts[0]
        .data
        .iter()
        .filter(|t| t["line"]["dash"] != "dash")
        .all(|t| t["visible"].is_null()));
    assert!(charts[0].note.contains("hidden until"));
    // TTFT by turn index, prefix: p10 / p90 band + p50 line per concurrency.
    let ttft = charts
        .iter()
        .find(|c| c.title == "TTFT by turn index (prefix)")
        .unwrap();
    insta::assert_json_snapshot!("chart_ttft_by_turn_prefix", ttft);
    assert_eq!(ttft.data.len(), 3 * 2);
    // Index: cross-GPU throughput and cache-mode speed-up.
    insta::assert_json_snapshot!("index_charts", site.index.charts);
}

#[test]
fn tradeoff_chart_points_are_each_cells_time_per_trajectory_and_throughput() {
    let (site, dir, _tmp) = tiny_site();
    let expected = recompute_seed(&dir.join("turns.jsonl"));
    let charts = site.gpu_pages[0].charts();
    let chart = charts
        .iter()
        .find(|c| c.title == "Throughput vs time per trajectory")
        .expect("trade-off chart on the GPU page");
    let mut points = 0;
    for trace in &chart.data {
        let mode = trace["name"].as_str().unwrap();
        let labels = trace["text"].as_array().unwrap();
        for (i, label) in labels.iter().enumerate() {
            let conc: u32 = label
                .as_str()
                .unwrap()
                .trim_start_matches("c=")
                .parse()
                .unwrap();
            let e = &expected[&("h100".to_string(), mode.to_string(), conc)];
            let (x, y) = (
                trace["x"][i].as_f64().unwrap(),
                trace["y"][i].as_f64().unwrap(),
            );
            assert!(
                (x - e.avg_traj).abs() <= 1e-4 * e.avg_traj,
                "{mode} c={conc}: x {x}"
            );
            assert!(
                (y - e.tok_s).abs() <= 1e-4 * e.tok_s,
                "{mode} c={conc}: y {y}"
            );
            points += 1;
        }
    }
    // Every cell: 2 cache modes × 2 concurrencies.
    assert_eq!(points, expected.len());
    assert_eq!(points, 4);
    // The index overlays GPUs: one group per GPU, labelled in the legend.
    let index = site
        .index
        .charts
        .iter()
        .find(|c| c.title == "Throughput vs time per trajectory, all GPUs")
        .expect("cross-GPU trade-off chart");
    assert!(index
        .data
        .iter()
        .all(|t| t["legendgrouptitle"]["text"] == "h100"));
}

#[test]
fn every_run_and_gpu_of_a_cross_gpu_chart_looks_different() {
    // Ten groups (5 runs × 2 GPUs): past the eight marker symbols, the line style tells the
    // groups apart, so no two share both.
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    let mut aggs = Vec::new();
    for i in 0..5 {
        let id = format!("run{i}");
        let mut spec = tiny_spec(&id);
        spec.gpus = vec!["a100".into(), "h100".into()];
        let dir = write_run(tmp.path(), &id, &spec);
        let measured = load::load_dir(&dir).unwrap();
        aggs.push(Some(aggregate::aggregate(&measured)));
        runs.push(Run {
            source: id,
            data: RunData::Measured(Box::new(measured)),
        });
    }
    let gpus = pages::gpu_links(&runs);
    let site = pages::site(
        "t",
        &runs,
        &aggs,
        gpus,
        &[],
        report::data::TURNS_CSV_PART_ROWS,
    );
    let chart = site
        .index
        .charts
        .iter()
        .find(|c| c.title.starts_with("Token throughput vs concurrency"))
        .unwrap();
    let mut looks: std::collections::BTreeMap<String, (String, String)> = Default::default();
    for t in chart.data.iter().filter(|t| t["line"]["dash"] != "dash") {
        let group = t["legendgroup"].as_str().unwrap().to_string();
        let look = (
            t["marker"]["symbol"].as_str().unwrap().to_string(),
            t["line"]["dash"].as_str().unwrap().to_string(),
        );
        assert_eq!(
            *looks.entry(group.clone()).or_insert(look.clone()),
            look,
            "{group}"
        );
    }
    assert_eq!(looks.len(), 10, "{looks:?}");
    let distinct: std::collections::BTreeSet<_> = looks.values().collect();
    assert_eq!(distinct.len(), 10, "{looks:?}");
}
