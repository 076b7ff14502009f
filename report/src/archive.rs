//! `--archive`: a reproducible `.tar.gz` of the site. Entries sorted by path, fixed mtime,
//! owner and modes, gzip header without a timestamp or name: two builds of the same site give
//! identical bytes.

use anyhow::Context as _;
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Fixed mtime of every entry (2000-01-01T00:00:00Z; zero upsets some tools).
pub const MTIME: u64 = 946_684_800;

/// Every file under `root`, relative, sorted by path.
fn files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let child = rel.join(entry.file_name());
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            if kind.is_dir() {
                stack.push(child);
            } else if kind.is_file() {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `path` is a site archive (a tar.gz with `index.html` at its top).
fn is_site_archive(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let Ok(entries) = archive.entries() else {
        return false;
    };
    entries
        .take(100_000)
        .map_while(Result::ok)
        .any(|e| e.path().is_ok_and(|p| p == Path::new("index.html")))
}

/// An error unless `dest` may take the archive: a file already there is replaced only when it
/// is an earlier archive of a site, not a run's bundle (maybe its only copy) or another file.
/// Checked before the site is built, so a refusal leaves `--out` as it was.
pub fn check_dest(dest: &Path) -> anyhow::Result<()> {
    if dest.exists() {
        anyhow::ensure!(
            is_site_archive(dest),
            "--archive {}: exists and is not an archive of a site (no index.html in it); \
             refusing to overwrite it",
            dest.display()
        );
    }
    Ok(())
}

/// Writes `site` as a tar.gz at `dest` (its entries relative to the site root).
pub fn write(site: &Path, dest: &Path) -> anyhow::Result<()> {
    check_dest(dest)?;
    // Written under a fresh name of its own next to `dest` (never a file that was there, nor
    // through a link someone left there), then renamed into place; gone if anything fails.
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let named = tempfile::Builder::new()
        .prefix(".turnbench-site-")
        .suffix(".tmp")
        .tempfile_in(parent)
        .with_context(|| format!("creating a file in {}", parent.display()))?;
    let tmp = named.path().to_path_buf();
    let file = named
        .as_file()
        .try_clone()
        .with_context(|| format!("creating {}", tmp.display()))?;
    let gz: GzEncoder<File> = GzBuilder::new()
        .mtime(0)
        .write(file, Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for rel in files(site)? {
        let path = site.join(&rel);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &rel, bytes.as_slice())
            .with_context(|| format!("archiving {}", path.display()))?;
    }
    let gz = tar
        .into_inner()
        .with_context(|| format!("writing {}", tmp.display()))?;
    let mut file = gz
        .finish()
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.flush()?;
    // A file's usual mode (the staging file is private, 0600, while it is written).
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("writing {}", tmp.display()))?;
    named
        .persist(dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    Ok(())
}
