//! Running a [`Query`] over a [`Table`]: filter, group (and split), aggregate.
//!
//! Aggregates skip records that failed (`error` set) or that lack the metric (e.g.
//! `cached_tokens` not reported), and every group says how many it skipped. Percentiles are
//! [`turnbench_schema::stats`]'s single definition, so a p90 here equals the report's p90 of
//! the same records (up to the `f32` storage of times, see [`crate::table`]).

use crate::query::{Agg, Chart, Dim, Metric, Query};
use crate::table::{CellInfo, Field, Table};
use serde::Serialize;
use std::collections::HashMap;
use turnbench_schema::stats;
use turnbench_schema::CacheMode;

/// Width of a [`Dim::TimeBucket`] bucket, seconds of `t_send`.
pub const BUCKET_S: f64 = 10.0;

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
    pub group_label: String,
    pub series: Option<String>,
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
            && f
                .error
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
            Dim::TimeBucket => {
                let t = self.column(Field::TSend).value(i).unwrap_or(0.0);
                (t / BUCKET_S).floor().clamp(0.0, u32::MAX as f64) as u32
            }
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
                (
                    start.to_string(),
                    format!("{start}–{} s", start + BUCKET_S),
                )
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
            Dim::TimeBucket => {
                let t: f64 = raw.parse().ok()?;
                Some((t / BUCKET_S).floor().clamp(0.0, u32::MAX as f64) as u32)
            }
        }
    }

    /// `metric` of row `i`; `None` when the record lacks what it needs.
    #[inline]
    pub fn metric(&self, metric: Metric, i: usize) -> Option<f64> {
        let v = |f: Field| self.column(f).value(i);
        match metric {
            Metric::Ttft => v(Field::Ttft),
            Metric::E2e => v(Field::E2e),
            Metric::ItlMean => v(Field::ItlMean),
            Metric::ItlP99 => v(Field::ItlP99),
            Metric::PromptTokens => v(Field::PromptTokens),
            Metric::CachedTokens => v(Field::CachedTokens),
            Metric::CompletionTokens => v(Field::CompletionTokens),
            Metric::ThinkTime => v(Field::ThinkTime),
            Metric::Tpot => {
                let n = v(Field::CompletionTokens)?;
                (n >= 2.0).then_some(())?;
                Some((v(Field::E2e)? - v(Field::Ttft)?) / (n - 1.0))
            }
            Metric::NewPromptTokens => {
                Some((v(Field::PromptTokens)? - v(Field::CachedTokens)?).max(0.0))
            }
            Metric::CacheHitRatio => {
                let p = v(Field::PromptTokens)?;
                let c = v(Field::CachedTokens)?;
                (p > 0.0).then(|| c / p)
            }
            Metric::OutputTokPerS => {
                let e2e = v(Field::E2e)?;
                let n = v(Field::CompletionTokens)?;
                (e2e > 0.0).then(|| n / e2e)
            }
        }
    }

    /// Run `query`: filter, group, aggregate. Rows are ordered by group, then series.
    pub fn view(&self, query: &Query) -> View {
        let sel = Selection::new(self, query);
        let err_col = self.column(Field::Error);
        let mut index: HashMap<(u32, u32), usize> = HashMap::new();
        let mut groups: Vec<((u32, u32), Vec<f64>, u64)> = Vec::new();
        let mut last: Option<((u32, u32), usize)> = None;
        let (mut matched, mut skipped_error, mut skipped_missing) = (0u64, 0u64, 0u64);
        for i in 0..self.rows() {
            if !sel.keeps(i) {
                continue;
            }
            matched += 1;
            let key = (
                self.key(query.group, i),
                query.series.map_or(0, |s| self.key(s, i)),
            );
            let g = match last {
                Some((k, g)) if k == key => g,
                _ => {
                    let g = *index.entry(key).or_insert_with(|| {
                        groups.push((key, Vec::new(), 0));
                        groups.len() - 1
                    });
                    last = Some((key, g));
                    g
                }
            };
            if err_col.code(i) != 0 {
                skipped_error += 1;
                groups[g].2 += 1;
                continue;
            }
            match self.metric(query.metric, i) {
                Some(x) if !x.is_nan() => groups[g].1.push(x),
                _ => {
                    skipped_missing += 1;
                    groups[g].2 += 1;
                }
            }
        }
        groups.sort_unstable_by_key(|g| g.0);
        let rows = groups
            .into_iter()
            .map(|((gk, sk), mut values, skipped)| {
                let (group, group_label) = self.key_text(query.group, gk);
                let (series, series_label) = match query.series {
                    Some(s) => {
                        let (a, b) = self.key_text(s, sk);
                        (Some(a), Some(b))
                    }
                    None => (None, None),
                };
                if query.agg.quantile().is_some() || query.chart == Chart::Box {
                    values.sort_unstable_by(f64::total_cmp);
                }
                let dist = (query.chart == Chart::Box).then(|| box_stats(&values)).flatten();
                Row {
                    group,
                    group_label,
                    series,
                    series_label,
                    value: aggregate(query.agg, &values),
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
            matched,
            used: rows.iter().map(|r| r.n).sum(),
            skipped_error,
            skipped_missing,
            rows,
        }
    }

    /// The records of one point of `query`'s view: group `group` (raw value) and, when the
    /// view is split, series `series`; the first `limit` of them in table order.
    pub fn records(&self, query: &Query, group: &str, series: Option<&str>, limit: usize) -> Records {
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

fn cache_mode_code(m: CacheMode) -> u32 {
    CacheMode::ALL.iter().position(|x| *x == m).unwrap_or(0) as u32
}

/// `agg` of `values` (no NaN; sorted ascending when `agg` is a percentile).
pub fn aggregate(agg: Agg, values: &[f64]) -> Option<f64> {
    if let Some(q) = agg.quantile() {
        return stats::percentile_sorted(values, q);
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

fn box_stats(sorted: &[f64]) -> Option<BoxStats> {
    Some(BoxStats {
        min: *sorted.first()?,
        q1: stats::percentile_sorted(sorted, 25.0)?,
        median: stats::percentile_sorted(sorted, 50.0)?,
        q3: stats::percentile_sorted(sorted, 75.0)?,
        max: *sorted.last()?,
    })
}
