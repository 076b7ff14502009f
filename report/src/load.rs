//! Loading results: run directories, `runner pack` bundles (`.tar.gz`, read in place) and the
//! seed's legacy files. A bad input becomes a [`Skipped`] entry with the reason; it does not
//! stop the others.

use crate::legacy::{self, LegacyRun};
use flate2::read::GzDecoder;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use turnbench_schema::turn::latest_attempts;
use turnbench_schema::{
    files, jsonl, Manifest, Summary, TelemetrySample, TurnRecord, SCHEMA_VERSION,
};

/// Why an input could not be read. Messages name the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// serde_json's message for one JSONL line says "at line 1 column N"; the line is named
/// separately, so keep only the column.
pub fn line_message(message: &str) -> String {
    message.replace(" at line 1 column ", ", column ")
}

impl LoadError {
    fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    fn invalid(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        LoadError::Invalid {
            path: path.as_ref().display().to_string(),
            message: message.into(),
        }
    }
}

/// A run measured by `runner sweep`.
#[derive(Debug)]
pub struct MeasuredRun {
    pub manifest: Manifest,
    /// Latest attempts only (superseded partial trajectories dropped).
    pub records: Vec<TurnRecord>,
    pub telemetry: Vec<TelemetrySample>,
    /// `turns.jsonl` ended in a torn line (the run was interrupted mid-write).
    pub truncated_tail: bool,
    /// The run's own `summary.json`, if present and readable; the pages recompute every
    /// number from the records and only compare against it.
    pub recorded_summary: Option<Summary>,
    /// Why `summary.json` could not be read, if it could not.
    pub summary_error: Option<String>,
}

#[derive(Debug)]
pub enum RunData {
    Measured(Box<MeasuredRun>),
    Legacy(LegacyRun),
}

/// One loaded run and where it came from.
#[derive(Debug)]
pub struct Run {
    /// Where it was read from, as given (for the index page).
    pub source: String,
    pub data: RunData,
}

impl Run {
    pub fn id(&self) -> &str {
        match &self.data {
            RunData::Measured(m) => &m.manifest.run_id,
            RunData::Legacy(l) => &l.id,
        }
    }
    pub fn simulated(&self) -> bool {
        match &self.data {
            RunData::Measured(m) => m.manifest.simulated,
            RunData::Legacy(_) => false,
        }
    }
}

/// An input that was not used, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    pub source: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Loaded {
    pub runs: Vec<Run>,
    pub skipped: Vec<Skipped>,
}

/// One thing to load, as classified from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    RunDir(PathBuf),
    Bundle(PathBuf),
    /// The seed's per-turn metrics and/or summary files of one GPU.
    Legacy {
        metrics: Option<PathBuf>,
        summary: Option<PathBuf>,
    },
}

/// Turns command-line paths into inputs. A directory without a manifest is searched one level
/// deep (so `results/` means every run in it). Unrecognised paths are reported as skipped.
pub fn classify(paths: &[PathBuf]) -> (Vec<Input>, Vec<Skipped>) {
    let mut inputs = Vec::new();
    let mut skipped = Vec::new();
    let mut legacy: BTreeMap<(PathBuf, String), (Option<PathBuf>, Option<PathBuf>)> =
        BTreeMap::new();
    for path in paths {
        if path.is_dir() && !path.join(files::MANIFEST).is_file() {
            let mut children: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => {
                    skipped.push(Skipped {
                        source: path.display().to_string(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            children.sort();
            for child in children {
                if child.is_dir() {
                    if child.join(files::MANIFEST).is_file() {
                        inputs.push(Input::RunDir(child));
                    }
                } else {
                    classify_file(&child, &mut inputs, &mut legacy, None);
                }
            }
        } else if path.is_dir() {
            inputs.push(Input::RunDir(path.clone()));
        } else if path.is_file() {
            classify_file(path, &mut inputs, &mut legacy, Some(&mut skipped));
        } else {
            skipped.push(Skipped {
                source: path.display().to_string(),
                reason: "no such file or directory".into(),
            });
        }
    }
    for ((_, _), (metrics, summary)) in legacy {
        inputs.push(Input::Legacy { metrics, summary });
    }
    (inputs, skipped)
}

type LegacyGroups = BTreeMap<(PathBuf, String), (Option<PathBuf>, Option<PathBuf>)>;

fn classify_file(
    path: &Path,
    inputs: &mut Vec<Input>,
    legacy: &mut LegacyGroups,
    skipped: Option<&mut Vec<Skipped>>,
) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        inputs.push(Input::Bundle(path.to_path_buf()));
    } else if let Some(suffix) = legacy::metrics_suffix(&name) {
        legacy.entry((parent, suffix)).or_default().0 = Some(path.to_path_buf());
    } else if let Some(suffix) = legacy::summary_suffix(&name) {
        legacy.entry((parent, suffix)).or_default().1 = Some(path.to_path_buf());
    } else if let Some(skipped) = skipped {
        skipped.push(Skipped {
            source: path.display().to_string(),
            reason: "not a run directory, .tar.gz bundle, per_turn_metrics_*.jsonl or per_turn_summary_*.json".into(),
        });
    }
}

/// Loads every input; failures become [`Skipped`] entries.
pub fn load_all(inputs: &[Input]) -> Loaded {
    let mut loaded = Loaded::default();
    for input in inputs {
        let source = match input {
            Input::RunDir(p) | Input::Bundle(p) => p.display().to_string(),
            Input::Legacy { metrics, summary } => metrics
                .iter()
                .chain(summary.iter())
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" + "),
        };
        let result = match input {
            Input::RunDir(dir) => load_dir(dir).map(|r| vec![RunData::Measured(Box::new(r))]),
            Input::Bundle(path) => load_bundle(path).map(|runs| {
                runs.into_iter()
                    .map(|r| RunData::Measured(Box::new(r)))
                    .collect()
            }),
            Input::Legacy { metrics, summary } => {
                legacy::load(metrics.as_deref(), summary.as_deref())
                    .map(|r| vec![RunData::Legacy(r)])
            }
        };
        match result {
            Ok(runs) => loaded.runs.extend(runs.into_iter().map(|data| Run {
                source: source.clone(),
                data,
            })),
            Err(e) => {
                // (The error names the input too, when the input is the file at fault.)
                let reason = e.to_string();
                let reason = match reason.strip_prefix(&format!("{source}: ")) {
                    Some(rest) => rest.to_string(),
                    None => reason,
                };
                loaded.skipped.push(Skipped { source, reason })
            }
        }
    }
    dedupe_ids(&mut loaded);
    loaded
}

/// Run ids are unique on the site. The same run given twice (a directory and its bundle) is
/// used once, and so is a run given in two states (a bundle packed part-way, and the run
/// finished later): in its latest. Different runs that share an id (shards of several hosts
/// run with one `--run-id`) are told apart as `ID (2)`, `ID (3)`…
fn dedupe_ids(loaded: &mut Loaded) {
    let mut kept: Vec<Run> = Vec::new();
    for mut run in std::mem::take(&mut loaded.runs) {
        if let Some(i) = kept
            .iter()
            .position(|k| k.id() == run.id() && (earlier_state(k, &run) || earlier_state(&run, k)))
        {
            let (older, newer) = if earlier_state(&kept[i], &run) {
                (std::mem::replace(&mut kept[i], run), &kept[i])
            } else {
                (run, &kept[i])
            };
            let count = |r: &Run| match &r.data {
                RunData::Measured(m) => m.records.len(),
                RunData::Legacy(l) => l.turns.len(),
            };
            loaded.skipped.push(Skipped {
                source: older.source.clone(),
                reason: format!(
                    "an earlier state of run {} ({} turn records; {} has {}), used in its latest",
                    older.id(),
                    count(&older),
                    newer.source,
                    count(newer)
                ),
            });
            continue;
        }
        if let Some(first) = kept
            .iter()
            .find(|k| k.id() == run.id() && same_run(k, &run))
        {
            loaded.skipped.push(Skipped {
                source: run.source.clone(),
                reason: format!(
                    "the same run as {} (run id {}), used once",
                    first.source,
                    run.id()
                ),
            });
            continue;
        }
        let base = run.id().to_string();
        let mut n = 1;
        while kept.iter().any(|k| k.id() == run.id()) {
            n += 1;
            let id = format!("{base} ({n})");
            match &mut run.data {
                RunData::Measured(m) => m.manifest.run_id = id,
                RunData::Legacy(l) => l.id = id,
            }
        }
        kept.push(run);
    }
    loaded.runs = kept;
}

/// `a` is an earlier state of run `b`: the same run (id and start), `b` holding every record
/// `a` does and more (the results files only grow; a resume appends).
fn earlier_state(a: &Run, b: &Run) -> bool {
    match (&a.data, &b.data) {
        (RunData::Measured(x), RunData::Measured(y)) => {
            x.manifest.run_id == y.manifest.run_id
                && x.manifest.created == y.manifest.created
                && x.records.len() < y.records.len()
                && y.records.starts_with(&x.records)
        }
        _ => false,
    }
}

fn same_run(a: &Run, b: &Run) -> bool {
    match (&a.data, &b.data) {
        (RunData::Measured(x), RunData::Measured(y)) => {
            x.manifest == y.manifest && x.records == y.records
        }
        (RunData::Legacy(x), RunData::Legacy(y)) => x.gpu == y.gpu && x.rows == y.rows,
        _ => false,
    }
}

/// Loads `manifest.json`, `turns.jsonl` and (if present) `telemetry.jsonl` of a run directory.
pub fn load_dir(dir: &Path) -> Result<MeasuredRun, LoadError> {
    let manifest_path = dir.join(files::MANIFEST);
    let text = std::fs::read(&manifest_path).map_err(|e| LoadError::io(&manifest_path, e))?;
    let manifest = parse_manifest(&text, &manifest_path)?;
    let turns_path = dir.join(files::TURNS);
    let file = File::open(&turns_path).map_err(|e| LoadError::io(&turns_path, e))?;
    let (records, truncated_tail) =
        read_turns(BufReader::with_capacity(1 << 20, file), &turns_path)?;
    let tele_path = dir.join(files::TELEMETRY);
    let telemetry = match File::open(&tele_path) {
        Ok(f) => read_telemetry(BufReader::new(f), &tele_path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(LoadError::io(&tele_path, e)),
    };
    let summary_path = dir.join(files::SUMMARY);
    let summary = match std::fs::read(&summary_path) {
        Ok(bytes) => parse_summary(&bytes, &summary_path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
        Err(e) => (None, Some(LoadError::io(&summary_path, e).to_string())),
    };
    finish(
        manifest,
        records,
        telemetry,
        truncated_tail,
        summary,
        &turns_path,
    )
}

/// A run's `summary.json` or why it could not be read (not fatal: numbers are recomputed).
fn parse_summary(bytes: &[u8], path: &Path) -> (Option<Summary>, Option<String>) {
    match serde_json::from_slice::<Summary>(bytes) {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(format!("{}:{}: {e}", path.display(), e.line()))),
    }
}

fn finish(
    manifest: Manifest,
    records: Vec<TurnRecord>,
    telemetry: Vec<TelemetrySample>,
    truncated_tail: bool,
    (recorded_summary, summary_error): (Option<Summary>, Option<String>),
    turns_path: &Path,
) -> Result<MeasuredRun, LoadError> {
    if records.is_empty() {
        return Err(LoadError::invalid(turns_path, "no turn records"));
    }
    // Only a resumed run has attempts above 0; skip the regrouping otherwise.
    let records = if records.iter().any(|r| r.attempt > 0) {
        latest_attempts(records)
    } else {
        records
    };
    Ok(MeasuredRun {
        manifest,
        records,
        telemetry,
        truncated_tail,
        recorded_summary,
        summary_error,
    })
}

fn parse_manifest(text: &[u8], path: &Path) -> Result<Manifest, LoadError> {
    let manifest: Manifest = serde_json::from_slice(text).map_err(|e| LoadError::Parse {
        path: path.display().to_string(),
        line: e.line(),
        message: e.to_string(),
    })?;
    if manifest.schema_version != SCHEMA_VERSION {
        return Err(LoadError::invalid(
            path,
            format!(
                "schema_version {} (this report reads version {SCHEMA_VERSION})",
                manifest.schema_version
            ),
        ));
    }
    Ok(manifest)
}

/// Bytes per parse job of [`read_turns`].
const CHUNK_BYTES: u64 = 4 << 20;

/// Reads turn records; a torn final line (no newline, unparsable) is tolerated and reported,
/// as [`turnbench_schema::jsonl::read`] does. Parses chunks of whole lines on a few threads
/// (the dominant cost of a build); errors name the first bad line.
pub fn read_turns(
    mut reader: impl BufRead,
    path: &Path,
) -> Result<(Vec<TurnRecord>, bool), LoadError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(workers * 2);
    let job_rx = std::sync::Mutex::new(job_rx);
    let (res_tx, res_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (rx, tx) = (&job_rx, res_tx.clone());
            scope.spawn(move || loop {
                let job = rx.lock().map(|rx| rx.recv());
                let Ok(Ok((index, bytes))) = job else {
                    break;
                };
                let _ = tx.send((index, parse_chunk(&bytes)));
            });
        }
        drop(res_tx);
        // Appends chunks in order as they arrive, so parsed records exist once, not twice.
        let collector = scope.spawn(move || {
            let mut pending = BTreeMap::new();
            let (mut next, mut records, mut torn) = (0, Vec::new(), false);
            let mut lines_before = 0;
            let mut first_error: Option<(usize, String)> = None;
            for (index, result) in res_rx {
                pending.insert(index, result);
                while let Some(result) = pending.remove(&next) {
                    next += 1;
                    match result {
                        Ok(chunk) => {
                            lines_before += chunk.lines;
                            if first_error.is_none() {
                                records.extend(chunk.records);
                                torn |= chunk.torn;
                            }
                        }
                        Err((line, message)) => {
                            first_error.get_or_insert((lines_before + line, message));
                        }
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok((records, torn)),
            }
        });
        let mut read = || -> std::io::Result<()> {
            for index in 0.. {
                let mut bytes = Vec::with_capacity(CHUNK_BYTES as usize + 4096);
                (&mut reader).take(CHUNK_BYTES).read_to_end(&mut bytes)?;
                if bytes.is_empty() {
                    break;
                }
                if !bytes.ends_with(b"\n") {
                    reader.read_until(b'\n', &mut bytes)?;
                }
                if job_tx.send((index, bytes)).is_err() {
                    break;
                }
            }
            Ok(())
        };
        let read_result = read();
        drop(job_tx);
        let parsed = collector.join().expect("the collector does not panic");
        read_result.map_err(|e| LoadError::io(path, e))?;
        parsed.map_err(|(line, message)| LoadError::Parse {
            path: path.display().to_string(),
            line,
            message,
        })
    })
}

/// What one chunk of whole lines parsed into.
struct Chunk {
    records: Vec<TurnRecord>,
    /// Lines in the chunk (so the collector can number lines across chunks).
    lines: usize,
    /// The chunk ended in an unterminated, unparsable line.
    torn: bool,
}

/// A chunk's records, or (line within the chunk from 1, message) of its first bad line.
type ChunkResult = Result<Chunk, (usize, String)>;

fn parse_chunk(bytes: &[u8]) -> ChunkResult {
    let mut records = Vec::with_capacity(bytes.len() / 400);
    let mut rest = bytes;
    let mut line = 0;
    while !rest.is_empty() {
        line += 1;
        let (text, complete, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        if !text.trim_ascii().is_empty() {
            match serde_json::from_slice::<TurnRecord>(text) {
                Ok(r) => records.push(r),
                Err(_) if !complete => {
                    return Ok(Chunk {
                        records,
                        lines: line,
                        torn: true,
                    });
                }
                Err(e) => return Err((line, line_message(&e.to_string()))),
            }
        }
        rest = next;
    }
    Ok(Chunk {
        records,
        lines: line,
        torn: false,
    })
}

/// Telemetry is a side channel: a line that does not parse (a write torn by a full disk and
/// appended to by a resume) is skipped with a warning rather than losing the run.
fn read_telemetry(reader: impl BufRead, path: &Path) -> Result<Vec<TelemetrySample>, LoadError> {
    let mut out = Vec::new();
    let mut bad: Option<(usize, String)> = None;
    let mut skipped = 0usize;
    for r in jsonl::read(reader) {
        match r {
            Ok(v) => out.push(v),
            Err(e) => {
                skipped += 1;
                bad.get_or_insert((e.line, line_message(&e.message)));
                if skipped > 100_000 {
                    break; // (a read error that repeats)
                }
            }
        }
    }
    if let Some((line, message)) = bad {
        eprintln!(
            "report: {}: skipped {skipped} unreadable telemetry line(s) (line {line}: {message})",
            path.display()
        );
    }
    Ok(out)
}

/// Checks a bundle entry's path: relative, no `..`, no root or drive prefix.
pub fn safe_entry_path(path: &Path) -> Result<(), String> {
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(format!("entry {:?} contains '..'", path)),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry {:?} is an absolute path", path))
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct BundleRun {
    manifest: Option<Manifest>,
    records: Option<(Vec<TurnRecord>, bool)>,
    telemetry: Vec<TelemetrySample>,
    summary: (Option<Summary>, Option<String>),
}

/// Reads a `runner pack` bundle in place (entries streamed, never written to disk). Every
/// directory holding a `manifest.json` is a run. Unsafe entry paths reject the whole bundle.
pub fn load_bundle(path: &Path) -> Result<Vec<MeasuredRun>, LoadError> {
    let file = File::open(path).map_err(|e| LoadError::io(path, e))?;
    let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    let mut runs: BTreeMap<PathBuf, BundleRun> = BTreeMap::new();
    let entries = archive.entries().map_err(|e| LoadError::io(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LoadError::io(path, e))?;
        let entry_path = entry
            .path()
            .map_err(|e| LoadError::io(path, e))?
            .into_owned();
        let in_bundle = |name: &Path| format!("{}!{}", path.display(), name.display());
        safe_entry_path(&entry_path)
            .map_err(|m| LoadError::invalid(path, format!("rejected bundle: {m}")))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(LoadError::invalid(
                path,
                format!(
                    "rejected bundle: entry {:?} is a link or special file",
                    entry_path
                ),
            ));
        }
        let Some(name) = entry_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            continue;
        };
        let dir = entry_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let shown = PathBuf::from(in_bundle(&entry_path));
        match name.as_str() {
            files::MANIFEST => {
                let text = read_document(entry, &shown)?;
                runs.entry(dir).or_default().manifest = Some(parse_manifest(&text, &shown)?);
            }
            files::TURNS => {
                let turns = read_turns(BufReader::with_capacity(1 << 20, entry), &shown)?;
                runs.entry(dir).or_default().records = Some(turns);
            }
            files::SUMMARY => {
                let bytes = read_document(entry, &shown)?;
                runs.entry(dir).or_default().summary = parse_summary(&bytes, &shown);
            }
            files::TELEMETRY => {
                runs.entry(dir).or_default().telemetry =
                    read_telemetry(BufReader::new(entry), &shown)?;
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (dir, run) in runs {
        let shown =
            |f: &str| PathBuf::from(format!("{}!{}", path.display(), dir.join(f).display()));
        let Some(manifest) = run.manifest else {
            continue;
        };
        let Some((records, torn)) = run.records else {
            return Err(LoadError::invalid(
                shown(files::TURNS),
                "missing from bundle",
            ));
        };
        out.push(finish(
            manifest,
            records,
            run.telemetry,
            torn,
            run.summary,
            &shown(files::TURNS),
        )?);
    }
    if out.is_empty() {
        return Err(LoadError::invalid(path, "bundle holds no manifest.json"));
    }
    Ok(out)
}

/// The most a bundle's manifest.json or summary.json may hold: a run's are kilobytes (a
/// sweep of thousands of cells, a few megabytes), and a few megabytes of gzip could
/// otherwise unpack into gigabytes held in memory whole.
pub const DOCUMENT_LIMIT: u64 = 64 << 20;

/// A bundle entry read whole, up to [`DOCUMENT_LIMIT`].
fn read_document(entry: impl Read, shown: &Path) -> Result<Vec<u8>, LoadError> {
    let mut bytes = Vec::new();
    entry
        .take(DOCUMENT_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| LoadError::io(shown, e))?;
    if bytes.len() as u64 > DOCUMENT_LIMIT {
        return Err(LoadError::invalid(
            shown,
            format!("larger than {} MiB: no run's is", DOCUMENT_LIMIT >> 20),
        ));
    }
    Ok(bytes)
}
