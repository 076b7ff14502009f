//! viewer-wasm: the query engine of the offline per-turn viewer (not built yet).
