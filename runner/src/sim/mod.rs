//! The simulated SGLang engine (the embedded default backend).
//!
//! - [`cost`]: model shapes, GPU profiles and the calibrated step-time cost model.
//! - [`engine`]: the engine handle: submit requests, receive per-step events in engine time.
//! - [`cli`]: `runner serve-sim` argument parsing (SGLang's flag names) and startup.
pub mod cli;
pub mod cost;
pub mod engine;
