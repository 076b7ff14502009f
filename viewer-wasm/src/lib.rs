//! viewer-wasm: the query engine of the site's offline per-turn viewer (`viewer.html`).
//!
//! Plain Rust, tested natively; the browser reaches it through the one boundary file.
//! - [`table`]: the columnar table of per-turn records (typed columns, dictionary-encoded
//!   strings), how `report` encodes it into the site's data scripts and how the page loads
//!   it back.
//! - [`query`]: what the reader asked for (filters, group, series, metric, aggregate,
//!   chart), parsed from and written to the URL hash.
//! - [`view`]: running a query: filter, group, aggregate with the schema crate's
//!   percentile; the records behind one point; CSV.
//! - [`options`]: what the page's controls offer for a given table.
//! - `wasm` (wasm32 only): the `#[wasm_bindgen]` exports, errors as `JsError`.

pub mod options;
pub mod query;
pub mod table;
pub mod view;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use query::{Agg, Chart, Dim, Filters, Metric, Query, QueryError, Range};
pub use table::{Field, Loader, Meta, RunSource, Table, TableError};
pub use view::{DimCodes, Groups, Records, Row, View};
