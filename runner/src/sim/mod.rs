//! The simulated SGLang engine (the embedded default backend).
//!
//! - [`cost`]: model shapes, GPU profiles and the calibrated step-time cost model.
//! - [`radix`]: the KV pool and its token-level radix prefix cache (LRU, reference counts).
//! - [`core`]: the pure scheduler: continuous batching in engine time, no I/O.
//! - [`engine`]: the engine handle: submit requests, receive per-step events in engine time.
//! - [`cli`]: `runner serve-sim` argument parsing (SGLang's flag names) and startup.
//! - [`server`]: the HTTP front (axum): every route of SGLang's protocol, SSE, auth, faults.
//! - [`protocol`]: SGLang's request, response, chunk and error shapes.
//! - [`tokenizer`]: the built-in deterministic tokenizer, or a HF `tokenizer.json`.
//! - [`textgen`]: the planned output of a request: deterministic pseudo-text, lengths, stops.
//! - [`template`]: the ChatML chat template of the OpenAI routes.
//! - [`session`]: `/open_session` and the `session_params` history concatenation.
//! - [`faults`]: `--sim-fault` injected errors, stalls, drops, malformed chunks, exits.
//! - [`metrics`]: `/metrics` with SGLang's `sglang:` series.
pub mod cli;
pub mod core;
pub mod cost;
pub mod engine;
pub mod faults;
pub mod metrics;
pub mod protocol;
pub mod radix;
pub mod server;
pub mod session;
pub mod template;
pub mod textgen;
pub mod tokenizer;
