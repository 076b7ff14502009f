//! Running a [`Query`] over a [`Table`]: filter, group (and split), aggregate.
//!
//! Aggregates skip records that failed (`error` set) or that lack the metric (e.g.
//! `cached_tokens` not reported), and every group says how many it skipped; a view of failed
//! turns only (`error=true`) aggregates those, so `count` there counts failures. Percentiles are
//! [`turnbench_schema::stats`]'s single definition, so a p90 here equals the report's p90 of
//! the same records (up to the `f32` storage of times, see [`crate::table`]).

use crate::query::{Agg, Chart, Dim, Metric, Query};
use crate::table::{CellInfo, Column, Field, Table};
use serde::Serialize;
use std::collections::HashMap;
use turnbench_schema::stats;
use turnbench_schema::CacheMode;

/// Width of a [`Dim::TimeBucket`] bucket, seconds of `t_send`.
pub const BUCKET_S: f64 = 10.0;

/// Largest (group × series) code space indexed densely (16 MB of `u32`).
const DENSE_SLOTS: u64 = 1 << 22;

/// Up to this many (group × series) codes, each group's values are pushed to their own
/// vector; beyond, to one buffer in table order, then counting-sorted by group (thousands of
/// growing vectors cost more than the sort).
const FEW_SLOTS: u64 = 4096;

/// One block of a scan: per row, whether it passes the filters, its group and series codes,
/// whether it failed, its metric (NaN when missing).
struct Block {
    keep: [bool; BLOCK],
    gcodes: [u32; BLOCK],
    scodes: [u32; BLOCK],
    errors: [bool; BLOCK],
    values: [f64; BLOCK],
    tmp: [f64; BLOCK],
}

/// The groups found so far by a scan, and their values.
struct Scan {
    /// Group index by `group code × series_card + series code` (`u32::MAX`: none yet); empty
    /// when the code space is too large, then `sparse` maps (group, series) codes.
    dense: Vec<u32>,
    sparse: HashMap<(u32, u32), u32>,
    series_card: u64,
    /// (group, series) codes by group index.
    keys: Vec<(u32, u32)>,
    count: Vec<u32>,
    skipped: Vec<u64>,
    fold0: Fold,
    store: Store,
    matched: u64,
    skipped_error: u64,
    skipped_missing: u64,
    /// Which cells ([`crate::table::Meta::cells`]) have a record that passed the filters.
    cells: Vec<bool>,
}

impl Scan {
    /// Adds the first `len` rows of `b`.
    #[inline(never)]
    fn add_block(&mut self, b: &Block, len: usize) {
        for i in 0..len {
            if !b.keep[i] {
                continue;
            }
            self.matched += 1;
            let g = self.group_of((b.gcodes[i], b.scodes[i])) as usize;
            let x = b.values[i];
            if b.errors[i] {
                self.skipped_error += 1;
                self.skipped[g] += 1;
            } else if x.is_nan() {
                self.skipped_missing += 1;
                self.skipped[g] += 1;
            } else {
                self.count[g] += 1;
                match &mut self.store {
                    Store::Folds(f) => f[g].add(x),
                    Store::PerGroup(v) => v[g].push(x),
                    Store::Rows(gs, xs) => {
                        gs.push(g as u32);
                        xs.push(x);
                    }
                }
            }
        }
    }

    /// The index of group `key`, made on first sight.
    #[inline]
    fn group_of(&mut self, key: (u32, u32)) -> u32 {
        let slot = if self.dense.is_empty() {
            match self.sparse.get(&key) {
                Some(g) => return *g,
                None => None,
            }
        } else {
            let slot = (key.0 as u64 * self.series_card + key.1 as u64) as usize;
            if self.dense[slot] != u32::MAX {
                return self.dense[slot];
            }
            Some(slot)
        };
        let g = self.keys.len() as u32;
        self.keys.push(key);
        self.count.push(0);
        self.skipped.push(0);
        match &mut self.store {
            Store::Folds(f) => f.push(self.fold0),
            Store::PerGroup(v) => v.push(Vec::new()),
            Store::Rows(..) => {}
        }
        match slot {
            Some(slot) => self.dense[slot] = g,
            None => {
                self.sparse.insert(key, g);
            }
        }
        g
    }
}

/// Where a scan puts the aggregated values.
enum Store {
    /// `count` … `max`: folded per group.
    Folds(Vec<Fold>),
    /// Few groups: the values of each.
    PerGroup(Vec<Vec<f64>>),
    /// Many groups: (group, value) of each row, in table order.
    Rows(Vec<u32>, Vec<f64>),
}

/// Rows per block of a scan: the block's scratch columns stay in cache.
const BLOCK: usize = 2048;

/// A view's groups before they are named, column by column, ordered by group then series
/// code (see [`Table::aggregate`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Groups {
    /// Group code of each (group, series).
    pub group: Vec<u32>,
    /// Series code (0 when the view is not split).
    pub series: Vec<u32>,
    /// The aggregate; `None` when no record of the group has the metric (except `count`).
    pub value: Vec<Option<f64>>,
    /// Records aggregated.
    pub n: Vec<u64>,
    /// Records skipped (failed, or metric missing).
    pub skipped: Vec<u64>,
    /// Box statistics, one per group for box charts, else empty.
    pub dist: Vec<Option<BoxStats>>,
    pub matched: u64,
    pub skipped_error: u64,
    pub skipped_missing: u64,
    /// Which cells ([`crate::table::Meta::cells`]) have a record that passed the filters.
    pub cells: Vec<bool>,
}

/// How the codes of a dimension read: numbers, or a dictionary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DimCodes {
    /// For numeric dimensions: the raw value of code `k` is the number `k × step` (the
    /// bucket's start for `t_send`, the value itself otherwise).
    pub step: Option<f64>,
    /// Otherwise: (raw value, label) of each code.
    pub dict: Vec<(String, String)>,
}

impl Groups {
    pub fn len(&self) -> usize {
        self.group.len()
    }

    pub fn is_empty(&self) -> bool {
        self.group.is_empty()
    }
}

/// Distribution of one group, for box charts: min, quartiles (p25, p50, p75), max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoxStats {
    pub min: f64,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    pub max: f64,
}

/// One (group, series) of a view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The group's raw value (`"3"` for turn 3, `"prefix"`, a GPU label, a bucket's start).
    pub group: String,
    /// What the reader sees, when it differs from the raw value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series_label: Option<String>,
    /// The aggregate; `None` when no record of the group has the metric (except `count`: 0).
    pub value: Option<f64>,
    /// Records aggregated.
    pub n: u64,
    /// Records of the group skipped (failed, or metric missing).
    pub skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dist: Option<BoxStats>,
}

/// The result of a query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct View {
    /// The query's canonical hash.
    pub hash: String,
    pub metric: &'static str,
    pub metric_label: &'static str,
    pub agg: &'static str,
    pub group: &'static str,
    pub group_label: &'static str,
    pub series: Option<&'static str>,
    pub series_label: Option<&'static str>,
    pub chart: &'static str,
    /// Width of a `t_send` bucket (s).
    pub bucket_s: f64,
    /// Records that pass the filters.
    pub matched: u64,
    /// Of those, aggregated.
    pub used: u64,
    /// Of those, skipped because the turn failed.
    pub skipped_error: u64,
    /// Of those, skipped because the metric is missing.
    pub skipped_missing: u64,
    /// What every point pools that the view neither groups nor splits by, when more than one
    /// (e.g. "2 GPUs: a100-80gb, h100"); empty when nothing is pooled.
    pub pooled: Vec<String>,
    /// The points pool simulated and real runs.
    pub pools_simulated_and_real: bool,
    pub rows: Vec<Row>,
}

impl View {
    pub fn skipped(&self) -> u64 {
        self.skipped_error + self.skipped_missing
    }

    /// The view as CSV: group, series (when split), value, n, skipped.
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let value_col = format!("{}_{}", self.metric, self.agg);
        let mut header = vec![self.group];
        header.extend(self.series);
        header.extend([value_col.as_str(), "n", "skipped"]);
        // Writing to a Vec cannot fail.
        let _ = w.write_record(&header);
        for r in &self.rows {
            let mut rec = vec![r.group.clone()];
            rec.extend(r.series.clone());
            rec.push(r.value.map(|v| v.to_string()).unwrap_or_default());
            rec.push(r.n.to_string());
            rec.push(r.skipped.to_string());
            let _ = w.write_record(&rec);
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

/// One record, decoded for display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordRow {
    pub run: String,
    pub gpu: String,
    pub cache_mode: CacheMode,
    pub concurrency: u32,
    pub traj: u32,
    pub traj_id: String,
    pub turn: u32,
    pub t_send: f64,
    pub ttft: Option<f64>,
    pub server_ttft: Option<f64>,
    pub e2e: Option<f64>,
    pub itl_mean: Option<f64>,
    pub itl_p99: Option<f64>,
    pub prompt_tokens: Option<f64>,
    pub cached_tokens: Option<f64>,
    pub completion_tokens: Option<f64>,
    pub think_time: Option<f64>,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
    pub retractions: Option<f64>,
}

/// The first records of one point of a view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Records {
    /// All records of the point (filters and group applied).
    pub total: u64,
    pub rows: Vec<RecordRow>,
}

/// The filters, resolved against the table's dictionaries.
struct Selection<'a> {
    table: &'a Table,
    cell_ok: Vec<bool>,
    finish_ok: Vec<bool>,
    query: &'a Query,
}

impl<'a> Selection<'a> {
    /// Which of rows `start..start + keep.len()` pass every filter, column by column.
    fn mask_into(&self, start: usize, keep: &mut [bool]) {
        let t = self.table;
        let f = &self.query.filters;
        t.column(Field::Cell)
            .map_into(start, keep, |c| self.cell_ok[c as usize]);
        t.column(Field::FinishReason)
            .and_into(start, keep, |c| self.finish_ok[c as usize]);
        for (field, ranges) in [(Field::Turn, &f.turn), (Field::Traj, &f.traj)] {
            if !ranges.is_empty() {
                t.column(field)
                    .and_into(start, keep, |x| ranges.iter().any(|r| r.contains(x)));
            }
        }
        if let Some(want) = f.error {
            t.column(Field::Error)
                .and_into(start, keep, |c| (c != 0) == want);
        }
    }

    fn new(table: &'a Table, query: &'a Query) -> Self {
        let m = &table.meta;
        let f = &query.filters;
        let cell_ok = m
            .cells
            .iter()
            .map(|c| {
                (f.run.is_empty() || f.run.contains(&m.runs[c.run as usize].id))
                    && (f.gpu.is_empty() || f.gpu.contains(&m.gpus[c.gpu as usize]))
                    && (f.cache_mode.is_empty() || f.cache_mode.contains(&c.cache_mode))
                    && (f.concurrency.is_empty() || f.concurrency.contains(&c.concurrency))
            })
            .collect();
        let finish_ok = (0..=m.finish_reasons.len())
            .map(|code| {
                f.finish_reason.is_empty()
                    || f.finish_reason.iter().any(|want| match (want, code) {
                        (None, 0) => true,
                        (Some(s), c) if c > 0 => m.finish_reasons[c - 1] == *s,
                        _ => false,
                    })
            })
            .collect();
        Selection {
            table,
            cell_ok,
            finish_ok,
            query,
        }
    }

    #[inline]
    fn keeps(&self, i: usize) -> bool {
        let t = self.table;
        let f = &self.query.filters;
        self.cell_ok[t.column(Field::Cell).code(i) as usize]
            && self.finish_ok[t.column(Field::FinishReason).code(i) as usize]
            && (f.turn.is_empty() || {
                let x = t.column(Field::Turn).code(i);
                f.turn.iter().any(|r| r.contains(x))
            })
            && (f.traj.is_empty() || {
                let x = t.column(Field::Traj).code(i);
                f.traj.iter().any(|r| r.contains(x))
            })
            && f.error
                .is_none_or(|want| (t.column(Field::Error).code(i) != 0) == want)
    }
}

impl Table {
    fn cell(&self, i: usize) -> &CellInfo {
        &self.meta.cells[self.column(Field::Cell).code(i) as usize]
    }

    /// The code of row `i` along `dim`; codes sort like the values they stand for.
    #[inline]
    fn key(&self, dim: Dim, i: usize) -> u32 {
        match dim {
            Dim::Turn => self.column(Field::Turn).code(i),
            Dim::Traj => self.column(Field::Traj).code(i),
            Dim::Concurrency => self.cell(i).concurrency,
            Dim::Gpu => self.cell(i).gpu,
            Dim::Run => self.cell(i).run,
            Dim::CacheMode => cache_mode_code(self.cell(i).cache_mode),
            Dim::FinishReason => self.column(Field::FinishReason).code(i),
            Dim::TimeBucket => self.buckets[i],
        }
    }

    /// The raw value and the label of code `k` along `dim`.
    fn key_text(&self, dim: Dim, k: u32) -> (String, String) {
        let m = &self.meta;
        match dim {
            Dim::Turn | Dim::Traj | Dim::Concurrency => (k.to_string(), k.to_string()),
            Dim::Gpu => {
                let g = m.gpus[k as usize].clone();
                (g.clone(), g)
            }
            Dim::Run => {
                let r = &m.runs[k as usize];
                let label = if r.simulated {
                    format!("{} (simulated)", r.id)
                } else {
                    r.id.clone()
                };
                (r.id.clone(), label)
            }
            Dim::CacheMode => {
                let s = CacheMode::ALL[k as usize].as_str().to_string();
                (s.clone(), s)
            }
            Dim::FinishReason if k == 0 => (String::new(), "(none)".to_string()),
            Dim::FinishReason => {
                let s = m.finish_reasons[k as usize - 1].clone();
                (s.clone(), s)
            }
            Dim::TimeBucket => {
                let start = k as f64 * BUCKET_S;
                (start.to_string(), format!("{start}–{} s", start + BUCKET_S))
            }
        }
    }

    /// The code of raw value `raw` along `dim`, `None` if no record can have it.
    fn key_of_raw(&self, dim: Dim, raw: &str) -> Option<u32> {
        let m = &self.meta;
        match dim {
            Dim::Turn | Dim::Traj | Dim::Concurrency => raw.parse().ok(),
            Dim::Gpu => m.gpus.iter().position(|g| g == raw).map(|i| i as u32),
            Dim::Run => m.runs.iter().position(|r| r.id == raw).map(|i| i as u32),
            Dim::CacheMode => raw.parse().ok().map(cache_mode_code),
            Dim::FinishReason if raw.is_empty() => Some(0),
            Dim::FinishReason => m
                .finish_reasons
                .iter()
                .position(|s| s == raw)
                .map(|i| i as u32 + 1),
            Dim::TimeBucket => Some(bucket(raw.parse().ok()?)),
        }
    }

    /// How many codes `dim` can take (codes are `0..cardinality`).
    fn cardinality(&self, dim: Dim) -> u64 {
        let m = &self.meta;
        1 + match dim {
            Dim::Turn => self.max_turn as u64,
            Dim::Traj => self.max_traj as u64,
            Dim::Concurrency => m.cells.iter().map(|c| c.concurrency).max().unwrap_or(0) as u64,
            Dim::Gpu => m.gpus.len() as u64,
            Dim::Run => m.runs.len() as u64,
            Dim::CacheMode => CacheMode::ALL.len() as u64,
            Dim::FinishReason => m.finish_reasons.len() as u64,
            Dim::TimeBucket => (self.max_t_send / BUCKET_S)
                .floor()
                .clamp(0.0, u32::MAX as f64) as u64,
        }
    }

    /// The codes along `dim` of rows `start..start + out.len()`; `cell_lut` maps a cell code
    /// to the code of a dimension the cell carries (see [`Table::cell_lut`]).
    fn dim_codes_into(&self, dim: Dim, cell_lut: &[u32], start: usize, out: &mut [u32]) {
        match dim {
            Dim::Turn => self.column(Field::Turn).codes_into(start, out),
            Dim::Traj => self.column(Field::Traj).codes_into(start, out),
            Dim::FinishReason => self.column(Field::FinishReason).codes_into(start, out),
            Dim::Concurrency | Dim::Gpu | Dim::Run | Dim::CacheMode => self
                .column(Field::Cell)
                .map_into(start, out, |c| cell_lut[c as usize]),
            Dim::TimeBucket => out.copy_from_slice(&self.buckets[start..start + out.len()]),
        }
    }

    /// For a dimension a cell carries, its code by cell code (empty for the others).
    fn cell_lut(&self, dim: Dim) -> Vec<u32> {
        let f: fn(&CellInfo) -> u32 = match dim {
            Dim::Concurrency => |c| c.concurrency,
            Dim::Gpu => |c| c.gpu,
            Dim::Run => |c| c.run,
            Dim::CacheMode => |c| cache_mode_code(c.cache_mode),
            _ => return Vec::new(),
        };
        self.meta.cells.iter().map(f).collect()
    }

    /// `metric` of rows `start..start + out.len()`, NaN where missing (`tmp`: scratch of the
    /// same length).
    fn metric_into(&self, metric: Metric, start: usize, out: &mut [f64], tmp: &mut [f64]) {
        let col = |f: Field, out: &mut [f64]| self.column(f).values_into(start, out);
        let mut zip = |a: Field, b: Field, out: &mut [f64], op: fn(f64, f64) -> f64| {
            self.column(a).values_into(start, out);
            self.column(b).values_into(start, tmp);
            out.iter_mut()
                .zip(tmp.iter())
                .for_each(|(x, y)| *x = op(*x, *y));
        };
        match metric {
            Metric::Ttft => col(Field::Ttft, out),
            Metric::E2e => col(Field::E2e, out),
            Metric::ServerTtft => col(Field::ServerTtft, out),
            Metric::TtftOutside => zip(Field::Ttft, Field::ServerTtft, out, |c, s| c - s),
            Metric::ItlMean => col(Field::ItlMean, out),
            Metric::ItlP99 => col(Field::ItlP99, out),
            Metric::PromptTokens => col(Field::PromptTokens, out),
            Metric::CachedTokens => col(Field::CachedTokens, out),
            Metric::CompletionTokens => col(Field::CompletionTokens, out),
            Metric::ThinkTime => col(Field::ThinkTime, out),
            Metric::Retractions => col(Field::Retractions, out),
            Metric::NewPromptTokens => {
                zip(Field::PromptTokens, Field::CachedTokens, out, |p, c| {
                    // `f64::max` would turn a missing (NaN) count into 0.
                    if p.is_nan() || c.is_nan() {
                        f64::NAN
                    } else {
                        (p - c).max(0.0)
                    }
                })
            }
            Metric::CacheHitRatio => zip(Field::PromptTokens, Field::CachedTokens, out, |p, c| {
                if p > 0.0 {
                    c / p
                } else {
                    f64::NAN
                }
            }),
            Metric::OutputTokPerS => zip(Field::CompletionTokens, Field::E2e, out, |n, e2e| {
                if e2e > 0.0 {
                    n / e2e
                } else {
                    f64::NAN
                }
            }),
            Metric::Tpot => {
                zip(Field::E2e, Field::Ttft, out, |e2e, ttft| e2e - ttft);
                self.column(Field::CompletionTokens).values_into(start, tmp);
                // No time after the first content (every token in the first chunk): no
                // decode time seen, so no time per token (as `TurnRecord::tpot`).
                out.iter_mut().zip(tmp.iter()).for_each(|(span, n)| {
                    *span = if *n >= 2.0 && *span > 0.0 {
                        *span / (n - 1.0)
                    } else {
                        f64::NAN
                    }
                });
            }
        }
    }

    /// Run `query`: filter, group, aggregate (see [`Table::aggregate`]), then name the
    /// groups. Rows are ordered by group, then series.
    pub fn view(&self, query: &Query) -> View {
        let g = self.aggregate(query);
        let text = |dim: Dim, k: u32| {
            let (raw, label) = self.key_text(dim, k);
            let label = (label != raw).then_some(label);
            (raw, label)
        };
        let rows = (0..g.len())
            .map(|i| {
                let (group, group_label) = text(query.group, g.group[i]);
                let (series, series_label) = match query.series {
                    Some(s) => {
                        let (a, b) = text(s, g.series[i]);
                        (Some(a), b)
                    }
                    None => (None, None),
                };
                Row {
                    group,
                    group_label,
                    series,
                    series_label,
                    value: g.value[i],
                    n: g.n[i],
                    skipped: g.skipped[i],
                    dist: g.dist.get(i).copied().flatten(),
                }
            })
            .collect();
        View {
            rows,
            ..self.view_header(query, &g)
        }
    }

    /// The view of `query` whose groups are `g`, without its rows.
    pub fn view_header(&self, query: &Query, g: &Groups) -> View {
        View {
            hash: query.to_hash(),
            metric: query.metric.key(),
            metric_label: query.metric.label(),
            agg: query.agg.key(),
            group: query.group.key(),
            group_label: query.group.label(),
            series: query.series.map(Dim::key),
            series_label: query.series.map(Dim::label),
            chart: query.chart.key(),
            bucket_s: BUCKET_S,
            matched: g.matched,
            used: g.n.iter().sum(),
            skipped_error: g.skipped_error,
            skipped_missing: g.skipped_missing,
            pooled: self.pooled(query, &g.cells),
            pools_simulated_and_real: {
                let (dims_used, runs) = (
                    [Some(query.group), query.series],
                    self.matched_codes(Dim::Run, &g.cells),
                );
                !dims_used.contains(&Some(Dim::Run))
                    && runs.iter().any(|r| self.meta.runs[*r as usize].simulated)
                    && runs.iter().any(|r| !self.meta.runs[*r as usize].simulated)
            },
            rows: Vec::new(),
        }
    }

    /// The codes along `dim` (run, GPU, cache mode or concurrency) of the cells marked in
    /// `cells`, sorted, without repeats.
    fn matched_codes(&self, dim: Dim, cells: &[bool]) -> Vec<u32> {
        let mut codes: Vec<u32> = self
            .meta
            .cells
            .iter()
            .zip(cells)
            .filter(|(_, on)| **on)
            .map(|(c, _)| match dim {
                Dim::Run => c.run,
                Dim::Gpu => c.gpu,
                Dim::CacheMode => CacheMode::ALL
                    .iter()
                    .position(|m| *m == c.cache_mode)
                    .unwrap_or(0) as u32,
                _ => c.concurrency,
            })
            .collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }

    /// See [`View::pooled`].
    fn pooled(&self, query: &Query, cells: &[bool]) -> Vec<String> {
        let mut out = Vec::new();
        for (dim, plural) in [
            (Dim::Run, "runs"),
            (Dim::Gpu, "GPUs"),
            (Dim::CacheMode, "cache modes"),
            (Dim::Concurrency, "concurrencies"),
        ] {
            if query.group == dim || query.series == Some(dim) {
                continue;
            }
            let codes = self.matched_codes(dim, cells);
            if codes.len() < 2 {
                continue;
            }
            let names: Vec<String> = codes.iter().map(|k| self.key_text(dim, *k).1).collect();
            out.push(format!("{} {plural}: {}", codes.len(), names.join(", ")));
        }
        out
    }

    /// How the codes of `dim` in [`Groups`] read as raw values and labels.
    pub fn dim_codes(&self, dim: Dim) -> DimCodes {
        let m = &self.meta;
        let dict = |n: usize| DimCodes {
            step: None,
            dict: (0..n as u32).map(|k| self.key_text(dim, k)).collect(),
        };
        match dim {
            Dim::Turn | Dim::Traj | Dim::Concurrency => DimCodes {
                step: Some(1.0),
                dict: Vec::new(),
            },
            Dim::TimeBucket => DimCodes {
                step: Some(BUCKET_S),
                dict: Vec::new(),
            },
            Dim::Gpu => dict(m.gpus.len()),
            Dim::Run => dict(m.runs.len()),
            Dim::CacheMode => dict(CacheMode::ALL.len()),
            Dim::FinishReason => dict(m.finish_reasons.len() + 1),
        }
    }

    /// Rows `start..start + len` into `b`: filter mask, group and series codes, error flag,
    /// metric. `false` when no row passes the filters. (Kept out of line, like
    /// [`Scan::add_block`]: small hot functions get optimised early by WebAssembly engines.)
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn fill_block(
        &self,
        query: &Query,
        sel: &Selection<'_>,
        group_lut: &[u32],
        series_lut: &[u32],
        start: usize,
        len: usize,
        b: &mut Block,
    ) -> bool {
        let keep = &mut b.keep[..len];
        sel.mask_into(start, keep);
        if !keep.iter().any(|k| *k) {
            return false;
        }
        self.dim_codes_into(query.group, group_lut, start, &mut b.gcodes[..len]);
        if let Some(s) = query.series {
            self.dim_codes_into(s, series_lut, start, &mut b.scodes[..len]);
        }
        if query.filters.error == Some(true) {
            // A view of failed turns only aggregates them (what they measured before failing).
            b.errors[..len].fill(false);
        } else {
            self.column(Field::Error)
                .map_into(start, &mut b.errors[..len], |c| c != 0);
        }
        if query.filters.error == Some(true) && query.agg == Agg::Count {
            // Failed turns only, counted: every failure counts, whether it got as far as the
            // metric or not (most never reach a first token).
            b.values[..len].fill(0.0);
        } else {
            self.metric_into(query.metric, start, &mut b.values[..len], &mut b.tmp[..len]);
        }
        true
    }

    /// Run `query` without naming the groups: one scan in blocks of [`BLOCK`] rows (filter
    /// mask, group and series codes, metric, no per-row allocation), each aggregated value
    /// appended with its group's dense index; then a stable counting sort by group puts every
    /// group's values side by side in table order, and each group is aggregated in place
    /// (percentiles by selection, see [`percentile`]).
    pub fn aggregate(&self, query: &Query) -> Groups {
        let sel = Selection::new(self, query);
        let rows = self.rows();
        let group_lut = self.cell_lut(query.group);
        let series_lut = query.series.map(|s| self.cell_lut(s)).unwrap_or_default();
        let series_card = query.series.map_or(1, |s| self.cardinality(s));
        let slots = self.cardinality(query.group) * series_card;
        let boxes = query.chart == Chart::Box;
        // Percentiles and box statistics need every value of a group; the other aggregates
        // are folded as the scan goes, in table order like `aggregate` over the group's values.
        let store = if query.agg.quantile().is_none() && !boxes {
            Store::Folds(Vec::new())
        } else if slots <= FEW_SLOTS {
            Store::PerGroup(Vec::new())
        } else {
            Store::Rows(Vec::with_capacity(rows), Vec::with_capacity(rows))
        };
        let mut scan = Scan {
            // Group index by (group, series) code: a dense table when small, a map otherwise.
            dense: if slots <= DENSE_SLOTS {
                vec![u32::MAX; slots as usize]
            } else {
                Vec::new()
            },
            sparse: HashMap::new(),
            series_card,
            keys: Vec::new(),
            count: Vec::new(),
            skipped: Vec::new(),
            fold0: Fold::new(query.agg),
            store,
            matched: 0,
            skipped_error: 0,
            skipped_missing: 0,
            cells: vec![false; self.meta.cells.len()],
        };
        let mut block = Block {
            keep: [false; BLOCK],
            gcodes: [0; BLOCK],
            scodes: [0; BLOCK],
            errors: [false; BLOCK],
            values: [0.0; BLOCK],
            tmp: [0.0; BLOCK],
        };
        let mut start = 0;
        while start < rows {
            let len = BLOCK.min(rows - start);
            if self.fill_block(query, &sel, &group_lut, &series_lut, start, len, &mut block) {
                let cell = self.column(Field::Cell);
                for (i, keep) in block.keep[..len].iter().enumerate() {
                    if *keep {
                        scan.cells[cell.code(start + i) as usize] = true;
                    }
                }
                scan.add_block(&block, len);
            }
            start += len;
        }
        let Scan {
            dense,
            keys,
            count,
            skipped,
            mut store,
            matched,
            skipped_error,
            skipped_missing,
            cells,
            ..
        } = scan;

        // Many groups: a stable counting sort puts group `g`'s values at
        // `offset[g]..offset[g + 1]` of one buffer, in table order.
        let (mut sorted, mut offset) = (Vec::new(), Vec::new());
        if let Store::Rows(row_group, row_value) = &store {
            offset.reserve(keys.len() + 1);
            let mut total = 0usize;
            offset.push(0);
            for c in &count {
                total += *c as usize;
                offset.push(total);
            }
            sorted = vec![0f64; total];
            let mut next = offset.clone();
            for (g, x) in row_group.iter().zip(row_value) {
                let at = &mut next[*g as usize];
                sorted[*at] = *x;
                *at += 1;
            }
            store = Store::Rows(Vec::new(), Vec::new());
        }

        // Output order: by group code, then series code, which is the dense table's order.
        let order: Vec<u32> = if dense.is_empty() {
            let mut order: Vec<u32> = (0..keys.len() as u32).collect();
            order.sort_unstable_by_key(|g| keys[*g as usize]);
            order
        } else {
            dense.into_iter().filter(|g| *g != u32::MAX).collect()
        };
        let mut out = Groups {
            group: Vec::with_capacity(order.len()),
            series: Vec::with_capacity(order.len()),
            value: Vec::with_capacity(order.len()),
            n: Vec::with_capacity(order.len()),
            skipped: Vec::with_capacity(order.len()),
            dist: Vec::new(),
            matched,
            skipped_error,
            skipped_missing,
            cells,
        };
        for g in order {
            let g = g as usize;
            out.group.push(keys[g].0);
            out.series.push(keys[g].1);
            out.n.push(count[g] as u64);
            out.skipped.push(skipped[g]);
            let values = match &mut store {
                Store::Folds(f) => {
                    out.value.push(f[g].value(query.agg, count[g]));
                    continue;
                }
                Store::PerGroup(v) => &mut v[g][..],
                Store::Rows(..) => &mut sorted[offset[g]..offset[g + 1]],
            };
            out.value.push(aggregate(query.agg, values));
            if boxes {
                out.dist.push(box_stats(values));
            }
        }
        out
    }

    /// The records of one point of `query`'s view: group `group` (raw value) and, when the
    /// view is split, series `series`; the first `limit` of them in table order.
    pub fn records(
        &self,
        query: &Query,
        group: &str,
        series: Option<&str>,
        limit: usize,
    ) -> Records {
        let sel = Selection::new(self, query);
        let want_g = self.key_of_raw(query.group, group);
        let want_s = match (query.series, series) {
            (Some(dim), Some(raw)) => Some(self.key_of_raw(dim, raw)),
            _ => None,
        };
        let mut out = Records {
            total: 0,
            rows: Vec::new(),
        };
        let Some(want_g) = want_g else {
            return out;
        };
        for i in 0..self.rows() {
            if !sel.keeps(i) || self.key(query.group, i) != want_g {
                continue;
            }
            if let (Some(want), Some(dim)) = (want_s, query.series) {
                if want != Some(self.key(dim, i)) {
                    continue;
                }
            }
            out.total += 1;
            if out.rows.len() < limit {
                out.rows.push(self.record(i));
            }
        }
        out
    }

    /// Row `i` decoded.
    pub fn record(&self, i: usize) -> RecordRow {
        let m = &self.meta;
        let cell = self.cell(i);
        let v = |f: Field| self.column(f).value(i);
        let dict = |f: Field, d: &[String]| {
            let c = self.column(f).code(i) as usize;
            (c > 0).then(|| d[c - 1].clone())
        };
        RecordRow {
            run: m.runs[cell.run as usize].id.clone(),
            gpu: m.gpus[cell.gpu as usize].clone(),
            cache_mode: cell.cache_mode,
            concurrency: cell.concurrency,
            traj: self.column(Field::Traj).code(i),
            traj_id: m.traj_ids[self.column(Field::TrajId).code(i) as usize].clone(),
            turn: self.column(Field::Turn).code(i),
            t_send: v(Field::TSend).unwrap_or(f64::NAN),
            ttft: v(Field::Ttft),
            server_ttft: v(Field::ServerTtft),
            e2e: v(Field::E2e),
            itl_mean: v(Field::ItlMean),
            itl_p99: v(Field::ItlP99),
            prompt_tokens: v(Field::PromptTokens),
            cached_tokens: v(Field::CachedTokens),
            completion_tokens: v(Field::CompletionTokens),
            think_time: v(Field::ThinkTime),
            finish_reason: dict(Field::FinishReason, &m.finish_reasons),
            error: dict(Field::Error, &m.errors),
            retractions: v(Field::Retractions),
        }
    }
}

/// The [`bucket`] of every row of a `t_send` column (missing times fall in the first).
pub(crate) fn buckets(t_send: &Column) -> Vec<u32> {
    match t_send {
        // For an `f32` time, `t × 0.1` truncates like `⌊t / 10⌋` (the product's rounding
        // error, ~1e-16 relative, is far below the gap between an `f32` over 10 and the next
        // integer, and 0.1 rounds up, so an exact multiple never falls below), and it is
        // cheaper than a division; `as` saturates (negative and NaN → bucket 0) like
        // [`bucket`].
        Column::F32(v) => {
            const _: () = assert!(BUCKET_S == 10.0);
            v.iter().map(|t| (*t as f64 * 0.1) as u32).collect()
        }
        other => (0..other.len())
            .map(|i| bucket(other.value(i).unwrap_or(0.0)))
            .collect(),
    }
}

/// The 10 s bucket of a `t_send` (NaN and negative times fall in the first).
fn bucket(t_send: f64) -> u32 {
    // `as` saturates (negative and NaN → 0, huge → `u32::MAX`), and truncation is the floor
    // of the rest.
    (t_send / BUCKET_S) as u32
}

fn cache_mode_code(m: CacheMode) -> u32 {
    CacheMode::ALL.iter().position(|x| *x == m).unwrap_or(0) as u32
}

/// `agg` of `values` (no NaN, any order; percentiles reorder them).
pub fn aggregate(agg: Agg, values: &mut [f64]) -> Option<f64> {
    if let Some(q) = agg.quantile() {
        return percentile(values, q);
    }
    match agg {
        Agg::Count => Some(values.len() as f64),
        Agg::Sum => (!values.is_empty()).then(|| values.iter().sum()),
        Agg::Mean => stats::mean(values),
        Agg::Min => values.iter().copied().reduce(f64::min),
        Agg::Max => values.iter().copied().reduce(f64::max),
        Agg::P50 | Agg::P90 | Agg::P99 => None,
    }
}

/// [`stats::percentile_sorted`] without sorting everything: the definition reads only the
/// order statistics at ranks `floor(h)` and `floor(h) + 1` (`h = (n - 1) q / 100`), so those
/// two are put in place by selection (linear time) and the schema's function interpolates.
/// `values` must hold no NaN; they are reordered.
pub fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let h = (n - 1) as f64 * q.clamp(0.0, 100.0) / 100.0;
    let lo = (h.floor() as usize).min(n - 1);
    if n - lo <= 2 {
        // A high percentile of a small group (p99 of up to 100 values reads the two
        // largest): one pass finds the two largest and puts them last.
        let (mut k1, mut i1, mut k2, mut i2) = (i64::MIN, 0, i64::MIN, 0);
        for (i, x) in values.iter().enumerate() {
            let k = total_key(*x);
            if k > k1 {
                (k2, i2, k1, i1) = (k1, i1, k, i);
            } else if k > k2 {
                (k2, i2) = (k, i);
            }
        }
        values.swap(i1, n - 1);
        if n >= 2 {
            values.swap(if i2 == n - 1 { i1 } else { i2 }, n - 2);
        }
        return stats::percentile_sorted(values, q);
    }
    if n <= SMALL_GROUP {
        // Tiny groups (thousands of them in a time-bucketed view): an insertion sort costs
        // less than two selections.
        insertion_sort(values);
        return stats::percentile_sorted(values, q);
    }
    values.select_nth_unstable_by(lo, f64::total_cmp);
    if lo + 1 < n {
        values[lo + 1..].select_nth_unstable_by(0, f64::total_cmp);
    }
    stats::percentile_sorted(values, q)
}

/// `x` as an integer ordered like [`f64::total_cmp`] orders the floats.
#[inline]
fn total_key(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

/// Up to this many values, [`percentile`] sorts them all by insertion.
const SMALL_GROUP: usize = 24;

/// Sorts `values` in [`f64::total_cmp`] order by insertion (fast for a few dozen values).
fn insertion_sort(values: &mut [f64]) {
    for i in 1..values.len() {
        let x = values[i];
        let mut j = i;
        while j > 0 && values[j - 1].total_cmp(&x).is_gt() {
            values[j] = values[j - 1];
            j -= 1;
        }
        values[j] = x;
    }
}

/// `count`, `sum`, `mean`, `min` or `max` of a group folded value by value, in the order
/// [`aggregate`] reads a group's values, so the result is the same to the bit.
#[derive(Debug, Clone, Copy)]
struct Fold {
    sum: f64,
    min: f64,
    max: f64,
}

impl Fold {
    fn new(agg: Agg) -> Fold {
        Fold {
            // `Iterator::sum` of `f64` starts from -0.0, `stats::mean` from 0.0.
            sum: if agg == Agg::Sum { -0.0 } else { 0.0 },
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// `x` is not NaN (so comparisons do what `f64::min` / `f64::max` do, without the
    /// libm call they become in WebAssembly).
    #[inline]
    fn add(&mut self, x: f64) {
        self.sum += x;
        if x < self.min {
            self.min = x;
        }
        if x > self.max {
            self.max = x;
        }
    }

    fn value(&self, agg: Agg, n: u32) -> Option<f64> {
        if agg == Agg::Count {
            return Some(n as f64);
        }
        (n > 0).then_some(match agg {
            Agg::Sum => self.sum,
            Agg::Mean => self.sum / n as f64,
            Agg::Min => self.min,
            _ => self.max,
        })
    }
}

/// Puts the order statistic of each rank of `ranks` (ascending, distinct, `< values.len()`)
/// at its place in `values`: select the middle rank, then the lower ranks left of it and the
/// higher ones right of it, so each level of the recursion reads the values once.
fn place_ranks(values: &mut [f64], ranks: &[usize]) {
    place_ranks_from(values, 0, ranks);
}

/// [`place_ranks`] of `values`, the part of a slice that starts at rank `base`.
fn place_ranks_from(values: &mut [f64], base: usize, ranks: &[usize]) {
    if ranks.is_empty() {
        return;
    }
    let mid = ranks.len() / 2;
    let r = ranks[mid] - base;
    values.select_nth_unstable_by(r, f64::total_cmp);
    let (left, right) = values.split_at_mut(r);
    place_ranks_from(left, base, &ranks[..mid]);
    place_ranks_from(&mut right[1..], base + r + 1, &ranks[mid + 1..]);
}

/// Min, quartiles and max of `values` (no NaN, any order; reordered): the ranks that
/// [`stats::percentile_sorted`] reads are put in place by selection, so it reads the same
/// numbers as from the sorted values.
fn box_stats(values: &mut [f64]) -> Option<BoxStats> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mut ranks = vec![0, n - 1];
    for q in [25.0, 50.0, 75.0] {
        let lo = (((n - 1) as f64 * q / 100.0).floor() as usize).min(n - 1);
        ranks.extend([lo, (lo + 1).min(n - 1)]);
    }
    ranks.sort_unstable();
    ranks.dedup();
    place_ranks(values, &ranks);
    Some(BoxStats {
        min: values[0],
        q1: stats::percentile_sorted(values, 25.0)?,
        median: stats::percentile_sorted(values, 50.0)?,
        q3: stats::percentile_sorted(values, 75.0)?,
        max: values[n - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan's time bucket of an `f32` time (`t × 0.1`, truncated) is [`bucket`]'s.
    #[test]
    fn f32_time_buckets_by_multiplication_equal_the_division() {
        let check = |t: f32| {
            assert_eq!(
                (t as f64 * 0.1) as u32,
                bucket(t as f64),
                "t = {t} ({:#x})",
                t.to_bits()
            );
        };
        // Exact multiples of 10 and their neighbours, up to 10^8 s.
        for k in 0..10_000_000u32 {
            let t = (k * 10) as f32;
            check(t);
            check(f32::from_bits(t.to_bits().wrapping_sub(1)));
            check(f32::from_bits(t.to_bits() + 1));
        }
        // A spread of every finite non-negative `f32`.
        for bits in (0..0x7f80_0000u32).step_by(1009) {
            check(f32::from_bits(bits));
        }
        for t in [
            f32::NAN,
            -0.0,
            -1.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::MAX,
        ] {
            check(t);
        }
    }
}
