//! Tokenizers of the simulated server: the built-in deterministic one, or a HF
//! `tokenizer.json` loaded through the `tokenizers` crate for exact counts.
//!
//! # The built-in tokenizer
//! No vocabulary file, stable across runs and platforms, roughly 4 characters per token on
//! English text. Encoding:
//! 1. The special tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`) are matched first;
//!    each is one token with a fixed id (Qwen's ids 151643..=151645 when the vocabulary is
//!    that large, else the three last ids).
//! 2. The text between them is split into *pieces*: runs of letters, runs of digits, runs of
//!    other symbols, and runs of whitespace. A single space (U+0020) that ends a whitespace
//!    run attaches to the piece that follows it (` word`), as in GPT-style BPE.
//! 3. Each piece is cut, from its start, into chunks of at most 4 characters; a chunk's id is
//!    the 64-bit FNV-1a hash of its UTF-8 bytes modulo the number of non-special ids.
//!
//! Properties that prefix caching relies on (tested with proptest):
//! - `encode(a + b) == encode(a) ++ encode(b)` whenever `a` ends with a special token, `b`
//!   starts with one, or `a` ends with a non-whitespace character and `b` starts with
//!   whitespace.
//! - The generator's pseudo-text (built from [`Tokenizer::units`]) re-encodes to exactly the
//!   ids it was generated as, also when appended to any prompt, so a client that resends
//!   prompt + output + new text reuses the cached prompt + output.

use anyhow::Context as _;
use std::collections::HashMap;
use std::path::Path;

/// ChatML special tokens, in id order.
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const QWEN_ENDOFTEXT: u32 = 151_643;
const CHUNK_CHARS: usize = 4;

/// Words the generator draws pseudo-text from (each emitted with a leading space).
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "this",
    "are",
    "or",
    "from",
    "at",
    "which",
    "file",
    "function",
    "value",
    "return",
    "error",
    "test",
    "call",
    "patch",
    "change",
    "line",
    "code",
    "class",
    "method",
    "module",
    "import",
    "check",
    "case",
    "input",
    "output",
    "result",
    "issue",
    "fix",
    "run",
    "step",
    "next",
    "we",
    "need",
    "should",
    "will",
    "can",
    "now",
    "then",
    "also",
    "first",
    "update",
    "variable",
    "parameter",
    "string",
    "list",
    "index",
    "path",
    "config",
    "default",
    "handler",
    "request",
    "response",
    "server",
    "client",
    "cache",
    "token",
    "model",
    "batch",
    "loop",
    "branch",
    "commit",
    "diff",
    "repository",
    "directory",
    "command",
    "argument",
    "option",
    "flag",
    "type",
    "object",
    "field",
    "name",
    "number",
    "count",
    "length",
    "size",
    "before",
    "after",
    "when",
    "if",
    "else",
    "because",
    "so",
    "but",
    "all",
    "each",
    "some",
    "one",
    "two",
    "three",
    "new",
    "old",
    "same",
    "other",
    "more",
    "less",
    "last",
    "only",
    "look",
    "see",
    "find",
    "open",
    "read",
    "write",
    "add",
    "remove",
    "keep",
    "use",
    "make",
    "let",
    "me",
    "us",
    "our",
    "its",
    "into",
    "over",
    "under",
    "again",
    "here",
    "there",
];

/// A unit the generator emits whole (unless cut short by a limit): its ids, and the
/// cumulative text after each of them.
#[derive(Debug, Clone)]
pub struct Unit {
    pub ids: Vec<u32>,
    /// `text_after[k]` = the unit's text after its first `k + 1` ids.
    pub text_after: Vec<String>,
}

/// The generator's alphabet: words, and the punctuation that may follow a word.
#[derive(Debug, Clone)]
pub struct Units {
    pub words: Vec<Unit>,
    /// `.`, `,`, and `.\n\n` — only ever emitted right after a word.
    pub punct: Vec<Unit>,
}

pub enum Tokenizer {
    Builtin(Builtin),
    Hf(Box<HfTokenizer>),
}

impl Tokenizer {
    /// The built-in tokenizer for a vocabulary of `vocab` ids.
    pub fn builtin(vocab: u32) -> Tokenizer {
        Tokenizer::Builtin(Builtin::new(vocab))
    }

    /// Load `dir/tokenizer.json`.
    pub fn from_hf_file(path: &Path, eos_ids: &[u32]) -> anyhow::Result<Tokenizer> {
        HfTokenizer::load(path, eos_ids).map(|t| Tokenizer::Hf(Box::new(t)))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Tokenizer::Builtin(_) => "builtin",
            Tokenizer::Hf(_) => "tokenizer.json",
        }
    }

    /// Tokenize `text` as SGLang does for a raw prompt (no chat template).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::Builtin(b) => b.encode(text),
            Tokenizer::Hf(h) => h.encode(text),
        }
    }

    /// Decode with special tokens skipped (SGLang's default).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Builtin(b) => b.decode(ids),
            Tokenizer::Hf(h) => h.decode(ids),
        }
    }

    /// The id generation ends with (Qwen: `<|im_end|>`).
    pub fn eos_id(&self) -> u32 {
        match self {
            Tokenizer::Builtin(b) => b.special_base + 2,
            Tokenizer::Hf(h) => h.eos,
        }
    }

    pub fn units(&self) -> &Units {
        match self {
            Tokenizer::Builtin(b) => &b.units,
            Tokenizer::Hf(h) => &h.units,
        }
    }
}

/// The built-in tokenizer (see the module docs).
pub struct Builtin {
    special_base: u32,
    units: Units,
    /// Text of every id the generator can emit (decode is only needed for generated ids).
    pieces: HashMap<u32, String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Digit,
    Space,
    Symbol,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Symbol
    }
}

/// 64-bit FNV-1a: tiny, fast, and fixed forever (ids must not change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Builtin {
    pub fn new(vocab: u32) -> Builtin {
        let special_base = if vocab > QWEN_ENDOFTEXT + 2 {
            QWEN_ENDOFTEXT
        } else {
            vocab.max(1024) - 3
        };
        let mut b = Builtin {
            special_base,
            units: Units {
                words: Vec::new(),
                punct: Vec::new(),
            },
            pieces: HashMap::new(),
        };
        let mut taken: HashMap<u32, String> = HashMap::new();
        let mut make = |b: &Builtin, text: &str| -> Option<Unit> {
            let ids = b.encode(text);
            let mut chunks = Vec::new();
            b.for_each_chunk(text, |c| chunks.push(c.to_string()));
            // Keep the decode table unambiguous: drop a unit whose chunk collides.
            for (id, c) in ids.iter().zip(&chunks) {
                if taken.get(id).is_some_and(|t| t != c) {
                    return None;
                }
            }
            let mut text_after = Vec::new();
            let mut acc = String::new();
            for (id, c) in ids.iter().zip(&chunks) {
                taken.insert(*id, c.clone());
                acc.push_str(c);
                text_after.push(acc.clone());
            }
            Some(Unit { ids, text_after })
        };
        let words: Vec<Unit> = WORDS
            .iter()
            .filter_map(|w| make(&b, &format!(" {w}")))
            .collect();
        let punct: Vec<Unit> = [".", ",", ".\n\n"]
            .iter()
            .filter_map(|p| make(&b, p))
            .collect();
        b.units = Units { words, punct };
        b.pieces = taken;
        b
    }

    fn chunk_id(&self, chunk: &str) -> u32 {
        (fnv1a(chunk.as_bytes()) % u64::from(self.special_base)) as u32
    }

    /// Call `f` on every chunk of a text without special tokens.
    fn for_each_chunk<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) {
        let mut emit_piece = |piece: &'a str| {
            let mut start = 0;
            let mut n = 0;
            for (i, _) in piece.char_indices() {
                if n == CHUNK_CHARS {
                    f(&piece[start..i]);
                    start = i;
                    n = 0;
                }
                n += 1;
            }
            if start < piece.len() {
                f(&piece[start..]);
            }
        };
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let (start, c) = chars[i];
            let cls = class(c);
            let mut j = i + 1;
            while j < chars.len() && class(chars[j].1) == cls {
                j += 1;
            }
            let end = chars.get(j).map_or(text.len(), |&(b, _)| b);
            if cls == Class::Space && j < chars.len() && chars[j - 1].1 == ' ' {
                // The run's final space belongs to the next piece.
                if j - 1 > i {
                    emit_piece(&text[start..chars[j - 1].0]);
                }
                i = j - 1;
                // Extend the next piece: a space followed by one run of the next class.
                let ncls = class(chars[j].1);
                let mut k = j + 1;
                while k < chars.len() && class(chars[k].1) == ncls {
                    k += 1;
                }
                let pend = chars.get(k).map_or(text.len(), |&(b, _)| b);
                emit_piece(&text[chars[i].0..pend]);
                i = k;
                continue;
            }
            emit_piece(&text[start..end]);
            i = j;
        }
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        let mut plain_start = 0;
        let mut search = 0;
        while let Some(rel) = text[search..].find("<|") {
            let at = search + rel;
            match SPECIALS.iter().position(|s| text[at..].starts_with(s)) {
                Some(k) => {
                    self.for_each_chunk(&text[plain_start..at], |c| ids.push(self.chunk_id(c)));
                    ids.push(self.special_base + k as u32);
                    plain_start = at + SPECIALS[k].len();
                    search = plain_start;
                }
                None => search = at + 2,
            }
        }
        self.for_each_chunk(&text[plain_start..], |c| ids.push(self.chunk_id(c)));
        ids
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        let mut s = String::new();
        for id in ids {
            if let Some(p) = self.pieces.get(id) {
                s.push_str(p);
            }
        }
        s
    }
}

/// A HF tokenizer plus the generator's units, derived by encoding the same words.
pub struct HfTokenizer {
    tok: tokenizers::Tokenizer,
    eos: u32,
    units: Units,
}

impl HfTokenizer {
    fn load(path: &Path, eos_ids: &[u32]) -> anyhow::Result<HfTokenizer> {
        let tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("loading tokenizer {}", path.display()))?;
        let eos = eos_ids
            .first()
            .copied()
            .or_else(|| tok.token_to_id("<|im_end|>"))
            .or_else(|| tok.token_to_id("</s>"))
            .unwrap_or(0);
        let mut h = HfTokenizer {
            tok,
            eos,
            units: Units {
                words: Vec::new(),
                punct: Vec::new(),
            },
        };
        let unit = |h: &HfTokenizer, text: &str| -> Option<Unit> {
            let enc = h.tok.encode(text, false).ok()?;
            let ids = enc.get_ids().to_vec();
            if ids.is_empty() {
                return None;
            }
            let text_after = (1..=ids.len()).map(|k| h.decode(&ids[..k])).collect();
            Some(Unit { ids, text_after })
        };
        let words = WORDS
            .iter()
            .filter_map(|w| unit(&h, &format!(" {w}")))
            .collect();
        let punct = [".", ",", ".\n\n"]
            .iter()
            .filter_map(|p| unit(&h, p))
            .collect();
        h.units = Units { words, punct };
        Ok(h)
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        self.tok
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tok.decode(ids, true).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tok() -> Builtin {
        Builtin::new(152_064)
    }

    #[test]
    fn specials_are_single_tokens_with_qwen_ids() {
        let t = tok();
        assert_eq!(
            t.encode("<|im_start|>user\nhi<|im_end|>"),
            [vec![151_644], t.encode("user\nhi"), vec![151_645]].concat()
        );
        assert_eq!(t.encode("<|endoftext|>"), vec![151_643]);
    }

    #[test]
    fn about_four_chars_per_token_and_stable() {
        let t = tok();
        let text = "The quick brown fox jumps over the lazy dog while the repository tests run \
                    again and again until every function returns the expected value.";
        let n = t.encode(text).len();
        let ratio = text.chars().count() as f64 / n as f64;
        assert!((3.0..=5.5).contains(&ratio), "{ratio} chars/token");
        // Fixed forever: ids must not change between releases (caches, recorded results).
        assert_eq!(t.encode("hello"), vec![t.chunk_id("hell"), t.chunk_id("o")]);
        assert_eq!(t.chunk_id("hell"), (fnv1a(b"hell") % 151_643) as u32);
    }

    #[test]
    fn units_decode_to_their_text() {
        let t = tok();
        assert!(t.units.words.len() > 100);
        for u in t.units.words.iter().chain(&t.units.punct) {
            assert_eq!(&t.decode(&u.ids), u.text_after.last().unwrap());
            assert_eq!(t.encode(u.text_after.last().unwrap()), u.ids);
        }
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                "[a-zA-Z]{1,9}",
                "[0-9]{1,6}",
                "[ \n\t]{1,3}",
                "[.,:;(){}=+-]{1,3}",
                Just("<|im_start|>".to_string()),
                Just("<|im_end|>".to_string()),
                "[éß中文]{1,3}",
            ],
            0..12,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn prefix_stable_at_boundaries(a in text_strategy(), b in text_strategy()) {
            let t = tok();
            let a_end_special = SPECIALS.iter().any(|s| a.ends_with(s));
            let b_start_special = SPECIALS.iter().any(|s| b.starts_with(s));
            let ws_boundary = a.chars().last().is_some_and(|c| !c.is_whitespace())
                && b.chars().next().is_some_and(char::is_whitespace);
            prop_assume!(a.is_empty() || a_end_special || b_start_special || ws_boundary);
            let joined = t.encode(&format!("{a}{b}"));
            prop_assert_eq!(joined, [t.encode(&a), t.encode(&b)].concat());
        }

        #[test]
        fn generated_text_reencodes_after_any_prompt(
            prompt in text_strategy(),
            picks in proptest::collection::vec((0usize..1000, 0usize..4), 1..40),
            tail in text_strategy(),
        ) {
            let t = tok();
            let mut ids = Vec::new();
            let mut text = String::new();
            for (w, p) in picks {
                let u = &t.units.words[w % t.units.words.len()];
                ids.extend(&u.ids);
                text.push_str(u.text_after.last().unwrap());
                if p < t.units.punct.len() {
                    let u = &t.units.punct[p];
                    ids.extend(&u.ids);
                    text.push_str(u.text_after.last().unwrap());
                }
            }
            prop_assert_eq!(t.decode(&ids), text.clone());
            let expected = [t.encode(&prompt), ids].concat();
            let whole = t.encode(&format!("{prompt}{text}<|im_end|>{tail}"));
            prop_assert_eq!(&whole[..expected.len()], &expected[..]);
        }
    }
}
