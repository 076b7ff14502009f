//! Results on disk, written as the run goes (STYLE.md §10): the manifest first (atomically),
//! one flushed `turns.jsonl` line per turn, `summary.json` rewritten atomically after every
//! cell, `telemetry.jsonl` lines as samples arrive. Also what `--resume` needs: reading back
//! the turns written so far and deciding which trajectories still have to run.

use anyhow::Context as _;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use turnbench_schema::manifest::CellId;
use turnbench_schema::summary::{best_cells, summarize_with};
use turnbench_schema::turn::latest_attempts;
use turnbench_schema::{files, jsonl, Summary, TelemetrySample, TurnRecord, SCHEMA_VERSION};

/// Write `value` as pretty JSON to `path` atomically (temporary file, then rename).
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    // On disk before the rename, so a host crash leaves the old file or the new, never an
    // empty one.
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_data()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The run directory and its writers.
pub struct Recorder {
    pub dir: PathBuf,
    run_id: String,
    simulated: bool,
    /// Turns of each trajectory (the summary tells finished trajectories from cut ones).
    turns_per_traj: Vec<u32>,
    turns: Mutex<(File, Vec<TurnRecord>)>,
    telemetry: Mutex<File>,
    /// GPUs finish cells concurrently: one summary write at a time (they share the temp file).
    summary_write: Mutex<()>,
}

/// Append `line` whole or not at all: a write that fails part way (a full disk) is cut back,
/// so no fragment is left for the next line to be glued onto.
fn append_whole(f: &mut File, line: &[u8]) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    match f.write_all(line) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = f.set_len(len);
            Err(e)
        }
    }
}

fn append_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

impl Recorder {
    /// Open `dir` for appending; `existing` are the turn records already in `turns.jsonl`.
    pub fn open(
        dir: &Path,
        run_id: &str,
        simulated: bool,
        existing: Vec<TurnRecord>,
        turns_per_traj: Vec<u32>,
    ) -> anyhow::Result<Recorder> {
        std::fs::create_dir_all(dir.join(files::LOGS_DIR))
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Recorder {
            dir: dir.to_path_buf(),
            run_id: run_id.to_string(),
            simulated,
            turns_per_traj,
            turns: Mutex::new((append_file(&dir.join(files::TURNS))?, existing)),
            telemetry: Mutex::new(append_file(&dir.join(files::TELEMETRY))?),
            summary_write: Mutex::new(()),
        })
    }

    /// Append one turn record and flush it to disk.
    pub fn turn(&self, rec: TurnRecord) -> anyhow::Result<()> {
        let mut g = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = serde_json::to_vec(&rec)?;
        line.push(b'\n');
        append_whole(&mut g.0, &line)
            .with_context(|| format!("appending to {}", self.dir.join(files::TURNS).display()))?;
        g.1.push(rec);
        Ok(())
    }

    pub fn telemetry(&self, s: &TelemetrySample) -> anyhow::Result<()> {
        let mut f = self.telemetry.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = Vec::new();
        jsonl::write_line(&mut line, s)?;
        append_whole(&mut f, &line)
            .with_context(|| format!("appending to {}", self.dir.join(files::TELEMETRY).display()))
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Every record so far, superseded attempts dropped.
    pub fn records(&self) -> Vec<TurnRecord> {
        let g = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        latest_attempts(g.1.clone())
    }

    /// The summary of everything recorded so far.
    pub fn summary(&self) -> Summary {
        let cells = summarize_with(&self.records(), &self.turns_per_traj);
        Summary {
            schema_version: SCHEMA_VERSION,
            run_id: self.run_id.clone(),
            simulated: self.simulated,
            best: best_cells(&cells),
            cells,
        }
    }

    /// Rewrite `summary.json` atomically.
    pub fn write_summary(&self) -> anyhow::Result<Summary> {
        let _one_at_a_time = self.summary_write.lock().unwrap_or_else(|e| e.into_inner());
        // The cell's records reach the disk with its summary (a host crash loses at most the
        // cell being run, which a resume runs again).
        {
            let g = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            g.0.sync_data()
                .with_context(|| format!("syncing {}", self.dir.join(files::TURNS).display()))?;
        }
        let s = self.summary();
        write_json_atomic(&self.dir.join(files::SUMMARY), &s)?;
        Ok(s)
    }
}

/// Read `turns.jsonl` of an interrupted run. A torn last line (a write cut by a crash) is cut
/// off the file so later appends start on a clean line.
pub fn read_turns(dir: &Path) -> anyhow::Result<Vec<TurnRecord>> {
    let path = dir.join(files::TURNS);
    if !path.exists() {
        return Ok(vec![]);
    }
    let mut bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    cut_torn_tail(&path, &mut bytes)?;
    jsonl::read(BufReader::new(&bytes[..]))
        .collect::<Result<Vec<TurnRecord>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Drop a JSONL file's torn last line (a write a crash cut short), on disk and from `bytes`
/// (its content), so that what is appended next starts a line of its own.
fn cut_torn_tail(path: &Path, bytes: &mut Vec<u8>) -> anyhow::Result<()> {
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < bytes.len() {
        tracing::warn!(
            "{}: dropping a torn last line ({} bytes)",
            path.display(),
            bytes.len() - keep
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.set_len(keep as u64)
            .with_context(|| format!("truncating {}", path.display()))?;
        bytes.truncate(keep);
    }
    Ok(())
}

/// Before a resume appends to `telemetry.jsonl`: drop its torn last line, if any.
pub fn repair_telemetry(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(files::TELEMETRY);
    match std::fs::read(&path) {
        Ok(mut bytes) => cut_torn_tail(&path, &mut bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What remains of a cell: (trajectory index, attempt number) to run.
pub type Todo = Vec<(usize, u32)>;

/// Decide, for every cell, which trajectories still have to run and with which attempt.
/// A cell is done when every trajectory has a finished run (every turn `0..turns[t]`, or
/// ended by a failed turn, which is a result) under the cell's latest attempt number. A cell
/// never started runs every trajectory as attempt 0. A cell started but not done (the run was
/// stopped in it, or its server died) runs again from its start, every trajectory under the
/// next attempt number, so readers drop all its earlier lines ([`latest_attempts`]): finishing
/// only its unfinished trajectories would run them at a lower concurrency than the cell's,
/// after the others, and its throughput would not be the cell's.
pub fn todo(cells: &[CellId], turns: &[usize], existing: &[TurnRecord]) -> BTreeMap<CellId, Todo> {
    // cell → (latest attempt, per trajectory under it: turns seen, failed)
    type Seen = (u32, BTreeMap<usize, (Vec<u32>, bool)>);
    let mut seen: BTreeMap<CellId, Seen> = BTreeMap::new();
    for r in existing {
        let e = seen.entry(r.cell()).or_insert((r.attempt, BTreeMap::new()));
        if r.attempt > e.0 {
            *e = (r.attempt, BTreeMap::new());
        }
        if r.attempt == e.0 {
            let t = e.1.entry(r.traj as usize).or_default();
            t.0.push(r.turn);
            t.1 |= r.error.is_some();
        }
    }
    cells
        .iter()
        .map(|c| {
            let all = |attempt: u32| (0..turns.len()).map(|t| (t, attempt)).collect();
            let list = match seen.get(c) {
                None => all(0),
                Some((a, trajs)) => {
                    let finished = |t: usize, n: usize| {
                        trajs.get(&t).is_some_and(|(got, failed)| {
                            let mut got = got.clone();
                            got.sort_unstable();
                            got.dedup();
                            let contiguous = got.iter().enumerate().all(|(i, &x)| i as u32 == x);
                            contiguous && (*failed || got.len() >= n)
                        })
                    };
                    if turns.iter().enumerate().all(|(t, &n)| finished(t, n)) {
                        vec![]
                    } else {
                        all(a + 1)
                    }
                }
            };
            (c.clone(), list)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnbench_schema::CacheMode;

    fn rec(traj: u32, turn: u32, attempt: u32, error: bool) -> TurnRecord {
        TurnRecord {
            gpu: "g".into(),
            cache_mode: CacheMode::Prefix,
            concurrency: 2,
            traj,
            traj_id: format!("t{traj}"),
            turn,
            attempt,
            t_send: 0.0,
            t_first_token: None,
            t_end: 1.0,
            ttft: None,
            e2e: None,
            itl: None,
            prompt_tokens: None,
            cached_tokens: None,
            completion_tokens: None,
            think_time: 0.0,
            finish_reason: None,
            error: error.then(|| "x".into()),
            in_flight: 1,
            server_ttft: None,
            retractions: None,
        }
    }

    #[test]
    fn resume_reruns_an_unfinished_cell_from_its_start_with_the_next_attempt() {
        let cell = |concurrency| CellId {
            gpu: "g".into(),
            cache_mode: CacheMode::Prefix,
            concurrency,
        };
        let at = |c: u32, r: TurnRecord| TurnRecord {
            concurrency: c,
            ..r
        };
        let existing = vec![
            // Concurrency 2: trajectory 1 partial, 3 partial again under attempt 1.
            rec(0, 0, 0, false),
            rec(0, 1, 0, false),
            rec(0, 2, 0, false), // complete
            rec(1, 0, 0, false), // partial
            rec(2, 0, 0, false),
            rec(2, 1, 0, true), // ended by a failure
            rec(3, 0, 0, false),
            rec(3, 0, 1, false),
            // Concurrency 4: done (a failure ends trajectory 1), all under attempt 2.
            at(4, rec(0, 0, 2, false)),
            at(4, rec(0, 1, 2, false)),
            at(4, rec(0, 2, 2, false)),
            at(4, rec(1, 0, 2, true)),
            // Concurrency 8: trajectory 1's only run is under an older attempt.
            at(8, rec(0, 0, 1, false)),
            at(8, rec(0, 1, 1, false)),
            at(8, rec(0, 2, 1, false)),
            at(8, rec(1, 0, 0, true)),
        ];
        let cells = [cell(2), cell(4), cell(8), cell(16)];
        let t = todo(&cells, &[3, 3], &existing);
        assert_eq!(
            t[&cell(2)],
            vec![(0, 2), (1, 2)],
            "from its start, next attempt"
        );
        assert_eq!(t[&cell(4)], vec![]);
        assert_eq!(t[&cell(8)], vec![(0, 2), (1, 2)]);
        assert_eq!(t[&cell(16)], vec![(0, 0), (1, 0)], "never started");
    }
}
