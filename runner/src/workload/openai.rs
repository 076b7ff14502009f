//! OpenAI `messages` JSONL: one conversation per line, `{"messages": [...], "id"?: ...}`.
//!
//! Messages before the first assistant message form the prelude; every assistant message is a
//! generation turn (its content is the recorded answer); the user and tool messages after it
//! are replayed as the observation. A conversation ending in user or tool messages gets a final
//! turn with no recorded answer. Tool messages are sent as role `tool` to the OpenAI API and
//! wrapped in `<tool_response>` inside a user turn by the ChatML template.

use super::{Message, Role, Trajectory, Turn, WorkloadError};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
struct Line {
    messages: Vec<Msg>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Msg {
    role: String,
    #[serde(default)]
    content: Option<serde_json::Value>,
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
        other => Err(format!("unknown role {other:?}")),
    }
}

pub fn read(path: &Path, want: usize, skip: bool) -> Result<(Vec<Trajectory>, u64), WorkloadError> {
    super::read_jsonl(path, want, skip, |text, lineno| {
        let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let msgs = line
            .messages
            .into_iter()
            .map(|m| Ok(Message::new(role(&m.role)?, content_text(m.content)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let id = match line.id {
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => format!("line-{lineno}"),
        };
        conversation(id, msgs)
    })
}
