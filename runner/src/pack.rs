//! `runner pack results/ID [-o ID.tar.gz]`: a reproducible bundle of one run directory, for
//! moving results between machines (`report build` reads it as is). Entries are sorted by
//! path, with fixed mtime, owner and modes, and the gzip header carries no time or name, so
//! packing the same directory twice gives identical bytes.

use anyhow::Context as _;
use flate2::{Compression, GzBuilder};
use std::path::{Path, PathBuf};

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        for e in std::fs::read_dir(&abs).with_context(|| format!("reading {}", abs.display()))? {
            let e = e.with_context(|| format!("reading {}", abs.display()))?;
            let ty = e.file_type()?;
            let r = rel.join(e.file_name());
            if ty.is_dir() {
                stack.push(r);
            } else if ty.is_file() {
                out.push(r);
            } else {
                // Left out, a linked `turns.jsonl` would make a bundle without the run's
                // records; followed, a link could bundle any file of this machine.
                anyhow::bail!(
                    "{}: {}, not a file: a bundle holds the run's own files (replace it with \
                     the file it stands for)",
                    dir.join(&r).display(),
                    if ty.is_symlink() {
                        "a symbolic link"
                    } else {
                        "a special file"
                    }
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The run a bundle holds: the top directory of its first entry.
fn bundled_run(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let first = archive.entries().ok()?.next()?.ok()?;
    let entry = first.path().ok()?;
    let top = entry.components().next()?;
    Some(top.as_os_str().to_string_lossy().into_owned())
}

/// Pack `dir` into `out` (default `<dir name>.tar.gz` in the current directory). Returns the
/// path written.
pub fn pack(dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        dir.join(turnbench_schema::files::MANIFEST).is_file(),
        "{}: not a run directory (no {})",
        dir.display(),
        turnbench_schema::files::MANIFEST
    );
    // A bundle whose manifest does not read is no run for `report build` to load.
    let mpath = dir.join(turnbench_schema::files::MANIFEST);
    let text = std::fs::read(&mpath).with_context(|| format!("reading {}", mpath.display()))?;
    serde_json::from_slice::<turnbench_schema::Manifest>(&text)
        .with_context(|| format!("{}: not a run's manifest", mpath.display()))?;
    let abs_dir = dir
        .canonicalize()
        .with_context(|| format!("reading {}", dir.display()))?;
    // A sweep writing the run holds its lock (`sweep::lock_run`): its files are still growing.
    let lock =
        std::fs::File::open(&abs_dir).with_context(|| format!("opening {}", dir.display()))?;
    if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock_shared() {
        anyhow::bail!(
            "{} is in use by a sweep (running, or resuming it); pack it when that ends",
            dir.display()
        );
    }
    let name = abs_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the run directory has no name")?;
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("{name}.tar.gz")));
    // Written into the run directory, the bundle would replace a result (`-o ID/turns.jsonl`)
    // or be packed into the next bundle.
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(p) = parent.canonicalize() {
        anyhow::ensure!(
            !p.starts_with(&abs_dir),
            "-o {}: inside the run directory it packs; write the bundle elsewhere",
            out.display()
        );
        // Nor into another run's directory (`-o results/B/turns.jsonl`).
        if let Some(run) = p
            .ancestors()
            .find(|a| a.join(turnbench_schema::files::MANIFEST).is_file())
        {
            anyhow::bail!(
                "-o {}: inside the run directory {}; write the bundle elsewhere",
                out.display(),
                run.display()
            );
        }
    }
    // An existing file is replaced only when it is a bundle (gzip) already: packing again
    // to the same name, not over someone's other file.
    if let Ok(meta) = std::fs::symlink_metadata(&out) {
        anyhow::ensure!(
            meta.is_file(),
            "-o {}: exists and is not a file",
            out.display()
        );
        let mut magic = [0u8; 2];
        let gzip = std::fs::File::open(&out)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && magic == [0x1f, 0x8b];
        anyhow::ensure!(
            gzip,
            "-o {}: exists and is not a bundle (.tar.gz); refusing to overwrite it",
            out.display()
        );
        // And only a bundle of this run: another run's may be its only copy.
        match bundled_run(&out) {
            Some(other) if other == name => {}
            Some(other) => anyhow::bail!(
                "-o {}: holds the bundle of run {other:?}; refusing to overwrite it with run \
                 {name:?}",
                out.display()
            ),
            None => anyhow::bail!(
                "-o {}: exists and is not a run's bundle; refusing to overwrite it",
                out.display()
            ),
        }
    }
    // Written under a fresh name of its own next to `out` (never a file that was there, nor
    // through a link someone left there), then renamed into place; gone if anything fails.
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".turnbench-pack-")
        .suffix(".tmp")
        .tempfile_in(parent)
        .with_context(|| format!("creating a file in {}", parent.display()))?;
    write_bundle(dir, &name, tmp.as_file())?;
    // A file's usual mode (the staging file is private, 0600, while it is written).
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("writing {}", out.display()))?;
    tmp.persist(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// The bundle of the run in `dir` (entries under `name/`) written to `file`.
fn write_bundle(dir: &Path, name: &str, file: &std::fs::File) -> anyhow::Result<()> {
    let gz = GzBuilder::new()
        .mtime(0)
        .write(file, Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for rel in files(dir)? {
        if rel.extension().is_some_and(|e| e == "tmp") {
            continue;
        }
        let abs = dir.join(&rel);
        // Streamed: a run's turns.jsonl can be gigabytes.
        let f = std::fs::File::open(&abs).with_context(|| format!("reading {}", abs.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", abs.display()))?
            .len();
        let mut h = tar::Header::new_gnu();
        h.set_size(len);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        let path = Path::new(name).join(&rel);
        tar.append_data(&mut h, &path, std::io::Read::take(f, len))
            .with_context(|| format!("adding {}", abs.display()))?;
    }
    let gz = tar.into_inner().context("finishing the tar stream")?;
    gz.finish().context("finishing the gzip stream")?;
    Ok(())
}
