//! What goes over the wire, seen by a recording proxy in front of serve-sim (`attach`):
//! session mode sends only the new text, chained by the previous request id; prefix mode
//! resends the whole conversation.

use super::*;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use runner::sim::cli::SimArgs;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// (path, request body, last SSE data object of a /generate answer)
type Seen = (String, Value, Option<Value>);

#[derive(Clone)]
struct Proxy {
    upstream: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    http: reqwest::Client,
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap();
    let resp = p
        .http
        .request(method, format!("{}{path}", p.upstream))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp.headers().get("content-type").cloned();
    let req_json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if path == "/generate" {
        // Keep the response (the stream's text) to check the rid chain.
        let text = resp.text().await.unwrap();
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .next_back();
        p.seen.lock().unwrap().push((path, req_json, last));
        let mut r = Response::new(Body::from(text));
        *r.status_mut() = status;
        if let Some(c) = ctype {
            r.headers_mut().insert("content-type", c);
        }
        return r;
    }
    p.seen.lock().unwrap().push((path, req_json, None));
    let mut r = Response::new(Body::from_stream(resp.bytes_stream()));
    *r.status_mut() = status;
    if let Some(c) = ctype {
        r.headers_mut().insert("content-type", c);
    }
    r
}

/// serve-sim behind a recording proxy: (server, proxy URL, what the proxy saw).
fn proxied_sim(
    rt: &tokio::runtime::Runtime,
) -> (
    runner::sim::server::SimHandle,
    String,
    Arc<Mutex<Vec<Seen>>>,
) {
    rt.block_on(async {
        let argv: Vec<String> = ["--port", "0", "--sim-time-scale", "1000"]
            .map(String::from)
            .to_vec();
        let sim = runner::sim::server::start(SimArgs::parse(&argv).unwrap().0)
            .await
            .unwrap();
        let p = Proxy {
            upstream: sim.base_url(),
            seen: Arc::default(),
            http: reqwest::Client::new(),
        };
        let seen = p.seen.clone();
        let app = axum::Router::new().fallback(forward).with_state(p);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (sim, url, seen)
    })
}

#[test]
fn session_sends_only_new_text_and_prefix_resends_everything() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sim, proxy_url, seen) = proxied_sim(&rt);
    let tmp = tempfile::tempdir().unwrap();
    let args = small_with(
        tmp.path(),
        "wire",
        &[
            ("--backend", "attach"),
            ("--url", &proxy_url),
            ("--gpus", "sim"),
            ("--cache-modes", "session,prefix"),
            ("--batch-sizes", "1"),
            ("--trajectories", "1"),
        ],
    );
    run_ok(&args);
    let run = Run::load(&tmp.path().join("wire"));
    run.assert_complete(&[4]);
    let seen = seen.lock().unwrap().clone();
    let gens: Vec<&Seen> = seen.iter().filter(|(p, _, _)| p == "/generate").collect();
    assert_eq!(gens.len(), 8, "4 session turns then 4 prefix turns");
    let (session, prefix) = gens.split_at(4);
    let text = |g: &Seen| g.1["text"].as_str().unwrap().to_string();
    let first = text(session[0]);
    assert!(
        first.starts_with("<|im_start|>system\n"),
        "turn 0 sends the whole prompt"
    );
    assert!(session[0].1["session_params"]["rid"].is_null());
    let sid = session[0].1["session_params"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for k in 1..4 {
        let t = text(session[k]);
        assert!(
            t.starts_with("<|im_end|>\n<|im_start|>user\n"),
            "turn {k} sends only new text: {t:.80}"
        );
        assert!(!t.contains("<|im_start|>system"), "no history resent");
        assert!(t.len() < first.len());
        let sp = &session[k].1["session_params"];
        assert_eq!(sp["id"], sid.as_str());
        let prev_id = session[k - 1].2.as_ref().unwrap()["meta_info"]["id"].clone();
        assert_eq!(sp["rid"], prev_id, "chained to the previous turn's id");
    }
    assert!(seen
        .iter()
        .any(|(p, b, _)| p == "/open_session" && b["capacity_of_str_len"].is_u64()));
    assert!(seen
        .iter()
        .any(|(p, b, _)| p == "/close_session" && b["session_id"] == sid.as_str()));
    // Prefix mode: every turn resends the previous prompt as its prefix.
    for k in 1..4 {
        let (a, b) = (text(prefix[k - 1]), text(prefix[k]));
        assert!(
            b.starts_with(&a) && b.len() > a.len(),
            "prefix turn {k} resends the conversation"
        );
        assert!(prefix[k].1.get("session_params").is_none());
    }
    // Session and prefix saw the same conversation (generated history, same seed & text).
    let session_turns: Vec<u64> = run
        .turns()
        .iter()
        .filter(|r| r.cache_mode == turnbench_schema::CacheMode::Session)
        .map(|r| r.prompt_tokens.unwrap())
        .collect();
    assert!(
        session_turns.windows(2).all(|w| w[1] > w[0]),
        "server saw the whole prompt: {session_turns:?}"
    );
    rt.block_on(sim.shutdown());
}

/// SGLang's session appends the next request to the parent's prompt + output *tokens*, which
/// keep the matched stop token (EOS) or the stop string's tokens that the text leaves out. The
/// session must then hold exactly the conversation prefix mode resends: at temperature 0
/// (serve-sim's answers then depend on the prompt's tokens only) both cells see the same
/// prompt, token for token, at every turn.
#[test]
fn session_and_prefix_see_the_same_prompt_after_stop_tokens_and_stop_strings() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Long enough for answers to end with EOS; a stop string most answers soon produce.
    for (name, stop) in [("eos", None), ("stop-string", Some(" e"))] {
        let (sim, proxy_url, seen) = proxied_sim(&rt);
        let tmp = tempfile::tempdir().unwrap();
        let mut over = vec![
            ("--backend", "attach"),
            ("--url", proxy_url.as_str()),
            ("--gpus", "sim"),
            ("--cache-modes", "session,prefix"),
            ("--batch-sizes", "1"),
            ("--trajectories", "2"),
            ("--turns", "6"),
            ("--temperature", "0"),
            ("--max-new-tokens", "1000"),
        ];
        if let Some(s) = stop {
            over.push(("--stop", s));
        }
        run_ok(&small_with(tmp.path(), name, &over));
        let run = Run::load(&tmp.path().join(name));
        run.assert_complete(&[6, 6]);
        let turns = run.turns();
        let finish = |fr: &str| {
            turns
                .iter()
                .filter(|r| r.finish_reason.as_deref() == Some(fr))
                .count()
        };
        assert!(
            finish("stop") >= 8,
            "{name}: answers end on a stop: {turns:?}"
        );
        for r in turns
            .iter()
            .filter(|r| r.cache_mode == turnbench_schema::CacheMode::Session)
        {
            let twin = turns
                .iter()
                .find(|o| o.cache_mode != r.cache_mode && o.traj == r.traj && o.turn == r.turn)
                .unwrap();
            assert_eq!(
                (r.prompt_tokens, r.completion_tokens),
                (twin.prompt_tokens, twin.completion_tokens),
                "{name}: trajectory {} turn {}",
                r.traj,
                r.turn
            );
        }
        // On the wire: after an EOS, the parent's last token is cut (`offset: -1`); after a
        // stop string, its output is dropped and the answer sent again as text.
        let seen = seen.lock().unwrap().clone();
        let sessions: Vec<&Seen> = seen
            .iter()
            .filter(|(p, b, _)| p == "/generate" && b.get("session_params").is_some())
            .collect();
        let mut checked = 0;
        for w in sessions.windows(2) {
            let (parent, child) = (w[0], w[1]);
            let sp = &child.1["session_params"];
            if sp["rid"].is_null() {
                continue;
            }
            let meta = &parent.2.as_ref().unwrap()["meta_info"];
            assert_eq!(sp["rid"], meta["id"]);
            let matched = &meta["finish_reason"]["matched"];
            let text = child.1["text"].as_str().unwrap();
            if matched.is_u64() {
                assert_eq!(sp["offset"], -1, "{name}: {sp}");
                assert!(sp.get("drop_previous_output").is_none());
                checked += 1;
            } else if matched.is_string() {
                assert_eq!(sp["drop_previous_output"], true, "{name}: {sp}");
                let answer = parent.2.as_ref().unwrap()["text"].as_str().unwrap();
                assert!(text.starts_with(answer), "{name}: the answer is sent again");
                checked += 1;
            } else {
                assert!(sp.get("offset").is_none() && sp.get("drop_previous_output").is_none());
            }
        }
        assert!(checked >= 4, "{name}: {checked} turns after a stop");
        rt.block_on(sim.shutdown());
    }
}

/// A server that streams native output as deltas (`--incremental-streaming-output`, seen in
/// `/get_server_info`) gives the same answers, so the same next prompts, as the default
/// cumulative stream: at temperature 0, every turn's counts are those of a cumulative run.
#[test]
fn incremental_streaming_output_is_read_as_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (id, extra) in [
        ("cumulative", None),
        (
            "incremental",
            Some("--sim-args=--incremental-streaming-output"),
        ),
    ] {
        let mut args = small_with(
            tmp.path(),
            id,
            &[
                ("--cache-modes", "prefix"),
                ("--batch-sizes", "1"),
                ("--turns", "5"),
                ("--temperature", "0"),
                ("--max-new-tokens", "300"),
            ],
        );
        args.extend(extra.map(String::from));
        run_ok(&args);
        let run = Run::load(&tmp.path().join(id));
        run.assert_complete(&[5, 5]);
        let mut turns: Vec<_> = run
            .turns()
            .into_iter()
            .map(|r| {
                (
                    r.traj,
                    r.turn,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.error,
                )
            })
            .collect();
        turns.sort_by_key(|t| (t.0, t.1));
        runs.push(turns);
    }
    assert!(runs[0].iter().all(|t| t.4.is_none()));
    assert_eq!(runs[0], runs[1]);
}

/// An attached server that wants an API key the plan does not give is named as such before
/// anything starts (not "unreachable", not a run of failed turns).
#[test]
fn attach_without_the_servers_api_key_says_so() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt.block_on(async {
        let argv: Vec<String> = [
            "--port",
            "0",
            "--api-key",
            "k-123",
            "--sim-time-scale",
            "1000",
        ]
        .map(String::from)
        .to_vec();
        runner::sim::server::start(SimArgs::parse(&argv).unwrap().0)
            .await
            .unwrap()
    });
    let tmp = tempfile::tempdir().unwrap();
    let url = sim.base_url();
    let args = small_with(
        tmp.path(),
        "nokey",
        &[
            ("--backend", "attach"),
            ("--url", &url),
            ("--gpus", "sim"),
            ("--cache-modes", "prefix,session"),
        ],
    );
    let err = run_err(&args);
    assert!(
        err.contains("urls[0]") && err.contains("refuses the API key") && err.contains("--api-key"),
        "{err}"
    );
    assert!(!tmp.path().join("nokey").exists(), "nothing written");
    let mut args = args;
    args.extend(["--api-key".to_string(), "k-123".to_string()]);
    run_ok(&args);
    rt.block_on(sim.shutdown());
}

#[test]
fn openai_streams_split_a_multi_token_chunk_by_its_tokens() {
    // At a high time scale serve-sim (as SGLang for a lagging client) puts several tokens in
    // one chat chunk. With `continuous_usage_stats` each chunk says how many tokens it holds,
    // so the inter-token latency is per token, as on /generate: its mean over a turn matches
    // the turn's time per output token, for both APIs.
    let tmp = tempfile::tempdir().unwrap();
    for api in ["openai", "native"] {
        run_ok(&small_with(
            tmp.path(),
            api,
            &[
                ("--api", api),
                ("--sim-time-scale", "1000"),
                ("--max-new-tokens", "64"),
                ("--cache-modes", "prefix"),
                ("--batch-sizes", "2"),
                ("--trajectories", "4"),
            ],
        ));
        let run = Run::load(&tmp.path().join(api));
        let mut ratios: Vec<f64> = run
            .turns()
            .iter()
            .filter(|r| r.completion_tokens.unwrap_or(0) >= 16)
            .filter_map(|r| Some(r.itl.as_ref()?.mean / r.tpot()?))
            .filter(|x| x.is_finite())
            .collect();
        assert!(ratios.len() >= 3, "{api}: {ratios:?}");
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        // (Not exactly 1: the tokens of the first chunk are part of TTFT, not of the gaps, and
        // a busy machine makes that chunk bigger. Counting each chunk as one token gave 7–21.)
        assert!((0.8..2.5).contains(&median), "{api}: ITL ÷ TPOT {ratios:?}");
    }
}

/// Something that answers HTTP but is no server to measure (another service on the port):
/// refused before anything starts, not a run of failed turns.
#[test]
fn attach_to_something_that_is_not_a_model_server_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                // Headers up to the blank line, then a 404 (keep-alive off).
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        let body = "<h1>Not Found</h1>";
                        let _ = write!(
                            conn,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let args = small_with(
        tmp.path(),
        "other",
        &[("--backend", "attach"), ("--url", &url), ("--gpus", "x")],
    );
    let err = run_err(&args);
    assert!(
        err.contains("urls[0]") && err.contains("neither SGLang nor an OpenAI-compatible"),
        "{err}"
    );
    assert!(!tmp.path().join("other").exists(), "nothing written");
}
