//! The per-turn viewer (`viewer.html`) in headless Chromium from `file://`: the table of several
//! views (set through the URL hash) equals values computed here from `turns.jsonl` with the
//! schema crate's percentile, a control change re-renders, no console errors, hostile strings
//! stay text. Also `viewer::write`'s file layout and the size budget of the wasm.

use crate::browser::Browser;
use crate::support::{build, write_run};
use fantoccini::Locator;
use report::fixture::{FixtureSpec, HOSTILE_RUN_ID};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use turnbench_schema::stats;

const HOSTILE_GPU: &str = "<img src=x onerror=\"document.title='pwned'\">gpu&amp;'";

/// One row of `#view-table` as the page shows it.
#[derive(Debug, serde::Deserialize)]
struct TableRow {
    group: String,
    series: Option<String>,
    value: String,
    n: u64,
    skipped: u64,
}

const READ_TABLE: &str = "var out = [];
  document.querySelectorAll('#view-table tbody tr').forEach(function (tr) {
    out.push({ group: tr.getAttribute('data-group'), series: tr.getAttribute('data-series'),
      value: tr.querySelector('td[data-value]').getAttribute('data-value'),
      n: Number(tr.querySelector('td[data-col=n]').textContent),
      skipped: Number(tr.querySelector('td[data-col=skipped]').textContent) });
  });
  return out;";

/// One expected row: group, series, value, records used, records skipped.
type Expected = (String, Option<String>, Option<f64>, u64, u64);
/// Values and skipped count of one (group, series).
type Groups = std::collections::BTreeMap<(String, Option<String>), (Vec<f64>, u64)>;

/// A record field as the viewer stores it: times as f32.
fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// The metric of one `turns.jsonl` line, from the JSON alone (not the engine under test).
fn metric(v: &Value, name: &str) -> Option<f64> {
    let f = |k: &str| v[k].as_f64();
    match name {
        "ttft" | "e2e" => f(name).map(f32r),
        "cached_tokens" | "prompt_tokens" => f(name),
        "tpot" => {
            let n = f("completion_tokens")?;
            let decode = f32r(f("e2e")?) - f32r(f("ttft")?);
            (n >= 2.0 && decode > 0.0).then(|| decode / (n - 1.0))
        }
        other => panic!("no reference for {other}"),
    }
}

fn aggregate(agg: &str, values: &[f64]) -> Option<f64> {
    match agg {
        "count" => Some(values.len() as f64),
        "mean" => stats::mean(values),
        "max" => values.iter().copied().reduce(f64::max),
        "p50" => stats::percentile(values, 50.0),
        "p90" => stats::percentile(values, 90.0),
        "p99" => stats::percentile(values, 99.0),
        other => panic!("no reference for {other}"),
    }
}

/// The expected table of a view: (group, series) → (value, n, skipped), from the JSON lines.
fn expected(
    lines: &[Value],
    keep: &dyn Fn(&Value) -> bool,
    group: &dyn Fn(&Value) -> String,
    series: Option<&dyn Fn(&Value) -> String>,
    metric_name: &str,
    agg: &str,
) -> Vec<Expected> {
    let mut groups: Groups = Default::default();
    for v in lines.iter().filter(|v| keep(v)) {
        let e = groups.entry((group(v), series.map(|s| s(v)))).or_default();
        match (v["error"].is_null(), metric(v, metric_name)) {
            (true, Some(x)) => e.0.push(x),
            _ => e.1 += 1,
        }
    }
    groups
        .into_iter()
        .map(|((g, s), (values, skipped))| {
            (g, s, aggregate(agg, &values), values.len() as u64, skipped)
        })
        .collect()
}

fn assert_table(hash: &str, got: &[TableRow], want: &[Expected]) {
    let mut got: Vec<&TableRow> = got.iter().collect();
    got.sort_by(|a, b| (&a.group, &a.series).cmp(&(&b.group, &b.series)));
    assert!(
        !want.is_empty(),
        "{hash}: the fixture has no records for this view"
    );
    assert_eq!(got.len(), want.len(), "{hash}: rows {got:?}");
    for (g, (wg, ws, wv, wn, wskip)) in got.iter().zip(want) {
        assert_eq!((&g.group, &g.series), (wg, ws), "{hash}");
        assert_eq!(
            (g.n, g.skipped),
            (*wn, *wskip),
            "{hash} group {wg} series {ws:?}"
        );
        match wv {
            None => assert_eq!(g.value, "", "{hash} group {wg}"),
            Some(w) => {
                let v: f64 = g.value.parse().unwrap();
                assert!(
                    (v - w).abs() <= 1e-12 * w.abs().max(1.0),
                    "{hash} group {wg} series {ws:?}: page {v} vs records {w}"
                );
            }
        }
    }
}

async fn open_view(browser: &Browser, page: &Path, hash: &str) -> Vec<TableRow> {
    let url = url::Url::from_file_path(page.canonicalize().unwrap()).unwrap();
    browser
        .client()
        .goto(&format!("{url}#{hash}"))
        .await
        .unwrap();
    wait_for_table(browser, hash).await
}

/// Waits until the page rendered the view of `hash` and returns its table.
async fn wait_for_table(browser: &Browser, hash: &str) -> Vec<TableRow> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rendered, status): (String, String) = browser
            .eval("var v = window.TURNBENCH_VIEWER; return [(v && v.renderedHash !== undefined) ? v.renderedHash : '(none)', document.getElementById('viewer-status').textContent];")
            .await
            .unwrap();
        if rendered == hash {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "view {hash} did not render: {rendered} / {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.eval(READ_TABLE).await.unwrap()
}

fn read_lines(turns: &Path) -> Vec<Value> {
    std::fs::read_to_string(turns)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_tables_match_the_records() {
    let browser = Browser::start().await.expect("headless chromium");
    viewer_checks(&browser, false).await;
    browser.close().await.unwrap();
}

/// The same site in headless Firefox from `file://`: the report's pages draw their charts,
/// and the viewer passes the same checks (its wasm started from the classic script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_and_viewer_work_in_firefox() {
    let browser = Browser::start_firefox().await.expect("headless firefox");
    viewer_checks(&browser, true).await;
    browser.close().await.unwrap();
}

/// A site from a measured run and a hostile one; views opened by hash and by a control
/// compared with values computed from `turns.jsonl`, the chart against the table, the skipped
/// note, the records of a point, hostile strings as text, the CSV. `firefox`: geckodriver
/// reports no console errors, so the pages' own state is checked instead, and the report's
/// pages too.
async fn viewer_checks(browser: &Browser, firefox: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = FixtureSpec::small("viewer-run");
    spec.error_rate = 0.05;
    let run = write_run(tmp.path(), "viewer-run", &spec);
    let mut hostile = FixtureSpec::small(HOSTILE_RUN_ID);
    hostile.hostile = true;
    hostile.gpus = vec![HOSTILE_GPU.into()];
    hostile.concurrencies = vec![1, 2];
    let hostile_run = write_run(tmp.path(), "hostile-run", &hostile);
    let site = tmp.path().join("site");
    build(&[run.clone(), hostile_run.clone()], &site, None);
    let page = site.join("viewer.html");
    let lines = read_lines(&run.join("turns.jsonl"));
    let hostile_lines = read_lines(&hostile_run.join("turns.jsonl"));
    assert!(
        lines.iter().any(|v| !v["error"].is_null()),
        "the fixture must contain failed turns"
    );

    let s = |k: &'static str| move |v: &Value| v[k].as_str().unwrap().to_string();
    let n = |k: &'static str| move |v: &Value| v[k].as_u64().unwrap().to_string();
    let bucket =
        |v: &Value| ((f32r(v["t_send"].as_f64().unwrap()) / 10.0).floor() * 10.0).to_string();
    let gpu = spec.gpus[0].clone();
    if firefox {
        browser.open(&site.join("index.html")).await.unwrap();
        crate::site_in_browser::assert_charts_rendered(browser, "index.html").await;
        crate::site_in_browser::assert_legends_clear(browser, "index.html").await;
        let gpu_page = std::fs::read_dir(&site)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("gpu-") && name.contains(&gpu)
            })
            .expect("a page for the fixture's GPU");
        browser.open(&gpu_page).await.unwrap();
        crate::site_in_browser::assert_charts_rendered(browser, "the GPU page").await;
        crate::site_in_browser::assert_legends_clear(browser, "the GPU page").await;
    }

    // A link without a view lands on median TTFT by turn index split by cache mode, of the
    // first run (the site has two, which may differ in workload), and the link then names
    // that view.
    let landing = "metric=ttft&agg=p50&group=turn&series=cache_mode&run=viewer-run";
    let url = url::Url::from_file_path(page.canonicalize().unwrap()).unwrap();
    browser.client().goto(url.as_str()).await.unwrap();
    let got = wait_for_table(browser, landing).await;
    assert_eq!(
        browser
            .eval::<String>("return location.hash")
            .await
            .unwrap(),
        format!("#{landing}")
    );
    assert_table(
        landing,
        &got,
        &expected(
            &lines,
            &|_: &Value| true,
            &n("turn"),
            Some(&s("cache_mode")),
            "ttft",
            "p50",
        ),
    );
    let pooled = "var p = document.getElementById('view-pooled'); \
                  return [p.hidden, p.textContent];";
    let (hidden, text): (bool, String) = browser.eval(pooled).await.unwrap();
    assert!(!hidden && !text.contains(" runs"), "{text}");

    // Without the run filter a view pools both runs (and their GPUs and concurrencies), and
    // says so.
    let both_runs = "metric=ttft&agg=p50&group=turn&series=cache_mode";
    let got = open_view(browser, &page, both_runs).await;
    let both: Vec<Value> = lines.iter().chain(&hostile_lines).cloned().collect();
    assert_table(
        both_runs,
        &got,
        &expected(
            &both,
            &|_: &Value| true,
            &n("turn"),
            Some(&s("cache_mode")),
            "ttft",
            "p50",
        ),
    );
    let (hidden, text): (bool, String) = browser.eval(pooled).await.unwrap();
    assert!(
        !hidden && text.starts_with("Each point pools 2 runs: ") && text.contains(HOSTILE_RUN_ID),
        "{text}"
    );

    // A hash per kind of view; the expected table from the JSON lines of the measured run.
    let hash = format!("metric=ttft&agg=p90&group=turn&series=concurrency&run=viewer-run&gpu={gpu}&cache_mode=prefix");
    let got = open_view(browser, &page, &hash).await;
    let (hidden, text): (bool, String) = browser.eval(pooled).await.unwrap();
    assert!(hidden && text.is_empty(), "one run, GPU and mode: {text}");
    let keep = |v: &Value| v["gpu"] == gpu.as_str() && v["cache_mode"] == "prefix";
    assert_table(
        &hash,
        &got,
        &expected(
            &lines,
            &keep,
            &n("turn"),
            Some(&n("concurrency")),
            "ttft",
            "p90",
        ),
    );

    // The chart plots the table: one trace per series, its points (x, y) the rows' (group,
    // value), each point's customdata the row's index.
    // (name, x, y, customdata) per trace.
    type Trace = (String, Vec<f64>, Vec<Option<f64>>, Vec<usize>);
    let traces: Vec<Trace> = browser
        .eval(
            "return document.getElementById('view-chart').data.map(function (t) {
               return [t.name, Array.from(t.x), Array.from(t.y), Array.from(t.customdata)]; });",
        )
        .await
        .unwrap();
    let series: std::collections::BTreeSet<&str> =
        got.iter().filter_map(|r| r.series.as_deref()).collect();
    assert_eq!(traces.len(), series.len(), "{traces:?}");
    let mut plotted = 0;
    for (name, xs, ys, index) in &traces {
        for ((x, y), i) in xs.iter().zip(ys).zip(index) {
            let row = &got[*i];
            assert_eq!(row.series.as_deref(), Some(name.as_str()));
            assert_eq!(row.group, x.to_string());
            // (Both numbers crossed JSON; serde_json's float parsing is not always the
            // closest double, so the last bit may differ.)
            match (y, row.value.parse::<f64>().ok()) {
                (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-12 * b.abs(), "{a} vs {b}"),
                (a, b) => assert_eq!(*a, b),
            }
            plotted += 1;
        }
    }
    assert_eq!(plotted, got.len());

    let hash = "metric=cached_tokens&agg=mean&group=cache_mode&run=viewer-run".to_string();
    let got = open_view(browser, &page, &hash).await;
    assert_table(
        &hash,
        &got,
        &expected(
            &lines,
            &|_| true,
            &s("cache_mode"),
            None,
            "cached_tokens",
            "mean",
        ),
    );
    // Cache modes have no order between them: a line chart draws their points, no line
    // (a numeric group, as turn index, keeps its line).
    let mode = "return document.getElementById('view-chart').data[0].mode;";
    assert_eq!(browser.eval::<String>(mode).await.unwrap(), "markers");

    let hash = "metric=tpot&agg=p99&group=t_send&run=viewer-run&turn=1-3".to_string();
    let got = open_view(browser, &page, &hash).await;
    let keep = |v: &Value| (1..=3).contains(&v["turn"].as_u64().unwrap());
    assert_table(
        &hash,
        &got,
        &expected(&lines, &keep, &bucket, None, "tpot", "p99"),
    );

    // The skipped note counts what the table's rows skipped.
    let skipped: u64 = browser
        .eval::<String>(
            "return document.getElementById('view-skipped').getAttribute('data-skipped')",
        )
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(skipped, got.iter().map(|r| r.skipped).sum::<u64>());
    assert!(skipped > 0);

    // Change a control as a reader would: the hash and the table follow.
    let hash = "metric=e2e&agg=p50&group=concurrency&run=viewer-run".to_string();
    open_view(browser, &page, &hash).await;
    let select = browser
        .client()
        .find(Locator::Css("#ctl-agg"))
        .await
        .unwrap();
    select.select_by_value("max").await.unwrap();
    let hash = "metric=e2e&agg=max&group=concurrency&run=viewer-run".to_string();
    let got = wait_for_table(browser, &hash).await;
    let want = expected(&lines, &|_| true, &n("concurrency"), None, "e2e", "max");
    assert_table(&hash, &got, &want);
    // A whole-number axis is ticked at its values (not at 1.2, 1.4, … between them).
    let ticks: Vec<f64> = browser
        .eval("var l = document.getElementById('view-chart').layout; return (l && l.xaxis && l.xaxis.tickvals) || [];")
        .await
        .unwrap();
    let mut want_ticks: Vec<f64> = got.iter().map(|r| r.group.parse().unwrap()).collect();
    want_ticks.sort_by(f64::total_cmp);
    want_ticks.dedup();
    assert_eq!(ticks, want_ticks);

    // Hostile run id and GPU label render as text, in the table, the options and the records.
    let hash = "metric=ttft&agg=count&group=gpu&series=run".to_string();
    let got = open_view(browser, &page, &hash).await;
    assert!(got
        .iter()
        .any(|r| r.group == HOSTILE_GPU && r.series.as_deref() == Some(HOSTILE_RUN_ID)));
    let hostile_count = hostile_lines
        .iter()
        .filter(|v| v["error"].is_null())
        .count() as u64;
    let row = got.iter().find(|r| r.group == HOSTILE_GPU).unwrap();
    assert_eq!(row.n, hostile_count);
    browser
        .client()
        .find(Locator::Css(&format!(
            // A cell of the row, as a reader clicks (geckodriver cannot click a <tr> itself).
            "#view-table tbody tr[data-series=\"{}\"] td",
            css_escape(HOSTILE_RUN_ID)
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let (cells, options, injected, title): (Vec<String>, Vec<String>, usize, String) = browser
        .eval(
            "var tds = Array.prototype.map.call(document.querySelectorAll('#view-table td.text, #records-table td.text'), function (t) { return t.textContent; });
             var opts = Array.prototype.map.call(document.querySelectorAll('#ctl-gpu option, #ctl-run option'), function (o) { return o.textContent; });
             return [tds, opts, document.querySelectorAll('main img, main b, main script').length, document.title];",
        )
        .await
        .unwrap();
    assert!(cells.iter().any(|c| c == HOSTILE_GPU), "{cells:?}");
    assert!(
        cells.iter().any(|c| c == HOSTILE_RUN_ID),
        "records list: {cells:?}"
    );
    assert!(
        options.iter().any(|c| c == HOSTILE_GPU)
            && options.iter().any(|c| c.starts_with(HOSTILE_RUN_ID))
    );
    assert_eq!(injected, 0, "markup from the data became elements");
    assert!(!title.contains("pwned"));
    // Another view drops the records of a point of this one.
    let shown: bool = browser
        .eval("return !document.getElementById('records').hidden")
        .await
        .unwrap();
    assert!(shown);
    browser
        .client()
        .find(Locator::Css("#ctl-agg"))
        .await
        .unwrap()
        .select_by_value("max")
        .await
        .unwrap();
    wait_for_table(browser, "metric=ttft&agg=max&group=gpu&series=run").await;
    let hidden: bool = browser
        .eval("return document.getElementById('records').hidden")
        .await
        .unwrap();
    assert!(hidden, "records of the previous view still listed");
    browser
        .client()
        .find(Locator::Css("#ctl-agg"))
        .await
        .unwrap()
        .select_by_value("count")
        .await
        .unwrap();
    wait_for_table(browser, &hash).await;

    // The CSV of the view: a header and one line per table row; the button makes a download.
    let csv: String = browser
        .eval("return window.TURNBENCH_VIEWER.viewer.csv(location.hash.slice(1))")
        .await
        .unwrap();
    assert!(csv.starts_with("gpu,run,ttft_count,n,skipped\n"), "{csv}");
    assert_eq!(csv.lines().count(), got.len() + 1);
    browser
        .client()
        .find(Locator::Css("#download-csv"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The button saves that CSV.
    let deadline = Instant::now() + Duration::from_secs(10);
    let saved = loop {
        let file = std::fs::read_dir(browser.downloads())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "csv"));
        if let Some(text) = file.and_then(|p| std::fs::read_to_string(p).ok()) {
            if !text.is_empty() {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "no CSV downloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(saved, csv);

    if firefox {
        let (status_class, charts): (String, usize) = browser
            .eval(
                "return [document.getElementById('viewer-status').className,
                         document.querySelectorAll('#view-chart .main-svg .trace').length];",
            )
            .await
            .unwrap();
        assert_ne!(status_class, "error");
        assert!(charts > 0, "the viewer drew no chart");
    } else {
        chart_limits_and_empty_views(browser, &page).await;
        let errors = browser.errors().await.unwrap();
        assert!(errors.is_empty(), "console errors: {errors:?}");
    }
}

/// Lines keep their points at their true x; too many series are not drawn (the table stays);
/// an empty view says so; a broken link leaves nothing of the previous view on screen.
async fn chart_limits_and_empty_views(browser: &Browser, page: &Path) {
    let landing = "metric=ttft&agg=p50&group=turn&series=cache_mode";
    open_view(browser, page, landing).await;
    let mode: String = browser
        .eval("return document.getElementById('view-chart').layout.scattermode")
        .await
        .unwrap();
    assert_eq!(mode, "overlay", "line points are not shifted off their x");
    let box_view = "metric=ttft&agg=p50&group=turn&series=cache_mode&chart=box";
    open_view(browser, page, box_view).await;
    let mode: String = browser
        .eval("return document.getElementById('view-chart').layout.scattermode")
        .await
        .unwrap();
    assert_eq!(mode, "group", "boxes side by side");

    // 16 trajectories (and the hostile run's), against a limit lowered to 5.
    let many = "metric=ttft&agg=mean&group=turn&series=traj";
    browser
        .eval::<Value>("window.TURNBENCH_VIEWER.seriesLimit = 5; return null")
        .await
        .unwrap();
    browser
        .eval::<Value>(&format!("location.hash = '{many}'; return null"))
        .await
        .unwrap();
    let rows = wait_for_table(browser, many).await;
    assert!(rows.len() > 5, "the table keeps every row");
    let (text, traces): (String, usize) = browser
        .eval(
            "var el = document.getElementById('view-chart');
             return [el.textContent, el.querySelectorAll('.trace').length];",
        )
        .await
        .unwrap();
    assert!(
        text.starts_with("Not drawn: ") && text.contains("at most 5"),
        "{text}"
    );
    assert_eq!(traces, 0);

    let empty = "metric=ttft&agg=p50&group=turn&turn=900";
    let rows = open_view(browser, page, empty).await;
    assert!(rows.is_empty());
    let (skipped, chart, csv_off): (String, String, bool) = browser
        .eval(
            "return [document.getElementById('view-skipped').textContent,
                     document.getElementById('view-chart').textContent,
                     document.getElementById('download-csv').disabled];",
        )
        .await
        .unwrap();
    assert_eq!(skipped, "No records match these filters.");
    assert_eq!(chart, "No records match these filters.");
    assert!(csv_off);

    // A repeated key: the controls show the value the engine used (the last).
    let twice = "metric=ttft&metric=e2e&agg=mean&group=concurrency";
    open_view(browser, page, twice).await;
    let shown: String = browser
        .eval("return document.getElementById('ctl-metric').value")
        .await
        .unwrap();
    assert_eq!(shown, "e2e");
    // A series equal to the grouping: no split, in the engine and in its control.
    let same = "metric=ttft&agg=mean&group=concurrency&series=concurrency";
    open_view(browser, page, same).await;
    let shown: String = browser
        .eval("return document.getElementById('ctl-series').value")
        .await
        .unwrap();
    assert_eq!(shown, "");

    // A link filtering on a value the data lacks says which.
    let unknown = "metric=ttft&agg=mean&group=concurrency&gpu=H100X";
    let rows = open_view(browser, page, unknown).await;
    assert!(rows.is_empty());
    let status: String = browser
        .eval("return document.getElementById('viewer-status').textContent")
        .await
        .unwrap();
    assert!(
        status.contains("values the data does not have: gpu=H100X."),
        "{status}"
    );

    open_view(browser, page, landing).await;
    browser
        .eval::<Value>("location.hash = 'metric=bogus'; return null")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rows, status): (usize, String) = browser
            .eval(
                "return [document.querySelectorAll('#view-table tr').length,
                         document.getElementById('viewer-status').textContent];",
            )
            .await
            .unwrap();
        if status.contains("does not work") {
            assert_eq!(rows, 0, "the previous view's table is gone");
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn css_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[test]
fn viewer_files_and_wasm_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let records = report::fixture::records(&FixtureSpec::small("files"));
    report::viewer::write(
        tmp.path(),
        &[report::viewer::RunRecords {
            run_id: "files",
            simulated: true,
            zero_cost: false,
            caveats: vec![],
            records: &records,
        }],
    )
    .unwrap();
    let html = std::fs::read_to_string(tmp.path().join("viewer.html")).unwrap();
    for src in html
        .split("<script src=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
    {
        if src.contains("plotly") {
            continue; // written by the asset registry, not by the viewer
        }
        assert!(
            !src.starts_with('/') && !src.contains("://"),
            "{src} is not relative"
        );
        assert!(tmp.path().join(src).is_file(), "{src} is missing");
    }
    assert!(html.contains("data/viewer-meta.js") && html.contains("data/viewer-ttft-0.js"));
    assert!(
        !html.contains("type=\"module\""),
        "no ES modules: they do not load from file://"
    );
    assert!(
        report::viewer::WASM.len() <= 300 * 1024,
        "wasm is {} bytes",
        report::viewer::WASM.len()
    );
}

/// The viewer's benchmark (not a timed test): `cargo test -p report --test it viewer::bench --
/// --ignored --nocapture`. 1,000,000 generated records → the viewer's files; then in headless
/// Chromium from `file://`: page load to first chart, and filter + group-by + p99 queries, each
/// the median of several runs. Set `TB_BENCH_RECORDS` for another size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly"]
async fn bench() {
    let n: u64 = std::env::var("TB_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let records = report::fixture::records(&FixtureSpec::with_records("bench", n));
    println!(
        "generated {} records in {:.1} s",
        records.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    report::assets::write_all(tmp.path()).unwrap();
    report::viewer::write(
        tmp.path(),
        &[report::viewer::RunRecords {
            run_id: "bench",
            simulated: true,
            zero_cost: false,
            caveats: vec![],
            records: &records,
        }],
    )
    .unwrap();
    println!(
        "viewer::write in {:.1} s (debug build)",
        t.elapsed().as_secs_f64()
    );
    let (mut total, mut largest) = (0u64, 0u64);
    for entry in std::fs::read_dir(tmp.path().join("data")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("viewer-") {
            let len = entry.metadata().unwrap().len();
            total += len;
            largest = largest.max(len);
        }
    }
    println!(
        "wasm: {} bytes ({:.1} KB)",
        report::viewer::WASM.len(),
        report::viewer::WASM.len() as f64 / 1024.0
    );
    println!(
        "site data for {n} records: {:.1} MB (largest file {:.1} MB)",
        total as f64 / 1e6,
        largest as f64 / 1e6
    );
    drop(records);

    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let browser = Browser::start().await.expect("headless chromium");
    let page = tmp.path().join("viewer.html");
    let mut loads = Vec::new();
    for _ in 0..5 {
        open_view(&browser, &page, "metric=ttft&agg=p99&group=turn").await;
        let t: (f64, f64, f64) = browser
            .eval("var t = window.TURNBENCH_VIEWER.timings; return [t.start_ms, t.ready_ms, t.first_chart_ms];")
            .await
            .unwrap();
        println!(
            "  scripts parsed {:.0} ms, table loaded {:.0} ms, first chart {:.0} ms",
            t.0, t.1, t.2
        );
        loads.push(t.2);
        browser.client().goto("about:blank").await.unwrap();
    }
    println!(
        "page load (navigation start → first chart), median of 5: {:.0} ms  {loads:.0?}",
        median(loads.clone())
    );
    open_view(&browser, &page, "metric=ttft&agg=p99&group=turn").await;
    let hashes = [
        "metric=ttft&agg=p99&group=turn",
        "metric=e2e&agg=p99&group=concurrency&series=cache_mode",
        "metric=e2e&agg=mean&group=concurrency&series=cache_mode",
        "metric=ttft&agg=p99&group=t_send&cache_mode=prefix&turn=2-20",
        "metric=itl_p99&agg=p99&group=gpu&concurrency=8&concurrency=16",
        "metric=cache_hit_ratio&agg=p99&group=traj&error=false",
        "metric=ttft&agg=p99&group=traj&series=concurrency",
        "metric=tpot&agg=p99&group=t_send&series=cache_mode&turn=2-",
        "metric=ttft&agg=p99&group=turn&series=concurrency&chart=box",
    ];
    // Round-robin over the views, so that a slow spell of the (shared) machine spreads over
    // all of them instead of spoiling one view's samples.
    const ROUNDS: usize = 15;
    let list = serde_json::to_string(&hashes).unwrap();
    let js = format!(
        "var v = window.TURNBENCH_VIEWER, hs = {list}, q = hs.map(function () {{ return []; }}),
             e = hs.map(function () {{ return []; }});
         for (var r = 0; r < {ROUNDS}; r++) hs.forEach(function (h, i) {{
           q[i].push(v.timeQuery(h));
           var s = performance.now(); v.viewer.query_columns(h).free(); e[i].push(performance.now() - s);
         }});
         return [q, e];"
    );
    let (queries, engine): (Vec<Vec<f64>>, Vec<Vec<f64>>) = browser.eval(&js).await.unwrap();
    println!(
        "filter + group-by + aggregate, {ROUNDS} rounds over the views: median (fastest) of the whole query, and of the wasm engine call alone"
    );
    for ((hash, q), e) in hashes.iter().zip(queries).zip(engine) {
        let rows: usize = browser
            .eval(&format!(
                "return window.TURNBENCH_VIEWER.runQuery('{hash}').length"
            ))
            .await
            .unwrap();
        let fastest = q.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "query {hash} ({rows} rows): median {:.1} ms (fastest {fastest:.1}), engine {:.1} ms",
            median(q),
            median(e),
        );
        // The whole render (query, table, chart), once: the page must not freeze.
        let js = format!("var t = []; for (var i = 0; i < 3; i++) t.push(window.TURNBENCH_VIEWER.timeRender('{hash}')); return t;");
        let renders: Vec<f64> = browser.eval(&js).await.unwrap();
        println!(
            "  render (query + table + chart), median of 3: {:.0} ms  {renders:.0?}",
            median(renders.clone())
        );
    }
    let errors = browser.errors().await.unwrap();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.close().await.unwrap();
}
