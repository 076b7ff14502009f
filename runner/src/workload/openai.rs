//! OpenAI `messages` JSONL: one conversation per line, `{"messages": [...], "id"?: ...}`.
//!
//! Messages before the first assistant message form the prelude; every assistant message is a
//! generation turn (its content is the recorded answer); the user and tool messages after it
//! are replayed as the observation. A conversation ending in user or tool messages gets a final
//! turn with no recorded answer. Tool messages are sent as role `tool` to the OpenAI API and
//! wrapped in `<tool_response>` inside a user turn by the ChatML template.
//!
//! An assistant message's `tool_calls` (and the older `function_call`) are part of its recorded
//! answer, written as the text a Hermes-style model (Qwen2.5) generates for them and Qwen's chat
//! template renders them as: after the content, one
//! `<tool_call>\n{"name": N, "arguments": A}\n</tool_call>` per call (newline-separated, the
//! arguments string read as JSON when it is JSON, written as Python's `json.dumps` writes it).
//! So `--history recorded` replays the call, and `--output-len recorded` counts its tokens.

use super::{Message, Role, Trajectory, Turn, WorkloadError};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(expecting = "a conversation, an object with \"messages\": [{\"role\", \"content\"}, …]")]
struct Line {
    messages: Vec<Msg>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a message, an object with \"role\" and \"content\"")]
struct Msg {
    role: String,
    #[serde(default)]
    content: Option<serde_json::Value>,
    #[serde(default)]
    tool_calls: Option<Box<RawValue>>,
    #[serde(default)]
    function_call: Option<Box<RawValue>>,
}

/// One entry of `tool_calls` (`{"type": "function", "function": {...}}`) or a function call.
#[derive(Debug, Deserialize)]
struct Call<'a> {
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
    #[serde(default, borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct Function<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

impl Msg {
    /// The message's text: its content, then its tool calls (see the module's documentation).
    fn text(self) -> Result<String, String> {
        let mut text = content_text(self.content)?;
        let mut calls: Vec<Call<'_>> = Vec::new();
        if let Some(raw) = self.tool_calls.as_deref() {
            let list: Option<Vec<Call<'_>>> = serde_json::from_str(raw.get())
                .map_err(|e| format!("tool_calls must be a list of tool calls: {}", bare(&e)))?;
            calls.extend(list.unwrap_or_default());
        }
        if calls.is_empty() {
            if let Some(raw) = self.function_call.as_deref() {
                let call: Option<Call<'_>> = serde_json::from_str(raw.get())
                    .map_err(|e| format!("function_call must be a tool call: {}", bare(&e)))?;
                calls.extend(call);
            }
        }
        for call in calls {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str("<tool_call>\n");
            text.push_str(&tool_call_json(call)?);
            text.push_str("\n</tool_call>");
        }
        Ok(text)
    }
}

/// A serde error without its position (which is inside the field, not the line).
fn bare(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `{"name": N, "arguments": A}` of one call, as Python's `json.dumps` writes it (keys in
/// their recorded order).
fn tool_call_json(call: Call<'_>) -> Result<String, String> {
    let (name, args) = match call.function {
        Some(f) => (f.name, f.arguments),
        None => match call.name {
            Some(n) => (n, call.arguments),
            None => return Err("a tool call names no function".into()),
        },
    };
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"name\": ");
    python_json(
        &serde_json::to_string(&name).map_err(|e| e.to_string())?,
        &mut out,
    )?;
    out.extend_from_slice(b", \"arguments\": ");
    match args.map(RawValue::get) {
        None | Some("null") => out.extend_from_slice(b"{}"),
        Some(raw) => {
            // OpenAI sends the arguments as a JSON string; templates render the object it holds
            // (a string that is not JSON stays a string).
            let inner: Option<String> = match serde_json::from_str::<String>(raw) {
                Ok(s) if serde_json::from_str::<serde::de::IgnoredAny>(&s).is_ok() => Some(s),
                _ => None,
            };
            python_json(inner.as_deref().unwrap_or(raw), &mut out)?;
        }
    }
    out.push(b'}');
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// Rewrite one JSON document with Python's `json.dumps` spacing (`ensure_ascii=False`, as chat
/// templates' `tojson` does).
fn python_json(json: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let mut ser =
        serde_json::Serializer::with_formatter(out, crate::chat_template::PythonSeparators);
    serde_transcode::transcode(&mut de, &mut ser).map_err(|e| e.to_string())
}

fn content_text(v: Option<serde_json::Value>) -> Result<String, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s),
        // The content-parts form: concatenate the text parts.
        Some(serde_json::Value::Array(parts)) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join("")),
        Some(other) => Err(format!("message content must be a string, got {other}")),
    }
}

/// Split a conversation into prelude and turns (shared with ShareGPT).
pub(crate) fn conversation(id: String, msgs: Vec<Message>) -> Result<Option<Trajectory>, String> {
    if msgs.is_empty() {
        return Err("the conversation has no messages".into());
    }
    if !msgs
        .iter()
        .any(|m| matches!(m.role, Role::User | Role::Tool))
    {
        return Err("the conversation has no user (or tool) message: nothing to answer".into());
    }
    let mut prelude = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for m in msgs {
        match (m.role, turns.last_mut()) {
            (Role::Assistant, _) => turns.push(Turn {
                recorded: Some(m.content),
                after: vec![],
                think_time: 0.0,
            }),
            (_, None) => prelude.push(m),
            (_, Some(t)) => t.after.push(m),
        }
    }
    if prelude.is_empty() {
        return Err("conversation starts with an assistant message".into());
    }
    if turns.last().is_none_or(|t| !t.after.is_empty()) {
        turns.push(Turn {
            recorded: None,
            after: vec![],
            think_time: 0.0,
        });
    }
    Ok(Some(Trajectory { id, prelude, turns }))
}

pub(crate) fn role(s: &str) -> Result<Role, String> {
    match s {
        "system" | "developer" => Ok(Role::System),
        "user" | "human" => Ok(Role::User),
        "assistant" | "gpt" | "model" | "chatgpt" | "bing" => Ok(Role::Assistant),
        "tool" | "function" | "observation" => Ok(Role::Tool),
        other => Err(format!(
            "unknown role {other:?} (known: system, developer, user, human, assistant, gpt, \
             model, tool, function, observation, and ShareGPT's function_call)"
        )),
    }
}

pub fn read(path: &Path, want: usize, skip: bool) -> Result<(Vec<Trajectory>, u64), WorkloadError> {
    super::read_jsonl(path, want, skip, |text, lineno| {
        let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let msgs = line
            .messages
            .into_iter()
            .map(|m| Ok(Message::new(role(&m.role)?, m.text()?)))
            .collect::<Result<Vec<_>, String>>()?;
        let id = match line.id {
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => format!("line-{lineno}"),
        };
        conversation(id, msgs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(line: &str) -> Vec<Option<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, format!("{}\n", line.replace('\n', ""))).unwrap();
        let (trajs, _) = read(&path, 10, false).unwrap();
        trajs[0].turns.iter().map(|t| t.recorded.clone()).collect()
    }

    #[test]
    fn a_conversation_with_nothing_to_answer_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        for (line, what) in [
            (r#"{"messages": []}"#, "has no messages"),
            (
                r#""just text""#,
                "expected a conversation, an object with \"messages\"",
            ),
            (
                r#"{"messages": [3]}"#,
                "expected a message, an object with \"role\"",
            ),
            (
                r#"{"messages": [{"role": "system", "content": "be brief"}]}"#,
                "no user (or tool) message",
            ),
            (
                r#"{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}"#,
                "starts with an assistant message",
            ),
        ] {
            std::fs::write(&path, format!("{line}\n")).unwrap();
            let err = read(&path, 10, false).unwrap_err().to_string();
            assert!(err.contains("d.jsonl:1") && err.contains(what), "{err}");
        }
    }

    #[test]
    fn tool_calls_are_part_of_the_recorded_answer() {
        let line = r#"{"messages": [{"role": "user", "content": "fix it"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
              "function": {"name": "bash", "arguments": "{\"cmd\": \"ls -la\", \"timeout\": 10, \"env\": {\"Z\": 1, \"A\": [1, 2]}}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "a.py"},
            {"role": "assistant", "content": "Two calls.", "tool_calls": [
              {"type": "function", "function": {"name": "view", "arguments": {"path": "é.py"}}},
              {"type": "function", "function": {"name": "submit", "arguments": "not json"}}]},
            {"role": "tool", "content": "ok"},
            {"role": "assistant", "function_call": {"name": "finish", "arguments": "{}"}}]}"#;
        assert_eq!(
            turns(line),
            [
                // Keys keep their order (Z before A), spaced as Python's json.dumps spaces them.
                Some(
                    "<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"cmd\": \"ls -la\", \
                     \"timeout\": 10, \"env\": {\"Z\": 1, \"A\": [1, 2]}}}\n</tool_call>"
                        .to_string()
                ),
                Some(
                    "Two calls.\n<tool_call>\n{\"name\": \"view\", \"arguments\": {\"path\": \
                     \"é.py\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"submit\", \
                     \"arguments\": \"not json\"}\n</tool_call>"
                        .to_string()
                ),
                Some("<tool_call>\n{\"name\": \"finish\", \"arguments\": {}}\n</tool_call>".into()),
            ]
        );
    }

    #[test]
    fn bad_tool_calls_are_errors_naming_the_line() {
        for bad in [
            r#"{"role": "assistant", "tool_calls": {"name": "x"}}"#,
            r#"{"role": "assistant", "tool_calls": [{"type": "function"}]}"#,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("d.jsonl");
            let line = format!(r#"{{"messages": [{{"role": "user", "content": "q"}}, {bad}]}}"#);
            std::fs::write(&path, format!("\n{line}\n")).unwrap();
            let err = read(&path, 10, false).unwrap_err().to_string();
            assert!(err.contains("d.jsonl:2: "), "{err}");
            assert!(
                err.contains("tool call") && !err.contains("column"),
                "{err}"
            );
        }
    }
}
