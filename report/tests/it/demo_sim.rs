//! End to end on the committed simulated run `results/demo-sim` (made by `runner sweep` on its
//! defaults): the real `report` binary builds the site, headless Chromium opens it from
//! `file://`, and the pages agree with `turns.jsonl` and `summary.json`.

use crate::browser::Browser;
use crate::site_in_browser::{assert_charts_rendered, assert_seed_tables};
use crate::support::recompute_seed;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../results/demo-sim");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sim_site_end_to_end() {
    let demo = Path::new(DEMO);
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    let out = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg("build")
        .arg(demo)
        .arg("--out")
        .arg(&site)
        .output()
        .expect("running report build");
    assert!(
        out.status.success(),
        "report build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let expected = recompute_seed(&demo.join("turns.jsonl"));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("summary.json")).unwrap()).unwrap();
    let gpus = ["a100-80gb", "h100"];
    let browser = Browser::start().await.expect("headless chromium");
    let mut rows_checked = 0;
    for page in ["index.html", "gpu-a100-80gb.html", "gpu-h100.html"] {
        browser.open(&site.join(page)).await.unwrap();
        let errors = browser.errors().await.unwrap();
        assert!(errors.is_empty(), "{page}: console errors: {errors:?}");
        assert_charts_rendered(&browser, page).await;
        let (banner, badges) = browser
            .eval::<(bool, usize)>(
                "return [document.querySelector('#simulated-banner .badge.simulated') !== null,
                         document.querySelectorAll('.badge.simulated').length];",
            )
            .await
            .unwrap();
        assert!(banner, "{page}: no simulated banner");
        assert!(badges > 0, "{page}: no simulated badge");
        if let Some(gpu) = page.strip_prefix("gpu-") {
            let gpu = gpu.trim_end_matches(".html");
            rows_checked += assert_seed_tables(&browser, "demo-sim", gpu, &expected).await;
        }
    }
    // Every cell of the run: 2 GPUs × 3 cache modes × 4 concurrencies.
    assert_eq!(expected.len(), gpus.len() * 3 * 4);
    assert_eq!(rows_checked, expected.len(), "every cell was compared");

    // The demo replays the seed's generated history at temperature 0.7: the index says its
    // cells did not see identical prompts, and links to the run's full warning.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["dataset"]["history"], "generated");
    assert!(manifest["plan"]["temperature"].as_f64().unwrap() > 0.0);
    browser.open(&site.join("index.html")).await.unwrap();
    let (pointer, full): (bool, String) = browser
        .eval(
            "var p = document.querySelector('p.warning[data-run=\"demo-sim\"] a');
             var target = p && document.querySelector(p.getAttribute('href') + ' p.warning');
             return [p !== null, target ? target.textContent : ''];",
        )
        .await
        .unwrap();
    assert!(pointer, "no warning for demo-sim near the comparisons");
    assert!(full.contains("temperature 0.7"), "{full}");

    // The index's best configuration per GPU is summary.json's (`cache_mode: null`,
    // criterion `output_tok_per_s`).
    browser.open(&site.join("index.html")).await.unwrap();
    let best: Vec<Vec<String>> = browser
        .eval(
            "return Array.prototype.map.call(document.querySelectorAll('table#best tbody tr'), function (tr) {
               return Array.prototype.map.call(tr.querySelectorAll('td'), function (td) { return td.textContent.trim(); });
             });",
        )
        .await
        .unwrap();
    assert_eq!(best.len(), gpus.len(), "{best:?}");
    for gpu in gpus {
        let want = summary["best"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| {
                b["gpu"] == gpu && b["cache_mode"].is_null() && b["criterion"] == "output_tok_per_s"
            })
            .unwrap_or_else(|| panic!("summary.json has no best for {gpu}"));
        let row = best
            .iter()
            .find(|r| r[0] == gpu)
            .unwrap_or_else(|| panic!("index has no best row for {gpu}: {best:?}"));
        // GPU, run, cache mode, concurrency, tok/s, next best, traj/s, avg/traj, failed turns,
        // retracted turns.
        assert!(row[1].starts_with("demo-sim"), "{row:?}");
        assert_eq!(row[2], want["best_cache_mode"].as_str().unwrap(), "{gpu}");
        let c = want["best_concurrency"].to_string();
        assert!(
            row[3] == c || row[3] == format!("{c} (highest tested)"),
            "{gpu}: {row:?}"
        );
        crate::support::assert_shown(&row[4], want["value"].as_f64().unwrap(), "best tok/s");
        // Then its failed turns (none in the demo), and in the last two columns the best cells
        // by the seed's other criteria, `mode · c=N (value)`.
        assert_eq!(row[8], "0", "{row:?}");
        // Its retracted turns: none known in a run older than the count, else `N (x %)`.
        assert!(row[9] == "—" || row[9].ends_with(" %)"), "{row:?}");
        for (col, criterion) in [(10, "traj_per_s"), (11, "avg_traj_time_s")] {
            let want = summary["best"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| {
                    b["gpu"] == gpu && b["cache_mode"].is_null() && b["criterion"] == criterion
                })
                .unwrap_or_else(|| panic!("summary.json has no {criterion} best for {gpu}"));
            let (cell, value) = row[col]
                .split_once(" (")
                .unwrap_or_else(|| panic!("{row:?}"));
            assert_eq!(
                cell,
                format!(
                    "{} · c={}",
                    want["best_cache_mode"].as_str().unwrap(),
                    want["best_concurrency"]
                ),
                "{gpu} {criterion}"
            );
            crate::support::assert_shown(value, want["value"].as_f64().unwrap(), criterion);
        }
    }

    // The log concurrency axis of the cross-GPU chart is ticked at the measured concurrencies.
    assert_charts_rendered(&browser, "index.html").await;
    let ticks: Vec<String> = browser
        .eval(
            "var box = Array.prototype.find.call(document.querySelectorAll('.chart-box'), function (b) {
               return b.querySelector('h3').textContent.indexOf('Token throughput vs concurrency') === 0;
             });
             return Array.prototype.map.call(box.querySelectorAll('.xtick text'), function (t) { return t.textContent; });",
        )
        .await
        .unwrap();
    assert_eq!(ticks, ["1", "2", "4", "8"]);
    assert!(browser.errors().await.unwrap().is_empty());
    browser.close().await.unwrap();
}
