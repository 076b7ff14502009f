//! `runner pack` bundles read in place; path traversal rejected.

use crate::support::{build, tiny_spec, write_run};
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Read;
use std::path::Path;

/// Packs `run` as `<name>/<file>` entries, like `runner pack`.
fn pack(run: &Path, name: &str, dest: &Path) {
    let gz = GzEncoder::new(std::fs::File::create(dest).unwrap(), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(name, run).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

/// A bundle with one raw entry name, bypassing the tar crate's own path checks.
fn bundle_with_entry(dest: &Path, raw_name: &[u8], good_run: &Path) {
    let gz = GzEncoder::new(std::fs::File::create(dest).unwrap(), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all("run", good_run).unwrap();
    let data = b"pwned";
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..raw_name.len()].copy_from_slice(raw_name);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, &data[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn a_bundle_builds_the_same_tables_as_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "r1", &tiny_spec("r1"));
    let bundle = tmp.path().join("r1.tar.gz");
    pack(&run, "r1", &bundle);
    let from_dir = report::load::load_dir(&run).unwrap();
    let from_bundle = report::load::load_bundle(&bundle).unwrap();
    assert_eq!(from_bundle.len(), 1);
    assert_eq!(from_bundle[0].manifest, from_dir.manifest);
    assert_eq!(from_bundle[0].records, from_dir.records);
    assert_eq!(from_bundle[0].telemetry, from_dir.telemetry);
    let report = build(&[bundle], &tmp.path().join("site"), None);
    assert_eq!((report.runs, report.skipped.len()), (1, 0));
}

#[test]
fn bundles_with_unsafe_paths_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "r1", &tiny_spec("r1"));
    for (name, raw) in [
        ("dotdot", &b"run/../../evil.txt"[..]),
        ("absolute", &b"/tmp/evil.txt"[..]),
    ] {
        let bundle = tmp.path().join(format!("{name}.tar.gz"));
        bundle_with_entry(&bundle, raw, &run);
        let err = report::load::load_bundle(&bundle).unwrap_err().to_string();
        assert!(err.contains("rejected bundle"), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}.tar.gz")),
            "{name}: error names the bundle: {err}"
        );
        // In a build, the bundle is skipped with the reason; the good run still makes a site.
        let out = tmp.path().join(format!("site-{name}"));
        let report = build(&[run.clone(), bundle], &out, None);
        assert_eq!(report.runs, 1);
        assert_eq!(report.skipped.len(), 1);
        assert!(!tmp.path().join("evil.txt").exists() && !Path::new("/tmp/evil.txt").exists());
    }
}

#[test]
fn one_run_given_twice_is_used_once_and_runs_sharing_an_id_are_told_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "r1", &tiny_spec("shard"));
    let bundle = tmp.path().join("r1.tar.gz");
    pack(&run, "r1", &bundle);
    // Another host's shard, run with the same --run-id: other records.
    let mut other = tiny_spec("shard");
    other.seed = 99;
    let run2 = write_run(tmp.path(), "r2", &other);
    let site = tmp.path().join("site");
    let report = build(&[run.clone(), bundle, run2], &site, None);
    assert_eq!(report.runs, 2, "{:?}", report.skipped);
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.reason.contains("the same run as")),
        "{:?}",
        report.skipped
    );
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert!(index.contains("shard (2)"), "both shards on the site");
}

#[test]
fn a_bundle_whose_summary_unpacks_to_gigabytes_is_refused_without_reading_it_whole() {
    // A few hundred kB of gzip holding a summary.json past the limit (a "zip bomb").
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(tmp.path(), "r", &tiny_spec("r"));
    let dest = tmp.path().join("bomb.tar.gz");
    let gz = GzEncoder::new(std::fs::File::create(&dest).unwrap(), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for f in ["manifest.json", "turns.jsonl"] {
        tar.append_path_with_name(run.join(f), format!("r/{f}"))
            .unwrap();
    }
    let size = report::load::DOCUMENT_LIMIT + 4096;
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(
        &mut header,
        "r/summary.json",
        std::io::repeat(b' ').take(size),
    )
    .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    assert!(std::fs::metadata(&dest).unwrap().len() < 1 << 20);
    let err = report::load::load_bundle(&dest).unwrap_err().to_string();
    assert!(
        err.contains("summary.json") && err.contains("larger than"),
        "{err}"
    );
}
