//! The chat template the server applies to OpenAI `messages`: ChatML, as Qwen models use it
//! (with Qwen2.5's default system prompt when the conversation has none).

use serde_json::Value;

/// Qwen2.5's default system prompt, added when the first message is not a system message.
pub use crate::conversation::QWEN_DEFAULT_SYSTEM;

/// Render `messages` (OpenAI format) as ChatML and open the assistant's turn.
/// `default_system`: the system prompt to add when the conversation has none.
pub fn chatml(messages: &[Value], default_system: Option<&str>) -> Result<String, String> {
    let mut out = String::new();
    let first_role = messages
        .first()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str);
    if let (Some(sys), false) = (default_system, first_role == Some("system")) {
        push_turn(&mut out, "system", sys);
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("messages[{i}].role: field required"))?;
        let content = content_text(m.get("content").unwrap_or(&Value::Null))
            .map_err(|e| format!("messages[{i}].content: {e}"))?;
        match role {
            "system" | "user" | "assistant" | "developer" => push_turn(&mut out, role, &content),
            "tool" => push_turn(
                &mut out,
                "user",
                &format!("<tool_response>\n{content}\n</tool_response>"),
            ),
            other => return Err(format!("messages[{i}].role: unknown role {other:?}")),
        }
    }
    out.push_str("<|im_start|>assistant\n");
    Ok(out)
}

fn push_turn(out: &mut String, role: &str, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

/// A message's content: a string, null, or a list of `{"type":"text","text":…}` parts.
fn content_text(v: &Value) -> Result<String, String> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(
                |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                    _ => Err("only text content parts are supported".to_string()),
                },
            )
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat()),
        _ => Err("expected a string or a list of content parts".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chatml_like_qwen() {
        let m = [
            json!({"role":"system","content":"S"}),
            json!({"role":"user","content":[{"type":"text","text":"Hi"}]}),
            json!({"role":"assistant","content":"Yo"}),
            json!({"role":"tool","content":"ok"}),
        ];
        assert_eq!(
            chatml(&m, Some(QWEN_DEFAULT_SYSTEM)).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nYo<|im_end|>\n\
             <|im_start|>user\n<tool_response>\nok\n</tool_response><|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let m = [json!({"role":"user","content":"Hi"})];
        assert!(chatml(&m, Some(QWEN_DEFAULT_SYSTEM))
            .unwrap()
            .starts_with("<|im_start|>system\nYou are Qwen"));
        assert!(chatml(&[json!({"content":"x"})], None).is_err());
    }
}
