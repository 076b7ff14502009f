//! Model shapes, GPU profiles and the step-time cost model of the simulated engine.
//!
//! A step's time is built from the physics of a transformer forward pass on one GPU, with
//! efficiency constants calibrated on real H100 measurements of Qwen2.5-14B
//! (`runner/calibration/h100-qwen2.5-14b.json`, checked by the calibration test to within
//! 10 % at every measured point). Let `BW` be the HBM bandwidth, `F` the dense bf16 peak,
//! `L` the layer count, `W` the weight bytes read by a forward pass (all weights but the input
//! embedding), `Pm` the matmul parameters (lm_head excluded), `kvb` the KV bytes per token.
//!
//! - **Linear layers** (`T` tokens in the batch, `r` rows through the lm_head):
//!   `max(W / (BW·e_w), 2·(Pm·T + V·H·r) / (F·e_gemm)) + L·t_layer + T·a·L·(H+I)·2 / (BW·e_w)`:
//!   a weight stream or a GEMM roofline, a fixed per-layer cost (norms, RoPE, launch gaps
//!   inside the CUDA graph) and `a` activation passes per token over the hidden and
//!   intermediate vectors (unfused elementwise work).
//! - **Decode attention** (`B` sequences with contexts `c_i`):
//!   `L·t_attn + Σc_i·kvb / (BW·e_kv) + B·L·t_seq`: a KV read at an efficiency that is higher while all `B × kv_heads` work
//!   units fit in one wave on the SMs (split-KV keeps every SM streaming) than beyond.
//! - **Prefill attention** (`n_i` new tokens over `p_i` cached, causal):
//!   `L·t_attn + Σ 4·L·q_heads·head_dim·n_i·(p_i + (n_i+1)/2) / (F·e_attn·u)`, where `u` is
//!   the wave utilisation of the kernel's `q_heads·⌈n/128⌉` blocks on the SMs,
//!   `u = blocks / (blocks + SMs/2)` (half a wave lost on average), or a constant when the
//!   grid is so small that the kernel splits the keys instead.
//!
//! A step that holds both a prefill batch and a decode batch costs the sum of the two forward
//! passes.
//!
//! **Tensor parallelism** (`--tp-size N`, Megatron-style as SGLang shards): each GPU holds
//! `1/N` of every linear layer (column-parallel q/k/v, gate/up and the vocab-parallel lm_head;
//! row-parallel o_proj and down_proj) and `⌈kv_heads/N⌉` KV heads (heads are replicated when
//! `N > kv_heads`). So per GPU the weight stream, the GEMM FLOPs, the intermediate half of the
//! activation traffic and the attention FLOPs are divided by `N`, the KV read by
//! `kv_heads / ⌈kv_heads/N⌉`; the fixed per-layer kernel costs stay (every GPU runs every
//! kernel). Each layer then adds **two all-reduces** of the `T × hidden` bf16 activations
//! (after o_proj and after down_proj), each costed as a ring all-reduce over NVLink:
//! `t_ar + 2·(N−1)/N · T·hidden·2 / (link_bw · e_link)` with a fixed `t_ar` = 8 µs (SGLang's
//! custom all-reduce on small messages) and `e_link` = 0.7 of the per-direction NVLink
//! bandwidth. These two constants are assumptions, not fitted: the calibration table is TP1,
//! where the model is unchanged. The other GPUs reuse the H100 efficiencies, except the A100s whose GEMM and
//! attention efficiencies follow the calibration file's `a100_scaling.A100_efficiency_adjusted`
//! ratios (A100 time = H100 time × ratio). The roofline helpers at the bottom use datasheet
//! peaks only: they are the physical limits a run is reported against.

use serde::Serialize;
use thiserror::Error;

const BF16_BYTES: u64 = 2;

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
    /// bf16 bytes of all parameters.
    pub weight_bytes: u64,
    /// bf16 K and V bytes of one token over all layers.
    pub kv_bytes_per_token: u64,
    pub context_length: u64,
}

/// Why a HF `config.json` could not be read as a model shape.
#[derive(Debug, Error, PartialEq)]
pub enum ModelConfigError {
    #[error("config.json: missing or non-integer field `{0}`")]
    Missing(&'static str),
    #[error("config.json: field `{field}` must be positive (got {value})")]
    NotPositive { field: &'static str, value: u64 },
    #[error(
        "config.json: num_attention_heads ({q}) is not a multiple of num_key_value_heads ({kv})"
    )]
    Heads { q: u64, kv: u64 },
}

/// The dimensions a model profile is computed from.
struct Shape {
    hidden: u64,
    layers: u64,
    q_heads: u64,
    kv_heads: u64,
    head_dim: u64,
    intermediate: u64,
    vocab: u64,
    tied: bool,
    qkv_bias: bool,
    context_length: u64,
}

impl ModelProfile {
    /// A built-in model by name (`qwen2.5-14b`, `qwen2.5-7b`, `llama-3.1-8b`, or their HF ids).
    pub fn builtin(name: &str) -> Option<ModelProfile> {
        let shape = match name {
            "qwen2.5-14b" | "Qwen/Qwen2.5-14B-Instruct" | "Qwen/Qwen2.5-14B" => Shape {
                hidden: 5120,
                layers: 48,
                q_heads: 40,
                kv_heads: 8,
                head_dim: 128,
                intermediate: 13824,
                vocab: 152064,
                tied: false,
                qkv_bias: true,
                context_length: 32768,
            },
            "qwen2.5-7b" | "Qwen/Qwen2.5-7B-Instruct" | "Qwen/Qwen2.5-7B" => Shape {
                hidden: 3584,
                layers: 28,
                q_heads: 28,
                kv_heads: 4,
                head_dim: 128,
                intermediate: 18944,
                vocab: 152064,
                tied: false,
                qkv_bias: true,
                context_length: 32768,
            },
            "llama-3.1-8b" | "meta-llama/Llama-3.1-8B-Instruct" | "meta-llama/Llama-3.1-8B" => {
                Shape {
                    hidden: 4096,
                    layers: 32,
                    q_heads: 32,
                    kv_heads: 8,
                    head_dim: 128,
                    intermediate: 14336,
                    vocab: 128256,
                    tied: false,
                    qkv_bias: false,
                    context_length: 131072,
                }
            }
            _ => return None,
        };
        Some(Self::from_shape(name, &shape))
    }

    /// A model profile from a Hugging Face `config.json` (bf16 weights assumed). `head_dim`
    /// defaults to `hidden_size / num_attention_heads`, `num_key_value_heads` to the attention
    /// heads; the q/k/v projections carry a bias when `attention_bias` says so or, without that
    /// key, for `model_type: "qwen2"`.
    pub fn from_hf_config(
        name: &str,
        config: &serde_json::Value,
    ) -> Result<ModelProfile, ModelConfigError> {
        let int = |field: &'static str| -> Result<u64, ModelConfigError> {
            let value = config
                .get(field)
                .and_then(serde_json::Value::as_u64)
                .ok_or(ModelConfigError::Missing(field))?;
            if value == 0 {
                return Err(ModelConfigError::NotPositive { field, value });
            }
            Ok(value)
        };
        let opt_int = |field: &'static str| -> Result<Option<u64>, ModelConfigError> {
            match config.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(_) => int(field).map(Some),
            }
        };
        let hidden = int("hidden_size")?;
        let layers = int("num_hidden_layers")?;
        let q_heads = int("num_attention_heads")?;
        let kv_heads = opt_int("num_key_value_heads")?.unwrap_or(q_heads);
        if q_heads % kv_heads != 0 {
            return Err(ModelConfigError::Heads {
                q: q_heads,
                kv: kv_heads,
            });
        }
        let head_dim = opt_int("head_dim")?.unwrap_or(hidden / q_heads);
        if head_dim == 0 {
            return Err(ModelConfigError::NotPositive {
                field: "head_dim",
                value: 0,
            });
        }
        let qkv_bias = match config.get("attention_bias").and_then(|v| v.as_bool()) {
            Some(bias) => bias,
            None => config.get("model_type").and_then(|v| v.as_str()) == Some("qwen2"),
        };
        let shape = Shape {
            hidden,
            layers,
            q_heads,
            kv_heads,
            head_dim,
            intermediate: int("intermediate_size")?,
            vocab: int("vocab_size")?,
            tied: config
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            qkv_bias,
            context_length: int("max_position_embeddings")?,
        };
        Ok(Self::from_shape(name, &shape))
    }

    fn from_shape(name: &str, s: &Shape) -> ModelProfile {
        let q = s.q_heads * s.head_dim;
        let kv = s.kv_heads * s.head_dim;
        let bias = if s.qkv_bias { q + 2 * kv } else { 0 };
        let per_layer = s.hidden * q // q_proj
            + 2 * s.hidden * kv // k_proj, v_proj
            + bias
            + q * s.hidden // o_proj
            + 3 * s.hidden * s.intermediate // gate, up, down
            + 2 * s.hidden; // two RMSNorms
        let embed = s.vocab * s.hidden;
        let lm_head = if s.tied { 0 } else { embed };
        let params = embed + s.layers * per_layer + s.hidden + lm_head;
        ModelProfile {
            name: name.to_string(),
            hidden: s.hidden,
            layers: s.layers,
            q_heads: s.q_heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
            intermediate: s.intermediate,
            vocab: s.vocab,
            weight_bytes: params * BF16_BYTES,
            kv_bytes_per_token: 2 * s.layers * kv * BF16_BYTES,
            context_length: s.context_length,
        }
    }

    /// Parameters of the lm_head / embedding matrix.
    fn embedding_params(&self) -> u64 {
        self.vocab * self.hidden
    }

    /// Whether the lm_head is a separate matrix from the input embedding, inferred from the
    /// weight bytes: only an untied model holds two embeddings on top of its body (biases and
    /// norms are far smaller than one embedding matrix).
    fn untied_lm_head(&self) -> bool {
        let embed = self.embedding_params() * BF16_BYTES;
        self.weight_bytes >= 2 * embed + self.body_bytes_lower_bound()
    }

    /// Bytes of the transformer body without any bias (a lower bound on the body).
    fn body_bytes_lower_bound(&self) -> u64 {
        let q = self.q_heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        let per_layer =
            2 * self.hidden * q + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate;
        self.layers * per_layer * BF16_BYTES
    }

    /// Bytes a forward pass streams from the weights: everything but the input embedding
    /// table (only the batch's rows of it are read), unless it doubles as the lm_head.
    pub fn forward_weight_bytes(&self) -> u64 {
        if self.untied_lm_head() {
            self.weight_bytes - self.embedding_params() * BF16_BYTES
        } else {
            self.weight_bytes
        }
    }

    /// Parameters multiplied per token outside the lm_head (the transformer body).
    fn body_matmul_params(&self) -> f64 {
        let embeddings = if self.untied_lm_head() { 2 } else { 1 };
        (self.weight_bytes / BF16_BYTES).saturating_sub(embeddings * self.embedding_params()) as f64
    }
}

/// Efficiency constants of one GPU, fitted on (or scaled from) measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuEfficiency {
    /// Fraction of HBM bandwidth reached streaming weights and activations (H100: 0.78;
    /// the measured weight stream was 2.50–2.68 TB/s of 3.35).
    pub weight_stream: f64,
    /// Fraction of dense bf16 peak reached by the GEMMs (H100: 0.67, measured 650–780 TFLOP/s).
    pub gemm: f64,
    /// Fraction of dense bf16 peak reached by prefill attention (H100 FlashAttention-2: 0.337,
    /// measured 338 TFLOP/s).
    pub attention: f64,
    /// Wave utilisation of prefill attention when the grid is below 0.8 × SMs (split keys).
    pub attention_split_utilisation: f64,
    /// Fraction of HBM bandwidth reached reading the KV cache while the decode kernel's
    /// `batch × kv_heads` blocks fit in one wave.
    pub kv_read_one_wave: f64,
    /// The same beyond one wave.
    pub kv_read: f64,
    /// Fixed seconds per layer per forward pass outside attention.
    pub layer_overhead_s: f64,
    /// Fixed seconds per layer per attention kernel.
    pub attention_layer_overhead_s: f64,
    /// Seconds per sequence per layer in decode attention.
    pub sequence_layer_overhead_s: f64,
    /// Passes of bf16 elementwise traffic over `hidden + intermediate` per token per layer.
    pub activation_passes: f64,
}

impl GpuEfficiency {
    /// Fitted on the H100 table by a min-max search over all decode and prefill points.
    const H100: GpuEfficiency = GpuEfficiency {
        weight_stream: 0.78,
        gemm: 0.6692,
        attention: 0.3373,
        attention_split_utilisation: 0.8666,
        kv_read_one_wave: 0.9142,
        kv_read: 0.7265,
        layer_overhead_s: 39.94e-6,
        attention_layer_overhead_s: 11.62e-6,
        sequence_layer_overhead_s: 1.124e-9,
        activation_passes: 14.86,
    };
}

/// A GPU's capabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuProfile {
    /// `h100`, `h200`, `a100-80gb`, `a100-40gb`, …
    pub name: String,
    /// Device memory in bytes (as the CUDA runtime reports it).
    pub mem_bytes: u64,
    /// Datasheet HBM bandwidth, bytes/s.
    pub hbm_bytes_per_s: f64,
    /// Datasheet dense bf16 tensor throughput, FLOP/s.
    pub bf16_flops: f64,
    pub sm_count: u64,
    /// Datasheet GPU-to-GPU (NVLink) bandwidth per direction, bytes/s (tensor parallelism).
    pub interconnect_bytes_per_s: f64,
    pub efficiency: GpuEfficiency,
}

/// The A100's time ratios to the H100 for GEMMs and attention
/// (`a100_scaling.A100_efficiency_adjusted` in the calibration file).
const A100_GEMM_TIME_RATIO: f64 = 2.518_518_518_518_518_6;
const A100_ATTN_TIME_RATIO: f64 = 1.65;
const H100_BF16_FLOPS: f64 = 989.4e12;
const A100_BF16_FLOPS: f64 = 312e12;

impl GpuProfile {
    /// A built-in GPU by name: `h100`, `h200`, `a100-80gb` (alias `a100`), `a100-40gb`.
    pub fn builtin(name: &str) -> Option<GpuProfile> {
        let mib = 1u64 << 20;
        let h100 = GpuProfile {
            name: name.to_string(),
            mem_bytes: 85_017_493_504,
            hbm_bytes_per_s: 3.35e12,
            bf16_flops: H100_BF16_FLOPS,
            sm_count: 132,
            interconnect_bytes_per_s: 450e9,
            efficiency: GpuEfficiency::H100,
        };
        let a100 = |mem_bytes: u64, hbm_bytes_per_s: f64| {
            let h = GpuEfficiency::H100;
            // Same time on A100 = H100 time × ratio ⇒ e_A100 = e_H100 × (F_H100 / F_A100) / ratio.
            let peak_ratio = H100_BF16_FLOPS / A100_BF16_FLOPS;
            GpuProfile {
                name: name.to_string(),
                mem_bytes,
                hbm_bytes_per_s,
                bf16_flops: A100_BF16_FLOPS,
                sm_count: 108,
                interconnect_bytes_per_s: 300e9,
                efficiency: GpuEfficiency {
                    gemm: h.gemm * peak_ratio / A100_GEMM_TIME_RATIO,
                    attention: h.attention * peak_ratio / A100_ATTN_TIME_RATIO,
                    ..h
                },
            }
        };
        match name {
            "h100" => Some(h100),
            "h200" => Some(GpuProfile {
                mem_bytes: 143_771 * mib,
                hbm_bytes_per_s: 4.8e12,
                ..h100
            }),
            "a100-80gb" | "a100" => Some(a100(81_920 * mib, 2.0e12)),
            "a100-40gb" => Some(a100(40_960 * mib, 1.555e12)),
            _ => None,
        }
    }
}

/// KV pool size in tokens: `mem_bytes × mem_fraction_static − weight_bytes`, divided by the
/// model's KV bytes per token (0 when the weights do not fit).
pub fn kv_capacity_tokens(model: &ModelProfile, gpu: &GpuProfile, mem_fraction_static: f64) -> u64 {
    kv_capacity_tokens_tp(model, gpu, mem_fraction_static, 1)
}

/// KV pool size in tokens under tensor parallelism over `tp` GPUs: each GPU's free memory
/// (`mem_bytes × mem_fraction_static − weight_bytes / tp`) divided by its share of a token's
/// KV (`kv_bytes_per_token × ⌈kv_heads/tp⌉ / kv_heads`). Every GPU holds a slice of every
/// token, so the pool is the per-GPU token count, i.e. `N ×` the per-GPU free memory in units
/// of a whole token's KV when the KV heads divide evenly. 0 when the weights do not fit.
pub fn kv_capacity_tokens_tp(
    model: &ModelProfile,
    gpu: &GpuProfile,
    mem_fraction_static: f64,
    tp: u64,
) -> u64 {
    let tp = tp.max(1);
    let budget = gpu.mem_bytes as f64 * mem_fraction_static - model.weight_bytes as f64 / tp as f64;
    let kv_per_gpu = model.kv_bytes_per_token as f64 * kv_heads_per_gpu(model, tp) as f64
        / model.kv_heads.max(1) as f64;
    if budget <= 0.0 || kv_per_gpu <= 0.0 {
        return 0;
    }
    (budget / kv_per_gpu) as u64
}

/// KV heads each GPU holds under tensor parallelism (replicated when `tp > kv_heads`).
fn kv_heads_per_gpu(model: &ModelProfile, tp: u64) -> u64 {
    model.kv_heads.max(1).div_ceil(tp.max(1))
}

/// Fixed cost of one all-reduce (SGLang's custom all-reduce on small messages): an assumption.
const ALLREDUCE_LATENCY_S: f64 = 8e-6;
/// Fraction of the per-direction NVLink bandwidth a ring all-reduce reaches: an assumption.
const ALLREDUCE_LINK_EFFICIENCY: f64 = 0.7;
/// All-reduces per layer per forward pass (after o_proj and after down_proj).
const ALLREDUCES_PER_LAYER: f64 = 2.0;

/// The datasheet roofline for decode: output tokens/s of `batch` sequences of `context`
/// tokens each, when each step must stream the weights and every sequence's KV once and do
/// the step's FLOPs at dense peak (whichever takes longer).
pub fn decode_tok_per_s_bound(
    model: &ModelProfile,
    gpu: &GpuProfile,
    batch: u64,
    context: u64,
) -> f64 {
    let b = batch.max(1) as f64;
    let bytes =
        model.forward_weight_bytes() as f64 + b * context as f64 * model.kv_bytes_per_token as f64;
    let flops = b
        * (2.0 * model.weight_bytes as f64 / BF16_BYTES as f64
            + attention_flops(model, 1, context));
    let t = (bytes / gpu.hbm_bytes_per_s).max(flops / gpu.bf16_flops);
    b / t
}

/// The datasheet roofline for prefill: prompt tokens/s when every token costs the matmul
/// FLOPs of the transformer body at dense peak (attention excluded, so a true upper bound).
pub fn prefill_tok_per_s_bound(model: &ModelProfile, gpu: &GpuProfile) -> f64 {
    gpu.bf16_flops / (2.0 * model.body_matmul_params())
}

/// Causal attention FLOPs of `new` query tokens over `cached + new` keys (QKᵀ and PV).
fn attention_flops(model: &ModelProfile, new: u64, cached: u64) -> f64 {
    let n = new as f64;
    4.0 * (model.layers * model.q_heads * model.head_dim) as f64
        * n
        * (cached as f64 + (n + 1.0) / 2.0)
}

/// One prefill batch's composition, accumulated request by request (no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefillBatch {
    /// Requests (lm_head rows).
    pub requests: u64,
    /// New tokens computed.
    pub new_tokens: u64,
    /// Attention FLOPs.
    attention_flops: f64,
    /// Attention kernel blocks (`q_heads × ⌈n/128⌉` per request).
    attention_blocks: u64,
}

/// Rows of queries per attention kernel block.
const ATTENTION_BLOCK_ROWS: u64 = 128;

impl PrefillBatch {
    /// Add `new` tokens of one request appended to `cached` tokens already in its KV.
    pub fn add(&mut self, model: &ModelProfile, new: u64, cached: u64) {
        if new == 0 {
            return;
        }
        self.requests += 1;
        self.new_tokens += new;
        self.attention_flops += attention_flops(model, new, cached);
        self.attention_blocks += model.q_heads * new.div_ceil(ATTENTION_BLOCK_ROWS);
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }
}

/// Step times of one model on one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    pub model: ModelProfile,
    pub gpu: GpuProfile,
    // Precomputed per-step terms (seconds).
    weight_stream_s: f64,
    gemm_s_per_token: f64,
    lm_head_s_per_row: f64,
    activation_s_per_token: f64,
    layer_fixed_s: f64,
    attention_fixed_s: f64,
    kv_s_per_token_one_wave: f64,
    kv_s_per_token: f64,
    sequence_s: f64,
    one_wave_batch: u64,
    /// Tensor-parallel degree.
    tp: u64,
    /// All-reduce time per forward pass: fixed, and per token in the batch.
    allreduce_fixed_s: f64,
    allreduce_s_per_token: f64,
}

impl CostModel {
    /// One GPU (no tensor parallelism): the calibrated model.
    pub fn new(model: ModelProfile, gpu: GpuProfile) -> CostModel {
        CostModel::with_tp(model, gpu, 1)
    }

    /// Tensor parallelism over `tp` GPUs of the same kind (see the module docs).
    pub fn with_tp(model: ModelProfile, gpu: GpuProfile, tp: u64) -> CostModel {
        let tp = tp.max(1);
        let n = tp as f64;
        let e = &gpu.efficiency;
        let bw = gpu.hbm_bytes_per_s;
        let layers = model.layers as f64;
        let kv_heads = kv_heads_per_gpu(&model, tp);
        let kvb = model.kv_bytes_per_token as f64 * kv_heads as f64 / model.kv_heads.max(1) as f64;
        let activation_bytes = e.activation_passes
            * layers
            * (model.hidden as f64 + model.intermediate as f64 / n)
            * BF16_BYTES as f64;
        let (allreduce_fixed_s, allreduce_s_per_token) = if tp > 1 {
            let calls = ALLREDUCES_PER_LAYER * layers;
            let link = gpu.interconnect_bytes_per_s * ALLREDUCE_LINK_EFFICIENCY;
            let bytes_per_token = (model.hidden * BF16_BYTES) as f64;
            (
                calls * ALLREDUCE_LATENCY_S,
                calls * 2.0 * (n - 1.0) / n * bytes_per_token / link,
            )
        } else {
            (0.0, 0.0)
        };
        CostModel {
            weight_stream_s: model.forward_weight_bytes() as f64 / n / (bw * e.weight_stream),
            gemm_s_per_token: 2.0 * model.body_matmul_params() / n / (gpu.bf16_flops * e.gemm),
            lm_head_s_per_row: 2.0 * model.embedding_params() as f64
                / n
                / (gpu.bf16_flops * e.gemm),
            activation_s_per_token: activation_bytes / (bw * e.weight_stream),
            layer_fixed_s: layers * e.layer_overhead_s,
            attention_fixed_s: layers * e.attention_layer_overhead_s,
            kv_s_per_token_one_wave: kvb / (bw * e.kv_read_one_wave),
            kv_s_per_token: kvb / (bw * e.kv_read),
            sequence_s: layers * e.sequence_layer_overhead_s,
            one_wave_batch: gpu.sm_count / kv_heads,
            tp,
            allreduce_fixed_s,
            allreduce_s_per_token,
            model,
            gpu,
        }
    }

    /// The tensor-parallel degree this model costs.
    pub fn tp(&self) -> u64 {
        self.tp
    }

    /// Linear layers of a forward pass over `tokens` tokens with `rows` through the lm_head.
    fn linear_s(&self, tokens: u64, rows: u64) -> f64 {
        let gemm = self.gemm_s_per_token * tokens as f64 + self.lm_head_s_per_row * rows as f64;
        self.weight_stream_s.max(gemm)
            + self.layer_fixed_s
            + self.activation_s_per_token * tokens as f64
            + self.allreduce_s(tokens)
    }

    /// The tensor-parallel all-reduces of one forward pass over `tokens` tokens (0 at TP1).
    fn allreduce_s(&self, tokens: u64) -> f64 {
        if self.tp == 1 {
            return 0.0;
        }
        self.allreduce_fixed_s + self.allreduce_s_per_token * tokens as f64
    }

    /// One decode step of `batch` sequences whose contexts sum to `kv_tokens` (seconds).
    /// 0 for an empty batch.
    pub fn decode_step_s(&self, batch: u64, kv_tokens: u64) -> f64 {
        if batch == 0 {
            return 0.0;
        }
        let kv_s = if batch <= self.one_wave_batch {
            self.kv_s_per_token_one_wave
        } else {
            self.kv_s_per_token
        };
        self.linear_s(batch, batch)
            + self.attention_fixed_s
            + kv_s * kv_tokens as f64
            + self.sequence_s * batch as f64
    }

    /// One prefill forward pass over a batch of chunks (seconds). 0 for an empty batch.
    pub fn prefill_s(&self, batch: &PrefillBatch) -> f64 {
        if batch.is_empty() {
            return 0.0;
        }
        // Query heads are split over the TP group: each GPU runs 1/tp of the blocks and FLOPs.
        let blocks = batch.attention_blocks.div_ceil(self.tp) as f64;
        let sms = self.gpu.sm_count as f64;
        let utilisation = if blocks < 0.8 * sms {
            self.gpu.efficiency.attention_split_utilisation
        } else {
            blocks / (blocks + 0.5 * sms)
        };
        let attention = batch.attention_flops
            / self.tp as f64
            / (self.gpu.bf16_flops * self.gpu.efficiency.attention * utilisation);
        self.linear_s(batch.new_tokens, batch.requests) + self.attention_fixed_s + attention
    }

    /// Prefill of `new` tokens appended to `cached` tokens of one request (seconds).
    pub fn prefill_one_s(&self, new: u64, cached: u64) -> f64 {
        let mut batch = PrefillBatch::default();
        batch.add(&self.model, new, cached);
        self.prefill_s(&batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qwen14() -> ModelProfile {
        ModelProfile::builtin("qwen2.5-14b").unwrap()
    }

    #[test]
    fn qwen14b_shape_matches_the_calibration_file() {
        let m = qwen14();
        assert_eq!(m.weight_bytes, 29_540_067_328);
        assert_eq!(m.kv_bytes_per_token, 192 * 1024);
    }

    #[test]
    fn hf_config_reproduces_the_builtin() {
        let cfg = json!({
            "model_type": "qwen2", "hidden_size": 5120, "num_hidden_layers": 48,
            "num_attention_heads": 40, "num_key_value_heads": 8, "intermediate_size": 13824,
            "vocab_size": 152064, "max_position_embeddings": 32768, "tie_word_embeddings": false
        });
        let m = ModelProfile::from_hf_config("qwen2.5-14b", &cfg).unwrap();
        assert_eq!(m, qwen14());
    }

    #[test]
    fn tied_embeddings_are_streamed_once_as_the_lm_head() {
        let cfg = json!({
            "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
            "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": true
        });
        let m = ModelProfile::from_hf_config("qwen2.5-0.5b", &cfg).unwrap();
        assert_eq!(m.weight_bytes / 2, 494_032_768);
        assert_eq!(m.forward_weight_bytes(), m.weight_bytes);
        let untied = qwen14();
        assert_eq!(
            untied.forward_weight_bytes(),
            untied.weight_bytes - 152064 * 5120 * 2
        );
    }

    #[test]
    fn llama_8b_has_about_8b_params_and_128k_kv_per_token() {
        let m = ModelProfile::builtin("llama-3.1-8b").unwrap();
        assert_eq!(m.weight_bytes / 2, 8_030_261_248);
        assert_eq!(m.kv_bytes_per_token, 128 * 1024);
        let q7 = ModelProfile::builtin("qwen2.5-7b").unwrap();
        assert_eq!(q7.weight_bytes / 2, 7_615_616_512);
    }

    #[test]
    fn hf_config_errors_name_the_field() {
        let err = ModelProfile::from_hf_config("x", &json!({"hidden_size": 8})).unwrap_err();
        assert_eq!(err, ModelConfigError::Missing("num_hidden_layers"));
        assert!(err.to_string().contains("num_hidden_layers"));
        let bad = json!({"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 3,
                         "num_key_value_heads": 2});
        assert!(matches!(
            ModelProfile::from_hf_config("x", &bad),
            Err(ModelConfigError::Heads { .. })
        ));
        let zero = json!({"hidden_size": 0});
        assert!(matches!(
            ModelProfile::from_hf_config("x", &zero),
            Err(ModelConfigError::NotPositive { .. })
        ));
    }

    #[test]
    fn kv_capacity_matches_the_calibration_file() {
        let gpu = GpuProfile::builtin("h100").unwrap();
        assert_eq!(kv_capacity_tokens(&qwen14(), &gpu, 0.88), 230_282);
        let small = GpuProfile::builtin("a100-40gb").unwrap();
        assert_eq!(kv_capacity_tokens(&qwen14(), &small, 0.5), 0);
    }

    #[test]
    fn a100_times_follow_the_scaling_ratios() {
        let h = CostModel::new(qwen14(), GpuProfile::builtin("h100").unwrap());
        let a = CostModel::new(qwen14(), GpuProfile::builtin("a100-80gb").unwrap());
        // Compute-bound GEMM term and bandwidth-bound weight stream scale by their ratios.
        let ratio = a.gemm_s_per_token / h.gemm_s_per_token;
        assert!((ratio - A100_GEMM_TIME_RATIO).abs() < 1e-9, "{ratio}");
        let bw = a.weight_stream_s / h.weight_stream_s;
        assert!((bw - 1.675).abs() < 1e-9, "{bw}");
        // Long prefill is slower on the A100 by between the attention and GEMM ratios.
        let r = a.prefill_one_s(16384, 0) / h.prefill_one_s(16384, 0);
        assert!(r > A100_ATTN_TIME_RATIO && r < A100_GEMM_TIME_RATIO, "{r}");
    }

    #[test]
    fn h200_decodes_faster_than_h100_and_prefills_about_the_same() {
        let h = CostModel::new(qwen14(), GpuProfile::builtin("h100").unwrap());
        let h2 = CostModel::new(qwen14(), GpuProfile::builtin("h200").unwrap());
        assert!(h2.decode_step_s(16, 16 * 4096) < 0.8 * h.decode_step_s(16, 16 * 4096));
        let (p, p2) = (h.prefill_one_s(8192, 0), h2.prefill_one_s(8192, 0));
        // Only the activation traffic (bandwidth-bound) speeds up.
        assert!((p2 / p) > 0.9 && p2 < p, "{p} {p2}");
    }

    #[test]
    fn rooflines_bound_the_cost_model() {
        for gpu in ["h100", "h200", "a100-80gb", "a100-40gb"] {
            let gpu = GpuProfile::builtin(gpu).unwrap();
            let cost = CostModel::new(qwen14(), gpu.clone());
            for (b, c) in [(1, 1024), (16, 4096), (128, 32768)] {
                let modelled = b as f64 / cost.decode_step_s(b, b * c);
                let bound = decode_tok_per_s_bound(&qwen14(), &gpu, b, c);
                assert!(
                    modelled < bound,
                    "{} B={b} C={c}: {modelled} ≥ {bound}",
                    gpu.name
                );
            }
            let modelled = 8192.0 / cost.prefill_one_s(8192, 0);
            assert!(modelled < prefill_tok_per_s_bound(&qwen14(), &gpu));
        }
        // B=1 decode on an H100 is bounded by the weight stream: 3.35 TB/s / 27.98 GB ≈ 120/s.
        let b1 = decode_tok_per_s_bound(&qwen14(), &GpuProfile::builtin("h100").unwrap(), 1, 0);
        assert!((b1 - 3.35e12 / 27_982_932_000.0).abs() < 0.1, "{b1}");
    }

    #[test]
    fn tensor_parallelism_splits_the_work_and_adds_all_reduces() {
        let gpu = GpuProfile::builtin("h100").unwrap();
        let one = CostModel::new(qwen14(), gpu.clone());
        assert_eq!(one, CostModel::with_tp(qwen14(), gpu.clone(), 1));
        let two = CostModel::with_tp(qwen14(), gpu.clone(), 2);
        let four = CostModel::with_tp(qwen14(), gpu.clone(), 4);
        // Decode is weight-stream bound: TP2 is much faster than TP1 but, with the fixed
        // per-layer kernels and the all-reduces, not twice as fast.
        for (b, c) in [(1, 1024), (16, 4096), (64, 8192)] {
            let (t1, t2, t4) = (
                one.decode_step_s(b, b * c),
                two.decode_step_s(b, b * c),
                four.decode_step_s(b, b * c),
            );
            assert!(t2 < 0.75 * t1 && t2 > 0.5 * t1, "B={b} C={c}: {t1} {t2}");
            assert!(t4 < t2 && t4 > 0.25 * t1, "B={b} C={c}: {t2} {t4}");
        }
        // Compute-bound prefill: close to 1/N plus the all-reduces of 16k tokens.
        let (p1, p2) = (one.prefill_one_s(16384, 0), two.prefill_one_s(16384, 0));
        assert!(p2 < 0.6 * p1 && p2 > 0.5 * p1, "{p1} {p2}");
        // The all-reduce term: 2 per layer, ring over 0.7 × 450 GB/s, 8 µs each.
        let ar = two.allreduce_s(1000);
        let expect = 96.0 * (8e-6 + 1000.0 * 5120.0 * 2.0 / (0.7 * 450e9));
        assert!((ar - expect).abs() < 1e-12, "{ar} vs {expect}");
        assert_eq!(one.allreduce_s(1000), 0.0);
    }

    #[test]
    fn the_kv_pool_under_tp_is_n_times_each_gpus_free_memory() {
        let gpu = GpuProfile::builtin("h100").unwrap();
        let m = qwen14();
        let free = gpu.mem_bytes as f64 * 0.88 - m.weight_bytes as f64 / 2.0;
        let tp2 = kv_capacity_tokens_tp(&m, &gpu, 0.88, 2);
        assert_eq!(tp2, (2.0 * free / m.kv_bytes_per_token as f64) as u64);
        assert!(tp2 > 2 * kv_capacity_tokens(&m, &gpu, 0.88));
        // 8 KV heads over 16 GPUs: each GPU holds one replicated head, 1/8 of a token's KV.
        let tp16 = kv_capacity_tokens_tp(&m, &gpu, 0.88, 16);
        let free16 = gpu.mem_bytes as f64 * 0.88 - m.weight_bytes as f64 / 16.0;
        assert_eq!(tp16, (8.0 * free16 / m.kv_bytes_per_token as f64) as u64);
        // Qwen2.5-14B does not fit one A100-40GB at 0.5, but does over two.
        let small = GpuProfile::builtin("a100-40gb").unwrap();
        assert_eq!(kv_capacity_tokens_tp(&m, &small, 0.5, 1), 0);
        assert!(kv_capacity_tokens_tp(&m, &small, 0.5, 2) > 0);
    }

    #[test]
    fn empty_batches_cost_nothing() {
        let h = CostModel::new(qwen14(), GpuProfile::builtin("h100").unwrap());
        assert_eq!(h.decode_step_s(0, 0), 0.0);
        assert_eq!(h.prefill_s(&PrefillBatch::default()), 0.0);
    }

    /// The calibration test: every measured decode step and prefill of the H100 table is
    /// reproduced within 10 %.
    #[test]
    fn reproduces_the_h100_calibration_table_within_10_percent() {
        let file: serde_json::Value =
            serde_json::from_str(include_str!("../../calibration/h100-qwen2.5-14b.json")).unwrap();
        let cost = CostModel::new(qwen14(), GpuProfile::builtin("h100").unwrap());
        let mut points = Vec::new();
        for (b, row) in file["decode_step_ms"].as_object().unwrap() {
            for (c, ms) in row.as_object().unwrap() {
                let (b, c): (u64, u64) = (b.parse().unwrap(), c.parse().unwrap());
                let model = cost.decode_step_s(b, b * c) * 1e3;
                points.push((format!("decode B={b} C={c}"), model, ms.as_f64().unwrap()));
            }
        }
        for (n, row) in file["prefill_ms"].as_object().unwrap() {
            for (p, ms) in row.as_object().unwrap() {
                let (n, p): (u64, u64) = (n.parse().unwrap(), p.parse().unwrap());
                let model = cost.prefill_one_s(n, p) * 1e3;
                points.push((format!("prefill N={n} P={p}"), model, ms.as_f64().unwrap()));
            }
        }
        assert_eq!(points.len(), 36 + 26);
        let rel = |(_, model, measured): &(String, f64, f64)| (model / measured - 1.0).abs();
        let worst = points
            .iter()
            .max_by(|a, b| rel(a).total_cmp(&rel(b)))
            .unwrap();
        println!(
            "worst point: {} model {:.2} ms vs measured {:.2} ms ({:+.1} %)",
            worst.0,
            worst.1,
            worst.2,
            (worst.1 / worst.2 - 1.0) * 100.0
        );
        for point in &points {
            assert!(
                rel(point) <= 0.10,
                "{}: model {:.2} ms, measured {:.2} ms",
                point.0,
                point.1,
                point.2
            );
        }
    }
}
