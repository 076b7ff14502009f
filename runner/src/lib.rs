//! The turnbench runner library.
//!
//! Modules:
//! - [`sim`]: the simulated SGLang engine (cost model, radix cache, scheduler) and its HTTP
//!   front (`runner serve-sim`).
//! - [`conversation`], [`chat_template`]: the text of each native `/generate` request, templated
//!   client-side with the built-in ChatML or the Jinja template of `--chat-template`.
pub mod sim;
// `runner sweep` and `runner pack`:
pub mod arrival;
pub mod backend;
pub mod chat_template;
pub mod client;
pub mod console;
pub mod conversation;
pub mod driver;
pub mod pack;
pub mod plan;
pub mod record;
pub mod sweep;
pub mod telemetry;
pub mod wire;
pub mod workload;
