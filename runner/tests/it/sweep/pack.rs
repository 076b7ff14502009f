//! `runner pack`: a reproducible bundle of a run directory (of a two-GPU sweep).

use super::*;
use std::io::Read;

#[test]
fn pack_is_reproducible_and_holds_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    // Two simulated GPUs in parallel, writing into one run.
    let args = small_with(
        tmp.path(),
        "packme",
        &[("--gpus", "a100-80gb,h100"), ("--cache-modes", "prefix")],
    );
    run_ok(&args);
    let run = Run::load(&tmp.path().join("packme"));
    assert_eq!(run.manifest.gpus.len(), 2);
    assert_eq!(
        run.manifest.gpus[0].name.as_deref(),
        Some("simulated a100-80gb")
    );
    run.assert_complete(&[4, 4]);
    assert_eq!(run.summary.cells.len(), 4);
    let dir = tmp.path().join("packme");
    let a = tmp.path().join("a.tar.gz");
    let b = tmp.path().join("b.tar.gz");
    for out in [&a, &b] {
        let o = run_ok(&[
            "pack".into(),
            dir.display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ]);
        assert!(String::from_utf8_lossy(&o.stdout).contains(out.to_str().unwrap()));
        std::thread::sleep(std::time::Duration::from_millis(1100)); // a different mtime, if used
    }
    let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(ba, bb, "two packs of one run are identical bytes");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "a bundle is readable as any file: {mode:o}");

    let mut names = vec![];
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(ba.as_slice()));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        assert_eq!(e.header().mtime().unwrap(), 0);
        assert_eq!(e.header().uid().unwrap(), 0);
        let name = e.path().unwrap().display().to_string();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        let file = name.strip_prefix("packme/").unwrap();
        assert_eq!(
            body,
            std::fs::read(dir.join(file)).unwrap(),
            "{name} content"
        );
        names.push(name);
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for f in ["manifest.json", "turns.jsonl", "summary.json"] {
        assert!(names.contains(&format!("packme/{f}")), "{f} in {names:?}");
    }
    let err = run_err(&["pack".into(), tmp.path().display().to_string()]);
    assert!(err.contains("not a run directory"), "{err}");
    // A bundle written into the run would replace a result or be packed next time.
    let turns = std::fs::read(dir.join("turns.jsonl")).unwrap();
    for inside in ["turns.jsonl", "logs/bundle.tar.gz"] {
        let err = run_err(&[
            "pack".into(),
            dir.display().to_string(),
            "-o".into(),
            dir.join(inside).display().to_string(),
        ]);
        assert!(err.contains("inside the run directory"), "{err}");
    }
    assert_eq!(std::fs::read(dir.join("turns.jsonl")).unwrap(), turns);
    assert!(!dir.join("logs/bundle.tar.gz").exists());

    // Resuming the finished run recomputes its summary from the records read back: the same
    // numbers, to the last bit, so the same bytes.
    let summary = std::fs::read(dir.join("summary.json")).unwrap();
    let out = tmp.path().display().to_string();
    run_ok(&["sweep", "--quiet", "--out", &out, "--resume", "packme"].map(String::from));
    assert_eq!(std::fs::read(dir.join("turns.jsonl")).unwrap(), turns);
    assert!(
        std::fs::read(dir.join("summary.json")).unwrap() == summary,
        "a resume of a finished run rewrote summary.json with other bytes"
    );
}

#[test]
fn pack_never_overwrites_a_file_that_is_not_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    for id in ["a", "b"] {
        run_ok(&small_with(
            tmp.path(),
            id,
            &[("--cache-modes", "prefix"), ("--batch-sizes", "1")],
        ));
    }
    let a = tmp.path().join("a");
    let b_turns = tmp.path().join("b").join("turns.jsonl");
    let before = std::fs::read(&b_turns).unwrap();
    let pack_run = |run: &Path, out: &Path| {
        runner()
            .args(["pack", run.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let pack = |out: &Path| pack_run(&a, out);
    let refused = |o: std::process::Output, says: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{err}");
    };
    // Into another run's directory.
    refused(pack(&b_turns), "inside the run directory");
    assert_eq!(std::fs::read(&b_turns).unwrap(), before);
    // Over an unrelated file, or a directory.
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    refused(pack(&notes), "not a bundle");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
    let dir = tmp.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    assert!(!pack(&dir).status.success());
    assert!(
        !tmp.path().join("adir.tmp").exists(),
        "no staging file left"
    );
    // Packing again over its own earlier bundle is fine.
    let bundle = tmp.path().join("a.tar.gz");
    assert!(pack(&bundle).status.success());
    assert!(pack(&bundle).status.success());
    // Over another run's bundle (maybe its only copy), or over another gzip file, it is not.
    let b_bundle = tmp.path().join("b-only-copy.tar.gz");
    assert!(pack_run(&tmp.path().join("b"), &b_bundle).status.success());
    let b_bytes = std::fs::read(&b_bundle).unwrap();
    refused(pack(&b_bundle), "bundle of run \"b\"");
    assert_eq!(std::fs::read(&b_bundle).unwrap(), b_bytes);
    let gz = tmp.path().join("notes.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, b"my notes").unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert!(!pack(&gz).status.success());
    // A run file that is a link is named, not left out of the bundle.
    let linked = tmp.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    for f in ["manifest.json", "summary.json"] {
        std::fs::copy(a.join(f), linked.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(a.join("turns.jsonl"), linked.join("turns.jsonl")).unwrap();
    let o = pack_run(&linked, &tmp.path().join("linked.tar.gz"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("turns.jsonl") && err.contains("symbolic link"),
        "{err}"
    );
    assert!(!tmp.path().join("linked.tar.gz").exists());
    // A file, or a link to one, where a staging file could be looked for is left alone.
    let staged = tmp.path().join("a.tar.tmp");
    std::fs::write(&staged, "someone's notes").unwrap();
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "user config").unwrap();
    std::os::unix::fs::symlink(&victim, tmp.path().join("evil.tar.tmp")).unwrap();
    assert!(pack(&bundle).status.success());
    assert!(pack(&tmp.path().join("evil.tar.gz")).status.success());
    assert_eq!(std::fs::read_to_string(&staged).unwrap(), "someone's notes");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "user config");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".turnbench"))
        .collect();
    assert!(left.is_empty(), "no staging file left: {left:?}");
    // A run whose manifest does not read is no run to bundle.
    std::fs::write(tmp.path().join("b").join("manifest.json"), "{garbage").unwrap();
    let o = pack_run(&tmp.path().join("b"), &tmp.path().join("b.tar.gz"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not a run's manifest"),
        "{err}"
    );
    assert!(!tmp.path().join("b.tar.gz").exists());
}
