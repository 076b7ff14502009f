//! `report build`: load → aggregate → page contexts → templates → `site/` (and `--archive`).
//! The site is written into a staging directory beside `--out` and moved into place at the
//! end, so a failed build never leaves half a site.

use crate::aggregate::{self, RunAggregate};
use crate::load::{self, Run, RunData};
use crate::pages::{self, GpuLink, Layout, Site};
use crate::{archive, assets, data, viewer};
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Validated options of one build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Run directories, bundles, legacy files, or folders of them. Empty: `results/`.
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub archive: Option<PathBuf>,
    pub title: String,
    /// Also write each page's context as `<page>.json` next to it (debugging).
    pub dump_contexts: bool,
    /// Most rows per turns CSV file ([`data::TURNS_CSV_PART_ROWS`]; small in tests).
    pub csv_part_rows: usize,
}

/// What a build did, for the command line.
#[derive(Debug)]
pub struct BuildReport {
    pub runs: usize,
    pub records: usize,
    pub skipped: Vec<load::Skipped>,
    pub pages: Vec<String>,
    pub site_bytes: u64,
    /// Per stage: (name, wall seconds, CPU seconds of all threads, peak RSS in bytes at its end).
    pub timings: Vec<(&'static str, f64, f64, u64)>,
}

pub fn build(opts: &BuildOptions) -> anyhow::Result<BuildReport> {
    let mut timings = Vec::new();
    let mut clock = (Instant::now(), crate::bench::cpu_seconds().unwrap_or(0.0));
    let mut lap = |name: &'static str, timings: &mut Vec<(&'static str, f64, f64, u64)>| {
        let rss = crate::bench::peak_rss_bytes().unwrap_or(0);
        let cpu = crate::bench::cpu_seconds().unwrap_or(0.0);
        timings.push((name, clock.0.elapsed().as_secs_f64(), cpu - clock.1, rss));
        clock = (Instant::now(), cpu);
    };
    let inputs = if opts.inputs.is_empty() {
        let default = PathBuf::from("results");
        if !default.is_dir() {
            bail!("no inputs given and no results/ directory here: name run directories, .tar.gz bundles or per_turn_*.jsonl files");
        }
        vec![default]
    } else {
        opts.inputs.clone()
    };
    guard_inputs(&inputs, &opts.out, opts.archive.as_deref())?;
    if let Some(dest) = &opts.archive {
        archive::check_dest(dest)?;
    }
    let (classified, mut skipped) = load::classify(&inputs);
    let loaded = load::load_all(&classified);
    skipped.extend(loaded.skipped);
    let runs = loaded.runs;
    if runs.is_empty() {
        let reasons: Vec<String> = skipped
            .iter()
            .map(|s| format!("  {}: {}", s.source, s.reason))
            .collect();
        if reasons.is_empty() {
            bail!("no run found in {inputs:?}: expected run directories (with manifest.json), .tar.gz bundles or per_turn_metrics_*/per_turn_summary_* files");
        }
        bail!(
            "no run could be loaded from {inputs:?}\n{}",
            reasons.join("\n")
        );
    }
    lap("load", &mut timings);

    // turns.csv and the viewer's data need only the records: each gets its own thread while
    // this one aggregates and renders the pages (the three cost about the same).
    let gpus = pages::gpu_links(&runs);
    let staging = staging_dir(&opts.out)?;
    let dir = staging.path();
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let (pages, csv_wall, viewer_wall) = std::thread::scope(|scope| {
        let turns_csv = scope.spawn(|| timed(|| data::write_turns(dir, &runs, opts.csv_part_rows)));
        let viewer = scope.spawn(|| timed(|| write_viewer(dir, &opts.title, &gpus, &runs)));
        let rest = (|| {
            let aggregates: Vec<Option<RunAggregate>> = runs
                .iter()
                .map(|r| match &r.data {
                    RunData::Measured(m) => Some(aggregate::aggregate(m)),
                    RunData::Legacy(_) => None,
                })
                .collect();
            lap("aggregate", &mut timings);
            let site = pages::site(
                &opts.title,
                &runs,
                &aggregates,
                gpus.clone(),
                &skipped,
                opts.csv_part_rows,
            );
            lap("contexts", &mut timings);
            let pages = write_site(dir, &site, &runs, &aggregates, opts.dump_contexts)?;
            lap("pages, assets, summary.csv", &mut timings);
            Ok::<_, anyhow::Error>(pages)
        })();
        let csv = turns_csv
            .join()
            .map_err(|_| anyhow::anyhow!("the turns.csv writer panicked"))?;
        let viewer = viewer
            .join()
            .map_err(|_| anyhow::anyhow!("the viewer writer panicked"))?;
        Ok::<_, anyhow::Error>((rest?, csv?, viewer?))
    })?;
    lap("waiting for turns.csv and the viewer", &mut timings);
    timings.push(("turns.csv (own thread)", csv_wall, 0.0, 0));
    timings.push(("viewer (own thread)", viewer_wall, 0.0, 0));
    let site_bytes = dir_size(staging.path())?;
    replace_dir(staging, &opts.out)?;
    if let Some(dest) = &opts.archive {
        archive::write(&opts.out, dest)?;
        lap("archive", &mut timings);
    }
    Ok(BuildReport {
        runs: runs.len(),
        records: runs
            .iter()
            .map(|r| match &r.data {
                RunData::Measured(m) => m.records.len(),
                RunData::Legacy(l) => l.turns.len(),
            })
            .sum(),
        skipped,
        pages,
        site_bytes,
        timings,
    })
}

/// Writes pages, assets and `data/summary.csv` into `dir` (`data/turns.csv` and the viewer
/// are written beside it, see [`build`]); returns the page file names.
pub fn write_site(
    dir: &Path,
    site: &Site,
    runs: &[Run],
    aggregates: &[Option<RunAggregate>],
    dump_contexts: bool,
) -> anyhow::Result<Vec<String>> {
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    let mut pages = Vec::new();
    write(
        "index.html",
        &site.render_index().context("rendering index.html")?,
    )?;
    pages.push("index.html".to_string());
    if dump_contexts {
        write("index.json", &serde_json::to_string_pretty(&site.index)?)?;
    }
    for page in &site.gpu_pages {
        let html = site
            .render_gpu(page)
            .with_context(|| format!("rendering {}", page.href))?;
        write(&page.href, &html)?;
        if dump_contexts {
            write(
                &page.href.replace(".html", ".json"),
                &serde_json::to_string_pretty(page)?,
            )?;
        }
        pages.push(page.href.clone());
    }
    write(".nojekyll", "")?;
    write(
        SITE_MARKER,
        "A site written by turnbench's `report build`, which replaces it whole.\n",
    )?;
    assets::write_all(dir)?;
    data::write_summary(dir, runs, aggregates)?;
    Ok(pages)
}

/// Writes `viewer.html` and its data with the site's layout (title, navigation).
pub fn write_viewer(dir: &Path, title: &str, gpus: &[GpuLink], runs: &[Run]) -> anyhow::Result<()> {
    let records: Vec<viewer::RunRecords<'_>> = runs
        .iter()
        .filter_map(|r| match &r.data {
            RunData::Measured(m) => Some(viewer::RunRecords {
                run_id: &m.manifest.run_id,
                simulated: m.manifest.simulated,
                zero_cost: m.manifest.zero_cost(),
                caveats: pages::prompt_caveat(&m.manifest).into_iter().collect(),
                records: &m.records,
            }),
            RunData::Legacy(_) => None,
        })
        .collect();
    let simulated = records.iter().any(|r| r.simulated);
    let layout = Layout::new(title, "Viewer", gpus, pages::VIEWER_HREF, simulated, false);
    viewer::write_with_layout(dir, &layout, &records).context("writing the viewer")
}

/// Runs `f`, returning its wall time in seconds.
fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let started = Instant::now();
    f().map(|()| started.elapsed().as_secs_f64())
}

fn staging_dir(out: &Path) -> anyhow::Result<tempfile::TempDir> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    tempfile::Builder::new()
        .prefix(".site-staging-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))
}

/// `path` made absolute with symlinks resolved, as far as it exists (a path not yet created
/// is its existing parent's, resolved, plus the rest).
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            resolved(parent).join(name)
        }
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    }
}

/// Refuses a build that would destroy its own inputs: the site replaces `out` whole, and the
/// archive replaces its file.
fn guard_inputs(inputs: &[PathBuf], out: &Path, archive: Option<&Path>) -> anyhow::Result<()> {
    let out_abs = resolved(out);
    let archive_abs = archive.map(resolved);
    for input in inputs {
        let inp = resolved(input);
        if inp.starts_with(&out_abs) {
            bail!(
                "input {} is inside the output site {}, which the build replaces: write the site \
                 elsewhere (--out) or move the results out of it",
                input.display(),
                out.display()
            );
        }
        if let (Some(a), Some(archive)) = (&archive_abs, archive) {
            if a.starts_with(&inp) {
                bail!(
                    "--archive {} would overwrite the input {} (or a file in it): name another file",
                    archive.display(),
                    input.display()
                );
            }
        }
    }
    if let (Some(a), Some(archive)) = (&archive_abs, archive) {
        if a.starts_with(&out_abs) {
            bail!(
                "--archive {} is inside the output site {}, which the build replaces: name a \
                 file outside it",
                archive.display(),
                out.display()
            );
        }
    }
    Ok(())
}

/// The file that marks a folder as a site `report build` wrote (and may replace).
pub const SITE_MARKER: &str = ".turnbench-site";

/// Moves the staged site to `out`, replacing a previous site there (recognised by its
/// [`SITE_MARKER`], or, written before there was one, by its `.nojekyll`, `index.html`,
/// `viewer.html` and `data/summary.csv` together); refuses to delete any other non-empty
/// directory (a hand-made GitHub Pages folder has a `.nojekyll` too).
fn replace_dir(staging: tempfile::TempDir, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        let ours = out.join(SITE_MARKER).is_file()
            || [".nojekyll", "index.html", "viewer.html", "data/summary.csv"]
                .iter()
                .all(|f| out.join(f).is_file());
        if !empty && !ours {
            bail!(
                "{} exists and is not a site written by `report build` (no {SITE_MARKER}); \
                 refusing to replace it: choose another --out, or empty it",
                out.display()
            );
        }
        std::fs::remove_dir_all(out)
            .with_context(|| format!("removing the old site {}", out.display()))?;
    }
    let path = staging.keep();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
    }
    std::fs::rename(&path, out)
        .with_context(|| format!("moving {} to {}", path.display(), out.display()))?;
    Ok(())
}

pub fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
