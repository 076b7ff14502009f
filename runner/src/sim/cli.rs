//! `runner serve-sim`: the flags of `python -m sglang.launch_server` (same names, same
//! defaults, so one command line serves both), the simulator's `--sim-*` flags, and the
//! resolution of those flags into a validated [`SimConfig`].

use super::cost::{kv_capacity_tokens_tp, GpuProfile, ModelProfile};
use super::faults::Fault;
use super::tokenizer::Tokenizer;
use anyhow::{bail, Context as _};
use clap::{CommandFactory, Parser};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

const FAULT_HELP: &str = "\
Faults (--sim-fault, repeatable; deterministic with --sim-seed; RATE is a probability 0..1):
  http500=RATE            answer HTTP 500 instead of generating
  http503=RATE            answer HTTP 503 instead of generating
  stall=MS@before[,RATE]  wait MS milliseconds before the first output (RATE defaults to 1)
  stall=MS@during[,RATE]  wait MS milliseconds in the middle of the output
  drop=RATE               drop the connection mid-stream
  malformed=RATE          send one malformed SSE chunk (a truncated body when not streaming)
  exit-after=N            exit (status 3) once N generation requests were answered
                          (requests after that fail at once)

Unknown SGLang flags are accepted with a warning and ignored.";

/// Every flag of `runner serve-sim`. `Default` = SGLang's defaults, `qwen2.5-14b` on `h100`.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "runner serve-sim",
    about = "A simulated SGLang server: SGLang's HTTP protocol, timing from a cost model \
             calibrated on real GPUs. Takes `python -m sglang.launch_server` flags.",
    after_help = FAULT_HELP,
    args_override_self = true
)]
pub struct SimArgs {
    /// Address to bind (SGLang's default keeps the server private to this machine).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind; 0 picks a free one.
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// A built-in model (qwen2.5-14b, …) or a directory with a HF config.json (and optionally
    /// tokenizer.json, for exact token counts).
    #[arg(long, alias = "model", default_value = "qwen2.5-14b")]
    pub model_path: String,
    /// The model name reported to clients (defaults to --model-path).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Tensor parallelism: weights and KV are split over this many simulated GPUs.
    #[arg(long, alias = "tensor-parallel-size", default_value_t = 1)]
    pub tp_size: u32,
    /// Data parallelism (recorded; the simulator runs one scheduler).
    #[arg(long, alias = "data-parallel-size", default_value_t = 1)]
    pub dp_size: u32,
    /// Fraction of GPU memory for weights plus the KV pool (SGLang's fallback: 0.88).
    #[arg(long)]
    pub mem_fraction_static: Option<f64>,
    /// Cap on the KV pool, in tokens (else derived from GPU memory).
    #[arg(long)]
    pub max_total_tokens: Option<u64>,
    /// Cap on requests in the running batch (else SGLang's formula from the pool size).
    #[arg(long)]
    pub max_running_requests: Option<usize>,
    /// Prefill chunk size in tokens (else by GPU memory: 2048 / 4096 / 8192); -1 disables.
    #[arg(long, allow_hyphen_values = true)]
    pub chunked_prefill_size: Option<i64>,
    /// Cap on the new tokens of one prefill batch: a prompt that does not fit what is left of
    /// it waits for the next step (SGLang's default: 16384).
    #[arg(long, default_value_t = 16384)]
    pub max_prefill_tokens: u64,
    /// Context length (else the model's).
    #[arg(long)]
    pub context_length: Option<u64>,
    /// Waiting-queue order: fcfs or lpm (longest prefix match first).
    #[arg(long, default_value = "fcfs", value_parser = ["fcfs", "lpm"])]
    pub schedule_policy: String,
    /// Turn prefix reuse off (`cached_tokens` stays 0): the naive baseline.
    #[arg(long)]
    pub disable_radix_cache: bool,
    /// Fill OpenAI `usage.prompt_tokens_details.cached_tokens`.
    #[arg(long)]
    pub enable_cache_report: bool,
    /// Stream native `/generate` output as deltas: each chunk's `text` and `output_ids` hold
    /// only what is new (SGLang's default is cumulative; `--stream-output` is its alias in
    /// SGLang 0.5.10).
    #[arg(long, alias = "stream-output")]
    pub incremental_streaming_output: bool,
    /// Serve Prometheus `/metrics`.
    #[arg(long)]
    pub enable_metrics: bool,
    /// Require this key on every route but `/health*`, `/ready*` and `/metrics`, as
    /// `Authorization: Bearer KEY` or `x-api-key: KEY` (kept out of every response and of
    /// `/get_server_info`; the startup log line shows it, as SGLang's does, which the runner's
    /// `launch` backend masks).
    #[arg(long)]
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    /// Admin key: `/flush_cache` and `/abort_request` then take this key and no other (as
    /// SGLang's "admin optional" routes); kept out of every response, shown in the startup log
    /// line as `--api-key` is.
    #[arg(long)]
    #[serde(skip_serializing)]
    pub admin_api_key: Option<String>,
    /// Clients must send `input_ids`; responses carry no `text`.
    #[arg(long)]
    pub skip_tokenizer_init: bool,
    /// Log level (python logging names: debug, info, warning, error).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Recorded only (the simulator's randomness comes from --sim-seed).
    #[arg(long)]
    pub random_seed: Option<u64>,
    /// Recorded only.
    #[arg(long)]
    pub page_size: Option<u32>,
    /// Accepted for compatibility (the simulator sends no warmup request).
    #[arg(long)]
    pub skip_server_warmup: bool,

    /// Simulated GPU: h100, h200, a100-80gb, a100-40gb.
    #[arg(long, default_value = "h100")]
    pub sim_gpu: String,
    /// Run K times faster than engine time (`inf`: no waiting at all).
    #[arg(long, default_value_t = 1.0)]
    pub sim_time_scale: f64,
    /// Seed of generated text, output lengths and faults.
    #[arg(long, default_value_t = 0)]
    pub sim_seed: u64,
    /// Inject a fault (repeatable; see below).
    #[arg(long, value_parser = clap::builder::ValueParser::new(parse_fault))]
    pub sim_fault: Vec<Fault>,
    /// Seconds during which /health answers 503, as a server that is still starting.
    #[arg(long, default_value_t = 0.0)]
    pub sim_warmup_secs: f64,
    /// Mean answer length in tokens when nothing cuts it short (the seed measured ~110).
    #[arg(long, default_value_t = 110.0)]
    pub sim_output_len_mean: f64,
    /// Spread of answer lengths: standard deviation of their logarithm (0: all equal).
    #[arg(long, default_value_t = 0.5)]
    pub sim_output_len_sigma: f64,
    /// Send every engine step as its own chunk, even to a client that lags (SGLang, and
    /// serve-sim by default, coalesce pending steps into one chunk with the newest state).
    /// Every client then receives the same stream whatever its speed, which makes
    /// client-overhead benchmarks comparable.
    #[arg(long)]
    pub sim_chunk_per_step: bool,
    /// Threads serving HTTP (0: one per CPU core). SGLang's HTTP front end is a single
    /// asyncio event loop: 1 is the faithful setting, and on a machine whose cores the client
    /// shares it hands tokens to their sockets more punctually than several threads do.
    #[arg(long, default_value_t = 0)]
    pub sim_workers: usize,
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    s.parse()
}

impl Default for SimArgs {
    fn default() -> SimArgs {
        SimArgs::parse_from(["serve-sim"])
    }
}

impl SimArgs {
    /// Parse serve-sim arguments (without the program name). Unknown `--flags` (and the values
    /// that follow them) are dropped with a warning, as SGLang flags this simulator ignores.
    pub fn parse(args: &[String]) -> anyhow::Result<(SimArgs, Vec<String>)> {
        let cmd = SimArgs::command();
        let known: Vec<(String, bool)> = cmd
            .get_arguments()
            .flat_map(|a| {
                let takes = a.get_action().takes_values();
                a.get_long()
                    .into_iter()
                    .chain(a.get_all_aliases().into_iter().flatten())
                    .map(move |n| (n.to_string(), takes))
            })
            .collect();
        let mut kept = vec!["serve-sim".to_string()];
        let mut warnings = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            i += 1;
            let Some(flag) = a.strip_prefix("--") else {
                kept.push(a.clone());
                continue;
            };
            let (name, inline_value) = match flag.split_once('=') {
                Some((n, _)) => (n, true),
                None => (flag, false),
            };
            if let Some((_, takes)) = known.iter().find(|(n, _)| n == name) {
                kept.push(a.clone());
                if *takes && !inline_value && i < args.len() {
                    kept.push(args[i].clone());
                    i += 1;
                }
            } else if name == "help" {
                kept.push(a.clone());
            } else {
                let mut values = Vec::new();
                while !inline_value && i < args.len() && !args[i].starts_with("--") {
                    values.push(args[i].clone());
                    i += 1;
                }
                warnings.push(if values.is_empty() {
                    format!("ignoring SGLang flag --{name} (not simulated)")
                } else {
                    format!(
                        "ignoring SGLang flag --{name} {} (not simulated)",
                        values.join(" ")
                    )
                });
            }
        }
        let parsed = SimArgs::try_parse_from(&kept).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((parsed, warnings))
    }

    /// The model name clients see.
    pub fn served_model_name(&self) -> &str {
        self.served_model_name
            .as_deref()
            .unwrap_or(&self.model_path)
    }
}

/// The flags resolved against the model and GPU profiles: what the server runs with.
pub struct SimConfig {
    pub args: SimArgs,
    pub model: ModelProfile,
    pub gpu: GpuProfile,
    pub tokenizer: Tokenizer,
    pub context_length: u64,
    pub max_total_tokens: u64,
    pub max_running_requests: usize,
    pub chunked_prefill_size: i64,
    pub mem_fraction_static: f64,
    /// HF `model_type` / `architectures` (for `/model_info`).
    pub model_type: String,
    pub architectures: Vec<String>,
    /// Apply Qwen's default system prompt in the chat template.
    pub qwen_template: bool,
}

/// Slowest simulated time a wall second may run: 1 engine ms a wall second (below it a turn
/// takes hours).
pub const MIN_TIME_SCALE: f64 = 1e-3;
/// Fastest finite one (past it the engine cannot keep up on any CPU; `inf` is "never wait").
pub const MAX_TIME_SCALE: f64 = 1e6;

/// A `--sim-time-scale` the simulator runs at: in [`MIN_TIME_SCALE`, `MAX_TIME_SCALE`], or inf.
pub fn time_scale_ok(x: f64) -> bool {
    x == f64::INFINITY || (MIN_TIME_SCALE..=MAX_TIME_SCALE).contains(&x)
}

impl SimConfig {
    pub fn resolve(args: SimArgs) -> anyhow::Result<SimConfig> {
        if !time_scale_ok(args.sim_time_scale) {
            bail!(
                "--sim-time-scale {}: must be from {MIN_TIME_SCALE} to {MAX_TIME_SCALE}, or inf",
                args.sim_time_scale
            );
        }
        if args.sim_output_len_mean.is_nan()
            || args.sim_output_len_mean < 1.0
            || args.sim_output_len_sigma.is_nan()
            || args.sim_output_len_sigma < 0.0
        {
            bail!("--sim-output-len-mean must be >= 1 and --sim-output-len-sigma >= 0");
        }
        if args.tp_size == 0 {
            bail!("--tp-size must be >= 1");
        }
        if args.max_prefill_tokens == 0 {
            bail!("--max-prefill-tokens must be >= 1");
        }
        let gpu = GpuProfile::builtin(&args.sim_gpu).with_context(|| {
            format!(
                "--sim-gpu {}: unknown GPU (h100, h200, a100-80gb, a100-40gb)",
                args.sim_gpu
            )
        })?;
        let dir = Path::new(&args.model_path);
        let (model, tokenizer, model_type, architectures) =
            if let Some(m) = ModelProfile::builtin(&args.model_path) {
                let tok = Tokenizer::builtin(m.vocab as u32);
                (
                    m,
                    tok,
                    "qwen2".to_string(),
                    vec!["Qwen2ForCausalLM".to_string()],
                )
            } else if dir.join("config.json").is_file() {
                load_hf_dir(dir)?
            } else {
                bail!(
                    "--model-path {}: neither a built-in model (qwen2.5-14b) nor a directory with \
                 a config.json",
                    args.model_path
                );
            };
        let context_length = args.context_length.unwrap_or(model.context_length);
        let mem_fraction_static = args.mem_fraction_static.unwrap_or(0.88);
        if !(0.0..=1.0).contains(&mem_fraction_static) {
            bail!("--mem-fraction-static {mem_fraction_static}: must be in [0, 1]");
        }
        let tp = u64::from(args.tp_size);
        // As SGLang's model runner: the pool is what fits in memory, capped by
        // --max-total-tokens (a cap above it is warned about and has no effect).
        let fits = kv_capacity_tokens_tp(&model, &gpu, mem_fraction_static, tp);
        if fits == 0 {
            bail!(
                "{} ({} GB of weights) does not fit {} x {} at --mem-fraction-static {}",
                model.name,
                model.weight_bytes / 1_000_000_000,
                tp,
                gpu.name,
                mem_fraction_static
            );
        }
        let max_total_tokens = match args.max_total_tokens {
            Some(0) => bail!("--max-total-tokens 0: the KV pool would hold no token"),
            Some(n) if n > fits => {
                tracing::warn!(
                    "--max-total-tokens {n} is larger than what fits {tp} x {} at \
                     --mem-fraction-static {mem_fraction_static} ({fits} tokens): the pool \
                     holds {fits}",
                    gpu.name
                );
                fits
            }
            Some(n) => n,
            None => fits,
        };
        let max_running_requests = args.max_running_requests.unwrap_or_else(|| {
            let by_ctx = (max_total_tokens as f64 / context_length.max(1) as f64 * 512.0) as u64;
            by_ctx.clamp(2048, 4096).min(max_total_tokens / 2).max(1) as usize
        });
        let gib = (gpu.mem_bytes >> 30) as i64;
        let chunked_prefill_size = args.chunked_prefill_size.unwrap_or(if gib < 35 {
            2048
        } else if gib < 60 {
            4096
        } else {
            8192
        });
        let qwen_template = model_type.starts_with("qwen") || model.name.contains("qwen");
        Ok(SimConfig {
            args,
            model,
            gpu,
            tokenizer,
            context_length,
            max_total_tokens,
            max_running_requests,
            chunked_prefill_size,
            mem_fraction_static,
            model_type,
            architectures,
            qwen_template,
        })
    }
}

type HfModel = (ModelProfile, Tokenizer, String, Vec<String>);

/// A model directory: `config.json` gives the shape, `tokenizer.json` (optional) exact counts.
fn load_hf_dir(dir: &Path) -> anyhow::Result<HfModel> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let model = ModelProfile::from_hf_config(&dir.display().to_string(), &cfg)
        .with_context(|| format!("in {}", path.display()))?;
    let eos: Vec<u32> = match cfg.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    };
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() {
        Tokenizer::from_hf_file(&tok_path, &eos)?
    } else {
        Tokenizer::builtin(model.vocab as u32)
    };
    let model_type = cfg
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let architectures = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok((model, tokenizer, model_type, architectures))
}

/// Entry point of `runner serve-sim ARGS…`.
pub fn main(args: Vec<String>) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", SimArgs::command().render_help());
        return Ok(());
    }
    let (args, warnings) = SimArgs::parse(&args)?;
    let filter = match args.log_level.to_ascii_lowercase().as_str() {
        "critical" | "error" => "error",
        "warning" | "warn" => "warn",
        "debug" => "debug",
        "trace" => "trace",
        _ => "info",
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // As SGLang does at startup (`logger.info(f"{server_args=}")`), API key and all: whoever
    // keeps this log (the runner's `launch` backend) must mask the key.
    tracing::info!("server_args={args:?}");
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.sim_workers > 0 {
        rt.worker_threads(args.sim_workers);
    }
    let rt = rt
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let handle = super::server::start_with(args, super::server::ExitMode::Process).await?;
        wait_for_signal().await;
        tracing::info!("shutting down");
        handle.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn defaults_are_sglangs() {
        let a = SimArgs::default();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 30000));
        assert_eq!(a.model_path, "qwen2.5-14b");
        assert_eq!(a.sim_gpu, "h100");
        assert_eq!(a.schedule_policy, "fcfs");
        let c = SimConfig::resolve(a).unwrap();
        assert_eq!(c.context_length, 32768);
        assert_eq!(c.chunked_prefill_size, 8192);
        // Qwen2.5-14B on an 80 GB H100 at 0.88: ~230k tokens (calibration measured 230,282
        // with 79.2 GiB usable; the profile has 80 GiB).
        assert!(
            (225_000..240_000).contains(&c.max_total_tokens),
            "{}",
            c.max_total_tokens
        );
    }

    #[test]
    fn max_total_tokens_caps_the_pool_that_fits_and_never_raises_it() {
        let pool = |extra: &[&str]| {
            let mut v = s(&["--sim-gpu", "h100"]);
            v.extend(s(extra));
            SimConfig::resolve(SimArgs::parse(&v).unwrap().0).map(|c| c.max_total_tokens)
        };
        let fits = pool(&[]).unwrap();
        assert_eq!(pool(&["--max-total-tokens", "131072"]).unwrap(), 131072);
        // SGLang warns and keeps what fits: an H100 does not hold ten million tokens of KV.
        assert_eq!(pool(&["--max-total-tokens", "10000000"]).unwrap(), fits);
        assert_eq!(
            pool(&["--max-total-tokens", "18446744073709551615"]).unwrap(),
            fits
        );
        assert!(pool(&["--max-total-tokens", "0"]).is_err());
        // A cap does not make weights fit that do not.
        let e = pool(&[
            "--mem-fraction-static",
            "0.0001",
            "--max-total-tokens",
            "1000",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not fit"), "{e}");
        // A smaller GPU holds less than the cap the sweep passes by default.
        let mut v = s(&["--sim-gpu", "a100-40gb", "--max-total-tokens", "131072"]);
        let small = SimConfig::resolve(SimArgs::parse(&v).unwrap().0).unwrap();
        assert!(
            small.max_total_tokens < 131072,
            "{}",
            small.max_total_tokens
        );
        v.truncate(2);
        let uncapped = SimConfig::resolve(SimArgs::parse(&v).unwrap().0).unwrap();
        assert_eq!(small.max_total_tokens, uncapped.max_total_tokens);
    }

    #[test]
    fn unknown_flags_warn_and_known_ones_parse() {
        let (a, w) = SimArgs::parse(&s(&[
            "--model-path",
            "qwen2.5-14b",
            "--trust-remote-code",
            "--cuda-graph-bs",
            "1",
            "2",
            "--port=0",
            "--chunked-prefill-size",
            "-1",
            "--attention-backend=fa3",
            "--disable-radix-cache",
            "--sim-fault",
            "http500=0.5",
            "--sim-fault",
            "stall=10@during",
            "--sim-time-scale",
            "inf",
            "--api-key",
            "k",
        ]))
        .unwrap();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[1].contains("--cuda-graph-bs 1 2"));
        assert_eq!(a.port, 0);
        assert_eq!(a.chunked_prefill_size, Some(-1));
        assert!(a.disable_radix_cache);
        assert_eq!(a.sim_fault.len(), 2);
        assert!(a.sim_time_scale.is_infinite());
        assert!(!serde_json::to_string(&a).unwrap().contains("\"k\""));
        let e = SimArgs::parse(&s(&["--sim-fault", "nope=1"])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = SimArgs::parse(&s(&["--port", "x"])).unwrap_err();
        assert!(e.to_string().contains("--port"), "{e}");
    }

    #[test]
    fn hf_config_dir_gives_the_model_shape() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":5120,
               "num_hidden_layers":48,"num_attention_heads":40,"num_key_value_heads":8,
               "intermediate_size":13824,"vocab_size":152064,"max_position_embeddings":32768,
               "torch_dtype":"bfloat16","tie_word_embeddings":false,"eos_token_id":151645}"#,
        )
        .unwrap();
        let args = SimArgs {
            model_path: dir.path().display().to_string(),
            ..SimArgs::default()
        };
        let c = SimConfig::resolve(args).unwrap();
        let builtin = ModelProfile::builtin("qwen2.5-14b").unwrap();
        assert_eq!(c.model.kv_bytes_per_token, builtin.kv_bytes_per_token);
        assert_eq!(c.model.weight_bytes, builtin.weight_bytes);
        assert_eq!(c.architectures, ["Qwen2ForCausalLM"]);
        std::fs::write(dir.path().join("config.json"), r#"{"hidden_size":1}"#).unwrap();
        let args = SimArgs {
            model_path: dir.path().display().to_string(),
            ..SimArgs::default()
        };
        let e = format!("{:#}", SimConfig::resolve(args).err().unwrap());
        assert!(
            e.contains("num_hidden_layers") && e.contains("config.json"),
            "{e}"
        );
    }
}
