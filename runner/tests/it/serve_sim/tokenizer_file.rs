//! `--model-path DIR` with a HF `config.json` and `tokenizer.json`: exact token counts through
//! the `tokenizers` crate (fixture: one token per UTF-8 byte, plus ChatML specials).

use super::*;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/serve_sim/tiny-bytes-model"
);

#[tokio::test]
async fn counts_come_from_the_tokenizer_file() {
    let h = server(&["--model-path", DIR]).await;
    let v = gen(&h, "hello world", json!({"max_new_tokens": 0})).await;
    assert_eq!(u(&v, "/meta_info/prompt_tokens"), 11);
    // Specials are single tokens; "user\nhé" is 8 bytes.
    let v = gen(
        &h,
        "<|im_start|>user\nhé<|im_end|>",
        json!({"max_new_tokens": 0}),
    )
    .await;
    assert_eq!(u(&v, "/meta_info/prompt_tokens"), 10);

    // Generated text decodes through the tokenizer and is cached across turns.
    let p1 = chatml_turn(None, "Which file?");
    let t1 = gen(&h, &p1, json!({"max_new_tokens": 300, "temperature": 0})).await;
    let text = t1["text"].as_str().unwrap();
    let ids = t1["output_ids"].as_array().unwrap();
    assert!(ids.iter().all(|i| i.as_u64().unwrap() < 259));
    let eos = ids.last().unwrap().as_u64().unwrap() == 258;
    assert_eq!(
        text.len() + usize::from(eos),
        ids.len(),
        "one byte per token: {text:?}"
    );
    let (n1, c1) = (
        u(&t1, "/meta_info/prompt_tokens"),
        u(&t1, "/meta_info/completion_tokens"),
    );
    let end = if eos { "<|im_end|>" } else { "" };
    let p2 =
        format!("{p1}{text}{end}\n<|im_start|>user\nThat one.<|im_end|>\n<|im_start|>assistant\n");
    let t2 = gen(&h, &p2, json!({"max_new_tokens": 8})).await;
    let cached = u(&t2, "/meta_info/cached_tokens");
    assert!(
        cached + 1 >= n1 + c1 && cached <= n1 + c1,
        "cached {cached}, turn 1 {n1}+{c1}"
    );

    let (_, info) = get(&h, "/server_info").await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["sim"]["tokenizer"], "tokenizer.json");
    assert_eq!(info["context_length"], 4096);
    let (_, mi) = get(&h, "/model_info").await;
    assert!(mi.contains("\"model_type\":\"qwen2\""), "{mi}");
    h.shutdown().await;
}
