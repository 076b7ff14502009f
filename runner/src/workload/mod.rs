//! Trajectory sources: what a sweep replays.
//!
//! A [`Trajectory`] is a prelude (system prompt and first user message), then one [`Turn`] per
//! generation request: the assistant message the dataset recorded for it (if any), the messages
//! that follow it (the observation, as the next user or tool message) and the tool time the
//! dataset measured before the next turn.
//!
//! Sources (each streams its file: only the trajectories the plan asks for are parsed, so a
//! 660 MB dataset costs the lines it uses, plus one streaming pass to hash it):
//! - [`synthetic`]: seeded SWE-agent-like trajectories (the default).
//! - [`r2e`]: the seed's r2e-gym JSONL plus its YAML prompt file.
//! - [`openai`]: OpenAI `messages` JSONL.
//! - [`sharegpt`]: ShareGPT JSON (an array) or JSONL.

pub mod openai;
pub mod r2e;
pub mod sharegpt;
pub mod synthetic;

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One generation request of a trajectory, and what the dataset says happened after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The assistant message the dataset recorded for this turn, if it has one.
    pub recorded: Option<String>,
    /// Messages appended after the assistant's answer (the observation); empty on the last turn.
    pub after: Vec<Message>,
    /// Tool (environment) time the dataset measured after this turn, seconds.
    pub think_time: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    /// The dataset's own id.
    pub id: String,
    /// Messages before the first generation (system prompt, first user message).
    pub prelude: Vec<Message>,
    pub turns: Vec<Turn>,
}

impl Trajectory {
    /// Keep at most `max` turns (the plan's `turns`).
    pub fn truncate(&mut self, max: usize) {
        self.turns.truncate(max);
        if let Some(last) = self.turns.last_mut() {
            last.after.clear();
        }
    }
}

/// The dataset formats the runner reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Synthetic,
    // (The names the `--dataset-format` flag also takes, so a plan file may use them too.)
    #[serde(alias = "r2e")]
    R2eGym,
    #[serde(alias = "openai-messages")]
    Openai,
    Sharegpt,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Synthetic => "synthetic",
            Format::R2eGym => "r2e-gym",
            Format::Openai => "openai-messages",
            Format::Sharegpt => "sharegpt",
        }
    }
}

/// Where trajectories come from and how many to take.
#[derive(Debug, Clone)]
pub struct Source {
    pub format: Format,
    /// The dataset file (not used by the synthetic source).
    pub path: Option<PathBuf>,
    /// r2e-gym's YAML prompt file.
    pub prompts: Option<PathBuf>,
    pub trajectories: usize,
    pub max_turns: usize,
    pub seed: u64,
    pub skip_bad_lines: bool,
}

/// The loaded trajectories and what the manifest says about them.
#[derive(Debug, Clone)]
pub struct Workload {
    pub format: Format,
    pub source: String,
    pub content_hash: String,
    pub trajectories: Trajectories,
    pub skipped_lines: u64,
}

impl Workload {
    pub fn total_turns(&self) -> u64 {
        self.trajectories
            .turn_counts()
            .iter()
            .map(|&n| n as u64)
            .sum()
    }
}

/// A workload's trajectories: a dataset's, read into memory (only the ones the plan asks
/// for), or synthetic ones, made when they are needed (a trajectory is a function of the seed
/// and its index, so a sweep of a million synthetic turns holds only those in progress).
#[derive(Debug, Clone)]
pub enum Trajectories {
    Loaded(Vec<Trajectory>),
    Synthetic(std::sync::Arc<synthetic::Generator>),
}

impl Trajectories {
    pub fn len(&self) -> usize {
        match self {
            Trajectories::Loaded(v) => v.len(),
            Trajectories::Synthetic(g) => g.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Trajectory `i` (`i < len()`).
    pub fn get(&self, i: usize) -> std::borrow::Cow<'_, Trajectory> {
        match self {
            Trajectories::Loaded(v) => std::borrow::Cow::Borrowed(&v[i]),
            Trajectories::Synthetic(g) => std::borrow::Cow::Owned(g.trajectory(i)),
        }
    }

    /// The id of trajectory `i`, without making it.
    pub fn id(&self, i: usize) -> String {
        match self {
            Trajectories::Loaded(v) => v[i].id.clone(),
            Trajectories::Synthetic(g) => g.id(i),
        }
    }

    /// The number of turns of each trajectory, without making them.
    pub fn turn_counts(&self) -> Vec<usize> {
        match self {
            Trajectories::Loaded(v) => v.iter().map(|t| t.turns.len()).collect(),
            Trajectories::Synthetic(g) => vec![g.turns(); g.len()],
        }
    }

    /// Every trajectory in order (synthetic ones made one at a time).
    pub fn iter(&self) -> impl Iterator<Item = std::borrow::Cow<'_, Trajectory>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// A dataset that cannot be read. Every message names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

/// Read the trajectories the source describes.
pub fn load(src: &Source) -> Result<Workload, WorkloadError> {
    let (format, source, content_hash, mut trajectories, skipped_lines) = match src.format {
        Format::Synthetic => {
            return Ok(synthetic::workload(synthetic::Params::default_with(
                src.trajectories,
                src.max_turns,
                src.seed,
            )))
        }
        _ => {
            let path = src
                .path
                .as_deref()
                .ok_or_else(|| WorkloadError::Other("dataset: no file given".into()))?;
            let (trajectories, skipped) = match src.format {
                Format::R2eGym => {
                    let prompts = src.prompts.as_deref().ok_or_else(|| {
                        WorkloadError::Other(
                            "prompts: the r2e-gym format needs a YAML prompt file (--prompts)"
                                .into(),
                        )
                    })?;
                    r2e::read(path, prompts, src.trajectories, src.skip_bad_lines)?
                }
                Format::Openai => openai::read(path, src.trajectories, src.skip_bad_lines)?,
                Format::Sharegpt => sharegpt::read(path, src.trajectories, src.skip_bad_lines)?,
                Format::Synthetic => unreachable!("handled above"),
            };
            let mut hash = hash_file(path)?;
            if let Some(p) = &src.prompts {
                hash = format!("{hash}+{}", hash_file(p)?);
            }
            (
                src.format,
                path.display().to_string(),
                hash,
                trajectories,
                skipped,
            )
        }
    };
    for t in &mut trajectories {
        t.truncate(src.max_turns);
    }
    trajectories.retain(|t| !t.turns.is_empty());
    Ok(Workload {
        format,
        source,
        content_hash,
        trajectories: Trajectories::Loaded(trajectories),
        skipped_lines,
    })
}

/// Guess the format from a file's extension and first bytes.
pub fn detect_format(path: &Path) -> Result<Format, WorkloadError> {
    let mut f = open(path)?;
    let mut head = vec![0u8; 64 * 1024];
    let n = read_some(&mut f, &mut head).map_err(|e| io_err(path, e))?;
    let head = String::from_utf8_lossy(&head[..n]);
    let trimmed = head.trim_start();
    if trimmed.starts_with('[') || head.contains("\"conversations\"") {
        return Ok(Format::Sharegpt);
    }
    if head.contains("\"trajectory_steps\"") || head.contains("\"problem_statement\"") {
        return Ok(Format::R2eGym);
    }
    if head.contains("\"messages\"") {
        return Ok(Format::Openai);
    }
    if trimmed.trim_start_matches('\u{feff}').trim().is_empty() {
        return Err(WorkloadError::File {
            path: path.to_path_buf(),
            message: "empty: no trajectories in it".into(),
        });
    }
    Err(WorkloadError::File {
        path: path.to_path_buf(),
        message: "cannot tell the dataset format (expected r2e-gym JSONL, OpenAI messages JSONL \
                  or ShareGPT); set dataset_format"
            .into(),
    })
}

fn read_some(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> WorkloadError {
    WorkloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn open(path: &Path) -> Result<BufReader<std::fs::File>, WorkloadError> {
    std::fs::File::open(path)
        .map(|f| BufReader::with_capacity(1 << 20, f))
        .map_err(|e| io_err(path, e))
}

/// Hex SHA-256 of a file, read in chunks.
pub fn hash_file(path: &Path) -> Result<String, WorkloadError> {
    let mut f = open(path)?;
    let mut h = Sha256::new();
    loop {
        let buf = f.fill_buf().map_err(|e| io_err(path, e))?;
        if buf.is_empty() {
            break;
        }
        h.update(buf);
        let n = buf.len();
        f.consume(n);
    }
    Ok(hex(&h.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Read JSONL lines one at a time, parse each with `parse`, keep `want` good ones.
/// A bad line is an error naming file and line, or (with `skip`) counted.
pub(crate) fn read_jsonl<T>(
    path: &Path,
    want: usize,
    skip: bool,
    mut parse: impl FnMut(&str, usize) -> Result<Option<T>, String>,
) -> Result<(Vec<T>, u64), WorkloadError> {
    let mut reader = open(path)?;
    let mut out = Vec::new();
    let mut skipped = 0u64;
    let mut line = Vec::new();
    let mut lineno = 0usize;
    while out.len() < want {
        line.clear();
        lineno += 1;
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| WorkloadError::Line {
                path: path.to_path_buf(),
                line: lineno,
                message: e.to_string(),
            })?;
        if n == 0 {
            break;
        }
        // A line that is not UTF-8 is a bad line like any other (skipped with skip_bad_lines).
        let parsed = match std::str::from_utf8(&line) {
            Ok(text) => {
                // (A byte-order mark may open the file.)
                let text = text.trim_start_matches('\u{feff}').trim();
                if text.is_empty() {
                    continue;
                }
                parse(text, lineno)
            }
            Err(e) => Err(format!("not UTF-8 text ({e})")),
        };
        match parsed {
            Ok(Some(t)) => out.push(t),
            Ok(None) => {}
            Err(message) if skip => {
                tracing::warn!("{}:{lineno}: skipped: {message}", path.display());
                skipped += 1;
            }
            Err(message) => {
                return Err(WorkloadError::Line {
                    path: path.to_path_buf(),
                    line: lineno,
                    message: format!(
                        "{message} (--skip-bad-lines skips such lines and counts them)"
                    ),
                })
            }
        }
    }
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8], skip: bool) -> Result<(Vec<String>, u64), WorkloadError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, bytes).unwrap();
        read_jsonl(&path, usize::MAX, skip, |text, _| {
            serde_json::from_str::<String>(text)
                .map(Some)
                .map_err(|e| e.to_string())
        })
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_bad_line_and_a_bom_is_ignored() {
        let data = b"\xef\xbb\xbf\"a\"\n\xff\xfe junk\n\"b\"\n";
        let (got, skipped) = lines(data, true).unwrap();
        assert_eq!(got, ["a", "b"]);
        assert_eq!(skipped, 1);
        let err = lines(data, false).unwrap_err().to_string();
        assert!(err.contains("d.jsonl:2") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn a_line_that_is_no_json_is_a_bad_line_whatever_it_begins_with() {
        // (JSON Lines has no comments: a `#` line is a line that does not parse.)
        let data = b"\"a\"\n# a note\n\n  \n\"b\"\n";
        let err = lines(data, false).unwrap_err().to_string();
        assert!(err.contains("d.jsonl:2"), "{err}");
        let (got, skipped) = lines(data, true).unwrap();
        assert_eq!(got, ["a", "b"]);
        assert_eq!(skipped, 1);
    }
}
