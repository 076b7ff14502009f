//! A trajectory's conversation as it grows, and the request each cache mode sends for the next
//! turn: the whole ChatML text (`prefix`, `none`), only the text added since the previous
//! request (`session`), or the OpenAI `messages` list.
//!
//! ChatML (Qwen's template): `<|im_start|>{role}\n{content}<|im_end|>\n` per message, and
//! `<|im_start|>assistant\n` opens the generation. Tool messages become user turns wrapped in
//! `<tool_response>` as Qwen2.5's template does.

use crate::workload::{Message, Role};

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

#[derive(Debug, Clone)]
pub struct Conversation {
    messages: Vec<Message>,
    /// ChatML of `messages`.
    rendered: String,
    /// Text the server has not seen yet (session mode), without the generation prompt.
    unsent: String,
}

impl Conversation {
    pub fn new(prelude: &[Message]) -> Conversation {
        let mut rendered = String::new();
        prelude.iter().for_each(|m| render(m, &mut rendered));
        Conversation {
            messages: prelude.to_vec(),
            unsent: rendered.clone(),
            rendered,
        }
    }

    /// The whole conversation, templated, with the generation prompt.
    pub fn full_text(&self) -> String {
        format!("{}{GENERATION_PROMPT}", self.rendered)
    }

    /// Session mode: the text added since the previous request, with the generation prompt.
    pub fn new_text(&self) -> String {
        format!("{}{GENERATION_PROMPT}", self.unsent)
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Record the answer to the current turn and the messages that follow it.
    /// `generated`: the answer is what the server just generated (so a session's parent
    /// already holds it); otherwise it is the dataset's recorded answer.
    pub fn advance(&mut self, answer: &str, generated: bool, after: &[Message]) {
        let msg = Message::new(Role::Assistant, answer);
        self.rendered.push_str(GENERATION_PROMPT);
        self.rendered.push_str(answer);
        self.rendered.push_str(END);
        self.unsent.clear();
        if !generated {
            self.unsent.push_str(answer);
        }
        self.unsent.push_str(END);
        self.messages.push(msg);
        for m in after {
            render(m, &mut self.rendered);
            render(m, &mut self.unsent);
            self.messages.push(m.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_text_is_the_suffix_of_the_full_text() {
        let mut c = Conversation::new(&[
            Message::new(Role::System, "sys"),
            Message::new(Role::User, "fix it"),
        ]);
        let first = c.full_text();
        assert_eq!(first, c.new_text());
        assert_eq!(
            first,
            "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nfix it<|im_end|>\n<|im_start|>assistant\n"
        );
        c.advance("ANSWER", true, &[Message::new(Role::Tool, "ok")]);
        // The session's parent holds first + "ANSWER"; the new text completes the full text.
        assert_eq!(format!("{first}ANSWER{}", c.new_text()), c.full_text());
        c.advance("REC", false, &[Message::new(Role::User, "more")]);
        assert!(c
            .new_text()
            .starts_with("REC<|im_end|>\n<|im_start|>user\nmore"));
        assert_eq!(c.messages().len(), 6);
    }
}
