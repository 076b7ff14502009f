//! ShareGPT: a JSON array of `{"id", "conversations": [{"from", "value"}, ...]}` (or the same
//! objects one per line). The array is read element by element with a streaming visitor and
//! reading stops once the plan has its trajectories, so a large file is never loaded whole.
//! `human` turns are replayed, `gpt` turns are generated (their text is the recorded answer).

use super::{Message, Trajectory, WorkloadError};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::io::BufRead;
use std::path::Path;

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    id: Option<serde_json::Value>,
    conversations: Vec<Turn>,
}

#[derive(Debug, Deserialize)]
struct Turn {
    from: String,
    value: String,
}

fn parse_entry(v: serde_json::Value, n: usize) -> Result<Option<Trajectory>, String> {
    let e: Entry = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let msgs = e
        .conversations
        .into_iter()
        .map(|t| Ok(Message::new(super::openai::role(&t.from)?, t.value)))
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
            let Some(v) = seq.next_element::<serde_json::Value>()? else {
                return Ok(());
            };
            n += 1;
            match parse_entry(v, n) {
                Ok(Some(t)) => self.out.push(t),
                Ok(None) => {}
                Err(m) if self.skip => {
                    tracing::warn!("{}: ShareGPT element {n} skipped: {m}", self.path.display());
                    *self.skipped += 1;
                }
                Err(m) => return Err(serde::de::Error::custom(format!("element {n}: {m}"))),
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
    let starts_with_bracket = loop {
        let buf = reader.fill_buf().map_err(|e| super::io_err(path, e))?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let c = buf[i];
                reader.consume(i);
                break c == b'[';
            }
            None if buf.is_empty() => break false,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    if !starts_with_bracket {
        return super::read_jsonl(path, want, skip, |text, lineno| {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            parse_entry(v, lineno)
        });
    }
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let take = Take {
        path,
        want,
        skip,
        out: &mut out,
        skipped: &mut skipped,
    };
    match take.deserialize(&mut de) {
        Ok(()) => {}
        Err(e) if e.to_string().starts_with(ENOUGH) => {}
        Err(e) => {
            return Err(WorkloadError::Line {
                path: path.to_path_buf(),
                line: e.line(),
                message: e.to_string(),
            })
        }
    }
    Ok((out, skipped))
}
