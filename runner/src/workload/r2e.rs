//! The seed's data: r2e-gym trajectories (JSONL, one trajectory per line) and a YAML prompt
//! file with `system_prompt` and `instance_prompt` (containing `{problem_statement}`).
//!
//! Each `trajectory_steps[i]` is one turn: its recorded assistant message is the step's
//! `thought` and `action` (separated by a blank line), and the observation that follows is
//! formatted as the seed did: the observation, a blank line, then
//! `[Environment execution time: X.XXXXs]`. The tool time replayed is `env_exec_time`.

use super::{Message, Role, Trajectory, Turn, WorkloadError};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(expecting = "a prompts file, a mapping with system_prompt and instance_prompt")]
struct RawPrompts {
    system_prompt: serde_yaml_ng::Value,
    instance_prompt: serde_yaml_ng::Value,
}

#[derive(Debug)]
struct Prompts {
    system_prompt: String,
    instance_prompt: String,
}

/// A YAML string, and only a string: YAML reads `null`, `~`, `yes` or `5` unquoted as other
/// types, which would otherwise be sent as the text "null", "~", "yes" or "5".
fn yaml_text(key: &str, v: serde_yaml_ng::Value) -> Result<String, String> {
    use serde_yaml_ng::Value;
    let what = match v {
        Value::String(s) => return Ok(s),
        Value::Null => "empty (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    };
    Err(format!(
        "{key} is {what}, not text (quote it if it is meant as text)"
    ))
}

#[derive(Debug, Deserialize)]
#[serde(
    expecting = "an r2e-gym trajectory, an object with \"problem_statement\" and \"trajectory_steps\""
)]
struct Line {
    problem_statement: String,
    trajectory_steps: Vec<Step>,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    docker_image: Option<String>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Step {
    #[serde(default)]
    thought: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    observation: String,
    #[serde(default)]
    env_exec_time: Option<f64>,
}

/// Longest tool time a step may record, seconds (a day): past it the replay would sleep for
/// ever in effect.
const MAX_TOOL_TIME_S: f64 = 86_400.0;

/// Read the prompt file (small; loaded whole).
fn prompts(path: &Path) -> Result<Prompts, WorkloadError> {
    let text = std::fs::read_to_string(path).map_err(|e| super::io_err(path, e))?;
    // (A byte-order mark, as some editors write, is not part of the first key.)
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    // The YAML parser takes time quadratic in how deep collections nest (100,000 `[` cost it
    // 20 s): no prompt file nests deeper than a few levels.
    if let Some(line) = nested_deeper_than(text, MAX_NESTING) {
        return Err(WorkloadError::File {
            path: path.to_path_buf(),
            message: format!(
                "line {line}: more than {MAX_NESTING} `[`/`{{` open at once: not a prompt file \
                 (it needs `system_prompt` and `instance_prompt` strings)"
            ),
        });
    }
    let raw: RawPrompts = serde_yaml_ng::from_str(text).map_err(|e| WorkloadError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let p = yaml_text("system_prompt", raw.system_prompt)
        .and_then(|system_prompt| {
            Ok(Prompts {
                system_prompt,
                instance_prompt: yaml_text("instance_prompt", raw.instance_prompt)?,
            })
        })
        .map_err(|message| WorkloadError::File {
            path: path.to_path_buf(),
            message,
        })?;
    if !p.instance_prompt.contains("{problem_statement}") {
        return Err(WorkloadError::File {
            path: path.to_path_buf(),
            message: "instance_prompt does not contain {problem_statement}".into(),
        });
    }
    Ok(p)
}

/// How many `[`/`{` a prompt file may have open at once ([`nested_deeper_than`]).
const MAX_NESTING: usize = 256;

/// The line (1-based) where more than `max` of `[`/`{` are first open at once, counting every
/// bracket, quoted or not (so text full of unmatched brackets counts too: a prompt would need
/// hundreds of them).
fn nested_deeper_than(text: &str, max: usize) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    for b in text.bytes() {
        match b {
            b'\n' => line += 1,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The first user message as the seed made it, with Python's `str.format`: the
/// problem statement for `{problem_statement}`, `{` for `{{` and `}` for `}}` (any other
/// `{…}`, which would have failed there, stays as it is).
pub fn instance_message(template: &str, problem_statement: &str) -> String {
    const FIELD: &str = "{problem_statement}";
    let mut out = String::with_capacity(template.len() + problem_statement.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with(FIELD) {
            out.push_str(problem_statement);
            rest = &rest[FIELD.len()..];
        } else if rest.starts_with("{{") || rest.starts_with("}}") {
            out.push_str(&rest[..1]);
            rest = &rest[2..];
        } else {
            out.push_str(&rest[..1]);
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The observation message as the seed formatted it.
pub fn observation(obs: &str, env_exec_time: f64) -> String {
    format!("{obs}\n\n[Environment execution time: {env_exec_time:.4}s]")
}

pub fn read(
    path: &Path,
    prompts_path: &Path,
    want: usize,
    skip: bool,
) -> Result<(Vec<Trajectory>, u64), WorkloadError> {
    let p = prompts(prompts_path)?;
    super::read_jsonl(path, want, skip, |text, lineno| {
        let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if line.trajectory_steps.is_empty() {
            return Err("trajectory_steps is empty".into());
        }
        let id = line
            .instance_id
            .or(line.docker_image)
            .or(line.id.map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }))
            .unwrap_or_else(|| format!("line-{lineno}"));
        let prelude = vec![
            Message::new(Role::System, p.system_prompt.clone()),
            Message::new(
                Role::User,
                instance_message(&p.instance_prompt, &line.problem_statement),
            ),
        ];
        let turns = line
            .trajectory_steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                // Shown as recorded (the seed printed it as it was); slept only when positive.
                let shown = s.env_exec_time.unwrap_or(0.0);
                if shown.is_nan() || shown > MAX_TOOL_TIME_S {
                    return Err(format!(
                        "trajectory_steps[{i}].env_exec_time: {shown} s is not a tool's time \
                         (at most {MAX_TOOL_TIME_S} s; it is replayed as think time)"
                    ));
                }
                let think = shown.max(0.0);
                let recorded = match (s.thought.trim().is_empty(), s.action.trim().is_empty()) {
                    (true, _) => s.action,
                    (false, true) => s.thought,
                    (false, false) => format!("{}\n\n{}", s.thought, s.action),
                };
                Ok(Turn {
                    recorded: Some(recorded),
                    after: vec![Message::new(Role::User, observation(&s.observation, shown))],
                    think_time: think,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Some(Trajectory { id, prelude, turns }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_file_nested_without_end_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.yaml");
        let text = format!(
            "instance_prompt: \"{{problem_statement}}\"\nsystem_prompt: {}\n",
            "[".repeat(100_000)
        );
        std::fs::write(&path, text).unwrap();
        // Refused before the parser sees it (which would take ~20 s, then say the type is wrong).
        let err = prompts(&path).unwrap_err().to_string();
        assert!(
            err.contains("deep.yaml")
                && err.contains("line 2")
                && err.contains("not a prompt file"),
            "{err}"
        );
        // Brackets that close again are no nesting, however many.
        let fine = format!(
            "system_prompt: \"{}\"\ninstance_prompt: \"{{problem_statement}}\"\n",
            "[x] {y} ".repeat(10_000)
        );
        std::fs::write(&path, fine).unwrap();
        prompts(&path).unwrap();
    }

    #[test]
    fn a_prompt_that_yaml_reads_as_no_text_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        for (value, says) in [
            ("null", "null"),
            ("~", "null"),
            ("", "null"),
            ("true", "boolean"),
            ("5", "number"),
            ("[a]", "list"),
        ] {
            let text =
                format!("system_prompt: {value}\ninstance_prompt: \"{{problem_statement}}\"\n");
            std::fs::write(&path, text).unwrap();
            let err = prompts(&path).unwrap_err().to_string();
            assert!(
                err.contains("p.yaml") && err.contains("system_prompt") && err.contains(says),
                "{value:?}: {err}"
            );
        }
        // Quoted, the same words are text; and text may be empty.
        for value in ["\"null\"", "'5'", "\"\"", "|\n  a block\n"] {
            let text =
                format!("system_prompt: {value}\ninstance_prompt: \"{{problem_statement}}\"\n");
            std::fs::write(&path, text).unwrap();
            prompts(&path).unwrap();
        }
    }

    #[test]
    fn the_instance_prompt_is_formatted_as_python_str_format_does() {
        assert_eq!(
            instance_message(
                "Fix:\n{problem_statement}\nJSON: {{\"a\": 1}} {other}",
                "bug {x}"
            ),
            "Fix:\nbug {x}\nJSON: {\"a\": 1} {other}"
        );
        assert_eq!(
            observation("out", -0.25),
            "out\n\n[Environment execution time: -0.2500s]"
        );
    }
}
