//! A trajectory's conversation as it grows, and the request each cache mode sends for the next
//! turn: the whole templated text (`prefix`, `none`), only the text added since the previous
//! request (`session`), or the OpenAI `messages` list.
//!
//! The built-in template is ChatML (Qwen's): `<|im_start|>{role}\n{content}<|im_end|>\n` per
//! message, and `<|im_start|>assistant\n` opens the generation. Tool messages become user turns
//! wrapped in `<tool_response>`, and a conversation without a system message opens with the
//! default one ([`QWEN_DEFAULT_SYSTEM`]), as Qwen2.5's template does. It is appended message
//! by message.
//!
//! With `--chat-template` ([`crate::chat_template`]) the conversation is re-rendered over all
//! its messages every turn (with `add_generation_prompt`). The session text is then the new
//! render minus what the session already holds: the previous request's text, plus the answer
//! when the server generated it (a recorded answer replaces the generated one, which the
//! session drops). A template whose new render does not start with that text is not
//! prefix-stable (e.g. it strips reasoning from earlier turns) and cannot run in session mode:
//! [`probe`] finds that before a sweep starts, [`Conversation::new_text`] at the turn.

use crate::chat_template::{ChatTemplate, JinjaTemplate, TemplateError};
use crate::workload::{Message, Role, Trajectory};
use std::sync::Arc;
use turnbench_schema::HistorySource;

/// Qwen2.5's default system prompt, which its chat template puts first when the conversation
/// has no system message (as SGLang's OpenAI API does with that template, and serve-sim's).
pub const QWEN_DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// Opens the assistant's turn.
pub const GENERATION_PROMPT: &str = "<|im_start|>assistant\n";
const END: &str = "<|im_end|>\n";

/// Render one message as ChatML.
pub fn render(m: &Message, out: &mut String) {
    match m.role {
        Role::Tool => {
            out.push_str("<|im_start|>user\n<tool_response>\n");
            out.push_str(&m.content);
            out.push_str("\n</tool_response>");
        }
        r => {
            out.push_str("<|im_start|>");
            out.push_str(r.as_str());
            out.push('\n');
            out.push_str(&m.content);
        }
    }
    out.push_str(END);
}

/// A trajectory's conversation and its templated text.
#[derive(Debug, Clone)]
pub struct Conversation {
    messages: Vec<Message>,
    text: Text,
}

#[derive(Debug, Clone)]
enum Text {
    /// The built-in ChatML, appended message by message.
    ChatMl {
        /// ChatML of `messages`.
        rendered: String,
        /// Text the server has not seen yet (session mode), without the generation prompt.
        unsent: String,
    },
    /// A Jinja template, re-rendered over the whole conversation.
    Jinja {
        template: Arc<JinjaTemplate>,
        /// All messages rendered, with the generation prompt.
        full: String,
        /// What a session already holds before the next request: the previous request's
        /// text, plus the answer when the server generated it (empty before the first turn).
        held: String,
        /// Answers so far (for errors).
        turns: usize,
    },
}

impl Conversation {
    /// A conversation templated with the built-in ChatML.
    pub fn new(prelude: &[Message]) -> Conversation {
        let mut rendered = String::new();
        // As Qwen2.5's template: without a system message of its own, the conversation opens
        // with the default one (so native and OpenAI requests send the same prompt).
        if prelude.first().map(|m| m.role) != Some(Role::System) {
            render(
                &Message::new(Role::System, QWEN_DEFAULT_SYSTEM),
                &mut rendered,
            );
        }
        prelude.iter().for_each(|m| render(m, &mut rendered));
        Conversation {
            messages: prelude.to_vec(),
            text: Text::ChatMl {
                unsent: rendered.clone(),
                rendered,
            },
        }
    }

    /// A conversation templated with `template` (rendered now: a template that fails on the
    /// prelude fails here).
    pub fn with_template(
        template: &ChatTemplate,
        prelude: &[Message],
    ) -> Result<Conversation, TemplateError> {
        match template {
            ChatTemplate::ChatMl => Ok(Conversation::new(prelude)),
            ChatTemplate::Jinja(t) => Ok(Conversation {
                messages: prelude.to_vec(),
                text: Text::Jinja {
                    full: t.render(prelude, true)?,
                    template: t.clone(),
                    held: String::new(),
                    turns: 0,
                },
            }),
        }
    }

    /// The whole conversation, templated, with the generation prompt.
    pub fn full_text(&self) -> String {
        match &self.text {
            Text::ChatMl { rendered, .. } => format!("{rendered}{GENERATION_PROMPT}"),
            Text::Jinja { full, .. } => full.clone(),
        }
    }

    /// Session mode: the text added since the previous request, with the generation prompt.
    /// Fails when the template re-rendered the part the session already holds differently
    /// (it is not prefix-stable).
    pub fn new_text(&self) -> Result<String, TemplateError> {
        match &self.text {
            Text::ChatMl { unsent, .. } => Ok(format!("{unsent}{GENERATION_PROMPT}")),
            Text::Jinja {
                template,
                full,
                held,
                turns,
            } => match full.strip_prefix(held.as_str()) {
                Some(new) => Ok(new.to_string()),
                None => Err(not_prefix_stable(template, *turns, held, full)),
            },
        }
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Record the answer to the current turn and the messages that follow it.
    /// `held`: a session's parent already holds the answer (the server generated it, and
    /// holds nothing past it once a matched stop token is cut off with `offset`); otherwise
    /// the session drops the parent's output and the answer is sent as new text (a recorded
    /// answer, or a generated one that ended in a stop string, whose tokens the parent holds).
    /// Fails only when a Jinja template fails to render.
    pub fn advance(
        &mut self,
        answer: &str,
        held: bool,
        after: &[Message],
    ) -> Result<(), TemplateError> {
        self.messages.push(Message::new(Role::Assistant, answer));
        self.messages.extend_from_slice(after);
        match &mut self.text {
            Text::ChatMl { rendered, unsent } => {
                rendered.push_str(GENERATION_PROMPT);
                rendered.push_str(answer);
                rendered.push_str(END);
                unsent.clear();
                if !held {
                    unsent.push_str(answer);
                }
                unsent.push_str(END);
                for m in after {
                    render(m, rendered);
                    render(m, unsent);
                }
            }
            Text::Jinja {
                template,
                full,
                held: held_text,
                turns,
            } => {
                let next = template.render(&self.messages, true)?;
                *held_text = std::mem::replace(full, next);
                if held {
                    held_text.push_str(answer);
                }
                *turns += 1;
            }
        }
        Ok(())
    }
}

fn not_prefix_stable(t: &JinjaTemplate, turns: usize, held: &str, full: &str) -> TemplateError {
    let mut at = held
        .bytes()
        .zip(full.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    while !held.is_char_boundary(at) || !full.is_char_boundary(at) {
        at -= 1;
    }
    let snippet = |s: &str| s[at..].chars().take(40).collect::<String>();
    TemplateError::NotPrefixStable {
        path: t.path().to_path_buf(),
        context: format!("after turn {turns}"),
        offset: at,
        held: snippet(held),
        rendered: snippet(full),
    }
}

/// Render the first turns of `traj` as a sweep will, before anything starts, so that a
/// template that fails (`raise_exception`, a missing variable) or, when `session`, is not
/// prefix-stable stops the sweep up front. Answers are the dataset's recorded ones under
/// `HistorySource::Recorded`, else stand-ins like a model's: one wrapped in whitespace
/// (templates that trim messages, as Llama 3's does, are not prefix-stable for generated
/// text) and one holding a `<think>` block (nor are templates that strip reasoning from
/// earlier turns).
pub fn probe(
    template: &ChatTemplate,
    traj: &Trajectory,
    history: HistorySource,
    session: bool,
    max_turns: usize,
) -> Result<(), TemplateError> {
    let mut conv = Conversation::with_template(template, &traj.prelude)?;
    // A template that renders nothing would send empty prompts, every turn failing.
    if conv.full_text().trim().is_empty() {
        if let ChatTemplate::Jinja(j) = template {
            return Err(TemplateError::Render {
                path: j.path().to_path_buf(),
                line: None,
                message: "it renders the conversation as empty text".into(),
            });
        }
    }
    for (k, turn) in traj.turns.iter().enumerate().take(max_turns) {
        if session {
            conv.new_text().map_err(in_probe)?;
        }
        if k + 1 == traj.turns.len() {
            break; // as in a sweep: nothing follows the last answer
        }
        let (answer, generated) = match (&turn.recorded, history) {
            (Some(r), HistorySource::Recorded) => (r.clone(), false),
            _ if k % 3 == 0 => (" A stand-in answer, as generated.\n".to_string(), true),
            _ if k % 3 == 1 => (
                "<think>\nA stand-in for the model's reasoning.\n</think>\n\nA stand-in answer."
                    .into(),
                true,
            ),
            _ => ("A stand-in answer.".to_string(), true),
        };
        conv.advance(&answer, generated, &turn.after)?;
    }
    Ok(())
}

/// Say that a prefix-stability error was found on the probe, before the sweep.
fn in_probe(e: TemplateError) -> TemplateError {
    match e {
        TemplateError::NotPrefixStable {
            path,
            context,
            offset,
            held,
            rendered,
        } => TemplateError::NotPrefixStable {
            path,
            context: format!("on a probe before the sweep started, {context}"),
            offset,
            held,
            rendered,
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Turn;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/chat_template")
            .join(name)
    }

    fn template(name: &str) -> ChatTemplate {
        ChatTemplate::load(&fixture(name)).unwrap()
    }

    fn m(role: Role, content: &str) -> Message {
        Message::new(role, content)
    }

    #[test]
    fn session_text_is_the_suffix_of_the_full_text() {
        let mut c = Conversation::new(&[
            Message::new(Role::System, "sys"),
            Message::new(Role::User, "fix it"),
        ]);
        let first = c.full_text();
        assert_eq!(first, c.new_text().unwrap());
        assert_eq!(
            first,
            "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nfix it<|im_end|>\n<|im_start|>assistant\n"
        );
        c.advance("ANSWER", true, &[Message::new(Role::Tool, "ok")])
            .unwrap();
        // The session's parent holds first + "ANSWER"; the new text completes the full text.
        assert_eq!(
            format!("{first}ANSWER{}", c.new_text().unwrap()),
            c.full_text()
        );
        c.advance("REC", false, &[Message::new(Role::User, "more")])
            .unwrap();
        assert!(c
            .new_text()
            .unwrap()
            .starts_with("REC<|im_end|>\n<|im_start|>user\nmore"));
        assert_eq!(c.messages().len(), 6);
    }

    /// A prelude, then per turn the answer and the messages after it.
    type Script = (Vec<Message>, Vec<(&'static str, Vec<Message>)>);

    /// Conversations of several shapes.
    fn conversations() -> Vec<Script> {
        vec![
            (
                vec![
                    m(Role::System, "You are a coding agent."),
                    m(Role::User, "Fix the bug."),
                ],
                vec![
                    (
                        "I will look.\n<function=ls>",
                        vec![m(Role::Tool, "a.py\nb.py")],
                    ),
                    (
                        "<think>\nhm\n</think>\n\nRead a.py",
                        vec![m(Role::User, "  def f(): pass  \n")],
                    ),
                    ("", vec![m(Role::Tool, "")]),
                    ("Done. ", vec![]),
                ],
            ),
            (
                vec![m(
                    Role::User,
                    "héllo — {{ not a tag }} {% raw %} <|im_end|>",
                )],
                vec![
                    (
                        "ünïcode ✓\n\n",
                        vec![m(Role::User, "next"), m(Role::Tool, "t1")],
                    ),
                    ("again", vec![m(Role::Tool, "t2")]),
                ],
            ),
            (vec![m(Role::System, "")], vec![("only", vec![])]),
        ]
    }

    #[test]
    fn jinja_chatml_renders_the_builtin_chatml_byte_for_byte() {
        let jinja = template("chatml/tokenizer_config.json");
        assert!(matches!(jinja, ChatTemplate::Jinja(_)));
        for (prelude, turns) in conversations() {
            for generated in [true, false] {
                let mut builtin = Conversation::new(&prelude);
                let mut other = Conversation::with_template(&jinja, &prelude).unwrap();
                for (k, (answer, after)) in turns.iter().enumerate() {
                    let at = format!("{prelude:?}, turn {k}, generated {generated}");
                    assert_eq!(other.full_text(), builtin.full_text(), "full text: {at}");
                    assert_eq!(
                        other.new_text().unwrap(),
                        builtin.new_text().unwrap(),
                        "session text: {at}"
                    );
                    builtin.advance(answer, generated, after).unwrap();
                    other.advance(answer, generated, after).unwrap();
                    assert_eq!(other.messages(), builtin.messages());
                }
                assert_eq!(other.full_text(), builtin.full_text());
                assert_eq!(other.new_text().unwrap(), builtin.new_text().unwrap());
            }
        }
    }

    #[test]
    fn session_text_follows_what_the_server_holds() {
        let jinja = template("chatml/tokenizer_config.json");
        let prelude = [m(Role::System, "s"), m(Role::User, "u")];
        let mut c = Conversation::with_template(&jinja, &prelude).unwrap();
        let first = c.full_text();
        // Generated: the session holds the first prompt and the answer.
        c.advance("A", true, &[m(Role::Tool, "o")]).unwrap();
        assert_eq!(format!("{first}A{}", c.new_text().unwrap()), c.full_text());
        assert!(c.new_text().unwrap().starts_with("<|im_end|>\n"));
        // Recorded: the session dropped the generated answer; the recorded one is sent.
        let second = c.full_text();
        c.advance("R", false, &[m(Role::User, "n")]).unwrap();
        assert_eq!(format!("{second}{}", c.new_text().unwrap()), c.full_text());
        assert!(c.new_text().unwrap().starts_with("R<|im_end|>\n"));
    }

    #[test]
    fn a_header_style_template_renders_what_it_says() {
        let t = template("headers/tokenizer_config.json");
        let mut c =
            Conversation::with_template(&t, &[m(Role::System, "sys"), m(Role::User, " fix it \n")])
                .unwrap();
        // bos and eos come from the config's {content} objects; the "default" entry of the
        // template list is used; content is trimmed; tool messages become `ipython`. The
        // rendered `<|begin_of_text|>` is cut: the server's tokenizer puts it first itself.
        assert_eq!(
            c.full_text(),
            "<|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nfix it<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        c.advance("ls", true, &[m(Role::Tool, "a.py")]).unwrap();
        assert_eq!(
            c.new_text().unwrap(),
            "<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\na.py<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            t.describe().split(' ').next(),
            Some("tokenizer_config.json")
        );
        assert!(t.describe().starts_with("tokenizer_config.json sha256:"));
        assert_eq!(
            t.describe().len(),
            "tokenizer_config.json sha256:".len() + 16
        );
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = template("headers/tokenizer_config.json");
        let e = Conversation::with_template(&t, &[m(Role::User, "no system prompt")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("headers/tokenizer_config.json")
                && e.contains("raise_exception: the first message must be the system prompt")
                && e.contains("line 3"),
            "{e}"
        );
    }

    fn trajectory(recorded: Option<&str>) -> Trajectory {
        let turn = |after: Vec<Message>| Turn {
            recorded: recorded.map(String::from),
            after,
            think_time: 0.0,
        };
        Trajectory {
            id: "t0".into(),
            prelude: vec![m(Role::System, "s"), m(Role::User, "u")],
            turns: vec![
                turn(vec![m(Role::Tool, "o1")]),
                turn(vec![m(Role::Tool, "o2")]),
                turn(vec![m(Role::Tool, "o3")]),
                turn(vec![]),
            ],
        }
    }

    #[test]
    fn a_template_that_rewrites_earlier_turns_fails_in_session_mode() {
        let t = template("strips-reasoning.jinja");
        let mut c =
            Conversation::with_template(&t, &[m(Role::System, "s"), m(Role::User, "u")]).unwrap();
        c.new_text().unwrap();
        c.advance("<think>\nwhy\n</think>\n\nls", true, &[m(Role::Tool, "o")])
            .unwrap();
        // The whole text is fine for prefix and none ...
        assert!(c
            .full_text()
            .contains("<|im_start|>assistant\nls<|im_end|>"));
        // ... but the session holds the answer with its reasoning.
        let e = c.new_text().unwrap_err().to_string();
        assert!(
            e.contains("strips-reasoning.jinja")
                && e.contains("not prefix-stable")
                && e.contains("session mode needs a prefix-stable chat template")
                && e.contains("after turn 1"),
            "{e}"
        );
        // The probe finds it before a sweep (its stand-in answers include reasoning) ...
        let generated = trajectory(None);
        let e = probe(&t, &generated, HistorySource::Generated, true, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("on a probe before the sweep started"), "{e}");
        assert!(e.contains("session mode needs a prefix-stable"), "{e}");
        // ... and only for session mode.
        probe(&t, &generated, HistorySource::Generated, false, 3).unwrap();
        // With recorded history the session holds only the prompt, and every render strips
        // the recorded reasoning alike: prefix-stable.
        let recorded = trajectory(Some("<think>\nr\n</think>\n\nanswer"));
        probe(&t, &recorded, HistorySource::Recorded, true, 4).unwrap();
        // Prefix-stable templates pass.
        probe(
            &template("chatml/tokenizer_config.json"),
            &generated,
            HistorySource::Generated,
            true,
            4,
        )
        .unwrap();
        // A template that trims messages (as Llama 3's does) is not prefix-stable for
        // generated answers, which the server holds untrimmed: the probe's stand-in answer
        // wrapped in whitespace finds it; with recorded history, or without sessions, it runs.
        let headers = template("headers/tokenizer_config.json");
        let e = probe(&headers, &generated, HistorySource::Generated, true, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("on a probe before the sweep started"), "{e}");
        probe(&headers, &generated, HistorySource::Generated, false, 4).unwrap();
        let recorded_plain = trajectory(Some("answer"));
        probe(&headers, &recorded_plain, HistorySource::Recorded, true, 4).unwrap();
        probe(
            &ChatTemplate::ChatMl,
            &generated,
            HistorySource::Generated,
            true,
            4,
        )
        .unwrap();
    }
}
