//! How a GPU's server comes to exist (the backend seam, STYLE.md §4): the simulated engine
//! in process on a loopback port (`sim`), a spawned server process (`launch`), or an existing
//! URL (`attach`). Whatever the kind, the sweep talks to it over real HTTP.
//!
//! `launch` runs the plan's command with `CUDA_VISIBLE_DEVICES=<gpu>` in its own process
//! group, logs to `results/<run>/logs/`, waits for `GET /health_generate` (the error carries
//! the log tail), and stops the whole group with SIGTERM, then SIGKILL after a grace period —
//! also when dropped (error or Ctrl-C).

use crate::client::Client;
use crate::plan::{BackendChoice, Plan};
use anyhow::{bail, Context as _};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use turnbench_schema::CacheMode;

/// A running (or attached) server for one GPU.
pub struct Server {
    pub gpu: String,
    pub url: String,
    /// False when started with `--disable-radix-cache` (the `none` cache mode).
    pub radix: bool,
    /// The command line, when launched (API keys masked).
    pub launch_command: Option<Vec<String>>,
    inner: Inner,
}

enum Inner {
    Sim(Box<crate::sim::server::SimHandle>),
    Launched(Box<Launched>),
    Attached,
}

/// The keys a sweep is given for its servers (never recorded): the API key every request
/// carries, and the admin key SGLang's admin routes (`/flush_cache`) take when it is set.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub api: Option<String>,
    pub admin: Option<String>,
}

impl Server {
    /// Start (or attach to) the server of `gpu`, with or without the radix cache.
    pub async fn start(
        plan: &Plan,
        gpu: &str,
        radix: bool,
        logs: &Path,
        keys: &Keys,
    ) -> anyhow::Result<Server> {
        let api_key = keys.api.as_deref();
        let index = plan.gpus.iter().position(|g| g == gpu).unwrap_or(0);
        match plan.backend {
            BackendChoice::Attach => Ok(Server {
                gpu: gpu.into(),
                url: plan.urls[index].trim_end_matches('/').to_string(),
                radix,
                launch_command: None,
                inner: Inner::Attached,
            }),
            BackendChoice::Sim => {
                let mut argv = sim_argv(plan, gpu, radix, keys);
                argv.extend(plan.sim_args.iter().cloned());
                let (args, unknown) = crate::sim::cli::SimArgs::parse(&argv)
                    .with_context(|| format!("sim_args: {:?}", plan.sim_args))?;
                if !unknown.is_empty() {
                    tracing::warn!("sim_args: ignored unknown flags {unknown:?}");
                }
                // On a runtime of its own, as if it were another process: the client's
                // streams (on the sweep's runtime) never hold up its tokens, nor it theirs.
                let handle = sim_runtime()?
                    .spawn(crate::sim::server::start(args))
                    .await
                    .context("the simulated server's runtime")?
                    .with_context(|| format!("starting the simulated server for GPU {gpu}"))?;
                Ok(Server {
                    gpu: gpu.into(),
                    url: handle.base_url(),
                    radix,
                    launch_command: None,
                    inner: Inner::Sim(Box::new(handle)),
                })
            }
            BackendChoice::Launch => {
                let port = plan.port_base as u32 + plan.port_step as u32 * gpu.parse::<u32>()?;
                let port =
                    u16::try_from(port).context("port_base + port_step·gpu exceeds 65535")?;
                let argv = launch_argv(plan, gpu, port, radix, keys);
                let log = logs.join(format!(
                    "server-gpu{gpu}-{}.log",
                    if radix { "radix" } else { "no-radix" }
                ));
                let host = if plan.host == "0.0.0.0" {
                    "127.0.0.1"
                } else {
                    &plan.host
                };
                // Whatever already listens there would answer the readiness probe and be
                // measured in place of the server launched here (a previous run's server that
                // outlived a killed runner, say).
                port_free(&plan.host, port)?;
                let launched = Launched::spawn(&argv, gpu, &log, keys)?;
                let url = format!("http://{host}:{port}");
                let client = Client::new(&url, api_key.map(String::from));
                let timeout =
                    Duration::try_from_secs_f64(plan.launch_timeout_s).unwrap_or(Duration::MAX);
                let mut launched = launched;
                launched.wait_ready(&client, timeout).await?;
                Ok(Server {
                    gpu: gpu.into(),
                    url,
                    radix,
                    launch_command: Some(mask_known(&argv, &secrets_of(&argv, keys))),
                    inner: Inner::Launched(Box::new(launched)),
                })
            }
        }
    }

    /// Stop the server (attached servers are left alone).
    pub async fn stop(self) {
        match self.inner {
            Inner::Sim(h) => h.shutdown().await,
            Inner::Launched(mut l) => l.stop().await,
            Inner::Attached => {}
        }
    }
}

/// The simulated server's command line for `gpu` (before the plan's `sim_args`): the plan's
/// model, GPU profile, memory, pool cap, time scale and seed, the radix cache as the cell's
/// cache mode wants it, and the keys.
fn sim_argv(plan: &Plan, gpu: &str, radix: bool, keys: &Keys) -> Vec<String> {
    let api_key = keys.api.as_deref();
    let profile = if crate::sim::cost::GpuProfile::builtin(gpu).is_some() {
        gpu.to_string()
    } else {
        plan.sim_gpu.clone()
    };
    let mut argv: Vec<String> = [
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model-path",
        &plan.model_path,
        "--sim-gpu",
        &profile,
        "--mem-fraction-static",
        &plan.mem_fraction_static.to_string(),
        "--max-total-tokens",
        &plan.max_total_tokens.to_string(),
        "--sim-time-scale",
        &plan.sim_time_scale.to_string(),
        "--sim-seed",
        &plan.seed.to_string(),
    ]
    .map(String::from)
    .to_vec();
    if plan.metrics {
        argv.push("--enable-metrics".into());
    }
    // Cached tokens in OpenAI usage too, as the default launch command asks.
    argv.push("--enable-cache-report".into());
    if !radix {
        argv.push("--disable-radix-cache".into());
    }
    if let Some(k) = api_key {
        argv.extend(["--api-key".into(), k.into()]);
    }
    if let Some(k) = &keys.admin {
        argv.extend(["--admin-api-key".into(), k.clone()]);
    }
    argv
}

/// What the plan sets on the simulated server, as `SimArgs`' fields, with the plan key that
/// sets it.
const SIM_OWNED: [(&str, &str); 9] = [
    ("host", "host (the simulated server binds 127.0.0.1)"),
    ("port", "port (the simulated server takes a free one)"),
    ("model_path", "model_path"),
    (
        "sim_gpu",
        "gpus (a simulated GPU's profile is its label) or sim_gpu",
    ),
    ("mem_fraction_static", "mem_fraction_static"),
    ("max_total_tokens", "max_total_tokens"),
    ("sim_time_scale", "sim_time_scale"),
    ("sim_seed", "seed"),
    (
        "disable_radix_cache",
        "cache_modes (a none cell runs without the radix cache, the others with it)",
    ),
];

/// `sim_args` pass the simulated server flags the plan does not set; one that changes what
/// the plan sets would run cells other than the ones recorded (a GPU, model or time scale
/// the manifest does not name, a prefix cell with its radix cache off): an error naming the
/// plan key to use instead.
pub fn check_sim_args(plan: &Plan) -> Result<(), String> {
    if plan.sim_args.is_empty() {
        return Ok(());
    }
    let keys = Keys::default();
    let radix_wanted = [
        plan.cache_modes.iter().any(|m| *m != CacheMode::None),
        plan.cache_modes.contains(&CacheMode::None),
    ];
    for gpu in &plan.gpus {
        for radix in [true, false].into_iter().zip(radix_wanted) {
            let radix = match radix {
                (r, true) => r,
                (_, false) => continue,
            };
            let base = sim_argv(plan, gpu, radix, &keys);
            let mut with = base.clone();
            with.extend(plan.sim_args.iter().cloned());
            let parse = |argv: &[String]| {
                crate::sim::cli::SimArgs::parse(argv)
                    .map(|(a, _)| serde_json::to_value(a).unwrap_or_default())
                    .map_err(|e| format!("{e:#}"))
            };
            let (was, now) = (parse(&base)?, parse(&with)?);
            for (field, key) in SIM_OWNED {
                if was.get(field) != now.get(field) {
                    return Err(format!(
                        "{:?} sets the simulated server's {field} ({} instead of {}), which the \
                         plan sets: use plan key {key}",
                        plan.sim_args,
                        now.get(field).unwrap_or(&serde_json::Value::Null),
                        was.get(field).unwrap_or(&serde_json::Value::Null),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The runtime the in-process simulated servers run on (all GPUs of the process share it),
/// started on first use and kept for the life of the process.
fn sim_runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    // One thread, as SGLang's HTTP front end is one asyncio event loop (`--sim-workers`
    // of `runner serve-sim`); each simulated engine steps on a thread of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sim-server")
        .enable_all()
        .build()
        .context("starting the simulated server's runtime")?;
    // Two callers at once: the loser's runtime is shut down without blocking.
    if let Err(extra) = RT.set(rt) {
        extra.shutdown_background();
    }
    Ok(RT.get().expect("just set"))
}

/// The launch command for one GPU, placeholders filled.
pub fn launch_argv(plan: &Plan, gpu: &str, port: u16, radix: bool, keys: &Keys) -> Vec<String> {
    let mut template = plan.launch_command.clone();
    for (placeholder, key) in [("{api_key}", &keys.api), ("{admin_api_key}", &keys.admin)] {
        if key.is_some() {
            continue;
        }
        // No key: drop `--api-key {api_key}` (and `--flag={api_key}`) rather than pass "".
        while let Some(i) = template.iter().position(|a| a.contains(placeholder)) {
            let flag_before =
                i > 0 && template[i - 1].starts_with("--") && !template[i].starts_with("--");
            template.remove(i);
            if flag_before {
                template.remove(i - 1);
            }
        }
    }
    let mut argv: Vec<String> = template
        .iter()
        .map(|a| {
            a.replace("{model_path}", &plan.model_path)
                .replace("{host}", &plan.host)
                .replace("{port}", &port.to_string())
                .replace("{gpu}", gpu)
                .replace(
                    "{mem_fraction_static}",
                    &plan.mem_fraction_static.to_string(),
                )
                .replace("{max_total_tokens}", &plan.max_total_tokens.to_string())
                .replace("{api_key}", keys.api.as_deref().unwrap_or(""))
                .replace("{admin_api_key}", keys.admin.as_deref().unwrap_or(""))
        })
        .collect();
    if !radix {
        argv.push("--disable-radix-cache".into());
    }
    argv
}

/// Replace the value of `--api-key`-like flags with `***`, also inside an argument that is a
/// whole shell command (`sh -c "… --api-key K"`). A placeholder (`{api_key}`, as in a plan's
/// command template) is not a secret and stays, so a resumed run fills it again.
pub fn mask_secrets(argv: &[String]) -> Vec<String> {
    let masked = mask_flags(argv);
    masked
        .into_iter()
        .map(|a| {
            if !a.contains(char::is_whitespace) {
                return a;
            }
            // The words of a command line, masked the same way, the spacing kept.
            let (mut words, mut gaps) = (Vec::new(), Vec::new());
            let mut rest = a.as_str();
            while !rest.is_empty() {
                let gap = rest.len() - rest.trim_start().len();
                gaps.push(rest[..gap].to_string());
                rest = &rest[gap..];
                let word = rest.find(char::is_whitespace).unwrap_or(rest.len());
                words.push(rest[..word].to_string());
                rest = &rest[word..];
            }
            let words = mask_flags(&words);
            gaps.iter()
                .zip(&words)
                .map(|(g, w)| format!("{g}{w}"))
                .collect()
        })
        .collect()
}

/// [`mask_secrets`], and every occurrence of each of `secrets` (the run's key, and the literal
/// keys of the command itself) replaced by `***` wherever it stands.
pub fn mask_known(argv: &[String], secrets: &[String]) -> Vec<String> {
    mask_secrets(argv)
        .into_iter()
        .map(|mut a| {
            for k in secrets.iter().filter(|k| !k.is_empty()) {
                a = a.replace(k.as_str(), "***");
            }
            a
        })
        .collect()
}

/// The literal values of `--api-key`-like flags in a command (placeholders aside), also
/// inside an argument that is a whole shell command.
pub fn literal_secrets(argv: &[String]) -> Vec<String> {
    let words: Vec<String> = argv
        .iter()
        .flat_map(|a| a.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect();
    let masked = mask_flags(&words);
    let mut out: Vec<String> = Vec::new();
    for (w, m) in words.iter().zip(&masked) {
        if w != m {
            // `--flag=value` or the word after `--flag`.
            let v = w.split_once('=').map_or(w.as_str(), |(_, v)| v);
            let v = v.trim_matches(|c| c == '"' || c == '\'');
            if !v.is_empty() && !out.iter().any(|o| o == v) {
                out.push(v.to_string());
            }
        }
    }
    out
}

/// The keys a launch must keep out of what it writes: the run's, and those in the command.
fn secrets_of(argv: &[String], given: &Keys) -> Vec<String> {
    let mut keys = literal_secrets(argv);
    for k in [&given.api, &given.admin].into_iter().flatten() {
        if !k.is_empty() {
            keys.push(k.clone());
        }
    }
    // Servers log their arguments escaped (SGLang's `server_args=ServerArgs(api_key='…')` is
    // Python's repr, serve-sim's Rust's Debug; JSON for others): a key with a quote or a
    // backslash in it is written so, and masked so too.
    let quoted = |q: String| q[1..q.len() - 1].to_string();
    for k in keys.clone() {
        let backslashes = k.replace('\\', "\\\\");
        for v in [
            quoted(format!("{k:?}")),
            quoted(serde_json::Value::from(k.as_str()).to_string()),
            backslashes.replace('\'', "\\'"),
            backslashes,
        ] {
            if v != k {
                keys.push(v);
            }
        }
    }
    // Longest first, so a key inside another is not masked in part.
    keys.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    keys.dedup();
    keys
}

/// [`mask_secrets`] for arguments that are single words.
fn mask_flags(argv: &[String]) -> Vec<String> {
    let placeholder = |v: &str| v.len() > 2 && v.starts_with('{') && v.ends_with('}');
    let mut out = Vec::with_capacity(argv.len());
    let mut mask_next = false;
    for a in argv {
        if mask_next {
            out.push(if placeholder(a) {
                a.clone()
            } else {
                "***".into()
            });
            mask_next = false;
            continue;
        }
        let flag = a.split('=').next().unwrap_or("");
        if crate::client::is_secret_key(&flag.trim_start_matches('-').replace('-', "_")) {
            if let Some((_, value)) = a.split_once('=') {
                out.push(if placeholder(value) {
                    a.clone()
                } else {
                    format!("{flag}=***")
                });
            } else {
                out.push(a.clone());
                mask_next = true;
            }
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// An error unless `port` on `host` is free to listen on.
fn port_free(host: &str, port: u16) -> anyhow::Result<()> {
    match std::net::TcpListener::bind((host, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "port {port} on {host} is already in use: another server listens there (one left \
             running by an earlier run?); stop it (`ss -ltnp 'sport = :{port}'` names it), or, \
             for a new run (not a resume), move port_base"
        ),
        // Another failure (an address of another machine, say) is the server's to report.
        Err(_) => Ok(()),
    }
}

/// The environment variable every launched server process (and whatever it starts) carries:
/// the run directory it serves. A server that outlives its runner (a SIGKILLed runner whose
/// launch command is a wrapper script: the parent-death signal reaches the script, not the
/// server it started) is found by it when the run is taken up again ([`stop_leftovers`]).
const SERVER_OF: &str = "TURNBENCH_SERVER_OF";

/// How long a server is given to exit after SIGTERM before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The run directory of a server log (`RUN/logs/server-….log`), absolute.
fn run_marker(log: &Path) -> std::ffi::OsString {
    let run = log.parent().and_then(Path::parent).unwrap_or(log);
    let run = run
        .canonicalize()
        .or_else(|_| std::path::absolute(run))
        .unwrap_or_else(|_| run.to_path_buf());
    run.into_os_string()
}

/// Stop the process groups of servers an earlier runner of the run in `logs` launched and
/// left running (it was SIGKILLed): they would hold the GPU and the port the run's servers
/// are launched on. Called with the run's lock held, so no live runner owns them. Returns
/// how many processes were found.
pub fn stop_leftovers(logs: &Path) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let mut wanted = SERVER_OF.as_bytes().to_vec();
    wanted.push(b'=');
    wanted.extend_from_slice(run_marker(&logs.join("x")).as_bytes());
    wanted.push(0);
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut found: Vec<(rustix::process::Pid, Option<rustix::process::Pid>)> = Vec::new();
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let mut env_with_start = vec![0u8];
        env_with_start.extend_from_slice(&env);
        if memchr::memmem::find(&env_with_start, &wanted).is_none() {
            continue;
        }
        let pgid = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|st| state_and_group(&st))
            .and_then(|(_, g)| rustix::process::Pid::from_raw(g));
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            found.push((pid, pgid));
        }
    }
    if found.is_empty() {
        return 0;
    }
    tracing::warn!(
        "{} process(es) of servers an earlier runner of this run launched are still running \
         (it was killed, and its launch command did not exec the server): stopping them",
        found.len()
    );
    let signal_all = |sig: rustix::process::Signal| {
        for (pid, pgid) in &found {
            let _ = match pgid {
                Some(g) => rustix::process::kill_process_group(*g, sig),
                None => rustix::process::kill_process(*pid, sig),
            };
        }
    };
    signal_all(rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline
        && found
            .iter()
            .any(|(pid, _)| rustix::process::test_kill_process(*pid).is_ok())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    signal_all(rustix::process::Signal::KILL);
    found.len()
}

/// State and process group of a process, from `/proc/PID/stat` (the fields after its
/// parenthesized name).
fn state_and_group(stat: &str) -> Option<(char, i32)> {
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let pgrp = rest.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether a process of group `pg` is still running (zombies, which an init that does not
/// reap may leave, are not).
fn group_lives(pg: rustix::process::Pid) -> bool {
    if rustix::process::test_kill_process_group(pg).is_err() {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| state_and_group(&s))
            .is_some_and(|(state, g)| g == pg.as_raw_nonzero().get() && state != 'Z')
    })
}

/// A spawned server process group.
struct Launched {
    child: tokio::process::Child,
    pgid: Option<rustix::process::Pid>,
    log: PathBuf,
    /// Where this launch's output begins in `log` (after its banner).
    log_from: u64,
    /// The thread copying the server's output into its log, when it masks a key.
    scrubber: Option<std::thread::JoinHandle<()>>,
    stopped: bool,
}

impl Launched {
    fn spawn(argv: &[String], gpu: &str, log: &Path, keys: &Keys) -> anyhow::Result<Launched> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        // Every launch of this GPU's server in this run (a relaunch after a crash, a resume,
        // a run id used again after a failed start) appends to the same log: each begins
        // with a line saying when and what was launched, and the tails quoted in errors are
        // this launch's output alone, never an earlier server's.
        let secrets = secrets_of(argv, keys);
        let log_from = {
            use std::io::Write;
            let end = file
                .metadata()
                .with_context(|| format!("reading {}", log.display()))?
                .len();
            let banner = format!(
                "{}==== turnbench {}: launching the server of GPU {gpu}: {} ====\n",
                if end > 0 { "\n" } else { "" },
                jiff::Timestamp::now()
                    .round(jiff::Unit::Second)
                    .unwrap_or_else(|_| jiff::Timestamp::now()),
                mask_known(argv, &secrets).join(" ")
            );
            file.write_all(banner.as_bytes())
                .with_context(|| format!("writing {}", log.display()))?;
            end + banner.len() as u64
        };
        // SGLang logs its arguments at startup, API key included (`server_args=…`): with a
        // key (the run's, or one written in the command), the output reaches the log through
        // a pipe that masks it.
        let ctx = || format!("logging to {}", log.display());
        let (out, err, scrubber) = match secrets.is_empty() {
            false => {
                let keys = secrets.iter().map(|k| k.as_bytes().to_vec()).collect();
                let (w, h) = scrubbed_log(file, keys).with_context(ctx)?;
                let w2 = w.try_clone().with_context(ctx)?;
                (Stdio::from(w), Stdio::from(w2), Some(h))
            }
            true => {
                let f2 = file.try_clone().with_context(ctx)?;
                (Stdio::from(file), Stdio::from(f2), None)
            }
        };
        // With util-linux's `setpriv`, the server is sent SIGTERM when the runner dies, even
        // by SIGKILL (the parent-death signal; without it such a server outlives the runner,
        // holding its GPU and port). The runner spawns servers from its main thread (the
        // sweep runs in `block_on`), whose end is the process's.
        let mut cmd = match which_setpriv() {
            // (A command that is not there is reported here, not by `setpriv` in the log.)
            Some(setpriv) if find_program(&argv[0]).is_some() => {
                let mut c = tokio::process::Command::new(setpriv);
                c.args(["--pdeathsig", "TERM", "--"]).args(argv);
                c
            }
            _ => {
                let mut c = tokio::process::Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        cmd.env("CUDA_VISIBLE_DEVICES", gpu)
            .env(SERVER_OF, run_marker(log))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("launch_command: cannot start {:?}", argv[0]))?;
        // The pipe's writing ends are now the server's alone (so its exit ends the copying).
        drop(cmd);
        let pgid = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32));
        tracing::info!(
            "GPU {gpu}: launched {:?} (log {})",
            mask_known(argv, &secrets),
            log.display()
        );
        Ok(Launched {
            child,
            pgid,
            log: log.to_path_buf(),
            log_from,
            scrubber,
            stopped: false,
        })
    }

    /// Let the log catch up with the server's last output (for its tail), a second at most
    /// (a process of the group may still hold the pipe open).
    async fn log_written(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self
            .scrubber
            .as_ref()
            .is_some_and(|h| !h.is_finished() && Instant::now() < deadline)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_ready(&mut self, client: &Client, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.check_alive().await?;
            // One probe never outlasts launch_timeout_s (nor 30 s).
            let left = timeout.saturating_sub(start.elapsed());
            let probe = left.clamp(Duration::from_secs(1), Duration::from_secs(30));
            if client.is_ready("/health_generate", probe).await {
                // The answer was this server's only if it is still running.
                self.check_alive().await?;
                return Ok(());
            }
            if start.elapsed() > timeout {
                self.stop().await;
                self.log_written().await;
                bail!(
                    "the launched server was not ready after {:.0} s (launch_timeout_s); log {}:\n{}",
                    timeout.as_secs_f64(),
                    self.log.display(),
                    log_tail(&self.log, self.log_from, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An error (with the log's tail) when the server has exited.
    async fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.stopped = true;
            self.signal(rustix::process::Signal::KILL);
            self.log_written().await;
            bail!(
                "the launched server exited ({status}) before it was ready; log {}:\n{}",
                self.log.display(),
                log_tail(&self.log, self.log_from, 30)
            );
        }
        Ok(())
    }

    fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pg) = self.pgid {
            let _ = rustix::process::kill_process_group(pg, sig);
        }
    }

    /// SIGTERM the group, wait up to 20 s, then SIGKILL it.
    async fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.signal(rustix::process::Signal::TERM);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        // The command's process and then the rest of its group: a wrapper script that did not
        // exec the server exits at once, while the server still closes its port.
        let leader = tokio::time::timeout_at(deadline, self.child.wait())
            .await
            .is_ok();
        if !(leader && self.group_gone_by(deadline).await) {
            tracing::warn!("launched server ignored SIGTERM for 20 s; sending SIGKILL");
        }
        self.signal(rustix::process::Signal::KILL);
        let _ = self.child.wait().await;
        // Gone, and its port with it, before a server is launched in its place.
        self.group_gone_by(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
        self.stopped = true;
    }

    /// Wait until no process of the group is left (true), or `deadline` (false).
    async fn group_gone_by(&self, deadline: tokio::time::Instant) -> bool {
        let Some(pg) = self.pgid else { return true };
        loop {
            if !group_lives(pg) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.signal(rustix::process::Signal::TERM);
        // The whole group, as in `stop`: a wrapper that did not exec the server exits first.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let leader_gone = matches!(self.child.try_wait(), Ok(Some(_)));
            if leader_gone && self.pgid.is_none_or(|pg| !group_lives(pg)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal(rustix::process::Signal::KILL);
    }
}

/// A pipe whose bytes a thread copies into `file` with every `key` in them replaced by
/// `***`; the writing end is returned.
fn scrubbed_log(
    mut file: std::fs::File,
    keys: Vec<Vec<u8>>,
) -> std::io::Result<(std::io::PipeWriter, std::thread::JoinHandle<()>)> {
    let (mut reader, writer) = std::io::pipe()?;
    let copy = move || {
        let finds: Vec<memchr::memmem::Finder<'_>> = keys
            .iter()
            .filter(|k| !k.is_empty())
            .map(memchr::memmem::Finder::new)
            .collect();
        let longest = finds.iter().map(|f| f.needle().len()).max().unwrap_or(1);
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            pending.extend_from_slice(&buf[..n]);
            for find in &finds {
                pending = mask(&pending, find);
            }
            // What could begin a key split across two reads waits for the next one.
            let keep = (longest - 1).min(pending.len());
            let ready = pending.len() - keep;
            if file.write_all(&pending[..ready]).is_err() {
                break;
            }
            pending.drain(..ready);
        }
        let _ = file.write_all(&pending);
    };
    let handle = std::thread::Builder::new()
        .name("server-log".into())
        .spawn(copy)?;
    Ok((writer, handle))
}

/// `bytes` with every match of `find` replaced by `***`.
fn mask(bytes: &[u8], find: &memchr::memmem::Finder<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    for i in find.find_iter(bytes) {
        if i >= at {
            out.extend_from_slice(&bytes[at..i]);
            out.extend_from_slice(b"***");
            at = i + find.needle().len();
        }
    }
    out.extend_from_slice(&bytes[at..]);
    out
}

/// Where a command's program is: itself when it names a path, else the first `PATH` entry
/// holding it.
fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| name.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// util-linux's `setpriv`, when it is installed and sets a parent-death signal.
fn which_setpriv() -> Option<&'static Path> {
    static SETPRIV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let exe = find_program("setpriv")?;
            // Old versions lack --pdeathsig: try it.
            std::process::Command::new(&exe)
                .args(["--pdeathsig", "TERM", "--", "true"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .ok()?
                .success()
                .then_some(exe)
        })
        .as_deref()
}

/// The last `n` lines of a log file after byte `from`.
pub fn log_tail(path: &Path, from: u64, n: usize) -> String {
    let mut text = std::fs::read(path).unwrap_or_default();
    text.drain(..(from.min(text.len() as u64) as usize));
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_state_and_group_are_read_past_any_name() {
        assert_eq!(
            state_and_group("4242 (python3 (sglang) x) S 1 4240 4240 0 -1 4194560"),
            Some(('S', 4240))
        );
        assert_eq!(state_and_group("7 (sh) Z 1 7 7 0"), Some(('Z', 7)));
        assert_eq!(state_and_group("garbage"), None);
        // This very process (its main thread may be asleep): no zombie, in its group.
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (state, group) = state_and_group(&me).unwrap();
        assert_ne!(state, 'Z');
        assert_eq!(group, rustix::process::getpgrp().as_raw_nonzero().get());
        assert!(group_lives(rustix::process::getpgrp()));
    }

    #[test]
    fn api_keys_are_masked_in_launch_commands() {
        let a: Vec<String> = ["x", "--api-key", "s3", "--admin-api-key=s4", "--port", "1"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            mask_secrets(&a),
            [
                "x",
                "--api-key",
                "***",
                "--admin-api-key=***",
                "--port",
                "1"
            ]
        );
        let t: Vec<String> = ["x", "--api-key", "{api_key}", "--admin-api-key={api_key}"]
            .map(String::from)
            .to_vec();
        assert_eq!(mask_secrets(&t), t);
    }
}
