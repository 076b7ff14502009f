//! What the page's controls offer: every dimension, metric, aggregate and chart with its
//! hash key and label, and the values present in the table for each filter.

use crate::query::{Agg, Chart, Dim, Metric};
use crate::table::{Field, Table};
use serde::Serialize;
use std::collections::BTreeSet;

/// A choice of a `<select>`: the hash value and what the reader sees.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub key: String,
    pub label: String,
}

fn choices<T: Copy>(
    all: &[T],
    key: fn(T) -> &'static str,
    label: fn(T) -> &'static str,
) -> Vec<Choice> {
    all.iter()
        .map(|x| Choice {
            key: key(*x).to_string(),
            label: label(*x).to_string(),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Options {
    pub rows: u64,
    pub dims: Vec<Choice>,
    pub metrics: Vec<Choice>,
    pub aggs: Vec<Choice>,
    pub charts: Vec<Choice>,
    pub run: Vec<Choice>,
    pub gpu: Vec<Choice>,
    pub cache_mode: Vec<Choice>,
    pub concurrency: Vec<Choice>,
    pub finish_reason: Vec<Choice>,
    pub traj_max: Option<u32>,
    pub turn_max: Option<u32>,
    pub simulated: bool,
}

impl Table {
    /// The controls' choices for this table.
    pub fn options(&self) -> Options {
        let m = &self.meta;
        let same = |s: String| Choice {
            key: s.clone(),
            label: s,
        };
        let max = |f: Field| {
            let c = self.column(f);
            (0..c.len()).map(|i| c.code(i)).max()
        };
        let modes: BTreeSet<_> = m.cells.iter().map(|c| c.cache_mode).collect();
        let conc: BTreeSet<u32> = m.cells.iter().map(|c| c.concurrency).collect();
        // "(none)" (no finish reason: mostly failed turns) only when some record has none.
        let fr = self.column(Field::FinishReason);
        let mut finish = Vec::new();
        if (0..fr.len()).any(|i| fr.code(i) == 0) {
            finish.push(Choice {
                key: String::new(),
                label: "(none)".to_string(),
            });
        }
        finish.extend(m.finish_reasons.iter().cloned().map(same));
        Options {
            rows: m.rows,
            dims: choices(Dim::ALL, Dim::key, Dim::label),
            metrics: choices(Metric::ALL, Metric::key, Metric::label),
            aggs: choices(Agg::ALL, Agg::key, Agg::label),
            charts: choices(Chart::ALL, Chart::key, Chart::label),
            run: m
                .runs
                .iter()
                .map(|r| Choice {
                    key: r.id.clone(),
                    label: if r.simulated {
                        format!("{} (simulated)", r.id)
                    } else {
                        r.id.clone()
                    },
                })
                .collect(),
            gpu: m.gpus.iter().cloned().map(same).collect(),
            cache_mode: modes.iter().map(|c| same(c.as_str().to_string())).collect(),
            concurrency: conc.iter().map(|c| same(c.to_string())).collect(),
            finish_reason: finish,
            traj_max: max(Field::Traj),
            turn_max: max(Field::Turn),
            simulated: m.runs.iter().any(|r| r.simulated),
        }
    }
}
