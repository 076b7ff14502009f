//! The dataset readers through the binary: r2e-gym (+ YAML prompts), OpenAI messages,
//! ShareGPT; malformed lines named by file and line, or skipped and counted.

use super::*;
use turnbench_schema::HistorySource;

fn dataset_args(tmp: &Path, id: &str, dataset: &str, extra: &[&str]) -> Vec<String> {
    let path = fixture(dataset).display().to_string();
    let mut over: Vec<(&str, &str)> = vec![
        ("--cache-modes", "prefix"),
        ("--batch-sizes", "2"),
        ("--dataset", &path),
    ];
    let mut i = 0;
    while i < extra.len() {
        match extra.get(i + 1).filter(|v| !v.starts_with("--")) {
            Some(v) => {
                over.push((extra[i], v));
                i += 2;
            }
            None => {
                over.push((extra[i], ""));
                i += 1;
            }
        }
    }
    small_with(tmp, id, &over)
}

#[test]
fn r2e_gym_with_recorded_history() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = fixture("r2e-prompts.yaml").display().to_string();
    run_ok(&dataset_args(
        tmp.path(),
        "r2e",
        "r2e.jsonl",
        &[
            "--prompts",
            &prompts,
            "--history",
            "recorded",
            "--think-time",
            "replay",
        ],
    ));
    let run = Run::load(&tmp.path().join("r2e"));
    assert_eq!(run.manifest.dataset.kind, "r2e-gym");
    assert_eq!(run.manifest.dataset.history, HistorySource::Recorded);
    assert_eq!(
        (
            run.manifest.dataset.trajectories,
            run.manifest.dataset.turns
        ),
        (2, 5)
    );
    assert!(run.manifest.dataset.content_hash.as_ref().unwrap().len() >= 64);
    run.assert_complete(&[3, 2]);
    let turns = run.turns();
    let ids: std::collections::BTreeSet<&str> = turns.iter().map(|r| r.traj_id.as_str()).collect();
    assert_eq!(ids, ["demo__repo-1", "demo__repo-2"].into());
    // The dataset's env_exec_time is replayed as think time (the last turn has none).
    let t0: Vec<f64> = {
        let mut v: Vec<&TurnRecord> = turns.iter().filter(|r| r.traj == 0).collect();
        v.sort_by_key(|r| r.turn);
        v.iter().map(|r| r.think_time).collect()
    };
    assert_eq!(t0, [0.1532, 0.0811, 0.0]);
}

#[test]
fn openai_messages_through_the_openai_api() {
    let tmp = tempfile::tempdir().unwrap();
    run_ok(&dataset_args(
        tmp.path(),
        "oai",
        "openai.jsonl",
        &["--api", "openai"],
    ));
    let run = Run::load(&tmp.path().join("oai"));
    assert_eq!(run.manifest.dataset.kind, "openai-messages");
    assert_eq!(run.manifest.backend.api, "openai");
    // conv-a: two assistant turns, then a tool + user message → a third generated turn.
    run.assert_complete(&[3, 1]);
    for r in run.turns() {
        assert!(r.error.is_none(), "{r:?}");
        assert!(r.prompt_tokens.unwrap() > 0 && r.completion_tokens.unwrap() > 0);
        // The server runs with --enable-cache-report, which leaves `prompt_tokens_details`
        // null when nothing was cached: that is 0 cached, not unknown.
        assert!(r.cached_tokens.is_some(), "{r:?}");
    }
    // Later turns of the conversation reuse the cache (prefix mode).
    assert!(run.turns().iter().any(|r| r.cached_tokens.unwrap() > 0));
    assert!(run.turns().iter().any(|r| r.cached_tokens == Some(0)));
    assert!(run
        .summary
        .cells
        .iter()
        .all(|c| c.cache_hit_ratio.is_some()));
}

#[test]
fn recorded_tool_calls_are_replayed_and_counted() {
    // Assistant messages that are only tool calls (content null or empty): their recorded
    // answer is the call, so `--output-len recorded` fixes the turn to the call's length.
    for api in ["openai", "native"] {
        let tmp = tempfile::tempdir().unwrap();
        run_ok(&dataset_args(
            tmp.path(),
            "tools",
            "openai-tools.jsonl",
            &[
                "--api",
                api,
                "--history",
                "recorded",
                "--output-len",
                "recorded",
                "--max-new-tokens",
                "4",
            ],
        ));
        let run = Run::load(&tmp.path().join("tools"));
        // Two calls then a final turn; one call then a final turn.
        run.assert_complete(&[3, 2]);
        for r in run
            .turns()
            .iter()
            .filter(|r| r.turn + 1 < [3, 2][r.traj as usize])
        {
            assert_eq!(r.finish_reason.as_deref(), Some("length"), "{api}: {r:?}");
            // A call like `{"name": "bash", "arguments": {...}}` is well over 4 tokens.
            assert!(r.completion_tokens.unwrap() > 8, "{api}: {r:?}");
        }
    }
}

#[test]
fn sharegpt_array_is_streamed() {
    let tmp = tempfile::tempdir().unwrap();
    run_ok(&dataset_args(tmp.path(), "sg", "sharegpt.json", &[]));
    let run = Run::load(&tmp.path().join("sg"));
    assert_eq!(run.manifest.dataset.kind, "sharegpt");
    run.assert_complete(&[2, 1]);
    let ids: std::collections::BTreeSet<String> =
        run.turns().into_iter().map(|r| r.traj_id).collect();
    assert_eq!(ids, ["sg-1".to_string(), "sg-2".to_string()].into());
}

#[test]
fn native_and_openai_requests_send_the_same_prompt_without_a_system_message() {
    // ShareGPT conversations have no system message: Qwen2.5's template (the server's, for
    // OpenAI `messages`) opens them with its default one, and so must the client's built-in
    // ChatML for native requests, or the two APIs measure different prompts.
    let prompts = |api: &str| {
        let tmp = tempfile::tempdir().unwrap();
        run_ok(&dataset_args(
            tmp.path(),
            "sg",
            "sharegpt.json",
            &["--api", api, "--history", "recorded", "--batch-sizes", "1"],
        ));
        let mut p: Vec<(u32, u32, u64)> = Run::load(&tmp.path().join("sg"))
            .turns()
            .into_iter()
            .map(|r| (r.traj, r.turn, r.prompt_tokens.unwrap()))
            .collect();
        p.sort();
        p
    };
    let native = prompts("native");
    assert_eq!(native.len(), 3);
    assert_eq!(native, prompts("openai"));
}

#[test]
fn malformed_lines_name_file_and_line_or_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = fixture("r2e-prompts.yaml").display().to_string();
    let err = run_err(&dataset_args(
        tmp.path(),
        "bad",
        "r2e-bad.jsonl",
        &["--prompts", &prompts, "--trajectories", "3"],
    ));
    assert!(err.contains("r2e-bad.jsonl:2:"), "{err}");
    assert!(err.contains("--skip-bad-lines skips such lines"), "{err}");
    let out = run_ok(&dataset_args(
        tmp.path(),
        "skip",
        "r2e-bad.jsonl",
        &[
            "--prompts",
            &prompts,
            "--trajectories",
            "3",
            "--skip-bad-lines",
        ],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("dataset: 1 malformed line(s) skipped"),
        "{stdout}"
    );
    let run = Run::load(&tmp.path().join("skip"));
    assert_eq!(run.manifest.dataset.skipped_lines, 1);
    assert_eq!(run.manifest.dataset.trajectories, 2);
    let err = run_err(&dataset_args(tmp.path(), "noprompts", "r2e.jsonl", &[]));
    assert!(err.contains("`prompts`"), "{err}");
    // Taken for r2e-gym by its `problem_statement`: the error says how to name the format.
    assert!(err.contains("say so with dataset_format"), "{err}");
    // A ShareGPT file that is one pretty-printed object, and an empty one: each error names
    // the file and what it should have been.
    let obj = tmp.path().join("object.json");
    std::fs::write(
        &obj,
        "{\n  \"conversations\": [\n    {\"from\": \"human\", \"value\": \"hi\"}\n  ]\n}\n",
    )
    .unwrap();
    let empty = tmp.path().join("empty.json");
    std::fs::write(&empty, "[]").unwrap();
    for (path, want) in [
        (&obj, "a JSON array of conversations"),
        (&empty, "no trajectories in it"),
    ] {
        let p = path.display().to_string();
        let args = small_with(
            tmp.path(),
            "sg-bad",
            &[("--dataset", &p), ("--dataset-format", "sharegpt")],
        );
        let err = run_err(&args);
        assert!(err.contains(&p) && err.contains(want), "{err}");
    }
}

#[test]
fn output_len_recorded_fixes_each_turns_length() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = fixture("r2e-prompts.yaml").display().to_string();
    run_ok(&dataset_args(
        tmp.path(),
        "fixed",
        "r2e.jsonl",
        &[
            "--prompts",
            &prompts,
            "--history",
            "recorded",
            "--output-len",
            "recorded",
            "--max-new-tokens",
            "4",
            "--cache-modes",
            "prefix,none",
            // A stop string every answer soon produces: a fixed length must not end there
            // (SGLang, like serve-sim, still stops at stop strings under ignore_eos).
            "--stop",
            "e",
        ],
    ));
    let run = Run::load(&tmp.path().join("fixed"));
    run.assert_complete(&[3, 2]);
    let turns = run.turns();
    for r in &turns {
        assert_eq!(r.finish_reason.as_deref(), Some("length"), "{r:?}");
        assert!(
            r.completion_tokens.unwrap() > 4,
            "recorded length, not max_new_tokens"
        );
        let twin = turns
            .iter()
            .find(|o| o.cache_mode != r.cache_mode && o.traj == r.traj && o.turn == r.turn)
            .unwrap();
        assert_eq!(
            twin.completion_tokens, r.completion_tokens,
            "same length in every cell"
        );
        assert_eq!(
            twin.prompt_tokens, r.prompt_tokens,
            "byte-identical prompts in every cell"
        );
    }
}

#[test]
fn output_len_recorded_fixes_turns_without_a_recorded_answer_at_max_new_tokens() {
    // conv-a ends on a user message: its last turn has no recorded answer. Left to the engine
    // (temperature 0.7, EOS and stop strings), its length would differ from cell to cell.
    let tmp = tempfile::tempdir().unwrap();
    let out = run_ok(&dataset_args(
        tmp.path(),
        "free",
        "openai.jsonl",
        &[
            "--history",
            "recorded",
            "--output-len",
            "recorded",
            "--max-new-tokens",
            "40",
            "--cache-modes",
            "prefix,none",
            "--batch-sizes",
            "1,2",
            "--stop",
            "e",
        ],
    ));
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("1 turns without a recorded answer (or with an empty one) generate exactly max_new_tokens (40)"),
        "{out}"
    );
    let run = Run::load(&tmp.path().join("free"));
    run.assert_complete(&[3, 1]);
    let last: Vec<_> = run
        .turns()
        .into_iter()
        .filter(|r| r.traj == 0 && r.turn == 2)
        .collect();
    assert_eq!(last.len(), 4, "one per cell");
    for r in &last {
        assert_eq!(r.completion_tokens, Some(40), "{r:?}");
        assert_eq!(r.finish_reason.as_deref(), Some("length"), "{r:?}");
    }
}

#[test]
fn a_prompts_file_with_a_byte_order_mark_reads_and_an_endless_tool_time_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bom = tmp.path().join("prompts-bom.yaml");
    let mut text = b"\xEF\xBB\xBF".to_vec();
    text.extend(std::fs::read(fixture("r2e-prompts.yaml")).unwrap());
    std::fs::write(&bom, text).unwrap();
    let bom = bom.display().to_string();
    run_ok(&dataset_args(
        tmp.path(),
        "bom",
        "r2e.jsonl",
        &["--prompts", &bom, "--trajectories", "2"],
    ));
    // A step whose tool time would be slept for ever (replayed think time): named by line.
    let data = tmp.path().join("endless.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(fixture("r2e.jsonl"))
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if i == 1 {
                v["trajectory_steps"][0]["env_exec_time"] = serde_json::json!(1e300);
            }
            v.to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let mut args = dataset_args(tmp.path(), "endless", "r2e.jsonl", &["--prompts", &bom]);
    for a in args.iter_mut() {
        if a.starts_with("--dataset=") {
            *a = format!("--dataset={}", data.display());
        }
    }
    let err = run_err(&args);
    assert!(
        err.contains("endless.jsonl:2:") && err.contains("env_exec_time"),
        "{err}"
    );
}
