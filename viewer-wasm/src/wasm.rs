//! The JavaScript boundary: every `#[wasm_bindgen]` export of the crate. Errors cross as
//! `JsError` with the engine's message; results cross as JSON strings.

use crate::query::Query;
use crate::table::{Loader, Table};
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
