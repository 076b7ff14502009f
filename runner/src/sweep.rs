//! `runner sweep`: resolve the plan, load the workload, bring up one server per GPU, write the
//! manifest, then run every GPU's cells (sequentially per GPU, GPUs in parallel, with
//! `/flush_cache` between cells), recording every turn and rewriting the summary after each
//! cell; finally print the seed's tables. `--resume ID` finishes an interrupted run.

use crate::backend::Server;
use crate::chat_template::ChatTemplate;
use crate::client::{scrub, Api, Client, Sampling};
use crate::console::{self, GpuProgress};
use crate::conversation;
use crate::driver::{run_cell, CellCtx, ServerDown};
use crate::plan::{BackendChoice, OutputLen, Plan, PlanKeys, ThinkTime};
use crate::record::{self, Recorder};
use crate::telemetry::{self, GpuState};
use crate::workload::{self, Workload};
use anyhow::{bail, Context as _};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use turnbench_schema::manifest::CellId;
use turnbench_schema::{
    files, BackendInfo, BackendKind, CacheMode, DatasetInfo, GpuInfo, HostInfo, Manifest,
    ServerInfo, SimInfo, ToolInfo, SCHEMA_VERSION,
};

/// `runner sweep` flags: a plan file, any plan key as a flag, and the run controls.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Plan file (TOML); flags override its keys. Without it the demo plan runs.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    #[command(flatten)]
    pub keys: PlanKeys,
    /// Finish the interrupted run `ID` under `out` (its manifest's plan is used).
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
    /// Bearer key for the servers. Never written to results.
    #[arg(long, env = "TURNBENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The servers' admin key (SGLang's `--admin-api-key`), for `/flush_cache` between cells;
    /// passed to the simulated server, and to a launch command as {admin_api_key}. Never
    /// written to results.
    #[arg(long, env = "TURNBENCH_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// No progress bars (the tables are still printed).
    #[arg(long)]
    pub quiet: bool,
}

/// `--launch-command` takes every argument after it (the server's flags begin with `--`
/// too), so a runner flag given after it would silently go to the server instead: refuse
/// that, naming it. Flags SGLang's `launch_server` also takes are the server's.
fn check_launch_command(cmd: &[String]) -> anyhow::Result<()> {
    const SERVER_TOO: &[&str] = &[
        "model-path",
        "host",
        "port",
        "mem-fraction-static",
        "max-total-tokens",
        "api-key",
        "admin-api-key",
        "chat-template",
        "tp-size",
    ];
    let runner = <SweepArgs as clap::Args>::augment_args(clap::Command::new("sweep"));
    for arg in cmd {
        let Some(name) = arg.strip_prefix("--") else {
            continue;
        };
        let name = name.split('=').next().unwrap_or(name);
        if SERVER_TOO.contains(&name) {
            continue;
        }
        if runner.get_arguments().any(|a| a.get_long() == Some(name)) {
            bail!(
                "--launch-command takes every argument after it, and {arg} is a runner flag \
                 (it would go to the server): put --launch-command last"
            );
        }
    }
    Ok(())
}

/// Entry point of `runner sweep`.
pub fn main(args: SweepArgs) -> anyhow::Result<()> {
    if let Some(cmd) = &args.keys.launch_command {
        check_launch_command(cmd)?;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,runner=info,runner::sim=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    // One worker thread runs every trajectory's streams. Arrival times come from the kernel
    // (`arrival.rs`), so a busy thread does not shift them; and one thread spends less CPU per
    // streamed chunk than two that hand connections and wake-ups to each other (measured by
    // `cargo bench -p runner --bench client`, whose client runs the same way). A simulated
    // server runs on a runtime of its own (`backend.rs`).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

/// Raise the soft limit on open files to the hard one (a stream is a socket, two with the
/// in-process simulated server), and check the plan's concurrency fits in it: past the limit,
/// connections fail with EMFILE and the simulated server stops accepting. The limit, or
/// `None` when unlimited.
fn open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    if lim.current.is_some() && lim.current != lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return lim.maximum;
        }
    }
    lim.current
}

fn check_open_files(plan: &Plan) -> anyhow::Result<()> {
    let per_stream = if plan.backend == BackendChoice::Sim {
        2
    } else {
        1
    };
    // GPUs run at once; each at its largest concurrency at worst.
    let streams: u64 = plan
        .gpus
        .iter()
        .map(|g| u64::from(plan.batch_sizes[g].iter().copied().max().unwrap_or(1)))
        .sum();
    let need = streams.min(plan.trajectories as u64 * plan.gpus.len() as u64) * per_stream + 256;
    match open_files_limit() {
        Some(limit) if need > limit => {
            bail!(
            "plan key `batch_sizes`: {streams} concurrent streams need about {need} open files \
             ({per_stream} per stream{}), more than this process may open ({limit}); raise \
             the limit (ulimit -n) or lower the concurrency",
            if per_stream == 2 { ", with the in-process simulated server" } else { "" }
        )
        }
        _ => Ok(()),
    }
}

/// Turns of every trajectory rendered before a sweep with a Jinja chat template starts.
const PROBE_TURNS: usize = 4;

/// Run id from the clock: `YYYYMMDD-HHMMSS`.
fn default_run_id() -> String {
    let s = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    s.replace(['-', ':'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_string()
}

/// The run to perform: a fresh one or the rest of an interrupted one.
struct Setup {
    plan: Plan,
    run_id: String,
    dir: PathBuf,
    existing: Vec<turnbench_schema::TurnRecord>,
    manifest: Option<Manifest>,
    /// The run directory, locked for this process (see [`lock_run`]).
    _lock: std::fs::File,
}

/// Lock a run's directory for this process (an exclusive `flock` on the directory itself,
/// released when the process ends, however it ends): a second sweep or `--resume` of the same
/// run is refused instead of writing the same records twice.
fn lock_run(dir: &Path) -> anyhow::Result<std::fs::File> {
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another sweep (running, or resuming it); wait for it to end",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", dir.display()))
        }
    }
}

fn setup(args: &SweepArgs) -> anyhow::Result<Setup> {
    if let Some(id) = &args.resume {
        // The run finishes as it started: its manifest's plan, nothing else.
        let mut given = args.keys.clone();
        given.out = None;
        // An attached run may be finished against servers that moved (one URL per GPU).
        let moved = given.urls.take();
        let given: Vec<String> = match serde_json::to_value(&given) {
            Ok(Value::Object(m)) => m
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| match k.as_str() {
                    "urls" => "--url".to_string(),
                    k => format!("--{}", k.replace('_', "-")),
                })
                .collect(),
            _ => vec![],
        };
        if args.plan.is_some() || !given.is_empty() {
            let mut flags = given;
            if args.plan.is_some() {
                flags.insert(0, "--plan".into());
            }
            bail!(
                "--resume {id} finishes the run with the plan in its manifest; drop {}",
                flags.join(", ")
            );
        }
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            bail!("--resume {id:?}: not a run id (the name of a directory under --out)");
        }
        let out = args.keys.out.clone().unwrap_or_else(|| "results".into());
        let dir = out.join(id);
        let mpath = dir.join(files::MANIFEST);
        let lock = if dir.is_dir() {
            lock_run(&dir).with_context(|| format!("--resume {id}"))?
        } else {
            bail!("--resume {id}: no run directory {}", dir.display());
        };
        let text = match std::fs::read_to_string(&mpath) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "--resume {id}: {} has no manifest: the run stopped before its servers were \
                 ready, so nothing of it was run; start it again (--run-id {id} is free to use)",
                dir.display()
            ),
            r => r.with_context(|| format!("--resume {id}: reading {}", mpath.display()))?,
        };
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("--resume {id}: parsing {}", mpath.display()))?;
        let mut plan = Plan::from_manifest(&manifest.plan)
            .with_context(|| format!("--resume {id}: the plan in {}", mpath.display()))?;
        if let Some(urls) = moved {
            if plan.backend != BackendChoice::Attach {
                bail!("--resume {id}: --url is for a run on attached servers; drop it");
            }
            if urls.len() != plan.urls.len() {
                bail!(
                    "--resume {id}: the run attached {} server(s), one per GPU; give as many --url",
                    plan.urls.len()
                );
            }
            plan.urls = urls;
        }
        let masked = |args: &[String]| args.iter().any(|a| a.contains("***"));
        if (plan.backend == BackendChoice::Launch && masked(&plan.launch_command))
            || (plan.backend == BackendChoice::Sim && masked(&plan.sim_args))
        {
            bail!(
                "--resume {id}: the plan's launch_command or sim_args held an API key, which the \
                 manifest does not keep; give keys as {{api_key}} in the command and with \
                 --api-key (or TURNBENCH_API_KEY)"
            );
        }
        let existing = record::read_turns(&dir)?;
        record::repair_telemetry(&dir)?;
        return Ok(Setup {
            plan,
            run_id: id.clone(),
            dir,
            existing,
            manifest: Some(manifest),
            _lock: lock,
        });
    }
    let file = match &args.plan {
        Some(p) => PlanKeys::from_file(p)?,
        None => PlanKeys::default(),
    };
    let mut plan = Plan::resolve(args.keys.clone().over(file))?;
    if plan.out.exists() && !plan.out.is_dir() {
        bail!(
            "plan key `out`: {} is a file, not a directory for results",
            plan.out.display()
        );
    }
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("creating {}", plan.out.display()))?;
    // The run's directory is claimed by creating it, so two sweeps started at once never
    // share one; a run id from the clock (one-second resolution) takes the next free suffix.
    let (run_id, dir, lock) = match plan.run_id.clone() {
        Some(id) => {
            let dir = plan.out.join(&id);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // Locked before it is looked at: two sweeps given the same id never both start.
            let lock = lock_run(&dir)?;
            if dir.join(files::MANIFEST).exists() {
                bail!(
                    "{} already holds a run; pick another run_id, or finish it with --resume {id}",
                    dir.display()
                );
            }
            if dir.join(files::TURNS).exists() {
                bail!(
                    "{} holds per-turn records but no manifest (a run whose manifest was lost); \
                     pick another run_id, or move them away",
                    dir.display()
                );
            }
            (id, dir, lock)
        }
        None => {
            let base = default_run_id();
            let mut n = 1;
            loop {
                let id = if n == 1 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                };
                let dir = plan.out.join(&id);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        let lock = lock_run(&dir)?;
                        break (id, dir, lock);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                    Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
                }
            }
        }
    };
    plan.run_id = Some(run_id.clone());
    Ok(Setup {
        plan,
        run_id,
        dir,
        existing: vec![],
        manifest: None,
        _lock: lock,
    })
}

async fn run(args: SweepArgs) -> anyhow::Result<()> {
    let setup = setup(&args)?;
    let dir = setup.dir.clone();
    let r = run_setup(args, setup).await;
    if r.is_err() && !dir.join(files::MANIFEST).exists() {
        // Rejected before it started: no run directory is left behind (unless it holds a
        // server's log, which tells why).
        let _ = std::fs::remove_dir(dir.join(files::LOGS_DIR));
        let _ = std::fs::remove_dir(&dir);
    }
    r
}

async fn run_setup(args: SweepArgs, setup: Setup) -> anyhow::Result<()> {
    let Setup {
        plan,
        run_id,
        dir,
        existing,
        manifest: old_manifest,
        _lock: _run_lock,
    } = setup;
    let api_key = args.api_key.clone();
    let keys = crate::backend::Keys {
        api: api_key.clone(),
        admin: args.admin_api_key.clone(),
    };
    let source = workload::Source {
        format: plan.dataset_format,
        path: plan.dataset.clone(),
        prompts: plan.prompts.clone(),
        trajectories: plan.trajectories,
        max_turns: plan.turns,
        seed: plan.seed,
        skip_bad_lines: plan.skip_bad_lines,
    };
    let wl = tokio::task::spawn_blocking(move || workload::load(&source)).await??;
    if wl.trajectories.is_empty() {
        match &plan.dataset {
            Some(p) => bail!(
                "{}: no trajectories in it (the dataset is empty)",
                p.display()
            ),
            None => bail!("dataset: no trajectories to run"),
        }
    }
    let have = wl.trajectories.len();
    if have < plan.trajectories {
        tracing::warn!(
            "the dataset holds {have} trajectories (of the {} asked for): the sweep runs {have}",
            plan.trajectories
        );
    }
    // A cell runs at most as many trajectories at once as there are: a larger concurrency
    // would be measured, and labelled, as one it never reached.
    for (gpu, sizes) in plan
        .batch_sizes
        .iter()
        .filter(|(g, _)| plan.gpus.contains(*g))
    {
        if let Some(c) = sizes.iter().find(|&&c| c as usize > have) {
            bail!(
                "plan key `batch_sizes`: concurrency {c} (GPU {gpu}) is more than the {have} \
                 trajectories to run: at most {have} would run at once; raise `trajectories` \
                 or lower the batch size"
            );
        }
    }
    if plan.history == turnbench_schema::HistorySource::Recorded
        && wl
            .trajectories
            .iter()
            .all(|t| t.turns.iter().all(|u| u.recorded.is_none()))
    {
        bail!("plan key `history`: recorded, but the dataset records no assistant messages");
    }
    if plan.output_len == OutputLen::Recorded
        && wl.trajectories.iter().all(|t| {
            t.turns
                .iter()
                .all(|u| u.recorded.as_deref().unwrap_or("").is_empty())
        })
    {
        bail!(
            "plan key `output_len`: recorded, but the dataset records no assistant message \
             with text in it"
        );
    }
    let template = plan.load_chat_template()?;
    if matches!(template, ChatTemplate::Jinja(_)) {
        let session = plan.cache_modes.contains(&CacheMode::Session);
        for traj in wl.trajectories.iter() {
            conversation::probe(&template, &traj, plan.history, session, PROBE_TURNS)
                .with_context(|| {
                    format!(
                        "plan key `chat_template`: rendering trajectory {:?} before the sweep",
                        traj.id
                    )
                })?;
        }
    }
    if let Some(m) = &old_manifest {
        // The same prompts, byte for byte: the chat template (file and content) too.
        let now = (plan.api == Api::Native).then(|| template.describe());
        if m.backend.chat_template.is_some() && m.backend.chat_template != now {
            bail!(
                "--resume {run_id}: the chat template changed since the run started ({} ≠ {})",
                now.as_deref().unwrap_or("none"),
                m.backend.chat_template.as_deref().unwrap_or("none")
            );
        }
        if m.dataset.content_hash.as_deref() != Some(wl.content_hash.as_str()) {
            bail!(
                "--resume {run_id}: the workload changed since the run started (the dataset or \
                 its prompts file, or the synthetic generator): content hash {} now, {} then",
                wl.content_hash,
                m.dataset.content_hash.as_deref().unwrap_or("none recorded")
            );
        }
    }
    let wl = Arc::new(wl);
    check_open_files(&plan)?;
    if let Some(m) = &old_manifest {
        // A resume of a finished run: nothing to start (no server, no manifest entry).
        let counts: Vec<usize> = wl.trajectories.turn_counts();
        if record::todo(&plan.cells(), &counts, &existing)
            .values()
            .all(|t| t.is_empty())
        {
            let recorder = Recorder::open(
                &dir,
                &run_id,
                m.simulated,
                existing,
                counts.iter().map(|&n| n as u32).collect(),
            )?;
            let summary = recorder.write_summary()?;
            println!("{}", console::tables(&summary, m.zero_cost()));
            println!("--resume {run_id}: every cell is finished; nothing left to run");
            println!("results: {}", dir.display());
            return Ok(());
        }
    }
    if plan.backend == BackendChoice::Sim {
        for gpu in &plan.gpus {
            if crate::sim::cost::GpuProfile::builtin(gpu).is_none() {
                tracing::warn!(
                    "GPU {gpu}: not a simulated GPU profile, simulated as {} (--sim-gpu)",
                    plan.sim_gpu
                );
            }
        }
    }
    if plan.backend == BackendChoice::Attach {
        for (i, u) in plan.urls.iter().enumerate() {
            check_attached(&Client::new(u, api_key.clone()))
                .await
                .with_context(|| format!("plan key `urls[{i}]`: {u}"))?;
        }
    }
    std::fs::create_dir_all(dir.join(files::LOGS_DIR))
        .with_context(|| format!("creating {}", dir.display()))?;
    let logs = dir.join(files::LOGS_DIR);
    if plan.backend == BackendChoice::Launch {
        let logs = logs.clone();
        let _ = tokio::task::spawn_blocking(move || crate::backend::stop_leftovers(&logs)).await;
    }

    // From here on, Ctrl-C, SIGTERM and SIGHUP stop the servers this run launched (dropping
    // them does) and end the run resumably, also while servers start.
    let mut stop = Stop::install()?;
    // First server of every GPU, in parallel.
    let first_radix =
        |g: &str| plan.cells_of(g).first().map(|c| c.cache_mode) != Some(CacheMode::None);
    // The first to fail ends the others' waits (a server that exits at once need not wait
    // for another's launch timeout); those dropped mid-launch are stopped as they go.
    let starts = plan.gpus.iter().map(|g| {
        let start = Server::start(&plan, g, first_radix(g), &logs, &keys);
        async move { start.await.with_context(|| format!("GPU {g}")) }
    });
    let servers = tokio::select! {
        r = futures::future::try_join_all(starts) => r?,
        sig = stop.recv() => bail!("interrupted ({sig}) while servers started: nothing was run"),
    };
    let mut infos = Vec::new();
    for s in &servers {
        infos.push(server_info(s, api_key.clone()).await);
    }
    if plan.backend == BackendChoice::Attach {
        let mut checked = check_attached_cache(&plan, &infos);
        if let (Ok(()), Some(m)) = (&checked, &old_manifest) {
            // Attached servers may have moved (`--url`), but must be the ones the run started on.
            for (now, _) in &infos {
                if let Some(was) = m.servers.iter().find(|s| s.gpu == now.gpu) {
                    let changes = server_changes(was, now);
                    if !changes.is_empty() {
                        checked = Err(anyhow::anyhow!(
                            "--resume {run_id}: GPU {}: the server at {} is not the one the run \
                             started on ({}): its cells would measure another configuration; \
                             attach a server like the first",
                            now.gpu,
                            now.url,
                            changes.join("; ")
                        ));
                        break;
                    }
                }
            }
        }
        if let Err(e) = checked {
            for s in servers {
                s.stop().await;
            }
            return Err(e);
        }
    }
    let simulated = infos.iter().any(|i| i.1.is_some());
    check_session_support(&plan, &infos)?;
    warn_context(&plan, &wl, &infos)?;
    if infos
        .iter()
        .any(|(_, sim)| sim.as_ref().is_some_and(|s| s.zero_cost))
    {
        tracing::warn!(
            "the simulated engine has no cost (--sim-time-scale inf): it answers at once, so \
             the times recorded are the harness's own wall time (client, HTTP, simulator), not \
             a GPU's: a run to test the harness, not to compare GPUs or cache modes"
        );
        if plan.think_time != ThinkTime::Off {
            tracing::warn!(
                "think time is not replayed: an engine that never waits has no time to pass \
                 between turns (think_time is recorded as 0)"
            );
        }
    }
    let scales: BTreeMap<String, f64> = infos
        .iter()
        .map(|(si, sim)| (si.gpu.clone(), sim.as_ref().map_or(1.0, |s| s.time_scale)))
        .collect();
    let manifest = match old_manifest {
        Some(mut m) => {
            if m.simulated != simulated {
                for s in servers {
                    s.stop().await;
                }
                let kind = |sim: bool| if sim { "a simulated" } else { "a real" };
                bail!(
                    "--resume {run_id}: the run started on {} engine, not {} one",
                    kind(m.simulated),
                    kind(simulated)
                );
            }
            // The servers that finish the run join those that started it.
            m.servers.extend(infos.iter().map(|i| i.0.clone()));
            record::write_json_atomic(&dir.join(files::MANIFEST), &m)?;
            m
        }
        None => {
            let inventory = if simulated {
                BTreeMap::new()
            } else {
                telemetry::gpu_inventory().await
            };
            let m = build_manifest(
                &plan, &run_id, &wl, &infos, simulated, &template, &inventory,
            );
            record::write_json_atomic(&dir.join(files::MANIFEST), &m)?;
            m
        }
    };
    let manifest = Arc::new(Mutex::new(manifest));
    let turn_counts: Vec<usize> = wl.trajectories.turn_counts();
    let recorder = Arc::new(Recorder::open(
        &dir,
        &run_id,
        simulated,
        existing.clone(),
        turn_counts.iter().map(|&n| n as u32).collect(),
    )?);
    let cells = plan.cells();
    let todo = record::todo(&cells, &turn_counts, &existing);
    let recorded_lens = if plan.output_len == OutputLen::Recorded {
        let lens = recorded_lengths(&servers[0].url, api_key.clone(), &wl).await?;
        println!("{}", recorded_lengths_note(&lens, plan.max_new_tokens));
        Some(Arc::new(lens))
    } else {
        None
    };

    // Progress, telemetry.
    let progress: Vec<Arc<GpuProgress>> = plan
        .gpus
        .iter()
        .map(|g| {
            let total = todo
                .iter()
                .filter(|(c, _)| &c.gpu == g)
                .map(|(_, t)| t.iter().map(|(i, _)| turn_counts[*i] as u64).sum::<u64>())
                .sum();
            let p = GpuProgress::new(g, total);
            *p.time_scale.lock().unwrap_or_else(|e| e.into_inner()) = scales[g];
            Arc::new(p)
        })
        .collect();
    let display = Arc::new(console::Display::new(&progress, args.quiet));
    let ticker = {
        let d = display.clone();
        tokio::spawn(async move {
            loop {
                d.tick();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let states: Vec<(String, Arc<Mutex<GpuState>>)> = servers
        .iter()
        .map(|s| {
            let st = GpuState {
                url: Some(s.url.clone()),
                cell: None,
                index: s.gpu.parse().ok(),
            };
            (s.gpu.clone(), Arc::new(Mutex::new(st)))
        })
        .collect();
    let sampler = tokio::spawn(telemetry::run(
        states.clone(),
        recorder.clone(),
        api_key.clone(),
        plan.metrics,
        scales.values().copied().fold(1.0, f64::max),
        Instant::now(),
    ));
    let nonce = format!("{:08x}", rand::random::<u32>());

    // Every GPU's cells, GPUs in parallel. A GPU that stops says so at once (the others go
    // on, and the run ends with its error): not only when the last GPU is done, hours later.
    let n_gpus = servers.len();
    let gpu_runs = servers
        .into_iter()
        .zip(progress.iter().cloned())
        .zip(states)
        .map(|((server, prog), (_, state))| {
            let gpu_cells: Vec<(CellId, record::Todo)> = cells
                .iter()
                .filter(|c| c.gpu == server.gpu)
                .map(|c| (c.clone(), todo.get(c).cloned().unwrap_or_default()))
                .collect();
            let gpu = server.gpu.clone();
            let run = run_gpu(GpuRun {
                plan: &plan,
                server,
                cells: gpu_cells,
                workload: wl.clone(),
                recorder: recorder.clone(),
                progress: prog,
                state,
                api_key: api_key.clone(),
                keys: keys.clone(),
                logs: &logs,
                manifest: manifest.clone(),
                dir: &dir,
                nonce: nonce.clone(),
                recorded_lens: recorded_lens.clone(),
                template: template.clone(),
            });
            async move {
                let r = run.await.map_err(|e| {
                    if e.to_string().starts_with("GPU ") {
                        e
                    } else {
                        e.context(format!("GPU {gpu}"))
                    }
                });
                if let (Err(e), true) = (&r, n_gpus > 1) {
                    tracing::error!(
                        "GPU {gpu} stopped: {e:#}. The other GPUs go on; the run ends with this error"
                    );
                }
                r
            }
        });
    let result = tokio::select! {
        r = futures::future::join_all(gpu_runs) => gpu_errors(r.into_iter().filter_map(Result::err).collect()),
        sig = stop.recv() => Err(anyhow::anyhow!(
            "interrupted ({sig}): {}; finish the run with --resume {run_id}",
            if plan.backend == BackendChoice::Attach {
                "the attached servers are left running"
            } else {
                "servers stopped"
            }
        )),
    };
    ticker.abort();
    sampler.abort();
    display.finish();
    let written = recorder.write_summary();
    if let Err(e) = result {
        // What stopped the run comes first (a full disk fails the summary too).
        if let Err(w) = written {
            tracing::warn!("{w:#}");
        }
        let text = format!("{e:#}");
        if !text.contains("--resume") {
            // (A full disk, say: every record written is kept, and the run goes on from them.)
            return Err(e.context(format!(
                "the run stopped; completed records are kept: finish it with --resume {run_id}"
            )));
        }
        return Err(e);
    }
    let summary = written?;
    let zero_cost = manifest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .zero_cost();
    println!("{}", console::tables(&summary, zero_cost));
    if wl.skipped_lines > 0 {
        println!(
            "dataset: {} malformed line(s) skipped (--skip-bad-lines; each named in the log above)",
            wl.skipped_lines
        );
    }
    println!("results: {}", dir.display());
    Ok(())
}

/// The errors that stopped GPUs, every one of them (not only the first).
fn gpu_errors(mut errs: Vec<anyhow::Error>) -> anyhow::Result<()> {
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        n => Err(anyhow::anyhow!(
            "{n} GPUs stopped:\n{}",
            errs.iter()
                .map(|e| format!("  {e:#}"))
                .collect::<Vec<_>>()
                .join("\n")
        )),
    }
}

/// The signals that end a sweep early: Ctrl-C, SIGTERM, SIGHUP. Once installed they no
/// longer kill the process outright, so what the run launched is stopped on the way out.
struct Stop {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> anyhow::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        let ctx = "installing the signal handlers";
        Ok(Stop {
            int: signal(SignalKind::interrupt()).context(ctx)?,
            term: signal(SignalKind::terminate()).context(ctx)?,
            hup: signal(SignalKind::hangup()).context(ctx)?,
        })
    }

    /// The name of the next signal received.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

struct GpuRun<'a> {
    plan: &'a Plan,
    server: Server,
    cells: Vec<(CellId, record::Todo)>,
    workload: Arc<Workload>,
    recorder: Arc<Recorder>,
    progress: Arc<GpuProgress>,
    state: Arc<Mutex<GpuState>>,
    api_key: Option<String>,
    keys: crate::backend::Keys,
    logs: &'a Path,
    manifest: Arc<Mutex<Manifest>>,
    dir: &'a Path,
    nonce: String,
    recorded_lens: Option<Arc<Vec<Vec<Option<u32>>>>>,
    template: ChatTemplate,
}

/// One GPU's cells, one after another. The server restarts when the radix cache must change.
async fn run_gpu(r: GpuRun<'_>) -> anyhow::Result<()> {
    let GpuRun {
        plan,
        mut server,
        cells,
        workload,
        recorder,
        progress,
        state,
        api_key,
        keys,
        logs,
        manifest,
        dir,
        nonce,
        recorded_lens,
        template,
    } = r;
    let gpu = server.gpu.clone();
    let mut warned_none = false;
    let mut warned_lag = false;
    let mut warned_harness = false;
    let mut warned_per_chunk = false;
    let (mut warned_no_counts, mut warned_over_length) = (false, false);
    let turn_counts: Vec<usize> = workload.trajectories.turn_counts();
    for (cell, mut todo) in cells {
        if todo.is_empty() {
            continue;
        }
        let radix = cell.cache_mode != CacheMode::None;
        // A server that stops answering mid-cell is brought back (launched again, or waited
        // for) and the cell runs again from its start; this many times per cell.
        let mut recoveries = 2;
        loop {
            if radix != server.radix && plan.backend != BackendChoice::Attach {
                server.stop().await;
                server = Server::start(plan, &gpu, radix, logs, &keys)
                    .await
                    .with_context(|| {
                        format!("GPU {gpu}: restarting the server for {}", cell.cache_mode)
                    })?;
                let (info, _) = server_info(&server, api_key.clone()).await;
                let mut m = manifest.lock().unwrap_or_else(|e| e.into_inner());
                m.servers.push(info);
                record::write_json_atomic(&dir.join(files::MANIFEST), &*m)?;
            }
            if !radix && plan.backend == BackendChoice::Attach && !warned_none {
                warned_none = true;
                // (A server that says how it runs was checked before the sweep.)
                let said = manifest
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .servers
                    .iter()
                    .any(|s| s.gpu == gpu && s.disable_radix_cache.is_some());
                if !said {
                    tracing::warn!(
                        "GPU {gpu}: the attached server does not say whether its radix cache is \
                         off, so cache mode none cannot be guaranteed (start it with \
                         --disable-radix-cache); {}",
                        if plan.api == Api::Openai {
                            "over the OpenAI API its cached tokens show only with \
                             --enable-cache-report"
                        } else {
                            "checking cached_tokens"
                        }
                    );
                }
            }
            {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.url = Some(server.url.clone());
                s.cell = Some(format!("{}/{}", cell.cache_mode, cell.concurrency));
            }
            let mut client = Client::new(&server.url, api_key.clone());
            client.admin_key = keys.admin.clone();
            client.first_timeout =
                Duration::try_from_secs_f64(plan.first_token_timeout_s).unwrap_or(Duration::MAX);
            client.idle_timeout =
                Duration::try_from_secs_f64(plan.stall_timeout_s).unwrap_or(Duration::MAX);
            client.total_timeout =
                Duration::try_from_secs_f64(plan.request_timeout_s).unwrap_or(Duration::MAX);
            client.model = served_model(&client, &plan.model_path, plan.api).await;
            if plan.flush_cache {
                if let Err(e) = client.flush_cache().await {
                    if e.downcast_ref::<crate::client::FlushRefused>().is_some() {
                        // Its cached tokens would be counted as the cell's own reuse.
                        bail!(
                            "GPU {gpu}: cell {}/{} cannot start on an empty cache: {e:#}",
                            cell.cache_mode,
                            cell.concurrency
                        );
                    }
                    tracing::warn!(
                        "GPU {gpu}: cell {}/{} starts without a cache flush (cached tokens from \
                     earlier cells may count): {e:#}",
                        cell.cache_mode,
                        cell.concurrency
                    );
                }
            }
            let traits = server_traits(&client).await;
            let scale = traits.time_scale;
            client.cache_report = traits.cache_report;
            client.incremental = traits.incremental;
            let ctx = Arc::new(CellCtx {
                cell: cell.clone(),
                client,
                api: plan.api,
                template: template.clone(),
                sampling: Sampling {
                    max_new_tokens: plan.max_new_tokens,
                    temperature: plan.temperature,
                    stop: plan.stop.clone(),
                    ignore_eos: false,
                },
                history: plan.history,
                think: plan.think_time,
                time_scale: scale,
                think_scale: traits.think_scale,
                recorded_lens: recorded_lens.clone(),
                workload: workload.clone(),
                recorder: recorder.clone(),
                progress: progress.clone(),
                nonce: nonce.clone(),
                ttft_pairs: Mutex::new(Vec::new()),
                itl_per_chunk: Default::default(),
                no_counts: Default::default(),
                over_length: Default::default(),
            });
            let cell_name = format!(
                "GPU {gpu}, cache mode {}, concurrency {}",
                cell.cache_mode, cell.concurrency
            );
            match run_cell(ctx.clone(), todo.clone()).await {
                Ok(()) => {
                    if scale > 1.0 && !warned_harness {
                        warned_harness = warn_harness(&gpu, scale, &ctx);
                    }
                    let per_chunk = ctx.itl_per_chunk.load(std::sync::atomic::Ordering::Relaxed);
                    if per_chunk > 0 && !warned_per_chunk {
                        warned_per_chunk = true;
                        tracing::warn!(
                            "{cell_name}: in {per_chunk} turn(s) the server sent several tokens in \
                             one chunk without saying how many (it ignores \
                             stream_options.continuous_usage_stats): their inter-token latency \
                             is per chunk, not per token (TTFT, E2E and token counts are not \
                             affected; --api native counts tokens in every chunk)"
                        );
                    }
                    let no_counts = ctx.no_counts.load(std::sync::atomic::Ordering::Relaxed);
                    if no_counts > 0 && !warned_no_counts {
                        warned_no_counts = true;
                        tracing::warn!(
                            "{cell_name}: {no_counts} successful turn(s) came without a \
                             generated-token count (no `usage`, or no `meta_info`): token \
                             throughput, Total Tokens and Tok/Turn count only turns with one, \
                             and those turns' inter-token latency is per chunk"
                        );
                    }
                    let over = ctx.over_length.load(std::sync::atomic::Ordering::Relaxed);
                    if over > 0 && !warned_over_length {
                        warned_over_length = true;
                        tracing::warn!(
                            "{cell_name}: {over} turn(s) generated more tokens than asked for \
                             (the server ignored the length limit): their times and the \
                             cell's throughput are not those of the planned work"
                        );
                    }
                    break;
                }
                Err(e) => {
                    let Some(down) = e.downcast_ref::<ServerDown>() else {
                        return Err(e.context(cell_name));
                    };
                    let resume = format!(
                        "completed records are kept; finish the run with --resume {}",
                        recorder.run_id()
                    );
                    if recoveries == 0 {
                        bail!("{cell_name}: {down}, again; {resume}");
                    }
                    recoveries -= 1;
                    tracing::warn!("{cell_name}: {down}");
                    if plan.backend == BackendChoice::Attach {
                        let wait = Duration::try_from_secs_f64(plan.launch_timeout_s)
                            .unwrap_or(Duration::MAX);
                        tracing::warn!(
                            "GPU {gpu}: waiting up to {:.0} s for {} to answer again \
                         (Ctrl-C stops the run, resumably)",
                            wait.as_secs_f64(),
                            server.url
                        );
                        let client = Client::new(&server.url, api_key.clone());
                        let t0 = std::time::Instant::now();
                        while !client.answers().await {
                            if t0.elapsed() >= wait {
                                bail!(
                                    "{cell_name}: {down}, and did not answer again within \
                                     {:.0} s (launch_timeout_s); {resume}",
                                    wait.as_secs_f64()
                                );
                            }
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        // What answers may be another server (restarted with other flags, or
                        // another model): measured as this GPU's, it would be another setup.
                        let (info, _) = server_info(&server, api_key.clone()).await;
                        let was = manifest
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .servers
                            .iter()
                            .rev()
                            .find(|s| s.gpu == gpu)
                            .cloned();
                        if let Some(was) = was {
                            let changes = server_changes(&was, &info);
                            if !changes.is_empty() {
                                bail!(
                                    "{cell_name}: the server that answers again at {} is not the \
                                     one this GPU ran on ({}); {resume} once it is",
                                    server.url,
                                    changes.join("; ")
                                );
                            }
                        }
                        let mut m = manifest.lock().unwrap_or_else(|e| e.into_inner());
                        m.servers.push(info);
                        record::write_json_atomic(&dir.join(files::MANIFEST), &*m)?;
                    } else {
                        server.stop().await;
                        server = Server::start(plan, &gpu, radix, logs, &keys)
                            .await
                            .with_context(|| format!("{cell_name}: launching its server again"))
                            .with_context(|| resume.clone())?;
                        let (info, _) = server_info(&server, api_key.clone()).await;
                        let mut m = manifest.lock().unwrap_or_else(|e| e.into_inner());
                        m.servers.push(info);
                        record::write_json_atomic(&dir.join(files::MANIFEST), &*m)?;
                    }
                    tracing::warn!(
                        "{cell_name}: the server answers again; the cell runs again from its start"
                    );
                    todo = record::todo(
                        std::slice::from_ref(&cell),
                        &turn_counts,
                        &recorder.records(),
                    )
                    .remove(&cell)
                    .unwrap_or_default();
                }
            }
        }
        let summary = recorder.write_summary()?;
        if let Ok(info) = get_server_info(&Client::new(&server.url, api_key.clone())).await {
            let lag = info
                .pointer("/sim/engine_lag_seconds")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            if lag > 0.0 && !warned_lag {
                warned_lag = true;
                tracing::warn!(
                    "GPU {gpu}: the simulated engine fell {lag:.3} s (engine time) behind wall time \
                     × scale: the CPU cannot keep up, so client-side times include that delay; \
                     lower sim_time_scale or use a release build"
                );
            }
        }
        if !radix {
            if let Some(c) = summary.cells.iter().find(|c| {
                c.gpu == cell.gpu
                    && c.cache_mode == cell.cache_mode
                    && c.concurrency == cell.concurrency
            }) {
                if c.cached_tokens_total.unwrap_or(0) > 0 {
                    tracing::warn!(
                        "GPU {gpu}: cache mode none, concurrency {}: the server reported {} cached \
                         tokens: the radix cache was not disabled",
                        cell.concurrency,
                        c.cached_tokens_total.unwrap_or(0)
                    );
                }
            }
        }
    }
    state.lock().unwrap_or_else(|e| e.into_inner()).cell = None;
    server.stop().await;
    Ok(())
}

/// A simulated engine's times are wall time × the time scale, so the harness's own latency
/// (sending, HTTP, receiving: wall time) is scaled up too. Warn (once; true when warned) when
/// it makes a noticeable share of the cell's TTFT: the client's TTFT against the engine's own
/// (`prefill_finished_time − request_received_ts`, medians).
fn warn_harness(gpu: &str, scale: f64, ctx: &CellCtx) -> bool {
    let pairs = ctx.ttft_pairs.lock().unwrap_or_else(|e| e.into_inner());
    let client: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let added: Vec<f64> = pairs.iter().map(|p| p.0 - p.1).collect();
    let (Some(c), Some(a)) = (
        turnbench_schema::stats::percentile(&client, 50.0),
        turnbench_schema::stats::percentile(&added, 50.0),
    ) else {
        return false;
    };
    if c > 0.0 && a / c > 0.05 {
        tracing::warn!(
            "GPU {gpu}: simulated times are wall time × {scale}, the harness's own latency \
             included: between client and simulator alone ~{:.2} ms a request, {:.0} % of the \
             median TTFT ({:.3} s engine time; the simulator's own request handling adds \
             more, and the client's step between turns lengthens time per trajectory too); a \
             lower sim_time_scale gives more exact simulated times (slower)",
            a / scale * 1e3,
            a / c * 100.0,
            c
        );
        return true;
    }
    false
}

/// An attached server answers, and accepts the API key: SGLang's model info (or its newer
/// name), else an OpenAI-compatible server's model list. One that answers none of them (404)
/// is let through: its generations will say what is wrong.
/// An attached server's radix cache is what it is for every cache mode run on it: a server
/// that says (`/get_server_info`) it runs with `--disable-radix-cache` gives prefix and
/// session cells no reuse, one that runs with it gives `none` cells reuse. Either would be a
/// cell labelled with a mode it did not run: refused, naming the GPU and what to change.
fn check_attached_cache(
    plan: &Plan,
    infos: &[(ServerInfo, Option<SimInfo>)],
) -> anyhow::Result<()> {
    let modes: Vec<CacheMode> = plan.cache_modes.clone();
    let reuse: Vec<&str> = modes
        .iter()
        .filter(|m| **m != CacheMode::None)
        .map(|m| m.as_str())
        .collect();
    for (info, _) in infos {
        match info.disable_radix_cache {
            Some(true) if !reuse.is_empty() => bail!(
                "GPU {}: the server at {} runs with --disable-radix-cache, so cache mode(s) {} \
                 would measure no reuse: attach a server with its radix cache on for them, or \
                 run cache_modes = [\"none\"] on this one",
                info.gpu,
                info.url,
                reuse.join(", ")
            ),
            Some(false) if modes.contains(&CacheMode::None) => bail!(
                "GPU {}: the server at {} runs with its radix cache on, so cache mode none would \
                 reuse cached prefixes: attach a server started with --disable-radix-cache for \
                 it, or leave none out of cache_modes",
                info.gpu,
                info.url
            ),
            _ => {}
        }
    }
    Ok(())
}

async fn check_attached(c: &Client) -> anyhow::Result<()> {
    let mut answers = Vec::new();
    for path in ["/get_model_info", "/model_info", "/v1/models"] {
        match c.status_of(path, Duration::from_secs(10)).await {
            Ok(s) if s.is_success() => return Ok(()),
            Ok(s)
                if s == reqwest::StatusCode::UNAUTHORIZED
                    || s == reqwest::StatusCode::FORBIDDEN =>
            {
                bail!("refuses the API key (GET {path}: HTTP {s}): give the server's key with --api-key")
            }
            Ok(s) => answers.push(format!("GET {path}: HTTP {s}")),
            Err(e) => bail!("is unreachable: {}", crate::client::error_chain(&e)),
        }
    }
    // Something answers, but not as a server to measure (a proxy's error page, another
    // service on the port): every turn would fail.
    bail!(
        "answers, but as neither SGLang nor an OpenAI-compatible server ({}): is it the \
         right URL?",
        answers.join(", ")
    )
}

/// The `model` OpenAI requests name: the plan's model path when the server serves it (or
/// does not say what it serves; SGLang takes any name), else the one model the server lists
/// in `/v1/models` (vLLM and others refuse a name they do not serve, failing every turn).
async fn served_model(client: &Client, model_path: &str, api: Api) -> String {
    if api != Api::Openai {
        return model_path.to_string();
    }
    let Ok(v) = client.get_json("/v1/models", Duration::from_secs(10)).await else {
        return model_path.to_string();
    };
    let ids: Vec<&str> = v
        .get("data")
        .and_then(Value::as_array)
        .map(|d| d.iter().filter_map(|m| m.get("id")?.as_str()).collect())
        .unwrap_or_default();
    match ids.as_slice() {
        [one] if *one != model_path => {
            tracing::debug!(
                "the server serves {one:?}, not {model_path:?}: OpenAI requests name {one:?}"
            );
            one.to_string()
        }
        _ => model_path.to_string(),
    }
}

/// What the client needs to know of the server it measures.
struct ServerTraits {
    /// Engine seconds per wall second (1 for real servers).
    time_scale: f64,
    /// What think time is divided by to sleep: the time scale, or infinity (no sleeping) for
    /// a simulated engine that does not wait at all (`inf`, whose times are recorded in wall
    /// time).
    think_scale: f64,
    /// OpenAI usage reports cached tokens (`enable_cache_report`).
    cache_report: bool,
    /// Native output streams as deltas (`incremental_streaming_output`, SGLang 0.5.10).
    incremental: bool,
}

/// SGLang's `/get_server_info` (`/server_info` in newer versions); the first one's error when
/// neither answers.
async fn get_server_info(client: &Client) -> anyhow::Result<Value> {
    let t = Duration::from_secs(10);
    match client.get_json("/get_server_info", t).await {
        Ok(v) => Ok(v),
        Err(e) => client.get_json("/server_info", t).await.map_err(|_| e),
    }
}

async fn server_traits(client: &Client) -> ServerTraits {
    let info = get_server_info(client).await;
    let flag = |v: &Value, k: &str| v.get(k).and_then(Value::as_bool) == Some(true);
    match info {
        Ok(v) => ServerTraits {
            time_scale: sim_info(&v).map_or(1.0, |s| s.time_scale),
            think_scale: match v.pointer("/sim/time_scale") {
                Some(Value::String(s)) if s == "inf" => f64::INFINITY,
                _ => sim_info(&v).map_or(1.0, |s| s.time_scale),
            },
            cache_report: flag(&v, "enable_cache_report"),
            // (SGLang's `--stream-output`, 0.4.6–0.5.9, streams `output_ids` as deltas but
            // keeps `text` cumulative; in 0.5.10 it is an alias of this flag.)
            incremental: flag(&v, "incremental_streaming_output"),
        },
        Err(_) => ServerTraits {
            time_scale: 1.0,
            think_scale: 1.0,
            cache_report: false,
            incremental: false,
        },
    }
}

fn sim_info(v: &Value) -> Option<SimInfo> {
    let s = v.get("sim")?;
    let scale = s.get("time_scale").and_then(Value::as_f64).unwrap_or(1.0);
    // A name, or a profile object with a `name`.
    let name = |v: Option<&Value>| -> String {
        v.and_then(|v| v.as_str().or_else(|| v.get("name").and_then(Value::as_str)))
            .unwrap_or("")
            .to_string()
    };
    Some(SimInfo {
        // `inf` (no waiting at all) has no engine time to convert to: wall time is recorded.
        time_scale: if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        },
        gpu_profile: name(s.get("gpu")),
        model: name(s.get("model")),
        zero_cost: matches!(s.get("time_scale"), Some(Value::String(x)) if x == "inf")
            || scale.is_infinite(),
    })
}

/// How `now` differs from `was` in what decides a server's numbers (model, KV pool, batch
/// limits, radix cache, and a simulator's GPU profile and time scale), each named with both
/// values; what either server does not say is not compared.
fn server_changes(was: &ServerInfo, now: &ServerInfo) -> Vec<String> {
    fn differ<T: PartialEq + std::fmt::Display>(
        out: &mut Vec<String>,
        name: &str,
        was: Option<T>,
        now: Option<T>,
    ) {
        if let (Some(a), Some(b)) = (was, now) {
            if a != b {
                out.push(format!("{name} {b}, was {a}"));
            }
        }
    }
    let mut out = Vec::new();
    differ(
        &mut out,
        "model",
        was.model_path.as_deref(),
        now.model_path.as_deref(),
    );
    differ(
        &mut out,
        "disable_radix_cache",
        was.disable_radix_cache,
        now.disable_radix_cache,
    );
    differ(
        &mut out,
        "max_total_num_tokens",
        was.max_total_num_tokens,
        now.max_total_num_tokens,
    );
    differ(
        &mut out,
        "max_running_requests",
        was.max_running_requests,
        now.max_running_requests,
    );
    differ(
        &mut out,
        "chunked_prefill_size",
        was.chunked_prefill_size,
        now.chunked_prefill_size,
    );
    let sim = |s: &ServerInfo| s.raw.get("server_info").and_then(sim_info);
    let (a, b) = (sim(was), sim(now));
    differ(
        &mut out,
        "simulated GPU",
        a.as_ref().map(|s| s.gpu_profile.as_str()),
        b.as_ref().map(|s| s.gpu_profile.as_str()),
    );
    differ(
        &mut out,
        "time scale",
        a.as_ref().map(|s| s.time_scale),
        b.as_ref().map(|s| s.time_scale),
    );
    // (A server whose info could not be read says nothing either way.)
    let known = |s: &ServerInfo| s.raw.get("server_info").is_some_and(Value::is_object);
    if a.is_some() != b.is_some() && known(was) && known(now) {
        out.push(format!(
            "{} engine, was {}",
            if b.is_some() { "a simulated" } else { "a real" },
            if a.is_some() {
                "a simulated one"
            } else {
                "a real one"
            }
        ));
    }
    out
}

/// Read `/get_server_info` and `/get_model_info` (secrets removed).
async fn server_info(s: &Server, api_key: Option<String>) -> (ServerInfo, Option<SimInfo>) {
    let c = Client::new(&s.url, api_key);
    let t = Duration::from_secs(10);
    let mut info = match get_server_info(&c).await {
        Ok(v) => v,
        Err(e) => {
            // (A 401 here means the server wants another API key: every turn would fail.)
            tracing::warn!("GPU {}: reading the server's info: {e:#}", s.gpu);
            Value::Null
        }
    };
    let mut model = match c.get_json("/get_model_info", t).await {
        Ok(v) => v,
        Err(_) => c.get_json("/model_info", t).await.unwrap_or(Value::Null),
    };
    scrub(&mut info);
    scrub(&mut model);
    let sim = sim_info(&info);
    let f = |k: &str| info.get(k).and_then(Value::as_f64);
    let u = |k: &str| info.get(k).and_then(Value::as_u64);
    let si = ServerInfo {
        gpu: s.gpu.clone(),
        url: s.url.clone(),
        version: info
            .get("version")
            .and_then(Value::as_str)
            .map(String::from),
        model_path: info
            .get("model_path")
            .or_else(|| model.get("model_path"))
            .and_then(Value::as_str)
            .map(String::from),
        mem_fraction_static: f("mem_fraction_static"),
        max_total_num_tokens: u("max_total_num_tokens"),
        max_running_requests: u("max_running_requests"),
        context_length: u("context_length"),
        chunked_prefill_size: info.get("chunked_prefill_size").and_then(Value::as_i64),
        disable_radix_cache: info.get("disable_radix_cache").and_then(Value::as_bool),
        launch_command: s.launch_command.clone(),
        raw: serde_json::json!({"server_info": info, "model_info": model}),
    };
    (si, sim)
}

fn build_manifest(
    plan: &Plan,
    run_id: &str,
    wl: &Workload,
    infos: &[(ServerInfo, Option<SimInfo>)],
    simulated: bool,
    template: &ChatTemplate,
    inventory: &BTreeMap<u32, (String, u64)>,
) -> Manifest {
    let sim = infos.iter().find_map(|i| i.1.clone());
    let gpus = infos
        .iter()
        .map(|(si, sim)| {
            let prof = sim
                .as_ref()
                .and_then(|s| crate::sim::cost::GpuProfile::builtin(&s.gpu_profile));
            let index = match plan.backend {
                BackendChoice::Launch => si.gpu.parse().ok(),
                _ => None,
            };
            // A real device: as nvidia-smi names it.
            let device = index.and_then(|i| inventory.get(&i));
            GpuInfo {
                label: si.gpu.clone(),
                index,
                name: match sim {
                    Some(s) => Some(format!("simulated {}", s.gpu_profile)),
                    None => device.map(|d| d.0.clone()),
                },
                memory_bytes: prof.map(|p| p.mem_bytes).or(device.map(|d| d.1)),
            }
        })
        .collect();
    Manifest {
        schema_version: SCHEMA_VERSION,
        run_id: run_id.to_string(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        tool: ToolInfo {
            name: "turnbench runner".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            git_commit: git_commit(),
        },
        simulated,
        plan: plan.to_json(),
        backend: BackendInfo {
            kind: match (simulated, plan.api) {
                (true, _) => BackendKind::Sim,
                (false, Api::Native) => BackendKind::Sglang,
                (false, Api::Openai) => BackendKind::Openai,
            },
            access: serde_json::to_value(plan.backend)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            api: plan.api.as_str().into(),
            sim,
            chat_template: (plan.api == Api::Native).then(|| template.describe()),
        },
        servers: infos.iter().map(|i| i.0.clone()).collect(),
        gpus,
        dataset: DatasetInfo {
            kind: wl.format.as_str().into(),
            source: wl.source.clone(),
            content_hash: Some(wl.content_hash.clone()),
            trajectories: wl.trajectories.len() as u64,
            turns: wl.total_turns(),
            history: plan.history,
            skipped_lines: wl.skipped_lines,
            turns_per_trajectory: wl
                .trajectories
                .turn_counts()
                .into_iter()
                .map(|n| n as u32)
                .collect(),
        },
        host: HostInfo {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .or_else(|| std::env::var("HOSTNAME").ok()),
            os: std::env::consts::OS.into(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        },
        limits: limits(plan, wl, infos, inventory),
        cells: plan.cells(),
    }
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Token counts of every recorded answer, as the server's tokenizer counts them: each text is
/// sent once to `/generate` with `max_new_tokens: 0` (prefill only, SGLang's pre-cache call)
/// and `meta_info.prompt_tokens` is read back, [`COUNTING_REQUESTS`] at a time (one after
/// another, 2,500 answers took ~2,500 round trips of a busy server). Caches are flushed before
/// every cell anyway.
async fn recorded_lengths(
    url: &str,
    api_key: Option<String>,
    wl: &Workload,
) -> anyhow::Result<Vec<Vec<Option<u32>>>> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let http = reqwest::Client::new();
    let count = |text: String| {
        let mut req = http
            .post(format!("{url}/generate"))
            .json(&serde_json::json!({
                "text": text,
                "sampling_params": {"max_new_tokens": 0},
            }));
        if let Some(k) = &api_key {
            req = req.bearer_auth(k);
        }
        async move {
            let v: Value = req
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .context("plan key `output_len`: counting the recorded answers' tokens")?
                .json()
                .await?;
            let n = v
                .pointer("/meta_info/prompt_tokens")
                .and_then(Value::as_u64)
                .context("output_len: /generate answered without meta_info.prompt_tokens")?;
            anyhow::Ok(n as u32)
        }
    };
    // (trajectory, turn, answer) of every turn, taken lazily: a synthetic workload's text is
    // made as it is asked for.
    let turns = wl.trajectories.iter().enumerate().flat_map(|(t, traj)| {
        let answers: Vec<Option<String>> = traj
            .turns
            .iter()
            // An empty recorded answer (a tool call without text, say) has no length to
            // fix: that turn's length is the engine's.
            .map(|turn| turn.recorded.clone().filter(|r| !r.is_empty()))
            .collect();
        answers.into_iter().map(move |a| (t, a))
    });
    let counted: Vec<(usize, Option<u32>)> = stream::iter(turns)
        .map(|(t, answer)| {
            let fut = answer.map(count);
            async move {
                match fut {
                    Some(f) => f.await.map(|n| (t, Some(n))),
                    None => Ok((t, None)),
                }
            }
        })
        .buffered(COUNTING_REQUESTS)
        .try_collect()
        .await?;
    let mut out: Vec<Vec<Option<u32>>> = vec![Vec::new(); wl.trajectories.len()];
    for (t, n) in counted {
        out[t].push(n);
    }
    Ok(out)
}

/// Requests in flight while counting recorded answers' tokens.
const COUNTING_REQUESTS: usize = 16;

/// What `output_len = recorded` makes of the turns' lengths, for the console: the recorded
/// lengths replace `max_new_tokens` (and the stop strings), which only the turns without a
/// recorded answer keep, fixed.
fn recorded_lengths_note(lens: &[Vec<Option<u32>>], max_new_tokens: u32) -> String {
    let known: Vec<u32> = lens.iter().flatten().filter_map(|&l| l).collect();
    let free = lens.iter().flatten().filter(|l| l.is_none()).count();
    let mut note = match (known.iter().min(), known.iter().max()) {
        (Some(lo), Some(hi)) => format!(
            "output_len recorded: {} turns generate their recorded answer's length \
             ({lo}–{hi} tokens, {} in all; max_new_tokens and stop strings do not apply)",
            known.len(),
            known.iter().map(|&l| u64::from(l)).sum::<u64>()
        ),
        _ => "output_len recorded: no turn has a recorded answer".to_string(),
    };
    if free > 0 {
        note.push_str(&format!(
            "; {free} turns without a recorded answer (or with an empty one) generate \
             exactly max_new_tokens ({max_new_tokens})"
        ));
    }
    note
}

/// Warn when trajectories will outgrow a server's input limit (`max_req_input_len`, else its
/// context length) before their last turn: those turns fail ("longer than the model's
/// context length"), and the cells' figures then cover shorter conversations. Prompt lengths
/// are estimated at ~4 characters per token (answers at `max_new_tokens` where the history is
/// generated).
fn warn_context(
    plan: &Plan,
    wl: &Workload,
    infos: &[(ServerInfo, Option<SimInfo>)],
) -> anyhow::Result<()> {
    // An answer as long as the whole context fails every turn, whatever the prompt.
    if let Some(context) = infos.iter().filter_map(|(i, _)| context_of(i)).min() {
        if u64::from(plan.max_new_tokens) >= context {
            bail!(
                "plan key `max_new_tokens`: {} tokens leave no room for a prompt in the \
                 server's context of {context} tokens (every turn would fail)",
                plan.max_new_tokens
            );
        }
    }
    let limit = infos
        .iter()
        .filter_map(|(i, _)| input_limit(i).or(i.context_length))
        .min();
    let Some(limit) = limit else { return Ok(()) };
    let mut over = 0usize;
    let mut first_turn = usize::MAX;
    for t in wl.trajectories.iter() {
        let outgrown = prompt_chars(plan, &t)
            .position(|chars| (chars / 4) as u64 + u64::from(plan.max_new_tokens) >= limit);
        if let Some(k) = outgrown {
            over += 1;
            first_turn = first_turn.min(k);
        }
    }
    if over > 0 {
        tracing::warn!(
            "about {over} of {} trajectories outgrow the server's input limit ({limit} tokens) \
             before their last turn (from turn ~{first_turn}, estimated at ~4 characters per \
             token): those turns will fail; lower `turns` or `max_new_tokens`, or serve a \
             longer context",
            wl.trajectories.len()
        );
    }
    Ok(())
}

/// An SGLang version's leading numbers (`0.4.8.post1` → [0, 4, 8]).
fn version_of(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+'])
        .map_while(|p| p.parse::<u64>().ok())
        .collect()
}

/// Session turns after a stop-string finish, and recorded answers, are sent with
/// `session_params.drop_previous_output`, which SGLang has from 0.4.9: older servers fail
/// such a request mid-stream (their `SessionParams` takes no such field), so each session
/// trajectory would end at its second or third turn. Refused before the sweep.
fn check_session_support(
    plan: &Plan,
    infos: &[(ServerInfo, Option<SimInfo>)],
) -> anyhow::Result<()> {
    if !plan.cache_modes.contains(&CacheMode::Session) {
        return Ok(());
    }
    for (i, _) in infos {
        if let Some(v) = &i.version {
            let n = version_of(v);
            if !n.is_empty() && n.as_slice() < [0, 4, 9].as_slice() {
                bail!(
                    "GPU {}: the server at {} is SGLang {v}; cache mode session needs 0.4.9 or \
                     later (session_params.drop_previous_output): upgrade it, or leave session \
                     out of cache_modes",
                    i.gpu,
                    i.url
                );
            }
        }
    }
    Ok(())
}

/// The longest prompt a server takes (SGLang's `max_req_input_len`, at the top of its
/// server info).
fn input_limit(i: &ServerInfo) -> Option<u64> {
    i.raw
        .pointer("/server_info/max_req_input_len")
        .and_then(Value::as_u64)
}

/// A server's context length: the one it was started with (`--context-length`, null in its
/// server info by default), else the one its input limit implies (SGLang takes prompts of up
/// to the context length less one token).
fn context_of(i: &ServerInfo) -> Option<u64> {
    i.context_length.or_else(|| input_limit(i).map(|l| l + 1))
}

/// Estimated prompt length of each turn of `t`, in characters: the messages so far (plus a
/// few characters of template each), answers at their recorded length when the history is
/// recorded, else at `max_new_tokens` (~4 characters a token).
fn prompt_chars<'a>(
    plan: &'a Plan,
    t: &'a workload::Trajectory,
) -> impl Iterator<Item = usize> + 'a {
    let msgs = |m: &[workload::Message]| m.iter().map(|m| m.content.len() + 20).sum::<usize>();
    t.turns.iter().scan(msgs(&t.prelude), move |chars, turn| {
        let now = *chars;
        *chars += match (&turn.recorded, plan.history) {
            (Some(r), turnbench_schema::HistorySource::Recorded) => r.len(),
            _ => plan.max_new_tokens as usize * 4,
        };
        *chars += msgs(&turn.after);
        Some(now)
    })
}

/// Roofline bounds per GPU, from the simulator's cost model, for GPUs whose profile is known
/// (simulated GPUs, launched GPUs nvidia-smi names, or labels naming a profile) and a
/// built-in model shape.
fn limits(
    plan: &Plan,
    wl: &Workload,
    infos: &[(ServerInfo, Option<SimInfo>)],
    inventory: &BTreeMap<u32, (String, u64)>,
) -> Vec<turnbench_schema::PhysicalLimits> {
    use crate::sim::cost::{self, GpuProfile, ModelProfile};
    // Mean prompt length over every turn of the workload, in characters, then tokens at the
    // built-in tokenizer's ~4 characters per token.
    let (mut chars, mut n) = (0f64, 0f64);
    for t in wl.trajectories.iter() {
        for len in prompt_chars(plan, &t) {
            chars += len as f64;
            n += 1.0;
        }
    }
    let context = ((chars / n.max(1.0)) / 4.0).round().max(1.0) as u64;
    let model = infos
        .iter()
        .find_map(|i| i.1.as_ref().and_then(|s| ModelProfile::builtin(&s.model)))
        .or_else(|| ModelProfile::builtin(&plan.model_path));
    let Some(model) = model else {
        return vec![];
    };
    infos
        .iter()
        .filter_map(|(si, sim)| {
            let device = (plan.backend == BackendChoice::Launch)
                .then(|| si.gpu.parse::<u32>().ok())
                .flatten()
                .and_then(|i| inventory.get(&i))
                .and_then(|(name, mem)| telemetry::profile_of(name, *mem));
            let profile = match (sim, device) {
                (Some(s), _) => s.gpu_profile.as_str(),
                (None, Some(d)) => d,
                (None, None) => si.gpu.as_str(),
            };
            let gpu = GpuProfile::builtin(profile)?;
            let sizes = plan.batch_sizes.get(&si.gpu)?;
            Some(turnbench_schema::PhysicalLimits {
                gpu: si.gpu.clone(),
                decode_tok_per_s: sizes
                    .iter()
                    .map(|&c| {
                        (
                            c,
                            cost::decode_tok_per_s_bound(&model, &gpu, c as u64, context),
                        )
                    })
                    .collect(),
                prefill_tok_per_s: cost::prefill_tok_per_s_bound(&model, &gpu),
                note: format!(
                    "datasheet roofline of {} for {}: decode streams weights + KV of `concurrency` \
                     sequences of {context} tokens (the workload's mean prompt at ~4 characters \
                     per token) per step; prefill at dense bf16 peak, attention excluded",
                    gpu.name, model.name
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_refused_on_sglang_before_0_4_9() {
        assert_eq!(version_of("0.4.8.post1"), [0, 4, 8]);
        assert_eq!(version_of("0.5.10rc1"), [0, 5]);
        let with = |version: &str, modes: &str| {
            let plan = Plan::resolve(crate::plan::PlanKeys {
                cache_modes: Some(modes.split(',').map(|m| m.parse().unwrap()).collect()),
                ..Default::default()
            })
            .unwrap();
            let mut si: ServerInfo = serde_json::from_value(serde_json::json!({
                "gpu": "0", "url": "http://127.0.0.1:1", "raw": {}
            }))
            .unwrap();
            si.version = Some(version.into());
            check_session_support(&plan, &[(si, None)]).map_err(|e| e.to_string())
        };
        let e = with("0.4.8.post1", "prefix,session").unwrap_err();
        assert!(e.contains("0.4.9") && e.contains("session"), "{e}");
        assert!(with("0.4.8", "prefix,none").is_ok());
        for ok in ["0.4.9", "0.4.10.post2", "0.5.10.post1", "1.0"] {
            assert!(with(ok, "session").is_ok(), "{ok}");
        }
    }

    #[test]
    fn sglangs_input_limit_is_read_from_the_top_of_its_server_info() {
        // SGLang reports its resolved limit there; `context_length` is the command line's,
        // null unless given.
        let info = |context: Option<u64>, limit: Option<u64>| {
            let mut si: ServerInfo = serde_json::from_value(serde_json::json!({
                "gpu": "0", "url": "http://127.0.0.1:1", "raw": {}
            }))
            .unwrap();
            si.context_length = context;
            si.raw = serde_json::json!({
                "server_info": {"max_req_input_len": limit, "context_length": null},
                "model_info": {}
            });
            si
        };
        assert_eq!(input_limit(&info(None, Some(32767))), Some(32767));
        assert_eq!(context_of(&info(None, Some(32767))), Some(32768));
        assert_eq!(context_of(&info(Some(4096), Some(32767))), Some(4096));
        assert_eq!(context_of(&info(None, None)), None);
    }

    #[test]
    fn a_runner_flag_after_launch_command_is_refused() {
        let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = cmd(&[
            "python",
            "-m",
            "sglang.launch_server",
            "--model-path",
            "{model_path}",
            "--port",
            "{port}",
            "--host={host}",
            "--enable-metrics",
            "--api-key",
            "{api_key}",
            "--admin-api-key={admin_api_key}",
        ]);
        assert!(check_launch_command(&ok).is_ok());
        for flag in ["--run-id", "--out=x", "--quiet", "--trajectories"] {
            let mut bad = ok.clone();
            bad.push(flag.into());
            let err = check_launch_command(&bad).unwrap_err().to_string();
            assert!(err.contains(flag) && err.contains("last"), "{err}");
        }
    }

    #[test]
    fn every_gpu_that_stopped_is_named_in_the_runs_error() {
        assert!(gpu_errors(vec![]).is_ok());
        let one = gpu_errors(vec![anyhow::anyhow!("GPU 1: disk full")]).unwrap_err();
        assert_eq!(format!("{one:#}"), "GPU 1: disk full");
        let two = gpu_errors(vec![
            anyhow::anyhow!("GPU 0: launch failed"),
            anyhow::anyhow!("GPU 2: disk full").context("cell x"),
        ])
        .unwrap_err();
        let text = format!("{two:#}");
        assert!(text.starts_with("2 GPUs stopped"), "{text}");
        assert!(text.contains("GPU 0: launch failed"), "{text}");
        assert!(text.contains("cell x: GPU 2: disk full"), "{text}");
    }

    /// Recorded answers are counted several at a time, and each count lands on its own turn
    /// whatever order the server answers in.
    #[tokio::test]
    async fn recorded_lengths_are_counted_concurrently_each_on_its_turn() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use workload::{Format, Trajectories, Trajectory, Turn};
        let in_flight = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let seen = in_flight.clone();
        // Counts a text's bytes; the shorter the text, the later the answer.
        let app = axum::Router::new().route(
            "/generate",
            axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    let now = seen.0.fetch_add(1, SeqCst) + 1;
                    seen.1.fetch_max(now, SeqCst);
                    let text = v["text"].as_str().unwrap_or_default().to_string();
                    assert_eq!(v["sampling_params"]["max_new_tokens"], 0);
                    let wait = 40u64.saturating_sub(text.len() as u64 * 2);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    seen.0.fetch_sub(1, SeqCst);
                    axum::Json(serde_json::json!({"meta_info": {"prompt_tokens": text.len()}}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let answers: Vec<Vec<Option<&str>>> = vec![
            vec![Some("a"), Some("twelve chars"), None, Some("four")],
            vec![Some(""), Some("seventeen chars!!")],
            vec![],
            vec![Some("x"); 20],
        ];
        let trajectories = answers
            .iter()
            .enumerate()
            .map(|(i, turns)| Trajectory {
                id: format!("t{i}"),
                prelude: vec![],
                turns: turns
                    .iter()
                    .map(|a| Turn {
                        recorded: a.map(str::to_string),
                        after: vec![],
                        think_time: 0.0,
                    })
                    .collect(),
            })
            .collect();
        let wl = Workload {
            format: Format::Openai,
            source: "test".into(),
            content_hash: String::new(),
            trajectories: Trajectories::Loaded(trajectories),
            skipped_lines: 0,
        };
        let lens = recorded_lengths(&url, None, &wl).await.unwrap();
        // An empty or missing answer has no length.
        let want: Vec<Vec<Option<u32>>> = answers
            .iter()
            .map(|t| {
                t.iter()
                    .map(|a| a.filter(|a| !a.is_empty()).map(|a| a.len() as u32))
                    .collect()
            })
            .collect();
        assert_eq!(lens, want);
        let most = in_flight.1.load(SeqCst);
        assert!(
            most > 1 && most <= COUNTING_REQUESTS,
            "{most} requests in flight at most"
        );
    }
}
