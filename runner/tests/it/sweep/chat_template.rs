//! `--chat-template`: a Jinja template from a tokenizer config drives every cache mode of the
//! native API, is named in the manifest, and a bad one stops the sweep before anything runs.

use super::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use turnbench_schema::CacheMode;

fn template_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat_template")
        .join(name)
}

/// Prompt tokens per (cache mode, trajectory, turn) at concurrency 1.
fn prompt_tokens(run: &Run) -> BTreeMap<(CacheMode, u32, u32), u64> {
    run.turns()
        .iter()
        .filter(|r| r.concurrency == 1)
        .map(|r| ((r.cache_mode, r.traj, r.turn), r.prompt_tokens.unwrap()))
        .collect()
}

#[test]
fn a_jinja_template_runs_every_cache_mode_like_the_builtin_chatml() {
    let config = template_fixture("chatml/tokenizer_config.json");
    let tmp = tempfile::tempdir().unwrap();
    let recorded = [("--history", "recorded"), ("--batch-sizes", "1")];
    let with_template = |id: &str, history: &[(&str, &str)]| {
        let mut over = vec![("--chat-template", config.to_str().unwrap())];
        over.extend_from_slice(history);
        run_ok(&small_with(tmp.path(), id, &over));
        Run::load(&tmp.path().join(id))
    };

    // Generated history, concurrency 1 and 2, all three cache modes.
    let run = with_template("jinja", &[]);
    run.assert_complete(&[4, 4]);
    let hash = Sha256::digest(std::fs::read(&config).unwrap());
    let want = format!(
        "tokenizer_config.json sha256:{}",
        &format!("{hash:x}")[..16]
    );
    assert_eq!(run.manifest.backend.chat_template.as_deref(), Some(&*want));
    assert_eq!(
        run.manifest.plan["chat_template"].as_str(),
        config.to_str(),
        "the plan keeps the path"
    );
    let turns = run.turns();
    assert!(turns.iter().all(|r| r.error.is_none()), "no failures");
    assert_eq!(
        turns.len(),
        3 * 2 * 2 * 4,
        "3 modes × 2 concurrencies × 2 × 4 turns"
    );
    for mode in [CacheMode::Prefix, CacheMode::Session] {
        for t in 0..2 {
            let (cached, prompt) = token_series(&turns, mode, t);
            assert!(
                cached.windows(2).all(|w| w[1] > w[0]) && cached[1..].iter().all(|&c| c > 0),
                "{mode}: cached tokens rise: {cached:?}"
            );
            assert!(
                prompt.windows(2).all(|w| w[1] > w[0]),
                "{mode}: the server sees the whole, growing conversation: {prompt:?}"
            );
        }
    }

    // Recorded history makes every prompt the same whatever was generated: the Jinja ChatML
    // and the built-in one must give the server the same token counts, turn by turn, in every
    // mode (the session mode's count is the session's whole prompt).
    let jinja = with_template("jinja-recorded", &recorded);
    run_ok(&small_with(tmp.path(), "builtin-recorded", &recorded));
    let builtin = Run::load(&tmp.path().join("builtin-recorded"));
    assert_eq!(
        builtin.manifest.backend.chat_template.as_deref(),
        Some("chatml (built-in)")
    );
    let (a, b) = (prompt_tokens(&jinja), prompt_tokens(&builtin));
    assert_eq!(a.len(), 3 * 2 * 4);
    assert_eq!(
        a, b,
        "same prompts from the Jinja ChatML and the built-in ChatML"
    );
}

#[test]
fn bad_chat_templates_stop_the_sweep_before_any_cell_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let sweep_err = |template: &Path, extra: &[(&str, &str)]| {
        let mut over = vec![("--chat-template", template.to_str().unwrap())];
        over.extend_from_slice(extra);
        run_err(&small_with(&out, "bad", &over))
    };
    let cases = [
        ("malformed/tokenizer_config.json", "not valid JSON"),
        (
            "no-template/tokenizer_config.json",
            "no `chat_template` field",
        ),
        ("syntax-error.jinja", "syntax error at line 4"),
        ("missing/tokenizer_config.json", "No such file"),
    ];
    for (name, what) in cases {
        let err = sweep_err(&template_fixture(name), &[]);
        assert!(
            err.contains("plan key `chat_template`") && err.contains(name) && err.contains(what),
            "{name}: {err}"
        );
    }
    // Rendering fails on the workload itself.
    let raises = tmp.path().join("raises.jinja");
    std::fs::write(
        &raises,
        "{{ raise_exception('this template takes no agents') }}",
    )
    .unwrap();
    let err = sweep_err(&raises, &[]);
    assert!(
        err.contains("raises.jinja")
            && err.contains("raise_exception: this template takes no agents")
            && err.contains("before the sweep"),
        "{err}"
    );
    // Renders nothing: every prompt would be empty.
    let empty = tmp.path().join("empty.jinja");
    std::fs::write(&empty, "").unwrap();
    let err = sweep_err(&empty, &[]);
    assert!(
        err.contains("empty.jinja")
            && err.contains("empty text")
            && err.contains("before the sweep"),
        "{err}"
    );
    // Not prefix-stable: refused for session mode ...
    let strips = template_fixture("strips-reasoning.jinja");
    let err = sweep_err(&strips, &[("--cache-modes", "prefix,session")]);
    assert!(
        err.contains("strips-reasoning.jinja")
            && err.contains("session mode needs a prefix-stable chat template")
            && err.contains("on a probe before the sweep started"),
        "{err}"
    );
    // ... and for the OpenAI API, which templates on the server.
    let config = template_fixture("chatml/tokenizer_config.json");
    let err = sweep_err(&config, &[("--api", "openai"), ("--cache-modes", "prefix")]);
    assert!(
        err.contains("`chat_template`") && err.contains("api = native"),
        "{err}"
    );
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "nothing written for a rejected template"
    );
    // Without session mode the same template runs.
    let run = small_with(
        &out,
        "strips",
        &[
            ("--chat-template", strips.to_str().unwrap()),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
        ],
    );
    run_ok(&run);
    Run::load(&out.join("strips")).assert_complete(&[4, 4]);
}

/// `--resume` uses the run's template: if its file changed since the run started, the resumed
/// turns would not see the same prompts, and the resume stops before anything runs.
#[test]
fn resume_refuses_a_changed_template() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tokenizer_config.json");
    std::fs::copy(template_fixture("chatml/tokenizer_config.json"), &config).unwrap();
    run_ok(&small_with(
        tmp.path(),
        "tpl",
        &[
            ("--chat-template", config.to_str().unwrap()),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
        ],
    ));
    let resume = [
        "sweep",
        "--quiet",
        "--out",
        tmp.path().to_str().unwrap(),
        "--resume",
        "tpl",
    ]
    .map(String::from);
    run_ok(&resume); // unchanged: nothing left to do
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replacen("<|im_start|>", "<|im_start|> ", 1);
    std::fs::write(&config, text).unwrap();
    let err = run_err(&resume);
    assert!(
        err.contains("--resume tpl: the chat template changed since the run started"),
        "{err}"
    );
}
