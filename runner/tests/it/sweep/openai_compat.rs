//! OpenAI-compatible servers that differ from SGLang, made from serve-sim behind a rewriting
//! proxy (`attach`): one that knows only `max_tokens` (SGLang before `max_completion_tokens`),
//! and one whose streams carry no `usage`. The sweep must not take either for SGLang.

use super::*;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use runner::sim::cli::SimArgs;
use serde_json::Value;

#[derive(Clone, Copy, PartialEq)]
enum Quirk {
    /// Knows only `max_tokens`, and so ignores the runner's limit: it is put at 4× here.
    OldLengthField,
    /// Sends no `usage`, ever.
    NoUsage,
    /// Serves one model by its own name and refuses any other (vLLM's way).
    OwnModelName,
}

const SERVED: &str = "org/served-model";

#[derive(Clone)]
struct Proxy {
    upstream: String,
    quirk: Quirk,
    http: reqwest::Client,
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let mut body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    if p.quirk == Quirk::OwnModelName {
        if path == "/v1/models" {
            let list =
                serde_json::json!({"object": "list", "data": [{"id": SERVED, "object": "model"}]});
            return Response::new(Body::from(list.to_string()));
        }
        if path == "/v1/chat/completions" {
            let v: Value = serde_json::from_slice(&body).unwrap();
            if v["model"] != SERVED {
                let mut r = Response::new(Body::from(
                    r#"{"object":"error","message":"The model does not exist.","code":404}"#,
                ));
                *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
                return r;
            }
        }
    }
    if path == "/v1/chat/completions" && p.quirk == Quirk::OldLengthField {
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        let o = v.as_object_mut().unwrap();
        let asked = o.remove("max_completion_tokens").unwrap();
        let asked = asked.as_u64().unwrap();
        assert_eq!(o["max_tokens"], asked, "the runner sends both names");
        o.insert("max_tokens".into(), (4 * asked).into());
        o.insert("ignore_eos".into(), true.into());
        body = serde_json::to_vec(&v).unwrap();
    }
    let resp = p
        .http
        .request(method, format!("{}{path}", p.upstream))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp.headers().get("content-type").cloned();
    let mut text = resp.text().await.unwrap();
    if path == "/v1/chat/completions" && p.quirk == Quirk::NoUsage {
        // Every chunk without its usage; the final usage-only chunk dropped.
        let mut out = String::new();
        for event in text.split("\n\n").filter(|e| !e.is_empty()) {
            match event.strip_prefix("data: ") {
                Some(d) if d != "[DONE]" => {
                    let mut v: Value = serde_json::from_str(d).unwrap();
                    v.as_object_mut().unwrap().remove("usage");
                    if v["choices"].as_array().is_some_and(|c| c.is_empty()) {
                        continue;
                    }
                    out.push_str(&format!("data: {v}\n\n"));
                }
                _ => out.push_str(&format!("{event}\n\n")),
            }
        }
        text = out;
    }
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    if let Some(c) = ctype {
        r.headers_mut().insert("content-type", c);
    }
    r
}

/// serve-sim behind a proxy with `quirk`: (server, proxy URL).
fn quirky_sim(
    rt: &tokio::runtime::Runtime,
    quirk: Quirk,
) -> (runner::sim::server::SimHandle, String) {
    rt.block_on(async {
        let argv: Vec<String> = ["--port", "0", "--sim-time-scale", "1000"]
            .map(String::from)
            .to_vec();
        let sim = runner::sim::server::start(SimArgs::parse(&argv).unwrap().0)
            .await
            .unwrap();
        let p = Proxy {
            upstream: sim.base_url(),
            quirk,
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(forward).with_state(p);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (sim, url)
    })
}

fn sweep_through(quirk: Quirk, out: &std::path::Path) -> (String, Run) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_sim, url) = quirky_sim(&rt, quirk);
    let args = small_with(
        out,
        "quirk",
        &[
            ("--backend", "attach"),
            ("--url", &url),
            ("--gpus", "sim"),
            ("--api", "openai"),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
            ("--trajectories", "1"),
            ("--turns", "2"),
            ("--max-new-tokens", "8"),
        ],
    );
    let o = run_ok(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    (stderr, Run::load(&out.join("quirk")))
}

#[test]
fn a_server_that_ignores_the_length_limit_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (stderr, run) = sweep_through(Quirk::OldLengthField, tmp.path());
    let turns = run.turns();
    assert_eq!(turns.len(), 2);
    assert!(
        turns.iter().all(|r| r.completion_tokens == Some(32)),
        "{turns:?}"
    );
    assert!(
        stderr.contains("2 turn(s) generated more tokens than asked for"),
        "{stderr}"
    );
}

#[test]
fn a_server_without_token_counts_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (stderr, run) = sweep_through(Quirk::NoUsage, tmp.path());
    let turns = run.turns();
    assert_eq!(turns.len(), 2);
    for r in &turns {
        assert_eq!(r.error, None);
        assert_eq!(r.completion_tokens, None, "no count was made up");
    }
    assert!(
        stderr.contains("2 successful turn(s) came without a generated-token count"),
        "{stderr}"
    );
}

#[test]
fn requests_name_the_model_the_server_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, run) = sweep_through(Quirk::OwnModelName, tmp.path());
    let turns = run.turns();
    assert_eq!(turns.len(), 2);
    assert!(turns.iter().all(|r| r.error.is_none()), "{turns:?}");
}
