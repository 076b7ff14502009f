//! The JavaScript boundary: every `#[wasm_bindgen]` export of the crate. Errors cross as
//! `JsError` with the engine's message; small results cross as JSON strings, a view's
//! per-group numbers as typed arrays ([`ViewColumns`]), so thousands of groups cost no string
//! building or parsing.

use crate::query::Query;
use crate::table::{Loader, Table};
use crate::view::{DimCodes, Groups, View};
use wasm_bindgen::prelude::*;

/// Collects the data scripts' chunks, then becomes a [`Viewer`].
#[wasm_bindgen]
pub struct ViewerLoader(Loader);

#[wasm_bindgen]
impl ViewerLoader {
    /// Start from the JSON of the table's metadata.
    #[wasm_bindgen(constructor)]
    pub fn new(meta_json: &str) -> Result<ViewerLoader, JsError> {
        Ok(ViewerLoader(Loader::from_json(meta_json)?))
    }

    /// Add chunk `chunk` of column `column` (base64 of its little-endian values).
    pub fn add_chunk(&mut self, column: &str, chunk: u32, b64: &str) -> Result<(), JsError> {
        Ok(self.0.add_chunk(column, chunk as usize, b64)?)
    }

    /// Check that everything arrived and start querying.
    pub fn finish(self) -> Result<Viewer, JsError> {
        Ok(Viewer(self.0.finish()?))
    }
}

/// The loaded table.
#[wasm_bindgen]
pub struct Viewer(Table);

fn json<T: serde::Serialize>(value: &T) -> Result<String, JsError> {
    serde_json::to_string(value).map_err(|e| JsError::new(&e.to_string()))
}

#[wasm_bindgen]
impl Viewer {
    /// The controls' choices (JSON of `options::Options`).
    pub fn options(&self) -> Result<String, JsError> {
        json(&self.0.options())
    }

    /// Run the query of URL hash `hash` (JSON of `view::View`).
    pub fn query(&self, hash: &str) -> Result<String, JsError> {
        json(&self.0.view(&Query::parse(hash)?))
    }

    /// Run the query of URL hash `hash`, its groups as typed arrays (see [`ViewColumns`]).
    pub fn query_columns(&self, hash: &str) -> Result<ViewColumns, JsError> {
        let q = Query::parse(hash)?;
        let groups = self.0.aggregate(&q);
        let header = Header {
            view: self.0.view_header(&q, &groups),
            group_codes: self.0.dim_codes(q.group),
            series_codes: q.series.map(|s| self.0.dim_codes(s)),
        };
        Ok(ViewColumns {
            header: json(&header)?,
            groups,
        })
    }

    /// The view of `hash` as CSV.
    pub fn csv(&self, hash: &str) -> Result<String, JsError> {
        Ok(self.0.view(&Query::parse(hash)?).to_csv())
    }

    /// The first `limit` records behind one point (JSON of `view::Records`).
    pub fn records(
        &self,
        hash: &str,
        group: &str,
        series: Option<String>,
        limit: u32,
    ) -> Result<String, JsError> {
        let q = Query::parse(hash)?;
        json(&self.0.records(&q, group, series.as_deref(), limit as usize))
    }
}

/// A view's header and how its codes read: JSON of `view::View` without rows, plus
/// `group_codes` and `series_codes` (JSON of `view::DimCodes`).
#[derive(serde::Serialize)]
struct Header {
    #[serde(flatten)]
    view: View,
    group_codes: DimCodes,
    series_codes: Option<DimCodes>,
}

/// One view, column by column: row `i` is (group code `group()[i]`, series code
/// `series()[i]`), ordered by group then series; codes read through the header's
/// `group_codes` / `series_codes`.
#[wasm_bindgen]
pub struct ViewColumns {
    header: String,
    groups: Groups,
}

#[wasm_bindgen]
impl ViewColumns {
    /// JSON of the header (see [`Header`]).
    pub fn header(&self) -> String {
        self.header.clone()
    }

    pub fn group(&self) -> Vec<u32> {
        self.groups.group.clone()
    }

    pub fn series(&self) -> Vec<u32> {
        self.groups.series.clone()
    }

    /// The aggregate of each row, NaN where there is none.
    pub fn value(&self) -> Vec<f64> {
        self.groups
            .value
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect()
    }

    /// Records aggregated, per row.
    pub fn n(&self) -> Vec<f64> {
        self.groups.n.iter().map(|x| *x as f64).collect()
    }

    /// Records skipped, per row.
    pub fn skipped(&self) -> Vec<f64> {
        self.groups.skipped.iter().map(|x| *x as f64).collect()
    }

    /// Box statistics, five per row (min, q1, median, q3, max; NaN for an empty group);
    /// empty unless the chart is `box`.
    pub fn dist(&self) -> Vec<f64> {
        self.groups
            .dist
            .iter()
            .flat_map(|d| match d {
                Some(d) => [d.min, d.q1, d.median, d.q3, d.max],
                None => [f64::NAN; 5],
            })
            .collect()
    }
}
