//! The built site in headless Chromium, opened from `file://`: no console errors, every chart
//! rendered, and the seed table in the DOM equal to values recomputed from `turns.jsonl`.

use crate::browser::Browser;
use crate::support::{assert_shown, build, recompute_seed, write_run, SeedNumbers};
use report::fixture::{FixtureSpec, HOSTILE_MODEL, HOSTILE_RUN_ID};
use std::collections::BTreeMap;

/// Asserts the open page has at least one chart and every `.chart` container holds a plotted
/// trace; returns how many charts there are. Charts are drawn as they come near the viewport:
/// those within a screen below it are drawn on their own, those further down only once
/// scrolled to (checked with the last one) or when `TB_drawAllCharts` (printing) draws the rest.
pub async fn assert_charts_rendered(browser: &Browser, page: &str) -> usize {
    const DRAWN: &str = "function drawn(e) { return e.querySelector('svg.main-svg .plot .trace, svg.main-svg .barlayer .trace, svg.main-svg .scatterlayer .trace') !== null; }";
    // (charts near the viewport, of them drawn, charts further down, of them drawn)
    let state = format!(
        "{DRAWN}
         var near = 0, nearDrawn = 0, far = 0, farDrawn = 0, h = window.innerHeight;
         document.querySelectorAll('.chart').forEach(function (e) {{
           if (e.closest('details:not([open])')) {{ return; }}
           var top = e.getBoundingClientRect().top;
           if (top < 1.5 * h) {{ near++; if (drawn(e)) nearDrawn++; }}
           else if (top > 2.5 * h) {{ far++; if (drawn(e)) farDrawn++; }}
         }});
         return [near, nearDrawn, far, farDrawn];"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (far, far_drawn) = loop {
        let (near, near_drawn, far, far_drawn): (usize, usize, usize, usize) =
            browser.eval(&state).await.unwrap();
        if near == near_drawn {
            break (far, far_drawn);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{page}: {near_drawn} of the {near} charts near the top drawn"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        far_drawn, 0,
        "{page}: charts far below the viewport drawn at load"
    );
    // The last chart in view (not folded away in a closed <details>).
    const SHOWN: &str = "var c = Array.prototype.filter.call(document.querySelectorAll('.chart'), \
        function (e) { return !e.closest('details:not([open])'); });";
    if far > 0 {
        browser
            .eval::<()>(&format!("{SHOWN} c[c.length - 1].scrollIntoView();"))
            .await
            .unwrap();
        let last = format!("{DRAWN} {SHOWN} return drawn(c[c.length - 1]);");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !browser.eval::<bool>(&last).await.unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "{page}: the last chart, scrolled to, was not drawn"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        browser.eval::<()>("window.scrollTo(0, 0);").await.unwrap();
    }
    // Folded charts are drawn when their <details> is opened and they come into view.
    let folded: usize = browser
        .eval("return document.querySelectorAll('details .chart').length;")
        .await
        .unwrap();
    if folded > 0 {
        browser
            .eval::<()>(
                "var c = document.querySelector('details .chart'); c.closest('details').open = true; \
                 c.scrollIntoView();",
            )
            .await
            .unwrap();
        let first = format!("{DRAWN} return drawn(document.querySelector('details .chart'));");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !browser.eval::<bool>(&first).await.unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "{page}: a folded chart, unfolded and scrolled to, was not drawn"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        browser.eval::<()>("window.scrollTo(0, 0);").await.unwrap();
    }
    let (containers, rendered): (usize, usize) = browser
        .eval::<(usize, usize)>(&format!(
            "{DRAWN}
             window.TB_drawAllCharts();
             var c = document.querySelectorAll('.chart');
             return [c.length, Array.prototype.filter.call(c, drawn).length];"
        ))
        .await
        .unwrap();
    assert!(containers > 0, "{page}: no chart");
    assert_eq!(
        rendered,
        containers,
        "{page}: {} of {containers} charts hold no plotted trace",
        containers - rendered
    );
    containers
}

/// Asserts every chart's legend lies below its plot and x-axis title, inside the figure, and
/// shows all its entries (no scrolling): a legend anchored to the plot area covers the axis
/// title once it has a few rows. Waits up to 3 s (the legend is fitted after drawing).
pub async fn assert_legends_clear(browser: &Browser, page: &str) {
    // [chart id, legend top, legend bottom, figure bottom, lowest of plot area and x title,
    //  entries' height, legend box height] per chart with a legend.
    type Legend = (String, f64, f64, f64, f64, f64, f64);
    let js = "var out = [];
        document.querySelectorAll('.chart').forEach(function (el) {
          var lg = el.querySelector('g.legend');
          if (!lg) { return; }
          var l = lg.getBoundingClientRect();
          var fig = el.querySelector('svg.main-svg').getBoundingClientRect();
          var above = 0;
          el.querySelectorAll('.nsewdrag, .g-xtitle text, .xtick text').forEach(function (e) {
            above = Math.max(above, e.getBoundingClientRect().bottom);
          });
          out.push([el.id, l.top, l.bottom, fig.bottom, above,
            lg.querySelector('.scrollbox').getBBox().height, lg.querySelector('.bg').getBBox().height]);
        });
        return out;";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let legends: Vec<Legend> = browser.eval(js).await.unwrap();
        let bad: Vec<&Legend> = legends
            .iter()
            .filter(|(_, top, bottom, fig, above, entries, bg)| {
                top + 1.0 < *above || bottom - 1.0 > *fig || entries - 1.0 > *bg
            })
            .collect();
        if bad.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{page}: legends overlapping the plot or its axis title, outside the figure or \
             scrolling ([id, top, bottom, figure bottom, plot/title bottom, entries, box]): {bad:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Compares every row of run `run_id`'s seed tables on the open GPU page (`gpu`) with the
/// recomputation; returns the number of rows compared.
pub async fn assert_seed_tables(
    browser: &Browser,
    run_id: &str,
    gpu: &str,
    expected: &BTreeMap<(String, String, u32), SeedNumbers>,
) -> usize {
    // (cache mode, row class, [(column, text)]) per table row.
    type Row = (String, String, Vec<(String, String)>);
    let rows: Vec<Row> = browser
        .eval(&format!(
            "var out = [];
             document.querySelectorAll('table.seed[data-run=' + JSON.stringify({run}) + ']').forEach(function (t) {{
               t.querySelectorAll('tbody tr').forEach(function (tr) {{
                 var cells = [];
                 tr.querySelectorAll('td[data-col]').forEach(function (td) {{ cells.push([td.dataset.col, td.textContent]); }});
                 out.push([t.dataset.cacheMode, tr.className, cells]);
               }});
             }});
             return out;",
            run = serde_json::Value::from(run_id)
        ))
        .await
        .unwrap();
    for (mode, _class, cells) in &rows {
        let cell = |name: &str| cells.iter().find(|c| c.0 == name).unwrap().1.clone();
        let conc: u32 = cell("concurrency").trim_end_matches(" ★").parse().unwrap();
        let e = &expected[&(gpu.to_string(), mode.clone(), conc)];
        assert_shown(&cell("total_time"), e.total_time, "total time");
        assert_shown(&cell("avg_traj"), e.avg_traj, "avg/traj");
        assert_shown(&cell("traj_s"), e.traj_s, "traj/s");
        assert_shown(&cell("tok_s"), e.tok_s, "tok/s");
        assert_eq!(cell("total_tokens"), e.total_tokens.to_string());
        assert_shown(&cell("tok_turn"), e.tok_turn, "tok/turn");
    }
    rows.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_renders_from_file_urls() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(
        tmp.path(),
        "browser-run",
        &FixtureSpec::small("browser-run"),
    );
    let mut hostile = FixtureSpec::small(HOSTILE_RUN_ID);
    hostile.hostile = true;
    hostile.gpus = vec!["l4".into()];
    hostile.concurrencies = vec![1, 2];
    let hostile_run = write_run(tmp.path(), "hostile-run", &hostile);
    let legacy = crate::support::fixtures_dir().join("legacy-seed");
    let site = tmp.path().join("site");
    let report = build(&[run.clone(), hostile_run.clone(), legacy], &site, None);
    assert_eq!(report.runs, 3);

    let expected = recompute_seed(&run.join("turns.jsonl"));
    let browser = Browser::start().await.expect("headless chromium");
    let mut tables_checked = 0;
    for page in &report.pages {
        browser.open(&site.join(page)).await.unwrap();
        let errors = browser.errors().await.unwrap();
        assert!(errors.is_empty(), "{page}: console errors: {errors:?}");
        assert_charts_rendered(&browser, page).await;
        assert_legends_clear(&browser, page).await;
        let (sim, legacy) = browser
            .eval::<(bool, bool)>("return [document.getElementById('simulated-banner') !== null, document.getElementById('legacy-banner') !== null]")
            .await
            .unwrap();
        // Only the seed's GPU page shows no simulated run; it carries the legacy label instead.
        let legacy_page = page == "gpu-gpu1.html";
        assert_eq!(sim, !legacy_page, "{page}: simulated banner");
        assert_eq!(
            legacy,
            legacy_page || page == "index.html",
            "{page}: legacy banner"
        );

        // Seed tables of the measured run, read back from the DOM.
        let gpu = page.trim_start_matches("gpu-").trim_end_matches(".html");
        tables_checked += assert_seed_tables(&browser, "browser-run", gpu, &expected).await;
    }
    assert_eq!(
        tables_checked,
        2 * 2 * 3,
        "every cell of the measured run was compared"
    );

    // The index overlays every GPU of every run (legend groups); narrow, its legends wrap
    // into more rows and the figures grow to hold them.
    browser.open(&site.join("index.html")).await.unwrap();
    assert_charts_rendered(&browser, "index.html").await;
    let groups = browser
        .eval::<usize>("return document.querySelectorAll('.chart .legend .groups').length")
        .await
        .unwrap();
    assert!(groups >= 2 * 2, "index legends: {groups} groups");
    browser.client().set_window_size(560, 900).await.unwrap();
    assert_legends_clear(&browser, "index.html at 560 px").await;
    browser.client().set_window_size(1280, 900).await.unwrap();

    // Hostile strings are text: the index shows them verbatim and ran no injected script.
    browser.open(&site.join("index.html")).await.unwrap();
    let texts: Vec<String> = browser
        .eval("return Array.prototype.map.call(document.querySelectorAll('section.run h3, dl.meta dd'), function (e) { return e.textContent; })")
        .await
        .unwrap();
    assert!(
        texts.iter().any(|t| t.starts_with(HOSTILE_RUN_ID)),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t.contains(HOSTILE_MODEL)), "{texts:?}");
    let injected = browser
        .eval::<usize>("return document.querySelectorAll('b, i, img').length")
        .await
        .unwrap();
    assert_eq!(injected, 0, "hostile markup became elements");
    assert!(browser.errors().await.unwrap().is_empty());

    // Hovering a point of the throughput chart names it with its value rounded to a tenth
    // of a token/s (not the 6 significant digits the data holds).
    browser.open(&site.join("gpu-h100.html")).await.unwrap();
    assert_charts_rendered(&browser, "gpu-h100.html").await;
    let (text, x, y): (String, u32, f64) = browser
        .eval(
            "var gd = Array.prototype.find.call(document.querySelectorAll('.js-plotly-plot'),
               function (g) { return (g.data[0].hovertemplate || '').indexOf('concurrency %{x}') >= 0; });
             gd.scrollIntoView();
             Plotly.Fx.hover(gd, [{curveNumber: 0, pointNumber: 1}]);
             var label = gd.querySelector('.hoverlayer .hovertext');
             return [label ? label.textContent : '', gd.data[0].x[1], gd.data[0].y[1]];",
        )
        .await
        .unwrap();
    let shown = format!("{y:.1} tok/s");
    assert!(
        text.contains(&format!("concurrency {x}: {shown}")),
        "{text:?} for {y}"
    );
    browser.close().await.unwrap();
}

/// The helper itself: errors thrown, failed loads and console.error are all caught, so a clean
/// result above means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_helper_reports_console_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("broken.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><script src=\"missing.js\"></script>\
         <script>console.error('boom');</script><script>undefinedFunction();</script></body></html>",
    )
    .unwrap();
    let browser = Browser::start().await.expect("headless chromium");
    browser.open(&page).await.unwrap();
    let errors = browser.errors().await.unwrap();
    browser.close().await.unwrap();
    let all = errors.join("\n");
    assert!(all.contains("missing.js"), "{all}");
    assert!(all.contains("console.error: boom"), "{all}");
    assert!(all.contains("undefinedFunction"), "{all}");
}
