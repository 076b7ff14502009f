//! Legacy import of the seed's files.

use crate::support::{assert_shown, build, fixtures_dir};
use report::legacy;
use serde_json::Value;

#[test]
fn seed_files_round_trip_to_a_gpu_page_with_the_seed_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixtures_dir().join("legacy-seed");
    let site = tmp.path().join("site");
    let report = build(
        &[
            dir.join("per_turn_metrics_gpu1.jsonl"),
            dir.join("per_turn_summary_gpu1.json"),
        ],
        &site,
        None,
    );
    assert_eq!(report.runs, 1);
    assert_eq!(report.pages, ["index.html", "gpu-gpu1.html"]);
    let html = std::fs::read_to_string(site.join("gpu-gpu1.html")).unwrap();
    assert!(html.contains("id=\"legacy-banner\""));
    assert!(
        html.contains("words/s"),
        "the page says the seed's tokens were words"
    );
    assert!(
        !html.contains("badge simulated"),
        "legacy runs are not simulated"
    );

    // The table equals the seed summary's own numbers, row by row.
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.join("per_turn_summary_gpu1.json")).unwrap())
            .unwrap();
    let table = &html[html.find("id=\"seed-0-legacy\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let rows: Vec<&str> = table.split("<tr").skip(2).collect();
    assert_eq!(rows.len(), 2);
    for (row, batch) in rows.iter().zip(["1", "2"]) {
        let cell = |col: &str| {
            let start = row.find(&format!("data-col=\"{col}\">")).unwrap() + col.len() + 11;
            row[start..start + row[start..].find('<').unwrap()].to_string()
        };
        let s = &summary[batch];
        assert_shown(
            &cell("concurrency"),
            s["batch_size"].as_f64().unwrap(),
            "batch",
        );
        assert_shown(
            &cell("total_time"),
            s["total_time"].as_f64().unwrap(),
            "total time",
        );
        assert_shown(
            &cell("avg_traj"),
            s["avg_time_per_traj"].as_f64().unwrap(),
            "avg/traj",
        );
        assert_shown(
            &cell("traj_s"),
            s["traj_throughput"].as_f64().unwrap(),
            "traj/s",
        );
        assert_shown(
            &cell("tok_s"),
            s["token_throughput"].as_f64().unwrap(),
            "tok/s",
        );
        assert_shown(
            &cell("total_tokens"),
            s["total_tokens"].as_f64().unwrap(),
            "total tokens",
        );
        assert_shown(
            &cell("tok_turn"),
            s["tokens_per_turn"].as_f64().unwrap(),
            "tok/turn",
        );
    }
    // Batch size 2 has the higher throughput: it is the marked row.
    assert!(rows[1].starts_with(" class=\"best\""));
    assert!(!rows[0].starts_with(" class=\"best\""));
}

#[test]
fn metrics_alone_derive_what_they_can() {
    let dir = fixtures_dir().join("legacy-seed");
    let run = legacy::load(Some(&dir.join("per_turn_metrics_gpu1.jsonl")), None).unwrap();
    assert_eq!(run.gpu, "gpu1");
    assert_eq!(run.turns.len(), 8);
    let row = &run.rows[0];
    // Trajectory time = Σ averaged turn times: (2.5·2 + 3.0·2) / 2 trajectories.
    assert_eq!(row.avg_traj_time_s, Some(5.5));
    assert_eq!(row.total_tokens, Some(230.0));
    assert_eq!(row.tokens_per_turn, Some(57.5));
    assert_eq!(row.total_time_s, None, "the turns cannot give the makespan");
    assert!(!row.from_summary);
}

#[test]
fn accepts_field_name_variants_and_batch_markers() {
    let dir = fixtures_dir().join("legacy-variants");
    let run = legacy::load(
        Some(&dir.join("per_turn_metrics_h200.jsonl")),
        Some(&dir.join("per_turn_summary_h200.json")),
    )
    .unwrap();
    assert_eq!(run.turns.len(), 3);
    assert!(
        run.turns.iter().all(|t| t.batch_size == 4),
        "batch size from the comment marker"
    );
    assert_eq!(
        run.turns[2].traj, 1,
        "string trajectory ids numbered in order of appearance"
    );
    assert_eq!(run.turns[1].prompt_words, Some(150.0));
    assert_eq!(run.turns[0].turn_time_avg_s, Some(1.5));
    assert_eq!(run.rows.len(), 1);
    let r = &run.rows[0];
    assert_eq!(
        (
            r.batch_size,
            r.total_time_s,
            r.avg_traj_time_s,
            r.traj_per_s,
            r.tok_per_s,
            r.total_tokens,
            r.tokens_per_turn
        ),
        (
            4,
            Some(4.0),
            Some(3.5),
            Some(0.5),
            Some(15.0),
            Some(60.0),
            Some(20.0)
        )
    );
}

#[test]
fn a_bad_line_is_named_with_file_and_line() {
    let path = fixtures_dir().join("legacy-bad/per_turn_metrics_bad.jsonl");
    let err = legacy::load(Some(&path), None).unwrap_err().to_string();
    assert!(err.contains("per_turn_metrics_bad.jsonl:3:"), "{err}");
}
