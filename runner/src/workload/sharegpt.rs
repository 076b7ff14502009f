//! ShareGPT: a JSON array of `{"id", "conversations": [{"from", "value"}, ...]}` (or the same
//! objects one per line). The array is read element by element with a streaming visitor and
//! reading stops once the plan has its trajectories, so a large file is never loaded whole.
//! `human` turns are replayed, `gpt` turns are generated (their text is the recorded answer).
//! LLaMA-Factory's variant reads too: its `system` beside the conversation opens it, a
//! `function_call` turn is the assistant's (a `<tool_call>`, as Qwen's template writes one)
//! and an `observation` the tool's answer; its `tools` list is not read.

use super::{Message, Role, Trajectory, WorkloadError};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::cell::Cell;
use std::io::{BufRead, Read};
use std::path::Path;
use std::rc::Rc;

#[derive(Debug, Deserialize)]
#[serde(
    expecting = "a ShareGPT conversation, an object with \"conversations\": [{\"from\", \"value\"}, …]"
)]
struct Entry {
    #[serde(default)]
    id: Option<serde_json::Value>,
    /// LLaMA-Factory's ShareGPT: the system prompt, beside the conversation.
    #[serde(default)]
    system: Option<String>,
    conversations: Vec<Turn>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a message, an object with \"from\" and \"value\"")]
struct Turn {
    from: String,
    value: String,
}

fn parse_entry(v: serde_json::Value, n: usize) -> Result<Option<Trajectory>, String> {
    let e: Entry = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let system = e
        .system
        .filter(|s| !s.is_empty())
        .map(|s| Message::new(Role::System, s));
    let msgs = system
        .into_iter()
        .map(Ok)
        .chain(e.conversations.into_iter().map(|t| match t.from.as_str() {
            // LLaMA-Factory's tool call (its value the call's JSON): the assistant's turn,
            // written as Qwen's template writes a call, as the OpenAI format's calls are.
            "function_call" => Ok(Message::new(
                Role::Assistant,
                format!("<tool_call>\n{}\n</tool_call>", t.value.trim()),
            )),
            from => Ok(Message::new(super::openai::role(from)?, t.value)),
        }))
        .collect::<Result<Vec<_>, String>>()?;
    let id = match e.id {
        Some(serde_json::Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => format!("entry-{n}"),
    };
    super::openai::conversation(id, msgs)
}

const ENOUGH: &str = "turnbench: enough trajectories";

struct Take<'a> {
    path: &'a Path,
    want: usize,
    skip: bool,
    out: &'a mut Vec<Trajectory>,
    skipped: &'a mut u64,
    /// Newlines the parser has read so far (plus those before the array).
    newlines: Rc<Cell<u64>>,
    /// The line a rejected element starts on.
    bad_line: &'a mut Option<u64>,
}

/// A reader that counts the newlines read through it. serde_json reads a byte at a time and
/// peeks one ahead, so when it starts on an array element, the count is the lines before the
/// element's first byte.
struct Counting<R> {
    inner: R,
    newlines: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        self.newlines.set(self.newlines.get() + lines);
        Ok(n)
    }
}

/// One array element, noting the line it starts on.
struct Element<'a> {
    newlines: &'a Cell<u64>,
    start: &'a mut u64,
}

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = serde_json::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<serde_json::Value, D::Error> {
        *self.start = self.newlines.get() + 1;
        serde_json::Value::deserialize(d)
    }
}

impl<'de> DeserializeSeed<'de> for Take<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Take<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of ShareGPT conversations")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0usize;
        while self.out.len() < self.want {
            let mut start = 0;
            let element = Element {
                newlines: &self.newlines,
                start: &mut start,
            };
            let Some(v) = seq.next_element_seed(element)? else {
                return Ok(());
            };
            n += 1;
            match parse_entry(v, n) {
                Ok(Some(t)) => self.out.push(t),
                Ok(None) => {}
                Err(m) if self.skip => {
                    tracing::warn!(
                        "{}:{start}: ShareGPT element {n} skipped: {m}",
                        self.path.display()
                    );
                    *self.skipped += 1;
                }
                Err(m) => {
                    *self.bad_line = Some(start);
                    return Err(serde::de::Error::custom(format!("element {n}: {m}")));
                }
            }
        }
        Err(serde::de::Error::custom(ENOUGH))
    }
}

pub fn read(path: &Path, want: usize, skip: bool) -> Result<(Vec<Trajectory>, u64), WorkloadError> {
    let mut reader = super::open(path)?;
    // (A byte-order mark may open the file.)
    if reader
        .fill_buf()
        .map_err(|e| super::io_err(path, e))?
        .starts_with(b"\xef\xbb\xbf")
    {
        reader.consume(3);
    }
    let mut lines_before = 0;
    let starts_with_bracket = loop {
        let buf = reader.fill_buf().map_err(|e| super::io_err(path, e))?;
        let (ws, first) = match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => (i, Some(buf[i])),
            None => (buf.len(), None),
        };
        lines_before += buf[..ws].iter().filter(|&&b| b == b'\n').count() as u64;
        reader.consume(ws);
        match first {
            Some(c) => break c == b'[',
            None if ws == 0 => break false,
            None => {}
        }
    };
    if !starts_with_bracket {
        return super::read_jsonl(path, want, skip, |text, lineno| {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                // A JSON document over several lines (an object, pretty-printed) is neither
                // of the two layouts.
                if e.is_eof() {
                    format!(
                        "{e}: a ShareGPT file is a JSON array of conversations (`[…]`), or one \
                         conversation per line (JSONL)"
                    )
                } else {
                    e.to_string()
                }
            })?;
            parse_entry(v, lineno)
        });
    }
    let mut out = Vec::new();
    let mut skipped = 0;
    let newlines = Rc::new(Cell::new(lines_before));
    let mut bad_line = None;
    let mut de = serde_json::Deserializer::from_reader(Counting {
        inner: reader,
        newlines: newlines.clone(),
    });
    let take = Take {
        path,
        want,
        skip,
        out: &mut out,
        skipped: &mut skipped,
        newlines,
        bad_line: &mut bad_line,
    };
    match take.deserialize(&mut de) {
        // Read to its end, the array is the whole file: more after it (a second array from
        // shards joined together) would otherwise be dropped unread.
        Ok(()) => de.end().map_err(|e| WorkloadError::Line {
            path: path.to_path_buf(),
            line: (e.line() as u64 + lines_before) as usize,
            message: "more after the array of conversations: a ShareGPT file is one JSON \
                      array (`[…]`), or one conversation per line (JSONL)"
                .into(),
        })?,
        Err(e) if e.to_string().starts_with(ENOUGH) => {}
        Err(e) => {
            // A rejected element is named by the line it starts on; a syntax error by its own.
            let message = e.to_string();
            let message = match (bad_line, message.rfind(" at line ")) {
                (Some(_), Some(i)) => format!(
                    "{} (--skip-bad-lines skips such elements and counts them)",
                    &message[..i]
                ),
                _ => message,
            };
            return Err(WorkloadError::Line {
                path: path.to_path_buf(),
                line: bad_line.unwrap_or(e.line() as u64 + lines_before) as usize,
                message,
            });
        }
    }
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(text: &str, skip: bool) -> Result<(Vec<Trajectory>, u64), WorkloadError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sg.json");
        std::fs::write(&path, text).unwrap();
        read(&path, 10, skip)
    }

    #[test]
    fn a_bad_element_is_named_by_the_line_it_starts_on() {
        let good = r#"{"id": "a", "conversations": [{"from": "human", "value": "hi"},
  {"from": "gpt", "value": "hello"}]}"#;
        // Element 2 starts on line 6 and ends on line 10; its bad role is on line 8.
        let text = format!(
            "\n\n[\n  {good},\n  {{\"id\": \"b\", \"conversations\": [\n    {{\"from\": \"human\", \"value\": \"q\"}},\n    {{\"from\": \"robot\", \"value\": \"x\"}}\n  ]\n}}\n]\n"
        );
        match read_str(&text, false) {
            Err(WorkloadError::Line { line, message, .. }) => {
                assert_eq!(line, 6, "{message}");
                assert!(
                    message.contains("element 2") && message.contains("robot"),
                    "{message}"
                );
                assert!(!message.contains("column"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let (trajs, skipped) = read_str(&text, true).unwrap();
        assert_eq!((trajs.len(), skipped), (1, 1));
        // A syntax error is named by its own line.
        let broken = format!("[\n{good},\n{{\"id\": \"c\",\n \"conversations\": [}}\n]");
        match read_str(&broken, false) {
            Err(WorkloadError::Line { line, .. }) => assert_eq!(line, 5),
            other => panic!("{other:?}"),
        }
        // After blank lines too.
        match read_str(&format!("\n\n{broken}"), false) {
            Err(WorkloadError::Line { line, .. }) => assert_eq!(line, 7),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn llama_factorys_sharegpt_reads_with_its_system_and_tool_calls() {
        let text = r#"[{"system": "You are an agent.", "tools": "[]", "conversations": [
            {"from": "human", "value": "list files"},
            {"from": "function_call", "value": "{\"name\": \"ls\", \"arguments\": {}}"},
            {"from": "observation", "value": "a.py"},
            {"from": "gpt", "value": "There is a.py."}]}]"#;
        let (trajs, _) = read_str(text, false).unwrap();
        let t = &trajs[0];
        assert_eq!(t.prelude[0].role, Role::System);
        assert_eq!(t.prelude[0].content, "You are an agent.");
        assert_eq!(
            t.turns
                .iter()
                .map(|u| u.recorded.clone())
                .collect::<Vec<_>>(),
            [
                Some("<tool_call>\n{\"name\": \"ls\", \"arguments\": {}}\n</tool_call>".into()),
                Some("There is a.py.".into())
            ]
        );
        // (Other roles are still named.)
        let e = read_str(
            r#"[{"conversations": [{"from": "narrator", "value": "x"}]}]"#,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("narrator"), "{e}");
    }

    #[test]
    fn anything_after_the_array_is_an_error_not_dropped() {
        let one = r#"{"id": "a", "conversations": [{"from": "human", "value": "hi"}]}"#;
        for (text, line) in [
            (format!("[{one}]\n garbage"), 2),
            (format!("[{one}] ["), 1),
            (format!("\n[{one}]\n[{one}]\n"), 3),
        ] {
            match read_str(&text, false) {
                Err(WorkloadError::Line {
                    line: l, message, ..
                }) => {
                    assert_eq!(l, line, "{text:?}: {message}");
                    assert!(message.contains("more after the array"), "{message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        // Whitespace after it is nothing.
        assert_eq!(
            read_str(&format!("[{one}]\n\n  \n"), false)
                .unwrap()
                .0
                .len(),
            1
        );
    }
}
