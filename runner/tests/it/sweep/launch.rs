//! The `launch` backend, tested by launching `runner serve-sim` through the very path that
//! launches `python -m sglang.launch_server`.

use super::*;
use crate::{free_port, free_ports};
use std::net::{TcpListener, TcpStream};

/// `runner serve-sim` on `port` in a process of its own (to attach to), and once it listens.
fn spawn_sim(port: u16, scale: &str, extra: &[&str]) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "serve-sim",
            "--port",
            &port.to_string(),
            "--sim-time-scale",
            scale,
        ])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed().as_secs() < 20, "serve-sim did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

fn plan(tmp: &Path, port: u16, command: &[&str], extra: &str) -> PathBuf {
    let cmd: Vec<String> = command.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        "backend = \"launch\"\ngpus = [0]\nport_base = {port}\nlaunch_timeout_s = 20\n\
         launch_command = [{}]\n{extra}",
        cmd.join(", ")
    );
    let p = tmp.join("plan.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// `runner sweep --plan p` into `tmp` (plus `extra`), expected to fail: its stderr.
fn sweep_plan_err(tmp: &Path, p: &Path, extra: &[&str]) -> String {
    let mut args: Vec<String> = ["sweep", "--quiet", "--out"].map(String::from).to_vec();
    args.push(tmp.display().to_string());
    args.push("--plan".into());
    args.push(p.display().to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    run_err(&args)
}

fn serve_sim(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec![
        env!("CARGO_BIN_EXE_runner"),
        "serve-sim",
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
        "--enable-metrics",
        "--sim-gpu",
        "a100-80gb",
        "--sim-time-scale",
        "1000",
        "--api-key",
        "{api_key}",
    ];
    v.extend(extra);
    v
}

#[test]
fn launches_serve_sim_per_gpu_and_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = plan(tmp.path(), port, &serve_sim(&[]), "");
    let mut args = small_with(tmp.path(), "launched", &[("--gpus", "0")]);
    args.extend([
        "--plan".into(),
        p.display().to_string(),
        "--api-key".into(),
        "sekrit-key".into(),
    ]);
    run_ok(&args);
    let dir = tmp.path().join("launched");
    let run = Run::load(&dir);
    run.assert_complete(&[4, 4]);
    assert_eq!(run.manifest.backend.access, "launch");
    assert!(
        run.manifest.simulated,
        "serve-sim reports itself as simulated"
    );
    let s = &run.manifest.servers[0];
    assert_eq!(s.url, format!("http://127.0.0.1:{port}"));
    assert!(s
        .launch_command
        .as_ref()
        .unwrap()
        .contains(&port.to_string()));
    assert_eq!(run.manifest.gpus[0].index, Some(0));
    for log in ["server-gpu0-radix.log", "server-gpu0-no-radix.log"] {
        assert!(dir.join("logs").join(log).is_file(), "{log} written");
    }
    // The servers are gone, and the key is nowhere in the results.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server stopped"
    );
    for f in [
        "manifest.json",
        "turns.jsonl",
        "summary.json",
        "telemetry.jsonl",
        // serve-sim logs its arguments at startup, key included, as SGLang does.
        "logs/server-gpu0-radix.log",
        "logs/server-gpu0-no-radix.log",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(!text.contains("sekrit-key"), "API key leaked into {f}");
    }
    let log = std::fs::read_to_string(dir.join("logs/server-gpu0-radix.log")).unwrap();
    assert!(log.contains("api_key: Some(\"***\")"), "{log}");
    let telemetry = std::fs::read_to_string(dir.join("telemetry.jsonl")).unwrap();
    assert!(
        telemetry.contains("\"source\":\"metrics\""),
        "server /metrics scraped"
    );
}

#[test]
fn a_server_with_an_admin_key_is_flushed_with_it_and_neither_key_is_recorded() {
    // SGLang's /flush_cache takes only the admin key once the server has one: the runner sends
    // it (`--admin-api-key`, into the command as {admin_api_key}), and the second cell starts
    // on an empty cache. Without it, each cell says it starts unflushed and how to fix that.
    let tmp = tempfile::tempdir().unwrap();
    let over = [
        ("--gpus", "0"),
        ("--cache-modes", "prefix"),
        ("--batch-sizes", "1,2"),
    ];
    let first_turns_cached = |dir: &Path| -> Vec<(u64, u64)> {
        Run::load(dir)
            .turns()
            .iter()
            .filter(|r| r.concurrency == 2 && r.turn == 0)
            .map(|r| (r.cached_tokens.unwrap(), r.prompt_tokens.unwrap()))
            .collect()
    };

    let port = free_port();
    let p = plan(
        tmp.path(),
        port,
        &serve_sim(&["--admin-api-key", "{admin_api_key}"]),
        "",
    );
    let mut args = small_with(tmp.path(), "keyed", &over);
    args.extend(
        [
            "--plan",
            p.to_str().unwrap(),
            "--api-key",
            "user-sekrit",
            "--admin-api-key",
            "admin-sekrit",
        ]
        .map(String::from),
    );
    let out = run_ok(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("without a cache flush"), "{err}");
    let dir = tmp.path().join("keyed");
    Run::load(&dir).assert_complete(&[4, 4]);
    let first = first_turns_cached(&dir);
    assert_eq!(first.len(), 2);
    // (The two share a system prompt: the later one may find it cached from the first.)
    assert_eq!(
        first.iter().map(|f| f.0).min(),
        Some(0),
        "flushed: {first:?}"
    );
    let log = std::fs::read_to_string(dir.join("logs/server-gpu0-radix.log")).unwrap();
    assert!(log.contains("--admin-api-key ***"), "{log}");
    for (path, text) in all_files(&dir) {
        for key in ["user-sekrit", "admin-sekrit"] {
            assert!(!text.contains(key), "{key} leaked into {}", path.display());
        }
    }

    // A server with an admin key not given to the runner: no cell starts on what the one
    // before left in the cache; the GPU stops, saying which key to give, and the run is
    // finished by a resume given it.
    let port = free_port();
    let mut server = spawn_sim(port, "1000", &["--admin-api-key", "literal-admin"]);
    let url = format!("http://127.0.0.1:{port}");
    let mut args = small_with(tmp.path(), "unkeyed", &over);
    args.extend(["--backend", "attach", "--url", &url].map(String::from));
    let err = run_err(&args);
    assert!(
        err.contains("cannot start on an empty cache")
            && err.contains("as --admin-api-key")
            && err.contains("--resume unkeyed"),
        "{err}"
    );
    assert!(
        first_turns_cached(&tmp.path().join("unkeyed")).is_empty(),
        "no cell measured unflushed"
    );
    let out = tmp.path().display().to_string();
    run_ok(
        &[
            "sweep",
            "--quiet",
            "--out",
            &out,
            "--resume",
            "unkeyed",
            "--admin-api-key",
            "literal-admin",
        ]
        .map(String::from),
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let dir = tmp.path().join("unkeyed");
    Run::load(&dir).assert_complete(&[4, 4]);
    let first = first_turns_cached(&dir);
    assert_eq!(
        first.iter().map(|f| f.0).min(),
        Some(0),
        "flushed: {first:?}"
    );
}

/// Every file a run directory holds, as text (lossy), with its path.
fn all_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push((
                p.clone(),
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into(),
            ));
        }
    }
    out
}

#[test]
fn a_key_inside_a_shell_wrapped_command_is_masked_everywhere() {
    // `sh -c "…"` (to activate an environment, say) puts the whole command in one argument:
    // the run's key substituted into it, and a literal admin key written in it, reach neither
    // the manifest, nor the log's launch banner, nor the server's own startup line.
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let inner = format!(
        "exec {} serve-sim --port {{port}} --sim-time-scale 1000 --api-key {{api_key}} \
         --admin-api-key=literal-admin-sekrit",
        env!("CARGO_BIN_EXE_runner")
    );
    let p = plan(tmp.path(), port, &["sh", "-c", &inner], "");
    let mut args = small_with(
        tmp.path(),
        "wrapped",
        &[
            ("--gpus", "0"),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
        ],
    );
    args.extend([
        "--plan".into(),
        p.display().to_string(),
        "--api-key".into(),
        "wrapped-sekrit-key".into(),
        // (For its cache flushes.)
        "--admin-api-key".into(),
        "literal-admin-sekrit".into(),
    ]);
    run_ok(&args);
    let dir = tmp.path().join("wrapped");
    Run::load(&dir).assert_complete(&[4, 4]);
    let files = all_files(&dir);
    assert!(files
        .iter()
        .any(|(p, _)| p.ends_with("logs/server-gpu0-radix.log")));
    for (path, text) in &files {
        for key in ["wrapped-sekrit-key", "literal-admin-sekrit"] {
            assert!(!text.contains(key), "{key} leaked into {}", path.display());
        }
    }
    let log = std::fs::read_to_string(dir.join("logs/server-gpu0-radix.log")).unwrap();
    assert!(log.contains("--api-key ***"), "{log}");
}

#[test]
fn a_key_with_quotes_and_backslashes_is_masked_as_the_server_escapes_it() {
    // serve-sim logs its arguments as Rust's Debug does, SGLang as Python's repr: `"` and `\`
    // come out escaped, which the key itself does not match.
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = plan(tmp.path(), port, &serve_sim(&[]), "");
    let mut args = small_with(
        tmp.path(),
        "quoted",
        &[
            ("--gpus", "0"),
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
        ],
    );
    args.extend(
        [
            "--plan",
            p.to_str().unwrap(),
            "--api-key",
            r#"q"uo\te'd-sekrit"#,
        ]
        .map(String::from),
    );
    run_ok(&args);
    let dir = tmp.path().join("quoted");
    Run::load(&dir).assert_complete(&[4, 4]);
    let log = std::fs::read_to_string(dir.join("logs/server-gpu0-radix.log")).unwrap();
    assert!(
        log.contains("api_key"),
        "the server logs its arguments: {log}"
    );
    for (path, text) in all_files(&dir) {
        assert!(
            !text.contains("d-sekrit"),
            "the key leaked into {}",
            path.display()
        );
    }
}

#[test]
fn a_key_in_sim_args_is_not_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let args = small_with(
        tmp.path(),
        "simkey",
        &[
            ("--cache-modes", "prefix"),
            ("--batch-sizes", "1"),
            ("--api-key", "sim-sekrit-key"),
            ("--sim-args", "--api-key=sim-sekrit-key"),
        ],
    );
    run_ok(&args);
    let dir = tmp.path().join("simkey");
    for (path, text) in all_files(&dir) {
        assert!(
            !text.contains("sim-sekrit-key"),
            "leaked into {}",
            path.display()
        );
    }
    // Resuming cannot bring the key back from the manifest: it says so.
    let err = run_err(
        &[
            "sweep",
            "--out",
            tmp.path().to_str().unwrap(),
            "--resume",
            "simkey",
        ]
        .map(String::from),
    );
    assert!(err.contains("held an API key"), "{err}");
}

#[test]
fn a_server_that_dies_at_startup_is_reported_with_its_log_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(2, 1);
    // GPU 0's server exits at once; GPU 1's never answers (within its 600 s launch timeout).
    let p = plan(
        tmp.path(),
        port,
        &[
            "sh",
            "-c",
            "if [ \"$CUDA_VISIBLE_DEVICES\" = 0 ]; then \
             echo 'CUDA out of memory on device' $CUDA_VISIBLE_DEVICES; exit 1; fi; exec sleep 600",
            "{port}",
        ],
        "port_step = 1\n",
    );
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("gpus = [0]\n", "gpus = [0, 1]\n")
        .replace("launch_timeout_s = 20\n", "launch_timeout_s = 600\n");
    std::fs::write(&p, text).unwrap();
    let start = std::time::Instant::now();
    let err = sweep_plan_err(tmp.path(), &p, &[]);
    assert!(
        err.contains("GPU 0") && err.contains("CUDA out of memory on device 0"),
        "{err}"
    );
    // (GPU 1's launch was given up, its group stopped, within the grace of a stop.)
    assert!(start.elapsed().as_secs() < 120, "{:?}", start.elapsed());
}

#[test]
fn each_launch_is_marked_in_its_log_and_an_error_quotes_only_its_own_output() {
    // A run id used again after a failed start appends to the same server log: the second
    // server's error must not quote what the first one said.
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let sweep = |command: &[&str]| {
        let p = plan(tmp.path(), port, command, "");
        sweep_plan_err(tmp.path(), &p, &["--run-id", "again"])
    };
    let say =
        |words: &str, code: u8| sweep(&["sh", "-c", &format!("{words}; exit {code}"), "{port}"]);
    let err = say("echo 'first server: CUDA out of memory'", 1);
    assert!(err.contains("first server: CUDA out of memory"), "{err}");
    let err = say("echo 'second server: no such model'", 3);
    assert!(err.contains("second server: no such model"), "{err}");
    assert!(
        !err.contains("first server"),
        "an earlier launch's output quoted: {err}"
    );
    let err = say("true", 4);
    assert!(err.contains("exited"), "{err}");
    assert!(
        !err.contains("server:"),
        "an earlier launch's output quoted: {err}"
    );
    // Every launch's output is kept, each after a line naming its launch.
    let log = std::fs::read_to_string(tmp.path().join("again/logs/server-gpu0-radix.log")).unwrap();
    let launches: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("==== turnbench "))
        .collect();
    assert_eq!(launches.len(), 3, "{log}");
    assert!(
        launches
            .iter()
            .all(|l| l.contains("GPU 0") && l.contains("sh -c")),
        "{log}"
    );
    let first = log.find("first server").unwrap();
    let second = log.find("second server").unwrap();
    assert!(
        log.find(launches[1]).unwrap() > first && log.find(launches[1]).unwrap() < second,
        "{log}"
    );
}

#[test]
fn a_launched_server_that_dies_is_launched_again_and_its_cell_rerun() {
    // The first launch exits after 5 answers (as a server that crashes); the runner sees it
    // no longer answers, launches it again and runs the cell again from its start. The turns
    // in flight when it died are not results, and the sweep completes.
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mark = tmp.path().join("launched-once");
    let script = "if [ -e \"$0\" ]; then exec \"$@\"; else touch \"$0\"; \
                  exec \"$@\" --sim-fault exit-after=5; fi";
    let mark_s = mark.display().to_string();
    let mut cmd: Vec<&str> = vec!["sh", "-c", script, &mark_s];
    cmd.extend(serve_sim(&[]));
    let p = plan(tmp.path(), port, &cmd, "");
    // (Modes that keep the radix cache: no restart of the server between cells.)
    let mut args = small_with(
        tmp.path(),
        "exits",
        &[("--gpus", "0"), ("--cache-modes", "prefix,session")],
    );
    args.extend(["--plan".into(), p.display().to_string()]);
    let out = run_ok(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped answering"), "{err}");
    assert!(mark.exists());
    let run = Run::load(&tmp.path().join("exits"));
    run.assert_complete(&[4, 4]);
    assert!(
        run.turns().iter().all(|r| r.error.is_none()),
        "no turn failed"
    );
    assert_eq!(run.manifest.servers.len(), 2, "launched again");
    // The cell it died in ran again, whole, under the next attempt.
    let cut: Vec<u32> = run.turns().iter().map(|r| r.attempt).collect();
    assert!(cut.contains(&1), "{cut:?}");
    assert!(run.summary.cells.iter().all(|c| c.complete == Some(true)));
}

#[test]
fn a_gpu_that_stops_says_so_at_once_and_the_others_finish() {
    // GPU 1's server dies after 3 answers at every launch (so its cell fails after the
    // relaunches it is allowed); GPU 0's is slow and well. The runner says GPU 1 stopped
    // while GPU 0 still runs, GPU 0 finishes its cells, and the run ends with GPU 1's error.
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(2, 10);
    let script = "if [ \"$CUDA_VISIBLE_DEVICES\" = 1 ]; then \
                  exec \"$@\" --sim-time-scale 20 --sim-fault exit-after=3; \
                  else exec \"$@\" --sim-time-scale 3; fi";
    let mut cmd: Vec<&str> = vec!["sh", "-c", script, "sh"];
    let mut sim = serve_sim(&[]);
    let i = sim.iter().position(|a| *a == "1000").unwrap();
    sim.drain(i - 1..=i);
    cmd.extend(sim);
    let p = plan(tmp.path(), port, &cmd, "");
    let mut args = small_with(
        tmp.path(),
        "one-stops",
        &[
            ("--gpus", "0,1"),
            ("--cache-modes", "prefix"),
            ("--think-time", "replay"),
        ],
    );
    args.extend(["--plan".into(), p.display().to_string()]);
    let mut child = runner()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "the run ended without saying GPU 1 stopped:\n{seen}");
        seen.push_str(&line);
        if line.contains("GPU 1 stopped") {
            break;
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "said while GPU 0 still runs:\n{seen}"
    );
    assert!(seen.contains("The other GPUs go on"), "{seen}");
    std::io::Read::read_to_string(&mut stderr, &mut seen).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "{seen}");
    let tail = seen.lines().last().unwrap_or_default();
    assert!(
        tail.contains("GPU 1") && tail.contains("--resume one-stops"),
        "{seen}"
    );
    let run = Run::load(&tmp.path().join("one-stops"));
    let gpu0: Vec<_> = run.turns().into_iter().filter(|r| r.gpu == "0").collect();
    assert_eq!(gpu0.len(), 2 * 2 * 4, "GPU 0's two cells, whole");
    assert!(gpu0.iter().all(|r| r.error.is_none()));
}

/// An attached sweep (run `id`, cache modes `modes`) against a serve-sim that exits after 5
/// answers and is brought back on the same port 4 s later (after the runner has found it gone:
/// it asks for ~1.5 s) with `restart_flags`: the sweep's output, once the second server is
/// stopped.
fn attached_to_a_server_that_restarts(
    tmp: &Path,
    id: &str,
    modes: &str,
    restart_flags: &'static [&'static str],
) -> std::process::Output {
    let port = free_port();
    let mut first = spawn_sim(port, "1000", &["--sim-fault", "exit-after=5"]);
    let url = format!("http://127.0.0.1:{port}");
    let restarter = std::thread::spawn(move || {
        first.wait().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(4));
        spawn_sim(port, "1000", restart_flags)
    });
    let args = small_with(
        tmp,
        id,
        &[
            ("--backend", "attach"),
            ("--url", &url),
            ("--gpus", "sim"),
            ("--cache-modes", modes),
        ],
    );
    let out = runner().args(&args).output().expect("runner starts");
    let mut second = restarter.join().unwrap();
    let _ = second.kill();
    let _ = second.wait();
    out
}

#[test]
fn an_attached_server_that_dies_is_waited_for_and_its_cell_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let out = attached_to_a_server_that_restarts(tmp.path(), "attached", "prefix,session", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("waiting up to"), "{err}");
    let run = Run::load(&tmp.path().join("attached"));
    run.assert_complete(&[4, 4]);
    assert!(
        run.turns().iter().all(|r| r.error.is_none()),
        "no turn failed"
    );
    assert!(run.turns().iter().any(|r| r.attempt == 1));
    // The server that answered again is listed with the one that started.
    assert_eq!(run.manifest.servers.len(), 2);
}

#[test]
fn an_attached_server_that_comes_back_as_another_is_not_measured_as_the_same() {
    // Restarted with another GPU profile (as a real server with other flags or another model):
    // its answers would be recorded under the first's label, so the GPU stops, resumably.
    let tmp = tempfile::tempdir().unwrap();
    let out = attached_to_a_server_that_restarts(
        tmp.path(),
        "swapped",
        "prefix",
        &["--sim-gpu", "a100-40gb"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is not the one this GPU ran on")
            && err.contains("simulated GPU a100-40gb, was h100")
            && err.contains("--resume swapped"),
        "{err}"
    );
}

/// A port and the flags of a sweep that launches serve-sim there, slow enough (engine time
/// 20× wall, tool time replayed) to be interrupted midway.
fn slow_launch(tmp: &Path, id: &str) -> (u16, Vec<String>) {
    let port = free_port();
    let mut cmd = serve_sim(&[]);
    let i = cmd.iter().position(|a| *a == "1000").unwrap();
    cmd[i] = "20";
    let p = plan(tmp, port, &cmd, "");
    let args = small_with(
        tmp,
        id,
        &[
            ("--gpus", "0"),
            ("--think-time", "replay"),
            ("--plan", p.to_str().unwrap()),
        ],
    );
    (port, args)
}

#[test]
fn ctrl_c_stops_the_launched_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, args) = slow_launch(tmp.path(), "interrupted");
    let child = runner()
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let turns = tmp.path().join("interrupted").join("turns.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&turns).map_or(0, |s| s.lines().count()) < 2 {
        assert!(start.elapsed().as_secs() < 60, "no turns recorded");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("interrupted") && err.contains("--resume interrupted"),
        "{err}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "launched server stopped"
    );
    // What was finished is kept, and the summary covers it.
    let run = Run::load(&tmp.path().join("interrupted"));
    assert!(!run.raw.is_empty() && !run.summary.cells.is_empty());
}

/// Spawn a sweep; returns it once `turns.jsonl` has `lines` lines.
fn spawn_until(args: &[String], turns: &Path, lines: usize) -> std::process::Child {
    let mut child = runner()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_to_string(turns).map_or(0, |s| s.lines().count()) < lines {
        assert!(start.elapsed().as_secs() < 60, "no turns recorded");
        assert!(child.try_wait().unwrap().is_none(), "sweep ended too soon");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// True once nothing listens on `port` (within 10 s).
fn port_closes(port: u16) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < 10 {
        if TcpStream::connect(("127.0.0.1", port)).is_err() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn sigterm_then_resume_finishes_a_launched_run_with_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, mut args) = slow_launch(tmp.path(), "termed");
    args.extend(["--api-key".into(), "sekrit-key".into()]);
    let turns = tmp.path().join("termed").join("turns.jsonl");
    let child = spawn_until(&args, &turns, 2);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("interrupted (SIGTERM)"),
        "{err}"
    );
    assert!(port_closes(port), "SIGTERM stops the launched server");
    // The manifest keeps the command's `{api_key}` placeholder (not the key, not `***`), so
    // the resumed run launches its server with the key given again.
    let manifest = std::fs::read_to_string(tmp.path().join("termed/manifest.json")).unwrap();
    assert!(manifest.contains("{api_key}") && !manifest.contains("sekrit-key"));
    let out = run_ok(&resume_args(
        tmp.path(),
        "termed",
        &["--api-key", "sekrit-key"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    // (`HTTP 401`, not a bare `401`: the log's timestamps can hold those digits.)
    assert!(!err.contains("HTTP 401"), "{err}");
    let run = Run::load(&tmp.path().join("termed"));
    run.assert_complete(&[4, 4]);
    assert!(run.turns().iter().all(|r| r.error.is_none()));
    assert!(port_closes(port));
}

#[test]
fn a_port_already_in_use_is_an_error_not_a_benchmark_of_its_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let p = plan(tmp.path(), port, &serve_sim(&[]), "");
    let mut args = small_with(tmp.path(), "busy", &[("--gpus", "0")]);
    args.extend(["--plan".into(), p.display().to_string()]);
    let err = run_err(&args);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("already in use"),
        "{err}"
    );
    assert!(!tmp.path().join("busy/turns.jsonl").exists());
}

#[test]
fn a_killed_runner_takes_its_launched_server_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, args) = slow_launch(tmp.path(), "killed");
    let turns = tmp.path().join("killed").join("turns.jsonl");
    let mut child = spawn_until(&args, &turns, 2);
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();
    assert!(
        port_closes(port),
        "the server got its parent-death signal (util-linux setpriv)"
    );
}

#[test]
fn a_server_a_killed_runner_left_behind_is_stopped_when_its_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // A wrapper that does not exec the server (one that activates an environment first, say):
    // the parent-death signal reaches the shell, and the server outlives a SIGKILLed runner.
    let inner = format!(
        "{} serve-sim --port {{port}} --sim-time-scale 20 --sim-gpu a100-80gb; echo ended",
        env!("CARGO_BIN_EXE_runner")
    );
    let p = plan(tmp.path(), port, &["sh", "-c", &inner], "");
    let args = small_with(
        tmp.path(),
        "orphaned",
        &[
            ("--gpus", "0"),
            ("--think-time", "replay"),
            ("--plan", p.to_str().unwrap()),
        ],
    );
    let turns = tmp.path().join("orphaned").join("turns.jsonl");
    let mut child = spawn_until(&args, &turns, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the server outlived its runner"
    );
    // Taken up again, the run stops it (it holds the port) and finishes.
    let out = run_ok(&resume_args(tmp.path(), "orphaned", &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("still running"), "{err}");
    Run::load(&tmp.path().join("orphaned")).assert_complete(&[4, 4]);
    assert!(port_closes(port));
}

#[test]
fn ctrl_c_while_a_server_starts_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let pidfile = tmp.path().join("server.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pidfile.display());
    let p = plan(tmp.path(), port, &["sh", "-c", &script, "{port}"], "");
    let args = small_with(
        tmp.path(),
        "early",
        &[("--gpus", "0"), ("--plan", p.to_str().unwrap())],
    );
    let child = runner()
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let server = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(start.elapsed().as_secs() < 20, "server never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted (SIGINT)"), "{err}");
    // Gone (or a zombie waiting for a reaper: not running).
    let state = std::fs::read_to_string(format!("/proc/{server}/stat")).unwrap_or_default();
    let running = state
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .is_some_and(|s| s != "Z");
    assert!(!running, "the starting server was stopped: {state}");
}

#[test]
fn an_attached_run_is_finished_against_servers_that_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let mut first = spawn_sim(p1, "20", &[]);
    let url1 = format!("http://127.0.0.1:{p1}");
    let args = small_with(
        tmp.path(),
        "moved",
        &[
            ("--backend", "attach"),
            ("--url", &url1),
            ("--gpus", "sim"),
            ("--cache-modes", "prefix"),
            ("--think-time", "replay"),
        ],
    );
    let mut sweep = runner()
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let turns = tmp.path().join("moved").join("turns.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&turns).map_or(0, |s| s.lines().count()) < 3 {
        assert!(start.elapsed().as_secs() < 60, "no turns recorded");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sweep.kill().unwrap();
    sweep.wait().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = spawn_sim(p2, "20", &[]);
    let out = tmp.path().display().to_string();
    let url2 = format!("http://127.0.0.1:{p2}");
    let resume = |extra: &[&str]| {
        let mut a: Vec<String> = ["sweep", "--quiet", "--out", &out, "--resume", "moved"]
            .map(String::from)
            .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let err = run_err(&resume(&["--url", &url2, "--url", &url2]));
    assert!(err.contains("give as many --url"), "{err}");
    // A server of another model and GPU is no server that moved.
    let p3 = free_port();
    let mut other = spawn_sim(
        p3,
        "20",
        &["--model-path", "qwen2.5-7b", "--sim-gpu", "a100-40gb"],
    );
    let err = run_err(&resume(&["--url", &format!("http://127.0.0.1:{p3}")]));
    let _ = other.kill();
    let _ = other.wait();
    assert!(
        err.contains("not the one the run started on")
            && err.contains("model qwen2.5-7b")
            && err.contains("simulated GPU a100-40gb, was h100"),
        "{err}"
    );
    run_ok(&resume(&["--url", &url2]));
    let _ = second.kill();
    let _ = second.wait();
    let run = Run::load(&tmp.path().join("moved"));
    run.assert_complete(&[4, 4]);
    assert_eq!(run.manifest.servers.last().unwrap().url, url2);
}

#[test]
fn an_attached_servers_radix_cache_must_match_the_cache_modes_run_on_it() {
    // One attached server serves every cache mode of its GPU: a `none` cell on a server whose
    // radix cache is on (or a prefix cell on one whose cache is off) would be labelled with a
    // mode it did not run. The server says how it runs; the sweep refuses the mismatch.
    let tmp = tempfile::tempdir().unwrap();
    let (on, off) = (free_port(), free_port());
    let mut with_cache = spawn_sim(on, "1000", &[]);
    let mut without = spawn_sim(off, "1000", &["--disable-radix-cache"]);
    let attach = |port: u16, modes: &str, id: &str| {
        let url = format!("http://127.0.0.1:{port}");
        small_with(
            tmp.path(),
            id,
            &[
                ("--backend", "attach"),
                ("--url", &url),
                ("--gpus", "g"),
                ("--cache-modes", modes),
            ],
        )
    };
    let err = run_err(&attach(on, "prefix,none", "a"));
    assert!(
        err.contains("GPU g") && err.contains("cache mode none would reuse"),
        "{err}"
    );
    let err = run_err(&attach(off, "prefix,none", "b"));
    assert!(
        err.contains("--disable-radix-cache") && err.contains("prefix"),
        "{err}"
    );
    // Matched, it runs, and says nothing about a mode it cannot guarantee.
    let out = run_ok(&attach(off, "none", "c"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("cannot be guaranteed"), "{err}");
    let run = Run::load(&tmp.path().join("c"));
    assert!(run.turns().iter().all(|r| r.cached_tokens == Some(0)));
    run_ok(&attach(on, "prefix,session", "d"));
    for c in [&mut with_cache, &mut without] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
