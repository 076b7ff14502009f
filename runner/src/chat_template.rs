//! Chat templates for the native `/generate` API, which takes text: the runner templates each
//! conversation itself, with the built-in ChatML (Qwen's, see [`crate::conversation`]) or the
//! Jinja template given by `--chat-template PATH`.
//!
//! PATH is a Hugging Face `tokenizer_config.json` (its `chat_template`: a string, or a list of
//! `{name, template}` of which the one named `default` is used; and its `bos_token` /
//! `eos_token`, strings or `{content}` objects) or a plain Jinja template file (anything that is
//! not JSON). Templates are rendered by minijinja, set up the way transformers'
//! `apply_chat_template` sets up Jinja2: `trim_blocks` and `lstrip_blocks`, loop controls,
//! Python's string and dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, …),
//! `raise_exception(msg)`, `strftime_now(fmt)`, a `tojson` that writes what Python's
//! `json.dumps(…, ensure_ascii=False)` writes, and `{% generation %}` blocks (rendered as
//! their body). The context is `messages` (`role`, `content`; roles `system`, `user`,
//! `assistant`, `tool` passed through), `add_generation_prompt`, `bos_token`, `eos_token`
//! (undefined when the config has none) and `tools` = `documents` = none.
//!
//! A render that begins with `bos_token` is sent without it: SGLang's `/generate` tokenizes
//! text with the tokenizer's special tokens (`add_special_tokens`), which puts the BOS first
//! itself (a template that writes it too, as Llama 3's does, would give two), unless the config
//! says `"add_bos_token": false`.
//!
//! `strftime_now` reads the clock once, when the template is loaded: every prompt of a run
//! renders the same date, so a run that crosses midnight keeps byte-identical prefixes.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Kwargs;
use minijinja::{Environment, ErrorKind, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::workload::Message;

/// How the manifest names the built-in ChatML.
pub const BUILTIN_CHATML: &str = "chatml (built-in)";

/// The template's name inside its minijinja environment.
const NAME: &str = "chat_template";

/// The chat template a sweep renders prompts with (`api = native`).
#[derive(Debug, Clone, Default)]
pub enum ChatTemplate {
    /// The built-in ChatML, appended message by message.
    #[default]
    ChatMl,
    /// A Jinja template from a file, re-rendered over the whole conversation every turn.
    Jinja(Arc<JinjaTemplate>),
}

impl ChatTemplate {
    /// Load and compile the template of `path` (a `tokenizer_config.json` or a Jinja file).
    pub fn load(path: &Path) -> Result<ChatTemplate, TemplateError> {
        JinjaTemplate::load(path).map(|t| ChatTemplate::Jinja(Arc::new(t)))
    }

    /// What the manifest records: `chatml (built-in)` or `<file name> sha256:<16 hex digits>`
    /// (the hash of the file's bytes).
    pub fn describe(&self) -> String {
        match self {
            ChatTemplate::ChatMl => BUILTIN_CHATML.to_string(),
            ChatTemplate::Jinja(t) => t.describe(),
        }
    }
}

/// A chat template that cannot be loaded or rendered. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid JSON: {message}", path.display())]
    Json { path: PathBuf, message: String },
    /// The file parsed but does not hold a usable template (no `chat_template`, wrong types).
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: chat template syntax error{}: {message}", path.display(), at_line(*line))]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{}: rendering the chat template failed{}: {message}", path.display(), at_line(*line))]
    Render {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// Session mode sends only what the server does not hold yet; this template rendered the
    /// conversation's earlier part differently once it grew.
    #[error(
        "{}: session mode needs a prefix-stable chat template (one that renders earlier turns \
         the same way every turn), and this one is not prefix-stable: {context}, the \
         re-rendered conversation differs from the text the server's session already holds \
         (the previous prompt and answer) at byte {offset}: held {held:?}, rendered \
         {rendered:?}; use cache mode prefix or none with this template",
        path.display()
    )]
    NotPrefixStable {
        path: PathBuf,
        /// Where it was seen (which conversation, which turn).
        context: String,
        offset: usize,
        held: String,
        rendered: String,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l} of the template"))
        .unwrap_or_default()
}

/// A compiled Jinja chat template and the special tokens it is rendered with.
/// Instructions one render may run ([`minijinja::Environment::set_fuel`]).
const TEMPLATE_FUEL: u64 = 50_000_000;

pub struct JinjaTemplate {
    path: PathBuf,
    /// Hex SHA-256 of the file's bytes.
    sha256: String,
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// The BOS the server's tokenizer adds, cut from the start of every render.
    added_bos: Option<String>,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// The source of a template and its special tokens, as read from a file.
struct Parts {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// `add_bos_token` of the config, when it says.
    add_bos_token: Option<bool>,
}

impl JinjaTemplate {
    /// Read `path` (a `tokenizer_config.json` or a plain Jinja file) and compile its template.
    pub fn load(path: &Path) -> Result<JinjaTemplate, TemplateError> {
        let bytes = std::fs::read(path).map_err(|source| TemplateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
        let text = String::from_utf8(bytes).map_err(|e| TemplateError::Config {
            path: path.to_path_buf(),
            message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        })?;
        let parts = if is_json(path, &text) {
            parse_config(path, &text)?
        } else {
            Parts {
                source: text,
                bos_token: None,
                eos_token: None,
                add_bos_token: None,
            }
        };
        JinjaTemplate::compile(path, sha256, parts, jiff::ZonedDateTime::now())
    }

    fn compile(
        path: &Path,
        sha256: String,
        parts: Parts,
        now: jiff::ZonedDateTime,
    ) -> Result<JinjaTemplate, TemplateError> {
        let syntax_err = |e: minijinja::Error| TemplateError::Syntax {
            path: path.to_path_buf(),
            line: e.line(),
            message: describe_error(&e),
        };
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(syntax_err)?,
        );
        // A bound on the work of one render: a chat template lays out a conversation in
        // thousands of steps, and one that loops without end (nested `range`s) stops with an
        // error instead of hanging the sweep.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", move |fmt: String| {
            jiff::fmt::strtime::format(&fmt, &now).map_err(|e| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now({fmt:?}): {e}"),
                )
            })
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, generation_blocks_as_if(&parts.source))
            .map_err(syntax_err)?;
        Ok(JinjaTemplate {
            path: path.to_path_buf(),
            sha256,
            env,
            added_bos: parts
                .bos_token
                .clone()
                .filter(|b| !b.is_empty() && parts.add_bos_token != Some(false)),
            bos_token: parts.bos_token,
            eos_token: parts.eos_token,
        })
    }

    /// The file the template came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<file name> sha256:<16 hex digits>`.
    pub fn describe(&self) -> String {
        let name = self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        format!("{name} sha256:{}", &self.sha256[..16])
    }

    /// Render `messages` (with the assistant's generation prompt when `add_generation_prompt`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let render_err = |e: minijinja::Error| TemplateError::Render {
            path: self.path.clone(),
            line: e.line(),
            message: describe_error(&e),
        };
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                minijinja::context! {
                    role => m.role.as_str(),
                    content => m.content.as_str(),
                }
            })
            .collect();
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        if let Some(t) = &self.bos_token {
            ctx.insert("bos_token", Value::from(t.as_str()));
        }
        if let Some(t) = &self.eos_token {
            ctx.insert("eos_token", Value::from(t.as_str()));
        }
        let text = self
            .env
            .get_template(NAME)
            .and_then(|t| t.render(Value::from(ctx)))
            .map_err(render_err)?;
        Ok(match &self.added_bos {
            Some(b) if text.starts_with(b.as_str()) => text[b.len()..].to_string(),
            _ => text,
        })
    }
}

/// JSON when the file is named `*.json` or its text opens a JSON object (`{"` or `{}`), which
/// a Jinja template (`{{`, `{%`, `{#`, text) does not.
fn is_json(path: &Path, text: &str) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        return true;
    }
    let mut rest = text.trim_start_matches('\u{feff}').trim_start();
    match rest.strip_prefix('{') {
        Some(r) => {
            rest = r.trim_start();
            rest.starts_with('"') || rest.starts_with('}')
        }
        None => false,
    }
}

/// The template and special tokens of a `tokenizer_config.json`.
fn parse_config(path: &Path, text: &str) -> Result<Parts, TemplateError> {
    let config_err = |message: String| TemplateError::Config {
        path: path.to_path_buf(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| {
            TemplateError::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
    let Some(obj) = v.as_object() else {
        return Err(config_err(
            "expected a JSON object (a tokenizer_config.json)".into(),
        ));
    };
    let source = match obj.get("chat_template") {
        None | Some(serde_json::Value::Null) => {
            return Err(config_err(
                "no `chat_template` field (newer tokenizers keep the template in a \
                 chat_template.jinja file beside the config: pass that file instead)"
                    .into(),
            ))
        }
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(list)) => {
            let mut names = Vec::new();
            let mut found = None;
            for (i, item) in list.iter().enumerate() {
                let name = item.get("name").and_then(|n| n.as_str());
                let template = item.get("template").and_then(|t| t.as_str());
                match (name, template) {
                    (Some(n), Some(t)) => {
                        if n == "default" && found.is_none() {
                            found = Some(t.to_string());
                        }
                        names.push(n.to_string());
                    }
                    _ => {
                        return Err(config_err(format!(
                            "`chat_template[{i}]`: expected an object with string `name` and \
                             `template`"
                        )))
                    }
                }
            }
            found.ok_or_else(|| {
                config_err(format!(
                    "`chat_template` lists no template named \"default\" (it has {names:?})"
                ))
            })?
        }
        Some(other) => {
            return Err(config_err(format!(
                "`chat_template` must be a string or a list of {{name, template}}, not {}",
                json_kind(other)
            )))
        }
    };
    Ok(Parts {
        source,
        bos_token: special_token(obj, "bos_token").map_err(config_err)?,
        eos_token: special_token(obj, "eos_token").map_err(config_err)?,
        add_bos_token: obj
            .get("add_bos_token")
            .and_then(serde_json::Value::as_bool),
    })
}

/// A special token: absent or null (none), a string, or an object with a string `content`.
fn special_token(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!("`{key}`: an object without a string `content`")),
        },
        Some(other) => Err(format!(
            "`{key}` must be a string or an object with `content`, not {}",
            json_kind(other)
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The message the template passed to `raise_exception`.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// `raise_exception(msg)`: stop rendering with `msg`.
fn raise_exception(msg: Value) -> Result<Value, minijinja::Error> {
    let msg = msg.as_str().map_or_else(|| msg.to_string(), String::from);
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
}

/// A minijinja error as one line: the template's own `raise_exception` message as it is,
/// anything else as kind and detail.
fn describe_error(e: &minijinja::Error) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<Raised>() {
            return format!("raise_exception: {}", r.0);
        }
        cause = c.source();
    }
    match (e.kind(), e.detail()) {
        (ErrorKind::SyntaxError, Some(d)) => d.to_string(),
        (kind, Some(d)) => format!("{kind}: {d}"),
        (kind, None) => kind.to_string(),
    }
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// sort_keys=sort_keys)` (`, ` and `: ` separators; `,` and newlines when indented).
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v.clone()).map_err(|_| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: indent must be a non-negative integer, not {v}"),
            )
        })?),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    // transformers always passes ensure_ascii=False; accept it being said explicitly.
    let _ = kwargs.get::<Option<bool>>("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json_err = |e: serde_json::Error| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}"))
    };
    // `sort_keys` through serde_json's own map (sorted); otherwise minijinja's order.
    let out = if sort_keys {
        let sorted = serde_json::to_value(value).map_err(json_err)?;
        dump(&sorted, indent)
    } else {
        dump(value, indent)
    }
    .map_err(json_err)?;
    Ok(Value::from(String::from_utf8_lossy(&out).into_owned()))
}

/// `value` as JSON with Python's separators: `, ` and `: `, or with an indent `,` + newline
/// and `: ` (which serde_json's pretty printer writes).
fn dump<T: serde::Serialize + ?Sized>(
    value: &T,
    indent: Option<usize>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let f = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, f))?;
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PythonSeparators,
        ))?,
    }
    Ok(out)
}

/// Python's `json.dumps` separators without an indent: `, ` and `: `.
pub(crate) struct PythonSeparators;

/// `, ` before every item but the first.
fn item_separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        w.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// transformers' Jinja has a `{% generation %}…{% endgeneration %}` block that marks the
/// assistant's tokens and renders its body unchanged. minijinja has no such tag, so each
/// becomes `{% if true %}…{% endif %}` with the same whitespace control, which renders the
/// same text.
fn generation_blocks_as_if(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        match generation_tag(tag) {
            Some((len, open_ws, end, close_ws)) => {
                out.push_str("{%");
                out.push_str(open_ws);
                out.push_str(if end { " endif " } else { " if true " });
                out.push_str(close_ws);
                out.push_str("%}");
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `s` opens with `{%[-+] generation|endgeneration [-+]%}`: its length, the opening
/// whitespace control, whether it ends the block, and the closing whitespace control.
fn generation_tag(s: &str) -> Option<(usize, &str, bool, &str)> {
    let body = s.strip_prefix("{%")?;
    let open_ws = match body.as_bytes().first() {
        Some(b'-') => "-",
        Some(b'+') => "+",
        _ => "",
    };
    let body = &body[open_ws.len()..];
    let trimmed = body.trim_start();
    let (end, after) = if let Some(a) = trimmed.strip_prefix("endgeneration") {
        (true, a)
    } else if let Some(a) = trimmed.strip_prefix("generation") {
        (false, a)
    } else {
        return None;
    };
    let after_ws = after.trim_start();
    if after_ws.len() == after.len() && !after.starts_with(['-', '+', '%']) {
        return None; // `generationfoo`: another name
    }
    let (close_ws, after_ws) = match after_ws.as_bytes().first() {
        Some(b'-') => ("-", &after_ws[1..]),
        Some(b'+') => ("+", &after_ws[1..]),
        _ => ("", after_ws),
    };
    let rest = after_ws.strip_prefix("%}")?;
    Some((s.len() - rest.len(), open_ws, end, close_ws))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Role;

    fn compile(source: &str) -> Result<JinjaTemplate, TemplateError> {
        let now = jiff::ZonedDateTime::now();
        JinjaTemplate::compile(
            Path::new("inline.jinja"),
            "0".repeat(64),
            Parts {
                source: source.into(),
                bos_token: Some("<s>".into()),
                eos_token: Some("</s>".into()),
                add_bos_token: None,
            },
            now,
        )
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let t = compile(
            "{{ {'a': [1, 2.5, none, true], 'b': 'x<\"y\n'} | tojson }}|\
             {{ [] | tojson }}{{ {} | tojson }}|{{ [1, {'k': 'v'}] | tojson(indent=2) }}|\
             {{ {'b': 1, 'a': 'é'} | tojson }}{{ {'b': 1, 'a': 'é'} | tojson(sort_keys=true) }}",
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\"a\": [1, 2.5, null, true], \"b\": \"x<\\\"y\\n\"}|[]{}|[\n  1,\n  {\n    \"k\": \"v\"\n  }\n]|\
             {\"b\": 1, \"a\": \"é\"}{\"a\": \"é\", \"b\": 1}"
        );
    }

    #[test]
    fn python_methods_and_hf_whitespace_rules() {
        let t = compile(
            "{% for m in messages %}\n  {% if m.content.startswith('  x') %}{{ m.content.strip() \
             | upper }}{% endif %}\n{% endfor %}{{ 'a,b'.split(',') | join('+') }}",
        )
        .unwrap();
        let out = t
            .render(&[Message::new(Role::User, "  xy  ")], false)
            .unwrap();
        // trim_blocks drops the newline after a block tag, lstrip_blocks the indent before it.
        assert_eq!(out, "XYa+b");
    }

    #[test]
    fn idioms_of_hugging_face_templates_work() {
        let t = compile(
            "{%- set ns = namespace(last_user=-1) -%}\
             {%- for m in messages[::-1] -%}\
                 {%- if ns.last_user < 0 and m['role'] == 'user' -%}\
                     {%- set ns.last_user = messages|length - 1 - loop.index0 -%}{%- break -%}\
                 {%- endif -%}\
             {%- endfor -%}\
             {{ ns.last_user }}|{{ messages[1:] | map(attribute='role') | join(',') }}|\
             {%- for m in messages if m.content is string and m.role != 'system' -%}\
                 {%- if loop.first %}{{ loop.length }}{% endif -%}\
                 {%- if m.content.endswith('!') %}{% continue %}{% endif -%}\
                 [{{ m.content | trim }}]\
             {%- endfor -%}|\
             {%- for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor -%}|\
             {{- '%s-%d' | format('x', 2) }}|{{ 'a b'.title() }}|{{ bos_token ~ eos_token }}",
        )
        .unwrap();
        let out = t
            .render(
                &[
                    Message::new(Role::System, "s"),
                    Message::new(Role::User, " u1 "),
                    Message::new(Role::Assistant, "hey!"),
                    Message::new(Role::User, "u2"),
                    Message::new(Role::Tool, "t"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            out,
            "3|user,assistant,user,tool|4[u1][u2][t]|a=1|x-2|A B|<s></s>"
        );
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let t = compile(
            "{% for m in messages %}{%- generation -%}\n[{{ m.content }}]\n{%- endgeneration %}\n{% endfor %}",
        )
        .unwrap();
        let out = t
            .render(&[Message::new(Role::Assistant, "a")], false)
            .unwrap();
        assert_eq!(out, "[a]");
        assert_eq!(
            generation_blocks_as_if("{%generationx%}"),
            "{%generationx%}"
        );
        assert_eq!(
            generation_blocks_as_if("{%+ endgeneration -%}"),
            "{%+ endif -%}"
        );
    }

    #[test]
    fn strftime_now_formats_the_load_time_and_rejects_bad_formats() {
        let t = compile("{{ strftime_now('%Y') }}").unwrap();
        let year = t.render(&[], false).unwrap();
        assert!(year.len() == 4 && year.parse::<u32>().is_ok(), "{year}");
        let t = compile("{{ strftime_now('%Y %') }}").unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(
            e.contains("strftime_now") && e.contains("inline.jinja"),
            "{e}"
        );
    }

    #[test]
    fn a_rendered_bos_is_left_to_the_servers_tokenizer() {
        let with = |add_bos_token| {
            JinjaTemplate::compile(
                Path::new("x.json"),
                "0".repeat(64),
                Parts {
                    source: "{{ bos_token }}[{{ bos_token }}]".into(),
                    bos_token: Some("<s>".into()),
                    eos_token: None,
                    add_bos_token,
                },
                jiff::ZonedDateTime::now(),
            )
            .unwrap()
            .render(&[], true)
            .unwrap()
        };
        // Only the leading one, and not when the config says the tokenizer adds none.
        assert_eq!(with(None), "[<s>]");
        assert_eq!(with(Some(true)), "[<s>]");
        assert_eq!(with(Some(false)), "<s>[<s>]");
    }

    #[test]
    fn undefined_special_tokens_render_empty_and_tools_is_none() {
        let t = JinjaTemplate::compile(
            Path::new("x.jinja"),
            "0".repeat(64),
            Parts {
                source: "[{{ bos_token }}]{% if tools is not none %}tools{% endif %}".into(),
                bos_token: None,
                eos_token: None,
                add_bos_token: None,
            },
            jiff::ZonedDateTime::now(),
        )
        .unwrap();
        assert_eq!(t.render(&[], true).unwrap(), "[]");
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/chat_template")
            .join(name)
    }

    fn load_err(path: &Path) -> String {
        ChatTemplate::load(path).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_file_and_what_is_wrong() {
        let e = load_err(&fixture("malformed/tokenizer_config.json"));
        assert!(
            e.contains("malformed/tokenizer_config.json")
                && e.contains("not valid JSON")
                && e.contains("line 4"),
            "{e}"
        );
        let e = load_err(&fixture("no-template/tokenizer_config.json"));
        assert!(
            e.contains("no-template/tokenizer_config.json")
                && e.contains("no `chat_template` field"),
            "{e}"
        );
        let e = load_err(&fixture("syntax-error.jinja"));
        assert!(
            e.contains("syntax-error.jinja") && e.contains("syntax error at line 4"),
            "{e}"
        );
        let e = load_err(&fixture("nowhere/tokenizer_config.json"));
        assert!(e.contains("nowhere/tokenizer_config.json"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let e = load_err(&write(
            "list.json",
            br#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#,
        ));
        assert!(
            e.contains("list.json")
                && e.contains(r#"no template named "default""#)
                && e.contains("tool_use"),
            "{e}"
        );
        let e = load_err(&write("kind.json", br#"{"chat_template": 3}"#));
        assert!(e.contains("must be a string or a list"), "{e}");
        let e = load_err(&write(
            "bos.json",
            br#"{"chat_template": "x", "bos_token": 1}"#,
        ));
        assert!(e.contains("bos.json") && e.contains("`bos_token`"), "{e}");
        let e = load_err(&write(
            "eos.json",
            br#"{"chat_template": "x", "eos_token": {"special": true}}"#,
        ));
        assert!(e.contains("`eos_token`") && e.contains("`content`"), "{e}");
        let e = load_err(&write("array.json", b"[1]"));
        assert!(e.contains("expected a JSON object"), "{e}");
        let e = load_err(&write("binary.jinja", b"{{ x }}\xff"));
        assert!(e.contains("binary.jinja") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn a_template_that_loops_without_end_stops_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nested.jinja");
        std::fs::write(
            &p,
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        let e = match JinjaTemplate::load(&p) {
            Err(e) => e.to_string(),
            Ok(t) => t
                .render(&[Message::new(Role::User, "hi")], true)
                .unwrap_err()
                .to_string(),
        };
        assert!(e.contains("nested.jinja") && e.contains("fuel"), "{e}");
        // (10^10 steps; the bound stops it after 5·10^7, well within a minute in debug.)
        assert!(t0.elapsed() < std::time::Duration::from_secs(60));
    }

    #[test]
    fn a_plain_jinja_file_is_a_template() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jinja");
        std::fs::write(&p, "{{ messages | length }}{{ eos_token }}\n").unwrap();
        let ChatTemplate::Jinja(t) = ChatTemplate::load(&p).unwrap() else {
            panic!("a Jinja template");
        };
        let out = t
            .render(
                &[Message::new(Role::User, "x"), Message::new(Role::User, "y")],
                true,
            )
            .unwrap();
        assert_eq!(
            out, "2",
            "no eos_token outside a tokenizer config; trailing newline dropped"
        );
        // sha256 of the bytes "{{ messages | length }}{{ eos_token }}\n".
        let want = Sha256::digest(b"{{ messages | length }}{{ eos_token }}\n");
        let hex = format!("{want:x}");
        assert_eq!(t.describe(), format!("t.jinja sha256:{}", &hex[..16]));
        assert_eq!(ChatTemplate::ChatMl.describe(), BUILTIN_CHATML);
    }

    #[test]
    fn json_is_told_from_jinja() {
        let p = Path::new("t.jinja");
        assert!(is_json(p, " {\n \"chat_template\": 1}"));
        assert!(is_json(p, "{}"));
        assert!(is_json(Path::new("a/tokenizer_config.JSON"), "{{ x }}"));
        assert!(!is_json(p, "{{ bos_token }}"));
        assert!(!is_json(p, "{%- for m in messages %}"));
        assert!(!is_json(p, "{# comment #}"));
    }
}
