//! The turnbench runner library.
//!
//! Modules:
//! - [`sim`]: the simulated SGLang engine (cost model, radix cache, scheduler) and its HTTP
//!   front (`runner serve-sim`).
pub mod sim;
