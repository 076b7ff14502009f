//! Running a [`Query`] over a [`Table`]: filter, group (and split), aggregate.
//!
//! Aggregates skip records that failed (`error` set) or that lack the metric (e.g.
//! `cached_tokens` not reported), and every group says how many it skipped. Percentiles are
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
    pub e2e: Option<f64>,
    pub itl_mean: Option<f64>,
    pub itl_p99: Option<f64>,
    pub prompt_tokens: Option<f64>,
    pub cached_tokens: Option<f64>,
    pub completion_tokens: Option<f64>,
    pub think_time: Option<f64>,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
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
    /// Which rows pass every filter, column by column.
    fn mask(&self) -> Vec<bool> {
        let t = self.table;
        let f = &self.query.filters;
        let mut keep = t
            .column(Field::Cell)
            .map_codes(|c| self.cell_ok[c as usize]);
        t.column(Field::FinishReason)
            .and_codes(&mut keep, |c| self.finish_ok[c as usize]);
        for (field, ranges) in [(Field::Turn, &f.turn), (Field::Traj, &f.traj)] {
            if !ranges.is_empty() {
                t.column(field)
                    .and_codes(&mut keep, |x| ranges.iter().any(|r| r.contains(x)));
            }
        }
        if let Some(want) = f.error {
            t.column(Field::Error)
                .and_codes(&mut keep, |c| (c != 0) == want);
        }
        keep
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
            Dim::TimeBucket => bucket(self.column(Field::TSend).value(i).unwrap_or(0.0)),
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

    /// The code of every row along `dim`.
    fn codes_of(&self, dim: Dim) -> Vec<u32> {
        let by_cell = |f: fn(&CellInfo) -> u32| {
            let lut: Vec<u32> = self.meta.cells.iter().map(f).collect();
            self.column(Field::Cell).map_codes(|c| lut[c as usize])
        };
        match dim {
            Dim::Turn => self.column(Field::Turn).map_codes(|c| c),
            Dim::Traj => self.column(Field::Traj).map_codes(|c| c),
            Dim::FinishReason => self.column(Field::FinishReason).map_codes(|c| c),
            Dim::Concurrency => by_cell(|c| c.concurrency),
            Dim::Gpu => by_cell(|c| c.gpu),
            Dim::Run => by_cell(|c| c.run),
            Dim::CacheMode => by_cell(|c| cache_mode_code(c.cache_mode)),
            Dim::TimeBucket => match self.column(Field::TSend) {
                Column::F32(v) => v.iter().map(|t| bucket(*t as f64)).collect(),
                other => other.values().into_iter().map(bucket).collect(),
            },
        }
    }

    /// `metric` of every row, NaN where missing.
    fn metric_values(&self, metric: Metric) -> Vec<f64> {
        let col = |f: Field| self.column(f).values();
        let zip = |a: Field, b: Field, op: fn(f64, f64) -> f64| -> Vec<f64> {
            let (a, b) = (col(a), col(b));
            a.iter().zip(&b).map(|(x, y)| op(*x, *y)).collect()
        };
        let nan_unless = |ok: bool, x: f64| if ok { x } else { f64::NAN };
        match metric {
            Metric::Ttft => col(Field::Ttft),
            Metric::E2e => col(Field::E2e),
            Metric::ItlMean => col(Field::ItlMean),
            Metric::ItlP99 => col(Field::ItlP99),
            Metric::PromptTokens => col(Field::PromptTokens),
            Metric::CachedTokens => col(Field::CachedTokens),
            Metric::CompletionTokens => col(Field::CompletionTokens),
            Metric::ThinkTime => col(Field::ThinkTime),
            Metric::NewPromptTokens => zip(Field::PromptTokens, Field::CachedTokens, |p, c| {
                // `f64::max` would turn a missing (NaN) count into 0.
                if p.is_nan() || c.is_nan() {
                    f64::NAN
                } else {
                    (p - c).max(0.0)
                }
            }),
            Metric::CacheHitRatio => zip(Field::PromptTokens, Field::CachedTokens, |p, c| {
                if p > 0.0 {
                    c / p
                } else {
                    f64::NAN
                }
            }),
            Metric::OutputTokPerS => zip(Field::CompletionTokens, Field::E2e, |n, e2e| {
                if e2e > 0.0 {
                    n / e2e
                } else {
                    f64::NAN
                }
            }),
            Metric::Tpot => {
                let spans = zip(Field::E2e, Field::Ttft, |e2e, ttft| e2e - ttft);
                let n = col(Field::CompletionTokens);
                spans
                    .iter()
                    .zip(&n)
                    .map(|(span, n)| nan_unless(*n >= 2.0, span / (n - 1.0)))
                    .collect()
            }
        }
    }

    /// Run `query`: filter, group, aggregate. Rows are ordered by group, then series.
    pub fn view(&self, query: &Query) -> View {
        let keep = Selection::new(self, query).mask();
        let group_codes = self.codes_of(query.group);
        let series_codes = match query.series {
            Some(s) => self.codes_of(s),
            None => vec![0; self.rows()],
        };
        let values = self.metric_values(query.metric);
        let errors = self.column(Field::Error).map_codes(|c| c != 0);

        let series_card = query.series.map_or(1, |s| self.cardinality(s));
        let slots = self.cardinality(query.group) * series_card;
        // Group index by (group, series) code: a dense table when small, a map otherwise.
        let mut dense: Vec<u32> = if slots <= DENSE_SLOTS {
            vec![u32::MAX; slots as usize]
        } else {
            Vec::new()
        };
        let mut sparse: HashMap<(u32, u32), u32> = HashMap::new();
        let mut groups: Vec<((u32, u32), Vec<f64>, u64)> = Vec::new();
        let (mut matched, mut skipped_error, mut skipped_missing) = (0u64, 0u64, 0u64);
        let rows = keep
            .iter()
            .zip(&group_codes)
            .zip(&series_codes)
            .zip(values.iter().zip(&errors));
        for (((&kept, &gk), &sk), (&x, &failed)) in rows {
            if !kept {
                continue;
            }
            matched += 1;
            let key = (gk, sk);
            let mut new_group = || {
                groups.push((key, Vec::new(), 0));
                groups.len() as u32 - 1
            };
            let g = if dense.is_empty() {
                *sparse.entry(key).or_insert_with(new_group)
            } else {
                let slot = &mut dense[(key.0 as u64 * series_card + key.1 as u64) as usize];
                if *slot == u32::MAX {
                    *slot = new_group();
                }
                *slot
            } as usize;
            if failed {
                skipped_error += 1;
                groups[g].2 += 1;
            } else if x.is_nan() {
                skipped_missing += 1;
                groups[g].2 += 1;
            } else {
                groups[g].1.push(x);
            }
        }
        groups.sort_unstable_by_key(|g| g.0);
        let rows = groups
            .into_iter()
            .map(|((gk, sk), mut values, skipped)| {
                let (group, group_label) = self.key_text(query.group, gk);
                let group_label = (group_label != group).then_some(group_label);
                let (series, series_label) = match query.series {
                    Some(s) => {
                        let (a, b) = self.key_text(s, sk);
                        let b = (b != a).then_some(b);
                        (Some(a), b)
                    }
                    None => (None, None),
                };
                let dist = (query.chart == Chart::Box)
                    .then(|| {
                        values.sort_unstable_by(f64::total_cmp);
                        box_stats(&values)
                    })
                    .flatten();
                Row {
                    group,
                    group_label,
                    series,
                    series_label,
                    value: aggregate(query.agg, &mut values),
                    n: values.len() as u64,
                    skipped,
                    dist,
                }
            })
            .collect::<Vec<_>>();
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
            matched,
            used: rows.iter().map(|r| r.n).sum(),
            skipped_error,
            skipped_missing,
            rows,
        }
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
            e2e: v(Field::E2e),
            itl_mean: v(Field::ItlMean),
            itl_p99: v(Field::ItlP99),
            prompt_tokens: v(Field::PromptTokens),
            cached_tokens: v(Field::CachedTokens),
            completion_tokens: v(Field::CompletionTokens),
            think_time: v(Field::ThinkTime),
            finish_reason: dict(Field::FinishReason, &m.finish_reasons),
            error: dict(Field::Error, &m.errors),
        }
    }
}

/// The 10 s bucket of a `t_send` (NaN and negative times fall in the first).
fn bucket(t_send: f64) -> u32 {
    if t_send.is_nan() {
        return 0;
    }
    (t_send / BUCKET_S).floor().clamp(0.0, u32::MAX as f64) as u32
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
    values.select_nth_unstable_by(lo, f64::total_cmp);
    if lo + 1 < n {
        values[lo + 1..].select_nth_unstable_by(0, f64::total_cmp);
    }
    stats::percentile_sorted(values, q)
}

fn box_stats(sorted: &[f64]) -> Option<BoxStats> {
    Some(BoxStats {
        min: *sorted.first()?,
        q1: stats::percentile_sorted(sorted, 25.0)?,
        median: stats::percentile_sorted(sorted, 50.0)?,
        q3: stats::percentile_sorted(sorted, 75.0)?,
        max: *sorted.last()?,
    })
}
