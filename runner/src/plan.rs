//! The sweep plan: a TOML file plus command-line overrides (every key has a flag), resolved
//! once into a validated [`Plan`] before anything starts.
//!
//! Precedence: flag > plan file > built-in default. The built-in defaults are the demo plan
//! (`plans/demo.toml`): two simulated GPUs, concurrency 1, 2, 4, 8, all three cache modes,
//! 16 synthetic trajectories × 10 turns, which finishes in about a minute on 2 cores.
//! Errors name the key (and the file) at fault.

use crate::chat_template::ChatTemplate;
use crate::client::Api;
use crate::workload::Format;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use turnbench_schema::{CacheMode, HistorySource};

/// How a GPU's server comes to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The simulated engine, in process, one loopback server per GPU.
    Sim,
    /// Spawn the plan's server command per GPU.
    Launch,
    /// Existing servers, one URL per GPU.
    Attach,
}

/// How each turn's output length is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputLen {
    /// Up to `max_new_tokens`, ending at a stop string or EOS.
    Generated,
    /// Exactly the recorded assistant message's token count (`ignore_eos`, no stop strings);
    /// a turn the dataset recorded no answer for (a conversation's last user message, say)
    /// generates exactly `max_new_tokens`, so every cell still does the same work.
    Recorded,
}

/// Think (tool) time between turns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThinkTime {
    Off,
    /// Sleep the dataset's tool time.
    Replay,
    /// Sleep the dataset's tool time × F.
    Scale(f64),
}

impl ThinkTime {
    /// The think time to sleep after a turn whose dataset tool time is `recorded` seconds.
    pub fn of(self, recorded: f64) -> f64 {
        match self {
            ThinkTime::Off => 0.0,
            ThinkTime::Replay => recorded,
            ThinkTime::Scale(f) => recorded * f,
        }
    }
}

impl std::str::FromStr for ThinkTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(ThinkTime::Off),
            "replay" => Ok(ThinkTime::Replay),
            _ => match s.strip_prefix("scale=").map(str::parse::<f64>) {
                // (A dataset's tool time is at most a day: F up to 100 keeps every sleep
                // and every recorded think time finite.)
                Some(Ok(f)) if (0.0..=100.0).contains(&f) => Ok(ThinkTime::Scale(f)),
                _ => Err(format!(
                    "{s:?}: expected off, replay or scale=F (0 ≤ F ≤ 100)"
                )),
            },
        }
    }
}

impl std::fmt::Display for ThinkTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThinkTime::Off => f.write_str("off"),
            ThinkTime::Replay => f.write_str("replay"),
            ThinkTime::Scale(x) => write!(f, "scale={x}"),
        }
    }
}

/// Concurrency levels: one list for every GPU, or a list per GPU label.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BatchSizes {
    All(Vec<u32>),
    PerGpu(BTreeMap<String, Vec<u32>>),
}

/// Read by hand, so a wrong shape says what is wrong and where (`batch_sizes.h100`), not
/// that no variant of an enum matched.
impl<'de> Deserialize<'de> for BatchSizes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, SeqAccess, Visitor};
        const LIST: &str = "a list of concurrency levels (positive integers) like [1, 2, 4]";
        fn list<'de, A: SeqAccess<'de>>(mut a: A, key: &str) -> Result<Vec<u32>, A::Error> {
            let mut v = Vec::new();
            loop {
                match a.next_element::<u32>() {
                    Ok(Some(x)) => v.push(x),
                    Ok(None) => return Ok(v),
                    Err(e) => return Err(A::Error::custom(format!("{key}: expected {LIST}: {e}"))),
                }
            }
        }
        struct PerGpuList(String);
        impl<'de> serde::de::DeserializeSeed<'de> for PerGpuList {
            type Value = Vec<u32>;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u32>, D::Error> {
                d.deserialize_any(ListOf(self.0))
            }
        }
        struct ListOf(String);
        impl<'de> Visitor<'de> for ListOf {
            type Value = Vec<u32>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{LIST} for {}", self.0)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Vec<u32>, A::Error> {
                list(a, &self.0)
            }
        }
        struct Sizes;
        impl<'de> Visitor<'de> for Sizes {
            type Value = BatchSizes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{LIST}, or a table of such lists by GPU label")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<BatchSizes, A::Error> {
                list(a, "batch_sizes").map(BatchSizes::All)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<BatchSizes, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(gpu) = m.next_key::<String>()? {
                    let key = format!("batch_sizes.{gpu}");
                    let v = m.next_value_seed(PerGpuList(key.clone()))?;
                    if out.insert(gpu, v).is_some() {
                        return Err(A::Error::custom(format!("{key} is given twice")));
                    }
                }
                Ok(BatchSizes::PerGpu(out))
            }
        }
        d.deserialize_any(Sizes)
    }
}

impl std::str::FromStr for BatchSizes {
    type Err = String;
    /// `3,4` (every GPU) or `1=3,4;2=6,8` (per GPU).
    fn from_str(s: &str) -> Result<Self, String> {
        let list = |v: &str| -> Result<Vec<u32>, String> {
            v.split(',')
                .filter(|x| !x.trim().is_empty())
                .map(|x| x.trim().parse::<u32>().map_err(|e| format!("{x:?}: {e}")))
                .collect()
        };
        if s.contains('=') {
            let mut out = BTreeMap::new();
            for part in s.split(';') {
                let (gpu, v) = part
                    .split_once('=')
                    .ok_or_else(|| format!("{part:?}: expected GPU=N,N"))?;
                let gpu = gpu.trim().to_string();
                if out.insert(gpu.clone(), list(v)?).is_some() {
                    return Err(format!("GPU {gpu:?} is given twice"));
                }
            }
            Ok(BatchSizes::PerGpu(out))
        } else {
            list(s).map(BatchSizes::All)
        }
    }
}

fn labels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    /// A GPU label: a name, or a device index (a non-negative integer).
    struct Label(String);
    impl<'de> Deserialize<'de> for Label {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Label;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a GPU label: a name (\"h100\") or a device index (0, 1, …)")
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Label, E> {
                    match u64::try_from(v) {
                        Ok(v) => self.visit_u64(v),
                        Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                    }
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Label, E> {
                    Ok(Label(v.to_string()))
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Label, E> {
                    Ok(Label(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }
    let v: Option<Vec<Label>> = Option::deserialize(d)?;
    Ok(v.map(|v| v.into_iter().map(|l| l.0).collect()))
}

/// `sim_time_scale` in the manifest's plan: JSON has no infinity, so `inf` is the string
/// `"inf"` (TOML plans write the float `inf`; both are read).
mod scale_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) if x.is_infinite() && *x > 0.0 => s.serialize_str("inf"),
            v => v.serialize(s),
        }
    }

    /// The resolved plan's (not optional) scale.
    pub fn serialize_f64<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        serialize(&Some(*v), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scale {
            Num(f64),
            Text(String),
        }
        match Option::<Scale>::deserialize(d)? {
            None => Ok(None),
            Some(Scale::Num(x)) => Ok(Some(x)),
            Some(Scale::Text(t)) if t == "inf" => Ok(Some(f64::INFINITY)),
            Some(Scale::Text(t)) => Err(serde::de::Error::custom(format!(
                "sim_time_scale: expected a number or \"inf\", not {t:?}"
            ))),
        }
    }
}

/// Most trajectories a plan may ask for (each is a worker's unit; a dataset has fewer).
pub const MAX_TRAJECTORIES: usize = 1_000_000;
/// Most turns per trajectory (the seed's are 50).
pub const MAX_TURNS: usize = 10_000;
/// Most synthetic turns in all (trajectories × turns): the sweep goes over all of them before
/// it starts (prompt lengths against the server's limit, the physical bounds).
pub const MAX_SYNTHETIC_TURNS: usize = 1_000_000;

/// Every plan key, as read from TOML and as flags. `None` = not given here.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PlanKeys {
    /// Where servers come from: the simulated engine (default), launched processes, or
    /// existing URLs.
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// `native` (/generate, client-side chat template; needed for sessions) or `openai`.
    #[arg(long, value_enum)]
    pub api: Option<Api>,
    /// Chat template for `api = native` (prompts are templated client-side): a Hugging Face
    /// `tokenizer_config.json` (its `chat_template`, `bos_token`, `eos_token`) or a Jinja file.
    /// Unset: the built-in ChatML (Qwen's). Use the served model's template, or the prompts
    /// are not the ones it was trained on (and adjust `stop` to its end-of-turn marker).
    #[arg(long, value_name = "PATH")]
    pub chat_template: Option<PathBuf>,
    /// Server URLs for `attach`, one per GPU (repeat the flag, or comma-separate).
    #[arg(long = "url", value_delimiter = ',')]
    pub urls: Option<Vec<String>>,
    /// GPU labels: device indices for `launch` (CUDA_VISIBLE_DEVICES), simulated GPU profiles
    /// (`a100-80gb`, `h100`, …) for `sim`, any name for `attach`. Given alone on the command
    /// line, it picks GPUs out of a plan file's per-GPU `batch_sizes`.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "labels")]
    pub gpus: Option<Vec<String>>,
    /// Concurrent trajectories per cell: `3,4` for every GPU or `1=3,4;2=6,8` per GPU.
    #[arg(long)]
    pub batch_sizes: Option<BatchSizes>,
    /// Cache modes to compare: prefix (radix cache), session (SGLang sessions), none.
    #[arg(long, value_delimiter = ',')]
    pub cache_modes: Option<Vec<CacheMode>>,
    /// Trajectories per cell (the first N of the dataset).
    #[arg(long)]
    pub trajectories: Option<usize>,
    /// At most this many turns per trajectory.
    #[arg(long)]
    pub turns: Option<usize>,
    /// Dataset file (r2e-gym JSONL, OpenAI messages JSONL, ShareGPT JSON); synthetic if unset.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// The r2e-gym YAML prompt file (`system_prompt`, `instance_prompt`).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Dataset format: r2e-gym, openai, sharegpt or synthetic; detected from the file when
    /// unset.
    #[arg(long, value_parser = parse_format)]
    pub dataset_format: Option<Format>,
    /// Use synthetic SWE-agent-like trajectories (ignores `dataset`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub synthetic: Option<bool>,
    /// Seed of the synthetic generator.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Next prompt contains what the engine generated (`generated`) or the dataset's recorded
    /// answer (`recorded`: byte-identical prompts in every cell).
    #[arg(long, value_parser = parse_history)]
    pub history: Option<HistorySource>,
    /// `recorded` fixes each turn's length to the recorded answer's token count (ignore_eos).
    #[arg(long, value_enum)]
    pub output_len: Option<OutputLen>,
    /// Skip (and count) malformed dataset lines instead of stopping.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub skip_bad_lines: Option<bool>,
    /// Most tokens a turn generates (default 256).
    #[arg(long)]
    pub max_new_tokens: Option<u32>,
    /// Sampling temperature (default 0.7).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    /// Stop strings (repeat the flag).
    #[arg(long)]
    pub stop: Option<Vec<String>>,
    /// off, replay (sleep the dataset's tool time) or scale=F (0 ≤ F ≤ 100).
    #[arg(long)]
    pub think_time: Option<String>,
    /// Results root directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run id (directory name under `out`); a timestamp when unset.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Model served (`--model-path` of launched servers, profile of the simulated engine).
    #[arg(long)]
    pub model_path: Option<String>,
    /// GPU memory for weights and KV pool (`--mem-fraction-static`, default 0.88).
    #[arg(long)]
    pub mem_fraction_static: Option<f64>,
    /// Cap on the KV pool in tokens (`--max-total-tokens`, default 131072).
    #[arg(long)]
    pub max_total_tokens: Option<u64>,
    /// Host launched servers bind (loopback by default).
    #[arg(long)]
    pub host: Option<String>,
    /// Port of GPU g is port_base + port_step·g (launch; default 30000).
    #[arg(long)]
    pub port_base: Option<u16>,
    /// See port_base (default 10).
    #[arg(long)]
    pub port_step: Option<u16>,
    /// Server command for `launch`, with placeholders {model_path} {host} {port} {gpu}
    /// {mem_fraction_static} {max_total_tokens} {api_key} {admin_api_key} (keys are never
    /// recorded: write `--api-key {api_key}`, not the key itself; a flag whose key is not given
    /// is left out). `--disable-radix-cache` is appended for the
    /// `none` cache mode. Default: `python -m sglang.launch_server …`. As a flag it takes
    /// every argument after it: give it last (a server flag named as a runner flag, such as
    /// serve-sim's `--sim-time-scale`, needs a plan file's `launch_command`).
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    pub launch_command: Option<Vec<String>>,
    /// Seconds to wait for a launched server's `/health_generate` (default 600).
    #[arg(long)]
    pub launch_timeout_s: Option<f64>,
    /// Longest a request may take, seconds (wall; default 3600).
    #[arg(long)]
    pub request_timeout_s: Option<f64>,
    /// Longest wait for a response's first data, seconds (wall). SGLang sends nothing while
    /// a request waits in its queue (an OpenAI route not even the response head), which on a
    /// loaded server takes minutes: this is the limit for that wait, not `stall_timeout_s`.
    #[arg(long)]
    pub first_token_timeout_s: Option<f64>,
    /// Longest silence after a response's first data before the turn fails, seconds (wall):
    /// a stream that stops between its chunks.
    #[arg(long)]
    pub stall_timeout_s: Option<f64>,
    /// Simulated engine seconds per wall second (`sim` backend).
    #[arg(long)]
    #[serde(default, with = "scale_json")]
    pub sim_time_scale: Option<f64>,
    /// Simulated GPU profile for GPU labels that are not profile names (default h100).
    #[arg(long)]
    pub sim_gpu: Option<String>,
    /// Extra `serve-sim` flags for the `sim` backend (e.g. `--sim-fault=http500=0.05`).
    #[arg(long, allow_hyphen_values = true)]
    pub sim_args: Option<Vec<String>>,
    /// Scrape the servers' `/metrics` every second (default true). The simulated engine and
    /// the default launch command are started with `--enable-metrics`; a launch_command of
    /// your own must carry it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub metrics: Option<bool>,
    /// `/flush_cache` before every cell.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub flush_cache: Option<bool>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "synthetic" => Ok(Format::Synthetic),
        "r2e-gym" | "r2e" => Ok(Format::R2eGym),
        "openai" | "openai-messages" => Ok(Format::Openai),
        "sharegpt" => Ok(Format::Sharegpt),
        o => Err(format!(
            "{o:?}: expected r2e-gym, openai, sharegpt or synthetic"
        )),
    }
}

fn parse_history(s: &str) -> Result<HistorySource, String> {
    match s {
        "generated" => Ok(HistorySource::Generated),
        "recorded" => Ok(HistorySource::Recorded),
        o => Err(format!("{o:?}: expected generated or recorded")),
    }
}

impl PlanKeys {
    /// `self` over `base`: keys set here win. `gpus` given here alone picks GPUs out of the
    /// base's per-GPU `batch_sizes` (`--gpus 1` on the seed's plan runs GPU 1 with its list).
    pub fn over(self, base: PlanKeys) -> PlanKeys {
        let pick = match (&self.gpus, &self.batch_sizes) {
            (Some(g), None) => Some(g.clone()),
            _ => None,
        };
        macro_rules! merge {
            ($($f:ident),*) => { PlanKeys { $($f: self.$f.or(base.$f)),* } };
        }
        let mut merged = merge!(
            backend,
            api,
            chat_template,
            urls,
            gpus,
            batch_sizes,
            cache_modes,
            trajectories,
            turns,
            dataset,
            prompts,
            dataset_format,
            synthetic,
            seed,
            history,
            output_len,
            skip_bad_lines,
            max_new_tokens,
            temperature,
            stop,
            think_time,
            out,
            run_id,
            model_path,
            mem_fraction_static,
            max_total_tokens,
            host,
            port_base,
            port_step,
            launch_command,
            launch_timeout_s,
            request_timeout_s,
            first_token_timeout_s,
            stall_timeout_s,
            sim_time_scale,
            sim_gpu,
            sim_args,
            metrics,
            flush_cache
        );
        if let (Some(gpus), Some(BatchSizes::PerGpu(m))) = (pick, &mut merged.batch_sizes) {
            m.retain(|g, _| gpus.contains(g));
        }
        merged
    }

    /// Read a plan file. Unknown keys and bad values are errors naming the file, line and key.
    pub fn from_file(path: &Path) -> Result<PlanKeys, PlanError> {
        let bytes = std::fs::read(path).map_err(|e| PlanError::Io {
            path: path.to_path_buf(),
            error: e,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
            PlanError::Toml {
                path: path.to_path_buf(),
                message: format!("line {line}: not UTF-8 text (TOML files are UTF-8)"),
            }
        })?;
        let mut keys: PlanKeys = toml::from_str(&text).map_err(|e| PlanError::Toml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // A plan's input files are named relative to the plan (so a plan and its template
        // travel together, and run from anywhere); `out` and flags are relative to the
        // current directory.
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut keys.chat_template,
            &mut keys.dataset,
            &mut keys.prompts,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(keys)
    }
}

/// A plan that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// (Not a `source`: the message holds it, and error chains would print it twice.)
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("plan {}: {message}", path.display())]
    Toml { path: PathBuf, message: String },
    #[error("plan key `{key}`: {message}")]
    Key { key: String, message: String },
}

/// The placeholders of `launch_command` ([`crate::backend::launch_argv`] fills them).
const PLACEHOLDERS: [&str; 8] = [
    "model_path",
    "host",
    "port",
    "gpu",
    "mem_fraction_static",
    "max_total_tokens",
    "api_key",
    "admin_api_key",
];

/// The first `{name}` in `arg` that is no placeholder (a typo would reach the server as is);
/// a shell's `${NAME}` is not one.
fn unknown_placeholder(arg: &str) -> Option<&str> {
    let mut rest = arg;
    let mut prev = None;
    while let Some(i) = rest.find('{') {
        let before = rest[..i].chars().last().or(prev);
        let tail = &rest[i + 1..];
        if let Some(j) = tail.find('}') {
            let name = &tail[..j];
            let ident =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if ident && before != Some('$') && !PLACEHOLDERS.contains(&name) {
                return Some(name);
            }
        }
        prev = Some('{');
        rest = tail;
    }
    None
}

/// Why `p` is not a file to read, for a plan key's error.
fn not_a_file(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => format!("{}: a directory, not a file", p.display()),
        Ok(_) => format!("{}: not a regular file", p.display()),
        Err(_) => format!("{}: no such file", p.display()),
    }
}

fn key_err(key: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError::Key {
        key: key.into(),
        message: message.into(),
    }
}

/// The default server command of `launch` (SGLang).
pub fn default_launch_command() -> Vec<String> {
    [
        "python",
        "-m",
        "sglang.launch_server",
        "--model-path",
        "{model_path}",
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--mem-fraction-static",
        "{mem_fraction_static}",
        "--max-total-tokens",
        "{max_total_tokens}",
        "--tp-size",
        "1",
        "--enable-metrics",
        // Cached tokens in OpenAI usage (`--api openai`); the native API has them anyway.
        "--enable-cache-report",
    ]
    .map(String::from)
    .to_vec()
}

/// The validated plan. Serialized (with the same key names as the file) into the manifest,
/// and read back from it by `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub backend: BackendChoice,
    pub api: Api,
    /// `None`: the built-in ChatML.
    pub chat_template: Option<PathBuf>,
    pub urls: Vec<String>,
    pub gpus: Vec<String>,
    /// Per GPU label.
    pub batch_sizes: BTreeMap<String, Vec<u32>>,
    pub cache_modes: Vec<CacheMode>,
    pub trajectories: usize,
    pub turns: usize,
    pub dataset: Option<PathBuf>,
    pub prompts: Option<PathBuf>,
    pub dataset_format: Format,
    pub seed: u64,
    pub history: HistorySource,
    pub output_len: OutputLen,
    pub skip_bad_lines: bool,
    pub max_new_tokens: u32,
    pub temperature: f64,
    pub stop: Vec<String>,
    #[serde(serialize_with = "ser_display")]
    pub think_time: ThinkTime,
    pub out: PathBuf,
    pub run_id: Option<String>,
    pub model_path: String,
    pub mem_fraction_static: f64,
    pub max_total_tokens: u64,
    pub host: String,
    pub port_base: u16,
    pub port_step: u16,
    pub launch_command: Vec<String>,
    pub launch_timeout_s: f64,
    pub request_timeout_s: f64,
    pub first_token_timeout_s: f64,
    pub stall_timeout_s: f64,
    #[serde(serialize_with = "scale_json::serialize_f64")]
    pub sim_time_scale: f64,
    pub sim_gpu: String,
    pub sim_args: Vec<String>,
    pub metrics: bool,
    pub flush_cache: bool,
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The demo plan's simulated time scale: 16×10 turns × 12 cells per GPU in about a minute.
pub const DEMO_TIME_SCALE: f64 = 100.0;

impl Plan {
    /// Resolve keys (already merged flag > file) over the built-in defaults and validate.
    pub fn resolve(k: PlanKeys) -> Result<Plan, PlanError> {
        let backend = k.backend.unwrap_or(BackendChoice::Sim);
        let api = k.api.unwrap_or(Api::Native);
        let stop = k
            .stop
            .unwrap_or_else(|| vec!["<|im_end|>".into(), "\n\nUSER:".into()]);
        if let Some(i) = stop.iter().position(String::is_empty) {
            // SGLang matches an empty stop string at once: every answer would be one token.
            return Err(key_err(format!("stop[{i}]"), "an empty stop string"));
        }
        let urls = k.urls.unwrap_or_default();
        if backend == BackendChoice::Attach && urls.is_empty() {
            return Err(key_err(
                "urls",
                "attach needs one server URL per GPU (--url)",
            ));
        }
        let gpus = match (k.gpus, backend) {
            (Some(g), _) => g,
            (None, BackendChoice::Attach) => (0..urls.len()).map(|i| i.to_string()).collect(),
            (None, BackendChoice::Launch) => vec!["0".into()],
            (None, BackendChoice::Sim) => vec!["a100-80gb".into(), "h100".into()],
        };
        if gpus.is_empty() {
            return Err(key_err("gpus", "empty list: give at least one GPU"));
        }
        for (i, g) in gpus.iter().enumerate() {
            if g.trim().is_empty() || g.contains(['/', '\\']) {
                return Err(key_err(
                    format!("gpus[{i}]"),
                    format!("{g:?} is not a usable label"),
                ));
            }
            if gpus[..i].contains(g) {
                return Err(key_err(
                    format!("gpus[{i}]"),
                    format!("{g:?} appears twice"),
                ));
            }
        }
        let batch_sizes: BTreeMap<String, Vec<u32>> =
            match k.batch_sizes.unwrap_or(BatchSizes::All(vec![1, 2, 4, 8])) {
                BatchSizes::All(v) => gpus.iter().map(|g| (g.clone(), v.clone())).collect(),
                BatchSizes::PerGpu(m) => {
                    if let Some(extra) = m.keys().find(|g| !gpus.contains(g)) {
                        return Err(key_err(
                            format!("batch_sizes.{extra}"),
                            format!("no such GPU in gpus {gpus:?}"),
                        ));
                    }
                    if let Some(g) = gpus.iter().find(|g| !m.contains_key(*g)) {
                        return Err(key_err(
                            format!("batch_sizes.{g}"),
                            "missing: every GPU needs its list",
                        ));
                    }
                    m
                }
            };
        for (g, v) in &batch_sizes {
            if v.is_empty() {
                return Err(key_err(format!("batch_sizes.{g}"), "empty list"));
            }
            if v.contains(&0) {
                return Err(key_err(
                    format!("batch_sizes.{g}"),
                    "concurrency 0 runs nothing",
                ));
            }
            if let Some(c) = v
                .iter()
                .enumerate()
                .find_map(|(i, c)| v[..i].contains(c).then_some(c))
            {
                return Err(key_err(
                    format!("batch_sizes.{g}"),
                    format!("{c} appears twice"),
                ));
            }
        }
        let cache_modes = k.cache_modes.unwrap_or(CacheMode::ALL.to_vec());
        if cache_modes.is_empty() {
            return Err(key_err("cache_modes", "empty list"));
        }
        for (i, m) in cache_modes.iter().enumerate() {
            if cache_modes[..i].contains(m) {
                return Err(key_err("cache_modes", format!("{m} appears twice")));
            }
        }
        if api == Api::Openai && cache_modes.contains(&CacheMode::Session) {
            return Err(key_err(
                "cache_modes",
                "session needs api = native (SGLang's OpenAI routes ignore session_params)",
            ));
        }
        let positive = |key: &str, v: Option<usize>, d: usize| -> Result<usize, PlanError> {
            match v.unwrap_or(d) {
                0 => Err(key_err(key, "must be at least 1")),
                n => Ok(n),
            }
        };
        let trajectories = positive("trajectories", k.trajectories, 16)?;
        let turns = positive("turns", k.turns, 10)?;
        if trajectories > MAX_TRAJECTORIES {
            return Err(key_err(
                "trajectories",
                format!("{trajectories}: at most {MAX_TRAJECTORIES}"),
            ));
        }
        if turns > MAX_TURNS {
            return Err(key_err("turns", format!("{turns}: at most {MAX_TURNS}")));
        }
        let synthetic = k.synthetic.unwrap_or(false) || k.dataset.is_none();
        if synthetic && trajectories * turns > MAX_SYNTHETIC_TURNS {
            return Err(key_err(
                "trajectories",
                format!(
                    "{trajectories} trajectories × {turns} turns: at most \
                     {MAX_SYNTHETIC_TURNS} synthetic turns in all"
                ),
            ));
        }
        let dataset = if synthetic { None } else { k.dataset };
        let dataset_format = match (&dataset, k.dataset_format) {
            (None, _) => Format::Synthetic,
            (Some(p), f) => {
                if !p.is_file() {
                    return Err(key_err("dataset", not_a_file(p)));
                }
                match f {
                    Some(Format::Synthetic) => {
                        // The manifest would name a file the run never read.
                        return Err(key_err(
                            "dataset_format",
                            format!(
                                "synthetic, with dataset {}: the synthetic workload reads no \
                                 file (leave dataset out, or set synthetic = true to run \
                                 synthetic trajectories in spite of it)",
                                p.display()
                            ),
                        ));
                    }
                    Some(f) => f,
                    None => crate::workload::detect_format(p)
                        .map_err(|e| key_err("dataset_format", e.to_string()))?,
                }
            }
        };
        if let Some(p) = &k.prompts {
            if !p.is_file() {
                return Err(key_err("prompts", not_a_file(p)));
            }
            if dataset_format != Format::R2eGym {
                return Err(key_err(
                    "prompts",
                    format!(
                        "a YAML prompt file is for r2e-gym datasets; the {} workload does not \
                         read one",
                        dataset_format.as_str()
                    ),
                ));
            }
        }
        if dataset_format == Format::R2eGym && k.prompts.is_none() {
            let detected = if k.dataset_format.is_none() {
                " (the dataset was taken for r2e-gym, its lines having a `problem_statement`: \
                 if it is OpenAI messages or ShareGPT, say so with dataset_format)"
            } else {
                ""
            };
            return Err(key_err(
                "prompts",
                format!("the r2e-gym format needs its YAML prompt file{detected}"),
            ));
        }
        let max_new_tokens = k.max_new_tokens.unwrap_or(256);
        if max_new_tokens == 0 {
            return Err(key_err("max_new_tokens", "must be at least 1"));
        }
        let temperature = k.temperature.unwrap_or(0.7);
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(key_err(
                "temperature",
                format!("{temperature}: must be ≥ 0"),
            ));
        }
        let think_time = match k.think_time {
            None => ThinkTime::Replay,
            Some(s) => s.parse().map_err(|e: String| key_err("think_time", e))?,
        };
        let mem_fraction_static = k.mem_fraction_static.unwrap_or(0.88);
        if mem_fraction_static.is_nan() || mem_fraction_static <= 0.0 || mem_fraction_static > 1.0 {
            return Err(key_err("mem_fraction_static", "must be in (0, 1]"));
        }
        let max_total_tokens = k.max_total_tokens.unwrap_or(131072);
        if max_total_tokens == 0 {
            return Err(key_err("max_total_tokens", "must be at least 1"));
        }
        let seconds = |key: &str, v: Option<f64>, d: f64| -> Result<f64, PlanError> {
            let v = v.unwrap_or(d);
            // (At most ~30 years: a timer further out overflows the clock.)
            if v.is_finite() && v > 0.0 && v <= 1e9 {
                Ok(v)
            } else {
                Err(key_err(
                    key,
                    format!("{v}: must be a positive number of seconds, at most 1e9"),
                ))
            }
        };
        let sim_time_scale = k.sim_time_scale.unwrap_or(DEMO_TIME_SCALE);
        if !crate::sim::cli::time_scale_ok(sim_time_scale) {
            return Err(key_err(
                "sim_time_scale",
                format!(
                    "{sim_time_scale}: must be from {} to {}, or inf",
                    crate::sim::cli::MIN_TIME_SCALE,
                    crate::sim::cli::MAX_TIME_SCALE
                ),
            ));
        }
        let sim_gpu = k.sim_gpu.unwrap_or_else(|| "h100".into());
        if backend == BackendChoice::Sim
            && crate::sim::cost::GpuProfile::builtin(&sim_gpu).is_none()
        {
            return Err(key_err(
                "sim_gpu",
                format!("{sim_gpu:?}: unknown GPU profile"),
            ));
        }
        match backend {
            BackendChoice::Attach => {
                if urls.is_empty() {
                    return Err(key_err("urls", "attach needs one server URL per GPU"));
                }
                if urls.len() != gpus.len() {
                    return Err(key_err(
                        "urls",
                        format!(
                            "{} URLs for {} GPUs: give one per GPU",
                            urls.len(),
                            gpus.len()
                        ),
                    ));
                }
                for (i, u) in urls.iter().enumerate() {
                    if !(u.starts_with("http://") || u.starts_with("https://")) {
                        return Err(key_err(
                            format!("urls[{i}]"),
                            format!("{u:?} is not an http URL"),
                        ));
                    }
                    // Credentials in a URL would be written into the results (the manifest
                    // keeps the URLs); the API key is sent as a header and never written.
                    let parsed = reqwest::Url::parse(u).map_err(|e| {
                        key_err(format!("urls[{i}]"), format!("{u:?} is not a URL: {e}"))
                    })?;
                    if !parsed.username().is_empty() || parsed.password().is_some() {
                        return Err(key_err(
                            format!("urls[{i}]"),
                            "holds a user name or password, which the results would keep: \
                             give the server's key with --api-key (sent as a Bearer header, \
                             never written) instead",
                        ));
                    }
                    if let Some(j) = urls[..i].iter().position(|v| v == u) {
                        return Err(key_err(
                            format!("urls[{i}]"),
                            format!(
                                "{u:?} is also urls[{j}]: one server measured as two GPUs at \
                                 once would share its capacity between them"
                            ),
                        ));
                    }
                }
            }
            _ if !urls.is_empty() => {
                return Err(key_err("urls", "only the attach backend takes URLs"));
            }
            _ => {}
        }
        let launch_command = k.launch_command.unwrap_or_else(default_launch_command);
        if backend == BackendChoice::Launch {
            if launch_command.is_empty() {
                return Err(key_err("launch_command", "empty command"));
            }
            if !launch_command.iter().any(|a| a.contains("{port}")) {
                return Err(key_err("launch_command", "must contain {port}"));
            }
            if let Some(p) = launch_command.iter().find_map(|a| unknown_placeholder(a)) {
                return Err(key_err(
                    "launch_command",
                    format!(
                        "unknown placeholder {{{p}}} (known: {})",
                        PLACEHOLDERS.map(|k| format!("{{{k}}}")).join(" ")
                    ),
                ));
            }
            if let Some(g) = gpus.iter().find(|g| g.parse::<u16>().is_err()) {
                return Err(key_err(
                    "gpus",
                    format!("{g:?}: launch needs device indices"),
                ));
            }
            // Each GPU's server on a port of its own: two on one port would have one answer
            // both readiness probes and be measured as both GPUs.
            let (base, step) = (k.port_base.unwrap_or(30000), k.port_step.unwrap_or(10));
            let mut taken: Vec<(u32, &str)> = Vec::new();
            for g in &gpus {
                let port = u32::from(base) + u32::from(step) * g.parse::<u32>().unwrap_or(0);
                if port > 65535 {
                    return Err(key_err(
                        "port_base",
                        format!("GPU {g}'s port {base} + {step}·{g} = {port} is past 65535"),
                    ));
                }
                if let Some((_, other)) = taken.iter().find(|(p, _)| *p == port) {
                    return Err(key_err(
                        "port_step",
                        format!("GPUs {other} and {g} would both get port {port}"),
                    ));
                }
                taken.push((port, g));
            }
        }
        let run_id = k.run_id;
        if let Some(id) = &run_id {
            if id.is_empty() || id.contains(['/', '\\']) || id == "." || id == ".." {
                return Err(key_err("run_id", format!("{id:?} is not a directory name")));
            }
        }
        if k.chat_template.is_some() && api == Api::Openai {
            return Err(key_err(
                "chat_template",
                "only for api = native (the OpenAI route applies the server's own template)",
            ));
        }
        let plan = Plan {
            backend,
            api,
            chat_template: k.chat_template,
            urls,
            gpus,
            batch_sizes,
            cache_modes,
            trajectories,
            turns,
            dataset,
            prompts: k.prompts,
            dataset_format,
            seed: k.seed.unwrap_or(0),
            history: k.history.unwrap_or(HistorySource::Generated),
            output_len: k.output_len.unwrap_or(OutputLen::Generated),
            skip_bad_lines: k.skip_bad_lines.unwrap_or(false),
            max_new_tokens,
            temperature,
            stop,
            think_time,
            out: k.out.unwrap_or_else(|| "results".into()),
            run_id,
            model_path: k
                .model_path
                .unwrap_or_else(|| "Qwen/Qwen2.5-14B-Instruct".into()),
            mem_fraction_static,
            max_total_tokens,
            host: k.host.unwrap_or_else(|| "127.0.0.1".into()),
            port_base: k.port_base.unwrap_or(30000),
            port_step: k.port_step.unwrap_or(10),
            launch_command,
            launch_timeout_s: seconds("launch_timeout_s", k.launch_timeout_s, 600.0)?,
            request_timeout_s: seconds("request_timeout_s", k.request_timeout_s, 3600.0)?,
            first_token_timeout_s: seconds(
                "first_token_timeout_s",
                k.first_token_timeout_s,
                1800.0,
            )?,
            stall_timeout_s: seconds("stall_timeout_s", k.stall_timeout_s, 120.0)?,
            sim_time_scale,
            sim_gpu,
            sim_args: k.sim_args.unwrap_or_default(),
            metrics: k.metrics.unwrap_or(true),
            flush_cache: k.flush_cache.unwrap_or(true),
        };
        if plan.backend == BackendChoice::Sim {
            crate::backend::check_sim_args(&plan).map_err(|e| key_err("sim_args", e))?;
        }
        plan.load_chat_template()?;
        Ok(plan)
    }

    /// The chat template native-API prompts are rendered with: `chat_template`, read and
    /// compiled, or the built-in ChatML.
    pub fn load_chat_template(&self) -> Result<ChatTemplate, PlanError> {
        match &self.chat_template {
            None => Ok(ChatTemplate::ChatMl),
            Some(p) => ChatTemplate::load(p).map_err(|e| key_err("chat_template", e.to_string())),
        }
    }

    /// The cells in run order for one GPU: cache modes in plan order (radix-cache modes
    /// first so a GPU's server restarts at most once), then concurrency ascending.
    pub fn cells_of(&self, gpu: &str) -> Vec<turnbench_schema::manifest::CellId> {
        let mut modes = self.cache_modes.clone();
        modes.sort_by_key(|m| *m == CacheMode::None);
        let mut sizes = self.batch_sizes.get(gpu).cloned().unwrap_or_default();
        sizes.sort_unstable();
        sizes.dedup();
        modes
            .iter()
            .flat_map(|&m| {
                sizes
                    .iter()
                    .map(move |&c| turnbench_schema::manifest::CellId {
                        gpu: gpu.to_string(),
                        cache_mode: m,
                        concurrency: c,
                    })
            })
            .collect()
    }

    /// All cells, GPU by GPU.
    pub fn cells(&self) -> Vec<turnbench_schema::manifest::CellId> {
        self.gpus.iter().flat_map(|g| self.cells_of(g)).collect()
    }

    /// The plan as stored in the manifest (same keys as a plan file).
    pub fn to_json(&self) -> serde_json::Value {
        let mut p = self.clone();
        p.launch_command = crate::backend::mask_secrets(&p.launch_command);
        p.sim_args = crate::backend::mask_secrets(&p.sim_args);
        // Input files as absolute paths: `--resume` may run from another directory.
        for f in [&mut p.dataset, &mut p.prompts, &mut p.chat_template]
            .into_iter()
            .flatten()
        {
            if let Ok(abs) = std::path::absolute(&*f) {
                *f = abs;
            }
        }
        serde_json::to_value(p).unwrap_or(serde_json::Value::Null)
    }

    /// Read back a manifest's plan (for `--resume`).
    pub fn from_manifest(v: &serde_json::Value) -> Result<Plan, PlanError> {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            // Stored as resolved; dataset=null means synthetic.
            m.retain(|_, x| !x.is_null());
        }
        let keys: PlanKeys =
            serde_json::from_value(v).map_err(|e| key_err("manifest.plan", e.to_string()))?;
        Plan::resolve(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_infinite_time_scale_survives_the_manifest() {
        // The manifest is JSON, which has no infinity: a resume must run at `inf` again, not
        // at the default scale (cells of one run at two scales).
        for scale in [f64::INFINITY, 20.0] {
            let keys = PlanKeys {
                sim_time_scale: Some(scale),
                ..PlanKeys::default()
            };
            // As the manifest writes it: the resolved plan.
            let json = Plan::resolve(keys.clone()).unwrap().to_json();
            let back = Plan::from_manifest(&json).unwrap();
            assert_eq!(back.sim_time_scale, scale, "{json}");
            let json = serde_json::to_value(&keys).unwrap();
            let back = Plan::from_manifest(&json).unwrap();
            assert_eq!(back.sim_time_scale, scale, "{json}");
        }
        let json = serde_json::to_value(PlanKeys {
            sim_time_scale: Some(f64::INFINITY),
            ..PlanKeys::default()
        })
        .unwrap();
        assert_eq!(json["sim_time_scale"], "inf");
        // TOML plans write the float.
        let keys: PlanKeys = toml::from_str("sim_time_scale = inf").unwrap();
        assert_eq!(keys.sim_time_scale, Some(f64::INFINITY));
        let keys: PlanKeys = toml::from_str("sim_time_scale = 5").unwrap();
        assert_eq!(keys.sim_time_scale, Some(5.0));
        assert!(toml::from_str::<PlanKeys>("sim_time_scale = \"fast\"").is_err());
    }

    #[test]
    fn sim_args_that_change_what_the_plan_sets_are_refused_naming_its_key() {
        let with = |args: &[&str], modes: Option<Vec<CacheMode>>| {
            Plan::resolve(PlanKeys {
                gpus: Some(vec!["h100".into()]),
                cache_modes: modes,
                sim_args: Some(args.iter().map(|a| a.to_string()).collect()),
                ..PlanKeys::default()
            })
        };
        for (args, key) in [
            (&["--disable-radix-cache"][..], "cache_modes"),
            (&["--sim-gpu=a100-40gb"][..], "sim_gpu"),
            (&["--model-path", "qwen2.5-7b"][..], "model_path"),
            (&["--model", "qwen2.5-7b"][..], "model_path"),
            (&["--sim-time-scale=1"][..], "sim_time_scale"),
            (&["--mem-fraction-static", "0.5"][..], "mem_fraction_static"),
            (&["--max-total-tokens", "4096"][..], "max_total_tokens"),
            (&["--sim-seed", "7"][..], "seed"),
            (&["--host", "0.0.0.0"][..], "host"),
        ] {
            let e = with(args, None).unwrap_err().to_string();
            assert!(
                e.contains("`sim_args`") && e.contains("use plan key") && e.contains(key),
                "{args:?}: {e}"
            );
        }
        // Only none cells run without the radix cache: saying so again changes nothing.
        assert!(with(&["--disable-radix-cache"], Some(vec![CacheMode::None])).is_ok());
        // What the plan does not set passes.
        for ok in [
            &["--max-running-requests", "8"][..],
            &["--sim-fault", "http500=0.05"][..],
            &[
                "--chunked-prefill-size",
                "4096",
                "--incremental-streaming-output",
            ][..],
        ] {
            assert!(with(ok, None).is_ok(), "{ok:?}");
        }
        assert!(with(&["--tp-size", "x"], None).is_err());
    }

    #[test]
    fn attach_urls_with_credentials_or_twice_are_refused() {
        let attach = |urls: &[&str]| {
            Plan::resolve(PlanKeys {
                backend: Some(BackendChoice::Attach),
                gpus: Some((0..urls.len()).map(|i| format!("g{i}")).collect()),
                urls: Some(urls.iter().map(|u| u.to_string()).collect()),
                ..PlanKeys::default()
            })
        };
        let err = attach(&["http://127.0.0.1:1", "http://user:s3cret@127.0.0.1:2"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("urls[1]") && err.contains("--api-key"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        let err = attach(&["http://127.0.0.1:1", "http://127.0.0.1:1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("urls[1]") && err.contains("urls[0]"), "{err}");
        assert!(attach(&["http://127.0.0.1:1", "http://127.0.0.1:2"]).is_ok());
    }

    #[test]
    fn sizes_past_what_memory_holds_are_plan_errors() {
        let with = |trajectories: usize, turns: usize, dataset: bool| {
            Plan::resolve(PlanKeys {
                trajectories: Some(trajectories),
                turns: Some(turns),
                dataset: dataset.then(|| PathBuf::from("d.jsonl")),
                ..PlanKeys::default()
            })
        };
        for (t, n, key) in [
            (usize::MAX, 2, "trajectories"),
            (4_294_967_296, 2, "trajectories"),
            (2, usize::MAX, "turns"),
            (20_000, 100, "trajectories"),
        ] {
            let err = with(t, n, false).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{t}×{n}: {err}");
        }
        assert!(with(10_000, 100, false).is_ok());
        // A dataset's trajectories are as many as it holds.
        if let Err(e) = with(20_000, 100, true) {
            assert!(!e.to_string().contains("`trajectories`"), "{e}");
        }
    }

    #[test]
    fn gpu_labels_are_names_or_device_indices() {
        let k: PlanKeys = toml::from_str("gpus = [0, \"h100\", 3]\n").unwrap();
        assert_eq!(k.gpus.unwrap(), ["0", "h100", "3"]);
        for bad in ["gpus = [1.5]\n", "gpus = [-1]\n", "gpus = [true]\n"] {
            let e = toml::from_str::<PlanKeys>(bad).unwrap_err().to_string();
            assert!(
                e.contains("a GPU label") && !e.contains("untagged"),
                "{bad}: {e}"
            );
        }
        // The manifest's JSON reads back.
        let back: PlanKeys =
            serde_json::from_value(serde_json::json!({"gpus": ["0", "h100"]})).unwrap();
        assert_eq!(back.gpus.unwrap(), ["0", "h100"]);
    }

    #[test]
    fn badly_shaped_batch_sizes_say_what_is_wrong_and_where() {
        let err = |toml: &str| toml::from_str::<PlanKeys>(toml).unwrap_err().to_string();
        let e = err("[batch_sizes]\nh100 = 4\n");
        assert!(
            e.contains("batch_sizes.h100") && e.contains("list of concurrency"),
            "{e}"
        );
        let e = err("[batch_sizes]\nh100 = [\"a\"]\n");
        assert!(
            e.contains("batch_sizes.h100") && e.contains("positive integers"),
            "{e}"
        );
        let e = err("batch_sizes = [1, -2]\n");
        assert!(
            e.contains("batch_sizes") && e.contains("positive integers"),
            "{e}"
        );
        let e = err("batch_sizes = \"1,2\"\n");
        assert!(e.contains("list of concurrency levels"), "{e}");
        assert!(!e.contains("untagged"), "{e}");
        // Both shapes still read, from TOML and from the manifest's JSON.
        let k: PlanKeys = toml::from_str("batch_sizes = [1, 2]\n").unwrap();
        assert_eq!(k.batch_sizes, Some(BatchSizes::All(vec![1, 2])));
        let k: PlanKeys = toml::from_str("[batch_sizes]\n1 = [3, 4]\n2 = [6]\n").unwrap();
        let back: PlanKeys = serde_json::from_value(serde_json::to_value(&k).unwrap()).unwrap();
        assert_eq!(back.batch_sizes, k.batch_sizes);
        // The flag: a GPU given twice is an error, not the last one winning.
        let e = "h100=2;h100=3".parse::<BatchSizes>().unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn a_time_scale_the_simulator_cannot_run_at_is_a_plan_error() {
        let with = |x: f64| {
            Plan::resolve(PlanKeys {
                sim_time_scale: Some(x),
                ..PlanKeys::default()
            })
        };
        for bad in [0.0, -1.0, f64::NAN, 1e-300, 1e308, f64::NEG_INFINITY] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("`sim_time_scale`"), "{bad}: {e}");
        }
        for ok in [0.001, 1.0, 100.0, 1e6, f64::INFINITY] {
            assert!(with(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_manifest_names_input_files_by_absolute_path() {
        let mut p = Plan::resolve(PlanKeys::default()).unwrap();
        p.dataset = Some(PathBuf::from("data/d.jsonl"));
        p.prompts = Some(PathBuf::from("p.yaml"));
        let json = p.to_json();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            json["dataset"].as_str().unwrap(),
            cwd.join("data/d.jsonl").to_str().unwrap()
        );
        assert_eq!(
            json["prompts"].as_str().unwrap(),
            cwd.join("p.yaml").to_str().unwrap()
        );
        assert!(json["chat_template"].is_null());
    }

    #[test]
    fn an_unknown_launch_placeholder_is_named() {
        assert_eq!(unknown_placeholder("--port={prot}"), Some("prot"));
        assert_eq!(unknown_placeholder("{port}"), None);
        assert_eq!(unknown_placeholder("${home} {gpu}"), None);
        assert_eq!(unknown_placeholder("{ echo; }"), None);
        let mut cmd = default_launch_command();
        cmd.push("--log-dir={gpu_dir}".into());
        let err = Plan::resolve(PlanKeys {
            backend: Some(BackendChoice::Launch),
            gpus: Some(vec!["0".into()]),
            launch_command: Some(cmd),
            ..PlanKeys::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`launch_command`") && err.contains("{gpu_dir}"),
            "{err}"
        );
    }

    #[test]
    fn a_dataset_with_the_synthetic_format_is_a_plan_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d.jsonl");
        std::fs::write(&d, "{\"messages\": []}\n").unwrap();
        let with = |synthetic: Option<bool>| {
            Plan::resolve(PlanKeys {
                dataset: Some(d.clone()),
                dataset_format: Some(Format::Synthetic),
                synthetic,
                ..PlanKeys::default()
            })
        };
        let e = with(None).unwrap_err().to_string();
        assert!(
            e.contains("`dataset_format`") && e.contains("d.jsonl"),
            "{e}"
        );
        // `synthetic = true` (`--synthetic`) overrides the plan's dataset, and says so.
        let p = with(Some(true)).unwrap();
        assert!(p.dataset.is_none());
        assert_eq!(p.dataset_format, Format::Synthetic);
    }

    #[test]
    fn launched_gpus_on_one_port_or_past_the_last_are_plan_errors() {
        let launch = |gpus: &[&str], base: u16, step: u16| {
            Plan::resolve(PlanKeys {
                backend: Some(BackendChoice::Launch),
                gpus: Some(gpus.iter().map(|g| g.to_string()).collect()),
                port_base: Some(base),
                port_step: Some(step),
                ..PlanKeys::default()
            })
            .map_err(|e| e.to_string())
        };
        let e = launch(&["0", "1"], 31300, 0).unwrap_err();
        assert!(
            e.contains("`port_step`") && e.contains("31300") && e.contains("GPUs 0 and 1"),
            "{e}"
        );
        let e = launch(&["0", "1"], 65530, 10).unwrap_err();
        assert!(e.contains("`port_base`") && e.contains("65540"), "{e}");
        assert!(launch(&["0", "1"], 65520, 10).is_ok());
        assert!(launch(&["0"], 31300, 0).is_ok());
        assert!(launch(&["1", "3"], 30000, 10).is_ok());
    }

    #[test]
    fn a_plan_that_is_not_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, b"trajectories = 4\n# caf\xe9\n").unwrap();
        let e = PlanKeys::from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("p.toml") && e.contains("line 2") && e.contains("UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn defaults_are_the_demo_plan() {
        let p = Plan::resolve(PlanKeys::default()).unwrap();
        assert_eq!(p.backend, BackendChoice::Sim);
        assert_eq!(p.gpus, ["a100-80gb", "h100"]);
        assert_eq!(p.batch_sizes["h100"], [1, 2, 4, 8]);
        assert_eq!(p.cache_modes, CacheMode::ALL);
        assert_eq!((p.trajectories, p.turns), (16, 10));
        assert_eq!(p.cells().len(), 24);
    }

    #[test]
    fn shipped_plans_resolve() {
        let plans = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans");
        let demo = Plan::resolve(PlanKeys::from_file(&plans.join("demo.toml")).unwrap()).unwrap();
        assert_eq!(
            demo,
            Plan::resolve(PlanKeys::default()).unwrap(),
            "demo.toml = defaults"
        );
        let seed =
            Plan::resolve(PlanKeys::from_file(&plans.join("seed-a100.toml")).unwrap()).unwrap();
        assert_eq!(seed.gpus, ["1", "2", "3"]);
        assert_eq!(seed.batch_sizes["1"], [3, 4]);
        assert_eq!(seed.batch_sizes["2"], [6, 8]);
        assert_eq!(seed.batch_sizes["3"], [12, 16]);
        assert_eq!(
            (seed.trajectories, seed.turns, seed.max_new_tokens),
            (50, 50, 256)
        );
        assert_eq!(
            (seed.mem_fraction_static, seed.max_total_tokens),
            (0.88, 131072)
        );
        assert_eq!(seed.stop, ["<|im_end|>", "\n\nUSER:"]);
        assert_eq!(seed.temperature, 0.7);
        let ports: Vec<u32> = seed
            .gpus
            .iter()
            .map(|g| seed.port_base as u32 + seed.port_step as u32 * g.parse::<u32>().unwrap())
            .collect();
        assert_eq!(ports, [30010, 30020, 30030]);
        // `--gpus` picks GPUs out of the plan's per-GPU lists; an unknown one is still named.
        let pick = |gpus: &[&str]| {
            Plan::resolve(
                PlanKeys {
                    gpus: Some(gpus.iter().map(|g| g.to_string()).collect()),
                    ..Default::default()
                }
                .over(PlanKeys::from_file(&plans.join("seed-a100.toml")).unwrap()),
            )
        };
        let one = pick(&["3", "1"]).unwrap();
        assert_eq!(one.gpus, ["3", "1"]);
        assert_eq!(one.batch_sizes.len(), 2);
        assert_eq!(
            (&one.batch_sizes["1"], &one.batch_sizes["3"]),
            (&vec![3, 4], &vec![12, 16])
        );
        let err = pick(&["1", "4"]).unwrap_err().to_string();
        assert!(err.contains("`batch_sizes.4`"), "{err}");
        // The seed never slept the tool time, and templated its base model's prompts with
        // SGLang's frontend fallback ("ROLE:" + content + newline).
        assert_eq!(seed.think_time, ThinkTime::Off);
        assert_eq!(seed.model_path, "Qwen/Qwen2.5-14B");
        let tpl = plans.join("sglang-default.jinja");
        assert_eq!(seed.chat_template.as_deref(), Some(tpl.as_path()));
        let ChatTemplate::Jinja(t) = ChatTemplate::load(&tpl).unwrap() else {
            panic!("a Jinja template");
        };
        use crate::workload::{Message, Role};
        let msgs = [
            Message::new(Role::System, "sys"),
            Message::new(Role::User, "task"),
            Message::new(Role::Assistant, "look"),
            Message::new(Role::User, "obs"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "SYSTEM:sys\nUSER:task\nASSISTANT:look\nUSER:obs\nASSISTANT:"
        );
    }

    #[test]
    fn plan_round_trips_through_the_manifest() {
        let p = Plan::resolve(PlanKeys {
            think_time: Some("scale=0.5".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(Plan::from_manifest(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn repeated_batch_sizes_and_a_prompts_file_no_dataset_reads_are_refused() {
        let bad = |k: PlanKeys| Plan::resolve(k).unwrap_err().to_string();
        let e = bad(PlanKeys {
            batch_sizes: Some("1,2,1".parse().unwrap()),
            ..Default::default()
        });
        assert!(
            e.contains("`batch_sizes.a100-80gb`") && e.contains("1 appears twice"),
            "{e}"
        );
        let yaml = tempfile::NamedTempFile::new().unwrap();
        let e = bad(PlanKeys {
            prompts: Some(yaml.path().to_path_buf()),
            ..Default::default()
        });
        assert!(e.contains("`prompts`") && e.contains("synthetic"), "{e}");
    }

    #[test]
    fn a_negative_temperature_is_read_and_refused_by_the_plan() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            keys: PlanKeys,
        }
        let cli = Cli::try_parse_from(["x", "--temperature", "-1"]).unwrap();
        assert_eq!(cli.keys.temperature, Some(-1.0));
        let e = Plan::resolve(cli.keys).unwrap_err().to_string();
        assert!(
            e.contains("`temperature`") && e.contains("must be ≥ 0"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let bad = |k: PlanKeys| Plan::resolve(k).unwrap_err().to_string();
        assert!(bad(PlanKeys {
            gpus: Some(vec![]),
            ..Default::default()
        })
        .contains("`gpus`"));
        assert!(bad(PlanKeys {
            cache_modes: Some(vec![]),
            ..Default::default()
        })
        .contains("`cache_modes`"));
        for t in ["sometimes", "scale=1e308", "scale=-1", "scale=NaN"] {
            assert!(
                bad(PlanKeys {
                    think_time: Some(t.into()),
                    ..Default::default()
                })
                .contains("`think_time`"),
                "{t}"
            );
        }
        assert!(bad(PlanKeys {
            batch_sizes: Some("h100=1;nope=2".parse().unwrap()),
            ..Default::default()
        })
        .contains("`batch_sizes.nope`"));
        assert!(bad(PlanKeys {
            backend: Some(BackendChoice::Attach),
            ..Default::default()
        })
        .contains("`urls`"));
        assert!(bad(PlanKeys {
            stop: Some(vec!["x".into(), String::new()]),
            ..Default::default()
        })
        .contains("`stop[1]`"));
    }
}
