//! Model shapes, GPU profiles and the step-time cost model. (STUB: numbers to be calibrated.)

use serde::Serialize;

/// The shape of a served model, enough to cost its steps and size its KV cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelProfile {
    /// Built-in name (e.g. `qwen2.5-14b`) or the `--model-path` given.
    pub name: String,
    pub hidden: u64,
    pub layers: u64,
    pub q_heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub intermediate: u64,
    pub vocab: u64,
    pub weight_bytes: u64,
    pub kv_bytes_per_token: u64,
    pub context_length: u64,
}

impl ModelProfile {
    /// A built-in model by name (`qwen2.5-14b`, …).
    pub fn builtin(name: &str) -> Option<ModelProfile> {
        match name {
            "qwen2.5-14b" | "Qwen/Qwen2.5-14B-Instruct" => Some(ModelProfile {
                name: name.to_string(),
                hidden: 5120,
                layers: 48,
                q_heads: 40,
                kv_heads: 8,
                head_dim: 128,
                intermediate: 13824,
                vocab: 152064,
                weight_bytes: 29_540_067_328,
                kv_bytes_per_token: 196_608,
                context_length: 32768,
            }),
            _ => None,
        }
    }
}

/// A GPU's capabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuProfile {
    /// `h100`, `h200`, `a100-80gb`, `a100-40gb`, …
    pub name: String,
    pub mem_bytes: u64,
}

impl GpuProfile {
    pub fn builtin(name: &str) -> Option<GpuProfile> {
        let gb = 1u64 << 30;
        let mem = match name {
            "h100" => 80 * gb,
            "h200" => 141 * gb,
            "a100-80gb" => 80 * gb,
            "a100-40gb" => 40 * gb,
            _ => return None,
        };
        Some(GpuProfile {
            name: name.to_string(),
            mem_bytes: mem,
        })
    }
}
