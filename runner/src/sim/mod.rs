//! The simulated SGLang engine (the embedded default backend).
//!
//! - [`cost`]: model shapes, GPU profiles and the calibrated step-time cost model.
//! - [`radix`]: the KV pool and its token-level radix prefix cache (LRU, reference counts).
//! - [`core`]: the pure scheduler: continuous batching in engine time, no I/O.
//! - [`engine`]: the engine handle: submit requests, receive per-step events in engine time.
//! - [`cli`]: `runner serve-sim` argument parsing (SGLang's flag names) and startup.
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
