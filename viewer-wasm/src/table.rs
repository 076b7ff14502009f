//! The columnar table of per-turn records, and its encoding for the site.
//!
//! One row per turn record. Numbers live in typed columns: times as `f32` (NaN = missing),
//! integers in the narrowest of `u8` / `u16` / `u32` that holds them, with the width's
//! maximum as the missing marker. Strings are dictionary-encoded: a record's run, GPU, cache
//! mode and concurrency collapse into one *cell* code (an index into [`Meta::cells`]), its
//! dataset id into [`Meta::traj_ids`], its finish reason and error into their own
//! dictionaries (code 0 = none).
//!
//! On the site ([`Table::encode_chunk`]) each column is cut into chunks of
//! [`Meta::chunk_rows`] rows and each chunk is carried as base64 little-endian bytes, so a
//! page opened from disk can load it from a classic `<script>`; [`Loader`] rebuilds the
//! table from [`Meta`] and those chunks.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use turnbench_schema::{CacheMode, TurnRecord};

/// Version of the encoding written by [`Table::meta`] and read by [`Loader`].
pub const FORMAT: u32 = 3;

/// Rows per encoded chunk: at most 4 bytes a value, so one chunk file stays near 5.6 MB.
pub const CHUNK_ROWS: usize = 1 << 20;

/// Everything wrong with a table's input: records that do not fit, or encoded data that
/// does not decode.
#[derive(Debug, Clone, PartialEq)]
pub struct TableError(pub String);

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TableError {}

fn err<T>(msg: impl Into<String>) -> Result<T, TableError> {
    Err(TableError(msg.into()))
}

/// The per-row columns, in encoding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Cell,
    Traj,
    TrajId,
    Turn,
    TSend,
    Ttft,
    E2e,
    ItlMean,
    ItlP99,
    PromptTokens,
    CachedTokens,
    CompletionTokens,
    ThinkTime,
    FinishReason,
    Error,
    ServerTtft,
    Retractions,
}

impl Field {
    pub const ALL: [Field; 17] = [
        Field::Cell,
        Field::Traj,
        Field::TrajId,
        Field::Turn,
        Field::TSend,
        Field::Ttft,
        Field::E2e,
        Field::ItlMean,
        Field::ItlP99,
        Field::PromptTokens,
        Field::CachedTokens,
        Field::CompletionTokens,
        Field::ThinkTime,
        Field::FinishReason,
        Field::Error,
        Field::ServerTtft,
        Field::Retractions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Cell => "cell",
            Field::Traj => "traj",
            Field::TrajId => "traj_id",
            Field::Turn => "turn",
            Field::TSend => "t_send",
            Field::Ttft => "ttft",
            Field::E2e => "e2e",
            Field::ItlMean => "itl_mean",
            Field::ItlP99 => "itl_p99",
            Field::PromptTokens => "prompt_tokens",
            Field::CachedTokens => "cached_tokens",
            Field::CompletionTokens => "completion_tokens",
            Field::ThinkTime => "think_time",
            Field::FinishReason => "finish_reason",
            Field::Error => "error",
            Field::ServerTtft => "server_ttft",
            Field::Retractions => "retractions",
        }
    }

    fn is_float(self) -> bool {
        matches!(
            self,
            Field::TSend
                | Field::Ttft
                | Field::E2e
                | Field::ItlMean
                | Field::ItlP99
                | Field::ThinkTime
                | Field::ServerTtft
        )
    }
}

/// How one column's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    F32,
    U8,
    U16,
    U32,
}

impl Kind {
    fn width(self) -> usize {
        match self {
            Kind::U8 => 1,
            Kind::U16 => 2,
            Kind::F32 | Kind::U32 => 4,
        }
    }
}

/// One typed column. Missing values: NaN for `F32`, the type's maximum for integers.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    F32(Vec<f32>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::F32(v) => v.len(),
            Column::U8(v) => v.len(),
            Column::U16(v) => v.len(),
            Column::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> Kind {
        match self {
            Column::F32(_) => Kind::F32,
            Column::U8(_) => Kind::U8,
            Column::U16(_) => Kind::U16,
            Column::U32(_) => Kind::U32,
        }
    }

    /// Value of row `i`, `None` when missing.
    #[inline]
    pub fn value(&self, i: usize) -> Option<f64> {
        match self {
            Column::F32(v) => {
                let x = v[i];
                (!x.is_nan()).then_some(x as f64)
            }
            Column::U8(v) => (v[i] != u8::MAX).then_some(v[i] as f64),
            Column::U16(v) => (v[i] != u16::MAX).then_some(v[i] as f64),
            Column::U32(v) => (v[i] != u32::MAX).then_some(v[i] as f64),
        }
    }

    /// Integer code of row `i` (dictionary index or integer value; the missing marker is
    /// returned as is). Float columns have no codes.
    #[inline]
    pub fn code(&self, i: usize) -> u32 {
        match self {
            Column::F32(v) => v[i] as u32,
            Column::U8(v) => v[i] as u32,
            Column::U16(v) => v[i] as u32,
            Column::U32(v) => v[i],
        }
    }

    /// `f` of the code of every row, in order (see [`Column::code`]).
    #[inline]
    pub fn map_codes<T>(&self, f: impl Fn(u32) -> T) -> Vec<T> {
        match self {
            Column::F32(v) => v.iter().map(|x| f(*x as u32)).collect(),
            Column::U8(v) => v.iter().map(|x| f(*x as u32)).collect(),
            Column::U16(v) => v.iter().map(|x| f(*x as u32)).collect(),
            Column::U32(v) => v.iter().map(|x| f(*x)).collect(),
        }
    }

    /// `keep[i] &= f(code of row i)` for every row.
    #[inline]
    pub fn and_codes(&self, keep: &mut [bool], f: impl Fn(u32) -> bool) {
        match self {
            Column::F32(v) => keep.iter_mut().zip(v).for_each(|(k, x)| *k &= f(*x as u32)),
            Column::U8(v) => keep.iter_mut().zip(v).for_each(|(k, x)| *k &= f(*x as u32)),
            Column::U16(v) => keep.iter_mut().zip(v).for_each(|(k, x)| *k &= f(*x as u32)),
            Column::U32(v) => keep.iter_mut().zip(v).for_each(|(k, x)| *k &= f(*x)),
        }
    }

    /// `out[i] = f(code of row start + i)` (see [`Column::code`]): one pass, `f` inlined.
    #[inline]
    pub fn map_into<T>(&self, start: usize, out: &mut [T], f: impl Fn(u32) -> T) {
        let end = start + out.len();
        match self {
            Column::F32(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = f(*x as u32)),
            Column::U8(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = f(*x as u32)),
            Column::U16(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = f(*x as u32)),
            Column::U32(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = f(*x)),
        }
    }

    /// `keep[i] &= f(code of row start + i)`.
    #[inline]
    pub fn and_into(&self, start: usize, keep: &mut [bool], f: impl Fn(u32) -> bool) {
        let end = start + keep.len();
        match self {
            Column::F32(v) => keep
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(k, x)| *k &= f(*x as u32)),
            Column::U8(v) => keep
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(k, x)| *k &= f(*x as u32)),
            Column::U16(v) => keep
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(k, x)| *k &= f(*x as u32)),
            Column::U32(v) => keep
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(k, x)| *k &= f(*x)),
        }
    }

    /// The codes of rows `start..start + out.len()` into `out` (see [`Column::code`]).
    #[inline]
    pub fn codes_into(&self, start: usize, out: &mut [u32]) {
        let end = start + out.len();
        match self {
            Column::F32(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = *x as u32),
            Column::U8(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = *x as u32),
            Column::U16(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = *x as u32),
            Column::U32(v) => out.copy_from_slice(&v[start..end]),
        }
    }

    /// The values of rows `start..start + out.len()` into `out`, NaN where missing (see
    /// [`Column::values`]).
    #[inline]
    pub fn values_into(&self, start: usize, out: &mut [f64]) {
        let end = start + out.len();
        fn ints<T: Copy + PartialEq + Into<f64>>(v: &[T], missing: T, out: &mut [f64]) {
            out.iter_mut()
                .zip(v)
                .for_each(|(o, x)| *o = if *x == missing { f64::NAN } else { (*x).into() });
        }
        match self {
            Column::F32(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = *x as f64),
            Column::U8(v) => ints(&v[start..end], u8::MAX, out),
            Column::U16(v) => ints(&v[start..end], u16::MAX, out),
            Column::U32(v) => ints(&v[start..end], u32::MAX, out),
        }
    }

    /// The value of every row, in order, NaN where missing.
    pub fn values(&self) -> Vec<f64> {
        match self {
            Column::F32(v) => v.iter().map(|x| *x as f64).collect(),
            Column::U8(v) => v
                .iter()
                .map(|x| if *x == u8::MAX { f64::NAN } else { *x as f64 })
                .collect(),
            Column::U16(v) => v
                .iter()
                .map(|x| if *x == u16::MAX { f64::NAN } else { *x as f64 })
                .collect(),
            Column::U32(v) => v
                .iter()
                .map(|x| if *x == u32::MAX { f64::NAN } else { *x as f64 })
                .collect(),
        }
    }

    fn floats(values: Vec<f64>) -> Column {
        Column::F32(values.into_iter().map(|x| x as f32).collect())
    }

    /// Integers in the narrowest width that keeps the maximum free as the missing marker. A
    /// value no u32 holds (4 billion tokens: a corrupted record) reads as missing, so one bad
    /// line does not take the whole viewer down.
    fn ints(field: Field, values: &[Option<u64>]) -> Result<Column, TableError> {
        let values: Vec<Option<u64>> = values
            .iter()
            .map(|v| v.filter(|&x| x < u32::MAX as u64))
            .collect();
        let values = &values[..];
        let max = values.iter().flatten().copied().max().unwrap_or(0);
        Ok(if max < u8::MAX as u64 {
            Column::U8(
                values
                    .iter()
                    .map(|v| v.map_or(u8::MAX, |x| x as u8))
                    .collect(),
            )
        } else if max < u16::MAX as u64 {
            Column::U16(
                values
                    .iter()
                    .map(|v| v.map_or(u16::MAX, |x| x as u16))
                    .collect(),
            )
        } else if max < u32::MAX as u64 {
            Column::U32(
                values
                    .iter()
                    .map(|v| v.map_or(u32::MAX, |x| x as u32))
                    .collect(),
            )
        } else {
            return err(format!(
                "{} value {max} is too large for the viewer (limit {})",
                field.name(),
                u32::MAX - 1
            ));
        })
    }

    fn le_bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        match self {
            Column::F32(v) => v[range].iter().flat_map(|x| x.to_le_bytes()).collect(),
            Column::U8(v) => v[range].to_vec(),
            Column::U16(v) => v[range].iter().flat_map(|x| x.to_le_bytes()).collect(),
            Column::U32(v) => v[range].iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    fn from_le_bytes(kind: Kind, bytes: &[u8]) -> Column {
        match kind {
            Kind::U8 => Column::U8(bytes.to_vec()),
            Kind::U16 => Column::U16(
                bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            Kind::U32 => Column::U32(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Kind::F32 => Column::F32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
        }
    }

    fn append(&mut self, other: Column) -> Result<(), TableError> {
        match (self, other) {
            (Column::F32(a), Column::F32(b)) => a.extend(b),
            (Column::U8(a), Column::U8(b)) => a.extend(b),
            (Column::U16(a), Column::U16(b)) => a.extend(b),
            (Column::U32(a), Column::U32(b)) => a.extend(b),
            _ => return err("column chunks of different types"),
        }
        Ok(())
    }
}

/// One run in the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    pub id: String,
    pub simulated: bool,
}

/// One (run, GPU, cache mode, concurrency) cell; `run` and `gpu` index [`Meta::runs`] and
/// [`Meta::gpus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellInfo {
    pub run: u32,
    pub gpu: u32,
    pub cache_mode: CacheMode,
    pub concurrency: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: Kind,
}

/// The table's description and dictionaries: the `meta` script of the site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: u32,
    pub rows: u64,
    pub chunk_rows: u64,
    /// Sorted by id.
    pub runs: Vec<RunInfo>,
    /// Sorted.
    pub gpus: Vec<String>,
    /// Sorted.
    pub cells: Vec<CellInfo>,
    /// In order of first appearance.
    pub traj_ids: Vec<String>,
    /// Sorted; code `i + 1` is `finish_reasons[i]`, code 0 is none.
    pub finish_reasons: Vec<String>,
    /// Sorted; code `i + 1` is `errors[i]`, code 0 is no error.
    pub errors: Vec<String>,
    /// One per [`Field`], in [`Field::ALL`] order.
    pub columns: Vec<ColumnInfo>,
}

impl Meta {
    /// Number of chunks each column is cut into.
    pub fn chunks(&self) -> usize {
        (self.rows as usize).div_ceil(self.chunk_rows.max(1) as usize)
    }

    fn chunk_range(&self, chunk: usize) -> std::ops::Range<usize> {
        let size = self.chunk_rows as usize;
        let start = chunk * size;
        start..(start + size).min(self.rows as usize)
    }
}

/// The records of one run, as handed to [`Table::from_runs`].
#[derive(Debug, Clone, Copy)]
pub struct RunSource<'a> {
    pub run_id: &'a str,
    pub simulated: bool,
    pub records: &'a [TurnRecord],
}

/// All per-turn records, columnar.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub meta: Meta,
    columns: Vec<Column>,
    /// Each row's 10 s bucket of `t_send` ([`crate::view::bucket`]), computed once: grouping
    /// by time then reads codes like any other column.
    pub(crate) buckets: Vec<u32>,
    /// Largest turn, trajectory and `t_send` (for dense group indexes).
    pub(crate) max_turn: u32,
    pub(crate) max_traj: u32,
    pub(crate) max_t_send: f64,
}

/// Dictionary builder: sorted code order is assigned once all values are seen.
fn sorted_codes<'a>(values: impl Iterator<Item = &'a str>) -> (Vec<String>, HashMap<&'a str, u32>) {
    let set: BTreeSet<&str> = values.collect();
    let codes = set
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i as u32))
        .collect();
    (set.into_iter().map(str::to_string).collect(), codes)
}

impl Table {
    fn new(meta: Meta, columns: Vec<Column>) -> Table {
        let max_code = |f: Field| {
            let c = &columns[f as usize];
            (0..c.len()).map(|i| c.code(i)).max().unwrap_or(0)
        };
        let t_send = &columns[Field::TSend as usize];
        let max_t_send = (0..t_send.len())
            .filter_map(|i| t_send.value(i))
            .fold(0.0, f64::max);
        let buckets = crate::view::buckets(t_send);
        Table {
            buckets,
            max_turn: max_code(Field::Turn),
            max_traj: max_code(Field::Traj),
            max_t_send,
            meta,
            columns,
        }
    }

    /// Build the table from every run's records. Of a trajectory that was resumed, only the
    /// records of its highest attempt are kept, as everywhere else.
    pub fn from_runs(runs: &[RunSource<'_>]) -> Result<Table, TableError> {
        let mut seen_runs = BTreeSet::new();
        for r in runs {
            if !seen_runs.insert(r.run_id) {
                return err(format!("run {:?} is given twice", r.run_id));
            }
        }
        let mut sorted_runs: Vec<&RunSource<'_>> = runs.iter().collect();
        sorted_runs.sort_by_key(|r| r.run_id);
        let kept: Vec<(u32, &TurnRecord)> = sorted_runs
            .iter()
            .enumerate()
            .flat_map(|(ri, run)| {
                let latest = latest_attempts(run.records);
                run.records
                    .iter()
                    .filter(move |r| {
                        latest[&(r.gpu.as_str(), r.cache_mode, r.concurrency, r.traj)] == r.attempt
                    })
                    .map(move |r| (ri as u32, r))
            })
            .collect();

        let (gpus, gpu_code) = sorted_codes(kept.iter().map(|(_, r)| r.gpu.as_str()));
        let (finish_reasons, finish_code) =
            sorted_codes(kept.iter().filter_map(|(_, r)| r.finish_reason.as_deref()));
        let (errors, error_code) =
            sorted_codes(kept.iter().filter_map(|(_, r)| r.error.as_deref()));
        let cell_of = |run: u32, r: &TurnRecord| CellInfo {
            run,
            gpu: gpu_code[r.gpu.as_str()],
            cache_mode: r.cache_mode,
            concurrency: r.concurrency,
        };
        let cells: Vec<CellInfo> = kept
            .iter()
            .map(|(run, r)| cell_of(*run, r))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let cell_code: HashMap<CellInfo, u32> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, i as u32))
            .collect();
        let mut traj_ids: Vec<String> = Vec::new();
        let mut traj_code: HashMap<&str, u32> = HashMap::new();
        for (_, r) in &kept {
            traj_code.entry(r.traj_id.as_str()).or_insert_with(|| {
                traj_ids.push(r.traj_id.clone());
                traj_ids.len() as u32 - 1
            });
        }

        let ints = |field: Field, f: &dyn Fn(u32, &TurnRecord) -> Option<u64>| {
            let v: Vec<Option<u64>> = kept.iter().map(|(run, r)| f(*run, r)).collect();
            Column::ints(field, &v)
        };
        let floats = |f: &dyn Fn(&TurnRecord) -> Option<f64>| {
            Column::floats(kept.iter().map(|(_, r)| f(r).unwrap_or(f64::NAN)).collect())
        };
        let mut columns = Vec::with_capacity(Field::ALL.len());
        for field in Field::ALL {
            let col = match field {
                Field::Cell => ints(field, &|run, r| Some(cell_code[&cell_of(run, r)] as u64))?,
                Field::Traj => ints(field, &|_, r| Some(r.traj as u64))?,
                Field::TrajId => ints(field, &|_, r| Some(traj_code[r.traj_id.as_str()] as u64))?,
                Field::Turn => ints(field, &|_, r| Some(r.turn as u64))?,
                Field::TSend => floats(&|r| Some(r.t_send)),
                Field::Ttft => floats(&|r| r.ttft),
                Field::E2e => floats(&|r| r.e2e),
                Field::ItlMean => floats(&|r| r.itl.map(|i| i.mean)),
                Field::ItlP99 => floats(&|r| r.itl.map(|i| i.p99)),
                Field::PromptTokens => ints(field, &|_, r| r.prompt_tokens)?,
                Field::CachedTokens => ints(field, &|_, r| r.cached_tokens)?,
                Field::CompletionTokens => ints(field, &|_, r| r.completion_tokens)?,
                Field::ThinkTime => floats(&|r| Some(r.think_time)),
                Field::FinishReason => ints(field, &|_, r| {
                    Some(
                        r.finish_reason
                            .as_deref()
                            .map_or(0, |s| finish_code[s] as u64 + 1),
                    )
                })?,
                Field::Error => ints(field, &|_, r| {
                    Some(r.error.as_deref().map_or(0, |s| error_code[s] as u64 + 1))
                })?,
                Field::ServerTtft => floats(&|r| r.server_ttft),
                Field::Retractions => ints(field, &|_, r| r.retractions.map(u64::from))?,
            };
            columns.push(col);
        }
        let meta = Meta {
            format: FORMAT,
            rows: kept.len() as u64,
            chunk_rows: CHUNK_ROWS as u64,
            runs: sorted_runs
                .iter()
                .map(|r| RunInfo {
                    id: r.run_id.to_string(),
                    simulated: r.simulated,
                })
                .collect(),
            gpus,
            cells,
            traj_ids,
            finish_reasons,
            errors,
            columns: Field::ALL
                .iter()
                .zip(&columns)
                .map(|(f, c)| ColumnInfo {
                    name: f.name().to_string(),
                    kind: c.kind(),
                })
                .collect(),
        };
        Ok(Table::new(meta, columns))
    }

    /// Set the rows per chunk of the encoding (tests use small chunks).
    pub fn with_chunk_rows(mut self, rows: usize) -> Table {
        self.meta.chunk_rows = rows.max(1) as u64;
        self
    }

    pub fn rows(&self) -> usize {
        self.meta.rows as usize
    }

    #[inline]
    pub fn column(&self, field: Field) -> &Column {
        &self.columns[field as usize]
    }

    /// Base64 of the little-endian bytes of rows `chunk * chunk_rows ..` of one column.
    pub fn encode_chunk(&self, field: Field, chunk: usize) -> String {
        let bytes = self.column(field).le_bytes(self.meta.chunk_range(chunk));
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// For every (GPU, cache mode, concurrency, trajectory) of one run, its highest attempt.
fn latest_attempts(records: &[TurnRecord]) -> HashMap<(&str, CacheMode, u32, u32), u32> {
    let mut best = HashMap::new();
    for r in records {
        let e = best
            .entry((r.gpu.as_str(), r.cache_mode, r.concurrency, r.traj))
            .or_insert(r.attempt);
        *e = (*e).max(r.attempt);
    }
    best
}

/// Rebuilds a [`Table`] from its [`Meta`] and encoded chunks, in any order.
#[derive(Debug)]
pub struct Loader {
    meta: Meta,
    chunks: Vec<Vec<Option<Column>>>,
}

impl Loader {
    pub fn new(meta: Meta) -> Result<Loader, TableError> {
        if meta.format != FORMAT {
            return err(format!(
                "viewer data format {} is not the supported format {FORMAT}; rebuild the site",
                meta.format
            ));
        }
        if meta.chunk_rows == 0 {
            return err("viewer data has chunk_rows = 0");
        }
        let names: Vec<&str> = meta.columns.iter().map(|c| c.name.as_str()).collect();
        let expected: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
        if names != expected {
            return err(format!(
                "viewer data has columns {names:?}, expected {expected:?}"
            ));
        }
        for (f, c) in Field::ALL.iter().zip(&meta.columns) {
            if f.is_float() != (c.kind == Kind::F32) {
                return err(format!("column {} has the wrong type {:?}", c.name, c.kind));
            }
        }
        let chunks = vec![vec![None; meta.chunks()]; Field::ALL.len()];
        Ok(Loader { meta, chunks })
    }

    /// Parse the JSON of a [`Meta`].
    pub fn from_json(meta_json: &str) -> Result<Loader, TableError> {
        let meta: Meta = serde_json::from_str(meta_json)
            .map_err(|e| TableError(format!("viewer metadata does not parse: {e}")))?;
        Loader::new(meta)
    }

    /// Add chunk `chunk` of column `name` from its base64.
    pub fn add_chunk(&mut self, name: &str, chunk: usize, b64: &str) -> Result<(), TableError> {
        let Some(idx) = Field::ALL.iter().position(|f| f.name() == name) else {
            return err(format!("unknown viewer data column {name:?}"));
        };
        let n_chunks = self.meta.chunks();
        if chunk >= n_chunks {
            return err(format!(
                "column {name} chunk {chunk} is out of range (the data has {n_chunks} chunks)"
            ));
        }
        let kind = self.meta.columns[idx].kind;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| TableError(format!("column {name} chunk {chunk} is not base64: {e}")))?;
        let rows = self.meta.chunk_range(chunk).len();
        if bytes.len() != rows * kind.width() {
            return err(format!(
                "column {name} chunk {chunk} has {} bytes, expected {} ({rows} rows of {:?})",
                bytes.len(),
                rows * kind.width(),
                kind
            ));
        }
        self.chunks[idx][chunk] = Some(Column::from_le_bytes(kind, &bytes));
        Ok(())
    }

    /// Check that every chunk arrived and every code points into its dictionary.
    pub fn finish(self) -> Result<Table, TableError> {
        let Loader { meta, chunks } = self;
        let mut columns = Vec::with_capacity(chunks.len());
        for (field, parts) in Field::ALL.iter().zip(chunks) {
            let kind = meta.columns[*field as usize].kind;
            let mut col = Column::from_le_bytes(kind, &[]);
            for (i, part) in parts.into_iter().enumerate() {
                match part {
                    Some(p) => col.append(p)?,
                    None => {
                        return err(format!(
                            "column {} chunk {i} is missing (a data script did not load?)",
                            field.name()
                        ))
                    }
                }
            }
            columns.push(col);
        }
        let table = Table::new(meta, columns);
        let limits = [
            (Field::Cell, table.meta.cells.len()),
            (Field::TrajId, table.meta.traj_ids.len()),
            (Field::FinishReason, table.meta.finish_reasons.len() + 1),
            (Field::Error, table.meta.errors.len() + 1),
        ];
        for (field, limit) in limits {
            let col = table.column(field);
            if let Some(i) = (0..col.len()).find(|&i| col.code(i) as usize >= limit) {
                return err(format!(
                    "row {i}: {} code {} has no dictionary entry",
                    field.name(),
                    col.code(i)
                ));
            }
        }
        for c in &table.meta.cells {
            if c.run as usize >= table.meta.runs.len() || c.gpu as usize >= table.meta.gpus.len() {
                return err("a cell points to an unknown run or GPU");
            }
        }
        Ok(table)
    }
}
