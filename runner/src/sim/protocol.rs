//! The wire shapes of SGLang 0.5.10 (spec §0–§3): request bodies the server accepts and the
//! response bodies, SSE chunks and error bodies it sends.

use super::textgen::Finish;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One value or a list of them (a list makes a `/generate` request a batch).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn get(&self, i: usize) -> Option<T> {
        match self {
            OneOrMany::One(t) => Some(t.clone()),
            OneOrMany::Many(v) => v.get(i).cloned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdsInput {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

/// `POST /generate` body (unknown top-level keys are ignored, as FastAPI does).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerateReq {
    pub text: Option<OneOrMany<String>>,
    pub input_ids: Option<IdsInput>,
    pub sampling_params: Option<OneOrMany<SamplingParams>>,
    #[serde(default)]
    pub stream: bool,
    pub rid: Option<OneOrMany<String>>,
    pub session_params: Option<SessionParams>,
}

/// `sampling_params` (spec §1.2); the simulator acts on the fields below.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingParams {
    pub max_new_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub stop: Option<OneOrMany<String>>,
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub no_stop_trim: bool,
    pub sampling_seed: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SessionParams {
    pub id: Option<String>,
    pub rid: Option<String>,
    pub offset: Option<i64>,
    pub replace: Option<bool>,
    pub drop_previous_output: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    /// A usage object (prompt and completion counts so far, never cached tokens) on every
    /// content chunk, with or without `include_usage` (SGLang's `should_include_usage`;
    /// vLLM's asks for both).
    #[serde(default)]
    pub continuous_usage_stats: bool,
}

impl StreamOptions {
    /// (include_usage, continuous usage) of a request's `stream_options`.
    pub fn usage(o: Option<&StreamOptions>) -> (bool, bool) {
        o.map_or((false, false), |o| {
            (o.include_usage, o.continuous_usage_stats)
        })
    }
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatReq {
    pub model: Option<String>,
    pub messages: Vec<Value>,
    pub max_completion_tokens: Option<u32>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<OneOrMany<String>>,
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub rid: Option<String>,
    pub seed: Option<u64>,
}

/// `POST /v1/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionReq {
    pub model: Option<String>,
    pub prompt: Value,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<OneOrMany<String>>,
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub rid: Option<String>,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OpenSessionReq {
    pub capacity_of_str_len: i64,
    pub session_id: Option<String>,
    pub streaming: Option<bool>,
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CloseSessionReq {
    pub session_id: String,
}

/// `meta_info.finish_reason` (spec §1.3), `type` first as SGLang writes it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FinishReason {
    Stop {
        matched: Matched,
    },
    Length {
        length: u32,
    },
    Abort {
        message: String,
        status_code: Option<u16>,
        err_type: Option<String>,
    },
}

/// The token id or the string that stopped generation.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Matched {
    Token(u32),
    Text(String),
}

pub fn finish_reason(f: &Finish) -> FinishReason {
    match f {
        Finish::Length(n) => FinishReason::Length { length: *n },
        Finish::StopToken(id) => FinishReason::Stop {
            matched: Matched::Token(*id),
        },
        Finish::StopString(s) => FinishReason::Stop {
            matched: Matched::Text(s.clone()),
        },
    }
}

pub fn abort_reason(message: &str, status_code: Option<u16>) -> FinishReason {
    FinishReason::Abort {
        message: message.to_string(),
        status_code,
        err_type: None,
    }
}

/// OpenAI `finish_reason` and `matched_stop`.
pub fn openai_finish(f: &Finish) -> (&'static str, Value) {
    match f {
        Finish::Length(_) => ("length", Value::Null),
        Finish::StopToken(id) => ("stop", json!(id)),
        Finish::StopString(s) => ("stop", json!(s)),
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CachedDetails {
    pub device: u32,
    pub host: u32,
}

/// `meta_info` in field order of spec §1.3.
#[derive(Debug, Serialize)]
pub struct MetaInfo<'a> {
    pub id: &'a str,
    pub finish_reason: Option<FinishReason>,
    pub prompt_tokens: u32,
    pub weight_version: &'static str,
    pub total_retractions: u32,
    pub reasoning_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
    pub cached_tokens_details: Option<CachedDetails>,
    pub dp_rank: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_latency: Option<f64>,
    pub response_sent_to_client_ts: f64,
    /// With `--enable-metrics` only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
}

/// The `meta_info` timing fields SGLang adds under `--enable-metrics` (spec §1.3), those
/// the simulator knows, all in engine time: timestamps are the server's Unix start time plus
/// engine seconds (so with `--sim-time-scale K` they run K× faster than the wall clock),
/// durations are engine seconds. Not emitted: `prefill_waiting_latency` and
/// `prefill_launch_latency` (the simulator has no launch or transfer delays to report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timing {
    /// The server received the request.
    pub request_received_ts: f64,
    /// Handed to the scheduler (= received: tokenization takes no engine time).
    pub api_server_dispatch_finish_ts: f64,
    /// Seconds in the waiting queue, until its first prefill step began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_time: Option<f64>,
    /// Its first prefill forward pass began (timestamp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_entry_time: Option<f64>,
    /// Its prefill finished and the first token was sampled (timestamp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_finished_time: Option<f64>,
    /// Final output only: the request finished (timestamp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_finished_ts: Option<f64>,
    /// Final output only: seconds from the first forward pass to the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference_time: Option<f64>,
    /// Final output only: output tokens after the first per decode second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_throughput: Option<f64>,
}

/// A native `/generate` body or SSE chunk.
#[derive(Debug, Serialize)]
pub struct GenerateOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    pub output_ids: &'a [u32],
    pub meta_info: MetaInfo<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptDetails {
    pub cached_tokens: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
    pub completion_tokens: u32,
    pub prompt_tokens_details: Option<PromptDetails>,
    pub reasoning_tokens: u32,
}

#[derive(Debug, Serialize)]
pub struct Delta<'a> {
    pub role: Option<&'static str>,
    pub content: Option<&'a str>,
    pub reasoning_content: Option<()>,
    pub tool_calls: Option<()>,
}

#[derive(Debug, Serialize)]
pub struct ChatChoice<'a> {
    pub index: usize,
    pub delta: Delta<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
    pub matched_stop: Value,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice<'a> {
    pub index: usize,
    pub text: &'a str,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
    pub matched_stop: Value,
}

/// An OpenAI stream chunk (`chat.completion.chunk` or `text_completion`).
#[derive(Debug, Serialize)]
pub struct Chunk<'a, C> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<C>,
    pub usage: Option<Usage>,
}

/// An error response in one of SGLang's shapes.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiError {
    /// Native `/generate` and session errors: `{"error":{"message":…}}`.
    pub fn native(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({"error": {"message": message.into()}}),
        }
    }

    /// Request validation (pydantic) errors, all routes.
    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({"object": "error", "message": message.into(), "type": "Bad Request",
                         "param": null, "code": 400}),
        }
    }

    /// OpenAI-route errors.
    pub fn openai(status: StatusCode, message: impl Into<String>) -> ApiError {
        let kind = if status.is_server_error() {
            "InternalServerError"
        } else {
            "BadRequestError"
        };
        ApiError {
            status,
            body: json!({"object": "error", "message": message.into(), "type": kind,
                         "param": null, "code": status.as_u16()}),
        }
    }

    pub fn message(&self) -> String {
        let b = &self.body;
        b.pointer("/error/message")
            .or_else(|| b.get("message"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// Parse a JSON body, mapping failures to SGLang's validation error.
pub fn parse_body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::validation(format!("invalid request body: {e}")))
}
